"""Episode-level (or person-level) bootstrap as a replicate-weight matrix, and intervals."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, RandomState, check_param, check_random_state

__all__ = ["bootstrap_weights", "bootstrap_ci", "percentile_ci", "split_random_state",
           "CIMethod"]

def bootstrap_weights(n_episodes: int, n_boot: int, random_state: RandomState = None, *,
                      members: ArrayLike | None = None) -> NDArray[np.float64]:
    """Episode-level (cluster) bootstrap replicates as a weight matrix, shared with the OPE engine.

    Replicate ``b`` resamples ``n_episodes`` episodes with replacement; ``W[b, e]`` is how many
    times episode ``e`` was drawn (multinomial counts summing to ``n_episodes``). Any statistic that
    is a ratio of episode sums, ``sum_e W[b, e] u_e / sum_e W[b, e] v_e``, is then evaluated for
    every replicate with one matrix product. This is the OPE engine's
    :func:`equicare.ope.bootstrap_counts` (same draws for the same seed). The audit passes one
    such matrix to every metric, including the OPE engine's per-episode value parts, so the
    intervals of values, gaps, ratios and Gini indices come from the same resamples; pass the
    matrix as ``weights=`` to share it with other calls.

    Parameters
    ----------
    n_episodes : int
        Number of episodes (clusters), >= 1.
    n_boot : int
        Number of replicates, >= 1.
    random_state : int, numpy.random.Generator or None
    members : array-like of shape (n_episodes,), optional
        The person of each episode (the manifest's ``member``): replicates then draw people
        with replacement, each with all their episodes (:func:`equicare.ope.cluster_counts`),
        so that a person's correlated episodes stay together.

    Returns
    -------
    ndarray of shape (n_boot, n_episodes), float64
        Non-negative integer counts; each row sums to ``n_episodes`` (without ``members``).

    Examples
    --------
    >>> w = bootstrap_weights(5, 3, random_state=0)
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 5), [5.0, 5.0, 5.0])
    """
    from equicare.ope._bootstrap import bootstrap_counts, cluster_counts

    check_param(n_episodes, "n_episodes", "bootstrap_weights", kind=(int, np.integer), low=1)
    check_param(n_boot, "n_boot", "bootstrap_weights", kind=(int, np.integer), low=1)
    if members is not None:
        m = np.asarray(members)
        if m.shape != (int(n_episodes),):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="members", owner="bootstrap_weights",
                expected=f"an array of shape ({int(n_episodes)},)", got=m.shape))
        return cluster_counts(m, int(n_boot), random_state)
    return bootstrap_counts(int(n_episodes), int(n_boot), random_state)


def split_random_state(random_state: RandomState
                       ) -> tuple[RandomState, np.random.Generator]:
    """State for the bootstrap weights (the caller's seed itself) and a separate generator.

    An integer seed is passed unchanged to :func:`bootstrap_weights` (the replicates equal
    ``equicare.ope.bootstrap_counts(n, B, seed)``); the second generator (permutations) comes
    from a child of the seed's ``SeedSequence``. A Generator is used for both, in turn.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state, random_state
    if random_state is None:
        return None, np.random.default_rng()
    check_random_state(random_state)  # validates the seed
    child = np.random.SeedSequence(int(random_state)).spawn(1)[0]
    return int(random_state), np.random.default_rng(child)


CIMethod = Literal["basic", "percentile"]


def bootstrap_ci(replicates: ArrayLike, estimate: ArrayLike | None = None, alpha: float = 0.05,
                 *, method: CIMethod = "basic", bounds: tuple[float, float] | None = None,
                 axis: int = 0, contain_estimate: bool = True) -> NDArray[np.float64]:
    r"""Bootstrap interval from replicates (NaN replicates ignored).

    ``"percentile"``: :math:`[q_{\alpha/2}, q_{1-\alpha/2}]` of the replicates.
    ``"basic"`` (reverse percentile): :math:`[2\hat\theta - q_{1-\alpha/2},
    2\hat\theta - q_{\alpha/2}]`. The two agree for smooth, unbiased statistics (rates,
    values); for the max-minus-min gaps, min/max ratios, worst-group values and Gini indices of an
    audit, whose plug-in estimates are biased away from equality when groups are close, the basic
    interval removes the bias to first order while the percentile interval doubles it (see
    ``docs/fairness.md`` for a coverage check). Bounds clip the interval to the parameter range.

    Both intervals exclude the point estimate exactly when the estimate lies outside the central
    ``1 - alpha`` range of its own replicates (:math:`\hat\theta \notin [q_{\alpha/2},
    q_{1-\alpha/2}]`), which happens for a max-minus-min gap over near-tied groups (a gap of
    0.25 pp with the basic interval [0.00, 0.17]). With ``contain_estimate`` (default) the
    interval is then widened to reach the estimate; widening never lowers coverage.

    Parameters
    ----------
    replicates : array-like of shape (n_boot, ...)
    estimate : array-like of shape (...), optional
        Point estimate (required for ``"basic"``).
    alpha : float in (0, 1)
        ``1 - alpha`` is the coverage (0.05 gives a 95% interval).
    method : {"basic", "percentile"}
    bounds : (float, float), optional
        Range of the parameter, e.g. ``(0, 1)`` for a rate.
    axis : int
        Replicate axis.
    contain_estimate : bool
        Widen the interval to contain ``estimate`` (when given and finite).

    Returns
    -------
    ndarray of shape (2, ...)
        Lower and upper bounds; NaN where every replicate is NaN.
    """
    check_param(method, "method", "bootstrap_ci", choices=("basic", "percentile"))
    q = percentile_ci(replicates, alpha, axis)
    if method == "basic":
        if estimate is None:
            raise InvalidParameterError("The basic bootstrap interval needs the point estimate.")
        est = np.asarray(estimate, dtype=np.float64)
        q = np.stack([2.0 * est - q[1], 2.0 * est - q[0]])
    if bounds is not None:
        q = np.clip(q, bounds[0], bounds[1])
    if contain_estimate and estimate is not None:
        est = np.broadcast_to(np.asarray(estimate, dtype=np.float64), q[0].shape)
        use = np.isfinite(est) & np.isfinite(q[0]) & np.isfinite(q[1])
        q = np.stack([np.where(use, np.minimum(q[0], est), q[0]),
                      np.where(use, np.maximum(q[1], est), q[1])])
    return np.asarray(q, dtype=np.float64)


def percentile_ci(replicates: ArrayLike, alpha: float = 0.05, axis: int = 0
                  ) -> NDArray[np.float64]:
    """Percentile interval of bootstrap replicates, ignoring NaN replicates.

    Parameters
    ----------
    replicates : array-like of shape (n_boot, ...)
    alpha : float in (0, 1)
        ``1 - alpha`` is the coverage (0.05 gives a 95% interval).
    axis : int
        Replicate axis.

    Returns
    -------
    ndarray of shape (2, ...)
        Lower and upper bounds; NaN where every replicate is NaN.
    """
    if not 0.0 < float(alpha) < 1.0:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="alpha", owner="percentile_ci",
                                              expected="a float in (0, 1)", got=alpha))
    r = np.asarray(replicates, dtype=np.float64)
    q = np.array([alpha / 2.0, 1.0 - alpha / 2.0])
    finite = np.isfinite(r)
    if finite.all():
        return np.asarray(np.quantile(r, q, axis=axis), dtype=np.float64)
    r = np.where(finite, r, np.nan)
    all_nan = ~finite.any(axis=axis)
    with np.errstate(all="ignore"):
        if all_nan.any():
            filled = np.where(np.expand_dims(all_nan, axis), 0.0, r)
            out = np.nanquantile(filled, q, axis=axis)
            return np.where(all_nan, np.nan, out)
        return np.asarray(np.nanquantile(r, q, axis=axis), dtype=np.float64)
