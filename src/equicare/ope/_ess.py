"""Effective sample size (Kish) of trajectory and per-decision importance weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.ope._core import IS_TYPE, OPEInputs
from equicare.ope._pareto import (
    PARETO_K_INTERVAL,
    PARETO_K_VALUE,
    PARETO_MIN_TAIL,
    pareto_k,
    tail_size,
)
from equicare.privacy import low_ess_cells
from equicare.utils import MIN_CELL

__all__ = ["EffectiveSampleSize", "kish_ess", "effective_sample_size", "ESS_KIND", "WeightSums",
           "ess_from_sums", "heaviest", "low_ess_groups", "LOW_ESS_OVERALL", "low_ess_message",
           "overall_low_ess_message", "stream_low_ess_message", "warn_low_ess", "MISSING_WEIGHT",
           "MISSING_WEIGHT_Z", "weight_mean_off", "mean_and_se", "missing_weight_message",
           "MISSING_WEIGHT_MESSAGE", "HEAVY_TAIL_MESSAGE", "heavy_tail_message", "pareto_k_off",
           "pareto_k_na", "PARETO_NA_FEW", "PARETO_NA_TIES", "GROUP_HEAVY_TAIL_MESSAGE",
           "group_heavy_tail_message", "heavy_tail_groups"]


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
    top_weight_share : float
        Share of the total trajectory weight held by the ``MIN_CELL`` (11) heaviest episodes
        (:func:`heaviest`; all of it with 11 episodes or fewer). The largest share held by one
        episode was published before: one member's number, not a table's.
    """

    n_episodes: int
    trajectory: float
    trajectory_pct: float
    per_decision: float
    per_decision_pct: float
    per_decision_min_pct: float
    per_step_pct: NDArray[np.float64] = field(repr=False)
    top_weight_share: float
    truncate: float | None = None
    trajectory_truncated: float | None = None
    trajectory_truncated_pct: float | None = None
    per_decision_truncated_pct: float | None = None
    weight_mean: float = float("nan")
    weight_mean_se: float = float("nan")
    weight_pareto_k: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (Contract 3 ``"ess"``)."""
        return {
            "trajectory": self.trajectory, "trajectory_pct": self.trajectory_pct,
            "per_decision": self.per_decision, "per_decision_pct": self.per_decision_pct,
            "per_decision_min_pct": self.per_decision_min_pct,
            "top11_weight_share": self.top_weight_share,
            "truncate": self.truncate,
            "trajectory_truncated": self.trajectory_truncated,
            "trajectory_truncated_pct": self.trajectory_truncated_pct,
            "per_decision_truncated_pct": self.per_decision_truncated_pct,
            "trajectory_weight_mean": _finite(self.weight_mean),
            "trajectory_weight_mean_se": _finite(self.weight_mean_se),
            "trajectory_weight_pareto_k": _finite(self.weight_pareto_k),
        }


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def mean_and_se(total: float, squares: float, n: float) -> tuple[float, float]:
    """Mean and standard error ``std / sqrt(n)`` of ``n`` values from their sum and squares.

    NaN for no value; the standard error is NaN for one value.
    """
    if n <= 0:
        return float("nan"), float("nan")
    mean = total / n
    if n < 2:
        return float(mean), float("nan")
    var = max(squares / n - mean * mean, 0.0) * n / (n - 1)
    return float(mean), float(np.sqrt(var / n))


#: Relative distance of the trajectory weights' mean from 1 beyond which, when it is also
#: :data:`MISSING_WEIGHT_Z` standard errors away, the importance-sampling estimates are flagged
#: (:func:`weight_mean_off`).
MISSING_WEIGHT = 0.1
#: Standard errors of the weights' mean that a distance from 1 must exceed to be flagged.
MISSING_WEIGHT_Z = 3.0


def weight_mean_off(mean: float | None, se: float | None) -> bool:
    """Whether the trajectory weights' mean says their sample missed the weights' tail.

    With the true propensities the weights ``W_e = prod_t pi_e / pi_b`` average exactly 1 in
    expectation (Owen, *Monte Carlo theory, methods and examples*, 2013, ch. 9: the sample mean
    of the weights is a check on importance sampling). A mean more than :data:`MISSING_WEIGHT`
    (10%) from 1 *and* more than :data:`MISSING_WEIGHT_Z` (3) of its own standard errors away
    is not the sampling noise the sample itself shows: the rare large weights that carry the
    target's value were not sampled (a heavy tail), so the standard error, the ESS and the
    bootstrap intervals built from this sample understate the error of IS, WIS, PDIS and WPDIS.
    Measured on a digital-health panel built outside equicare (3,000 users, 40-day stays,
    a half-push target worth 243.7 by Monte Carlo): the weights average 0.11 +/- 0.02 at a
    trajectory ESS of 30 episodes, and IS, WIS, PDIS and WPDIS give 4.2, 38.5, 45.0 and 96.8
    with intervals that all miss the truth (docs/ope.md, "Weights that miss their tail").
    """
    if mean is None or not np.isfinite(mean):
        return False
    gap = abs(mean - 1.0)
    if gap <= MISSING_WEIGHT:
        return False
    return se is None or not np.isfinite(se) or gap > MISSING_WEIGHT_Z * se


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
    share = float(heaviest(w[:, -1][:, None]).sum() / total) if total > 0 else 1.0
    kw: dict[str, Any] = {}
    if truncate is not None:
        wt = inputs.cumulative_weights(truncate)
        t_traj = float(kish_ess(wt[:, -1]))
        kw = {"truncate": float(truncate), "trajectory_truncated": t_traj,
              "trajectory_truncated_pct": 100.0 * t_traj / n,
              "per_decision_truncated_pct": float(_per_step_pct(wt, alive).mean())}
    pd_pct = float(step_pct.mean())
    wm, wse = mean_and_se(float(total), float(np.dot(w[:, -1], w[:, -1])), float(n))
    return EffectiveSampleSize(
        n_episodes=n, trajectory=traj, trajectory_pct=100.0 * traj / n,
        per_decision=pd_pct * n / 100.0, per_decision_pct=pd_pct,
        per_decision_min_pct=float(step_pct.min()), per_step_pct=step_pct,
        top_weight_share=share, weight_mean=wm, weight_mean_se=wse,
        weight_pareto_k=pareto_k(w[:, -1]), **kw)


def heaviest(weights: NDArray[np.float64], k: int = MIN_CELL) -> NDArray[np.float64]:
    """The ``k`` largest weights of each column (zeros when it has fewer), unsorted.

    Weights are >= 0, so the zeros change no sum: the heaviest of several parts of a column
    are ``heaviest`` of their stacked heaviest, as a streamed panel merges its chunks'.

    Parameters
    ----------
    weights : ndarray of shape (n, n_columns)
    k : int

    Returns
    -------
    ndarray of shape (k, n_columns)
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[0] < k:
        return np.concatenate([w, np.zeros((k - w.shape[0], w.shape[1]))])
    return np.asarray(np.partition(w, w.shape[0] - k, axis=0)[w.shape[0] - k:])


#: The importance weights each estimator's value rests on: the trajectory weights ``W_e`` for
#: IS and WIS (one weight times the episode's return); the cumulative weights ``w_{e,t}`` of
#: every step for PDIS and WPDIS (a weighted reward per step) and for the weighted corrections of
#: DR, WDR and bandit DR (their model-based part pools every episode, but the value minus the
#: FQE value published beside it is the weighted correction alone). FQE has no weights.
ESS_KIND: dict[str, str] = {"is": "trajectory", "wis": "trajectory", "pdis": "per_decision",
                            "wpdis": "per_decision", "dr": "per_decision",
                            "wdr": "per_decision", "bandit_dr": "per_decision"}


#: Overall estimates whose importance weights have an ESS below ``MIN_CELL`` (tests match it).
LOW_ESS_OVERALL = (
    "the overall {estimators} value{s} rest{verb} on fewer than {min_cell} episodes' worth of "
    "importance weight ({said}; a group's value would not be published below {min_cell}): such "
    "a value is close to a few members' returns, and its interval can miss the truth.{advice}")
#: The advice's end: with estimated propensities, logging them is also advised.
LOW_ESS_ADVICE = {True: ", or truncate the weights (--truncate)",
                  False: ", truncate the weights (--truncate), or log the propensities"}
#: The advice when no estimator is left to prefer (every one far outside the returns' range).
LOW_ESS_ADVICE_ALONE = {True: "Truncate the weights (--truncate)",
                        False: "Truncate the weights (--truncate) or log the propensities"}
#: The estimators the low-ESS warning recommends, in order (the first two usable ones).
LOW_ESS_PREFERRED = ("fqe", "dr", "wdr")


def preferred(order: Sequence[str], unusable: Iterable[str] = (), n: int = 2) -> list[str]:
    """The first ``n`` estimators of ``order`` that are not ``unusable``.

    A warning that recommends estimators must not recommend one that the same evaluation found
    far outside the returns' range (``unusable``,
    :func:`~equicare.ope._evaluate.far_outside_returns`): on a 150-visit dosing panel DR was
    1.3e4 ("Do not use them") and the next warning said "Prefer fqe or dr".
    """
    bad = set(unusable)
    return [k for k in order if k not in bad][:n]


def low_ess_message(keys: Any, n_episodes: int, trajectory: float | None,
                    per_decision: float | None = None, min_cell: int = MIN_CELL,
                    logged: bool = False, unusable: Iterable[str] = (),
                    weight_mean: float | None = None,
                    weight_mean_se: float | None = None,
                    weight_pareto_k: float | None = None) -> str | None:
    """The warning for overall weighted estimates that rest on too little importance weight.

    Two checks, one message. A group's weighted value is withheld below ``min_cell``
    (:func:`low_ess_groups`); the overall one is published (docs/ope.md, "Subgroups"), so it is
    at least said: each importance-sampling estimator of ``keys``
    (:data:`~equicare.ope._core.IS_TYPE`: a weighted average of the episodes' rewards) is
    checked on the ESS its weights have (:data:`ESS_KIND`). And all of them are flagged when the
    trajectory weights' mean says the sample missed their tail (:func:`weight_mean_off`), at
    any ESS. ``dr`` and ``wdr`` pool every episode in their Q-model and are left to the audit's
    warning.

    Parameters
    ----------
    keys : iterable of str
        The estimators computed.
    n_episodes : int
    trajectory, per_decision : float or None
        The ESS (in episodes) of the weights the estimates used (the truncated ones with
        truncation); None when not known (a streamed evaluation has no per-decision ESS).
    min_cell : int
    logged : bool, default=False
        The propensities were logged (the advice then does not say to log them).
    unusable : iterable of str, default=()
        Estimators found far outside the returns' range: not recommended (:func:`preferred`).
    weight_mean, weight_mean_se : float, optional
        The untruncated trajectory weights' mean and its standard error
        (:attr:`EffectiveSampleSize.weight_mean`); None: not checked.
    weight_pareto_k : float, optional
        The untruncated trajectory weights' Pareto tail index
        (:attr:`EffectiveSampleSize.weight_pareto_k`); above 0.5 IS and WIS are flagged
        (:func:`pareto_k_off`). None: not checked.

    Returns
    -------
    str or None
        The message, or None when every weighted estimate has enough weight.
    """
    keys = list(keys)
    ess = {"trajectory": trajectory, "per_decision": per_decision}
    low = {kind: [k for k in keys if k in IS_TYPE and ESS_KIND[k] == kind]
           for kind, v in ess.items()
           if v is not None and v < min_cell}
    low = {kind: ks for kind, ks in low.items() if ks}
    off = [k for k in keys if k in IS_TYPE] if weight_mean_off(weight_mean, weight_mean_se) else []
    heavy = ([k for k in keys if k in IS_TYPE and ESS_KIND[k] == "trajectory"]
             if pareto_k_off(weight_pareto_k) else [])
    if not low and not off and not heavy:
        return None
    prefer = preferred(LOW_ESS_PREFERRED, unusable)
    advice = ("Prefer " + " or ".join(prefer) + LOW_ESS_ADVICE[bool(logged)] if prefer
              else LOW_ESS_ADVICE_ALONE[bool(logged)])
    parts = []
    if low:
        names = [k for ks in low.values() for k in ks]
        said = "; ".join(f"{kind.replace('_', '-')} ESS {ess[kind]:.1f} of {n_episodes:,} "
                         "episodes" + ("" if len(low) == 1 else f" for {', '.join(ks)}")
                         for kind, ks in low.items())
        parts.append(LOW_ESS_OVERALL.format(  # the weight check's advice, when it fires, ends
            estimators=_join(names), s="s" if len(names) > 1 else "",  # both (no truncation)
            verb="" if len(names) > 1 else "s", said=said, min_cell=min_cell,
            advice="" if off or heavy else f" {advice}."))
    if off:
        assert weight_mean is not None
        parts.append(missing_weight_message(
            off, weight_mean, weight_mean_se, n_episodes,
            advice=(("Prefer " + " or ".join(prefer) + ("" if logged else
                                                         ", or log the propensities"))
                    if prefer else "Log the propensities or value it with a Q-model")))
    if heavy:
        assert weight_pareto_k is not None
        parts.append(heavy_tail_message(heavy, weight_pareto_k, n_episodes, prefer))
    return " ".join(parts)


def pareto_k_off(k: float | None) -> bool:
    """Whether the trajectory weights' tail is too heavy for a standard error or a bootstrap.

    Their Pareto tail index ``k`` (:func:`~equicare.ope._pareto.pareto_k`) above
    :data:`~equicare.ope._pareto.PARETO_K_INTERVAL` (0.5) says the weights have no finite
    variance: a mean of weighted returns then obeys no central limit theorem, and its standard
    error, Kish's ESS and its bootstrap interval (which resample only the tail the sample drew)
    understate its error. Measured on a Medicaid care-management panel built outside equicare
    (20,000 members, 1-24 monthly rows, heavy-tailed costs; docs/ope.md, "Weights with a heavy
    tail"): a targeted-outreach policy's weights had ``k`` 0.62-1.00 over nine panels at a
    trajectory ESS of about 14% of the episodes and a weights' mean within 7% of 1, and IS's
    95% intervals covered the truth 5 times in 9; a policy near current practice had ``k``
    0.03-0.33 and IS covered 9 times in 9.
    """
    return k is not None and bool(np.isfinite(k)) and k > PARETO_K_INTERVAL


def heavy_tail_message(names: Sequence[str], k: float, n_episodes: int,
                       prefer: Sequence[str]) -> str:
    """The heavy-tail warning for the estimators ``names`` (:func:`pareto_k_off`).

    Parameters
    ----------
    names : sequence of str
        The estimators weighted by the trajectory weights (IS, WIS).
    k : float
        The weights' Pareto tail index.
    n_episodes : int
    prefer : sequence of str
        The estimators to recommend (:func:`preferred`); none: the advice names no estimator.
    """
    many = len(names) > 1
    return HEAVY_TAIL_MESSAGE.format(
        estimators=_join(names), s="s" if many else "", verb="" if many else "s", k=k,
        m=tail_size(n_episodes), n_episodes=n_episodes, limit=PARETO_K_INTERVAL,
        why=HEAVY_TAIL_VALUE if k > PARETO_K_VALUE else HEAVY_TAIL_INTERVAL,
        their_cap="Their" if many else "Its",
        intervals="intervals" if many else "interval",
        advice=("Prefer " + " or ".join(prefer) + "." if prefer
                else "Value it with a Q-model."))


#: Why a group's Pareto k is not given: too few episodes for the tail fit (tests match it).
PARETO_NA_FEW = ("n/a: the tail fit needs {min_tail} weights, the largest min(n/5, 3 sqrt(n)) "
                 "of n episodes: {n_episodes} episodes give {m}")
#: ... or too few distinct weights in the tail (short stays, few actions, on-policy).
PARETO_NA_TIES = ("n/a: fewer than {min_tail} distinct weights in the tail (repeated weights of "
                  "short stays or few actions, or every weight equal)")


def pareto_k_na(k: float | None, n_episodes: int) -> str | None:
    """Why the Pareto tail index ``k`` of ``n_episodes``' weights is not given, or None.

    None when ``k`` is finite. The fit (:func:`~equicare.ope._pareto.pareto_k`) needs
    :data:`~equicare.ope._pareto.PARETO_MIN_TAIL` (20) tail weights, the largest
    ``min(n / 5, 3 sqrt(n))``: a group of fewer than 100 episodes has no ``k``
    (:data:`PARETO_NA_FEW`); otherwise the tail held too few distinct weights
    (:data:`PARETO_NA_TIES`).
    """
    if k is not None and np.isfinite(k):
        return None
    m = tail_size(int(n_episodes))
    if m < PARETO_MIN_TAIL:
        return PARETO_NA_FEW.format(min_tail=PARETO_MIN_TAIL, n_episodes=int(n_episodes), m=m)
    return PARETO_NA_TIES.format(min_tail=PARETO_MIN_TAIL)


#: The heavy-tail check's warning for subgroups (:func:`group_heavy_tail_message`).
GROUP_HEAVY_TAIL_MESSAGE = (
    "The {estimators} value{s} of {cells} rest{verb} on trajectory importance weights with a "
    "heavy tail within {the_group}: Pareto k (in parentheses, over the group's largest weights) "
    "above {limit}, so the weights have no finite variance there whatever the whole panel's "
    "tail. {their_cap} standard errors and bootstrap intervals see only the tail {the_group} "
    "drew and can miss the truth (docs/ope.md, 'Weights with a heavy tail'). {advice}")


def group_heavy_tail_message(cells: Sequence[tuple[str, float, int]], names: Sequence[str],
                             prefer: Sequence[str]) -> str | None:
    """The heavy-tail warning naming the groups whose weights' ``k`` is above 0.5, or None.

    Parameters
    ----------
    cells : sequence of (str, float, int)
        ``("race=asian", k, n_episodes)`` of each group with :func:`pareto_k_off`.
    names : sequence of str
        The trajectory-weighted estimators whose group values are published (IS, WIS).
    prefer : sequence of str
        The estimators to recommend (:func:`preferred`).
    """
    if not cells or not names:
        return None
    many = len(cells) > 1
    said = ", ".join(f"{c} (k {k:.3g} over the largest {tail_size(n):,} of {n:,} episodes)"
                     for c, k, n in cells)
    return GROUP_HEAVY_TAIL_MESSAGE.format(
        estimators=_join(names), s="s" if many or len(names) > 1 else "",
        cells=("subgroups " if many else "subgroup ") + said,
        verb="" if many or len(names) > 1 else "s",
        the_group="each" if many else "the group", limit=PARETO_K_INTERVAL,
        their_cap="Their",
        advice=("Prefer " + " or ".join(prefer) + " for " + ("them." if many else "it.")
                if prefer else "Value them with a Q-model."))


def heavy_tail_groups(groups: Mapping[str, Mapping[str, Any]], keys: Sequence[str],
                      unusable: Iterable[str] = ()) -> str | None:
    """:func:`group_heavy_tail_message` of an evaluation's subgroup levels, or None.

    ``groups`` maps an attribute to its levels (``GroupResult`` or ``StreamGroup``: their
    ``pareto_k``, ``n_episodes``, ``estimates`` and ``suppressed``). A published level is named
    when its trajectory weights' ``k`` is above 0.5 and one of its IS and WIS values (among
    ``keys``) is published; suppressed levels have no ``k``.
    """
    traj = [k for k in keys if k in IS_TYPE and ESS_KIND[k] == "trajectory"]
    cells: list[tuple[str, float, int]] = []
    names: list[str] = []
    for attr, levels in groups.items():
        for lv, g in levels.items():
            if g.suppressed or not pareto_k_off(g.pareto_k):
                continue
            shown = [k for k in traj if k in g.estimates and g.estimates[k].reason is None]
            if shown:
                cells.append((f"{attr}={lv}", float(g.pareto_k), int(g.n_episodes)))
                names += [k for k in shown if k not in names]
    return group_heavy_tail_message(cells, names, preferred(LOW_ESS_PREFERRED, unusable))


#: The heavy-tail check's warning (:func:`pareto_k_off`; tests match it).
HEAVY_TAIL_MESSAGE = (
    "The {estimators} value{s} rest{verb} on trajectory importance weights with a heavy tail: "
    "Pareto k {k:.3g} over the largest {m:,} of {n_episodes:,} episodes (above {limit}: {why}). "
    "{their_cap} standard error{s} and bootstrap {intervals} see only the tail the panel drew, "
    "so they understate the error and can miss the truth at any ESS (docs/ope.md, 'Weights "
    "with a heavy tail'). {advice}")
#: Why, for ``0.5 < k <= 0.7``.
HEAVY_TAIL_INTERVAL = "the weights have no finite variance"
#: Why, for ``k > 0.7``.
HEAVY_TAIL_VALUE = ("the weights have no finite variance, and the value itself needs far more "
                    "episodes than the panel holds")


def missing_weight_message(names: Sequence[str], weight_mean: float, weight_mean_se: float | None,
                           n_episodes: int, advice: str) -> str:
    """The weight-mean check's warning for the estimators ``names`` (:func:`weight_mean_off`).

    Parameters
    ----------
    names : sequence of str
        The importance-sampling estimators it concerns.
    weight_mean, weight_mean_se : float
        The trajectory weights' mean and its standard error.
    n_episodes : int
    advice : str
        The last sentence, without its full stop.
    """
    many = len(names) > 1
    return MISSING_WEIGHT_MESSAGE.format(
        estimators=_join(names), s="s" if many else "", verb="" if many else "s",
        mean=weight_mean, se=weight_mean_se if weight_mean_se is not None else float("nan"),
        n_episodes=n_episodes,
        why=(MISSING_WEIGHT_LOW.format(pct=100.0 * (1.0 - weight_mean))
             if weight_mean < 1.0 else MISSING_WEIGHT_HIGH),
        their="their" if many else "its", intervals="intervals" if many else "interval",
        advice=advice)


def _join(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


#: The weight-mean check's warning (:func:`weight_mean_off`; tests match it).
MISSING_WEIGHT_MESSAGE = (
    "The {estimators} value{s} rest{verb} on trajectory importance weights that average {mean:.3g} "
    "(standard error {se:.2g}) over {n_episodes:,} episodes, where they average exactly 1 in "
    "expectation: {why} The sample's own spread does not show it, so {their} {intervals} can "
    "miss the truth by far, and truncating the weights removes more of it (docs/ope.md, "
    "'Weights that miss their tail'). {advice}.")
#: Why, when the weights average below 1.
MISSING_WEIGHT_LOW = (
    "about {pct:.0f}% of the target policy's weight lies on rare trajectories the panel did "
    "not sample.")
#: Why, when they average above 1.
MISSING_WEIGHT_HIGH = (
    "a few rare trajectories with very large weights were sampled, far beyond their share.")


def overall_low_ess_message(estimates: Any, ess: EffectiveSampleSize,
                            logged: bool = False, unusable: Iterable[str] = ()) -> str | None:
    """:func:`low_ess_message` of an in-memory evaluation's estimates and ESS.

    The ESS of the weights the estimates used (the truncated ones with truncation); the
    estimators without a value (WIS with every weight 0) are not named.

    Parameters
    ----------
    estimates : dict of str to Estimate
    ess : EffectiveSampleSize
    logged : bool, default=False
        The propensities were logged.
    unusable : iterable of str, default=()
        Estimators found far outside the returns' range (not recommended).
    """
    traj = ess.trajectory if ess.trajectory_truncated is None else ess.trajectory_truncated
    per_decision = (ess.per_decision if ess.per_decision_truncated_pct is None
                    else ess.per_decision_truncated_pct * ess.n_episodes / 100.0)
    return low_ess_message(_valued(estimates), ess.n_episodes, traj, per_decision,
                           logged=logged, unusable=unusable, weight_mean=ess.weight_mean,
                           weight_mean_se=ess.weight_mean_se,
                           weight_pareto_k=ess.weight_pareto_k)


def stream_low_ess_message(estimates: Any, n_episodes: int, trajectory: float,
                           trajectory_truncated: float | None = None,
                           logged: bool = False, unusable: Iterable[str] = (),
                           weight_mean: tuple[float, float] | None = None,
                           weight_pareto_k: float | None = None) -> str | None:
    """:func:`low_ess_message` of a streamed evaluation (its trajectory ESS alone).

    Parameters
    ----------
    estimates : dict of str to Estimate
    n_episodes : int
    trajectory, trajectory_truncated : float
        The trajectory weights' ESS, and that of the truncated weights with truncation.
    logged : bool, default=False
        The propensities were logged.
    unusable : iterable of str, default=()
    weight_mean : (float, float), optional
        The untruncated trajectory weights' mean and its standard error.
    weight_pareto_k : float, optional
        The untruncated trajectory weights' Pareto tail index.
    """
    wm, wse = weight_mean if weight_mean is not None else (None, None)
    return low_ess_message(_valued(estimates), n_episodes,
                           trajectory if trajectory_truncated is None else trajectory_truncated,
                           logged=logged, unusable=unusable, weight_mean=wm,
                           weight_mean_se=wse, weight_pareto_k=weight_pareto_k)


def _valued(estimates: Any) -> list[str]:
    """The estimators with a finite value (WIS with every weight 0 has none)."""
    return [k for k, v in estimates.items() if v.value is not None and np.isfinite(v.value)]


def warn_low_ess(message: str | None, stacklevel: int) -> None:
    """Warn ``message`` (:func:`low_ess_message`) as a :class:`~equicare.exceptions.LowESSWarning`.

    Nothing when it is None. ``stacklevel`` as :func:`warnings.warn`'s, counted from the
    caller of this function.
    """
    if message is not None:
        import warnings

        from equicare.exceptions import LowESSWarning

        warnings.warn(message, LowESSWarning, stacklevel=stacklevel + 1)


def _pad(a: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    return np.pad(a, ((0, 0), (0, width - a.shape[1]))) if a.shape[1] < width else a


@dataclass(frozen=True)
class WeightSums:
    """Summed importance weights of some episodes: what their effective sample sizes need.

    Additive over disjoint sets of episodes (chunks of a streamed panel, groups of a table),
    so the ESS of a union of groups is that of the sum (:func:`equicare.privacy.sums_ess`).

    Attributes
    ----------
    trajectory : ndarray of shape (3, 1)
        ``sum W_e``, ``sum W_e^2`` and the number of episodes.
    per_decision : ndarray of shape (3, n_steps)
        Per step ``t``, over the episodes alive at ``t``: ``sum w_{e,t}``, ``sum w_{e,t}^2`` and
        their number.
    """

    trajectory: NDArray[np.float64]
    per_decision: NDArray[np.float64]

    @classmethod
    def of(cls, inputs: OPEInputs, truncate: float | None = None) -> WeightSums:
        """The sums of every episode of ``inputs`` (weights truncated at ``truncate``)."""
        return cls.by_group(inputs, np.ones((inputs.n_episodes, 1)), truncate)[0]

    @classmethod
    def by_group(cls, inputs: OPEInputs, member: NDArray[Any], truncate: float | None = None
                 ) -> list[WeightSums]:
        """The sums of each column of the ``(n_episodes, n_groups)`` membership ``member``."""
        m = np.asarray(member, dtype=np.float64).T
        w = inputs.cumulative_weights(truncate)
        alive = inputs.alive().astype(np.float64)
        wa = w * alive
        traj = w[:, -1] if w.shape[1] else np.zeros(w.shape[0])
        t = np.stack([m @ traj, m @ (traj * traj), m.sum(axis=1)], axis=1)  # (G, 3)
        p = np.stack([m @ wa, m @ (wa * wa), m @ alive], axis=1)  # (G, 3, T)
        return [cls(trajectory=t[g][:, None], per_decision=p[g]) for g in range(m.shape[0])]

    def __add__(self, other: WeightSums) -> WeightSums:
        width = max(self.per_decision.shape[1], other.per_decision.shape[1])
        return WeightSums(trajectory=self.trajectory + other.trajectory,
                          per_decision=_pad(self.per_decision, width)
                          + _pad(other.per_decision, width))

    def get(self, kind: str) -> NDArray[np.float64]:
        """``trajectory`` or ``per_decision``."""
        return self.trajectory if kind == "trajectory" else self.per_decision


def ess_from_sums(sums: WeightSums, *, top: NDArray[np.float64],
                  truncated: WeightSums | None = None,
                  truncate: float | None = None,
                  tail: NDArray[np.float64] | None = None) -> EffectiveSampleSize:
    """The :class:`EffectiveSampleSize` of some episodes from their :class:`WeightSums`.

    What :func:`effective_sample_size` computes from the weights themselves, for sums added
    over chunks (a streamed panel); the per-step shares cover the steps with an episode alive.

    Parameters
    ----------
    sums : WeightSums
        Of the untruncated weights.
    top : ndarray of shape (MIN_CELL,)
        The episodes' heaviest trajectory weights (:func:`heaviest`, for ``top_weight_share``).
    truncated : WeightSums, optional
        Of the weights truncated at ``truncate`` (given together).
    truncate : float, optional
    tail : ndarray of shape (<= PARETO_KEEP,), optional
        The episodes' largest trajectory weights (zeros beyond them change nothing), for
        ``weight_pareto_k``; without it that stays NaN.
    """
    def kish(a: float, b: float) -> float:
        return a * a / b if b > 0 else 0.0

    n = sums.per_decision[2]
    steps = n > 0
    n_ep = int(round(float(n[0]))) if n.size else 0

    def step_pct(ws: WeightSums) -> NDArray[np.float64]:
        s1, s2 = ws.per_decision[0], ws.per_decision[1]
        k = np.zeros(s1.shape[0])
        np.divide(s1 ** 2, s2, out=k, where=s2 > 0)
        return np.asarray((100.0 * k / np.maximum(n, 1.0))[steps])

    pct = step_pct(sums)
    total = float(sums.trajectory[0, 0])
    traj = kish(total, float(sums.trajectory[1, 0]))
    kw: dict[str, Any] = {}
    if truncate is not None:
        assert truncated is not None
        tt = kish(float(truncated.trajectory[0, 0]), float(truncated.trajectory[1, 0]))
        kw = {"truncate": float(truncate), "trajectory_truncated": tt,
              "trajectory_truncated_pct": 100.0 * tt / n_ep,
              "per_decision_truncated_pct": float(step_pct(truncated).mean())}
    pd_pct = float(pct.mean())
    wm, wse = mean_and_se(total, float(sums.trajectory[1, 0]), float(sums.trajectory[2, 0]))
    return EffectiveSampleSize(
        n_episodes=n_ep, trajectory=traj, trajectory_pct=100.0 * traj / n_ep,
        per_decision=pd_pct * n_ep / 100.0, per_decision_pct=pd_pct,
        per_decision_min_pct=float(pct.min()), per_step_pct=pct,
        top_weight_share=float(np.sum(top) / total) if total > 0 else 1.0,
        weight_mean=wm, weight_mean_se=wse,
        weight_pareto_k=float("nan") if tail is None else pareto_k(tail, n_ep), **kw)


def low_ess_groups(cells: dict[str, WeightSums], keys: Any, min_cell: int = MIN_CELL
                   ) -> dict[str, dict[str, str]]:
    """Group values of weighted estimators not to publish, per estimator: ``{key: {label: why}}``.

    Each estimator of ``keys`` in :data:`ESS_KIND` is checked on the ESS of its weights
    (:func:`equicare.privacy.low_ess_cells`: primary and complementary); FQE is not weighted.

    Parameters
    ----------
    cells : dict of str to WeightSums
        The published groups of one table (one attribute, or an intersection).
    keys : iterable of str
    min_cell : int
    """
    out: dict[str, dict[str, str]] = {}
    labels = list(cells)
    if not labels:
        return out
    for kind in ("trajectory", "per_decision"):
        ks = [k for k in keys if ESS_KIND.get(k) == kind]
        if not ks:
            continue
        width = max(c.get(kind).shape[1] for c in cells.values())
        stack = np.stack([_pad(cells[g].get(kind), width) for g in labels])  # (G, 3, T)
        hidden = low_ess_cells(labels, stack[:, 0], stack[:, 1], stack[:, 2], min_cell)
        for k in ks:
            out[k] = hidden
    return out
