"""Per-trajectory (cluster) standard errors and vectorised cluster-bootstrap intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import norm

__all__ = ["ClusterInference", "cluster_inference"]


@dataclass(frozen=True)
class ClusterInference:
    """Point estimates, standard errors and intervals of ``k`` linear functionals, each ``(k,)``."""

    value: NDArray[np.float64]
    se: NDArray[np.float64]
    ci_low: NDArray[np.float64]
    ci_high: NDArray[np.float64]


def cluster_inference(point: NDArray[np.float64], influence: NDArray[np.float64],
                      episode: NDArray[np.int64], n_episodes: int,
                      contrast: NDArray[np.float64], *, n_bootstrap: int, ci_level: float,
                      rng: np.random.Generator) -> ClusterInference:
    r"""Inference for ``point @ contrast`` from per-row influence values, clustered by episode.

    An estimator that is (asymptotically) ``theta + mean_i phi_i`` over ``n`` rows grouped in
    ``N`` independent episodes has variance ``sum_j Phi_j^2 / n^2`` with ``Phi_j`` the sum of
    ``phi_i`` over episode ``j`` (the per-trajectory variance). The cluster bootstrap resamples
    episodes: replicate ``b`` with episode counts ``W_bj`` (multinomial) is
    ``theta + sum_j W_bj Phi_j / sum_j W_bj T_j`` - all replicates at once as a weight matrix
    ``(n_bootstrap, N)``, nuisance models held fixed.

    Parameters
    ----------
    point : ndarray of shape (c,)
    influence : ndarray of shape (n, c)
        Centred influence values per row.
    episode : ndarray of shape (n,)
    n_episodes : int
    contrast : ndarray of shape (c, k)
    n_bootstrap : int
        0: normal-theory intervals ``value +- z se``; else percentile intervals.
    ci_level : float
    rng : numpy.random.Generator

    Returns
    -------
    ClusterInference
    """
    n = influence.shape[0]
    value = point @ contrast
    rows = influence @ contrast                                   # (n, k)
    Phi = np.zeros((n_episodes, rows.shape[1]))
    np.add.at(Phi, episode, rows)
    se = np.sqrt((Phi ** 2).sum(axis=0)) / n
    alpha = 1.0 - ci_level
    if n_bootstrap <= 0:
        z = float(norm.ppf(1 - alpha / 2))
        return ClusterInference(value, se, value - z * se, value + z * se)
    T = np.bincount(episode, minlength=n_episodes).astype(np.float64)
    W = rng.multinomial(n_episodes, np.full(n_episodes, 1.0 / n_episodes),
                        size=n_bootstrap).astype(np.float64)        # (B, N)
    reps = value[None, :] + (W @ Phi) / (W @ T)[:, None]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2], axis=0)
    return ClusterInference(value, se, lo, hi)
