"""Effective sample size (Kish) of trajectory and per-decision importance weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.ope._core import OPEInputs

__all__ = ["EffectiveSampleSize", "kish_ess", "effective_sample_size"]


def kish_ess(weights: NDArray[np.float64], axis: int = 0) -> NDArray[np.float64]:
    r"""Kish's effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2` (0 if all weights are 0).

    Parameters
    ----------
    weights : ndarray of shape (n, ...)
    axis : int

    Returns
    -------
    ndarray
        The ESS along ``axis`` (a 0-d array for a vector).
    """
    w = np.asarray(weights, dtype=np.float64)
    s1 = w.sum(axis=axis)
    s2 = (w * w).sum(axis=axis)
    out = np.zeros_like(s1)
    np.divide(s1 * s1, s2, out=out, where=s2 > 0)
    return out


@dataclass(frozen=True)
class EffectiveSampleSize:
    """Kish effective sample sizes of the importance weights.

    Kish's ESS does not change when weights are rescaled, so IS and WIS share ``trajectory`` and
    PDIS, WPDIS, DR and WDR share ``per_decision``. A naive-IS ESS near 0% means a handful of
    episodes carry the whole estimate.

    Attributes
    ----------
    n_episodes : int
    trajectory, trajectory_pct : float
        ESS of the trajectory weights ``W_e = prod_t rho_t`` (count and % of episodes).
    per_decision, per_decision_pct : float
        Mean over steps of the ESS of the cumulative weights ``w_{e,t}`` among episodes alive at
        ``t`` (as % of them), and that % times ``n_episodes``.
    per_decision_min_pct : float
        Smallest per-step ESS %.
    per_step_pct : ndarray of shape (max_len,)
        ESS % at each step.
    truncate : float or None
        Truncation threshold of the ``*_truncated`` fields (None: no truncation asked).
    trajectory_truncated, trajectory_truncated_pct, per_decision_truncated_pct : float or None
        The same with weights truncated at ``truncate``.
    max_weight_share : float
        Largest share of the total trajectory weight held by one episode.
    """

    n_episodes: int
    trajectory: float
    trajectory_pct: float
    per_decision: float
    per_decision_pct: float
    per_decision_min_pct: float
    per_step_pct: NDArray[np.float64] = field(repr=False)
    max_weight_share: float
    truncate: float | None = None
    trajectory_truncated: float | None = None
    trajectory_truncated_pct: float | None = None
    per_decision_truncated_pct: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (Contract 3 ``"ess"``)."""
        return {
            "trajectory": self.trajectory, "trajectory_pct": self.trajectory_pct,
            "per_decision": self.per_decision, "per_decision_pct": self.per_decision_pct,
            "per_decision_min_pct": self.per_decision_min_pct,
            "max_weight_share": self.max_weight_share,
            "truncate": self.truncate,
            "trajectory_truncated": self.trajectory_truncated,
            "trajectory_truncated_pct": self.trajectory_truncated_pct,
            "per_decision_truncated_pct": self.per_decision_truncated_pct,
        }


def _per_step_pct(w: NDArray[np.float64], alive: NDArray[np.bool_]) -> NDArray[np.float64]:
    wa = np.where(alive, w, 0.0)
    n_alive = alive.sum(axis=0).astype(np.float64)
    return 100.0 * kish_ess(wa, axis=0) / np.maximum(n_alive, 1.0)


def effective_sample_size(inputs: OPEInputs, truncate: float | None = None
                          ) -> EffectiveSampleSize:
    """Kish ESS of the trajectory and per-decision weights of ``inputs``.

    Parameters
    ----------
    inputs : OPEInputs
    truncate : float, optional
        Also report the ESS of weights truncated at this threshold.

    Returns
    -------
    EffectiveSampleSize
    """
    n = inputs.n_episodes
    w = inputs.cumulative_weights()
    alive = inputs.alive()
    traj = float(kish_ess(w[:, -1]))
    step_pct = _per_step_pct(w, alive)
    total = w[:, -1].sum()
    share = float(w[:, -1].max() / total) if total > 0 else 1.0
    kw: dict[str, Any] = {}
    if truncate is not None:
        wt = inputs.cumulative_weights(truncate)
        t_traj = float(kish_ess(wt[:, -1]))
        kw = {"truncate": float(truncate), "trajectory_truncated": t_traj,
              "trajectory_truncated_pct": 100.0 * t_traj / n,
              "per_decision_truncated_pct": float(_per_step_pct(wt, alive).mean())}
    pd_pct = float(step_pct.mean())
    return EffectiveSampleSize(
        n_episodes=n, trajectory=traj, trajectory_pct=100.0 * traj / n,
        per_decision=pd_pct * n / 100.0, per_decision_pct=pd_pct,
        per_decision_min_pct=float(step_pct.min()), per_step_pct=step_pct,
        max_weight_share=share, **kw)
