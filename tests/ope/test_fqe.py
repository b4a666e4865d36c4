"""Fitted-Q evaluation against exact dynamic-programming values."""

from __future__ import annotations

import re

import numpy as np
import pytest

from equicare import utils
from equicare.exceptions import InvalidParameterError
from equicare.ope import FQEConfig, fit_fqe
from equicare.ope._fqe import fit_fqe_logged
from equicare.policy import TabularPolicy

from ._mdp import BEHAVIOR, TARGET, TabularMDP, small_mdp


def _deterministic_mdp() -> TabularMDP:
    P = np.zeros((3, 2, 3))
    P[0, 0, 1] = P[0, 1, 2] = P[1, 0, 0] = P[1, 1, 2] = P[2, 0, 1] = P[2, 1, 0] = 1.0
    R = np.array([[0.0, 1.0], [2.0, -1.0], [0.5, 0.25]])
    return TabularMDP(P=P, R=R, init=np.array([0.5, 0.3, 0.2]), horizon=4, gamma=0.9)


def test_tabular_backward_is_exact_on_deterministic_mdp():
    mdp = _deterministic_mdp()
    beh = np.full((3, 2), 0.5)
    target = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    ds = mdp.sample(beh, 400, seed=0)
    pe = TabularPolicy(target).action_probs(ds)
    fit = fit_fqe(ds, pe, FQEConfig(model="tabular"))
    q_true = mdp.q_tables(target)[ds.step, ds.categorical[:, 0]]
    # every (t, s, a) reachable at step t is visited with 400 episodes: FQE is exact
    np.testing.assert_allclose(fit.q, q_true, atol=1e-12)
    np.testing.assert_allclose(fit.v[ds.is_first].mean(),
                               (q_true * pe).sum(axis=1)[ds.is_first].mean(), atol=1e-12)


@pytest.mark.parametrize("end", [False, True])
def test_tabular_backward_close_to_truth_on_stochastic_mdp(end):
    mdp = small_mdp(end=end, horizon=4)
    ds = mdp.sample(BEHAVIOR, 4000, seed=2)
    pe = TabularPolicy(TARGET).action_probs(ds)
    fit = fit_fqe(ds, pe, FQEConfig(model="tabular"))
    q_true = mdp.q_tables(TARGET)[ds.step, ds.categorical[:, 0]]
    # cell means of ~1000+ rows: errors of a few hundredths
    assert np.abs(fit.q - q_true).max() < 0.1
    assert fit.v[ds.is_first].mean() == pytest.approx(mdp.value(TARGET), abs=0.05)


def test_tabular_stationary_solves_the_empirical_bellman_equation():
    """With horizon 1 the stationary and backward tabular models coincide (cell means)."""
    mdp = small_mdp(end=False, horizon=1)
    ds = mdp.sample(BEHAVIOR, 500, seed=0)
    pe = TabularPolicy(TARGET).action_probs(ds)
    a = fit_fqe(ds, pe, FQEConfig(model="tabular", horizon="stationary"))
    b = fit_fqe(ds, pe, FQEConfig(model="tabular", horizon="backward"))
    np.testing.assert_allclose(a.q, b.q, atol=1e-12)
    np.testing.assert_allclose(a.q, mdp.R[ds.categorical[:, 0]], atol=1e-12)


def test_tabular_stationary_fixed_point_property():
    mdp = small_mdp(end=True, horizon=5)
    ds = mdp.sample(BEHAVIOR, 300, seed=4)
    pe = TabularPolicy(TARGET).action_probs(ds)
    fit = fit_fqe(ds, pe, FQEConfig(model="tabular", horizon="stationary"))
    # Q(s,a) = mean over rows in (s,a) of r + gamma * V(next row)
    nxt = np.where(ds.is_last, 0, ds.next_index)
    y = ds.rewards + ds.gamma * np.where(ds.is_last, 0.0, fit.v[nxt])
    key = ds.categorical[:, 0] * 2 + ds.actions
    means = np.bincount(key, y, 4) / np.bincount(key, minlength=4)
    np.testing.assert_allclose(fit.q[np.arange(ds.n_steps), ds.actions], means[key], atol=1e-10)


def test_linear_one_step_equals_cell_means():
    mdp = small_mdp(end=False, horizon=1)
    mdp.noise_sd = 0.3
    ds = mdp.sample(BEHAVIOR, 2000, seed=1)
    pe = TabularPolicy(TARGET).action_probs(ds)
    lin = fit_fqe(ds, pe, FQEConfig(model="linear", alpha=1e-6, time_features=False))
    tab = fit_fqe(ds, pe, FQEConfig(model="tabular"))
    np.testing.assert_allclose(lin.q, tab.q, atol=1e-5)
    assert lin.info["solver"] == "fixed_point" or lin.info["solver"] == "ridge"


def test_linear_fixed_point_equals_iterated_fqe():
    mdp = small_mdp(end=True, horizon=6, gamma=0.8)
    ds = mdp.sample(BEHAVIOR, 300, seed=3)
    pe = TabularPolicy(TARGET).action_probs(ds)
    fp = fit_fqe(ds, pe, FQEConfig(model="linear"))
    it = fit_fqe(ds, pe, FQEConfig(model="linear", solver="iterate", n_iterations=300))
    assert fp.info["solver"] == "fixed_point" and it.info["solver"] == "iterate"
    np.testing.assert_allclose(fp.q, it.q, atol=1e-8)
    assert fp.q.shape == (ds.n_steps, 2)
    np.testing.assert_allclose(fp.v, (fp.q * pe).sum(axis=1))


def test_gamma_zero_is_a_reward_model():
    mdp = small_mdp(end=False, horizon=3)
    ds = mdp.sample(BEHAVIOR, 500, seed=0)
    pe = TabularPolicy(TARGET).action_probs(ds)
    fit = fit_fqe(ds, pe, FQEConfig(model="tabular"), gamma=0.0)
    np.testing.assert_allclose(fit.q, mdp.R[ds.categorical[:, 0]], atol=1e-12)


@pytest.mark.parametrize("cfg", [FQEConfig(model="gbm", gbm_max_iter=20),
                                 FQEConfig(model="gbm", horizon="stationary", gbm_max_iter=20,
                                           n_iterations=3),
                                 FQEConfig(model="mlp", n_iterations=3, epochs=20, hidden=(16,),
                                           batch_size=128, learning_rate=1e-2)])
def test_gbm_and_mlp_fit(cfg):
    import torch

    torch.set_num_threads(1)
    mdp = small_mdp(end=False, horizon=3)
    ds = mdp.sample(BEHAVIOR, 300, seed=0)
    pe = TabularPolicy(TARGET).action_probs(ds)
    a = fit_fqe(ds, pe, cfg, random_state=0)
    b = fit_fqe(ds, pe, cfg, random_state=0)
    assert a.q.shape == (ds.n_steps, 2) and np.isfinite(a.q).all()
    np.testing.assert_allclose(a.q, b.q)  # same seed, same numbers
    # V at the first step within a loose band of the truth (value about 1.1 here)
    assert abs(a.v[ds.is_first].mean() - mdp.value(TARGET)) < 0.5


def test_config_round_trip_and_errors():
    cfg = FQEConfig(model="mlp", hidden=(8, 4), epochs=3)
    assert FQEConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.resolved_horizon == "stationary"
    assert FQEConfig(model="gbm").resolved_horizon == "backward"
    msg = ("The 'model' parameter of FQEConfig must be one of 'auto', 'tabular', 'linear', 'gbm', "
           "'mlp'. ")
    with pytest.raises(ValueError, match=re.escape(msg + "Got 'cnn' instead.")):
        FQEConfig(model="cnn")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(
            "The 'horizon' parameter of FQEConfig must be 'stationary' or 'auto' for "
            "model='linear'. Got 'backward' instead.")):
        FQEConfig(model="linear", horizon="backward")
    with pytest.raises(ValueError, match=re.escape(
            "The 'alpha' parameter of FQEConfig must be a number in (0, inf). Got 0 instead.")):
        FQEConfig(alpha=0)


def test_tabular_needs_categorical_states():
    mdp = small_mdp()
    ds = mdp.sample(BEHAVIOR, 20, seed=0)
    from dataclasses import replace

    ds2 = replace(ds, categorical=None, categorical_names=(), categorical_levels=(), _cache={})
    from equicare.ope._fqe import MSG_TABULAR_NUMERIC

    # names the command-line flag as well as the Python argument
    assert "--q-model linear" in MSG_TABULAR_NUMERIC
    with pytest.raises(InvalidParameterError, match=re.escape(MSG_TABULAR_NUMERIC)):
        fit_fqe(ds2, np.full((ds2.n_steps, 2), 0.5), FQEConfig(model="tabular"))


def test_a_singular_stationary_table_is_a_user_error_naming_the_flag(monkeypatch):
    import equicare.ope._fqe as fqe_mod
    from equicare.ope._fqe import MSG_SINGULAR_STATIONARY

    mdp = small_mdp(end=False, horizon=1)
    ds = mdp.sample(BEHAVIOR, 50, seed=0)
    monkeypatch.setattr(fqe_mod, "solve_lstd", lambda *a, **k: None)  # no solution, even ridged
    assert "--q-model tabular_backward" in MSG_SINGULAR_STATIONARY
    with pytest.raises(InvalidParameterError, match=re.escape(MSG_SINGULAR_STATIONARY)):
        fit_fqe(ds, TabularPolicy(TARGET).action_probs(ds),
                FQEConfig(model="tabular", horizon="stationary"))


def _care_data():
    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig())
    return sim.generate(n_members=40, n_weeks=8, random_state=0).dataset()


@pytest.mark.parametrize("cfg", [FQEConfig(model="linear"),
                                 FQEConfig(model="linear", solver="iterate", n_iterations=5),
                                 FQEConfig(model="linear", action_design="flat"),
                                 FQEConfig(model="linear", state_design="quadratic")])
@pytest.mark.parametrize("gamma", [None, 0.0])
def test_row_blocks_give_the_numbers_of_the_dense_fit(monkeypatch, cfg, gamma):
    """Linear FQE in row blocks far smaller than the data equals the one-block, dense fit."""
    ds = _care_data()  # 300 factored actions: the per-component design unless "flat"
    pe = np.random.default_rng(0).dirichlet(np.full(ds.n_actions, 0.3), size=ds.n_steps)
    dense = fit_fqe(ds, pe, cfg, gamma=gamma)  # one block at this size
    monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 2 * ds.n_actions)
    assert len(list(utils.row_blocks(ds.n_steps, ds.n_actions))) > 100
    logged = fit_fqe_logged(ds, pe, cfg, gamma=gamma)
    assert logged.info == dense.info
    rows = np.arange(ds.n_steps)
    np.testing.assert_allclose(logged.q_sa, dense.q[rows, ds.actions], rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(logged.v, dense.v, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(logged.q, dense.q, rtol=1e-9, atol=1e-10)
    blocked = fit_fqe(ds, pe, cfg, gamma=gamma)
    np.testing.assert_allclose(blocked.q, dense.q, rtol=1e-9, atol=1e-10)


def test_logged_fit_of_a_dense_model_keeps_its_matrix():
    mdp = small_mdp(end=True, horizon=4)
    ds = mdp.sample(BEHAVIOR, 200, seed=0)
    pe = TabularPolicy(TARGET).action_probs(ds)
    dense = fit_fqe(ds, pe, FQEConfig(model="tabular"))
    logged = fit_fqe_logged(ds, pe, FQEConfig(model="tabular"))
    np.testing.assert_array_equal(logged.q, dense.q)
    np.testing.assert_array_equal(logged.q_sa, dense.q[np.arange(ds.n_steps), ds.actions])
    np.testing.assert_array_equal(logged.v, dense.v)


def _window_reference(ds, pe, gamma, w):
    """Loop reference of the window model: pair statistics, censoring share, recursion."""
    cell, a, r = ds.categorical[:, 0], ds.actions, ds.rewards
    nxt, term = ds.next_index, ds.terminals
    has_next = (nxt >= 0) & ~term
    n_a = pe.shape[1]
    stats: dict = {}
    for i in range(ds.n_steps):
        if w[i] > 0:
            s = stats.setdefault((cell[i], a[i]), {"w": 0.0, "r": 0.0, "term": 0.0, "next": []})
            s["w"] += w[i]
            s["r"] += w[i] * r[i]
            s["term"] += w[i] * term[i]
            if has_next[i]:
                s["next"].append((w[i], nxt[i]))
    horizon = int(ds.step.max()) + 1
    c = np.zeros(horizon)
    for t in range(horizon):
        at = (ds.step == t) & ~term
        c[t] = (w[at] * has_next[at]).sum() / w[at].sum() if w[at].sum() > 0 else 0.0
    tables = [None] * (horizon + 1)

    def table(t):  # Q_t per (cell, action), unvisited actions = mean of the visited ones
        if t == horizon:
            return lambda s: np.zeros(n_a)
        if tables[t] is None:
            nxt_tab = table(t + 1)
            q = {}
            for (s, act), st in stats.items():
                wn = sum(wi for wi, _ in st["next"])
                pv = sum(wi * pe[j] @ nxt_tab(cell[j]) for wi, j in st["next"]) / wn if wn else 0.0
                q[(s, act)] = st["r"] / st["w"] + gamma * c[t] * (1 - st["term"] / st["w"]) * pv

            def row(s, q=q):
                vis = {act: v for (cc, act), v in q.items() if cc == s}
                if not vis:
                    return np.zeros(n_a)
                m = np.mean(list(vis.values()))
                return np.array([vis.get(act, m) for act in range(n_a)])
            tables[t] = row
        return tables[t]

    return np.array([table(int(ds.step[i]))(cell[i]) for i in range(ds.n_steps)])


@pytest.mark.parametrize("weighted", [False, True])
def test_tabular_window_equals_a_loop_reference(weighted):
    """Stationary dynamics valued over the logged window: terminal, censored and weighted rows."""
    from equicare.sim.garnet import GarnetConfig, GarnetMDP, garnet_target_policies

    from ._garnet import panel_dataset

    mdp = GarnetMDP(GarnetConfig(n_states=6, n_actions=3, n_successors=2, gamma=0.9,
                                 max_horizon=5), random_state=0)
    ds = panel_dataset(mdp, mdp.simulate(40, random_state=1))
    assert ds.terminals.any() and ds.censored.any()
    pe = garnet_target_policies(mdp)["soft_optimal"][ds.categorical[:, 0]]
    w = np.ones(ds.n_steps)
    if weighted:  # cross-fitting weights: whole episodes held out, others weighted
        w = np.random.default_rng(2).choice([0.0, 1.0, 2.5], ds.n_episodes)[ds.episode_index]
    fit = fit_fqe_logged(ds, pe, FQEConfig(model="tabular", horizon="window"), weights=w)
    ref = _window_reference(ds, pe, 0.9, w)
    np.testing.assert_allclose(fit.q, ref, atol=1e-12)
    assert fit.info["solver"] == "window" and fit.info["horizon"] == 5
    with pytest.raises(ValueError, match=re.escape("('window' is tabular only)")):
        FQEConfig(model="gbm", horizon="window")


def test_tabular_window_through_evaluate():
    """``q_model="tabular_window"`` reaches the estimators; its FQE value is the fit's."""
    from equicare.ope import evaluate
    from equicare.sim.garnet import GarnetConfig, GarnetMDP, garnet_target_policies

    from ._garnet import panel_dataset

    mdp = GarnetMDP(GarnetConfig(n_states=8, n_actions=3, n_successors=2, max_horizon=6),
                    random_state=0)
    ds = panel_dataset(mdp, mdp.simulate(60, random_state=1))
    pe = garnet_target_policies(mdp)["mixture_30"][ds.categorical[:, 0]]
    res = evaluate(ds, pe, q_model="tabular_window", bootstrap=20, groups=(), random_state=0)
    fit = fit_fqe_logged(ds, pe, FQEConfig(model="tabular", horizon="window"))
    assert res.estimates["fqe"].value == pytest.approx(fit.v[ds.is_first].mean(), abs=1e-12)
