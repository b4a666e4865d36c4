"""The fairness audit: allocation and outcome metrics by group, behaviour and policies."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataWarning, InvalidParameterError
from equicare.fairness._allocation import (
    AllocationFrame,
    _check_common,
    build_frames,
    group_sums,
    level_table,
    set_levels,
)
from equicare.fairness._bootstrap import CIMethod, bootstrap_weights, split_random_state
from equicare.fairness._diagnostics import WeightDiagnostics, weight_diagnostics
from equicare.fairness._groups import GroupIndex, dataset_group_index, require_comparison
from equicare.fairness._outcome import OutcomeFrame
from equicare.fairness._rows import (
    Level,
    action_set,
    episode_totals,
    level_matrix,
    need_rows,
    row_pass,
)
from equicare.ope._bootstrap import resampling_unit
from equicare.ope._ess import ESS_KIND
from equicare.ope._fqe import table_ignored_numeric, varies_within_cells
from equicare.ope._propensity_check import floored_propensity_message
from equicare.policy import Policy
from equicare.policy._deployed import (
    UsualCare,
    as_deployed,
    check_usual_care,
    deferred_share,
    deployed_propensities,
    deployed_rows,
    exempt_rows,
    usual_care_settings,
)
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    atomic_write_text,
    check_dataset,
    check_param,
)

if TYPE_CHECKING:
    from equicare._progress import Stages
    from equicare.ope._support import LoggedSupport
    from equicare.policy import BehaviorModel

__all__ = ["FairnessAudit", "AuditResult", "PolicyAudit", "audit", "BEHAVIOR"]

#: Name of the logged behaviour in every audit.
BEHAVIOR = "behavior"

#: Estimators usable for the group values (importance-sampling type need only the propensities;
#: ``dr``, ``wdr`` and ``fqe`` fit the OPE engine's FQE Q-model per policy).
ESTIMATORS = ("is", "wis", "pdis", "wpdis", "dr", "wdr", "fqe")
#: Estimators of the group values that use a Q-model (checked within each group).
Q_KEYS = ("fqe", "dr", "wdr")


def q_model_entry(selection: Any, name: str | None, numeric: Sequence[str] = (),
                  varying: Sequence[bool] | None = None) -> dict[str, Any]:
    """The audit's ``q_model`` entry of a policy valued with a Q-model (``fqe``, ``dr``, ``wdr``).

    ``{"chosen": ...}``, and with ``q_model="auto"`` (a
    :class:`~equicare.ope._select.QSelection`) the candidates' scores (``evaluate``'s
    ``q_model["candidates"]``: cross-fitted squared value bias plus its variance, lower is
    better; None for a candidate not cross-fitted), ``"skipped"`` (why a candidate was not
    fitted, when one was not) and, when the censoring check replaced the
    stationary table by the window table, ``"replaced": "tabular_stationary"`` (the criterion's
    choice); with a tabular Q-model and numeric states, ``"ignored_numeric"``, the numeric state
    columns its cells leave out (as ``evaluate``'s), and ``"numeric_bins": {"target_reads"}``
    when the target reads numeric states within auto's cells
    (:func:`~equicare.ope._select.target_read_bins`).

    Parameters
    ----------
    selection : QSelection or None
        ``auto``'s choice (in memory ``Prepared.q_selection``; streamed the choice on the sample,
        with the censoring check's replacement).
    name : str or None
        The Q-model fitted, as named (``Prepared.q_name``), when there was no choice.
    numeric : sequence of str
        The panel's numeric state columns.
    varying : sequence of bool, optional
        Per numeric column, whether it varies within some cell of the table (a column constant
        in every cell is not ignored; :func:`~equicare.ope._fqe.table_ignored_numeric`).
    """
    out: dict[str, Any] = {"chosen": name if selection is None else selection.chosen}
    ignored = table_ignored_numeric(out["chosen"], numeric, varying)
    if ignored:
        out["ignored_numeric"] = ignored
    if selection is None:
        return out

    def num(v: Any) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    out["candidates"] = {k: num(v) for k, v in selection.candidates.items()}
    if selection.skipped:
        out["skipped"] = dict(selection.skipped)
    if selection.replaced:
        out["replaced"] = selection.replaced
    if selection.numeric_bins.get("target_reads"):  # numeric states the target reads
        out["numeric_bins"] = {"target_reads": dict(selection.numeric_bins["target_reads"])}
    return out


@dataclass(frozen=True, eq=False)
class PolicyAudit:
    """Audit of one policy: its allocation frame, outcome frame and weight diagnostics.

    ``diagnostics`` (:class:`~equicare.fairness.WeightDiagnostics`): the ESS of the importance
    weights overall and by group and the support check of the policy's group values (audits of
    a policy with an estimator; None for the behaviour). ``q_model``: which Q-model valued the
    policy with ``fqe``, ``dr`` or ``wdr`` (:func:`q_model_entry`; ``auto``'s choice and its
    candidates' scores), else None.
    """

    name: str
    allocation: AllocationFrame
    outcome: OutcomeFrame | None = None
    diagnostics: WeightDiagnostics | None = None
    q_model: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Contract-7 entry of this policy (plus ``q_model`` and ``diagnostics`` if any)."""
        out = self.allocation.to_dict()
        if self.outcome is not None:
            out.update(self.outcome.to_dict())
        if self.q_model is not None:
            out["q_model"] = dict(self.q_model)
        if self.diagnostics is not None:
            out["diagnostics"] = self.diagnostics.to_dict()
        return out


@dataclass(frozen=True, eq=False)
class AuditResult:
    """Result of :meth:`FairnessAudit.run`; ``to_dict()`` is the ``audit.json`` of Contract 7.

    Attributes
    ----------
    group : str
        Grouping (``"race_ethnicity"`` or ``"race_ethnicity x sex"``).
    action : str
        Audited action set.
    n_episodes : int
        Audited episodes (published groups only).
    policies : dict of str to PolicyAudit
        ``"behavior"`` first, then the given policies in order.
    settings : dict
        The :class:`FairnessAudit` settings used, and ``deferred_share``: the share of rows
        each policy that can defer leaves to current practice (audit JSON ``usual_care`` and
        ``deferred_share``, both None when no policy defers).
    level_rates : pandas.DataFrame or None
        Rate of every action-component level by group (point estimates, see
        :func:`equicare.fairness.level_rates`).
    """

    group: str
    action: str
    n_episodes: int
    policies: dict[str, PolicyAudit]
    settings: dict[str, Any]
    level_rates: pd.DataFrame | None = None

    def __getitem__(self, name: str) -> PolicyAudit:
        return self.policies[name]

    @property
    def suppressed(self) -> tuple[str, ...]:
        """Suppressed group labels."""
        return next(iter(self.policies.values())).allocation.suppressed

    @property
    def warnings(self) -> list[str]:
        """The weight and support warnings of every policy's group values (see ``diagnostics``).

        First, when ``min_cell`` was set below 11, that the output is not privacy-safe
        (:data:`~equicare.privacy.MSG_LOW_MIN_CELL`).
        """
        from equicare.privacy import low_min_cell_message

        low = low_min_cell_message(int(self.settings["min_cell"]), "FairnessAudit")
        return [*([low] if low is not None else []),
                *[m for pa in self.policies.values() if pa.diagnostics is not None
                  for m in pa.diagnostics.messages]]

    def summary(self) -> pd.DataFrame:
        """Tabulate one row per policy: rate, parity gap (pp), ratio, p-value, outcomes."""
        rows = []
        for name, pa in self.policies.items():
            a = pa.allocation
            row: dict[str, Any] = {"policy": name, "overall_rate": a.overall,
                                   "parity_gap_pp": 100 * a.difference(),
                                   "parity_ratio": a.ratio(), "permutation_p": a.permutation_p}
            if a.n_boot:
                lo, hi = a.difference_ci()
                row.update(gap_lower=100 * lo, gap_upper=100 * hi)
                row.update(zip(("ratio_lower", "ratio_upper"), a.ratio_ci(), strict=True))
            if pa.outcome is not None:
                o = pa.outcome
                row.update(value=o.overall, worst_group_value=o.worst_group(),
                           value_gap=o.difference(), gini=o.gini())
            rows.append(row)
        return pd.DataFrame(rows).set_index("policy")

    def to_dict(self) -> dict[str, Any]:
        """Return the audit as plain data (Contract 7 plus documented extra keys)."""
        s = self.settings
        out: dict[str, Any] = {
            "group": self.group, "action": self.action, "n_episodes": int(self.n_episodes),
            "level": s["level"], "n_boot": s["n_boot"], "ci_level": 1 - s["alpha"],
            "ci_method": s["ci_method"], "resampling": s.get("resampling", "episodes"),
            "min_cell": s["min_cell"], "estimator": s["estimator"],
            **usual_care_settings(s.get("usual_care", "deployed"),
                                  s.get("deferred_share") or None),
            "policies": {k: v.to_dict() for k, v in self.policies.items()},
            "warnings": self.warnings,
        }
        if self.level_rates is not None:
            lr: dict[str, Any] = {}
            for (pol, act), row in self.level_rates.iterrows():
                lr.setdefault(pol, {})[act] = {
                    str(g): (None if not np.isfinite(v) else float(v)) for g, v in row.items()}
            out["level_rates"] = lr
        return out

    def to_json(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` atomically; refuse to replace a file unless ``overwrite``."""
        p = Path(path)
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; refusing to overwrite (pass overwrite=True / "
                                  "--force).")
        atomic_write_text(p, json.dumps(self.to_dict(), indent=2) + "\n")
        return p


def _outcome_frame(name: str, estimator: str, parts_matrix: NDArray[np.float64],
                   combine_fn: Callable[[NDArray[np.float64], NDArray[np.float64]],
                                        NDArray[np.float64]],
                   gi: GroupIndex, weights: NDArray[np.float64] | None, alpha: float,
                   ci_method: CIMethod,
                   sums: tuple[NDArray[np.float64], NDArray[np.float64] | None] | None = None,
                   rep_shift: NDArray[np.float64] | None = None,
                   reason_fn: Callable[[NDArray[np.float64]], str | None] | None = None
                   ) -> OutcomeFrame:
    """Group values from per-episode parts: group sums for the data and each replicate.

    ``sums`` gives the group sums of ``[parts, 1]`` already computed (a streamed panel); then
    ``parts_matrix`` and ``weights`` are not used. ``rep_shift`` (shape ``(n_boot, n_groups +
    1)``, the last column for the overall value) is added to the replicates: the Q-model's
    refit (:func:`refit_shift`). ``reason_fn`` maps the sums of the parts (shape
    ``(n_parts,)``) of a group or of all episodes to why the estimate is undefined (WIS with every
    importance weight 0), or None; such a value is NaN with the reason.
    """
    if sums is None:
        h = gi.one_hot()
        ones = np.ones((h.shape[0], 1))
        cols = np.concatenate([parts_matrix, ones], axis=1)
        point, reps = group_sums(h, cols, weights)
    else:
        point, reps = sums
    values = np.array(combine_fn(point[:, :-1], point[:, -1]), dtype=np.float64)
    overall = float(combine_fn(point[:, :-1].sum(axis=0), point[:, -1].sum()))
    undefined: dict[str, str] = {}
    overall_reason = None
    if reason_fn is not None:
        for i, g in enumerate(gi.labels):
            why = reason_fn(point[i, :-1])
            if why is not None:
                undefined[g] = why
                values[i] = np.nan
        overall_reason = reason_fn(point[:, :-1].sum(axis=0))
        if overall_reason is not None:
            overall = float("nan")
    value_reps = overall_reps = count_reps = None
    if reps is not None:
        value_reps = combine_fn(reps[..., :-1], reps[..., -1])
        overall_reps = combine_fn(reps[..., :-1].sum(axis=1), reps[..., -1].sum(axis=1))
        count_reps = reps[..., -1]
        if rep_shift is not None:
            value_reps = value_reps + rep_shift[:, :-1]
            overall_reps = overall_reps + rep_shift[:, -1]
    return OutcomeFrame(policy=name, group=gi.name, estimator=estimator, groups=gi.labels,
                        suppressed=gi.suppressed, counts=gi.counts, values=np.asarray(values),
                        value_reps=value_reps, overall_value=overall, overall_reps=overall_reps,
                        count_reps=count_reps, alpha=alpha, ci_method=ci_method,
                        undefined=undefined, overall_reason=overall_reason)


def hide_low_ess(frame: OutcomeFrame, cells: dict[str, Any], min_cell: int) -> OutcomeFrame:
    """The frame with the values of groups whose weights' ESS is below ``min_cell`` undefined.

    ``cells`` maps each published group to its :class:`~equicare.ope._ess.WeightSums`. A group
    value of an importance-weighted estimator whose weights have an effective sample size below
    ``min_cell`` rests on fewer than ``min_cell`` episodes' outcomes: it becomes NaN with the
    reason (as a WIS with every weight 0), and so are the groups that would reveal it by
    difference from the overall value (:func:`equicare.ope._ess.low_ess_groups`). Undefined
    groups are left out of the gap, the worst group and the Gini.
    """
    from equicare.ope._ess import low_ess_groups

    hidden = low_ess_groups(cells, (frame.estimator,), min_cell).get(frame.estimator, {})
    new = {g: why for g, why in hidden.items() if g not in frame.undefined}
    if not new:
        return frame
    values = np.array(frame.values, dtype=np.float64)
    values[[frame.groups.index(g) for g in new]] = np.nan
    return dataclasses.replace(frame, values=values, undefined={**frame.undefined, **new})


def _mean_combine(sums: NDArray[np.float64], counts: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(sums[..., 0] / counts)


@dataclass(frozen=True, kw_only=True)
class FairnessAudit:
    """Settings of a fairness audit; :meth:`run` audits a dataset and policies.

    Parameters
    ----------
    action : str, optional
        Audited action set, ``"component=level"`` or ``"component=level1|level2"``. Default:
        every level of the first component except its first ("any outreach").
    group : str, optional
        Group attribute (default: the dataset's first).
    intersect : tuple of str
        Attributes crossed with ``group`` (intersectional cells such as ``"black x female"``).
    level : {"step", "episode"}
        Rates over member-weeks (``"step"``) or averaged per episode (``"episode"``).
    need : str, optional
        State rule for clinical need (``"risk >= 0.7"``); default: the manifest's need column.
    n_boot : int
        Episode-level bootstrap replicates for every interval (0: none).
    alpha : float
        ``1 - alpha`` interval coverage.
    ci_method : {"basic", "percentile"}
        Bootstrap interval of every metric (:func:`equicare.fairness.bootstrap_ci`): the basic
        (reverse percentile) interval by default, which keeps its coverage for max-minus-min
        gaps, ratios, worst-group values and Gini indices. Either interval is widened to contain
        its point estimate (see :func:`~equicare.fairness.bootstrap_ci`).
    n_permutations : int
        Permutations of the test of no allocation difference (0: no test).
    min_cell : int
        Groups with fewer episodes are suppressed everywhere.
    estimator : str or None
        OPE estimator of the group values of each policy (``None``: no outcome metrics): one of
        ``is, wis, pdis, wpdis, dr, wdr, fqe``. The behaviour's values are on-policy means of the
        discounted return.
    q_model : str, default="auto"
        Q-model of the OPE engine's FQE for ``dr``, ``wdr`` and ``fqe``, fitted once per
        policy on all episodes: any ``q_model`` of :func:`equicare.ope.evaluate` (``"auto"``,
        as ``evaluate``'s default, ``"linear"``, ``"tabular_stationary[state]"``, ...). A
        stationary table on a panel with censored stays gets ``evaluate``'s censoring check
        (``diagnostics.censoring``): a ``DataWarning`` naming the policy when the user named
        that table, the window table in its place with ``"auto"``.
    truncate : float, optional
        Cap on cumulative importance weights.
    with_level_rates : bool
        Also tabulate the rate of every action-component level by group.
    usual_care : {"deployed", "stored"}
        Rows a policy leaves to current practice (exception rules' "otherwise, as current
        practice", ``policy.deferred_rows``): as deployed (the default) the clinicians decide
        there, so both the allocation and the value count what they did, the logged action
        (target and behaviour probability 1, :mod:`equicare.policy._deployed`); ``"stored"``
        audits the estimate of practice saved with the policy (what ``predict`` outputs).
    """

    action: str | None = None
    group: str | None = None
    intersect: tuple[str, ...] = ()
    level: Level = "step"
    need: str | None = None
    n_boot: int = 1000
    alpha: float = 0.05
    ci_method: CIMethod = "basic"
    n_permutations: int = 1000
    min_cell: int = MIN_CELL
    estimator: str | None = "wis"
    q_model: str = "auto"
    truncate: float | None = None
    with_level_rates: bool = True
    usual_care: UsualCare = "deployed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "intersect", tuple(self.intersect))
        _check_common(self.level, self.alpha, self.n_boot, self.n_permutations, self.min_cell,
                      "FairnessAudit")
        check_param(self.ci_method, "ci_method", "FairnessAudit", choices=("basic", "percentile"))
        check_param(self.estimator, "estimator", "FairnessAudit", choices=(*ESTIMATORS, None))
        from equicare.ope._prepare import check_q_model

        check_q_model(self.q_model, "FairnessAudit")
        check_param(self.truncate, "truncate", "FairnessAudit", kind=(int, float), low=0.0,
                    low_inclusive=False, allow_none=True, expected="a positive float or None")
        check_usual_care(self.usual_care, "FairnessAudit")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-friendly data."""
        d = asdict(self)
        d["intersect"] = list(self.intersect)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FairnessAudit:
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown FairnessAudit settings {unknown}; known: {sorted(known)}.")
        kw = dict(d)
        if "intersect" in kw:
            kw["intersect"] = tuple(kw["intersect"])
        return cls(**kw)

    # ------------------------------------------------------------------ run
    def run(self, dataset: TrajectoryDataset,
            policies: Mapping[str, Policy | NDArray[np.float64]] | None = None, *,
            weights: NDArray[np.float64] | None = None,
            random_state: RandomState = None,
            support_check: LoggedSupport | None = None,
            behavior_model: BehaviorModel | None = None,
            progress: bool | Stages = False,
            suppress: Collection[str] = ()) -> AuditResult:
        """Audit the logged behaviour and each policy on ``dataset``.

        Parameters
        ----------
        dataset : TrajectoryDataset
        policies : mapping of name to Policy or ndarray of shape (n_steps, n_actions), optional
            Policies to audit beside the behaviour (name ``"behavior"`` is reserved).
        weights : ndarray of shape (n_boot, n_episodes), optional
            Bootstrap replicate weights to reuse (e.g. ``equicare.ope.bootstrap_counts``). By
            default they are drawn with :func:`equicare.fairness.bootstrap_weights` from
            ``random_state``; one matrix serves every metric of every policy.
        random_state : int, Generator or None
            With an int seed, each policy's nuisance models (estimated propensities, the
            Q-model, ``auto``'s folds) are fitted with the seed ``evaluate`` gives them for it
            (:func:`~equicare.ope._evaluate.nuisance_seed`), as the streamed audit does: the
            same models as ``evaluate(..., random_state=seed)`` and ``audit --chunk-rows``.
        support_check : LoggedSupport, optional
            The logged-propensity support check of ``evaluate`` on this dataset object with the
            same int ``random_state`` (:func:`~equicare.ope._evaluate.logged_support_check`):
            used instead of fitting the same one again; any other check is ignored (it never
            changes a number).
        behavior_model : BehaviorModel, optional
            Fitted on ``dataset`` (cross-fitted, :meth:`~equicare.policy.BehaviorModel.fit`):
            with no logged propensities, every policy's estimated propensities and support
            check come from it (the caller's, e.g. the policy card's), instead of a logistic
            model fitted for each policy at the seed above. Unused with logged propensities.
        progress : bool or Stages, default=False
            One ``[audit] ...`` line per stage on stderr and a bar over the policies' group
            values (:class:`equicare._progress.Stages`); never changes a number. A caller's
            ``Stages`` prints them as its own (the policy card's audit: ``[explain] ...``).
        suppress : collection of str, optional
            Group cells to suppress whatever their size, named as the audit names its groups
            (``"black"``, or ``"black x female"`` with ``intersect``): cells that other
            published tables would reveal by difference, e.g. held-out groups whose training
            complement is small (:func:`equicare.privacy.split_withheld`, which ``equicare
            run`` applies). They are shown as suppressed like small cells, and complementary
            suppression completes them (:func:`equicare.privacy.suppressed_cells`).

        Returns
        -------
        AuditResult
        """
        from equicare._progress import Stages

        check_dataset(dataset, "FairnessAudit.run")
        pols = {k: as_deployed(v, self.usual_care) for k, v in (policies or {}).items()}
        if BEHAVIOR in pols:
            raise InvalidParameterError(
                f"The policy name {BEHAVIOR!r} is reserved for the logged behaviour.")
        spec, mask = action_set(dataset.action_space, self.action)
        gi = require_comparison(dataset_group_index(dataset, self.group, self.intersect,
                                                    min_cell=self.min_cell, withheld=suppress))
        gname = gi.name
        n_ep = dataset.n_episodes
        w_state, rng = split_random_state(random_state)
        # the replicates: drawn from the seed itself (same as the OPE engine with that seed)
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != n_ep:
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="weights", owner="FairnessAudit.run",
                    expected=f"an array of shape (n_boot, {n_ep})", got=w.shape))
        elif self.n_boot > 0:
            w = bootstrap_weights(n_ep, self.n_boot, w_state, members=dataset.members)
        else:
            w = None
        estimator = self.estimator
        level_names, lmat = level_matrix(dataset.action_space)
        cols = mask[:, None].astype(np.float64)
        if self.with_level_rates:
            cols = np.concatenate([cols, lmat], axis=1)
        say = progress if isinstance(progress, Stages) else Stages("audit", progress)
        names = [BEHAVIOR, *pols]
        say(f"{n_ep} episodes, {dataset.n_steps} steps: allocation by {gname} of "
            f"{', '.join(names)}")
        support = _Support(dataset, gi, estimator or "", support_check)
        # with an int seed the support check's seed is known now: a policy valued from the
        # logged propensities gets its unsupported mass in the same pass as its allocation
        early = None if estimator is None else int_seed(random_state)
        masses: dict[str, NDArray[np.float64]] = {}
        nums, lnums, p_logged = [], [], {}
        for name in names:
            pol = None if name == BEHAVIOR else pols[name]
            block_fn = None
            if (early is not None and pol is not None and not isinstance(pol, np.ndarray)
                    and self._logged_propensities(dataset, pol) is not None):
                masses[name], block_fn = support.mass_pass(pol, early)
            alloc, pl, _, _ = row_pass(dataset, pol, cols, source=name, block_fn=block_fn)
            num, den = episode_totals(dataset, alloc, self.level)
            nums.append(num[:, 0])
            lnums.append(num[:, 1:])
            p_logged[name] = pl
        nr = need_rows(dataset, self.need)
        need_ep = None if nr is None else episode_totals(dataset, nr, self.level)[0]
        say(allocation_stage(0 if w is None else w.shape[0], self.n_permutations))
        frames = build_frames(names, np.stack(nums, axis=1), den, need_ep, gi, w, action=spec,
                              level=self.level, alpha=self.alpha, ci_method=self.ci_method,
                              n_permutations=self.n_permutations, random_state=rng,
                              clusters=dataset.members)
        outcomes: dict[str, OutcomeFrame | None] = dict.fromkeys(names)
        diags: dict[str, WeightDiagnostics | None] = dict.fromkeys(names)
        q_models: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
        if estimator is not None:
            returns = dataset.returns(discount=True)[:, None]
            outcomes[BEHAVIOR] = _outcome_frame(BEHAVIOR, "on_policy", returns, _mean_combine,
                                                gi, w, self.alpha, self.ci_method)
            seeds = rng.integers(0, 2**31 - 1, size=len(pols))
            if early is not None:
                seeds[:] = early
            with say.bar(f"{estimator} group values", len(pols)) as bar:
                for seed, name in zip(seeds, pols, strict=True):
                    say(value_stage(name, estimator, 0 if w is None else w.shape[0]))
                    outcomes[name], diags[name], q_models[name] = self._policy_outcome(
                        dataset, name, pols[name], p_logged[name], gi, w, int(seed), support,
                        behavior_model, masses.get(name))
                    bar.update(advance=1, info=name)
        levels = None
        if self.with_level_rates:
            levels = level_table(names, np.stack(lnums), den, gi, level_names, frames,
                                 set_levels(mask, lmat, level_names))
        return AuditResult(group=gname, action=spec, n_episodes=gi.n_kept,
                           policies={k: PolicyAudit(k, frames[k], outcomes[k], diags[k],
                                                    q_models[k])
                                     for k in names},
                           settings={**self.to_dict(),
                                     "resampling": resampling_unit(dataset.members),
                                     "deferred_share": {
                               k: share for k, pol in pols.items()
                               if (share := deferred_share(pol, dataset)) is not None}},
                           level_rates=levels)

    def _logged_propensities(self, dataset: TrajectoryDataset,
                             policy: Policy | NDArray[np.float64]
                             ) -> NDArray[np.float64] | None:
        """The logged propensities that value ``policy`` with an IS-type estimator, or None.

        1 where a deployed policy leaves the row to the clinicians. None when the estimator is
        not of importance-sampling type or the propensities are missing or unusable (then the
        OPE engine prepares the values and reports them).
        """
        b = dataset.behavior_prob
        if self.estimator not in ("is", "wis", "pdis", "wpdis") or b is None:
            return None
        b = deployed_propensities(policy, dataset, b)
        return b if bool(np.all(np.isfinite(b) & (b > 0) & (b <= 1 + 1e-9))) else None

    def _policy_outcome(self, dataset: TrajectoryDataset, name: str,
                        policy: Policy | NDArray[np.float64], p_logged: NDArray[np.float64],
                        gi: GroupIndex, weights: NDArray[np.float64] | None, seed: int,
                        support: _Support, behavior_model: BehaviorModel | None = None,
                        mass: NDArray[np.float64] | None = None
                        ) -> tuple[OutcomeFrame, WeightDiagnostics, dict[str, Any] | None]:
        """Group values of one policy from the OPE engine's per-episode parts, and diagnostics.

        The diagnostics: :func:`~equicare.fairness.weight_diagnostics` (ESS overall and by
        group, the support check, and with a stationary tabular Q-model on censored stays
        ``evaluate``'s censoring check). Last, the :func:`q_model_entry` of ``fqe``, ``dr``
        and ``wdr`` (else None). ``mass``: the policy's unsupported mass by row when the
        allocation pass computed it (:meth:`_Support.mass_pass`), else it is computed here.
        """
        from equicare.ope import OPEInputs, combine, episode_parts, prepare
        from equicare.ope._core import undefined_estimates

        key = self.estimator
        assert key is not None
        shift = censoring = q_entry = in_sample = None
        b = self._logged_propensities(dataset, policy)
        if b is not None:
            # importance ratios from the logged propensities and the block-wise pass over the
            # policy: no (n_steps, n_actions) matrix is held
            inputs = OPEInputs(rewards=dataset.rewards, episode_offsets=dataset.episode_offsets,
                               gamma=dataset.gamma, rho=p_logged / b)
            report = (support.logged_policy(policy, seed) if mass is None
                      else support.report_mass(mass, seed, policy))
        else:
            # estimated propensities and/or an FQE Q-model (or unusable logged propensities,
            # which the OPE engine reports): the OPE engine prepares everything
            prep = prepare(dataset, policy, keys=(key,), q_model=self.q_model,
                           behavior_model="logistic" if behavior_model is None
                           else behavior_model, random_state=seed)
            inputs = prep.inputs
            if key in ("fqe", "dr", "wdr"):
                # evaluate's censoring check of a stationary table (auto's switch made in
                # prepare): a named table's warning, in the diagnostics
                censoring = prep.censoring_report(dataset)
                chosen = prep.q_name if prep.q_selection is None else prep.q_selection.chosen
                q_entry = q_model_entry(prep.q_selection, prep.q_name, dataset.state_names,
                                        varies_within_cells(dataset, chosen, prep.table_cells))
                if prep.q_linearised and weights is not None:
                    shift = refit_shift(prep, key, gi, weights, self.truncate)
            checked = exempt_rows(prep.target_probs, prep.deferred)
            report = (support.logged(checked, seed) if prep.behavior_model is None
                      else support.model(checked, prep.behavior_model))
            bm = prep.behavior_model
            if bm is not None and prep.propensity_source == "estimated":
                floored = floored_propensity_message(bm, dataset, (key,), exempt=prep.deferred)
                if floored is not None:
                    warnings.warn(f"policy {name!r}: {floored}", DataWarning, stacklevel=2)
                in_sample = audited_in_sample(name, key, bm.summary(), inputs, gi,
                                              int(dataset.episode_lengths.max(initial=0)))
        parts = episode_parts(inputs, [key], truncate=self.truncate)

        def comb(sums: NDArray[np.float64], counts: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.asarray(combine(parts, sums, np.asarray(counts))[key])

        def why(sums: NDArray[np.float64]) -> str | None:
            return undefined_estimates(parts, sums).get(key)

        frame = _outcome_frame(name, key, parts.matrix, comb, gi, weights, self.alpha,
                               self.ci_method, rep_shift=shift, reason_fn=why)
        cells = None
        if key in ESS_KIND or key in Q_KEYS:
            from equicare.ope._ess import WeightSums

            member = gi.codes[:, None] == np.arange(len(gi.labels))[None, :]
            cells = dict(zip(gi.labels, WeightSums.by_group(inputs, member, self.truncate),
                             strict=True))
        if key in ESS_KIND:
            assert cells is not None
            frame = hide_low_ess(frame, cells, gi.min_cell)
        q_msg = None
        if key in Q_KEYS and inputs.q_sa is not None:
            # evaluate's check of the Q-model within each group, a refit where a group's TD
            # residuals stand out (equicare.fairness._group_q)
            from equicare.fairness._group_q import (
                corrected_frame,
                dr_withheld,
                memory_checks,
                refit_message,
            )

            assert cells is not None
            checks, own = memory_checks(prep, dataset, key, gi, weights, self.truncate, seed)
            frame = corrected_frame(frame, checks, own, dr_withheld(cells, gi.min_cell))
            q_msg = refit_message(name, frame, prep.q_name)
        returns = dataset.returns(discount=True)
        span = (float(returns.min()), float(returns.max())) if returns.size else None
        r_span = ((float(dataset.rewards.min()), float(dataset.rewards.max()))
                  if dataset.n_steps else None)
        return frame, weight_diagnostics(name, key, inputs, gi, report, truncate=self.truncate,
                                         censoring=censoring, values=frame, returns_range=span,
                                         in_sample=in_sample, rewards_range=r_span,
                                         q_check=q_msg), q_entry


def audited_in_sample(name: str, key: str, behavior: dict[str, Any], inputs: Any,
                      gi: GroupIndex, max_length: int) -> str | None:
    """``evaluate``'s warning on weights from in-sample propensities, for an audited policy.

    :func:`~equicare.ope._propensity_check.in_sample_weights_message` over the audited
    episodes (the published groups'), naming the policy; None when it does not apply. An
    ICU-shaped audit without logged propensities gave current practice itself an IS value of
    0.668 [0.645, 0.687] (truth 0.842; WPDIS 0.780) and a Gini of 0.038 (0.011 on-policy) without
    a word, where ``evaluate`` warns.

    Parameters
    ----------
    name, key : str
        The policy and the estimator of its group values.
    behavior : dict
        The behaviour model's summary (``n_folds``: 1 when in-sample).
    inputs : OPEInputs
        The policy's OPE inputs over every episode.
    gi : GroupIndex
    max_length : int
        The longest episode of the panel.
    """
    kept = np.flatnonzero(gi.kept)
    w = inputs.cumulative_weights()
    mean_w = float(w[kept, -1].mean()) if kept.size and w.size else float("nan")
    lengths = np.diff(np.asarray(inputs.episode_offsets))[kept]
    return in_sample_of(name, key, behavior, mean_w, int(kept.size), int(lengths.sum()),
                        max_length)


def in_sample_of(name: str, key: str, behavior: dict[str, Any], mean_weight: float,
                 n_episodes: int, n_steps: int, max_length: int) -> str | None:
    """:func:`~equicare.ope._propensity_check.in_sample_weights_message` naming the policy.

    From the audited episodes' mean trajectory weight, count and rows (in memory or summed
    over a streamed panel's chunks).
    """
    from equicare.ope._propensity_check import in_sample_weights_message

    msg = in_sample_weights_message(behavior, (key,), mean_weight, n_episodes, n_steps,
                                    max_length)
    return None if msg is None else f"policy {name!r}: {msg}"


class _Support:
    """The OPE engine's support check on the audited rows, one logged-propensity check per audit.

    Every row of the dataset is checked against practice as the whole dataset shows it (the
    OPE engine's behaviour model, out-of-fold on its fitting data; with logged propensities the
    check that ``evaluate`` builds on it), and the report covers the audited episodes' rows
    (:func:`~equicare.ope._support.audited_mass`): suppressed episodes are left out of the
    share, as from every number of the audit, but not out of what practice does.
    """

    def __init__(self, dataset: TrajectoryDataset, gi: GroupIndex, estimator: str,
                 given: LoggedSupport | None = None) -> None:
        self.data = dataset
        self.kept = None if bool(gi.kept.all()) else gi.kept
        self.keys = (estimator,)
        self._given = given
        self._logged: Any = None

    def _checker(self, seed: int) -> Any:
        """The audit's one :class:`LoggedSupport`, at the first policy's seed (or the given one).

        The given check serves when it is that one (:meth:`LoggedSupport.reuse`): on the
        audited dataset itself.
        """
        from equicare.ope._support import LoggedSupport

        if self._logged is None:
            self._logged = LoggedSupport.reuse(self._given, self.data, random_state=seed)
        return self._logged

    def logged(self, target_probs: NDArray[np.float64], seed: int) -> Any:
        """Report against the logged propensities' check (:class:`LoggedSupport`)."""
        return self._checker(seed).report(target_probs, estimators=self.keys, warn=False,
                                          kept=self.kept)

    def mass_pass(self, policy: Policy, seed: int
                  ) -> tuple[NDArray[np.float64], Callable[[slice, NDArray[np.float64]], None]]:
        """The policy's unsupported mass by row and the :func:`row_pass` ``block_fn`` filling it.

        The array is filled once a pass over the policy has called the function on every
        block (the audit's allocation pass, or :meth:`logged_policy`'s own).
        """
        checker = self._checker(seed)
        mass = np.empty(self.data.n_steps)
        deferred = deployed_rows(policy, self.data)  # the clinicians' rows: supported

        def add(rows: slice, probs: NDArray[np.float64]) -> None:
            probs = exempt_rows(probs, None if deferred is None else deferred[rows])
            mass[rows] = checker.block_mass(probs, rows)

        return mass, add

    def report_mass(self, mass: NDArray[np.float64], seed: int,
                    policy: Policy | NDArray[np.float64]) -> Any:
        """Report from the unsupported mass of every row (:meth:`mass_pass`) of ``policy``.

        Practice's own share counts the rows the policy does not leave to the clinicians.
        """
        deferred = deployed_rows(policy, self.data)
        return self._checker(seed).report_mass(mass, estimators=self.keys, warn=False,
                                               kept=self.kept,
                                               acting=None if deferred is None else ~deferred)

    def logged_policy(self, policy: Policy | NDArray[np.float64], seed: int) -> Any:
        """:meth:`logged` from the policy evaluated block by block on the dataset.

        No ``(n_steps, n_actions)`` matrix of the policy is held.
        """
        if isinstance(policy, np.ndarray):
            return self.logged(policy, seed)
        mass, add = self.mass_pass(policy, seed)
        row_pass(self.data, policy, np.zeros((self.data.n_actions, 0)), block_fn=add)
        return self.report_mass(mass, seed, policy)

    def model(self, target_probs: NDArray[np.float64], behavior_model: Any) -> Any:
        """Report against the fitted behaviour model of the OPE engine."""
        from equicare.ope._support import model_support_diagnostics

        return model_support_diagnostics(self.data, target_probs, behavior_model,
                                         estimators=self.keys, warn=False, kept=self.kept)


def int_seed(random_state: RandomState) -> int | None:
    """The seed of each policy's nuisance models and support check, known before the audit.

    With an int ``random_state`` it is ``evaluate``'s preparation seed (prepare fits with
    :func:`~equicare.ope._evaluate.nuisance_seed` of the seed), else None: the seeds are then
    drawn from the audit's generator after the permutation test.
    """
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        from equicare.ope._evaluate import evaluate_seeds

        return int(evaluate_seeds(int(random_state))[0])
    return None


def allocation_stage(n_boot: int, n_permutations: int) -> str:
    """The audit's stage line before the allocation frames (bootstrap and permutation test)."""
    return (f"allocation by group: bootstrap {n_boot} replicates, {n_permutations} "
            "permutations")


def value_stage(name: str, estimator: str, n_boot: int) -> str:
    """The audit's stage line before one policy's group values."""
    return f"{name}: {estimator} group values, bootstrap {n_boot} replicates"


def refit_shift(prep: Any, key: str, gi: GroupIndex, weights: NDArray[np.float64],
                truncate: float | None) -> NDArray[np.float64]:
    """The Q-model's refit in each replicate of the group values and the overall value.

    The Q-model is fitted on every episode, so a replicate that reweights the episodes by ``w``
    moves each group's FQE, DR or WDR by ``sum_e (w_e - 1) effect_e`` to first order, with the
    group's own effects (:func:`equicare.ope._evaluate.refit_effects`, centred over all
    episodes: one transposed solve per group); the last column is the overall value's (the
    published groups' episodes). The streamed audit computes the same from chunk sums.

    Returns
    -------
    ndarray of shape (n_boot, n_groups + 1)
    """
    from equicare.ope._evaluate import refit_effects

    h = gi.one_hot()
    sets = [np.flatnonzero(h[:, g] > 0) for g in range(h.shape[1])]
    sets.append(np.flatnonzero(h.sum(axis=1) > 0))
    centred = weights - 1.0
    return np.stack([centred @ refit_effects(prep, ep, [key], truncate)[:, 0] for ep in sets],
                    axis=1)


def audit(dataset: TrajectoryDataset,
          policies: Mapping[str, Policy | NDArray[np.float64]] | None = None, *,
          action: str | None = None, group: str | None = None, intersect: Sequence[str] = (),
          random_state: RandomState = None, support_check: LoggedSupport | None = None,
          behavior_model: BehaviorModel | None = None, progress: bool | Stages = False,
          suppress: Collection[str] = (), **settings: Any) -> AuditResult:
    """Run a :class:`FairnessAudit` in one call (``settings`` are its other fields).

    ``support_check``, ``behavior_model``, ``progress`` (stage lines on stderr, default off)
    and ``suppress`` (group cells suppressed from outside) are passed to
    :meth:`FairnessAudit.run`.

    Examples
    --------
    >>> res = audit(ds, {"awr_fair": policy}, action="modality=home_visit",
    ...             random_state=0)                                       # doctest: +SKIP
    >>> res["behavior"].allocation.difference_ci()                       # doctest: +SKIP
    """
    check_dataset(dataset, "audit")
    weights = settings.pop("weights", None)
    cfg = FairnessAudit(action=action, group=group, intersect=tuple(intersect), **settings)
    return cfg.run(dataset, policies, weights=weights, random_state=random_state,
                   support_check=support_check, behavior_model=behavior_model,
                   progress=progress, suppress=suppress)
