"""State bases: wide one-hot / binary columns give a sparse basis with the dense values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from equicare.causal import _basis
from equicare.causal._basis import combine, state_features


def _panel(n: int, levels: int, seed: int = 0):
    """A numeric column plus the one-hot codes of a categorical state with ``levels`` levels."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, levels, (2, n))
    num = rng.normal(size=(2, n, 1))
    s, sn = (np.hstack([num[k], np.eye(levels)[codes[k]]]) for k in range(2))
    return s, sn


def test_wide_one_hot_columns_give_a_sparse_spline_basis_with_the_dense_values(monkeypatch):
    s, sn = _panel(2000, 150)
    phi, phin, kind = state_features(s, sn, "auto")
    assert kind == "spline" and sp.issparse(phi) and sp.issparse(phin)
    assert phi.nnz <= 0.1 * phi.shape[0] * phi.shape[1]
    monkeypatch.setattr(_basis, "SPARSE_MIN_FEATURES", 10**9)               # the dense basis
    dense, dense_n, _ = state_features(s, sn, "auto")
    assert isinstance(dense, np.ndarray)
    np.testing.assert_array_equal(phi.toarray(), dense)
    np.testing.assert_array_equal(phin.toarray(), dense_n)


def test_onehot_basis_of_many_states_is_sparse():
    s, sn = _panel(1000, 80)
    phi, phin, kind = state_features(s[:, 1:], sn[:, 1:], "onehot")
    assert kind == "onehot" and sp.issparse(phi)
    assert np.all(np.asarray(phi.sum(axis=1)).ravel() == 1)
    np.testing.assert_array_equal(phi.toarray() @ np.arange(phi.shape[1]),
                                  phi @ np.arange(phi.shape[1]))


def test_narrow_bases_stay_dense():
    s, sn = _panel(500, 5)
    assert isinstance(state_features(s, sn, "spline")[0], np.ndarray)


@pytest.mark.parametrize("discrete", [True, False])
def test_sparse_combine_matches_dense(discrete):
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(50, 6)) * (rng.random((50, 6)) < 0.3)
    enc = np.eye(3)[rng.integers(0, 3, 50)] if discrete else rng.normal(size=(50, 4))
    h = combine(sp.csr_matrix(phi), enc, discrete, 1)
    assert sp.issparse(h)
    np.testing.assert_allclose(h.toarray(), combine(phi, enc, discrete, 1), atol=1e-15)
