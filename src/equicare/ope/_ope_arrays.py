"""``ope_arrays``: all estimators, ESS and the bootstrap straight from arrays (no dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.ope._bootstrap import CIMethod, Estimate, bootstrap_counts, estimates_with_ci
from equicare.ope._core import Normalization, OPEInputs, episode_parts
from equicare.ope._ess import EffectiveSampleSize, effective_sample_size
from equicare.ope._evaluate import parse_estimators
from equicare.utils import RandomState

__all__ = ["ope_arrays", "ArrayResult"]


@dataclass(frozen=True)
class ArrayResult:
    """Estimates and ESS of :func:`ope_arrays`."""

    estimates: dict[str, Estimate]
    ess: EffectiveSampleSize


def ope_arrays(
    inputs: OPEInputs | None = None,
    *,
    rewards: Any = None,
    episode_offsets: Any = None,
    gamma: float = 1.0,
    actions: Any = None,
    target_probs: Any = None,
    behavior_prob: Any = None,
    q: Any = None,
    estimators: str | list[str] | tuple[str, ...] = "all",
    truncate: float | None = None,
    bootstrap: int = 1000,
    ci_method: CIMethod = "studentized",
    alpha: float = 0.05,
    normalization: Normalization = "absorbing",
    random_state: RandomState = 0,
) -> ArrayResult:
    """Every estimator with bootstrap intervals and ESS from plain arrays.

    Give either ``inputs`` or the arrays (``rewards``, ``episode_offsets``, ``gamma``,
    ``actions``, ``target_probs`` of shape (n_steps, n_actions), ``behavior_prob`` of shape
    (n_steps,), optional ``q`` of shape (n_steps, n_actions)). The same Q matrix serves the
    sequential estimators and ``bandit_dr``.

    Returns
    -------
    ArrayResult
    """
    if inputs is None:
        inputs = OPEInputs.from_arrays(rewards=rewards, episode_offsets=episode_offsets,
                                       gamma=gamma, actions=actions, target_probs=target_probs,
                                       behavior_prob=behavior_prob, q=q)
    keys = parse_estimators(estimators)
    if inputs.q_sa is None:
        keys = tuple(k for k in keys if k not in ("fqe", "dr", "wdr", "bandit_dr"))
    counts: NDArray[np.float64] | None = (
        bootstrap_counts(inputs.n_episodes, bootstrap, random_state) if bootstrap > 0 else None)
    parts = episode_parts(inputs, keys, truncate=truncate, normalization=normalization)
    est = estimates_with_ci(parts, n_boot=bootstrap, method=ci_method, alpha=alpha, counts=counts)
    return ArrayResult(estimates=est, ess=effective_sample_size(inputs, truncate))
