"""Outcome metrics by group: per-group policy values, best-worst gap, Gini, worst-group value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.fairness._bootstrap import CIMethod, bootstrap_ci
from equicare.fairness._gini import gini
from equicare.fairness._groups import SUPPRESSED
from equicare.ope._group_check import GroupQCheck

__all__ = ["OutcomeFrame"]


def _num(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _bias_aware_ci(value: float, ci: NDArray[np.float64], reps: NDArray[np.float64],
                   chk: GroupQCheck, alpha: float) -> NDArray[np.float64]:
    """A group's FQE interval joined with the bias-aware one of its DR - FQE."""
    from equicare.ope._bootstrap import Estimate, bias_aware

    assert chk.dr_minus_fqe is not None and chk.se is not None
    se = float(np.std(reps, ddof=1)) if reps.size > 1 else 0.0
    est = Estimate(value=value, ci=(float(ci[0]), float(ci[1])), se=se, n_episodes=0)
    return np.asarray(bias_aware(est, chk.dr_minus_fqe, chk.se, alpha).ci, dtype=np.float64)


#: Why a gap, worst group or Gini has no value: fewer than two groups have a value.
MSG_TOO_FEW_VALUES = "fewer than 2 published groups have a value"
#: Why the worst-group value is undefined: no group has a value.
MSG_NO_VALUES = "no published group has a value"


@dataclass(frozen=True, eq=False)
class OutcomeFrame:
    """Policy value by group with bootstrap intervals (MetricFrame-like).

    Values are expected discounted returns per episode of each group (Contract 1), estimated by
    the OPE engine for a target policy or by the on-policy mean for the logged behaviour.
    Higher is better. Every interval is a percentile interval over the same episode-level
    bootstrap replicates as the allocation metrics.

    Attributes
    ----------
    policy : str
    group : str
    estimator : str
        ``"on_policy"`` for the behaviour, else the OPE estimator key (``"dr"``, ``"wis"``, ...).
    groups : tuple of str
        Published groups (``n_groups``).
    suppressed : tuple of str
    counts : ndarray of shape (n_groups,)
    values : ndarray of shape (n_groups,)
    value_reps : ndarray of shape (n_boot, n_groups) or None
    overall_value : float
        Value over all audited episodes.
    overall_reps : ndarray of shape (n_boot,) or None
    count_reps : ndarray of shape (n_boot, n_groups) or None
        Episodes per group in each replicate (population weights of the weighted Gini).
    alpha : float
    ci_method : {"basic", "percentile"}
    undefined : dict of str to str
        Groups whose value is undefined (NaN in ``values``; a self-normalised estimate whose
        importance weights are all 0 in the group), with the reason. They are left out of
        :meth:`difference`, :meth:`worst_group` and :meth:`gini`.
    overall_reason : str or None
        Why :attr:`overall` is undefined (NaN), or None.
    q_checks : dict of str to GroupQCheck
        With ``fqe``, ``dr`` and ``wdr``: each published group's check of the Q-model
        (``evaluate``'s, :mod:`equicare.fairness._group_q`): whether its value uses the
        Q-model refitted on the group's own episodes, and whether FQE is biased there (its
        interval then joined with the bias-aware one). Audit JSON
        ``value_by_group[g]["q_check"]``.
    """

    policy: str
    group: str
    estimator: str
    groups: tuple[str, ...]
    suppressed: tuple[str, ...]
    counts: NDArray[np.int64]
    values: NDArray[np.float64]
    value_reps: NDArray[np.float64] | None
    overall_value: float
    overall_reps: NDArray[np.float64] | None = None
    count_reps: NDArray[np.float64] | None = None
    alpha: float = 0.05
    ci_method: CIMethod = "basic"
    undefined: dict[str, str] = field(default_factory=dict)
    overall_reason: str | None = None
    q_checks: dict[str, GroupQCheck] = field(default_factory=dict)

    @property
    def defined(self) -> NDArray[np.bool_]:
        """Mask of shape (n_groups,): groups with a value (not in :attr:`undefined`)."""
        return np.array([g not in self.undefined for g in self.groups], dtype=bool)

    def _values(self) -> NDArray[np.float64]:
        return np.asarray(self.values, dtype=np.float64)[self.defined]

    def _value_reps(self) -> NDArray[np.float64]:
        return self._need(self.value_reps)[:, self.defined]

    def _ci(self, reps: NDArray[np.float64] | None, estimate: float,
            bounds: tuple[float, float] | None = None) -> tuple[float, float]:
        ci = bootstrap_ci(self._need(reps), estimate, self.alpha, method=self.ci_method,
                          bounds=bounds)
        return float(ci[0]), float(ci[1])

    @staticmethod
    def _need(reps: NDArray[np.float64] | None) -> NDArray[np.float64]:
        if reps is None:
            raise InvalidParameterError(
                "No bootstrap replicates: build the frame with n_boot > 0 to get "
                             "intervals.")
        return reps

    @property
    def overall(self) -> float:
        """Value over all audited episodes."""
        return float(self.overall_value)

    @property
    def overall_ci(self) -> tuple[float, float]:
        """Interval of :attr:`overall` (NaN when it is undefined)."""
        if self.overall_reason is not None:
            return (float("nan"), float("nan"))
        return self._ci(self.overall_reps, self.overall_value)

    @property
    def by_group(self) -> pd.Series:
        """Value per published group."""
        return pd.Series(self.values, index=pd.Index(self.groups, name=self.group), name="value")

    @property
    def by_group_ci(self) -> pd.DataFrame:
        """Interval per group (columns ``lower``, ``upper``; NaN for an undefined group).

        A group's FQE whose check says biased (:attr:`q_checks`) has its interval joined with
        the bias-aware interval of DR - FQE (:func:`~equicare.ope._bootstrap.bias_aware`).
        """
        reps = self._need(self.value_reps)
        ci = bootstrap_ci(reps, self.values, self.alpha, method=self.ci_method)
        ci[:, ~self.defined] = np.nan
        if self.estimator == "fqe":  # a biased FQE: joined with the bias-aware interval
            for i, g in enumerate(self.groups):
                chk = self.q_checks.get(g)
                if chk is not None and chk.biased and self.defined[i]:
                    ci[:, i] = _bias_aware_ci(float(self.values[i]), ci[:, i],
                                              reps[:, i], chk, self.alpha)
        return pd.DataFrame({"lower": ci[0], "upper": ci[1]},
                            index=pd.Index(self.groups, name=self.group))

    def difference(self) -> float:
        """Gap between the best and the worst group value (groups with a value; NaN if < 2)."""
        v = self._values()
        return float(np.max(v) - np.min(v)) if v.size >= 2 else float("nan")

    def difference_ci(self) -> tuple[float, float]:
        """Interval of :meth:`difference`."""
        r = self._value_reps()
        if r.shape[1] < 2:
            return (float("nan"), float("nan"))
        return self._ci(np.max(r, axis=1) - np.min(r, axis=1), self.difference(),
                        (0.0, np.inf))

    def worst_group(self) -> float:
        """Smallest group value (the max-min criterion; groups with a value, NaN if none)."""
        v = self._values()
        return float(np.min(v)) if v.size else float("nan")

    def worst_group_ci(self) -> tuple[float, float]:
        """Interval of :meth:`worst_group` (min over groups within each replicate)."""
        r = self._value_reps()
        if r.shape[1] == 0:
            return (float("nan"), float("nan"))
        return self._ci(np.min(r, axis=1), self.worst_group())

    def worst_group_label(self) -> str | None:
        """Label of the group with the smallest value (None when no group has a value)."""
        kept = [g for g in self.groups if g not in self.undefined]
        v = self._values()
        return kept[int(np.argmin(v))] if v.size else None

    def _weights(self, counts: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(counts, dtype=np.float64)[..., self.defined]

    def gini(self, weighted: bool = False) -> float:
        """Gini index of the group values (see :func:`equicare.fairness.gini`).

        ``weighted=True`` weights each group by its number of episodes (population Gini).
        NaN when group values have mixed signs or fewer than 2 groups have a value.
        """
        v = self._values()
        if v.size < 2:
            return float("nan")
        w = self._weights(self.counts.astype(np.float64)) if weighted else None
        return float(gini(v, w))

    def gini_ci(self, weighted: bool = False) -> tuple[float, float]:
        """Interval of :meth:`gini` (replicate group sizes as weights when ``weighted``).

        ``(nan, nan)`` when :meth:`gini` is NaN (group values of mixed sign have no Gini): the
        replicates whose values happen to share a sign say nothing about a Gini that does not
        exist (a percentile interval of them used to be reported around a null value).
        """
        reps = self._value_reps()
        if not np.isfinite(self.gini(weighted)):
            return (float("nan"), float("nan"))
        w = None
        if weighted:
            w = self._weights(self.count_reps if self.count_reps is not None
                              else self.counts.astype(float))
        return self._ci(np.asarray(gini(reps, w)), self.gini(weighted), (0.0, 1.0))

    def to_frame(self) -> pd.DataFrame:
        """One row per published group: n_episodes, value (+CI)."""
        df = pd.DataFrame({"n_episodes": self.counts, "value": self.values},
                          index=pd.Index(self.groups, name=self.group))
        if self.value_reps is not None:
            ci = self.by_group_ci
            df["lower"], df["upper"] = ci["lower"].to_numpy(), ci["upper"].to_numpy()
        return df

    def to_dict(self) -> dict[str, Any]:
        """Outcome part of a Contract-7 policy entry."""
        has_ci = self.value_reps is not None

        excluded = [g for g in self.groups if g in self.undefined]

        def entry(v: float, ci: tuple[float, float] | None, reason: str | None = None
                  ) -> dict[str, Any]:
            d: dict[str, Any] = {"value": _num(v)}
            if ci is not None:  # no value (a Gini of mixed-sign values): no interval either
                d["ci"] = None if d["value"] is None else [_num(ci[0]), _num(ci[1])]
            if reason is not None and d["value"] is None:
                d["reason"] = reason
            return d

        def across(v: float, ci: tuple[float, float] | None, min_groups: int = 2
                   ) -> dict[str, Any]:
            """A metric across groups: undefined groups left out (and named)."""
            too_few = len(self.groups) - len(excluded) < min_groups
            msg = MSG_TOO_FEW_VALUES if min_groups == 2 else MSG_NO_VALUES
            d = entry(v, ci, msg if too_few and excluded else None)
            if excluded:
                d["excluded_groups"] = excluded
            return d

        vbg: dict[str, Any] = {}
        ci_g = self.by_group_ci if has_ci else None
        for i, g in enumerate(self.groups):
            vbg[g] = entry(self.values[i], None if ci_g is None else
                           (float(ci_g["lower"].iloc[i]), float(ci_g["upper"].iloc[i])),
                           self.undefined.get(g))
            vbg[g]["n_episodes"] = int(self.counts[i])
            if g in self.q_checks:
                vbg[g]["q_check"] = self.q_checks[g].to_dict()
        for g in self.suppressed:
            vbg[g] = dict(SUPPRESSED)
        return {
            "value_estimator": self.estimator,
            "value": entry(self.overall, self.overall_ci if has_ci and self.overall_reps is not None
                           else None, self.overall_reason),
            "value_by_group": vbg,
            "value_gap": across(self.difference(), self.difference_ci() if has_ci else None),
            "worst_group_value": {**across(self.worst_group(),
                                           self.worst_group_ci() if has_ci else None, 1),
                                  "group": self.worst_group_label()},
            "gini": across(self.gini(), self.gini_ci() if has_ci else None),
            "gini_weighted": across(self.gini(True), self.gini_ci(True) if has_ci else None),
        }
