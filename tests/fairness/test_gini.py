from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from equicare.fairness import gini


def brute_gini(x: np.ndarray, w: np.ndarray | None = None) -> float:
    w = np.ones_like(x) if w is None else w
    num = np.sum(w[:, None] * w[None, :] * np.abs(x[:, None] - x[None, :]))
    mean = np.sum(w * x) / w.sum()
    return float(num / (2 * w.sum() ** 2 * abs(mean)))


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0, 1.0, 1.0], 0.0),
    ([0.0, 0.0, 0.0, 1.0], 0.75),           # 6 / (2 * 16 * 0.25)
    ([1.0, 2.0, 3.0, 4.0], 0.25),           # 20 / (2 * 16 * 2.5)
    ([2.0, 4.0], 1.0 / 6.0),                # 4 / (2 * 4 * 3)
    ([5.0], 0.0),
    ([0.0, 0.0], 0.0),                      # all equal: perfect equality
    ([-1.0, -3.0], 0.25),                   # costs: Gini of the magnitudes (1, 3)
])
def test_gini_known_vectors(values: list[float], expected: float) -> None:
    assert gini(values) == pytest.approx(expected, abs=1e-12)


def test_weighted_gini_known_vector() -> None:
    # weights 3, 1 on values 1, 3 = the people (1, 1, 1, 3): 2*3*1*2 / (2 * 16 * 1.5) = 0.25
    assert gini([1.0, 3.0], weights=[3.0, 1.0]) == pytest.approx(0.25)
    assert gini([1.0, 1.0, 1.0, 3.0]) == pytest.approx(0.25)


def test_mixed_signs_give_nan() -> None:
    assert np.isnan(gini([-1.0, 2.0]))
    assert np.isnan(gini([1.0, np.nan]))


def test_vectorised_over_replicates_and_axis() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((7, 5))
    w = rng.random(5) + 0.1
    got = gini(x, w)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, [brute_gini(r, w) for r in x], rtol=1e-12)
    np.testing.assert_allclose(gini(x.T, axis=0), gini(x), rtol=1e-12)
    wr = rng.random((7, 5)) + 0.1  # one weight vector per replicate
    np.testing.assert_allclose(gini(x, wr), [brute_gini(r, v) for r, v in zip(x, wr, strict=True)])


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        gini([])
    with pytest.raises(ValueError, match="non-negative"):
        gini([1.0, 2.0], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="scalar"):
        gini(1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 100.0), min_size=1, max_size=12),
       st.lists(st.integers(1, 4), min_size=12, max_size=12), st.floats(0.1, 10.0))
def test_gini_invariants(xs: list[float], reps: list[int], scale: float) -> None:
    x = np.asarray(xs)
    w = np.asarray(reps[: x.size], dtype=float)
    g = gini(x)
    if x.max() == 0:
        assert g == 0.0
        return
    assert 0.0 <= g <= 1.0 - 1.0 / x.size + 1e-12
    assert g == pytest.approx(brute_gini(x), abs=1e-9)
    assert gini(scale * x) == pytest.approx(g, abs=1e-9)            # scale invariance
    # integer weights = repeating each value
    assert gini(x, w) == pytest.approx(gini(np.repeat(x, w.astype(int))), abs=1e-9)
