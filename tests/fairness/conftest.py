from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from equicare.data import TrajectoryDataset
from equicare.spaces import FactoredActionSpace

SPACE = FactoredActionSpace.from_levels(
    {"modality": ["none", "phone", "home_visit"], "urgency": ["routine", "urgent"]})


def make_dataset(lengths: Sequence[int], codes: np.ndarray, groups: dict[str, Sequence[str]],
                 need: Sequence[float] | None = None, rewards: np.ndarray | None = None,
                 behavior_prob: np.ndarray | None = None, states: np.ndarray | None = None,
                 gamma: float = 1.0) -> TrajectoryDataset:
    """Dataset from per-row (modality, urgency) codes and per-episode group labels."""
    lengths = np.asarray(lengths)
    offs = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    n = int(offs[-1])
    acts = SPACE.to_flat(np.asarray(codes))
    return TrajectoryDataset(
        states=np.zeros((n, 1), np.float32) if states is None else states.astype(np.float32),
        actions=acts,
        reward_components=np.zeros(n) if rewards is None else rewards,
        terminals=np.isin(np.arange(n), offs[1:] - 1),
        episode_offsets=offs, episode_ids=np.arange(lengths.size),
        times=np.concatenate([np.arange(k) for k in lengths]).astype(np.int64),
        action_space=SPACE, state_names=("risk",), gamma=gamma,
        groups={k: np.asarray(v) for k, v in groups.items()},
        need=None if need is None else np.asarray(need, dtype=float),
        behavior_prob=behavior_prob)


@pytest.fixture
def tiny() -> TrajectoryDataset:
    """4 episodes (lengths 2, 3, 1, 2), groups a, a, b, b; home visits on 3/5 and 1/3 rows.

    Need flags 1, 0, 1, 1 (need member-weeks: a 2, b 3).
    """
    codes = np.array([[2, 0], [0, 0], [2, 1], [2, 0], [0, 0], [0, 0], [2, 0], [1, 0]])
    return make_dataset([2, 3, 1, 2], codes, {"g": ["a", "a", "b", "b"]}, need=[1, 0, 1, 1])


def random_panel(n_episodes: int, seed: int, *, shares: Sequence[float] = (0.5, 0.3, 0.2),
                 rate_by_group: Sequence[float] = (0.1, 0.1, 0.1), min_len: int = 2,
                 max_len: int = 12, cluster_sd: float = 1.0) -> TrajectoryDataset:
    """Panel with per-episode random effects in the home-visit probability (clustered rows).

    Home visit rate of group g is about ``rate_by_group[g]`` (log-odds random effect per episode).
    Two attributes: ``race`` (labels r0, r1, ...) and ``sex`` (independent, f/m).
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_episodes)
    race = rng.choice(len(shares), size=n_episodes, p=np.asarray(shares))
    sex = rng.choice(2, size=n_episodes)
    base = np.log(np.asarray(rate_by_group) / (1 - np.asarray(rate_by_group)))[race]
    eff = base + cluster_sd * rng.normal(size=n_episodes)
    p_row = np.repeat(1 / (1 + np.exp(-eff)), lengths)
    n = int(lengths.sum())
    home = rng.random(n) < p_row
    other = rng.integers(0, 2, size=n)
    codes = np.stack([np.where(home, 2, other), rng.integers(0, 2, size=n)], axis=1)
    return make_dataset(lengths, codes, {"race": np.array([f"r{k}" for k in race]),
                                         "sex": np.array(["f", "m"])[sex]},
                        need=(rng.random(n_episodes) < 0.4).astype(float),
                        states=rng.random((n, 1)))
