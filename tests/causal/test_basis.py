"""State bases: wide one-hot / binary columns give a sparse basis with the dense values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from equicare.causal import _basis
from equicare.causal._basis import MediatorEncoder, combine, combine_dot, state_features


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


@pytest.mark.parametrize("kind", ["auto", "onehot", "spline", "poly", "rff", "constant"])
@pytest.mark.parametrize(("levels", "numeric"), [
    ((150,), "normal"),      # wide: auto -> spline; some levels unseen
    ((4, 3), "normal"),      # two narrow columns
    ((3,), "binary"),        # a two-valued numeric column, few distinct states: auto -> onehot
    ((2,), "discrete"),      # a numeric column of 6 values (one-hot coded, not splined)
    ((), "normal"),          # numeric only
])
def test_basis_width_from_the_codes_is_the_width_of_the_basis(kind, levels, numeric):
    """The size check made before the states are built sees the basis the estimation fits."""
    from equicare.causal._basis import basis_width

    rng = np.random.default_rng(1)
    n = 300
    codes = [np.stack([rng.integers(0, k - (k > 100), n) for k in levels], axis=1)
             if levels else np.zeros((n, 0), dtype=np.int64) for _ in range(2)]
    codes[1][:, :1] = codes[0][:, :1] if levels and levels[0] > 100 else codes[1][:, :1]
    draw = {"normal": lambda: rng.normal(size=(n, 1)),
            "binary": lambda: rng.integers(0, 2, (n, 1)).astype(float),
            "discrete": lambda: rng.integers(0, 6, (n, 1)).astype(float)}[numeric]
    num = [draw(), draw()]
    dense = [np.hstack([num[i], *(np.eye(k)[codes[i][:, j]] for j, k in enumerate(levels))])
             for i in range(2)]
    phi, _, used = state_features(dense[0], dense[1], kind, n_features=16)
    assert basis_width(num[0], num[1], codes[0], codes[1], levels, kind,
                       n_features=16) == (phi.shape[1], used)


@pytest.mark.parametrize("kind", ["discrete", "continuous", "sparse"])
def test_combine_dot_is_the_product_with_the_joint_features(kind):
    """``combine_dot`` = ``combine(...) @ coef.T`` (to rounding) for discrete and continuous
    mediators and a sparse basis, without the joint features."""
    rng = np.random.default_rng(0)
    n, p = 300, 7
    phi = rng.normal(size=(n, p)) * (rng.random((n, p)) < 0.4)
    m = rng.integers(0, 3, size=(n, 1)).astype(float) if kind != "continuous" else \
        rng.normal(size=(n, 2))
    enc = MediatorEncoder.fit(m, "discrete" if kind != "continuous" else "continuous", 10)
    e = enc.encode(m)
    if kind == "sparse":
        phi = sp.csr_matrix(phi)
    joint = combine(phi, e, enc.discrete, enc.n_raw)
    joint = joint.toarray() if sp.issparse(joint) else joint
    coef = rng.normal(size=(4, joint.shape[1]))
    got = combine_dot(phi, e, enc.discrete, enc.n_raw, coef)
    np.testing.assert_allclose(got, joint @ coef.T, rtol=1e-12, atol=1e-12)
