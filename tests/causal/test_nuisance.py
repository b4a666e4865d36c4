"""Nuisance models fitted block by block (one block per action) match the dense design."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from equicare.causal import DynamicMediation
from equicare.causal import _nuisance as nz
from equicare.causal._basis import MediatorEncoder, action_tensor
from equicare.sim.mediation import random_mediation_mdp


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    n, p, A = 400, 5, 6
    phi = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    a = rng.integers(0, A - 1, n)                 # the last action has no rows
    return rng, phi, a, A


def test_block_ridge_matches_dense_design(rows):
    rng, phi, a, A = rows
    for y in (rng.normal(size=phi.shape[0]), rng.normal(size=(phi.shape[0], 2))):
        dense = nz.ridge_fit(action_tensor(a, phi, A), y, 1e-6)
        block = nz.block_ridge_fit(phi, a, A, y, 1e-6)
        assert block.shape == (A, phi.shape[1], *y.shape[1:])
        np.testing.assert_allclose(block.reshape(dense.shape), dense, rtol=0, atol=1e-8)
        assert np.all(block[A - 1] == 0)


def test_block_logit_matches_dense_newton(rows):
    rng, phi, a, A = rows
    y = rng.integers(0, 3, phi.shape[0])
    dense = nz.NewtonLogit().fit(action_tensor(a, phi, A), y)
    block = nz.BlockNewtonLogit(A).fit(phi, a, y)
    np.testing.assert_array_equal(block.classes_, dense.classes_)
    np.testing.assert_allclose(block.coef_.reshape(dense.coef_.shape), dense.coef_, atol=1e-8)
    p_all = block.predict_proba_all(phi, 3)                               # (n, A, 3)
    for k in range(A):
        pk = dense.predict_proba(action_tensor(np.full(len(a), k), phi, A))
        np.testing.assert_allclose(p_all[:, k], pk, atol=1e-10)


def test_newton_by_conjugate_gradients_matches_exact_newton(rows, monkeypatch):
    rng, phi, _, _ = rows
    y = rng.integers(0, 7, phi.shape[0])
    exact = nz.NewtonLogit().fit(phi, y)
    monkeypatch.setattr(nz, "NEWTON_MAX_PARAMS", 0)                     # force the CG path
    cg = nz.NewtonLogit().fit(phi, y)
    np.testing.assert_allclose(cg.coef_, exact.coef_, atol=1e-8)
    np.testing.assert_allclose(cg.predict_proba(phi), exact.predict_proba(phi), atol=1e-10)


@pytest.mark.parametrize("estimator", [None, LinearRegression()])
def test_reward_node_terms_match_every_action_at_every_node(rows, estimator):
    rng, phi, a, A = rows
    n = phi.shape[0]
    states = phi[:, 1:]
    med = rng.normal(size=(n, 1))
    enc = MediatorEncoder.fit(med, "continuous", 10)
    rew = nz.RewardModel(enc, estimator, A).fit(states, phi, a, med, rng.normal(size=n))
    nodes = rng.normal(size=(n, A, 3, 1))
    p0 = rng.dirichlet(np.ones(A), n)
    own, mix = rew.node_terms(states, phi, nodes, p0, shared=False)
    full = rew.predict(states, phi, nodes)                                # (n, A, K, A)
    np.testing.assert_allclose(own, np.einsum("naka->nak", full), atol=1e-10)
    np.testing.assert_allclose(mix, np.einsum("nakb,nb->nak", full, p0), atol=1e-10)


def test_many_actions_memory_stays_proportional():
    """120 actions: no (n, A, K, A) rewards, (A n, A p) mediator design or (n, A^2) weights."""
    A = 120
    mdp = random_mediation_mdp(3, A, 2, random_state=0)
    data = mdp.sample(60, 21, random_state=0)
    rng = np.random.default_rng(1)
    pe = mdp.policy_fn(rng.dirichlet(np.ones(A), 3))
    p0 = mdp.policy_fn(rng.dirichlet(np.ones(A), 3))
    tracemalloc.start()
    try:
        res = DynamicMediation(n_bootstrap=0, basis="constant", estimators=("mr",)).estimate(
            data, pe, p0, random_state=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.isfinite(res["mr"].effects["total"].value)
    assert peak < 64e6, f"peak {peak / 1e6:.0f} MB"  # dense design: 316 MB


def test_mediator_prior_is_the_jeffreys_posterior_mode_of_every_cell():
    """One-hot states: p(k|s,a) = (n_sak + 1/2) / (n_sa + K/2), also for unseen levels."""
    rng = np.random.default_rng(1)
    s, a, y = rng.integers(0, 3, 300), rng.integers(0, 2, 300), rng.integers(0, 4, 300)
    y[(s == 0) & (a == 1)] = 0                  # levels 1-3 never seen in cell (0, 1)
    y[y == 2] = 3                               # level 2 never seen at all
    model = nz.BlockNewtonLogit(2, ridge=0.0, prior=nz.MEDIATOR_PRIOR).fit(np.eye(3)[s], a, y, 4)
    p = model.predict_proba_all(np.eye(3), 4)                              # (3 states, 2, 4)
    for si in range(3):
        for ai in range(2):
            cell = y[(s == si) & (a == ai)]
            jeffreys = (np.bincount(cell, minlength=4) + 0.5) / (cell.size + 2.0)
            np.testing.assert_allclose(p[si, ai], jeffreys, atol=1e-8)
    # maximum likelihood (no prior) sends the unseen levels of cell (0, 1) towards 0
    assert nz.BlockNewtonLogit(2).fit(np.eye(3)[s], a, y).predict_proba_all(
        np.eye(3), 4)[0, 1, 1] < 1e-4 < p[0, 1, 1]


def _hessian_by_einsum(X, P, lam):
    """The exact Newton Hessian as the three-operand einsum formed it (reference)."""
    n, p = X.shape
    k1 = P.shape[1]
    W = P[:, :, None] * (np.eye(k1)[None] - P[:, None, :])
    H = np.einsum("ni,njk,nl->jikl", X, W, X).reshape(k1 * p, k1 * p)
    H = H.reshape(k1, p, k1, p).transpose(1, 0, 3, 2).reshape(p * k1, -1)
    return H + lam * np.eye(p * k1)


def test_exact_newton_and_leverages_use_matrix_products_not_a_three_operand_einsum(
        rows, monkeypatch):
    """A mediation on a 700-level panel spent 108 of 124 s in two einsums over (n, p, p) loops
    without BLAS (the Newton Hessian and the mediator prior's leverages): 5 s a Newton step at
    n = 12,000, p = 707. They are matrix products now, with the same numbers."""
    rng, phi, a, A = rows
    y = rng.integers(0, 4, phi.shape[0])
    P = nz._logit_probs(phi, rng.normal(scale=0.3, size=(phi.shape[1], 3)))[:, 1:]
    g = rng.normal(size=(phi.shape[1], 3))
    want = np.linalg.solve(_hessian_by_einsum(phi, P, 0.1), g.reshape(-1)).reshape(g.shape)
    real = np.einsum

    def guard(subscripts, *operands, **kw):
        assert len(operands) < 3, f"three-operand einsum {subscripts!r}"
        return real(subscripts, *operands, **kw)

    monkeypatch.setattr(np, "einsum", guard)
    np.testing.assert_allclose(nz._newton_step(phi, P, g, 0.1), want, rtol=1e-10, atol=1e-12)
    # the exact-Newton path with the prior's leverages (their values: the Jeffreys test above)
    assert nz._exact_newton(phi.shape[0], phi.shape[1], 3)
    block = nz.BlockNewtonLogit(A, prior=nz.MEDIATOR_PRIOR).fit(phi, a, y, 4)
    monkeypatch.setattr(np, "einsum", real)
    p_all = block.predict_proba_all(phi, 4)
    assert np.isfinite(block.coef_).all() and np.allclose(p_all.sum(axis=2), 1.0)


def test_sparse_basis_fits_and_predicts_as_the_dense_basis(rows):
    """Block ridge, block logistic with the prior, Newton logit and reward nodes on CSR."""
    import scipy.sparse as sp

    rng, phi, a, A = rows
    phi = phi * (rng.random(phi.shape) < 0.5)
    phi[:, 0] = 1.0
    sphi = sp.csr_matrix(phi)
    y = rng.normal(size=phi.shape[0])
    np.testing.assert_allclose(nz.block_ridge_fit(sphi, a, A, y), nz.block_ridge_fit(phi, a, A, y),
                               atol=1e-10)
    lab = rng.integers(0, 3, phi.shape[0])
    for prior in (0.0, nz.MEDIATOR_PRIOR):
        d = nz.BlockNewtonLogit(A, prior=prior).fit(phi, a, lab, 3)
        s = nz.BlockNewtonLogit(A, prior=prior).fit(sphi, a, lab, 3)
        np.testing.assert_allclose(s.predict_proba_all(sphi, 3), d.predict_proba_all(phi, 3),
                                   atol=1e-10)
    np.testing.assert_allclose(nz.NewtonLogit().fit(sphi, lab).predict_proba(sphi),
                               nz.NewtonLogit().fit(phi, lab).predict_proba(phi), atol=1e-10)
    med = rng.integers(0, 3, (phi.shape[0], 1)).astype(float)
    enc = MediatorEncoder.fit(med, "discrete", 10)
    states = phi[:, 1:]
    rd = nz.RewardModel(enc, None, A).fit(states, phi, a, med, y)
    rs = nz.RewardModel(enc, None, A).fit(states, sphi, a, med, y)
    nodes = np.broadcast_to(enc.levels, (phi.shape[0], 3, 1))
    np.testing.assert_allclose(rs.predict(states, sphi, nodes), rd.predict(states, phi, nodes),
                               atol=1e-10)
    np.testing.assert_allclose(rs.predict(states, sphi, med), rd.predict(states, phi, med),
                               atol=1e-10)


def _rare_actions(seed: int, n: int = 20000, n_clinics: int = 30, K: int = 12):
    """Sparse outreach actions by clinic on an intercept + one-hot + spline basis (collinear).

    Returns the basis (CSR), the actions and their true probabilities (n, K).
    """
    import scipy.sparse as sp
    from sklearn.preprocessing import SplineTransformer

    rng = np.random.default_rng(seed)
    clinic, x = rng.integers(0, n_clinics, n), rng.normal(size=n)
    mix = rng.dirichlet(np.full(K - 1, 0.3), size=n_clinics)       # each clinic's few actions
    p_out = 1 / (1 + np.exp(-(-2.4 + 0.5 * x + rng.normal(0, 0.5, n_clinics)[clinic])))
    out = rng.random(n) < p_out
    k = np.minimum((rng.random(n)[:, None] > np.cumsum(mix[clinic], 1)).sum(1), K - 2)
    y = np.where(out, 1 + k, 0)
    true = np.column_stack([1 - p_out, p_out[:, None] * mix[clinic]])
    spl = SplineTransformer(n_knots=5, degree=3, knots="quantile", extrapolation="linear",
                            include_bias=False).fit_transform(x[:, None])
    X = sp.csr_matrix(np.hstack([np.ones((n, 1)), np.eye(n_clinics)[clinic], spl]))
    return X, y, true


def test_newton_logit_stops_before_diverging_on_rare_actions():
    """Full Newton steps grew to 1e7 and the fitted propensities were off by a factor of ~600.

    The best iterate is kept (its objective below the start's), flagged as not converged, and
    its propensities of the logged actions are within a factor of 1.5 of the truth on average
    (measured 0.38 in log scale; 6.46 before).
    """
    X, y, true = _rare_actions(0)
    m = nz.NewtonLogit().fit(X, y)
    assert not m.converged_
    assert np.abs(m.coef_).max() < 100
    Y = np.eye(m.classes_.size)[np.searchsorted(m.classes_, y)][:, 1:]
    lam = m.ridge * nz.sqsum(X) / X.shape[1]
    assert nz._penalised_nll(X, m.coef_, Y, lam) < nz._penalised_nll(X, 0 * m.coef_, Y, lam)
    fitted = m.predict_proba(X)[np.arange(y.size), np.searchsorted(m.classes_, y)]
    err = np.mean(np.abs(np.log(np.maximum(fitted, 1e-3) / true[np.arange(y.size), y])))
    assert err < 0.6


def test_newton_logit_converges_on_well_posed_classes(rows):
    rng, phi, _, _ = rows
    m = nz.NewtonLogit().fit(phi, rng.integers(0, 4, phi.shape[0]))
    assert m.converged_


def _rare_levels(seed: int, n: int = 3000):
    """A 6-level mediator with rare levels by clinic under two actions (the same law in both).

    Returns the basis (CSR, intercept + 15 one-hot clinics + splines), the actions, the
    mediator levels and their true probabilities (n, 6).
    """
    X, m, true = _rare_actions(seed, n=n, n_clinics=15, K=6)
    a = np.random.default_rng(seed + 1).integers(0, 2, n)
    return X, a, m, true


def _level_error(P, m, true):
    """Mean ``|log(fitted / true)|`` of the observed levels' probabilities (fitted floored)."""
    fitted = P[np.arange(m.size), m]
    return float(np.mean(np.abs(np.log(np.maximum(fitted, 1e-3) / true[np.arange(m.size), m]))))


def test_mediator_model_stops_before_diverging_on_rare_levels():
    """The Jeffreys prior bounds the optimum, not Newton's path: full steps reached 1e7.

    Before the guard: coefficients 7e6 and the fitted probabilities of the observed levels
    off by a mean |log(fitted / true)| of 6.57 and 6.55 in the two actions' blocks (a factor
    of ~700); the best iterates are off by 0.18 and 0.19, flagged as not converged.
    """
    X, a, m, true = _rare_levels(0)
    fit = nz.BlockNewtonLogit(2, prior=nz.MEDIATOR_PRIOR).fit(X, a, m, 6)
    P = fit.predict_proba_all(X, 6)
    for k in range(2):
        rows = a == k
        assert _level_error(P[rows, k], m[rows], true[rows]) < 0.5
    assert np.abs(fit.coef_).max() < 100
    assert not fit.converged_
    # a block that converges is untouched: binary levels converge, as before
    ok = nz.BlockNewtonLogit(2, prior=nz.MEDIATOR_PRIOR).fit(X, a, (m > 0).astype(int), 2)
    assert ok.converged_


def test_conjugate_gradient_newton_step_is_preconditioned(monkeypatch):
    """CG's Newton steps on a near-collinear basis with rare classes: few Hessian products.

    Unpreconditioned, the first two steps of the 12-class design took 91 and 154
    Hessian-vector products (a 25-action behaviour model on a program panel: 196, 90 % of the
    behaviour fit); with the class-diagonal blocks as preconditioner 12 and 6. Both solve the
    exact Newton step (its linear predictors to 5e-8).
    """
    import scipy.sparse.linalg as sl

    count = [0]
    cg = sl.cg

    def counted(A, b, **kw):
        def mv(v):
            count[0] += 1
            return A.matvec(v)
        return cg(sl.LinearOperator(A.shape, matvec=mv, dtype=np.float64), b, **kw)

    monkeypatch.setattr(sl, "cg", counted)
    X, y, _ = _rare_actions(0)
    Y = np.eye(12)[y][:, 1:]
    n, p = X.shape
    lam = 1e-6 * nz.sqsum(X) / p
    B = np.zeros((p, 11))
    for _ in range(2):
        P = nz._logit_probs(X, B)[:, 1:]
        g = np.asarray(X.T @ (P - Y)) + lam * B
        count[0] = 0
        step = nz._newton_cg_step(X, P, g, lam)
        exact = nz._newton_step(X, P, g, lam)
        assert count[0] <= 30
        assert np.abs(X @ (step - exact)).max() < 1e-6
        B = B - exact
