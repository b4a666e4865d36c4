"""Garnet test-bed panels as TrajectoryDatasets (no files) and their exact values."""

from __future__ import annotations

from typing import Any

import numpy as np

from equicare.data import TrajectoryDataset
from equicare.sim.garnet import GarnetMDP, GarnetPanel, garnet_preset, garnet_target_policies
from equicare.spaces import FactoredActionSpace

#: Target-policy families in the clinicians' support (stochastic) used by the accuracy and
#: coverage studies, and the deterministic optimum among supported actions.
SUPPORTED = ("soft_optimal", "mixture_30", "tilted")


def panel_dataset(mdp: GarnetMDP, panel: GarnetPanel) -> TrajectoryDataset:
    """The panel as a dataset: categorical ``state``, numeric ``severity``, logged propensities."""
    offsets = np.r_[0, np.cumsum(panel.lengths)].astype(np.int64)
    n_s = mdp.n_states
    return TrajectoryDataset(
        states=panel.severity[:, None].astype(np.float32), actions=panel.action.astype(np.int64),
        reward_components=panel.reward[:, None], terminals=panel.terminal.astype(bool),
        episode_offsets=offsets, episode_ids=np.arange(panel.n_episodes),
        times=panel.t.astype(np.int64), action_space=FactoredActionSpace.single(mdp.n_actions),
        gamma=float(mdp.config.gamma), groups={"group": panel.group.astype(str)},
        categorical=panel.state[:, None].astype(np.int64), categorical_names=("state",),
        categorical_levels=(tuple(range(n_s)),), behavior_prob=panel.propensity,
        state_names=("severity",))


def make(preset: str, n_episodes: int, seed: int, mdp_seed: int = 1
         ) -> tuple[GarnetMDP, TrajectoryDataset, dict[str, np.ndarray]]:
    """MDP (seeded by ``mdp_seed``), a panel of ``n_episodes`` (seeded by ``seed``), policies."""
    mdp = GarnetMDP(garnet_preset(preset), random_state=mdp_seed)
    panel = mdp.simulate(n_episodes, random_state=seed)
    return mdp, panel_dataset(mdp, panel), garnet_target_policies(mdp)


def with_site(ds: TrajectoryDataset, site: np.ndarray, name: str = "site"
              ) -> TrajectoryDataset:
    """``ds`` with a second categorical state column: ``site`` per episode (its levels
    0..max)."""
    from dataclasses import replace

    site = np.asarray(site, dtype=np.int64)
    levels = tuple(range(int(site.max()) + 1))
    return replace(ds, categorical=np.c_[ds.categorical, site[ds.episode_index]],
                   categorical_names=(*ds.categorical_names, name),
                   categorical_levels=(*ds.categorical_levels, levels), _cache={})


def two_site_panel(preset: str, n_per_site: int, seed: int, family: str
                   ) -> tuple[TrajectoryDataset, np.ndarray, float]:
    """A site column that matters: site j's episodes come from Garnet MDP ``j + 1``.

    Returns the panel (categorical ``state``, ``site``), the target probabilities of every row
    (``family`` of the row's site) and the exact value (the sites' mean).
    """
    from dataclasses import replace

    mdps = [GarnetMDP(garnet_preset(preset), random_state=1 + j) for j in range(2)]
    pols = [garnet_target_policies(m)[family] for m in mdps]
    parts = [panel_dataset(m, m.simulate(n_per_site, random_state=seed + 1000 * j))
             for j, m in enumerate(mdps)]
    a, b = parts
    cat = lambda f: np.concatenate([getattr(a, f), getattr(b, f)])  # noqa: E731
    ds = replace(a, states=cat("states"), actions=cat("actions"),
                 reward_components=cat("reward_components"), terminals=cat("terminals"),
                 episode_offsets=np.r_[a.episode_offsets, b.episode_offsets[1:] + a.n_steps],
                 episode_ids=np.arange(a.n_episodes + b.n_episodes), times=cat("times"),
                 groups={k: np.concatenate([a.groups[k], b.groups[k]]) for k in a.groups},
                 categorical=cat("categorical"), behavior_prob=cat("behavior_prob"), _cache={})
    site = np.r_[np.zeros(a.n_episodes, np.int64), np.ones(b.n_episodes, np.int64)]
    two = with_site(ds, site)
    s = two.categorical[:, 0]
    pe = np.where((two.categorical[:, 1] == 0)[:, None], pols[0][s], pols[1][s])
    return two, pe, float(np.mean([m.value(p) for m, p in zip(mdps, pols, strict=True)]))


#: Configurations of the accuracy and coverage studies (S in {50, 700}, A in {5, 25}, both
#: gammas); the 5,000-state ones are in the benchmark.
STUDY_PRESETS = ("s50_a5_g1", "s50_a5_g099", "s50_a25_g1", "s700_a5_g099", "s700_a25_g1",
                 "s700_a25_g099")


def study(presets: tuple[str, ...], families: tuple[str, ...], reps: int, n_episodes: int,
          q_models: tuple[str, ...] = ("auto",), bootstrap: int = 200, seed0: int = 100,
          ci_methods: tuple[str, ...] = ("studentized",), rep0: int = 0
          ) -> list[dict[str, object]]:
    """Evaluate each family on ``reps`` fresh panels of each preset; one record per estimate.

    Panel ``rep`` (``rep0 <= rep < rep0 + reps``) is simulated with seed ``seed0 + rep`` and
    evaluated with ``random_state=rep``. Each (family, Q-model) is prepared once and its
    estimates computed for every interval method exactly as :func:`equicare.ope.evaluate` does
    (the same seeds, nuisance models, linearised refit and bias-aware FQE interval; no
    subgroups or support diagnostics, which do not change the overall estimates). Records:
    preset, family, rep, q_model, ci_method, chosen, estimator, value, truth, rel_error,
    covered, ci_low, ci_high, se, q_bias and q_bias_se (the chosen Q-model's bias estimated by
    ``auto``, None for a fixed model), width (relative to the truth).
    """
    import warnings

    from equicare.ope._evaluate import estimates_from_prepared
    from equicare.ope._prepare import as_fqe_config, prepare
    from equicare.utils import check_random_state

    keys = ("fqe", "dr", "wdr")
    out: list[dict[str, object]] = []
    for preset in presets:
        mdp = GarnetMDP(garnet_preset(preset), random_state=1)
        pols = garnet_target_policies(mdp)
        truths = {f: mdp.value(pols[f]) for f in families}
        for rep in range(rep0, rep0 + reps):
            panel = mdp.simulate(n_episodes, random_state=seed0 + rep)
            ds = panel_dataset(mdp, panel)
            for fam in families:
                pe = pols[fam][ds.categorical[:, 0]]
                for qm in q_models:
                    rng = check_random_state(rep)  # evaluate's seeds for random_state=rep
                    seed_prep, seed_boot, _ = (int(x) for x in rng.integers(0, 2**31 - 1, 3))
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        prep = prepare(ds, pe, keys=keys, behavior_prob=None,
                                       behavior_model="logistic", q=None,
                                       q_model=as_fqe_config(qm), random_state=seed_prep)
                    sel = prep.q_selection
                    chosen = qm if sel is None else sel.chosen
                    bias = None if sel is None else sel.bias.get(sel.chosen)
                    bias_se = None if sel is None else sel.bias_se.get(sel.chosen)
                    for cim in ci_methods:
                        ests, _, _ = estimates_from_prepared(
                            prep, keys, n_boot=bootstrap, ci_method=cim,  # type: ignore[arg-type]
                            random_state=seed_boot)
                        for k, e in ests.items():
                            t = truths[fam]
                            out.append({"preset": preset, "family": fam, "rep": rep,
                                        "q_model": qm, "ci_method": cim, "chosen": chosen,
                                        "estimator": k, "value": e.value, "truth": t,
                                        "rel_error": e.value / t - 1.0,
                                        "covered": bool(e.ci[0] <= t <= e.ci[1]),
                                        "ci_low": e.ci[0], "ci_high": e.ci[1], "se": e.se,
                                        "q_bias": bias, "q_bias_se": bias_se,
                                        "width": (e.ci[1] - e.ci[0]) / t})
    return out


def exact_q(mdp: GarnetMDP, pi: np.ndarray) -> np.ndarray:
    """Exact ``Q_t(s, a)`` of the logged window (``H = max_horizon``), shape ``(H, S, A)``.

    ``V_H = 0``, ``V_t = r_pi + gamma P_pi V_{t+1}``, ``Q_t = R + gamma P V_{t+1}``: the oracle
    Q-model of a row at step ``t``. DR with it is unbiased, so its error is the importance
    weights' own noise.
    """
    n_s, n_a = mdp.n_states, mdp.n_actions
    horizon, gamma = mdp.config.max_horizon, mdp.config.gamma
    p_trans = mdp.P[:, :n_s].tocsr()
    q = np.empty((horizon, n_s, n_a))
    v_next = np.zeros(n_s)
    for t in range(horizon - 1, -1, -1):
        q[t] = mdp.reward + gamma * (p_trans @ v_next).reshape(n_s, n_a)
        v_next = (pi * q[t]).sum(axis=1)
    assert np.allclose(mdp.mu @ v_next, mdp.value(pi))
    return q


#: Q-models of the accuracy study: auto, the fixed candidates, the window table.
ACCURACY_Q_MODELS = ("auto", "tabular_stationary", "tabular_backward", "linear", "tabular_window")


def accuracy_records(presets: tuple[str, ...], seeds: tuple[int, ...], n_episodes: int = 5000,
                     families: tuple[str, ...] = (*SUPPORTED, "optimal_supported"),
                     q_models: tuple[str, ...] = ACCURACY_Q_MODELS
                     ) -> list[dict[str, object]]:
    """Point estimates of FQE, DR and WDR on fresh panels, with every Q-model and the oracle.

    Panel ``seed`` of each preset (MDP seed 1) is evaluated exactly as
    :func:`equicare.ope.evaluate` with ``random_state=seed`` prepares it (same nuisance seed,
    so ``auto`` draws the same folds), for every Q-model in ``q_models`` and for the oracle
    Q-model :func:`exact_q` (``q_model="oracle"``). No bootstrap (values only). Records:
    preset, seed, family, q_model, estimator, value, truth, rel_error, chosen (auto's choice).
    """
    import warnings

    from equicare.ope._core import episode_parts, point_estimates
    from equicare.ope._prepare import prepare
    from equicare.utils import check_random_state

    keys = ("fqe", "dr", "wdr")
    out: list[dict[str, object]] = []
    for preset in presets:
        mdp = GarnetMDP(garnet_preset(preset), random_state=1)
        pols = garnet_target_policies(mdp)
        for seed in seeds:
            ds = panel_dataset(mdp, mdp.simulate(n_episodes, random_state=seed))
            st, rows = ds.categorical[:, 0], np.arange(ds.n_steps)
            seed_prep = int(check_random_state(seed).integers(0, 2**31 - 1, 3)[0])
            for fam in families:
                pe = pols[fam][st]
                truth = mdp.value(pols[fam])
                vals: dict[str, dict[str, float]] = {}
                chosen = None
                for qm in q_models:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        prep = prepare(ds, pe, keys=keys, q_model=qm, random_state=seed_prep)
                    vals[qm] = point_estimates(episode_parts(prep.inputs, keys))
                    if prep.q_selection is not None:
                        chosen = prep.q_selection.chosen
                q = exact_q(mdp, pols[fam])[ds.step, st]
                oracle = prep.inputs.with_q(q[rows, ds.actions], np.einsum("ij,ij->i", q, pe))
                vals["oracle"] = point_estimates(episode_parts(oracle, keys))
                for qm, est in vals.items():
                    for k, v in est.items():
                        out.append({"preset": preset, "seed": seed, "family": fam, "q_model": qm,
                                    "estimator": k, "value": v, "truth": truth,
                                    "rel_error": v / truth - 1.0, "chosen": chosen})
    return out


def cell_policy_value(mdp: GarnetMDP, model: object, data: TrajectoryDataset,
                      site: int | None = None) -> float:
    """Exact value of a per-cell learner's policy (SPIBB, PVI) in every Garnet state.

    Its action probabilities are read at one row per state (at level ``site`` of the second
    categorical column when given), then valued by :meth:`GarnetMDP.value`.
    """
    from dataclasses import replace

    n = mdp.n_states
    cat = (np.arange(n)[:, None] if site is None
           else np.c_[np.arange(n), np.full(n, site)]).astype(np.int64)
    rows = replace(data, states=np.zeros((n, data.states.shape[1]), np.float32),
                   actions=np.zeros(n, np.int64), reward_components=np.zeros((n, 1)),
                   terminals=np.ones(n, bool), episode_offsets=np.arange(n + 1),
                   episode_ids=np.arange(n), times=np.zeros(n, np.int64),
                   groups={k: np.asarray(v)[:1].repeat(n) for k, v in data.groups.items()},
                   categorical=cat, behavior_prob=np.ones(n), _cache={})
    return float(mdp.value(model.action_probs(rows)))  # type: ignore[attr-defined]


class SitePolicy:
    """The first half of the sites follow ``good``, the others ``poor`` (per Garnet state)."""

    def __init__(self, good: np.ndarray, poor: np.ndarray, n_sites: int) -> None:
        self.good, self.poor, self.half = good, poor, n_sites // 2

    def action_probs(self, dataset: TrajectoryDataset) -> np.ndarray:
        assert dataset.categorical is not None
        s, site = dataset.categorical[:, 0], dataset.categorical[:, 1]
        return np.where((site < self.half)[:, None], self.good[s], self.poor[s])


def site_panel(n_episodes: int, seed: int, n_sites: int = 10, preset: str = "s50_a25_g1",
               family: str = "soft_optimal", site_seed: int = 2
               ) -> tuple[TrajectoryDataset, SitePolicy, np.ndarray, dict[str, np.ndarray]]:
    """A Garnet panel with an irrelevant ``site`` (also a subgroup attribute), a target that
    reads it (half the sites follow ``family``, half the behaviour) and each site's exact
    value."""
    from dataclasses import replace

    mdp, ds, pols = make(preset, n_episodes, seed=seed)
    site_ep = np.random.default_rng(site_seed).integers(0, n_sites, ds.n_episodes)
    two = with_site(ds, site_ep)
    two = replace(two, groups={**two.groups, "site": site_ep.astype(str)}, _cache={})
    policy = SitePolicy(pols[family], pols["behavior"], n_sites)
    truth = np.where(np.arange(n_sites) < n_sites // 2, mdp.value(pols[family]),
                     mdp.value(pols["behavior"]))
    return two, policy, truth, pols


def per_level_records(presets: tuple[str, ...], families: tuple[str, ...],
                      seeds: tuple[int, ...], n_episodes: int = 5000, n_boot: int = 200
                      ) -> list[dict[str, object]]:
    """Per-site FQE, DR and WDR of :func:`site_panel` panels (30 sites with 700 states, else
    10): pooled table (the per-level refit switched off), refitted per level from the policy's
    probabilities (empirical) and from the policy object (counterfactual). One record per
    (panel, mode, estimator): mean |error| over sites, mean error of each half, coverage."""
    import warnings

    import equicare.ope._levels as levels
    from equicare.ope import evaluate

    refits = levels.refits_per_level
    recs: list[dict[str, object]] = []
    try:
        for preset in presets:
            n_sites = 30 if preset.startswith("s700") else 10
            for fam in families:
                for seed in seeds:
                    two, pol, truth, _ = site_panel(n_episodes, seed, n_sites, preset, fam,
                                                    site_seed=seed + 7)
                    probs = pol.action_probs(two)
                    for mode in ("pooled", "empirical", "counterfactual"):
                        levels.refits_per_level = (  # type: ignore[assignment]
                            (lambda prep: False) if mode == "pooled" else refits)
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            res = evaluate(two, pol if mode == "counterfactual" else probs,
                                           estimators=("fqe", "dr", "wdr"), bootstrap=n_boot,
                                           random_state=0, groups=["site"],
                                           diagnose_support=False)
                        for k in ("fqe", "dr", "wdr"):
                            est = [res.groups["site"][str(lv)].estimates[k]
                                   for lv in range(n_sites)]
                            err = np.array([e.value for e in est]) / truth - 1
                            recs.append({
                                "preset": preset, "family": fam, "seed": seed, "mode": mode,
                                "est": k, "abs": float(np.abs(err).mean()),
                                "a": float(err[: n_sites // 2].mean()),
                                "b": float(err[n_sites // 2:].mean()),
                                "cover": float(np.mean([
                                    e.ci[0] <= t <= e.ci[1]
                                    for e, t in zip(est, truth, strict=True)]))})
    finally:
        levels.refits_per_level = refits  # type: ignore[assignment]
    return recs


def level_records(levels: dict[str, Any], truth: dict[str, float],
                  base: dict[str, object]) -> list[dict[str, object]]:
    """One record per published level and estimator (FQE, DR, WDR): relative error, interval
    width in % of the exact group value, and whether the interval covers it."""
    recs: list[dict[str, object]] = []
    for lv, g in levels.items():
        if g.suppressed:
            continue
        t = truth["g" + lv]
        for k in ("fqe", "dr", "wdr"):
            e = g.estimates[k]
            recs.append({**base, "level": lv, "est": k, "err": e.value / t - 1,
                         "width": (e.ci[1] - e.ci[0]) / t,
                         "cover": bool(e.ci[0] <= t <= e.ci[1])})
    return recs


def subgroup_coverage_records(presets: tuple[str, ...], seeds: tuple[int, ...],
                              n_episodes: int = 1000, n_boot: int = 200,
                              modes: tuple[str, ...] = ("fixed", "refit", "refit_bias")
                              ) -> list[dict[str, object]]:
    """Per-subgroup (initial-state strata) intervals of FQE, DR and WDR against the exact group
    values. Modes: ``"fixed"`` (the Q-model held fixed within subgroups, no subgroup bias),
    ``"refit"`` (its refit on every episode in the intervals), ``"refit_bias"`` (and FQE's
    interval bias-aware with ``auto``'s estimated subgroup bias: ``evaluate``'s default)."""
    import warnings

    import equicare.ope._evaluate as ev
    from equicare.ope import evaluate

    refit, prepare = ev._subgroup_q_refit, ev.prepare

    def fixed(prep, parts, ep, tr, no):  # type: ignore[no-untyped-def]
        return parts, np.zeros((prep.inputs.n_episodes - ep.size, 0))

    def no_group_bias(*args, **kw):  # type: ignore[no-untyped-def]
        return prepare(*args, **{**kw, "groups": ()})

    recs: list[dict[str, object]] = []
    try:
        for preset in presets:
            for seed in seeds:
                mdp, ds, pols = make(preset, n_episodes, seed=seed)
                for fam in SUPPORTED:
                    truth = mdp.group_values(pols[fam])
                    pe = pols[fam][ds.categorical[:, 0]]
                    for mode in modes:
                        ev._subgroup_q_refit = fixed if mode == "fixed" else refit  # type: ignore
                        ev.prepare = prepare if mode == "refit_bias" else no_group_bias  # type: ignore
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            res = evaluate(ds, pe, estimators=("fqe", "dr", "wdr"),
                                           bootstrap=n_boot, random_state=seed,
                                           groups=["group"], diagnose_support=False)
                        recs += level_records(res.groups["group"], truth,
                                              {"preset": preset, "seed": seed,
                                               "family": fam, "mode": mode})
    finally:
        ev._subgroup_q_refit = refit  # type: ignore[assignment]
        ev.prepare = prepare  # type: ignore[assignment]
    return recs


class TablePolicy:
    """A ``(n_states, n_actions)`` policy table as a policy object (streamed evaluation)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def action_probs(self, ds: TrajectoryDataset) -> np.ndarray:
        return self.table[ds.categorical[:, 0]]


def stream_subgroup_records(presets: tuple[str, ...], seeds: tuple[int, ...],
                            n_episodes: int = 1000, n_boot: int = 200,
                            q_model: str = "tabular_stationary") -> list[dict[str, object]]:
    """Per-subgroup (initial-state strata) intervals of streamed FQE, DR and WDR (studentized;
    the panel read as 3 chunks) against the exact group values."""
    import warnings

    from equicare.data import Chunk
    from equicare.ope import evaluate_stream

    recs: list[dict[str, object]] = []
    for preset in presets:
        for seed in seeds:
            mdp, ds, pols = make(preset, n_episodes, seed=seed)
            third = np.array_split(np.arange(ds.n_episodes), 3)
            parts = [Chunk(index=j, dataset=ds.subset(ep), first_row=0)
                     for j, ep in enumerate(third)]
            for fam in SUPPORTED:
                truth = mdp.group_values(pols[fam])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = evaluate_stream(parts, TablePolicy(pols[fam]),
                                          estimators=("fqe", "dr", "wdr"),
                                          q_model=q_model, n_boot=n_boot,
                                          random_state=seed, groups=["group"])
                recs += level_records(res.groups["group"], truth,
                                      {"preset": preset, "seed": seed, "family": fam,
                                       "q_model": q_model})
    return recs


def censor_windows(ds: TrajectoryDataset, lo: int, hi: int, seed: int
                   ) -> tuple[TrajectoryDataset, np.ndarray]:
    """``ds`` cut at a window drawn per episode, uniform on ``[lo, hi]`` steps, independently
    of the state (administrative censoring: an episode that runs past its window loses the rest
    and its last row is not terminal). Returns the panel and the windows."""
    from dataclasses import replace

    windows = np.random.default_rng(seed).integers(lo, hi + 1, ds.n_episodes)
    idx = np.flatnonzero(ds.step < windows[ds.episode_index])
    lengths = np.bincount(ds.episode_index[idx], minlength=ds.n_episodes)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    terminals = ds.terminals[idx].copy()
    terminals[(offsets[1:] - 1)[ds.episode_lengths > windows]] = False
    assert ds.categorical is not None and ds.behavior_prob is not None
    return replace(ds, states=ds.states[idx], actions=ds.actions[idx],
                   reward_components=ds.reward_components[idx], terminals=terminals,
                   episode_offsets=offsets, times=ds.times[idx],
                   categorical=ds.categorical[idx], behavior_prob=ds.behavior_prob[idx],
                   _cache={}), windows


def window_mean_value(mdp: GarnetMDP, pi: np.ndarray, lo: int, hi: int) -> float:
    """Exact value averaged over windows uniform on ``[lo, hi]``: ``mean_L mu^T V_L``."""
    vals = [mdp.value(pi, horizon=k) for k in range(lo, hi + 1)]
    return float(np.mean(vals))
