"""Conversion between :class:`~equicare.data.TrajectoryDataset` and d3rlpy's ``MDPDataset``.

d3rlpy is optional (``pip install equicare[d3rlpy]``). An equicare episode becomes a d3rlpy
episode: observations are the model features (numeric states + one-hot categorical states),
actions the flat action index (discrete action space of size ``n_actions``), rewards the shaped
reward, ``terminals = 1`` at a terminal row and ``timeouts = 1`` at the last row of an episode that
did not terminate (truncated). d3rlpy stores rewards as float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError
from equicare.spaces import FactoredActionSpace

__all__ = ["to_d3rlpy", "from_d3rlpy"]

_MISSING = ("d3rlpy is not installed; install the optional extra with "
            "`pip install equicare[d3rlpy]`.")


def _d3rlpy() -> Any:
    try:
        import d3rlpy
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    return d3rlpy


def to_d3rlpy(dataset: TrajectoryDataset) -> Any:
    """Convert to a d3rlpy ``MDPDataset`` with a discrete action space.

    Parameters
    ----------
    dataset : TrajectoryDataset

    Returns
    -------
    d3rlpy.dataset.MDPDataset
        ``observations`` of shape (n_steps, n_features) float32, ``actions`` (n_steps, 1) int64,
        ``rewards`` (n_steps, 1) float32.

    Raises
    ------
    ValueError
        A terminal row that is not the last row of its episode (d3rlpy would split the episode).
    """
    d3 = _d3rlpy()
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import MDPDataset

    term = np.asarray(dataset.terminals, dtype=bool)
    last = dataset.is_last
    if (term & ~last).any():
        bad = int(np.flatnonzero(term & ~last)[0])
        raise InvalidParameterError(
            f"Row {bad} is terminal but not the last row of its episode; d3rlpy "
                         "episodes end at their terminal step.")
    del d3
    return MDPDataset(
        observations=np.ascontiguousarray(dataset.features(), dtype=np.float32),
        actions=dataset.actions.astype(np.int64)[:, None],
        rewards=dataset.rewards.astype(np.float32)[:, None],
        terminals=term.astype(np.float32),
        timeouts=(last & ~term).astype(np.float32),
        action_space=ActionSpace.DISCRETE,
        action_size=dataset.n_actions,
    )


def from_d3rlpy(mdp: Any, *, action_space: FactoredActionSpace | None = None,
                state_names: tuple[str, ...] | None = None, gamma: float = 0.99
                ) -> TrajectoryDataset:
    """Convert a d3rlpy ``MDPDataset`` (discrete actions) to a :class:`TrajectoryDataset`.

    Parameters
    ----------
    mdp : d3rlpy.dataset.ReplayBuffer / MDPDataset
    action_space : FactoredActionSpace, optional
        Factored space of the flat actions (default: one component with
        ``mdp.dataset_info.action_size`` levels).
    state_names : tuple of str, optional
        Names of the observation columns (default ``x0, x1, ...``).
    gamma : float
        Discount written to the dataset.

    Returns
    -------
    TrajectoryDataset
        One reward component ``"reward"``; episode ids ``0..n_episodes-1``; times ``0..T-1``.
    """
    _d3rlpy()
    episodes = list(mdp.episodes)
    if not episodes:
        raise InvalidParameterError("The d3rlpy dataset has no episodes.")
    obs = np.concatenate([np.asarray(e.observations, dtype=np.float32).reshape(len(e.actions), -1)
                          for e in episodes])
    actions = np.concatenate([np.asarray(e.actions).reshape(-1) for e in episodes]).astype(np.int64)
    rewards = np.concatenate([np.asarray(e.rewards, dtype=np.float64).reshape(-1)
                              for e in episodes])
    lengths = np.array([len(e.actions) for e in episodes], dtype=np.int64)
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    terminals = np.zeros(offsets[-1], dtype=bool)
    terminated = np.array([bool(e.terminated) for e in episodes])
    terminals[offsets[1:][terminated] - 1] = True
    if action_space is None:
        action_space = FactoredActionSpace.single(int(mdp.dataset_info.action_size))
    if actions.size and (actions.min() < 0 or actions.max() >= action_space.n_actions):
        raise InvalidParameterError(
            f"Actions outside [0, {action_space.n_actions}) in the d3rlpy dataset.")
    names = tuple(state_names) if state_names is not None else tuple(
        f"x{j}" for j in range(obs.shape[1]))
    if len(names) != obs.shape[1]:
        raise InvalidParameterError(
            f"state_names has {len(names)} names for {obs.shape[1]} columns.")
    times = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    return TrajectoryDataset(
        states=obs, actions=actions, reward_components=rewards[:, None], terminals=terminals,
        episode_offsets=offsets, episode_ids=np.arange(len(episodes)), times=times,
        action_space=action_space, state_names=names, reward_names=("reward",),
        reward_weights=np.ones(1), gamma=float(gamma),
    )
