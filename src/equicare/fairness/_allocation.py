"""Allocation metrics by group: rates, parity gaps and ratios, proportional parity."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError, SmallCellWarning
from equicare.fairness._bootstrap import (
    CIMethod,
    bootstrap_ci,
    bootstrap_weights,
    split_random_state,
)
from equicare.fairness._groups import (
    SUPPRESSED,
    GroupIndex,
    dataset_group_index,
    require_comparison,
)
from equicare.fairness._permutation import permutation_test
from equicare.fairness._rows import (
    Level,
    action_set,
    episode_totals,
    level_matrix,
    need_rows,
    row_allocation,
)
from equicare.policy import Policy
from equicare.privacy import share_suppressed, share_table_suppressed, warn_low_min_cell
from equicare.utils import MIN_CELL, PARAM_MESSAGE, RandomState, check_dataset, check_param

__all__ = ["AllocationFrame", "allocation_rates", "level_rates", "group_sums", "build_frames",
           "level_table", "set_levels", "need_suppressed", "need_cells_message", "MSG_NEED_CELLS",
           "rate_cells_message", "MSG_RATE_CELLS", "pp_undefined", "pp_undefined_lines"]

Method = Literal["between_groups", "to_overall"]


def _num(v: float) -> float | None:
    """JSON-friendly float (NaN -> None)."""
    return None if v is None or not np.isfinite(v) else float(v)


def _ci_pair(ci: NDArray[np.float64]) -> list[float | None]:
    return [_num(float(ci[0])), _num(float(ci[1]))]


def group_sums(codes_onehot: NDArray[np.float64], columns: NDArray[np.float64],
               weights: NDArray[np.float64] | None
               ) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Sum episode columns within each group, for the data and every bootstrap replicate.

    Parameters
    ----------
    codes_onehot : ndarray of shape (n_episodes, n_groups)
        Group membership (rows of left-out episodes are 0).
    columns : ndarray of shape (n_episodes, m)
        Episode quantities to sum.
    weights : ndarray of shape (n_boot, n_episodes), optional
        Bootstrap replicate weights (:func:`bootstrap_weights`).

    Returns
    -------
    point : ndarray of shape (n_groups, m)
    replicates : ndarray of shape (n_boot, n_groups, m) or None
    """
    e, g = codes_onehot.shape
    m = columns.shape[1]
    x = (codes_onehot[:, :, None] * columns[:, None, :]).reshape(e, g * m)
    point = x.sum(axis=0).reshape(g, m)
    if weights is None:
        return point, None
    return point, (weights @ x).reshape(weights.shape[0], g, m)


#: Decimals a gap between rates (fractions) keeps: far below any rate a panel can estimate.
GAP_DECIMALS = 12


def _gap(rates: NDArray[np.float64], overall: NDArray[np.float64], method: Method
         ) -> NDArray[np.float64]:
    """Difference statistic along the last (group) axis.

    Rounded to :data:`GAP_DECIMALS` decimals: rates that are equal but summed in another order
    differ by about 1e-15, which would read as a gap of "1.33e-13 pp".
    """
    if method == "between_groups":
        gap = np.max(rates, axis=-1) - np.min(rates, axis=-1)
    else:
        gap = np.max(np.abs(rates - overall[..., None]), axis=-1)
    return np.asarray(np.round(gap, GAP_DECIMALS))



def _ratio(rates: NDArray[np.float64], overall: NDArray[np.float64], method: Method
           ) -> NDArray[np.float64]:
    """Ratio statistic along the last (group) axis (NaN where undefined)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if method == "between_groups":
            lo, hi = np.min(rates, axis=-1), np.max(rates, axis=-1)
            return np.asarray(np.where(hi > 0, lo / hi, np.nan))
        o = overall[..., None]
        r = np.minimum(rates / o, o / rates)
        r = np.where((rates == o), 1.0, r)
        return np.asarray(np.min(r, axis=-1))


def _check_method(method: str, owner: str) -> Method:
    check_param(method, "method", owner, choices=("between_groups", "to_overall"))
    return method  # type: ignore[return-value]


#: Why the proportional parity of some published groups is not published (tests match it).
MSG_NEED_CELLS = ("Proportional parity is not published for {n} group(s) ({shown}): a "
                  "group's count of episodes with need, or without need, under {min_cell} could "
                  "be worked out from it, and so could such a count of another group by "
                  "difference from the need total (complementary suppression).")


#: Why a published group's proportional parity is undefined (null, with this as its reason).
PP_NO_NEED_IN_GROUP = ("no audited episode of group {group!r} has need, so its share of the need "
                       "is 0 and its share of the allocation cannot be divided by it")
PP_NO_NEED = ("no audited episode has need, so no group's share of the need is defined (check "
              "the need column or rule)")
PP_NO_ALLOCATION = ("{policy!r} gives the action to no audited episode, so no group's share of "
                    "the allocation is defined")


def pp_undefined(labels: Sequence[str], policy: str, alloc: Any, need: Any,
                 hidden: Sequence[str] = ()) -> dict[str, str]:
    """Published groups whose proportional parity is undefined, with the reason.

    Proportional parity is a group's share of the allocation over its share of the need; it is
    undefined when the group has no need (a zero share), or when nobody has need or gets the
    action (no share at all). Groups whose proportional parity is suppressed are left out.

    Parameters
    ----------
    labels : sequence of str
        Published groups.
    policy : str
    alloc, need : array-like of shape (n_groups,)
        The groups' allocation and need totals.
    hidden : sequence of str
        Groups whose proportional parity is suppressed.
    """
    a = np.asarray(alloc, dtype=np.float64).ravel()
    n = np.asarray(need, dtype=np.float64).ravel()
    out = {}
    for g, ag, ng in zip(labels, a, n, strict=True):
        if g in hidden:
            continue
        if not n.sum() > 0:
            out[g] = PP_NO_NEED
        elif not a.sum() > 0:
            out[g] = PP_NO_ALLOCATION.format(policy=policy)
        elif not ng > 0:
            out[g] = PP_NO_NEED_IN_GROUP.format(group=g)
        elif not np.isfinite(ag):  # pragma: no cover - totals of finite rows
            out[g] = "its allocation total is not finite"
    return out


def pp_undefined_lines(frame: AllocationFrame) -> list[str]:
    """One line per reason of :attr:`AllocationFrame.pp_undefined` (for a table's caption)."""
    by_reason: dict[str, list[str]] = {}
    for g, why in frame.pp_undefined.items():
        by_reason.setdefault(why, []).append(g)
    return [f"{frame.policy}: proportional parity n/a for {', '.join(gs)}: {why}"
            for why, gs in by_reason.items()]


def need_suppressed(labels: Sequence[str], counts: Any, need_counts: Any,
                    min_cell: int = MIN_CELL) -> tuple[str, ...]:
    """Published groups whose proportional parity (and its interval) must not be published.

    A group's proportional parity is its allocation share over its need share, so with the
    published rates and the panel's need total it gives back the group's count of episodes
    with need, and from its published episode count the count without need: its whole row of
    the table ``group x {with need, without need}``. Each column of that table (the groups'
    counts with need, whose total is the panel's need count; without need likewise) is
    protected as any published table of groups (:func:`equicare.privacy.suppress_counts`):
    counts of 1 to ``min_cell - 1`` episodes, then the smallest other groups of the column
    until the suppressed ones hold ``min_cell`` together, so no total minus the published
    groups reveals a small count. A group suppressed in either column has no proportional
    parity (its row is hidden whole, which only adds to each column's suppressed union). An
    empty cell (no episode with need, or every episode with need) holds no member and is not
    suppressed, as everywhere in :mod:`equicare.privacy`.

    Parameters
    ----------
    labels : sequence of str
        Published groups.
    counts : array-like of shape (n_groups,), int
        Audited episodes per group.
    need_counts : array-like of shape (n_groups,)
        Episodes with need (need total above 0) per group (rounded to int).
    min_cell : int

    Returns
    -------
    tuple of str
        The groups whose proportional parity is suppressed, in ``labels`` order.
    """
    n = np.asarray(counts, dtype=np.int64).ravel()
    k = np.clip(np.rint(np.asarray(need_counts, dtype=np.float64)).astype(np.int64).ravel(),
                0, n)
    return share_suppressed(labels, k, n - k, min_cell)[0]  # with need, without need


#: Why some allocation rates of a policy are not published (tests match it).
MSG_RATE_CELLS = ("Allocation rates of {policy!r} are not published for {shown}: fewer than "
                  "{min_cell} episodes of a group get the action at all (or fewer than "
                  "{min_cell} do not always get it), so the rate would give back a count of "
                  "fewer than {min_cell} members, directly or by difference from the other "
                  "groups (complementary suppression); its parity gap and ratio are not "
                  "published either.")


def rate_cells_message(frame: AllocationFrame) -> str | None:
    """:data:`MSG_RATE_CELLS` for a frame with hidden rates (no count named), else None."""
    g = frame.rate_suppressed
    if not g and not frame.overall_suppressed:
        return None
    shown = ", ".join(g[:10]) + (f" and {len(g) - 10} more" if len(g) > 10 else "")
    if frame.overall_suppressed:
        shown = f"{shown} and the overall rate" if shown else "the overall rate"
    return MSG_RATE_CELLS.format(policy=frame.policy, shown=shown, min_cell=frame.min_cell)


def need_cells_message(groups: Sequence[str], min_cell: int = MIN_CELL) -> str:
    """:data:`MSG_NEED_CELLS` for the groups of :func:`need_suppressed` (no count named)."""
    shown = ", ".join(groups[:10]) + (f" and {len(groups) - 10} more" if len(groups) > 10
                                      else "")
    return MSG_NEED_CELLS.format(n=len(groups), shown=shown, min_cell=min_cell)


@dataclass(frozen=True, eq=False)
class AllocationFrame:
    """Allocation rate of one action set by group, for one policy, with bootstrap intervals.

    Works like Fairlearn's ``MetricFrame``: :attr:`overall`, :attr:`by_group`,
    :meth:`difference`, :meth:`ratio`, each with a ``_ci`` twin (``1 - alpha`` bootstrap interval
    over the episode-level replicates; ``ci_method`` "basic" by default, widened to contain the
    estimate, see :func:`equicare.fairness.bootstrap_ci`). Rates are fractions (0.081 is
    8.1%); ``to_dict`` reports gaps in percentage points. Only published groups (at least
    ``min_cell`` episodes) appear; suppressed groups are listed in :attr:`suppressed` and are left
    out of every number, including the overall rate.

    Build one with :func:`allocation_rates` or :func:`equicare.fairness.audit`.

    Attributes
    ----------
    policy : str
    action : str
        Audited action set, e.g. ``"modality=home_visit"``.
    group : str
        Grouping, e.g. ``"race_ethnicity"`` or ``"race_ethnicity x sex"``.
    level : {"step", "episode"}
    groups : tuple of str
        Published group labels (``n_groups``).
    suppressed : tuple of str
    counts : ndarray of shape (n_groups,)
        Episodes per group.
    rates : ndarray of shape (n_groups,)
    rate_reps : ndarray of shape (n_boot, n_groups) or None
    overall_rate : float
    overall_reps : ndarray of shape (n_boot,) or None
    pp : ndarray of shape (n_groups,) or None
        Proportional parity (share of the allocation / share of need).
    pp_reps : ndarray of shape (n_boot, n_groups) or None
    permutation_p : float or None
    n_permutations : int
    alpha : float
    ci_method : {"basic", "percentile"}
    episode_num, episode_den : ndarray of shape (n_audited,), optional
        Episode totals of the audited episodes (for :meth:`to_metric_frame`).
    episode_labels : ndarray of shape (n_audited,), optional
        Their group labels.
    min_cell : int
        Suppression threshold the frame was built with.
    small : tuple of str
        The labels of :attr:`suppressed` with fewer than ``min_cell`` episodes; the others are
        suppressed so that these cannot be recovered by difference (complementary suppression).
    pp_suppressed : tuple of str
        Published groups whose proportional parity is not published (NaN in :attr:`pp` and
        :attr:`pp_reps`, ``{"suppressed": true}`` in :meth:`to_dict`): their count of episodes
        with need, or without need, is under ``min_cell``, or would reveal such a count by
        difference (:func:`need_suppressed`).
    rate_suppressed : tuple of str
        Published groups whose rate of this policy is not published (NaN in :attr:`rates` and
        :attr:`rate_reps`, so the gap and ratio are NaN too; ``{"suppressed": true,
        "n_episodes": n}`` in :meth:`to_dict`, ``{"suppressed": true}`` for their difference to
        overall and proportional parity): fewer
        than ``min_cell`` of their episodes get the action at all, or fewer than ``min_cell``
        do not always get it, or the rate would reveal such a count by difference
        (:func:`equicare.privacy.share_suppressed`). Logged actions are counts of members; a
        policy's probabilities are above 0 in (almost) every episode and are rarely hidden.
    overall_suppressed : bool
        The overall rate is not published (NaN): the audited episodes with the action, or
        without it always, number 1 to ``min_cell - 1``.
    pp_undefined : dict of str to str
        Published groups whose proportional parity is undefined (NaN in :attr:`pp` and
        :attr:`pp_reps`; ``{"value": null, "ci": [null, null], "reason": ...}`` in
        :meth:`to_dict`), with the reason (:func:`pp_undefined`): the group has no need, or
        nobody has need or gets the action.
    """

    policy: str
    action: str
    group: str
    level: Level
    groups: tuple[str, ...]
    suppressed: tuple[str, ...]
    counts: NDArray[np.int64]
    rates: NDArray[np.float64]
    rate_reps: NDArray[np.float64] | None
    overall_rate: float
    overall_reps: NDArray[np.float64] | None
    pp: NDArray[np.float64] | None = None
    pp_reps: NDArray[np.float64] | None = None
    permutation_p: float | None = None
    n_permutations: int = 0
    alpha: float = 0.05
    ci_method: CIMethod = "basic"
    episode_num: NDArray[np.float64] | None = None
    episode_den: NDArray[np.float64] | None = None
    episode_labels: NDArray[np.str_] | None = None
    min_cell: int = MIN_CELL
    small: tuple[str, ...] = ()
    pp_suppressed: tuple[str, ...] = ()
    rate_suppressed: tuple[str, ...] = ()
    overall_suppressed: bool = False
    pp_undefined: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ helpers
    def _ci(self, reps: NDArray[np.float64] | None, estimate: Any,
            bounds: tuple[float, float] | None = (0.0, 1.0)) -> NDArray[np.float64]:
        return bootstrap_ci(self._need(reps), estimate, self.alpha, method=self.ci_method,
                            bounds=bounds)

    @staticmethod
    def _need(reps: NDArray[np.float64] | None) -> NDArray[np.float64]:
        if reps is None:
            raise InvalidParameterError(
                "No bootstrap replicates: build the frame with n_boot > 0 to get "
                             "intervals.")
        return reps

    def _ci_frame(self, reps: NDArray[np.float64] | None, estimate: NDArray[np.float64],
                  bounds: tuple[float, float] | None = (0.0, 1.0)) -> pd.DataFrame:
        ci = self._ci(reps, estimate, bounds)
        return pd.DataFrame({"lower": ci[0], "upper": ci[1]},
                            index=pd.Index(self.groups, name=self.group))

    @property
    def n_boot(self) -> int:
        """Number of bootstrap replicates (0 without intervals)."""
        return 0 if self.rate_reps is None else int(self.rate_reps.shape[0])

    # ------------------------------------------------------------------ MetricFrame-like API
    @property
    def overall(self) -> float:
        """Rate over all audited episodes (published groups)."""
        return float(self.overall_rate)

    @property
    def overall_ci(self) -> tuple[float, float]:
        """Interval of :attr:`overall`."""
        ci = self._ci(self.overall_reps, self.overall_rate)
        return float(ci[0]), float(ci[1])

    @property
    def by_group(self) -> pd.Series:
        """Rate per published group (index: group labels)."""
        return pd.Series(self.rates, index=pd.Index(self.groups, name=self.group), name="rate")

    @property
    def by_group_ci(self) -> pd.DataFrame:
        """Interval per group, columns ``lower`` and ``upper``."""
        return self._ci_frame(self.rate_reps, self.rates)

    @property
    def n_episodes(self) -> pd.Series:
        """Episodes per published group."""
        return pd.Series(self.counts, index=pd.Index(self.groups, name=self.group),
                         name="n_episodes")

    def group_min(self) -> float:
        """Smallest group rate."""
        return float(np.min(self.rates))

    def group_max(self) -> float:
        """Largest group rate."""
        return float(np.max(self.rates))

    def difference(self, method: Method = "between_groups") -> float:
        """Demographic-parity gap (fraction; x100 for percentage points).

        ``"between_groups"``: max minus min of the group rates. ``"to_overall"``: the largest
        absolute difference between a group and the overall rate.
        """
        m = _check_method(method, "AllocationFrame.difference")
        return float(_gap(self.rates, np.asarray(self.overall_rate), m))

    def difference_ci(self, method: Method = "between_groups") -> tuple[float, float]:
        """Interval of :meth:`difference` (same replicates as the rates)."""
        m = _check_method(method, "AllocationFrame.difference_ci")
        ci = self._ci(_gap(self._need(self.rate_reps), self._need(self.overall_reps), m),
                      self.difference(m))
        return float(ci[0]), float(ci[1])

    def ratio(self, method: Method = "between_groups") -> float:
        """Parity ratio: min / max of the group rates (four-fifths rule: flag below 0.8).

        ``"to_overall"``: the smallest of ``min(r_g / r, r / r_g)`` over groups. NaN when undefined
        (all rates 0).
        """
        m = _check_method(method, "AllocationFrame.ratio")
        return float(_ratio(self.rates, np.asarray(self.overall_rate), m))

    def ratio_ci(self, method: Method = "between_groups") -> tuple[float, float]:
        """Interval of :meth:`ratio`."""
        m = _check_method(method, "AllocationFrame.ratio_ci")
        ci = self._ci(_ratio(self._need(self.rate_reps), self._need(self.overall_reps), m),
                      self.ratio(m))
        return float(ci[0]), float(ci[1])

    def difference_to_overall(self) -> pd.Series:
        """Each group's rate minus the overall rate (fraction)."""
        return pd.Series(self.rates - self.overall_rate,
                         index=pd.Index(self.groups, name=self.group), name="difference")

    def difference_to_overall_ci(self) -> pd.DataFrame:
        """Interval of :meth:`difference_to_overall` per group."""
        reps = self._need(self.rate_reps) - self._need(self.overall_reps)[:, None]
        return self._ci_frame(reps, self.rates - self.overall_rate, (-1.0, 1.0))

    @property
    def has_need(self) -> bool:
        """Whether proportional parity is available (need was known)."""
        return self.pp is not None

    def proportional_parity(self) -> pd.Series:
        """Share of the allocation / share of need per group (1.0 = proportional to need).

        NaN for the groups of :attr:`pp_suppressed` (too few episodes with or without need)
        and of :attr:`pp_undefined` (no need in the group; no need or no allocation at all).
        """
        if self.pp is None:
            raise InvalidParameterError(
                "Proportional parity needs clinical need: give the manifest a need "
                             "column or pass need= (a state rule, an array or a callable).")
        return pd.Series(self.pp, index=pd.Index(self.groups, name=self.group),
                         name="proportional_parity")

    def proportional_parity_ci(self) -> pd.DataFrame:
        """Interval of :meth:`proportional_parity` per group."""
        self.proportional_parity()
        assert self.pp is not None
        return self._ci_frame(self.pp_reps, self.pp, (0.0, np.inf))

    # ------------------------------------------------------------------ export
    def to_frame(self) -> pd.DataFrame:
        """One row per published group: n_episodes, rate (+CI), difference to overall (+CI), pp."""
        df = pd.DataFrame({"n_episodes": self.counts, "rate": self.rates,
                           "diff_to_overall": self.rates - self.overall_rate},
                          index=pd.Index(self.groups, name=self.group))
        if self.rate_reps is not None:
            ci = self.by_group_ci
            df["rate_lower"], df["rate_upper"] = ci["lower"].to_numpy(), ci["upper"].to_numpy()
            d = self.difference_to_overall_ci()
            df["diff_lower"], df["diff_upper"] = d["lower"].to_numpy(), d["upper"].to_numpy()
        if self.pp is not None:
            df["proportional_parity"] = self.pp
            if self.pp_reps is not None:
                p = self.proportional_parity_ci()
                df["pp_lower"], df["pp_upper"] = p["lower"].to_numpy(), p["upper"].to_numpy()
        return df

    def to_dict(self) -> dict[str, Any]:
        """Allocation part of a Contract-7 policy entry (gaps in percentage points)."""
        has_ci = self.rate_reps is not None

        def entry(value: float, ci: Any = None, **extra: Any) -> dict[str, Any]:
            d: dict[str, Any] = {"value": _num(value)}
            if has_ci:
                d["ci"] = _ci_pair(np.asarray(ci))
            d.update(extra)
            return d

        rate_ci = self._ci(self.rate_reps, self.rates) if has_ci else None
        diff = self.rates - self.overall_rate
        diff_ci = (self.difference_to_overall_ci().to_numpy().T if has_ci else None)
        rate: dict[str, Any] = {}
        diff_pp: dict[str, Any] = {}
        for i, g in enumerate(self.groups):
            rate[g] = entry(self.rates[i], None if rate_ci is None else rate_ci[:, i],
                            n_episodes=int(self.counts[i]))
            diff_pp[g] = entry(100 * diff[i], None if diff_ci is None else 100 * diff_ci[:, i])
        for g, n in zip(self.groups, self.counts, strict=True):
            if g in self.rate_suppressed:  # a published group: its episode count stays
                rate[g] = {**SUPPRESSED, "n_episodes": int(n)}
                diff_pp[g] = dict(SUPPRESSED)
        for g in self.suppressed:
            rate[g] = dict(SUPPRESSED)
            diff_pp[g] = dict(SUPPRESSED)
        hidden = bool(self.rate_suppressed) or self.overall_suppressed
        out: dict[str, Any] = {
            "rate": rate,
            "overall_rate": (dict(SUPPRESSED) if self.overall_suppressed else
                             entry(self.overall_rate, self.overall_ci if has_ci else None)),
            "parity_gap_pp": dict(SUPPRESSED) if hidden else entry(
                100 * self.difference(),
                100 * np.asarray(self.difference_ci()) if has_ci else None),
            "parity_ratio": dict(SUPPRESSED) if hidden else entry(
                self.ratio(), self.ratio_ci() if has_ci else None),
            "difference_to_overall_pp": diff_pp,
        }
        if self.pp is not None:
            pp_ci = (self.proportional_parity_ci().to_numpy().T
                     if (has_ci and self.pp_reps is not None) else None)
            pp: dict[str, Any] = {
                g: (dict(SUPPRESSED) if g in self.pp_suppressed or g in self.rate_suppressed
                    else entry(self.pp[i], None if pp_ci is None else pp_ci[:, i],
                               **({"reason": self.pp_undefined[g]} if g in self.pp_undefined
                                  else {})))
                for i, g in enumerate(self.groups)}
            for g in self.suppressed:
                pp[g] = dict(SUPPRESSED)
            out["proportional_parity"] = pp
        out["permutation_p"] = _num(self.permutation_p) if self.permutation_p is not None else None
        out["n_permutations"] = int(self.n_permutations)
        return out

    def to_metric_frame(self, **kwargs: Any) -> Any:
        """Return the per-group allocation as a ``fairlearn.metrics.MetricFrame`` (needs fairlearn).

        Keyword arguments go to :func:`equicare.fairness.to_metric_frame`.
        """
        from equicare.fairness._fairlearn import to_metric_frame

        return to_metric_frame(self, **kwargs)


# ---------------------------------------------------------------------- builders
def build_frames(names: Sequence[str], num: NDArray[np.float64], den: NDArray[np.float64],
                 need: NDArray[np.float64] | None, gi: GroupIndex,
                 weights: NDArray[np.float64] | None, *, action: str, level: Level,
                 alpha: float = 0.05, n_permutations: int = 0,
                 random_state: RandomState = None, ci_method: CIMethod = "basic",
                 sums: tuple[NDArray[np.float64], NDArray[np.float64] | None] | None = None,
                 clusters: NDArray[Any] | None = None
                 ) -> dict[str, AllocationFrame]:
    """Allocation frames of several policies from episode totals (array level).

    Parameters
    ----------
    names : sequence of str
        Policy names, one per column of ``num``.
    num : ndarray of shape (n_episodes, K)
        Episode numerators of the allocation (see :func:`episode_totals`).
    den : ndarray of shape (n_episodes,)
        Episode denominators (rows, or 1 for episode-level rates).
    need : ndarray of shape (n_episodes,), optional
        Episode need totals on the same level as ``num``. A group's proportional parity is
        suppressed when its count of episodes with need (total above 0), or without, is under
        ``gi.min_cell`` or would reveal such a count by difference (:func:`need_suppressed`;
        a :class:`~equicare.exceptions.SmallCellWarning` says which groups).
    gi : GroupIndex
    weights : ndarray of shape (n_boot, n_episodes), optional
        Bootstrap replicate weights; ``None`` skips intervals.
    action, level, alpha, ci_method
        Stored in the frames.
    n_permutations : int
        Permutations of the group labels for the test (0 skips it).
    random_state : int, Generator or None
        For the permutations.
    sums : (point, replicates), optional
        Group sums of ``[num, den]`` or ``[num, den, need, need > 0]`` already computed
        (``group_sums``' output, e.g. added up over the chunks of a streamed panel); ``weights``
        and ``need`` are then ignored: the need columns (the need totals and the count of
        episodes with need) are there when the sums have them.
    clusters : ndarray of shape (n_episodes,), optional
        The person of each episode (the manifest's ``member``): the permutation test shuffles
        labels over people (:func:`permutation_test`). Pass ``weights`` drawn by person too
        (:func:`bootstrap_weights` with ``members``).

    Returns
    -------
    dict of str to AllocationFrame
    """
    num = np.asarray(num, dtype=np.float64).reshape(den.shape[0], -1)
    k = num.shape[1]
    if len(names) != k:
        raise InvalidParameterError(f"{len(names)} names for {k} policies.")
    if sums is None:
        cols = [num, den[:, None]]
        if need is not None:
            cols += [need[:, None], (need > 0)[:, None].astype(np.float64)]
        point, reps = group_sums(gi.one_hot(), np.concatenate(cols, axis=1), weights)
    else:
        point, reps = sums
    has_need = point.shape[-1] == k + 3
    pp_hidden: tuple[str, ...] = ()
    if has_need:
        pp_hidden = need_suppressed(gi.labels, gi.counts, point[:, k + 2], gi.min_cell)
        if pp_hidden:
            warnings.warn(need_cells_message(pp_hidden, gi.min_cell), SmallCellWarning,
                          stacklevel=3)
    hide = np.isin(np.asarray(gi.labels, dtype=str), np.asarray(pp_hidden, dtype=str))
    rate_hidden = _rates_hidden(names, num, den, gi)

    def stats(s: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        # s: (..., G, K + 1 [+ 1]) group sums
        a, d = s[..., :k], s[..., k:k + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = {"rates": a / d,
                   "overall": a.sum(axis=-2) / d.sum(axis=-2)}
            if has_need:
                n = s[..., k + 1:k + 2]
                pp = (a / a.sum(axis=-2, keepdims=True)) / (n / n.sum(axis=-2, keepdims=True))
                out["pp"] = np.where(hide[:, None], np.nan, pp)  # a small need cell: not shown
        return out

    sp = stats(point)
    sr = stats(reps) if reps is not None else None
    undefined = {name: pp_undefined(gi.labels, name, point[:, j], point[:, k + 1], pp_hidden)
                 if has_need else {} for j, name in enumerate(names)}
    for j, name in enumerate(names):  # an undefined share (x / 0): NaN, with its reason
        undef = np.isin(np.asarray(gi.labels, dtype=str),
                        np.asarray(list(undefined[name]), dtype=str))
        for st in (sp, sr):
            if st is not None and "pp" in st:
                st["pp"][..., undef, j] = np.nan
    for j, name in enumerate(names):  # rates of too few members: NaN, so are gaps and ratios
        at, total = rate_hidden[name]
        for st in (sp, sr):
            if st is None:
                continue
            st["rates"][..., at, j] = np.nan
            if "pp" in st:
                st["pp"][..., at, j] = np.nan
            if total:
                st["overall"][..., j] = np.nan
    p_values: NDArray[np.float64] | None = None
    if n_permutations > 0 and gi.n_groups > 1:
        p_values, _ = permutation_test(num, den, gi.codes, n_permutations, random_state,
                                       clusters=clusters)
    kept = gi.kept
    ep_labels = np.asarray(gi.labels, dtype=str)[gi.codes[kept]]
    frames = {}
    for j, name in enumerate(names):
        frames[name] = AllocationFrame(
            policy=name, action=action, group=gi.name, level=level, groups=gi.labels,
            suppressed=gi.suppressed, counts=gi.counts, rates=sp["rates"][:, j],
            rate_reps=None if sr is None else sr["rates"][:, :, j],
            overall_rate=float(sp["overall"][j]),
            overall_reps=None if sr is None else sr["overall"][:, j],
            pp=sp["pp"][:, j] if has_need else None,
            pp_reps=(sr["pp"][:, :, j] if (sr is not None and has_need) else None),
            permutation_p=(None if p_values is None else float(p_values[j])),
            n_permutations=int(n_permutations) if p_values is not None else 0, alpha=alpha,
            ci_method=ci_method,
            episode_num=num[kept, j], episode_den=den[kept], episode_labels=ep_labels,
            min_cell=gi.min_cell, small=gi.small, pp_suppressed=pp_hidden,
            rate_suppressed=tuple(str(gi.labels[i]) for i in rate_hidden[name][0]),
            overall_suppressed=rate_hidden[name][1], pp_undefined=undefined[name])
    return frames


def _rates_hidden(names: Sequence[str], num: NDArray[np.float64], den: NDArray[np.float64],
                  gi: GroupIndex) -> dict[str, tuple[NDArray[np.int64], bool]]:
    """Each policy's groups (positions) whose rate is not published, and whether its overall's.

    :func:`equicare.privacy.share_suppressed` on the published groups' counts of episodes with
    a numerator above 0 and below the denominator.
    """
    h = gi.one_hot()
    d = np.asarray(den, dtype=np.float64).reshape(-1, 1)
    some, not_all = h.T @ (num > 0), h.T @ (num < d)     # (G, K)
    out = {}
    for j, name in enumerate(names):
        hidden, total = share_suppressed(gi.labels, some[:, j], not_all[:, j], gi.min_cell)
        out[name] = (np.flatnonzero(np.isin(np.asarray(gi.labels, dtype=str),
                                            np.asarray(hidden, dtype=str))), total)
    return out


def _check_common(level: str, alpha: float, n_boot: int, n_permutations: int, min_cell: int,
                  owner: str) -> None:
    check_param(level, "level", owner, choices=("step", "episode"))
    check_param(alpha, "alpha", owner, kind=(float, int), low=0.0, high=1.0, low_inclusive=False,
                high_inclusive=False, expected="a float in (0, 1)")
    check_param(n_boot, "n_boot", owner, kind=(int, np.integer), low=0,
                expected="a non-negative int")
    check_param(n_permutations, "n_permutations", owner, kind=(int, np.integer), low=0,
                expected="a non-negative int")
    check_param(min_cell, "min_cell", owner, kind=(int, np.integer), low=1,
                expected="a positive int")
    warn_low_min_cell(int(min_cell), owner, stacklevel=4)


def allocation_rates(
    dataset: TrajectoryDataset,
    policy: Policy | NDArray[np.float64] | None = None,
    *,
    action: str | NDArray[np.bool_] | None = None,
    group: str | None = None,
    intersect: Sequence[str] = (),
    need: str | NDArray[Any] | Callable[[TrajectoryDataset], NDArray[Any]] | None = None,
    level: Level = "step",
    n_boot: int = 1000,
    alpha: float = 0.05,
    ci_method: CIMethod = "basic",
    n_permutations: int = 0,
    min_cell: int = MIN_CELL,
    weights: NDArray[np.float64] | None = None,
    name: str | None = None,
    random_state: RandomState = None,
) -> AllocationFrame:
    r"""Allocation of an action set by group for one policy (or the logged behaviour).

    With :math:`x_r` the probability that row :math:`r`'s action is in the set (the logged
    indicator :math:`1[a_r \in A]` for the behaviour, :math:`\sum_{a \in A} \pi(a \mid s_r)` for a
    policy), the step-level rate of group :math:`g` is the share of its member-weeks allocated,

    .. math::

        r_g = \frac{\sum_{e \in g} \sum_{t} x_{e,t}}{\sum_{e \in g} T_e},

    the episode-level rate is :math:`\frac{1}{|g|} \sum_{e \in g} \frac{1}{T_e} \sum_t x_{e,t}`, and
    proportional parity is
    :math:`PP_g = \frac{A_g / \sum_h A_h}{N_g / \sum_h N_h}` with :math:`A_g` the allocation and
    :math:`N_g` the need of group :math:`g` summed on the same level.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy : Policy, ndarray of shape (n_steps, n_actions), or None
        ``None`` audits the logged behaviour.
    action : str, ndarray of shape (n_actions,) (bool), or None
        ``"modality=home_visit"``, ``"urgency=urgent|semi_urgent"``, a mask, or ``None`` for every
        level of the first component except its first ("any outreach").
    group : str, optional
        Group attribute (default: the dataset's first).
    intersect : sequence of str
        Further attributes to cross with ``group`` (intersectional groups).
    need : None, str, ndarray or callable
        Clinical need (see :func:`equicare.fairness.need_rows`); ``None`` uses the manifest's need
        column when there is one.
    level : {"step", "episode"}
    n_boot : int
        Bootstrap replicates (0: no intervals). Ignored when ``weights`` is given.
    alpha : float in (0, 1)
    ci_method : {"basic", "percentile"}
        Bootstrap interval (see :func:`equicare.fairness.bootstrap_ci`).
    n_permutations : int
        Permutations for the test of no allocation difference (0: skipped).
    min_cell : int
        Groups with fewer episodes are suppressed.
    weights : ndarray of shape (n_boot, n_episodes), optional
        Replicate weights to reuse (e.g. the OPE engine's).
    name : str, optional
        Policy name stored in the frame (default ``"behavior"`` or ``"policy"``).
    random_state : int, Generator or None

    Returns
    -------
    AllocationFrame
    """
    check_dataset(dataset, "allocation_rates")
    _check_common(level, alpha, n_boot, n_permutations, min_cell, "allocation_rates")
    check_param(ci_method, "ci_method", "allocation_rates", choices=("basic", "percentile"))
    w_state, rng = split_random_state(random_state)
    spec, mask = action_set(dataset.action_space, action)
    gi = require_comparison(dataset_group_index(dataset, group, intersect, min_cell=min_cell))
    x = row_allocation(dataset, policy, mask[:, None].astype(np.float64))[:, 0]
    num, den = episode_totals(dataset, x, level)
    nr = need_rows(dataset, need)
    need_ep = None if nr is None else episode_totals(dataset, nr, level)[0]
    if weights is None and n_boot > 0:
        weights = bootstrap_weights(dataset.n_episodes, n_boot, w_state, members=dataset.members)
    elif weights is not None and weights.shape[1] != dataset.n_episodes:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="weights", owner="allocation_rates",
            expected=f"an array of shape (n_boot, {dataset.n_episodes})", got=weights.shape))
    label = name or ("behavior" if policy is None else "policy")
    return build_frames([label], num[:, None], den, need_ep, gi, weights, action=spec,
                        level=level, alpha=alpha, n_permutations=n_permutations,
                        random_state=rng, ci_method=ci_method,
                        clusters=dataset.members)[label]


def set_levels(mask: NDArray[np.bool_], matrix: NDArray[np.float64],
               names: Sequence[str]) -> NDArray[np.int64]:
    """Positions of the component levels whose union is an action set.

    Parameters
    ----------
    mask : ndarray of shape (n_actions,), bool
        The action set over the flat actions (``"component=a|b"`` or a custom mask).
    matrix : ndarray of shape (n_actions, total_levels)
        Level membership of each flat action (:func:`equicare.fairness._rows.level_matrix`).
    names : sequence of str
        ``"component=level"`` names of the ``total_levels`` columns.

    Returns
    -------
    ndarray of int
        The columns of one component whose levels together hold exactly the actions of
        ``mask``: the set's rate is then the sum of those levels' rates. Empty when no
        component's levels make up the set (e.g. a set crossing two components).
    """
    m = np.asarray(mask, dtype=bool)
    inside = ~(matrix[~m] > 0).any(axis=0)           # levels with no action outside the set
    comp = np.asarray([str(a).split("=", 1)[0] for a in names])
    for c in dict.fromkeys(comp):
        cols = np.flatnonzero((comp == c) & inside)
        if np.array_equal(matrix[:, cols].sum(axis=1) > 0, m):
            return cols.astype(np.int64)
    return np.zeros(0, dtype=np.int64)


def level_table(names: Sequence[str], num: NDArray[np.float64], den: NDArray[np.float64],
                gi: GroupIndex, actions: Sequence[str],
                frames: Mapping[str, AllocationFrame] | None = None,
                audited: NDArray[np.int64] | None = None) -> pd.DataFrame:
    """Point rates of many action sets by group (array level).

    Parameters
    ----------
    names : sequence of str
        Policy names (``P``).
    num : ndarray of shape (P, n_episodes, L)
        Episode numerators of ``L`` action sets per policy.
    den : ndarray of shape (n_episodes,)
    gi : GroupIndex
    actions : sequence of str
        Names of the ``L`` action sets.
    frames : mapping of str to AllocationFrame, optional
        The audit's frames of the same policies: a group's published rate of the audited set
        (when it is a union of levels) is the sum of its levels' rates, so its levels are
        completed as a line too.
    audited : ndarray of int, optional
        The columns of ``actions`` whose union is the audited set (:func:`set_levels`); needed
        with ``frames``. Empty when the set is no union of one component's levels.

    Returns
    -------
    pandas.DataFrame
        Index ``(policy, action)``; one column per published group plus ``"overall"``. A rate
        of too few members (as :attr:`AllocationFrame.rate_suppressed` and
        :attr:`AllocationFrame.overall_suppressed`) is NaN, and so are the rates that would
        give it back: a group's levels of one component (``actions`` named
        ``"component=level"``) sum to one
        (:func:`equicare.privacy.share_table_suppressed`).
    """
    h = gi.one_hot()
    d = h.T @ den                                    # (G,)
    comp = [str(a).split("=", 1)[0] for a in actions]
    blocks = [np.flatnonzero(np.asarray(comp) == c) for c in dict.fromkeys(comp)]
    tables = []
    for j, pname in enumerate(names):
        a = h.T @ num[j]                             # (G, L)
        with np.errstate(divide="ignore", invalid="ignore"):
            rates, overall = a / d[:, None], a.sum(axis=0) / d.sum()
        hidden = np.zeros(rates.shape, dtype=bool)
        total_hidden = np.zeros(len(actions), dtype=bool)
        for lv, (cols, total) in enumerate(_rates_hidden(actions, num[j], den, gi).values()):
            hidden[cols, lv], total_hidden[lv] = True, total
        # a group's levels of one component sum to one: complete those lines too
        sums = []
        if frames is not None and audited is not None and (f := frames.get(pname)) is not None:
            known = [g not in f.rate_suppressed for g in gi.labels] + [not f.overall_suppressed]
            sums.append((audited, np.array(known, dtype=bool)))
        hidden, total_hidden = share_table_suppressed(num[j], den, gi.codes, gi.n_groups,
                                                      blocks, hidden, total_hidden, gi.min_cell,
                                                      sums)
        rates[hidden] = np.nan                       # too few members: not published
        overall[total_hidden] = np.nan
        tab = pd.DataFrame(rates.T, columns=list(gi.labels))
        tab["overall"] = overall
        tab.index = pd.MultiIndex.from_product([[pname], list(actions)],
                                               names=["policy", "action"])
        tables.append(tab)
    out = pd.concat(tables)
    out.columns.name = gi.name
    return out


def level_rates(dataset: TrajectoryDataset, policies: Mapping[str, Policy | NDArray[np.float64]
                | None] | None = None, *, group: str | None = None, intersect: Sequence[str] = (),
                level: Level = "step", min_cell: int = MIN_CELL) -> pd.DataFrame:
    """Rate of every action-component level by group (point estimates), for each policy.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policies : mapping of name to Policy / probability array / None, optional
        ``None`` entries (and the default ``{"behavior": None}``) mean the logged behaviour.
    group, intersect, level, min_cell
        As in :func:`allocation_rates`.

    Returns
    -------
    pandas.DataFrame
        Index ``(policy, action)`` with ``action`` like ``"modality=home_visit"``; one column per
        published group plus ``"overall"``.
    """
    check_dataset(dataset, "level_rates")
    _check_common(level, 0.05, 0, 0, min_cell, "level_rates")
    pols = dict(policies) if policies is not None else {"behavior": None}
    names, mat = level_matrix(dataset.action_space)
    gi = dataset_group_index(dataset, group, intersect, min_cell=min_cell)
    nums = []
    den = np.zeros(0)
    for pname, pol in pols.items():
        x = row_allocation(dataset, pol, mat, source=pname)
        num, den = episode_totals(dataset, x, level)
        nums.append(num)
    return level_table(list(pols), np.stack(nums), den, gi, names)
