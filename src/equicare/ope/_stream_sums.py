"""Additive statistics of streamed off-policy evaluation (shared by the IS and Q-model passes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.utils import PARAM_MESSAGE

__all__ = ["StreamSums"]


@dataclass
class StreamSums:
    """Additive statistics of a set of episodes (one chunk, one shard, or the whole panel).

    Attributes
    ----------
    n_episodes, n_steps : int
    total : ndarray of shape (n_parts + 1,)
        Sums of the estimators' parts, the behaviour return last.
    boot : ndarray of shape (n_boot, n_parts + 1)
        Poisson-weighted sums, one row per replicate.
    boot_n : ndarray of shape (n_boot,)
        Total Poisson weight of each replicate.
    w_sum, w_sq : float
        Sum of trajectory weights and of their squares.
    infl_keys : tuple of str
        Estimators (among ``fqe, dr, wdr``) whose Q-model refit enters the bootstrap: the last
        ``len(infl_keys)`` columns of ``total`` and ``boot`` hold each episode's raw influence
        ``sum_{i in e} x_i^T z delta_i`` (see :mod:`equicare.ope._stream_q`).
    """

    n_episodes: int
    n_steps: int
    total: NDArray[np.float64]
    boot: NDArray[np.float64]
    boot_n: NDArray[np.float64]
    w_sum: float
    w_sq: float
    gamma: float = 1.0
    parts_layout: tuple[tuple[str, ...], dict[str, slice], int] = field(
        default=((), {}, 0), repr=False)
    infl_keys: tuple[str, ...] = ()

    def __add__(self, other: StreamSums) -> StreamSums:
        if self.parts_layout[0] != other.parts_layout[0] or self.total.shape != other.total.shape:
            raise ValueError("Cannot add statistics of different estimators or horizons.")
        return StreamSums(n_episodes=self.n_episodes + other.n_episodes,
                          n_steps=self.n_steps + other.n_steps,
                          total=self.total + other.total, boot=self.boot + other.boot,
                          boot_n=self.boot_n + other.boot_n, w_sum=self.w_sum + other.w_sum,
                          w_sq=self.w_sq + other.w_sq, gamma=self.gamma,
                          parts_layout=self.parts_layout, infl_keys=self.infl_keys)


def _target_probs(dataset: TrajectoryDataset, policy: Any) -> NDArray[np.float64]:
    if callable(getattr(policy, "action_probs", None)):
        return np.asarray(policy.action_probs(dataset), dtype=np.float64)
    if callable(policy):
        return np.asarray(policy(dataset), dtype=np.float64)
    raise TypeError(PARAM_MESSAGE.format(
        name="policy", owner="evaluate_stream",
        expected="a Policy (action_probs(dataset) -> (n_steps, n_actions)) or a callable",
        got=type(policy).__name__))
