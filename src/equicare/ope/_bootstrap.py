"""Episode-level (cluster) bootstrap: replicates as a weight matrix; studentized, percentile, BCa.

A replicate resamples whole episodes with replacement; its estimate is the estimator's combination
of ``counts @ parts`` where ``counts`` is the ``(n_boot, n_episodes)`` matrix of how often each
episode was drawn. All replicates of all estimators therefore cost one matrix product, and the
self-normalised estimators (WIS, WPDIS, WDR) are re-normalised inside each replicate.

The nuisance models (behaviour model, Q-model) are fitted once on the full data and held fixed
across replicates (the default; this ignores their estimation variance, which is small for DR
when both models are reasonable, and keeps a 1,000-replicate bootstrap within a fraction of a
second). :func:`refit_bootstrap` refits them inside every replicate through an executor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.special import ndtr, ndtri

from equicare.exceptions import InvalidParameterError
from equicare.ope._core import (
    EpisodeParts,
    combine,
    jackknife_estimates,
    point_estimates,
    undefined_estimates,
)
from equicare.utils import RandomState, check_param, check_random_state

__all__ = [
    "Estimate",
    "Shift",
    "CIMethod",
    "Executor",
    "bias_aware",
    "bootstrap_counts",
    "cluster_counts",
    "cluster_codes",
    "resampling_unit",
    "RESAMPLING_EPISODES",
    "RESAMPLING_PEOPLE",
    "bootstrap_replicates",
    "bootstrap_ci",
    "percentile_interval",
    "bca_interval",
    "studentized_intervals",
    "studentized_interval",
    "ratio_terms",
    "ratio_columns",
    "influence_coefs",
    "squared_influence",
    "CI_METHODS",
    "estimates_with_ci",
    "serial_map",
    "jackknife_se",
    "normal_interval",
]

CIMethod = Literal["percentile", "bca", "studentized"]
#: Interval methods of :func:`bootstrap_ci`.
CI_METHODS: tuple[str, ...] = ("percentile", "bca", "studentized")
#: ``executor(fn, items)`` returns an iterable of ``fn(item)`` in order (like built-in ``map``).
Executor = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]


def serial_map(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Map ``fn`` over ``items`` serially (the default executor)."""
    return [fn(x) for x in items]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its uncertainty.

    Attributes
    ----------
    value : float
        Point estimate.
    ci : tuple of float
        ``(low, high)`` 95% interval (or ``1 - alpha``); bootstrap studentized (the default),
        percentile or BCa; a normal interval from the jackknife standard error when
        ``n_boot == 0``.
    se : float
        Bootstrap standard deviation of the replicates (jackknife standard error without
        bootstrap).
    n_episodes : int
        Episodes used.
    reason : str or None
        Why there is no estimate (value, interval and standard error NaN), e.g. every
        importance weight of WIS is 0; None when there is one.
    """

    value: float
    ci: tuple[float, float]
    se: float
    n_episodes: int
    reason: str | None = None

    @classmethod
    def undefined(cls, n_episodes: int, reason: str) -> Estimate:
        """An estimate that cannot be computed: NaN value, interval and standard error."""
        nan = float("nan")
        return cls(value=nan, ci=(nan, nan), se=nan, n_episodes=n_episodes, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci", "se", "n_episodes"}`` (JSON-friendly), NaN as ``None``.

        An estimate that cannot be computed adds its ``"reason"``.
        """
        return {**estimate_json(self.value, self.ci, self.se, self.reason),
                "n_episodes": self.n_episodes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Estimate:
        """Inverse of :meth:`to_dict`; also reads a result JSON's estimate entry (Contract 3).

        A result JSON's entries have no ``n_episodes`` (it is the result's; pass
        ``{**entry, "n_episodes": res["n_episodes"]}`` to keep it): it is then ``-1``. A null
        ``ci`` or ``se`` (no estimate) reads as NaN.
        """
        def num(x: Any) -> float:
            return float("nan") if x is None else float(x)

        ci = d.get("ci") or (None, None)
        return cls(value=num(d["value"]), ci=(num(ci[0]), num(ci[1])), se=num(d.get("se")),
                   n_episodes=int(d.get("n_episodes", -1)), reason=d.get("reason"))


def estimate_json(value: float, ci: tuple[float, float], se: float | None,
                  reason: str | None = None) -> dict[str, Any]:
    """``{"value", "ci", "se"}`` of an estimate, non-finite numbers as ``None`` (JSON null).

    ``se=None`` leaves the standard error out; a ``reason`` (why there is no estimate) is added
    when given, and the interval is then ``None`` (Contract 3: no estimate, no interval).
    """
    def num(x: float) -> float | None:
        return float(x) if np.isfinite(x) else None

    d: dict[str, Any] = {"value": num(value),
                         "ci": None if reason is not None else [num(ci[0]), num(ci[1])]}
    if se is not None:
        d["se"] = num(se)
    if reason is not None:
        d["reason"] = reason
    return d


def jackknife_se(ss: float, n: int) -> float:
    """Jackknife standard error ``sqrt((n - 1) / n * ss)`` (0 for a single episode).

    ``ss`` is the sum of squared deviations of the ``n`` leave-one-episode-out estimates from
    their mean (in memory from :func:`~equicare.ope._core.jackknife_estimates`, streamed from
    summed deviations, :class:`~equicare.ope._stream_sums.JackknifeSums`).
    """
    return float(np.sqrt((n - 1) / n * ss)) if n > 1 else 0.0


def normal_interval(value: float, se: float, alpha: float = 0.05) -> tuple[float, float]:
    """``value -+ z_{1 - alpha/2} se`` (the intervals without bootstrap, ``n_boot == 0``)."""
    z = float(ndtri(1 - alpha / 2))
    return (value - z * se, value + z * se)


def bootstrap_counts(n_episodes: int, n_boot: int, random_state: RandomState = None
                     ) -> NDArray[np.float64]:
    """How often each episode is drawn in each replicate.

    Parameters
    ----------
    n_episodes : int
    n_boot : int
    random_state : int, Generator or None

    Returns
    -------
    ndarray of shape (n_boot, n_episodes)
        Non-negative integer counts (as float64), each row summing to ``n_episodes``.
    """
    out = np.empty((n_boot, n_episodes))
    for start, block in _count_blocks(n_episodes, n_boot, random_state):
        out[start:start + block.shape[0]] = block
    return out


#: Draws per block of replicates (:func:`_count_blocks`): 8 MB of int64 draws at a time.
COUNT_BLOCK_DRAWS = 1 << 20


def _count_blocks(n_episodes: int, n_boot: int, random_state: RandomState
                  ) -> Iterator[tuple[int, NDArray[np.float64]]]:
    """:func:`bootstrap_counts` a block of replicates at a time: ``(first replicate, counts)``.

    The draws are those of one ``integers(0, n_episodes, size=(n_boot, n_episodes))`` call
    (a Generator draws a block's rows in the same order), so the counts are the same; the
    int64 draws and their counts never exist for all replicates at once (on 60,000 episodes x
    1,000 replicates they were 480 MB each, beside the 480 MB float64 result).
    """
    rng = check_random_state(random_state)
    step = max(1, min(n_boot, COUNT_BLOCK_DRAWS // max(n_episodes, 1)))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        draws = rng.integers(0, n_episodes, size=(b, n_episodes))
        draws += (np.arange(b, dtype=np.int64) * n_episodes)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n_episodes)
        yield start, counts.reshape(b, n_episodes).astype(np.float64)


def resampled_sums(values: NDArray[np.float64], n_boot: int, random_state: RandomState = None
                   ) -> NDArray[np.float64]:
    """``bootstrap_counts(n, n_boot, random_state) @ values`` without the counts matrix.

    Parameters
    ----------
    values : ndarray of shape (n_episodes, k)
    n_boot : int
    random_state : int, Generator or None
        As :func:`bootstrap_counts` (same draws, so the same replicates).

    Returns
    -------
    ndarray of shape (n_boot, k)
        Each replicate's sum of the resampled episodes' values.
    """
    out = np.empty((n_boot, values.shape[1]))
    for start, block in _count_blocks(values.shape[0], n_boot, random_state):
        out[start:start + block.shape[0]] = block @ values
    return out


def cluster_codes(members: Any) -> NDArray[np.int64]:
    """Each episode's person as ``0 .. n_people - 1`` (ids in sorted order), shape ``(n,)``.

    ``members`` (n_episodes,) is the manifest's ``member`` column per episode
    (:attr:`~equicare.data.TrajectoryDataset.members`).
    """
    _, codes = np.unique(np.asarray(members).astype(str), return_inverse=True)
    return np.asarray(codes, dtype=np.int64).ravel()


#: ``settings["resampling"]`` of a result: what a bootstrap replicate draws.
RESAMPLING_EPISODES = "episodes"
#: People with all their episodes (a cluster bootstrap), when the manifest names ``member``.
RESAMPLING_PEOPLE = "people (member)"


def resampling_unit(members: Any) -> str:
    """:data:`RESAMPLING_PEOPLE` when ``members`` is given (not None), else episodes."""
    return RESAMPLING_EPISODES if members is None else RESAMPLING_PEOPLE


def cluster_counts(members: Any, n_boot: int, random_state: RandomState = None
                   ) -> NDArray[np.float64]:
    """A cluster bootstrap as episode weights: people drawn with replacement, all episodes each.

    Replicate ``b`` draws ``n_people`` people with replacement (:func:`bootstrap_counts` over
    people, same draws for the same seed); each episode gets its person's count.

    Parameters
    ----------
    members : array-like of shape (n_episodes,)
        The person of each episode.
    n_boot : int
    random_state : int, Generator or None

    Returns
    -------
    ndarray of shape (n_boot, n_episodes)
        Non-negative integer counts (as float64), equal within a person.
    """
    codes = cluster_codes(members)
    people = bootstrap_counts(int(codes.max()) + 1 if codes.size else 0, n_boot, random_state)
    return np.asarray(people[:, codes])


def bootstrap_replicates(parts: EpisodeParts, counts: NDArray[np.float64]
                         ) -> dict[str, NDArray[np.float64]]:
    """Estimates of every replicate, each of shape ``(n_boot,)`` (one matrix product)."""
    sums = counts @ parts.matrix
    return combine(parts, sums, parts.total_weight(counts))


def percentile_interval(reps: NDArray[np.float64], alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bca_interval(reps: NDArray[np.float64], theta: float, jack: NDArray[np.float64],
                 alpha: float = 0.05) -> tuple[float, float]:
    r"""Bias-corrected and accelerated interval (Efron 1987).

    .. math::

        z_0 = \Phi^{-1}\big(\#\{\theta^*_b < \hat\theta\}/B + \tfrac12\#\{\theta^*_b =
        \hat\theta\}/B\big), \quad
        a = \frac{\sum_i (\bar\theta_{(\cdot)} - \theta_{(i)})^3}
                 {6 [\sum_i (\bar\theta_{(\cdot)} - \theta_{(i)})^2]^{3/2}},

    quantiles :math:`\Phi(z_0 + (z_0 + z_q)/(1 - a(z_0 + z_q)))` for
    :math:`q = \alpha/2, 1 - \alpha/2`, with jackknife (leave-one-episode-out) estimates
    :math:`\theta_{(i)}`. Falls back to the percentile interval when the replicates are constant.
    """
    b = reps.size
    prop = (np.sum(reps < theta) + 0.5 * np.sum(reps == theta)) / b
    if not 0 < prop < 1 or np.ptp(reps) == 0:
        return percentile_interval(reps, alpha)
    z0 = float(ndtri(prop))
    d = jack.mean() - jack
    denom = 6.0 * float(np.sum(d * d)) ** 1.5
    a = float(np.sum(d ** 3)) / denom if denom > 0 else 0.0
    z = ndtri(np.array([alpha / 2, 1 - alpha / 2]))
    q = ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
    q = np.clip(np.nan_to_num(q, nan=0.5), 0.0, 1.0)
    lo, hi = np.quantile(reps, q)
    return float(lo), float(hi)


def ratio_terms(slices: dict[str, slice], horizon: int, key: str
                ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Columns ``(A, B)`` of the parts with ``estimate = sum_j S_A_j / S_B_j``.

    ``S`` are (weighted) column sums; ``B = -1`` stands for a column of ones (the total weight).
    """
    sl = slices[key]
    c0, h = sl.start, horizon
    one = np.array([-1])
    if key in ("is", "pdis", "dr", "fqe"):
        return np.array([c0]), one
    if key in ("wis", "bandit_dr"):
        return np.array([c0]), np.array([c0 + 1])
    if key == "wpdis":
        return c0 + np.arange(h), c0 + h + np.arange(h)
    if key == "wdr":
        t = np.arange(h)
        return np.r_[c0 + t, c0 + 2 * h + t], np.r_[c0 + h + t, c0 + 3 * h + t]
    raise InvalidParameterError(f"No studentized interval for estimator {key!r}.")


def ratio_columns(matrix: NDArray[np.float64], a: NDArray[np.int64], b: NDArray[np.int64],
                  sizes: NDArray[np.float64] | None = None
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(x_A, x_B)`` of ``matrix`` (n, n_parts), each (n, J); a ones column where ``B = -1``.

    With ``sizes`` (n,) (rows that are people, :meth:`EpisodeParts.by_cluster`) the column
    where ``B = -1`` is the episodes each row holds.
    """
    xa = matrix[:, a]
    one: Any = 1.0 if sizes is None else sizes[:, None]
    xb = np.where(b[None, :] < 0, one, matrix[:, np.maximum(b, 0)])
    return xa, xb


def influence_coefs(sa: NDArray[np.float64], sb: NDArray[np.float64]
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Coefficients ``(u, v)`` of the influence ``IF_e = sum_j x_eA_j u_j - x_eB_j v_j``.

    For ``F = sum_j S_A_j / S_B_j`` with weighted sums ``S = sum_e w_e x_e``,
    :math:`\partial F / \partial w_e = \sum_j x_{eA_j} / S_{B_j} - x_{eB_j} S_{A_j} / S_{B_j}^2`.

    Parameters
    ----------
    sa, sb : ndarray of shape (k, J)
        The sums of ``k`` weightings (a zero denominator gives zero coefficients).

    Returns
    -------
    u, v : ndarray of shape (k, J)
    """
    ok = sb != 0
    u = np.zeros_like(sb)
    np.divide(1.0, sb, out=u, where=ok)
    return u, sa * u * u


def squared_influence(xa: NDArray[np.float64], xb: NDArray[np.float64],
                      u: NDArray[np.float64], v: NDArray[np.float64],
                      weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """``sum_e w_be IF_be^2`` for every weighting ``b``, shape ``(k,)``.

    ``xa``, ``xb`` (n, J) episode columns; ``u``, ``v`` (k, J) from :func:`influence_coefs`;
    ``weights`` (k, n). The ``(n, k)`` influence matrix is built in blocks of weightings (at
    most about 4M numbers at a time). A sum over episodes, so chunks of episodes add up.
    """
    n = xa.shape[0]
    out = np.empty(weights.shape[0])
    step = max(1, 4_000_000 // max(n, 1))
    for s in range(0, weights.shape[0], step):
        sl = slice(s, s + step)
        inf = xa @ u[sl].T - xb @ v[sl].T
        out[sl] = np.einsum("bn,nb->b", weights[sl], inf * inf)
    return out


#: A delta-method standard error below this share of the bootstrap replicates' spread is
#: degenerate (numerically zero next to it). It happens when one episode's importance weight
#: dominates an estimate (effective sample size about 1: WIS of a learned policy over 26-week
#: care episodes): the standard error tends to 0 while the replicates still move with the
#: large-weight episodes they draw. Measured on a 600-member care panel: subgroup WIS intervals
#: of [-1.1e6, 1.1e6] (replicates' standard errors ~1e-7) and [0.296999, 0.297001] (the full
#: sample's ~1e-7), against bootstrap standard errors of 0.36 and 1.19. Healthy heavy tails stay
#: far above it: the smallest replicate ratio on a 150-member synthetic panel's WIS was 0.02.
DEGENERATE_SE = 1e-3
#: The full sample's delta-method standard error below this share of the replicates' spread:
#: the linearisation the bootstrap-t pivot rests on has failed, though not to zero. The README's
#: care tour (WIS of a 3,000-step AWR, trajectory ESS about 1) had it at 0.036, and its
#: bootstrap-t interval [0.279, 0.316] was a fifth as wide as +-2 bootstrap standard errors
#: (0.082). On 840 Garnet intervals of every estimator (``s50_a5_g1`` and ``s700_a25_g1``, 20
#: panels of 1,000 episodes x 3 families) the smallest ratio was 0.54, the median 1.0.
PIVOT_SE_RATIO = 0.25


def studentized_interval(point: float, reps: NDArray[np.float64], se_reps: NDArray[np.float64],
                         se: float, alpha: float = 0.05) -> tuple[float, float]:
    """``point +- q se`` with ``q`` the ``1 - alpha`` quantile of ``|reps - point| / se_reps``.

    A standard error under :data:`DEGENERATE_SE` times the replicates' spread is degenerate:
    such a replicate with a non-zero deviation has ``t = inf``. The percentile interval is
    returned when the full sample's own standard error is under :data:`PIVOT_SE_RATIO` times
    the spread (the linearisation behind the pivot has failed), or when ``q`` exceeds the
    same quantile of a Cauchy (Student t with one degree of freedom: 12.7 at ``alpha = 0.05``),
    where ``t`` is too heavy-tailed to be a pivot (on the same care panel, WIS intervals of
    subgroups of 133-241 episodes were then [-16.1, 16.8] around 0.33 with a bootstrap standard
    error of 0.14). Neither rule changed any of 108 FQE, DR and WDR intervals of the Garnet
    coverage study (three long configurations, three families, four panels) nor the coverage of
    the skewed-mean check in ``tests/ope/test_bootstrap.py``.
    """
    spread = float(np.std(reps, ddof=1)) if reps.size > 1 else 0.0
    floor = DEGENERATE_SE * spread
    if not se > PIVOT_SE_RATIO * spread:
        return percentile_interval(reps, alpha)
    t = np.abs(reps - point)
    good = se_reps > floor
    t = np.where(good, t / np.where(good, se_reps, 1.0), np.where(t > 0, np.inf, 0.0))
    with np.errstate(invalid="ignore"):  # inf - inf between two infinite neighbours: nan
        q = float(np.quantile(t, 1 - alpha)) if t.size else 0.0
    if q > np.tan(np.pi * (0.5 - alpha / 2)):  # beyond a Cauchy's: t is not a pivot here
        return percentile_interval(reps, alpha)
    half = q * se if np.isfinite(q) else np.inf
    if not np.isfinite(half):
        return percentile_interval(reps, alpha)
    return (point - half, point + half)


def studentized_intervals(parts: EpisodeParts, counts: NDArray[np.float64],
                          reps: dict[str, NDArray[np.float64]], alpha: float = 0.05,
                          sums: NDArray[np.float64] | None = None,
                          extra_var: Mapping[str, float] | None = None
                          ) -> dict[str, tuple[float, float]]:
    r"""Symmetric bootstrap-t intervals (Hall 1988) of every estimator in ``parts``.

    Each replicate is studentised by its own delta-method (infinitesimal-jackknife) standard
    error, computed from the episode parts in closed form (every estimator here is a sum of
    ratios of weighted episode sums, :func:`ratio_terms`):
    :math:`\mathrm{se}^*_b = (\sum_e c_{be} \mathrm{IF}_{be}^2)^{1/2}` with the replicate's
    own influence coefficients (:func:`influence_coefs`). The interval is

    .. math::

        \hat\theta \pm \hat q_{1-\alpha} \, \widehat{\mathrm{se}}, \qquad
        \hat q_{1-\alpha} = \text{the } (1-\alpha) \text{ quantile of }
        |\theta^*_b - \hat\theta| / \mathrm{se}^*_b .

    With heavy-tailed importance weights a replicate that misses the rare large episodes has a
    small estimate *and* a small standard error, so its ``t`` is large: the interval widens where
    the percentile interval is too narrow. Symmetric bootstrap-t intervals have coverage error
    ``O(n^{-2})`` against ``O(n^{-1})`` for percentile ones (Hall 1988, "On symmetric bootstrap
    confidence intervals", JRSS B 50; Hall 1992, *The Bootstrap and Edgeworth Expansion*,
    sec. 3.6). Nuisance effects already in the parts (the linearised Q-model refit) are
    studentised with the rest. ``counts`` may be multinomial counts or Poisson weights (the
    streamed engine computes the same sums chunk by chunk, :mod:`equicare.ope._stream`).
    ``sums`` (``counts @ parts.matrix``, shape ``(n_boot, n_parts)``) skips recomputing them.
    ``extra_var`` adds a variance to every standard error (an independent term already in
    ``reps``: the other episodes' share of a subgroup's Q-model refit, see :func:`Shift`).
    """
    n = parts.matrix.shape[0]
    point = point_estimates(parts)
    weights = np.vstack([np.ones((1, n)), counts])  # row 0: the full sample
    if sums is None:
        sums = counts @ parts.matrix
    s_all = np.vstack([parts.matrix.sum(axis=0)[None, :], sums])
    n_all = parts.total_weight(weights)
    out: dict[str, tuple[float, float]] = {}
    for k, r in reps.items():
        a, b = ratio_terms(parts.slices, parts.horizon, k)
        xa, xb = ratio_columns(parts.matrix, a, b, parts.sizes)
        sb = np.where(b[None, :] < 0, n_all[:, None], s_all[:, np.maximum(b, 0)])
        u, v = influence_coefs(s_all[:, a], sb)
        se = np.sqrt(squared_influence(xa, xb, u, v, weights)
                     + (0.0 if extra_var is None else extra_var.get(k, 0.0)))
        out[k] = studentized_interval(point[k], r, se[1:], float(se[0]), alpha)
    return out


@dataclass(frozen=True)
class Shift:
    """An independent additive term of some estimators' bootstrap replicates.

    A subgroup's estimate moves with the Q-model's refit on *every* episode: its own episodes'
    share is in the parts, the other episodes' share is this term (resampled separately: a
    bootstrap stratified by subgroup membership).

    Attributes
    ----------
    replicates : dict of str to ndarray of shape (n_boot,)
        Added to each estimator's replicates (mean about 0).
    variance : dict of str to float
        Its variance, added to every studentising and jackknife standard error.
    """

    replicates: dict[str, NDArray[np.float64]]
    variance: dict[str, float]


def bootstrap_ci(
    parts: EpisodeParts,
    *,
    n_boot: int = 1000,
    method: CIMethod = "studentized",
    alpha: float = 0.05,
    random_state: RandomState = None,
    counts: NDArray[np.float64] | None = None,
    shift: Shift | None = None,
) -> dict[str, tuple[tuple[float, float], float]]:
    """Episode-level bootstrap intervals of every estimator in ``parts``.

    Parameters
    ----------
    parts : EpisodeParts
    n_boot : int
        Replicates (>= 1; 1,000 by default).
    method : {"studentized", "percentile", "bca"}
        ``"studentized"`` (default): symmetric bootstrap-t (:func:`studentized_intervals`).
    alpha : float
        ``1 - alpha`` coverage.
    random_state : int, Generator or None
    counts : ndarray of shape (n_boot, n_episodes), optional
        Precomputed replicate counts (to share replicates between calls).
    shift : Shift, optional
        An independent term added to some estimators' replicates.

    Returns
    -------
    dict of str to ((low, high), se)
    """
    check_param(n_boot, "n_boot", "bootstrap_ci", kind=int, low=1)
    check_param(method, "method", "bootstrap_ci", choices=CI_METHODS)
    check_param(alpha, "alpha", "bootstrap_ci", kind=float, low=0.0, high=1.0,
                low_inclusive=False, high_inclusive=False)
    n_ep = parts.matrix.shape[0]
    if counts is None:
        counts = bootstrap_counts(n_ep, n_boot, random_state)
    sums = counts @ parts.matrix
    reps = combine(parts, sums, parts.total_weight(counts))  # bootstrap_replicates, keeping sums
    if shift is not None:
        reps = {k: r + shift.replicates[k] if k in shift.replicates else r
                for k, r in reps.items()}
    point = point_estimates(parts) if method == "bca" else {}
    jack = jackknife_estimates(parts) if method == "bca" else {}
    stud = (studentized_intervals(parts, counts, reps, alpha, sums=sums,
                                  extra_var=None if shift is None else shift.variance)
            if method == "studentized" else {})
    out: dict[str, tuple[tuple[float, float], float]] = {}
    for k, r in reps.items():
        se = float(r.std(ddof=1)) if r.size > 1 else 0.0
        ci = (bca_interval(r, point[k], jack[k], alpha) if method == "bca"
              else stud[k] if method == "studentized" else percentile_interval(r, alpha))
        out[k] = (ci, se)
    return out


def estimates_with_ci(
    parts: EpisodeParts,
    *,
    n_boot: int = 1000,
    method: CIMethod = "studentized",
    alpha: float = 0.05,
    random_state: RandomState = None,
    counts: NDArray[np.float64] | None = None,
    shift: Shift | None = None,
) -> dict[str, Estimate]:
    """Estimate with bootstrap intervals (jackknife normal intervals when ``n_boot == 0``).

    An estimate that cannot be computed (WIS when every importance weight is 0,
    :func:`~equicare.ope._core.undefined_estimates`) is :meth:`Estimate.undefined`: NaN with
    its reason, never 0 [0, 0]. ``shift`` adds an independent term to some estimators'
    replicates and its variance to their standard errors (:class:`Shift`).
    """
    check_param(n_boot, "n_boot", "estimates_with_ci", kind=int, low=0)
    point = point_estimates(parts)
    n_ep = parts.n_episodes
    undefined = undefined_estimates(parts, parts.matrix.sum(axis=0))
    defined = _defined_estimates(parts, point, n_ep, n_boot=n_boot, method=method,
                                 alpha=alpha, random_state=random_state, counts=counts,
                                 shift=shift)
    return {k: Estimate.undefined(n_ep, undefined[k]) if k in undefined else defined[k]
            for k in parts.keys}


def _defined_estimates(parts: EpisodeParts, point: dict[str, float], n_ep: int, *,
                       n_boot: int, method: CIMethod, alpha: float,
                       random_state: RandomState, counts: NDArray[np.float64] | None,
                       shift: Shift | None) -> dict[str, Estimate]:
    """:func:`estimates_with_ci` before undefined estimates are marked."""
    if n_boot == 0 and counts is None:
        jack = jackknife_estimates(parts)
        n_rows = int(parts.matrix.shape[0])  # episodes, or people (a cluster jackknife)
        out = {}
        for k, v in point.items():
            j = jack[k]
            se = jackknife_se(float(np.sum((j - j.mean()) ** 2)), n_rows)
            if shift is not None:
                se = float(np.sqrt(se**2 + shift.variance.get(k, 0.0)))
            out[k] = Estimate(value=v, ci=normal_interval(v, se, alpha), se=se, n_episodes=n_ep)
        return out
    cis = bootstrap_ci(parts, n_boot=max(n_boot, 1), method=method, alpha=alpha,
                       random_state=random_state, counts=counts, shift=shift)
    return {k: Estimate(value=point[k], ci=cis[k][0], se=cis[k][1], n_episodes=n_ep)
            for k in parts.keys}


def bias_aware(est: Estimate, bias: float, bias_se: float, alpha: float = 0.05) -> Estimate:
    r"""Widen an interval by an estimated bound on the estimator's bias.

    FQE's error is the Q-model's Bellman error under the target policy's occupancy,
    :math:`v - \hat v = E_{d^\pi}[\mathcal T^\pi Q - Q]`, which ``auto`` estimates by
    cross-fitting (``bias`` = :math:`\bar b` with standard error ``bias_se``, see
    :mod:`equicare.ope._select`). The bootstrap carries the Q-model's variance, not this bias
    (a misspecified linear model, a data-starved table). With the one-sided upper confidence
    bound :math:`B = |\bar b| + z_{1-\alpha}\,\mathrm{se}(\bar b)` on the bias, the
    interval is the fixed-length bias-aware one of Armstrong & Kolesar (2020, "Simple and
    honest confidence intervals in nonparametric regression", Quantitative Economics 11),

    .. math::

        \hat v \pm \mathrm{cv}_\alpha(B / \mathrm{se})\,\mathrm{se}, \qquad
        \mathrm{cv}_\alpha(t) = \text{the } 1-\alpha \text{ quantile of } |N(t, 1)|,

    joined with the bootstrap interval (never narrower). ``bias`` comes from fits on part of
    the data, so ``B`` is, if anything, too large.
    """
    from scipy.stats import ncx2

    se = max(float(est.se), 1e-12)
    bound = abs(float(bias)) + float(ndtri(1 - alpha)) * float(bias_se)
    if not np.isfinite(bound):
        return est
    half = float(np.sqrt(ncx2.ppf(1 - alpha, 1, (bound / se) ** 2))) * se
    ci = (min(est.ci[0], est.value - half), max(est.ci[1], est.value + half))
    return Estimate(value=est.value, ci=ci, se=est.se, n_episodes=est.n_episodes)
