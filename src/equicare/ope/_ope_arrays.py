"""``ope_arrays``: all estimators, ESS and the bootstrap straight from arrays (no dataset)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.ope._bootstrap import (
    CIMethod,
    Estimate,
    bootstrap_counts,
    cluster_codes,
    estimates_with_ci,
)
from equicare.ope._core import Normalization, OPEInputs, episode_parts
from equicare.ope._ess import EffectiveSampleSize, effective_sample_size
from equicare.ope._evaluate import parse_estimators
from equicare.utils import PARAM_MESSAGE, RandomState

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
    members: Any = None,
) -> ArrayResult:
    """Every estimator with bootstrap intervals and ESS from plain arrays.

    Give either ``inputs`` or the arrays (``rewards``, ``episode_offsets``, ``gamma``,
    ``actions``, ``target_probs`` of shape (n_steps, n_actions), ``behavior_prob`` of shape
    (n_steps,), optional ``q`` of shape (n_steps, n_actions)). The same Q matrix serves the
    sequential estimators and ``bandit_dr``.

    ``members`` (array-like of shape (n_episodes,), optional) names each episode's person when
    people re-enrol: every replicate then draws people with all their episodes (a cluster
    bootstrap; without bootstrap the jackknife leaves one person out), as
    :func:`~equicare.ope.evaluate` does when the manifest names ``member``. Without it
    episodes are resampled as if independent, and intervals can be too narrow when a
    person's episodes are correlated.

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
    codes = None
    if members is not None:
        codes = cluster_codes(members)
        if codes.shape[0] != inputs.n_episodes:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="members", owner="ope_arrays",
                expected=f"an array of one person per episode, shape ({inputs.n_episodes},)",
                got=np.shape(members)))
    n_units = inputs.n_episodes if codes is None else int(codes.max()) + 1
    counts: NDArray[np.float64] | None = (
        bootstrap_counts(n_units, bootstrap, random_state) if bootstrap > 0 else None)
    parts = episode_parts(inputs, keys, truncate=truncate, normalization=normalization)
    if codes is not None:  # one row per person: replicates draw people with all their episodes
        parts = parts.by_cluster(codes)
    est = estimates_with_ci(parts, n_boot=bootstrap, method=ci_method, alpha=alpha, counts=counts)
    return ArrayResult(estimates=est, ess=effective_sample_size(inputs, truncate))
