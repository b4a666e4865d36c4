"""Weight and support diagnostics of an audited policy's group values (evaluate's, by group).

The group values of a policy are off-policy estimates: importance weights (``is``, ``wis``,
``pdis``, ``wpdis``, and the correction terms of ``dr``, ``wdr``) or a Q-model (``fqe``,
``dr``, ``wdr``). Their intervals are only as good as the weights' effective sample size and the
policy's support in the data. :func:`weight_diagnostics` reuses the OPE engine's checks
(:func:`equicare.ope.effective_sample_size` and :mod:`equicare.ope._support`) on the audited
episodes and on each published group, and warns as ``evaluate`` does. A stationary tabular
Q-model on a panel with censored stays also carries ``evaluate``'s censoring check
(:mod:`equicare.ope._censoring`): its warning when the user named that table, its note when
``q_model="auto"`` used the window table instead.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from equicare.exceptions import DataWarning, SupportWarning
from equicare.fairness._groups import GroupIndex
from equicare.ope._core import IS_TYPE, WEIGHTED, OPEInputs
from equicare.ope._ess import (
    ESS_KIND,
    EffectiveSampleSize,
    effective_sample_size,
    group_heavy_tail_message,
    heavy_tail_message,
    missing_weight_message,
    pareto_k_na,
    pareto_k_off,
    weight_mean_off,
)
from equicare.ope._support import StreamSupportReport, SupportReport

if TYPE_CHECKING:
    from equicare.ope._censoring import CensoringCheck

__all__ = ["WeightDiagnostics", "weight_diagnostics", "diagnose", "LOW_ESS_PCT", "LOW_ESS_MESSAGE",
           "IS_ADVICE", "DR_ADVICE", "WEIGHTED", "FAR_MESSAGE", "far_values_message"]

#: ESS (% of the episodes) below which the audit warns (as the mediation analysis does).
LOW_ESS_PCT = 10.0
#: The low-ESS warning (tests match it).
LOW_ESS_MESSAGE = (
    "policy {policy!r}: the importance weights of its {estimator} values have an effective "
    "sample size of {where}: a handful of episodes carry {those}, so {its} interval can miss the "
    "truth. {advice}")
#: The advice of :data:`LOW_ESS_MESSAGE` for importance sampling, and for dr and wdr.
IS_ADVICE = "Prefer dr or wdr (a Q-model), truncate the weights, or log the propensities."
DR_ADVICE = "Truncate the weights, log the propensities, or compare with fqe."
#: The advice of the weight-mean check's warning in the audit (truncation removes weight).
MISSING_WEIGHT_ADVICE = "Prefer dr or wdr (a Q-model), or log the propensities"
#: The warning on group values far outside the range of the observed returns (tests match it).
FAR_MESSAGE = (
    "policy {policy!r}: its {estimator} {what} {lie} far outside the range of the observed "
    "returns (further beyond it than the range is wide): the importance weights are extreme, "
    "so {those}, and neither are the value gap, worst group and Ginis that rest on {them}. "
    "Truncate the weights, compare with fqe, or log the propensities.")
#: Prefix of the support warning (the rest is ``evaluate``'s :class:`SupportReport` message).
SUPPORT_PREFIX = "policy {policy!r}: "
#: The start of a policy's censoring warning (:func:`diagnose`) as a ``warnings`` filter pattern.
CENSORING_WARNING = r"policy .*: [0-9.]+% of the episodes are censored"
#: ... and of its in-sample propensity warning.
IN_SAMPLE_WARNING = r"policy .*: [a-z, ]+ uses? propensities estimated in-sample"
#: ... and of its warning on groups whose Q-model was refitted or whose FQE is biased
#: (:func:`~equicare.ope._group_check.biased_groups_message`).
Q_CHECK_WARNING = r"policy .*: (The .*Q-model fitted on all episodes is biased|FQE is biased)"


def _ess_kind(estimator: str) -> str:
    """``"trajectory"`` for is/wis, else ``"per_decision"`` (the weights the estimator uses)."""
    return "trajectory" if estimator in ("is", "wis") else "per_decision"


@dataclass(frozen=True)
class WeightDiagnostics:
    """ESS of the importance weights and support of one audited policy.

    Attributes
    ----------
    policy : str
    estimator : str
        Estimator of the group values.
    ess : EffectiveSampleSize
        Over the audited episodes (published groups).
    ess_by_group : dict of str to EffectiveSampleSize
        Within each published group.
    support : SupportReport, StreamSupportReport or None
        Target mass on actions current practice (almost) never takes, over the audited rows
        (a ``StreamSupportReport`` in a streamed audit: the same JSON).
    messages : tuple of str
        The warnings emitted (support, low ESS, censoring).
    censoring : CensoringCheck or None
        The Q-model's censoring check (``evaluate``'s ``q_model["censoring"]``): a stationary
        table on a panel with censored stays, when censoring could move the value by 2%.
    """

    policy: str
    estimator: str
    ess: EffectiveSampleSize
    ess_by_group: dict[str, EffectiveSampleSize] = field(repr=False)
    support: SupportReport | StreamSupportReport | None = None
    messages: tuple[str, ...] = ()
    censoring: CensoringCheck | None = None

    @property
    def kind(self) -> str:
        """The ESS that matters for the estimator: ``"trajectory"`` or ``"per_decision"``."""
        return _ess_kind(self.estimator)

    def ess_pct(self, ess: EffectiveSampleSize | None = None) -> float:
        """The ESS of :attr:`kind` as % of the episodes (of ``ess``, default the overall)."""
        e = self.ess if ess is None else ess
        return float(e.trajectory_pct if self.kind == "trajectory" else e.per_decision_pct)

    def low_groups(self) -> list[str]:
        """Published groups whose ESS % is below :data:`LOW_ESS_PCT`, lowest first."""
        low = [g for g, e in self.ess_by_group.items() if self.ess_pct(e) < LOW_ESS_PCT]
        return sorted(low, key=lambda g: self.ess_pct(self.ess_by_group[g]))

    def to_dict(self) -> dict[str, Any]:
        """The ``diagnostics`` entry of the policy in the audit JSON.

        ``censoring`` only when the check was made (as ``evaluate``'s ``q_model``). Each
        published group's ``ess_by_group`` entry carries its trajectory weights' Pareto tail
        index (``trajectory_weight_pareto_k``; ``null`` with ``trajectory_weight_pareto_k_na``
        saying why when the group's tail is too small to fit).
        """
        out = {
            "estimator": self.estimator, "ess_kind": self.kind,
            "ess": self.ess.to_dict(),
            "ess_by_group": {g: _group_ess(e) for g, e in self.ess_by_group.items()},
            "support": None if self.support is None else self.support.to_dict(),
            "low_ess_pct": LOW_ESS_PCT,
            "warnings": list(self.messages),
        }
        if self.censoring is not None:
            out["censoring"] = self.censoring.to_dict()
        return out


def _group_ess(e: EffectiveSampleSize) -> dict[str, Any]:
    """A group's ``ess_by_group`` entry: its ESS and its weights' Pareto tail index."""
    k = float(e.weight_pareto_k)
    out: dict[str, Any] = {"trajectory": e.trajectory, "trajectory_pct": e.trajectory_pct,
                           "per_decision_pct": e.per_decision_pct,
                           "trajectory_weight_pareto_k": k if np.isfinite(k) else None}
    na = pareto_k_na(k, e.n_episodes)
    if na is not None:
        out["trajectory_weight_pareto_k_na"] = na
    return out


def weight_diagnostics(policy: str, estimator: str, inputs: OPEInputs, gi: GroupIndex,
                       support: SupportReport | None, *, truncate: float | None = None,
                       warn: bool = True, censoring: CensoringCheck | None = None,
                       values: Any = None, returns_range: tuple[float, float] | None = None,
                       in_sample: str | None = None,
                       rewards_range: tuple[float, float] | None = None,
                       q_check: str | None = None) -> WeightDiagnostics:
    """ESS overall and by group and the support check of one policy's group values.

    Parameters
    ----------
    policy : str
        Name in the audit.
    estimator : str
        Estimator of the group values (the low-ESS warning only for :data:`WEIGHTED` ones).
    inputs : OPEInputs
        The OPE inputs of all the dataset's episodes (``rho``: the importance ratios).
    gi : GroupIndex
        Groups; suppressed episodes are left out of every number.
    support : SupportReport or None
        The OPE engine's support report over the audited rows (built with ``warn=False``); a
        :class:`~equicare.exceptions.SupportWarning` naming the policy is emitted when it warns.
    truncate : float, optional
        Truncation of the weights (also reported, as in ``evaluate``).
    warn : bool
        Emit the warnings.
    censoring : CensoringCheck, optional
        The Q-model's censoring check (:meth:`~equicare.ope.Prepared.censoring_report`).
    values : OutcomeFrame, optional
        The policy's group values, checked against ``returns_range`` (:func:`far_values_message`).
    returns_range : tuple of float, optional
        The observed episode returns' ``(min, max)`` over the dataset.
    in_sample : str, optional
        ``evaluate``'s warning on weights from in-sample estimated propensities, naming the
        policy (:func:`~equicare.fairness._audit.audited_in_sample`).
    rewards_range : tuple of float, optional
        The steps' smallest and largest reward: values on the side of 0 no policy can reach
        are far outside too (:func:`equicare.ope._evaluate.wrong_sign`).
    q_check : str, optional
        ``evaluate``'s warning on groups whose Q-model was refitted on their own episodes or
        whose FQE is biased, naming the policy (:func:`~equicare.fairness._group_q.
        refit_message`).

    Returns
    -------
    WeightDiagnostics
    """
    kept = np.flatnonzero(gi.kept)
    ess = effective_sample_size(inputs.subset(kept), truncate)
    by_group = {g: effective_sample_size(inputs.subset(np.flatnonzero(gi.codes == j)), truncate)
                for j, g in enumerate(gi.labels)}
    return diagnose(policy, estimator, ess, by_group, support, warn=warn, censoring=censoring,
                    values=values, returns_range=returns_range, in_sample=in_sample,
                    rewards_range=rewards_range, q_check=q_check)


def diagnose(policy: str, estimator: str, ess: EffectiveSampleSize,
             by_group: dict[str, EffectiveSampleSize], support: Any, *,
             warn: bool = True, censoring: CensoringCheck | None = None,
             values: Any = None, returns_range: tuple[float, float] | None = None,
             in_sample: str | None = None,
             rewards_range: tuple[float, float] | None = None,
             q_check: str | None = None) -> WeightDiagnostics:
    """:func:`weight_diagnostics` from ESS already computed (the streamed audit's, from sums).

    Parameters
    ----------
    policy, estimator
        As in :func:`weight_diagnostics`.
    ess : EffectiveSampleSize
        Over the audited episodes.
    by_group : dict of str to EffectiveSampleSize
        Within each published group.
    support : SupportReport, StreamSupportReport or None
    warn : bool
    censoring : CensoringCheck, optional
        When it warns and the table was not replaced (the user named the stationary table),
        its message naming the policy, a :class:`~equicare.exceptions.DataWarning` as
        ``evaluate``'s.
    values, returns_range, rewards_range
        The policy's group values and the observed returns' (and rewards') range: values far
        outside it (or on the side of 0 no policy reaches when every reward has one sign) are
        warned about (:func:`far_values_message`; a ``SupportWarning``, as the low-ESS one).
    in_sample : str, optional
        The in-sample propensity warning (a ``DataWarning``, as ``evaluate``'s), kept with the
        others.
    q_check : str, optional
        The warning on groups whose Q-model was refitted on their own episodes or whose FQE is
        biased (a ``DataWarning``, as ``evaluate``'s), kept with the others.
    """
    diag = WeightDiagnostics(policy=policy, estimator=estimator, ess=ess, ess_by_group=by_group,
                             support=support)
    msgs: list[str] = []
    if support is not None and support.warn:
        msgs.append(SUPPORT_PREFIX.format(policy=policy) + support.message())
    if estimator in WEIGHTED:
        kind = "trajectory" if diag.kind == "trajectory" else "per-decision"
        low = diag.low_groups()
        overall_low = diag.ess_pct() < LOW_ESS_PCT
        if low or overall_low:
            parts = []
            if overall_low:
                parts.append(f"{_fmt(ess, diag)} over the audited episodes")
            if low:
                parts.append(f"{_fmt(by_group[low[0]], diag)} in group {low[0]!r}"
                             + (f" ({len(low) - 1} more groups below {LOW_ESS_PCT:g}%)"
                                if len(low) > 1 else ""))
            many = len(low) > 1 or (overall_low and bool(low))
            msgs.append(LOW_ESS_MESSAGE.format(
                policy=policy, estimator=estimator,
                where=f"{' and '.join(parts)} ({kind} weights)",
                those="those values" if many else "that value", its="their" if many else "its",
                advice=DR_ADVICE if estimator in ("dr", "wdr") else IS_ADVICE))
    if estimator in IS_TYPE and weight_mean_off(ess.weight_mean, ess.weight_mean_se):
        # evaluate's check (equicare.ope._ess.weight_mean_off), over the audited episodes
        msgs.append(SUPPORT_PREFIX.format(policy=policy) + missing_weight_message(
            [estimator], ess.weight_mean, ess.weight_mean_se, ess.n_episodes,
            MISSING_WEIGHT_ADVICE))
    if (estimator in IS_TYPE and ESS_KIND[estimator] == "trajectory"
            and pareto_k_off(ess.weight_pareto_k)):  # evaluate's heavy-tail check
        msgs.append(SUPPORT_PREFIX.format(policy=policy) + heavy_tail_message(
            [estimator], ess.weight_pareto_k, ess.n_episodes, ("dr", "wdr")))
    if estimator in IS_TYPE and ESS_KIND[estimator] == "trajectory":  # ... within each group
        undefined = {} if values is None else values.undefined
        name = "group" if values is None else values.group
        heavy = group_heavy_tail_message(
            [(f"{name}={g}", float(e.weight_pareto_k), e.n_episodes)
             for g, e in by_group.items()
             if pareto_k_off(e.weight_pareto_k) and g not in undefined],
            [estimator], ("dr", "wdr"))
        if heavy is not None:
            msgs.append(SUPPORT_PREFIX.format(policy=policy) + heavy)
    if warn:
        for m in msgs:
            warnings.warn(m, SupportWarning, stacklevel=3)
    far = (None if values is None or estimator not in WEIGHTED
           else far_values_message(policy, estimator, values, returns_range, rewards_range))
    if far is not None:  # a weight diagnostic, as the low-ESS warning
        msgs.append(far)
        if warn:
            warnings.warn(far, SupportWarning, stacklevel=3)
    if in_sample is not None:
        msgs.append(in_sample)
        if warn:
            warnings.warn(in_sample, DataWarning, stacklevel=3)
    if censoring is not None and censoring.warn and not censoring.switched:
        msgs.append(SUPPORT_PREFIX.format(policy=policy) + censoring.message())
        if warn:
            warnings.warn(msgs[-1], DataWarning, stacklevel=3)
    if q_check is not None:
        msgs.append(q_check)
        if warn:
            warnings.warn(q_check, DataWarning, stacklevel=3)
    return WeightDiagnostics(policy=policy, estimator=estimator, ess=ess, ess_by_group=by_group,
                             support=support, messages=tuple(msgs), censoring=censoring)


def _fmt(e: EffectiveSampleSize, diag: WeightDiagnostics) -> str:
    pct = diag.ess_pct(e)
    return f"{pct * e.n_episodes / 100:.1f} episodes ({pct:.2f}%)"


def far_values_message(policy: str, estimator: str, values: Any,
                       returns_range: tuple[float, float] | None,
                       rewards_range: tuple[float, float] | None = None) -> str | None:
    """The warning on an audited policy's values far outside the observed returns, or None.

    ``evaluate``'s check (:func:`equicare.ope._evaluate.far_outside`: further beyond the
    returns' range than the range is wide) on the overall value and each published group's.
    A value of 3.75 for a survival probability (DR of a CQL policy on an ICU-shaped panel,
    a group at 6.05, a value gap of 5.07 and a Gini of 0.36) is the importance weights blowing
    up; the audit said only that one group's weights had a low effective sample size. The
    range's ends are not printed: they are single members' returns.

    Parameters
    ----------
    policy, estimator : str
    values : OutcomeFrame
        ``overall_value``, ``groups`` and ``values`` (NaN: undefined or withheld).
    returns_range : tuple of float or None
        ``(min, max)`` of the observed episode returns.
    rewards_range : tuple of float or None
        ``(min, max)`` of the steps' rewards: with one sign, a value on the other side of 0
        is far outside too (a DR of +3.2 where every reward is <= 0).
    """
    from equicare.ope._evaluate import far_outside

    bad = [f"overall value {values.overall_value:.4g}"] if far_outside(
        float(values.overall_value), returns_range, rewards_range) else []
    bad += [f"value {v:.4g} in group {g!r}"
            for g, v in zip(values.groups, values.values, strict=True)
            if far_outside(float(v), returns_range, rewards_range)]
    if not bad:
        return None
    many = len(bad) > 1
    what = bad[0] if not many else ", ".join(bad[:-1]) + " and " + bad[-1]
    return FAR_MESSAGE.format(policy=policy, estimator=estimator, what=what,
                              lie="lie" if many else "lies",
                              those="they are not values" if many else "it is not a value",
                              them="them" if many else "it")
