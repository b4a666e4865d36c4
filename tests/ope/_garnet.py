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
