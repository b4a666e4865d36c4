"""The sparse LSTD fits and their linearised refit: derivatives against refitting with weights."""

from __future__ import annotations

import numpy as np
import pytest

from equicare.ope._core import episode_parts
from equicare.ope._evaluate import _with_q_refit
from equicare.ope._fqe import FQEConfig, fit_fqe, fit_fqe_logged
from equicare.ope._prepare import prepare
from tests.ope._garnet import make

CONFIGS = [FQEConfig(model="tabular", horizon="stationary"), FQEConfig(model="linear"),
           FQEConfig(model="tabular", horizon="window")]


def _estimates(ds, pe, prep, cfg, ep_w):
    """FQE, DR and WDR with the Q-model refitted under episode weights ``ep_w``."""
    fit = fit_fqe_logged(ds, pe, cfg, weights=ep_w[ds.episode_index])
    parts = episode_parts(prep.inputs.with_q(fit.q_sa, fit.v), ("fqe", "dr", "wdr"))
    sums = ep_w @ parts.matrix
    from equicare.ope._core import combine

    return {k: float(v) for k, v in combine(parts, sums, np.asarray(ep_w.sum())).items()}


@pytest.mark.parametrize(("cfg", "preset"), [
    (CONFIGS[0], "s50_a5_g099"), (CONFIGS[1], "s50_a5_g099"), (CONFIGS[2], "s50_a5_g099"),
    (CONFIGS[2], "s50_a25_g1")],
    ids=["tabular_stationary", "linear", "tabular_window", "tabular_window_censored"])
def test_linearised_refit_is_the_derivative_of_refitting(cfg, preset):
    """Replicate estimates with the influence parts match refits to first order (1e-5)."""
    _, ds, pols = make(preset, 300, seed=3)
    if preset == "s50_a25_g1":  # the window table's censored rows: "not absorbed", no next
        assert ds.censored.any() and ds.terminals.any()
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    prep = prepare(ds, pe, keys=("fqe", "dr", "wdr"), q_model=cfg)
    assert prep.q_linearised
    parts = _with_q_refit(prep, episode_parts(prep.inputs, ("fqe", "dr", "wdr")), None,
                          "absorbing")
    from equicare.ope._core import combine

    rng = np.random.default_rng(0)
    u = rng.standard_normal(ds.n_episodes)
    u -= u.mean()
    eps = 1e-4
    n = float(ds.n_episodes)
    lin_up = combine(parts, (1 + eps * u) @ parts.matrix, np.asarray(n))
    lin_dn = combine(parts, (1 - eps * u) @ parts.matrix, np.asarray(n))
    up = _estimates(ds, pe, prep, cfg, 1 + eps * u)
    dn = _estimates(ds, pe, prep, cfg, 1 - eps * u)
    for k in ("fqe", "dr", "wdr"):
        exact = (up[k] - dn[k]) / (2 * eps)
        lin = float(lin_up[k] - lin_dn[k]) / (2 * eps)
        assert lin == pytest.approx(exact, rel=1e-4, abs=1e-6), k


def test_tabular_weights_zero_rows_are_only_predicted():
    """Rows of weight 0 never enter the fit; cells no training row visits get Q = 0."""
    _, ds, pols = make("s50_a5_g1", 200, seed=4)
    pe = pols["behavior"][ds.categorical[:, 0]]
    w = (ds.episode_index % 2 == 0).astype(float)
    cfg = FQEConfig(model="tabular", horizon="stationary")
    fit = fit_fqe_logged(ds, pe, cfg, weights=w)
    train = ds.subset(np.flatnonzero(np.arange(ds.n_episodes) % 2 == 0))
    alone = fit_fqe(train, pe[w > 0], cfg)
    np.testing.assert_allclose(fit.q_sa[w > 0], alone.q[np.arange(train.n_steps),
                                                         train.actions], atol=1e-9)
    seen = np.isin(ds.categorical[:, 0], train.categorical[:, 0])
    assert np.all(fit.v[~seen] == 0.0)


def test_wide_categorical_linear_fit_memory_is_linear_in_rows():
    """700 levels x 25 actions: the sparse design peaks far below a dense (p, p, m) block."""
    import tracemalloc

    _, ds, pols = make("s700_a25_g1", 1500, seed=5)
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    tracemalloc.start()
    fit = fit_fqe_logged(ds, pe, FQEConfig(model="linear"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert fit.info["design"] == "sparse" and fit.lstd is not None
    # a dense (p, p, m) block alone would be 701 * 701 * 26 * 8 bytes = 102 MB
    assert peak < 60e6, peak


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("where", ["xtx", "b"])
def test_a_non_finite_system_is_none_and_never_reaches_lapack(sparse, where, monkeypatch):
    """A NaN in the sums gives None (the caller skips the Q-model), like a singular system,
    without factorising it (OpenBLAS's getrf can pick out-of-range pivots on NaN input)."""
    import scipy.linalg
    import scipy.sparse as sp
    import scipy.sparse.linalg

    from equicare.ope._lstd import LSTDSums, solve_lstd_sums

    rng = np.random.default_rng(0)
    n = 6
    xtx = np.eye(n) * 4 + rng.random((n, n)) * 0.1
    b = rng.random(n)
    good = LSTDSums(xtx=sp.csr_matrix(xtx) if sparse else xtx, cross=None, b=b)
    sol = solve_lstd_sums(good, 0.0, np.zeros(n))
    assert sol is not None
    np.testing.assert_allclose(xtx @ sol.theta, b, rtol=1e-10)
    if where == "xtx":
        xtx = xtx.copy()
        xtx[2, 3] = np.nan
    else:
        b = b.copy()
        b[1] = np.inf
    bad = LSTDSums(xtx=sp.csr_matrix(xtx) if sparse else xtx, cross=None, b=b)

    def refuse(*args, **kwargs):
        raise AssertionError("a non-finite system reached the LU factorisation")

    monkeypatch.setattr(scipy.linalg, "lu_factor", refuse)
    monkeypatch.setattr(scipy.sparse.linalg, "splu", refuse)
    assert solve_lstd_sums(bad, 0.0, np.zeros(n)) is None


def test_a_structurally_singular_sparse_system_is_none_without_superlu(monkeypatch, capfd):
    """Above DENSE_PARAMS the LU is SuperLU's; a parameter no row touches makes the system
    structurally singular, which gives None before SuperLU (it prints BLAS errors to stdout on
    such matrices before raising)."""
    import scipy.sparse as sp
    import scipy.sparse.linalg

    from equicare.ope._lstd import DENSE_PARAMS, LSTDSums, solve_lstd_sums

    n = DENSE_PARAMS + 50
    diag = np.full(n, 2.0)
    good = LSTDSums(xtx=sp.diags(diag).tocsr(), cross=None, b=np.ones(n))
    sol = solve_lstd_sums(good, 0.0, np.zeros(n))
    assert sol is not None
    np.testing.assert_allclose(sol.theta, 0.5)
    diag[[7, 100, n - 1]] = 0.0
    bad = LSTDSums(xtx=sp.diags(diag).tocsr(), cross=None, b=np.ones(n))

    def refuse(*args, **kwargs):
        raise AssertionError("a structurally singular system reached SuperLU")

    monkeypatch.setattr(scipy.sparse.linalg, "splu", refuse)
    assert solve_lstd_sums(bad, 0.0, np.zeros(n)) is None
    assert capfd.readouterr().out == ""


def _stationary_system(preset: str, n_episodes: int):
    """The stationary table's ``M`` (CSC) and ``b`` on a Garnet panel (soft-optimal target)."""
    import scipy.sparse as sp

    from equicare.ope._fqe import _cells, _next_rows, _tabular_design
    from equicare.ope._lstd import SparsePi, lstd_sums

    _, ds, pols = make(preset, n_episodes, seed=5)
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    x, x_pi, *_ = _tabular_design(_cells(ds)[0], ds.actions, pe)
    s = lstd_sums(x, SparsePi(x_pi), ds.rewards, _next_rows(ds)[1], ds.gamma)
    m = sp.csc_matrix(s.xtx - ds.gamma * s.cross)
    return m, s


def test_large_systems_are_solved_iteratively_to_the_lu_solution(monkeypatch):
    """Above DENSE_PARAMS the stationary table (gamma 1, stays up to 120 steps) is solved by
    Jacobi-preconditioned GMRES without SuperLU; theta and the transposed solves agree with
    SuperLU's to 1e-9."""
    import scipy.sparse.linalg

    from equicare.ope._lstd import DENSE_PARAMS, solve_lstd_sums

    m, sums = _stationary_system("s700_a25_g1", 3000)
    n = m.shape[0]
    assert n > DENSE_PARAMS
    lu = scipy.sparse.linalg.splu(m)
    theta_lu = lu.solve(sums.b)
    g = np.random.default_rng(1).standard_normal((n, 3))
    z_lu = lu.solve(g, trans="T")

    def refuse(*args, **kwargs):
        raise AssertionError("SuperLU was called although GMRES converges")

    monkeypatch.setattr(scipy.sparse.linalg, "splu", refuse)
    sol = solve_lstd_sums(sums, 1.0, np.zeros(n))
    assert sol is not None
    np.testing.assert_allclose(sol.theta, theta_lu, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sol.solve_t(g), z_lu, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(sol.solve_t(g[:, 0]), z_lu[:, 0], rtol=1e-8, atol=1e-8)


def test_where_gmres_does_not_converge_superlu_solves(monkeypatch):
    """A column GMRES leaves above ITERATIVE_RTOL goes to SuperLU (the same numbers), and a
    system SuperLU finds exactly singular is None, as without the iterative path."""
    import scipy.sparse as sp
    import scipy.sparse.linalg

    import equicare.ope._lstd as lstd

    m, sums = _stationary_system("s700_a25_g1", 3000)
    n = m.shape[0]
    ref = scipy.sparse.linalg.splu(m)
    scipy_lu_theta = ref.solve(sums.b)
    monkeypatch.setattr(lstd, "ITERATIVE_MAXITER", 1)  # 1 restart cycle: too few here
    monkeypatch.setattr(lstd, "ITERATIVE_RTOL", 1e-15)
    sol = lstd.solve_lstd_sums(sums, 1.0, np.zeros(n))
    assert sol is not None
    np.testing.assert_allclose(sol.theta, scipy_lu_theta, rtol=1e-12, atol=1e-12)
    g = np.ones((n, 2))
    np.testing.assert_allclose(sol.solve_t(g), ref.solve(g, trans="T"), rtol=1e-12, atol=1e-12)
    # a closed loop without exit at gamma 1: M = D - C with C = D on a 2-cycle is singular
    k = lstd.DENSE_PARAMS + 10
    d = np.full(k, 2.0)
    xtx = sp.diags(d).tocsr()
    perm = np.arange(k) ^ 1  # pairs (0, 1), (2, 3), ... lead to each other
    cross = sp.csr_matrix((d, (np.arange(k), perm)), shape=(k, k))
    loop = lstd.LSTDSums(xtx=xtx, cross=cross, b=np.ones(k))
    assert lstd.solve_lstd_sums(loop, 1.0, np.zeros(k)) is None


def test_a_closed_loop_without_reward_keeps_theta_and_solves_its_adjoint():
    """At gamma 1 a loop of pairs without exit and without reward makes the system singular
    but consistent: GMRES returns theta = 0 on the loop (the vanishing-ridge limit) and the
    transposed solve, inconsistent where a functional reaches the loop, used to raise
    SuperLU's "Factor is exactly singular" (a 2-fold auto fit on a 700-state x 30-site panel).
    Now it is the vanishing ridge's solve: exact off the loop, finite and large on it."""
    import scipy.sparse as sp

    import equicare.ope._lstd as lstd

    k = lstd.DENSE_PARAMS + 10
    d = np.full(k, 2.0)
    xtx = sp.diags(d).tocsr()
    # pairs 0 and 1 lead to each other; every other pair ends its episode
    cross = sp.csr_matrix((d[:2], ([0, 1], [1, 0])), shape=(k, k))
    b = np.r_[0.0, 0.0, np.ones(k - 2)]
    sol = lstd.solve_lstd_sums(lstd.LSTDSums(xtx=xtx, cross=cross, b=b), 1.0, np.zeros(k))
    assert sol is not None
    np.testing.assert_allclose(sol.theta, b / 2.0, atol=1e-10)
    z = sol.solve_t(np.ones(k))
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[2:], 0.5, rtol=1e-8)
    assert np.all(z[:2] > 1e6)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["tabular_stationary", "linear", "tabular_window"])
def test_a_subgroups_linearised_refit_is_the_derivative_of_refitting(cfg):
    """A subgroup's estimates move with the Q-model refitted on every episode: its own
    episodes' terms (in the parts) plus the other episodes' effects match refits to first
    order, for a perturbation that keeps each stratum's total weight (the stratified
    bootstrap's)."""
    from equicare.ope._core import combine
    from equicare.ope._evaluate import _subgroup_q_refit

    _, ds, pols = make("s50_a5_g099", 300, seed=3)
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    prep = prepare(ds, pe, keys=("fqe", "dr", "wdr"), q_model=cfg)
    labels = ds.group_labels("group")
    g = np.flatnonzero(labels == np.unique(labels)[0])
    assert 30 < g.size < ds.n_episodes - 30
    keys = ("fqe", "dr", "wdr")
    parts_g, other = _subgroup_q_refit(prep, episode_parts(prep.inputs.subset(g), keys), g,
                                       None, "absorbing")
    assert other.shape == (ds.n_episodes - g.size, 3)
    # centred terms: the point estimates are those without the refit
    plain = combine(parts_g, parts_g.matrix.sum(axis=0), np.asarray(float(g.size)))
    no_refit = episode_parts(prep.inputs.subset(g), keys)
    for k, v in combine(no_refit, no_refit.matrix.sum(axis=0),
                        np.asarray(float(g.size))).items():
        assert float(plain[k]) == pytest.approx(float(v), rel=1e-12), k
    rng = np.random.default_rng(0)
    u = rng.standard_normal(ds.n_episodes)
    in_g = np.zeros(ds.n_episodes, dtype=bool)
    in_g[g] = True
    u[in_g] -= u[in_g].mean()
    u[~in_g] -= u[~in_g].mean()
    eps = 1e-4

    def linear(sign: float) -> dict[str, float]:
        w = 1 + sign * eps * u
        est = combine(parts_g, w[g] @ parts_g.matrix, np.asarray(w[g].sum()))
        shift = (w[~in_g] - 1) @ other
        return {k: float(est[k]) + float(shift[j]) for j, k in enumerate(keys)}

    def refit(sign: float) -> dict[str, float]:
        w = 1 + sign * eps * u
        fit = fit_fqe_logged(ds, pe, cfg, weights=w[ds.episode_index])
        parts = episode_parts(prep.inputs.with_q(fit.q_sa, fit.v).subset(g), keys)
        est = combine(parts, w[g] @ parts.matrix, np.asarray(w[g].sum()))
        return {k: float(v) for k, v in est.items()}

    lin_up, lin_dn, up, dn = linear(1.0), linear(-1.0), refit(1.0), refit(-1.0)
    for k in keys:
        exact = (up[k] - dn[k]) / (2 * eps)
        lin = (lin_up[k] - lin_dn[k]) / (2 * eps)
        assert abs(exact) > 1e-3, k  # the refit moves the subgroup's estimate
        assert lin == pytest.approx(exact, rel=1e-4, abs=1e-6), k
