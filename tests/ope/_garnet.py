"""Garnet test-bed panels as TrajectoryDatasets (no files) and their exact values."""

from __future__ import annotations

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


#: Configurations of the accuracy and coverage studies (S in {50, 700}, A in {5, 25}, both
#: gammas); the 5,000-state ones are in the benchmark.
STUDY_PRESETS = ("s50_a5_g1", "s50_a5_g099", "s50_a25_g1", "s700_a5_g099", "s700_a25_g1",
                 "s700_a25_g099")


def study(presets: tuple[str, ...], families: tuple[str, ...], reps: int, n_episodes: int,
          q_models: tuple[str, ...] = ("auto",), bootstrap: int = 200, seed0: int = 100,
          ci_methods: tuple[str, ...] = ("percentile",), rep0: int = 0
          ) -> list[dict[str, object]]:
    """Evaluate each family on ``reps`` fresh panels of each preset; one record per estimate.

    Panel ``rep`` (``rep0 <= rep < rep0 + reps``) is simulated with seed ``seed0 + rep`` and
    bootstrapped with seed ``rep``. Records: preset, family, rep, q_model, ci_method, chosen,
    estimator, value, truth, rel_error, covered, width (relative to the truth).
    """
    import itertools
    import warnings

    from equicare.ope import evaluate

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
                for qm, cim in itertools.product(q_models, ci_methods):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        res = evaluate(ds, pe, estimators="fqe,dr,wdr", q_model=qm,
                                       bootstrap=bootstrap, groups=[], random_state=rep,
                                       ci_method=cim)  # type: ignore[arg-type]
                    chosen = (res.q_model or {}).get("chosen")
                    for k, e in res.estimates.items():
                        t = truths[fam]
                        out.append({"preset": preset, "family": fam, "rep": rep, "q_model": qm,
                                    "ci_method": cim, "chosen": chosen, "estimator": k,
                                    "value": e.value,
                                    "truth": t, "rel_error": e.value / t - 1.0,
                                    "covered": bool(e.ci[0] <= t <= e.ci[1]),
                                    "width": (e.ci[1] - e.ci[0]) / t})
    return out
