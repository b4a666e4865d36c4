"""``evaluate``: every estimator, bootstrap intervals, ESS, support and subgroups in one call.

The nuisance models (behaviour model and Q-model) are fitted once on the whole dataset; the
episode-level bootstrap then resamples episodes (fast and vectorised), with the refit of an
LSTD-type Q-model (stationary tabular, linear) linearised into every replicate and the other
nuisance models held fixed. ``refit=True`` refits both inside every replicate through an
executor, a callable ``executor(fn, items)`` that maps ``fn`` over ``items`` (``None``: serial).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data.validate import check_episodes
from equicare.exceptions import DataWarning, InvalidParameterError, SmallCellWarning
from equicare.ope import _ess
from equicare.ope._bootstrap import (
    CI_METHODS,
    CIMethod,
    Estimate,
    Executor,
    Shift,
    bias_aware,
    bootstrap_counts,
    cluster_codes,
    estimate_json,
    estimates_with_ci,
    normal_interval,
    percentile_interval,
    resampled_sums,
    resampling_unit,
    serial_map,
)
from equicare.ope._core import (
    ALL_KEYS,
    ESTIMATOR_KEYS,
    EpisodeParts,
    Normalization,
    OPEInputs,
    episode_parts,
)
from equicare.ope._ess import (
    EffectiveSampleSize,
    WeightSums,
    effective_sample_size,
    preferred,
)
from equicare.ope._fqe import FQEConfig, table_ignored_numeric, varies_within_cells
from equicare.ope._group_check import (
    GroupQCheck,
    biased_groups_message,
    episode_gaps,
    gap_sums,
    needs_own_fit,
    own_prepared,
    plan_checks,
    publish_checks,
    refitted_check,
)
from equicare.ope._prepare import (
    BehaviorSpec,
    Prepared,
    as_fqe_config,
    model_seed,
    prepare,
    q_model_name,
)
from equicare.ope._propensity_check import (
    floored_propensity_message,
    in_sample_weights_message,
)
from equicare.ope._select import QSelection
from equicare.ope._stream_groups import GroupPlan, plan_groups
from equicare.ope._support import (
    LoggedSupport,
    SupportReport,
    logged_support_diagnostics,
    model_support_diagnostics,
)
from equicare.policy._behavior import BehaviorModel
from equicare.policy._deployed import (
    UsualCare,
    as_deployed,
    check_usual_care,
    deferred_share,
    exempt_rows,
    usual_care_settings,
)
from equicare.privacy import small_cells_message, warn_low_min_cell
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    check_dataset,
    check_param,
    check_random_state,
    int_seed,
)

__all__ = ["evaluate", "evaluate_subgroups", "EvaluationResult", "GroupResult",
           "estimates_from_prepared", "parse_estimators", "refit_bootstrap", "bias_aware",
           "refit_effects", "level_seeds", "EVALUATE_EPISODES_WHY"]

#: Why :func:`evaluate` needs 2 or more episodes (``FEW_EPISODES_MESSAGE`` of data.validate).
EVALUATE_EPISODES_WHY = ("its intervals resample episodes and its Q-model is chosen by "
                         "cross-fitting over them")


def parse_estimators(estimators: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"`` (the seven sequential estimators), a comma list or a sequence of keys."""
    if isinstance(estimators, str):
        items = list(ESTIMATOR_KEYS) if estimators.strip() == "all" else [
            e.strip() for e in estimators.split(",") if e.strip()]
    else:
        items = list(estimators)
    expanded: list[str] = []
    for e in items:
        expanded += list(ESTIMATOR_KEYS) if e == "all" else [e]
    bad = [e for e in expanded if e not in ALL_KEYS]
    if bad or not expanded:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="estimators", owner="evaluate",
            expected="'all' or a list of " + ", ".join(repr(k) for k in ALL_KEYS), got=estimators))
    return tuple(dict.fromkeys(expanded))


@dataclass(frozen=True)
class GroupResult:
    """Estimates within one group level (or a suppressed cell).

    Attributes
    ----------
    n_episodes : int
    suppressed : bool
        True when the group has fewer than ``MIN_CELL`` (11) episodes, or would reveal such a
        group by difference (complementary suppression, :mod:`equicare.privacy`): nothing is
        reported.
    estimates : dict of str to Estimate
    behavior : Estimate or None
        Mean observed return of the group's episodes.
    ess : EffectiveSampleSize or None
    q_check : GroupQCheck or None
        DR minus FQE within the level (whether the Q-model is biased there, and whether it was
        refitted on the level's own episodes; :mod:`equicare.ope._group_check`); None without
        FQE and DR, or where DR is not published.
    """

    n_episodes: int
    suppressed: bool
    estimates: dict[str, Estimate] = field(default_factory=dict)
    behavior: Estimate | None = None
    ess: EffectiveSampleSize | None = None
    q_check: GroupQCheck | None = None

    @property
    def pareto_k(self) -> float:
        """The Pareto tail index of the level's trajectory weights (NaN: not estimated)."""
        return float("nan") if self.ess is None else float(self.ess.weight_pareto_k)

    def to_dict(self) -> dict[str, Any]:
        """Contract 3 group entry; ``{"suppressed": true, "n_episodes": null}`` when suppressed.

        The level's ``ess`` carries its weights' Pareto tail index
        (``trajectory_weight_pareto_k``) and, when that is ``null``, why
        (``trajectory_weight_pareto_k_na``, :func:`~equicare.ope._ess.pareto_k_na`).
        """
        if self.suppressed:
            return {"suppressed": True, "n_episodes": None}
        assert self.behavior is not None and self.ess is not None
        ess = self.ess.to_dict()
        na = _ess.pareto_k_na(self.pareto_k, self.n_episodes)
        if na is not None:
            ess["trajectory_weight_pareto_k_na"] = na
        out = {"n_episodes": self.n_episodes,
               "behavior": _est_json(self.behavior, se=True),
               "estimates": {k: _est_json(v) for k, v in self.estimates.items()},
               "ess": ess}
        if self.q_check is not None:
            out["q_check"] = self.q_check.to_dict()
        return out


def _est_json(e: Estimate, se: bool = True) -> dict[str, Any]:
    return estimate_json(e.value, e.ci, e.se if se else None, e.reason)


@dataclass(frozen=True)
class EvaluationResult:
    """Result of :func:`evaluate` (``to_dict()`` is Contract 3 plus ``"support"``).

    Attributes
    ----------
    n_episodes, n_steps : int
    gamma : float
    behavior : Estimate
        Mean observed discounted return (the behaviour policy's on-policy value).
    estimates : dict of str to Estimate
    ess : EffectiveSampleSize
    support : SupportReport or None
    groups : dict of str to dict of str to GroupResult
    settings : dict
        Estimators, models, bootstrap, truncation, propensity source, seed.
    behavior_model : dict or None
        Summary of the fitted behaviour model (floored rows, calibration).
    q_model : dict or None
        Fitting time and solver of the Q-model; with ``auto`` its candidates' scores; the
        tables' ``cell_choice``; ``per_level`` for subgroup columns refitted per level.
    out_of_range : tuple of str
        The estimators whose estimate lies far outside the range of the observed returns
        (further beyond it than the range is wide: the importance weights blowing up, not a
        value; the ``DataWarning`` of :func:`out_of_range_message`). Result JSON
        ``"out_of_range"``; the run report keeps them out of its headline and its figure's
        scale.
    """

    n_episodes: int
    n_steps: int
    gamma: float
    behavior: Estimate
    estimates: dict[str, Estimate]
    ess: EffectiveSampleSize
    support: SupportReport | None
    groups: dict[str, dict[str, GroupResult]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    behavior_model: dict[str, Any] | None = None
    q_model: dict[str, Any] | None = None
    out_of_range: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return the result JSON: Contract 3 plus support, settings and model summaries."""
        return {
            "n_episodes": self.n_episodes, "n_steps": self.n_steps, "gamma": self.gamma,
            "behavior": _est_json(self.behavior),
            "estimates": {k: _est_json(v) for k, v in self.estimates.items()},
            "ess": self.ess.to_dict(),
            "support": None if self.support is None else self.support.to_dict(),
            "groups": {attr: {lv: g.to_dict() for lv, g in levels.items()}
                       for attr, levels in self.groups.items()},
            "settings": self.settings,
            "behavior_model": self.behavior_model,
            "q_model": self._q_model_json(),
            "out_of_range": list(self.out_of_range),
        }

    def _q_model_json(self) -> dict[str, Any] | None:
        """``q_model`` with the estimated bias of each suppressed subgroup level withheld."""
        return withhold_suppressed_bias(self.q_model, {
            (a, lv) for a, levels in self.groups.items() for lv, g in levels.items()
            if g.suppressed})

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row per (group attribute, level, estimator).

        Columns: ``attribute, level, estimator, value, ci_low, ci_high, se, n_episodes,
        suppressed`` (``attribute`` and ``level`` are ``"overall"`` for the whole data).
        """
        rows: list[dict[str, Any]] = []

        def add(attr: str, level: str, ests: dict[str, Estimate], beh: Estimate | None,
                n: int | None, suppressed: bool) -> None:
            items = list(ests.items()) + ([("behavior", beh)] if beh is not None else [])
            if suppressed:
                rows.append({"attribute": attr, "level": level, "estimator": None,
                             "value": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                             "se": np.nan, "n_episodes": None, "suppressed": True})
            for k, e in items:
                rows.append({"attribute": attr, "level": level, "estimator": k, "value": e.value,
                             "ci_low": e.ci[0], "ci_high": e.ci[1], "se": e.se,
                             "n_episodes": n, "suppressed": False})

        add("overall", "overall", self.estimates, self.behavior, self.n_episodes, False)
        for attr, levels in self.groups.items():
            for lv, g in levels.items():
                add(attr, lv, g.estimates, g.behavior, None if g.suppressed else g.n_episodes,
                    g.suppressed)
        return pd.DataFrame(rows, columns=["attribute", "level", "estimator", "value", "ci_low",
                                           "ci_high", "se", "n_episodes", "suppressed"])


# ---------------------------------------------------------------------- shared computation
def _behavior_estimate(inputs: OPEInputs, counts: NDArray[np.float64] | None, n_boot: int,
                       alpha: float, codes: NDArray[np.int64] | None = None) -> Estimate:
    ret = inputs.returns()
    v = float(ret.mean())
    n = ret.size
    if codes is not None:  # people with all their episodes (a cluster bootstrap)
        r_p = np.bincount(codes, weights=ret)
        m_p = np.bincount(codes).astype(np.float64)
        g = r_p.size
        if counts is None or n_boot == 0:
            dev = r_p - m_p * v
            se = float(np.sqrt(g / (g - 1) * np.sum(dev * dev)) / n) if g > 1 else 0.0
            return Estimate(value=v, ci=normal_interval(v, se, alpha), se=se, n_episodes=n)
        reps = counts @ r_p / (counts @ m_p)
        return Estimate(value=v, ci=percentile_interval(reps, alpha),
                        se=float(reps.std(ddof=1)), n_episodes=n)
    if counts is None or n_boot == 0:
        se = float(ret.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        return Estimate(value=v, ci=normal_interval(v, se, alpha), se=se, n_episodes=n)
    reps = counts @ ret / counts.sum(axis=1)
    return Estimate(value=v, ci=percentile_interval(reps, alpha), se=float(reps.std(ddof=1)),
                    n_episodes=n)


def withhold_suppressed_bias(q: dict[str, Any] | None, hidden: set[tuple[str, str]]
                             ) -> dict[str, Any] | None:
    """A result JSON's ``q_model`` with ``group_bias`` of the suppressed levels withheld.

    ``auto``'s per-level bias (``group_bias``, at the top in memory and under ``selection``
    when streamed) is estimated on the level's own episodes, so a level suppressed in
    ``groups`` (``hidden``: fewer than 11 episodes, or revealing one by difference) is
    ``{"suppressed": true}`` there too.
    """
    if not q:
        return q
    out = dict(q)
    gb = q.get("group_bias")
    if gb:
        out["group_bias"] = {a: {lv: {"suppressed": True} if (a, lv) in hidden else v
                                 for lv, v in d.items()} for a, d in gb.items()}
    sel = q.get("selection")
    if isinstance(sel, dict) and sel.get("group_bias"):
        out["selection"] = withhold_suppressed_bias(sel, hidden)
    return out


def estimates_from_prepared(
    prep: Prepared,
    keys: Sequence[str],
    *,
    truncate: float | None = None,
    normalization: Normalization = "absorbing",
    n_boot: int = 1000,
    ci_method: CIMethod = "studentized",
    alpha: float = 0.05,
    random_state: RandomState = None,
    episodes: NDArray[np.int64] | None = None,
    fqe_bias: tuple[float, float] | None = None,
    clusters: NDArray[np.int64] | None = None,
) -> tuple[dict[str, Estimate], Estimate, EffectiveSampleSize]:
    """Estimates, the behaviour value and ESS from prepared inputs (optionally some episodes).

    One bootstrap count matrix is shared by all estimators (and the behaviour value). FQE's
    interval is made bias-aware (:func:`bias_aware`) with ``auto``'s estimated bias: the
    overall one, or for ``episodes`` (a subgroup) ``fqe_bias`` = (bias, standard error).
    ``clusters`` (shape ``(n_episodes,)`` of the whole panel, :func:`cluster_codes`) names each
    episode's person: replicates then draw people with all their episodes, and standard errors
    sum each person's influence (a cluster bootstrap); None resamples episodes.
    """
    inputs = prep.inputs if episodes is None else prep.inputs.subset(episodes)
    main = tuple(k for k in keys if k != "bandit_dr")
    codes = None
    if clusters is not None:
        codes = cluster_codes(clusters if episodes is None else clusters[episodes])
    n_units = inputs.n_episodes if codes is None else int(codes.max()) + 1
    rng = check_random_state(random_state)
    counts = bootstrap_counts(n_units, n_boot, rng) if n_boot > 0 else None
    out: dict[str, Estimate] = {}
    if main:
        parts = episode_parts(inputs, main, truncate=truncate, normalization=normalization)
        shift = None
        if episodes is None and prep.q_linearised:
            parts = _with_q_refit(prep, parts, truncate, normalization)
        elif episodes is not None and prep.q_linearised:
            ep = np.asarray(episodes, dtype=np.int64)
            parts, other = _subgroup_q_refit(prep, parts, ep, truncate, normalization)
            if clusters is not None and other.shape[0] and other.shape[1]:
                mask = np.ones(prep.inputs.n_episodes, dtype=bool)  # the others' people
                mask[ep] = False
                oc = cluster_codes(clusters[mask])
                other = np.stack([np.bincount(oc, weights=c) for c in other.T], axis=1)
            shift = _other_episodes_shift(
                other, [k for k in ("fqe", "dr", "wdr") if k in parts.keys], n_boot, rng)
        if codes is not None:
            parts = parts.by_cluster(codes)
        out.update(estimates_with_ci(parts, n_boot=n_boot, method=ci_method, alpha=alpha,
                                     counts=counts, shift=shift))
    if "bandit_dr" in keys:
        binp = prep.bandit_inputs()
        if episodes is not None:
            binp = binp.subset(episodes)
        bparts = episode_parts(binp, ("bandit_dr",), truncate=truncate)
        if codes is not None:
            bparts = bparts.by_cluster(codes)
        out.update(estimates_with_ci(bparts, n_boot=n_boot, method=ci_method, alpha=alpha,
                                     counts=counts))
    if episodes is None and "fqe" in out and prep.q_selection is not None:
        sel = prep.q_selection
        b, b_se = sel.bias.get(sel.chosen), sel.bias_se.get(sel.chosen)
        if b is not None and b_se is not None:
            out["fqe"] = bias_aware(out["fqe"], b, b_se, alpha)
    elif episodes is not None and "fqe" in out and fqe_bias is not None:
        out["fqe"] = bias_aware(out["fqe"], fqe_bias[0], fqe_bias[1], alpha)
    ordered = {k: out[k] for k in keys}
    return (ordered, _behavior_estimate(inputs, counts, n_boot, alpha, codes),
            effective_sample_size(inputs, truncate))


def evaluate_seeds(random_state: int) -> tuple[int, int, int]:
    """:func:`evaluate`'s seeds: nuisance preparation, bootstrap, refit bootstrap."""
    rng = check_random_state(random_state)
    a, b, c = (int(s) for s in rng.integers(0, 2**31 - 1, size=3))
    return a, b, c


def logged_support_check(dataset: TrajectoryDataset, *, behavior_model: BehaviorSpec = "logistic",
                         random_state: int = 0) -> LoggedSupport | None:
    """The support check :func:`evaluate` builds on a panel with logged propensities.

    Build it once and pass it as ``support_check`` to :func:`evaluate` and
    :func:`~equicare.fairness.audit` of the same ``dataset`` with the same int ``random_state``
    (and ``behavior_model``): each would otherwise fit its own, with the same numbers. None
    without logged propensities (nothing to share: the behaviour model checks support).

    Parameters
    ----------
    dataset : TrajectoryDataset
    behavior_model : {"logistic", "lgbm"}, classifier or BehaviorModel
        As given to :func:`evaluate`.
    random_state : int
        As given to :func:`evaluate`.

    Returns
    -------
    LoggedSupport or None
    """
    if dataset.behavior_prob is None:
        return None
    return LoggedSupport(dataset, behavior_model=behavior_model,
                         random_state=evaluate_seeds(random_state)[0])


def level_seeds(random_state: int, n_cells: int) -> list[int]:
    """The seeds :func:`evaluate` (``random_state``) gives its subgroup levels, in order.

    One per level of every group attribute (suppressed ones included), attributes in order and
    each one's levels sorted as strings: a level's bootstrap and, with ``auto`` and its own
    Q-model, the folds of its estimated FQE bias (:func:`level_fqe_bias`). The streamed
    evaluation draws the same (:func:`~equicare.ope._stream_levels.plan_levels`).
    """
    rng = np.random.default_rng(evaluate_seeds(random_state)[1] + 1)
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n_cells)]


def nuisance_seed(random_state: int) -> int:
    """The seed that :func:`evaluate` (``random_state``) gives its nuisance models.

    The behaviour model's folds and fits, ``auto``'s folds, the cells' choice. The streamed
    evaluation fits them with it too, so that a sample that is the whole panel gives the
    in-memory numbers.
    """
    return model_seed(evaluate_seeds(random_state)[0])


#: ``settings.fqe_interval`` (``q_model["fqe_interval"]`` streamed) when FQE's interval carries no
#: estimate of the Q-model's bias (tests match it).
FQE_VARIANCE_ONLY = (
    "the bootstrap's alone: this Q-model's bias is not estimated (q_model='auto' estimates it by "
    "cross-fitting against the stationary table, which needs categorical states and more than "
    "one applicable candidate; a linear, gbm or mlp model's own Bellman errors average about zero "
    "under its own density ratio), so the interval does not cover the error of a misspecified "
    "Q-model; DR's and WDR's intervals correct it through the importance weights")


def fqe_interval_line() -> str:
    """The terminal line under the table when FQE's interval is :data:`FQE_VARIANCE_ONLY`."""
    return ("FQE's interval is the bootstrap's alone (no estimate of this Q-model's bias): it "
            "does not include a misspecified Q-model's error; DR and WDR correct that error "
            "through the importance weights, with wider intervals (docs/ope.md, \"FQE's interval "
            "without a bias estimate\")")


def fqe_interval_note(sel: QSelection, refitted_levels: bool = True) -> str:
    """How FQE's intervals carry ``auto``'s estimated bias (``settings.fqe_interval``).

    ``refitted_levels``: whether levels refitted with their own policy (in memory only) exist.
    """
    per_level = ("(overall, and per subgroup level with the level's own density ratio"
                 + ("; a level whose Q-model is refitted with its own policy gets that Q-model's "
                    "own cross-fitted bias)" if refitted_levels else ")"))
    return ("bootstrap joined with the bias-aware interval of auto's estimated Q-model bias "
            + (per_level if sel.group_bias else "(overall only)"))


def _refit_row_weights(inputs: OPEInputs, keys: Sequence[str], truncate: float | None,
                       normalization: Normalization
                       ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Row weights of ``V`` and ``Q`` in FQE, DR and WDR, shape ``(n_steps, len(keys))`` each.

    The estimators' gradients in the Q-model's parameters are ``X_pi^T first - X^T logged``
    (:meth:`equicare.ope._lstd.LSTDFit.gradients`).
    """
    n_ep = inputs.n_episodes
    t = inputs.step
    w, disc, w_row, w_prev = inputs.row_weights(truncate)
    first = np.zeros((inputs.n_steps, len(keys)))
    logged = np.zeros_like(first)
    for j, k in enumerate(keys):
        if k == "fqe":
            first[t == 0, j] = 1.0 / n_ep
        elif k == "dr":
            first[:, j] = disc * w_prev / n_ep
            logged[:, j] = disc * w_row / n_ep
        else:  # wdr: per-step self-normalised weights
            den = w if normalization == "absorbing" else w * inputs.alive()
            s_t = den.sum(axis=0)
            den_prev = np.ones_like(den)
            den_prev[:, 1:] = den[:, :-1] if normalization == "absorbing" else (
                w[:, :-1] * inputs.alive()[:, 1:])
            sp_t = den_prev.sum(axis=0)
            first[:, j] = disc * w_prev / np.where(sp_t[t] > 0, sp_t[t], 1.0)
            logged[:, j] = disc * w_row / np.where(s_t[t] > 0, s_t[t], 1.0)
    return first, logged


def _add_to_parts(parts: EpisodeParts, keys: Sequence[str], corr: NDArray[np.float64]
                  ) -> EpisodeParts:
    """Add per-episode terms (``n`` times the effect on the estimate) to the estimators' parts."""
    mat = parts.matrix.copy()
    for j, k in enumerate(keys):
        col = parts.slices[k].start
        if k == "wdr":  # the step-0 residual sum, over the step-0 denominator
            sl = parts.slices[k]
            den0 = mat[:, sl.start + parts.horizon]
            corr_j = corr[:, j] * float(den0.mean())
        else:
            corr_j = corr[:, j]
        mat[:, col] += corr_j
    return EpisodeParts(matrix=mat, slices=parts.slices, keys=parts.keys, horizon=parts.horizon)


def _with_q_refit(prep: Prepared, parts: EpisodeParts, truncate: float | None,
                  normalization: Normalization) -> EpisodeParts:
    """Add the first-order effect of refitting the Q-model to the FQE, DR and WDR parts.

    For the LSTD-type Q-models (stationary tabular, linear) the estimate's sensitivity to each
    episode through the fitted ``theta`` is ``n z^T g_e`` (see :mod:`equicare.ope._lstd`); with
    it in the per-episode parts every bootstrap replicate behaves as if the Q-model had been
    refitted on the replicate (linearised), at the cost of one transposed solve.
    """
    assert prep.qfit is not None and prep.qfit.lstd is not None
    lstd = prep.qfit.lstd
    keys = [k for k in ("fqe", "dr", "wdr") if k in parts.keys]
    if not keys:
        return parts
    first, logged = _refit_row_weights(prep.inputs, keys, truncate, normalization)
    corr = lstd.influence(lstd.gradients(first, logged), prep.inputs.rewards,
                          prep.inputs.episode_offsets)
    return _add_to_parts(parts, keys, corr)


def _subgroup_q_refit(prep: Prepared, parts: EpisodeParts, episodes: NDArray[np.int64],
                      truncate: float | None, normalization: Normalization
                      ) -> tuple[EpisodeParts, NDArray[np.float64]]:
    """A subgroup's share of the Q-model's refit: own terms in the parts, the others' effects.

    The Q-model is fitted on every episode, so refitting it on a bootstrap replicate moves the
    subgroup's FQE, DR and WDR through all of them: by ``sum_e c_e z_G^T g_e`` to first order,
    with ``z_G`` from the subgroup estimate's gradient (:func:`_with_q_refit`). The subgroup's
    own episodes carry their (centred) terms in the parts, studentised with the rest as the
    overall estimate's; the other episodes' effects, shape ``(n_other, k)`` for the FQE, DR and
    WDR keys in ``parts``, are resampled separately (:func:`_other_episodes_shift`: a bootstrap
    stratified by membership). The point estimates do not change.
    """
    keys = [k for k in ("fqe", "dr", "wdr") if k in parts.keys]
    full = prep.inputs
    if not keys:
        return parts, np.zeros((full.n_episodes - episodes.size, 0))
    n = full.n_episodes
    effect = refit_effects(prep, episodes, keys, truncate, normalization)
    own = effect[episodes]
    parts = _add_to_parts(parts, keys, episodes.size * (own - own.mean(axis=0, keepdims=True)))
    mask = np.ones(n, dtype=bool)
    mask[episodes] = False
    return parts, np.asarray(effect[mask])


def refit_effects(prep: Prepared, episodes: NDArray[np.int64], keys: Sequence[str],
                  truncate: float | None = None, normalization: Normalization = "absorbing"
                  ) -> NDArray[np.float64]:
    """Each episode's first-order effect on the estimates over ``episodes`` through the refit.

    The estimators ``keys`` (FQE, DR, WDR) computed over ``episodes`` (a subgroup) move, when
    the LSTD-type Q-model is refitted with episode weights ``c``, by ``sum_e (c_e - 1) effect_e``
    to first order (:func:`_subgroup_q_refit`; the fairness audit's group values use it too).

    Returns
    -------
    ndarray of shape (n_episodes, len(keys))
        Centred over all episodes.
    """
    assert prep.qfit is not None and prep.qfit.lstd is not None
    lstd = prep.qfit.lstd
    full = prep.inputs
    sub = full.subset(episodes)
    f_sub, l_sub = _refit_row_weights(sub, keys, truncate, normalization)
    lengths = np.diff(full.episode_offsets)[episodes]
    rows = (np.repeat(full.episode_offsets[episodes], lengths) + np.arange(int(lengths.sum()))
            - np.repeat(np.cumsum(lengths) - lengths, lengths))
    first = np.zeros((full.n_steps, len(keys)))
    logged = np.zeros_like(first)
    first[rows], logged[rows] = f_sub, l_sub
    return np.asarray(lstd.influence(lstd.gradients(first, logged), full.rewards,
                                     full.episode_offsets) / full.n_episodes)


def _other_episodes_shift(other: NDArray[np.float64], keys: Sequence[str], n_boot: int,
                          random_state: RandomState) -> Shift | None:
    """The other episodes' share of a subgroup's refit as a resampled replicate term.

    ``sum_e (c_e - 1) other_e`` over a multinomial resample of the other episodes, and its
    variance ``sum_e (other_e - mean)^2``.
    """
    if other.shape[0] == 0 or other.shape[1] == 0:
        return None
    centred = other - other.mean(axis=0, keepdims=True)
    variance = {k: float(np.sum(centred[:, j] ** 2)) for j, k in enumerate(keys)}
    reps: dict[str, NDArray[np.float64]] = {}
    if n_boot > 0:
        # counts @ other a block of replicates at a time: a level's other episodes are most
        # of the panel, and 21 levels each made a 480 MB counts matrix on 60,000 episodes
        term = resampled_sums(other, n_boot, random_state) - other.sum(axis=0, keepdims=True)
        reps = {k: np.asarray(term[:, j]) for j, k in enumerate(keys)}
    return Shift(replicates=reps, variance=variance)


def level_fqe_bias(sel: QSelection, dataset: TrajectoryDataset, probs: NDArray[np.float64],
                   episodes: NDArray[np.int64], seed: int) -> tuple[float, float] | None:
    """The estimated FQE bias of a level whose Q-model is refitted with its own policy.

    As ``auto``'s subgroup bias (:func:`~equicare.ope.select_q_model` with ``groups``), for the
    level's Q-model ``Q_l = R + gamma P (pi_l Q_l)``: the chosen candidate fitted with the
    level's policy ``probs`` on each fold's training episodes, its held-out TD errors under that
    policy, weighted by the level's own density ratio (the reference table's adjoint under
    ``pi_l``, started from the level's training episodes). Folds drawn from ``seed``.

    Returns
    -------
    (bias, standard error), or None when no density ratio was available, or when the chosen
    table replaced ``auto``'s choice (``sel.replaced``)
    """
    from equicare.ope._select import AUTO_FOLDS, cross_fit, draw_folds

    if sel.replaced is not None:  # auto's criterion did not score the table that replaced it
        return None
    fold, fit_seed = draw_folds(dataset.n_episodes, AUTO_FOLDS, np.random.default_rng(seed),
                                dataset.members)
    member = np.zeros((dataset.n_episodes, 1), dtype=bool)
    member[np.asarray(episodes, dtype=np.int64)] = True
    ref = sel.reference or sel.chosen
    names = list(dict.fromkeys([ref, sel.chosen]))
    cf = cross_fit(dataset, probs, names, ref, fold, fit_seed, member)
    if not cf.b_sets[sel.chosen].any():
        return None
    return cf.set_bias(sel.chosen, 0)


@dataclass(frozen=True)
class _LevelRefit:
    """Subgroup columns whose levels get their own Q-model.

    Pooled dynamics (the cells of ``prep.cell_choice``), the level's policy
    (:mod:`equicare.ope._levels`).
    """

    columns: tuple[str, ...]
    policy: Any = None


def _group_results(prep: Prepared, dataset: TrajectoryDataset, keys: Sequence[str],
                   plan: GroupPlan, seeds: Sequence[int],
                   refit: _LevelRefit | None = None, **kw: Any
                   ) -> tuple[dict[str, dict[str, GroupResult]], dict[str, Any]]:
    """Every estimator per level of each attribute, and how levels' Q-models were refitted.

    ``plan`` (:func:`~equicare.ope._stream_groups.plan_groups`, as streamed) says which levels
    are published: small ones, those withheld by the caller (:func:`evaluate`'s ``suppress``)
    and their complements are suppressed.
    """
    from equicare.ope._levels import level_prepared, level_target_probs

    out: dict[str, dict[str, GroupResult]] = {}
    info: dict[str, Any] = {}
    small: list[str] = []
    far: list[str] = []
    ranges = _ranges(dataset)
    seed_iter = iter(seeds)
    checked = prep.inputs.q_sa is not None  # a Q-model: its check within each level
    min_cell = plan.min_cell
    for attr in plan.attrs:
        labels = dataset.group_labels(attr)
        levels: dict[str, GroupResult] = {}
        per_level = refit is not None and attr in refit.columns
        sources: set[str] = set()
        backed: dict[str, float] = {}
        hidden = plan.hidden(attr)  # primary (small, withheld) and complementary
        weights: dict[str, WeightSums] = {}
        pooled: dict[str, tuple[Prepared, NDArray[np.int64], int]] = {}
        for lv in np.unique(labels.astype(str)):  # one small vectorised evaluation per level
            ep = np.flatnonzero(labels.astype(str) == lv)
            seed = next(seed_iter)
            if str(lv) in hidden:
                levels[str(lv)] = GroupResult(n_episodes=int(ep.size), suppressed=True)
                small.append(f"{attr}={lv}")
                continue
            use = prep
            sel = prep.q_selection
            gbias = None if sel is None or per_level else sel.group_bias.get(attr, {}).get(
                str(lv))
            if per_level:
                assert refit is not None
                assert prep.cell_choice is not None
                lp = level_target_probs(dataset, prep.target_probs, attr,
                                        prep.cell_choice.columns, ep, str(lv),
                                        policy=refit.policy)
                use = level_prepared(prep, dataset, lp, seed)
                if sel is not None:  # auto: the level's own Q-model's estimated bias
                    gbias = level_fqe_bias(sel, dataset, lp.probs, ep, seed)
                sources.add(lp.source)
                backed[str(lv)] = round(lp.backed_off, 4)
            ests, beh, ess = estimates_from_prepared(use, keys, episodes=ep, random_state=seed,
                                                     fqe_bias=gbias, **kw)
            levels[str(lv)] = GroupResult(n_episodes=int(ep.size), suppressed=False,
                                          estimates=ests, behavior=beh, ess=ess)
            weights[str(lv)] = WeightSums.of(use.inputs.subset(ep), kw.get("truncate"))
            if checked:
                pooled[str(lv)] = (use, ep, seed)
        hide_low_ess(levels, weights, keys, min_cell)
        checks = _level_checks(levels, pooled, dataset=dataset, keys=keys, **kw)
        hide_low_ess(levels, weights, keys, min_cell)  # the refitted levels' too (same weights)
        publish_checks(levels, checks, kw.get("alpha", 0.05))
        far.extend(hide_out_of_range(attr, levels, *ranges))  # after the refits
        out[attr] = levels
        if per_level:
            info[attr] = {"q_model": "refitted per level: pooled dynamics, the level's policy",
                          "policy": "counterfactual" if sources == {"counterfactual"}
                          else "empirical", "backed_off": backed}
    if small:
        warnings.warn(small_cells_message(small, min_cell), SmallCellWarning, stacklevel=3)
    warn_groups_out_of_range(far, stacklevel=4)
    biased = biased_groups_message(out, prep.q_name)
    if biased is not None:  # a Q-model right overall, wrong within some groups: said once
        warnings.warn(biased, DataWarning, stacklevel=3)
    _ess.warn_low_ess(_ess.heavy_tail_groups(out, keys), stacklevel=3)  # a group's heavy tail
    return out, info


def _ranges(dataset: TrajectoryDataset
            ) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The panel's (returns, rewards) ranges, or None without steps."""
    if not dataset.n_steps:
        return None, None
    ret = dataset.returns()
    return ((float(ret.min()), float(ret.max())),
            (float(dataset.rewards.min()), float(dataset.rewards.max())))


#: The reason a subgroup estimate far outside the returns is not published (result JSON).
MSG_GROUP_OUT_OF_RANGE = (
    "not published: the estimate lies far outside the range of the observed returns (further "
    "beyond it than the range is wide, or on the side of 0 no policy's value can reach when "
    "every reward has one sign): the importance weights are extreme")


def hide_out_of_range(attr: str, levels: dict[str, Any],
                      returns_range: tuple[float, float] | None,
                      rewards_range: tuple[float, float] | None) -> list[str]:
    """Replace, in place, the subgroup estimates far outside the returns by undefined ones.

    The overall estimates are checked by :func:`far_outside` and named in ``out_of_range``; a
    level's DR of +17 on a panel of penalties (every reward <= 0, the whole panel's DR +3.2)
    was published in the result JSON beside them. A level's estimate is judged against the
    whole panel's ranges (which hold every level's), in memory and streamed alike. Returns the
    ``"attr=level (estimators)"`` replaced, for :func:`warn_groups_out_of_range`.
    """
    said = []
    for lv, g in levels.items():
        if g.suppressed:
            continue
        bad = [k for k, e in g.estimates.items()
               if e.reason is None and far_outside(e.value, returns_range, rewards_range)]
        for k in bad:
            e = g.estimates[k]
            g.estimates[k] = (Estimate.undefined(e.n_episodes, MSG_GROUP_OUT_OF_RANGE)
                              if isinstance(e, Estimate) else e.undefined(MSG_GROUP_OUT_OF_RANGE))
        if bad:
            said.append(f"{attr}={lv} ({', '.join(bad)})")
    return said


def warn_groups_out_of_range(cells: Sequence[str], stacklevel: int = 3) -> None:
    """One ``DataWarning`` naming the subgroup estimates :func:`hide_out_of_range` withheld."""
    if cells:
        warnings.warn(
            f"subgroup estimates far outside the range of the observed returns (or on the side "
            f"of 0 no policy's value can reach) are not published: {'; '.join(cells)} (n/a, "
            "with the reason in the result JSON); the importance weights are extreme there.",
            DataWarning, stacklevel=stacklevel)


def _level_checks(levels: dict[str, GroupResult],
                  pooled: Mapping[str, tuple[Prepared, NDArray[np.int64], int]], *,
                  dataset: TrajectoryDataset, keys: Sequence[str], **kw: Any
                  ) -> dict[str, GroupQCheck]:
    """One attribute's Q-model checks; a tabular or linear one refitted where a level stands out.

    ``pooled`` maps each published level to the prepared inputs its estimates used, its
    episodes and seed. A refit (:func:`~equicare.ope._group_check.own_prepared`) replaces the
    level's FQE, DR and WDR in ``levels`` (in place). Returns the check of the Q-model each
    level's estimates use.
    """
    from equicare.ope._levels import refits_per_level

    trunc = kw.get("truncate")

    def sums(inputs: Any) -> NDArray[np.float64] | None:
        gaps = episode_gaps(inputs, trunc)
        return None if gaps is None else gap_sums(gaps)

    checks = plan_checks({lv: sums(use.inputs.subset(ep)) for lv, (use, ep, _) in pooled.items()},
                         {lv: int(ep.size) for lv, (_, ep, _) in pooled.items()})
    q_keys = [k for k in keys if k in ("fqe", "dr", "wdr")]
    for lv, chk in checks.items():
        use, ep, seed = pooled[lv]
        if not needs_own_fit(chk, refits_per_level(use)):
            continue
        own = own_prepared(use, dataset, ep, seed)
        own_kw = kw if kw.get("clusters") is None else {**kw, "clusters": kw["clusters"][ep]}
        ests, _, _ = estimates_from_prepared(own, q_keys, random_state=seed, **own_kw)
        levels[lv] = replace(levels[lv], estimates={**levels[lv].estimates, **ests})
        checks[lv] = refitted_check(sums(own.inputs), int(ep.size), chk)
    return checks


def hide_low_ess(levels: dict[str, Any], weights: dict[str, WeightSums], keys: Sequence[str],
                 min_cell: int = MIN_CELL) -> None:
    """Replace, in place, the weighted estimates of low-ESS levels by undefined ones.

    ``levels`` maps a level to its :class:`GroupResult` (or streamed ``StreamGroup``) and
    ``weights`` the published levels to their summed weights. A level whose estimator's weights
    have an effective sample size below ``min_cell`` (or that would reveal such a level by
    difference) gets that estimate as NaN with the reason
    (:func:`~equicare.ope._ess.low_ess_groups`); an estimate already undefined keeps its reason.
    """
    for k, cells in _ess.low_ess_groups(weights, keys, min_cell).items():
        for lv, why in cells.items():
            e = levels[lv].estimates.get(k)
            if e is None or e.reason is not None:
                continue
            levels[lv].estimates[k] = (Estimate.undefined(e.n_episodes, why)
                                       if isinstance(e, Estimate) else e.undefined(why))


# ---------------------------------------------------------------------- refit bootstrap
def _refit_replicate(item: tuple[NDArray[np.int64], int], *, dataset: TrajectoryDataset,
                     target_probs: NDArray[np.float64], keys: tuple[str, ...],
                     settings: dict[str, Any]) -> dict[str, float]:
    """Point estimates on one bootstrap resample with the nuisance models refitted."""
    episodes, seed = item
    sub = dataset.subset(episodes)
    lengths = dataset.episode_lengths[episodes]
    rows = (np.repeat(dataset.episode_offsets[episodes], lengths)
            + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    q = settings.get("q")
    spec = settings["behavior_model"]
    if isinstance(spec, BehaviorModel):  # a fresh, unfitted copy in every replicate
        from sklearn.base import clone

        spec = clone(spec)
    prep = prepare(sub, target_probs[rows], keys=keys, behavior_prob=None,
                   behavior_model=spec, q=None if q is None else q[rows],
                   q_model=settings["q_model"], random_state=seed,
                   deferred=None if settings.get("deferred") is None
                   else settings["deferred"][rows])
    ests, _, _ = estimates_from_prepared(prep, keys, truncate=settings["truncate"],
                                         normalization=settings["normalization"], n_boot=0)
    return {k: e.value for k, e in ests.items()}


def refit_bootstrap(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
                    keys: tuple[str, ...], *, n_boot: int, settings: dict[str, Any],
                    random_state: RandomState, executor: Executor | None = None
                    ) -> dict[str, NDArray[np.float64]]:
    """Bootstrap replicates with the behaviour and Q-models refitted in every replicate.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    keys : tuple of str
    n_boot : int
    settings : dict
        ``behavior_model``, ``q_model``, ``truncate``, ``normalization``, and optionally
        ``deferred`` (rows left to the clinicians: behaviour probability 1 in every replicate).
    random_state : int, Generator or None
    executor : callable, optional
        ``executor(fn, items)`` -> iterable of results (default: serial map).

    Returns
    -------
    dict of str to ndarray of shape (n_boot,)
        Replicates of episodes drawn with replacement, or of people (each with all their
        episodes) when ``dataset.members`` names them.
    """
    rng = check_random_state(random_state)
    n = dataset.n_episodes
    if dataset.members is None:
        items = [(rng.integers(0, n, size=n), int(rng.integers(2**31 - 1)))
                 for _ in range(n_boot)]
    else:  # people who re-enrol: draw people, each with all their episodes
        codes = cluster_codes(dataset.members)
        n_people = int(codes.max()) + 1
        items = [(np.repeat(np.arange(n), np.bincount(rng.integers(0, n_people, size=n_people),
                                                      minlength=n_people)[codes]),
                  int(rng.integers(2**31 - 1))) for _ in range(n_boot)]
    fn = functools.partial(_refit_replicate, dataset=dataset, target_probs=target_probs,
                           keys=keys, settings=settings)
    results = list((executor or serial_map)(fn, items))
    return {k: np.array([r[k] for r in results]) for k in keys}


# ---------------------------------------------------------------------- public entry points
def evaluate(
    dataset: TrajectoryDataset,
    policy: Any,
    *,
    estimators: str | Sequence[str] = "all",
    q_model: str | FQEConfig = "auto",
    behavior_model: BehaviorSpec = "logistic",
    behavior_prob: NDArray[np.float64] | None = None,
    q: NDArray[np.float64] | None = None,
    bootstrap: int = 1000,
    ci_method: CIMethod = "studentized",
    alpha: float = 0.05,
    truncate: float | None = None,
    normalization: Normalization = "absorbing",
    groups: Sequence[str] | None = None,
    support_threshold: float = 1e-3,
    diagnose_support: bool = True,
    refit: bool = False,
    executor: Executor | None = None,
    random_state: RandomState = 0,
    n_boot: int | None = None,
    progress: bool = False,
    support_check: LoggedSupport | None = None,
    usual_care: UsualCare = "deployed",
    suppress: Mapping[str, Collection[str]] | None = None,
) -> EvaluationResult:
    """Evaluate a target policy on logged data with every estimator.

    Parameters
    ----------
    dataset : TrajectoryDataset
    policy : Policy or array-like of shape (n_steps, n_actions)
    estimators : "all", comma list or sequence of str
        Among ``is, wis, pdis, wpdis, fqe, dr, wdr`` (``"all"``) and ``bandit_dr``.
    q_model : str or FQEConfig, default="auto"
        ``"auto"`` chooses among ``tabular_stationary``, ``tabular_backward``, ``linear``,
        ``gbm`` and ``mlp`` by cross-fitting (:func:`~equicare.ope.select_q_model`; every
        candidate's score is in ``q_model`` of the result); or one of those names, ``"tabular"``
        (per-step), or an FQEConfig. For ``tabular_stationary`` and ``linear`` the bootstrap
        includes the Q-model's refit (linearised, see :mod:`equicare.ope._lstd`).
    behavior_model : {"logistic", "lgbm"}, classifier or BehaviorModel
        Always fitted (support diagnostics); its cross-fitted propensities are used in the weights
        when the data has none logged and ``behavior_prob`` is not given.
    behavior_prob : ndarray of shape (n_steps,), optional
        Propensities of the logged actions overriding the dataset's.
    q : ndarray of shape (n_steps, n_actions), optional
        A Q matrix of the target policy (skips FQE).
    bootstrap : int, default=1000
        Episode-level bootstrap replicates (0: jackknife normal intervals).
    ci_method : {"studentized", "percentile", "bca"}, default="studentized"
        ``"studentized"``: symmetric bootstrap-t, each replicate studentised by its own
        delta-method standard error (wider and better-covering than percentile with
        heavy-tailed importance weights; docs/ope.md has the coverage measured on the Garnet
        test bed). The behaviour value's interval is always percentile.
    alpha : float
    truncate : float, optional
        Cap on the cumulative importance weights.
    normalization : {"absorbing", "alive"}
        Denominators of WPDIS/WDR with variable-length episodes (see ``episode_parts``).
    groups : sequence of str, optional
        Group attributes to evaluate within (default: all of the dataset's). Within a level,
        the intervals of an LSTD-type Q-model carry its refit on every episode. A level of a
        categorical state column that the tables pool over and the target policy reads gets
        its own Q-model (pooled dynamics, the level's policy; ``q_model["per_level"]``).
    support_threshold : float
        Estimated behaviour probability below which an action counts as unsupported.
    diagnose_support : bool, default=True
        Fit the behaviour model and report support even when propensities are logged or given
        (the default; ``False`` skips both when the propensities are known, e.g. for repeated
        validation-time evaluations, and ``support`` is then None).
    refit : bool
        Refit the nuisance models in every bootstrap replicate (slow; via ``executor``).
    executor : callable, optional
        ``executor(fn, items)`` used when ``refit`` is set (default: serial map).
    random_state : int, Generator or None, default=0
        Seed of everything random (folds, models, bootstrap). An int (or NumPy integer) is the
        seed; a Generator draws the seed once (and advances), ``None`` draws it from fresh OS
        entropy. The seed used is ``settings["random_state"]`` of the result (pass it back to
        reproduce the numbers).
    n_boot : int, optional
        Alias of ``bootstrap`` (takes precedence when given).
    progress : bool
        Print one line per stage (behaviour model, Q-model, bootstrap, groups) on stderr.
    support_check : LoggedSupport, optional
        The logged-propensity support check to use (:func:`logged_support_check`, shared with
        :func:`~equicare.fairness.audit` of the same panel): used when it is the one this call
        would build on ``dataset`` (same object, seed and fast model), else ignored, so it never
        changes a number.
    usual_care : {"deployed", "stored"}, default="deployed"
        How rows that a policy leaves to current practice (``policy.deferred_rows``: exception
        rules' "otherwise, as current practice") are valued: as deployed, the clinicians decide
        there, so those rows keep their logged action with target and behaviour probability 1
        (no propensity needed, none of their mass unsupported;
        :mod:`equicare.policy._deployed`); ``"stored"`` values the estimate of practice stored
        with the policy (what ``action_probs`` and ``predict`` give). Result
        ``settings["usual_care"]`` (None for a policy that defers no row) and
        ``settings["deferred_share"]`` (share of rows left to practice).
    suppress : mapping of str to collection of str, optional
        Group levels to suppress whatever their size, by attribute (``{"race": {"asian"}}``):
        cells that other published tables would reveal by difference, e.g. held-out levels
        whose training complement is small (:func:`equicare.privacy.split_withheld`, which
        ``equicare run`` applies). They are reported as suppressed like small levels, and
        complementary suppression completes them (:func:`equicare.privacy.suppressed_cells`).
        An attribute that is not evaluated is an error.

    Returns
    -------
    EvaluationResult

    Warns
    -----
    SupportWarning
        When more than 1% of the target policy's mass is on unsupported actions.
    SmallCellWarning
        When a group level has fewer than 11 episodes (suppressed).
    LowESSWarning
        Once, when the overall ``is``, ``wis``, ``pdis`` or ``wpdis`` value rests on fewer
        than 11 episodes' worth of importance weight (the ESS of the weights it averages
        with, truncated ones with ``truncate``; docs/ope.md, "Subgroups").
    """
    check_dataset(dataset, "evaluate")
    check_episodes(dataset, 2, "evaluate", EVALUATE_EPISODES_WHY)
    from threadpoolctl import threadpool_limits

    # BLAS/OpenMP threads: one for the small solves and products of a typical panel (threads
    # cost more than they save there and oversubscribe shared hosts); the library default above
    with threadpool_limits(limits=_thread_limit(dataset)):
        return _evaluate(
            dataset, policy, estimators=estimators, q_model=q_model,
            behavior_model=behavior_model, behavior_prob=behavior_prob, q=q, bootstrap=bootstrap,
            ci_method=ci_method, alpha=alpha, truncate=truncate, normalization=normalization,
            groups=groups, support_threshold=support_threshold,
            diagnose_support=diagnose_support, refit=refit, executor=executor,
            random_state=random_state, n_boot=n_boot, progress=progress,
            support_check=support_check, usual_care=usual_care, suppress=suppress)


def _spec_name(behavior_model: Any) -> str:
    """``"logistic"``, ``"lgbm"`` (also of a BehaviorModel naming it), else the class name."""
    if isinstance(behavior_model, str):
        return behavior_model
    est = getattr(behavior_model, "estimator", None)
    if isinstance(behavior_model, BehaviorModel) and isinstance(est, str):
        return est
    return type(behavior_model).__name__


#: ``n_steps * n_actions`` up to which :func:`evaluate` runs BLAS/OpenMP single-threaded.
SINGLE_THREAD_CELLS = 20_000_000


def _thread_limit(dataset: TrajectoryDataset) -> int | None:
    """1 thread for problems up to :data:`SINGLE_THREAD_CELLS`, else the libraries' default."""
    return 1 if dataset.n_steps * dataset.n_actions <= SINGLE_THREAD_CELLS else None


def _evaluate(
    dataset: TrajectoryDataset,
    policy: Any,
    *,
    estimators: str | Sequence[str],
    q_model: str | FQEConfig,
    behavior_model: BehaviorSpec,
    behavior_prob: NDArray[np.float64] | None,
    q: NDArray[np.float64] | None,
    bootstrap: int,
    ci_method: CIMethod,
    alpha: float,
    truncate: float | None,
    normalization: Normalization,
    groups: Sequence[str] | None,
    support_threshold: float,
    diagnose_support: bool,
    refit: bool,
    executor: Executor | None,
    random_state: RandomState,
    n_boot: int | None,
    progress: bool,
    support_check: LoggedSupport | None,
    usual_care: UsualCare,
    suppress: Mapping[str, Collection[str]] | None,
) -> EvaluationResult:
    keys = parse_estimators(estimators)
    usual_care = check_usual_care(usual_care, "evaluate")
    policy = as_deployed(policy, usual_care)
    if n_boot is not None:
        bootstrap = n_boot
    check_param(bootstrap, "bootstrap", "evaluate", kind=int, low=0)

    from equicare._progress import Stages

    say = Stages("evaluate", progress)

    random_state = int_seed(random_state, "evaluate")
    check_param(ci_method, "ci_method", "evaluate", choices=CI_METHODS)
    # the numbers the estimators use, checked before any model is fitted (an int is a number)
    number = (int, float, np.integer, np.floating)
    alpha = float(check_param(alpha, "alpha", "evaluate", kind=number, low=0.0, high=1.0,
                              low_inclusive=False, high_inclusive=False,
                              expected="a float in (0, 1)"))
    check_param(truncate, "truncate", "evaluate", kind=number, low=0.0, low_inclusive=False,
                allow_none=True, expected="a positive float or None")
    truncate = None if truncate is None else float(truncate)
    qcfg = as_fqe_config(q_model)
    seed_prep, seed_boot, seed_refit = evaluate_seeds(random_state)
    qname = q_model_name(qcfg)
    say(f"{dataset.n_episodes} episodes, {dataset.n_steps} steps: fitting the nuisance models "
        f"(Q-model {qname})")
    attrs = list(dataset.group_attrs if groups is None else groups)
    # levels of fewer than 11 people (members who re-enrol) are withheld like small ones
    few = {a: v for a, v in dataset.few_member_levels().items() if a in attrs}
    if few:
        suppress = {a: {*(suppress or {}).get(a, ()), *few.get(a, ())}
                    for a in dict.fromkeys([*(suppress or {}), *few])}
    plan = plan_groups(dataset.groups, attrs, MIN_CELL, withheld=suppress)  # as streamed
    prep = prepare(dataset, policy, keys=keys, behavior_prob=behavior_prob,
                   behavior_model=behavior_model, q=q, q_model=qcfg, random_state=seed_prep,
                   groups=attrs)
    say(f"estimators {', '.join(keys)} with {bootstrap} bootstrap replicates")
    bm = prep.behavior_model
    support = None
    bm_summary = None if bm is None else bm.summary()
    checked = exempt_rows(prep.target_probs, prep.deferred)  # the clinicians' rows: supported
    if bm is not None:
        support = model_support_diagnostics(dataset, checked, bm,
                                            threshold=support_threshold, estimators=keys)
    if bm is not None and prep.propensity_source == "estimated":
        floored = floored_propensity_message(bm, dataset, tuple(keys), exempt=prep.deferred)
        if floored is not None:
            warnings.warn(floored, DataWarning, stacklevel=3)
        if bm_summary is not None:  # the result JSON and the run report say it too
            bm_summary = {**bm_summary, "floored_warning": floored}
    elif diagnose_support:  # propensities known: empirical cell support + a fast numeric model
        support, bm_summary = logged_support_diagnostics(
            dataset, checked, behavior_model=behavior_model,
            threshold=support_threshold, estimators=keys, random_state=seed_prep,
            checker=support_check)
    kw: dict[str, Any] = {"truncate": truncate, "normalization": normalization,
                          "n_boot": bootstrap, "ci_method": ci_method, "alpha": alpha}
    if dataset.members is not None:  # people re-enrol: resample people, not episodes
        kw["clusters"] = np.asarray(dataset.members)
    ests, beh, ess = estimates_from_prepared(prep, keys, random_state=seed_boot, **kw)
    if bm is not None and prep.propensity_source == "estimated":
        # in-sample propensities: plain IS / PDIS (and WPDIS over episodes of different
        # lengths) biased (their weights average below 1: the untruncated weights' mean)
        in_sample = in_sample_weights_message(bm_summary, tuple(keys), ess.weight_mean,
                                              dataset.n_episodes, dataset.n_steps,
                                              int(dataset.episode_lengths.max(initial=0)))
        if in_sample is not None:
            warnings.warn(in_sample, DataWarning, stacklevel=3)
        if bm_summary is not None:
            bm_summary = {**bm_summary, "mean_trajectory_weight": ess.weight_mean,
                          "in_sample_warning": in_sample}
    far = _warn_out_of_range(ests, dataset.returns(), ess, prep.propensity_source,
                             dataset.rewards)
    settings: dict[str, Any] = {
        "estimators": list(keys),
        "q_model": ("given" if q is not None else qcfg if isinstance(qcfg, str)
                    else qcfg.to_dict()),
        "behavior_model": _spec_name(behavior_model),
        "propensity_source": prep.propensity_source, "bootstrap": bootstrap,
        "ci_method": ci_method, "alpha": alpha, "truncate": truncate,
        "normalization": normalization, "refit": refit, "random_state": random_state,
        "resampling": resampling_unit(dataset.members),
        "nuisance": ("refit per replicate" if refit else
                     "Q-model refit linearised in every replicate" if prep.q_linearised
                     else "fitted once on all episodes"),
        **usual_care_settings(usual_care, deferred_share(policy, dataset))}
    sel = prep.q_selection
    if "fqe" in keys and sel is not None and sel.bias.get(sel.chosen) is not None and not refit:
        settings["fqe_interval"] = fqe_interval_note(sel)
    elif "fqe" in keys:
        settings["fqe_interval"] = FQE_VARIANCE_ONLY
    if refit and bootstrap > 0:
        from sklearn.base import clone

        spec = clone(behavior_model) if isinstance(behavior_model, BehaviorModel) else (
            behavior_model)
        data = dataset if behavior_prob is None else dataset.with_behavior_prob(
            prep.behavior_prob)
        reps = refit_bootstrap(data, prep.target_probs, keys, n_boot=bootstrap,
                               settings={"behavior_model": spec, "q_model": qcfg, "q": q,
                                         "truncate": truncate, "normalization": normalization,
                                         "deferred": prep.deferred},
                               random_state=seed_refit, executor=executor)
        ests = {k: e if e.reason is not None else Estimate(
                    value=e.value, ci=percentile_interval(reps[k], alpha),
                    se=float(reps[k].std(ddof=1)), n_episodes=e.n_episodes)
                for k, e in ests.items()}
    if attrs:
        say(f"subgroups: {', '.join(attrs)}")
    read_pooled, level_refit = _pooled_columns_read(prep, dataset, attrs, policy)
    if level_refit is not None:
        say(f"subgroups by {', '.join(level_refit.columns)}: the Q-model refitted per level "
            "(pooled dynamics, the level's policy)")
    n_cells = sum(np.unique(dataset.group_labels(a).astype(str)).size for a in attrs)
    group_out, per_level = _group_results(
        prep, dataset, keys, plan, level_seeds(random_state, n_cells),
        level_refit, **kw) if plan is not None else ({}, {})
    q_info = None if prep.qfit is None else {"seconds": prep.qfit.seconds, **prep.qfit.info}
    if q_info is not None and prep.q_selection is not None:
        q_info.update(prep.q_selection.to_dict())
    elif q_info is not None:
        q_info["chosen"] = "given" if q is not None else (prep.q_name or q_model_name(qcfg))
    if q_info is not None:  # a table's cells leave the numeric states out: said on screen
        ignored = table_ignored_numeric(q_info.get("chosen"), dataset.state_names,
                                        varies_within_cells(dataset, q_info.get("chosen"),
                                                            prep.table_cells))
        if ignored:
            q_info["ignored_numeric"] = ignored
    if q_info is not None and prep.cell_choice is not None:
        q_info["cell_choice"] = {**prep.cell_choice.to_dict(), "target_reads": read_pooled}
        if per_level:
            q_info["per_level"] = per_level
    check = None if q_info is None else prep.censoring_report(dataset)
    if check is not None and q_info is not None:  # censored stays: both tables' values
        q_info["censoring"] = check.to_dict()
        if check.switched:
            say(f"Q-model: {check.switch_note()}")
        elif check.warn:
            warnings.warn(check.message(), DataWarning, stacklevel=3)
    # the overall value is published even on thin weight (groups' are withheld): said once
    _ess.warn_low_ess(_ess.overall_low_ess_message(
        ests, ess, logged=dataset.behavior_prob is not None, unusable=far), stacklevel=3)
    return EvaluationResult(
        n_episodes=dataset.n_episodes, n_steps=dataset.n_steps, gamma=float(dataset.gamma),
        behavior=beh, estimates=ests, ess=ess, support=support, groups=group_out,
        settings=settings, behavior_model=bm_summary, q_model=q_info, out_of_range=far)


#: How far (a share of the returns' range) an estimate may lie on the wrong side of 0 when every
#: reward has one sign: no policy's value can be there, but a noisy estimate of a value near 0
#: may cross it by a little.
SIGN_TOLERANCE = 0.1


def wrong_sign(value: float, returns_range: tuple[float, float] | None,
               rewards_range: tuple[float, float] | None) -> bool:
    """Whether an estimate lies on the side of 0 that no policy's value can reach.

    A value is an expectation of sums of rewards: when every reward of the panel is <= 0 (a
    relapse or ED-visit count as a penalty) no policy is worth more than 0, and when every one is
    >= 0 none is worth less. An estimate beyond 0 by more than :data:`SIGN_TOLERANCE` of the
    returns' range (a DR of +3.2 on a panel of penalties whose returns span 16) is the importance
    weights blowing up, however wide its interval. False without both ranges or for a
    non-finite value.
    """
    if returns_range is None or rewards_range is None or not np.isfinite(value):
        return False
    lo, hi = returns_range
    tol = SIGN_TOLERANCE * max(hi - lo, 1e-12)
    r_lo, r_hi = rewards_range
    return bool((r_hi <= 0 and value > tol) or (r_lo >= 0 and value < -tol))


def far_outside(value: float, returns_range: tuple[float, float] | None,
                rewards_range: tuple[float, float] | None = None) -> bool:
    """Whether an estimate lies further beyond the returns' range than the range is wide.

    The importance weights blowing up, not a value (:func:`out_of_range_message`). With the
    rewards' range (smallest, largest reward) an estimate on the side of 0 no policy can reach
    is far outside too (:func:`wrong_sign`). False for a non-finite value or no range.
    """
    if returns_range is None or not np.isfinite(value):
        return False
    lo, hi = returns_range
    span = max(hi - lo, 1e-12)
    return (not lo - span <= value <= hi + span) or wrong_sign(value, returns_range,
                                                              rewards_range)


#: The estimators whose value headlines a result (run report, policy card), in order.
HEADLINE_ESTIMATORS = ("dr", "wdr", "fqe")


def headline_of(computed: Iterable[str], out_of_range: Iterable[str] = ()) -> str | None:
    """The first of :data:`HEADLINE_ESTIMATORS` computed and not far outside the returns."""
    have, far = set(computed), set(out_of_range)
    return next((k for k in HEADLINE_ESTIMATORS if k in have and k not in far), None)


def far_outside_returns(ests: Mapping[str, Any], returns_range: tuple[float, float],
                        rewards_range: tuple[float, float] | None = None) -> tuple[str, ...]:
    """The estimators whose ``value`` lies far outside the returns (:func:`far_outside`)."""
    return tuple(k for k, e in ests.items() if far_outside(e.value, returns_range, rewards_range))


def _warn_out_of_range(ests: dict[str, Estimate], returns: NDArray[np.float64],
                       ess: Any, propensity_source: str = "estimated",
                       rewards: NDArray[np.float64] | None = None) -> tuple[str, ...]:
    """Warn when an estimate lies far outside the range of the observed returns.

    A policy's value is an average of returns; an estimate more than the returns' whole span
    beyond them (DR of 1.2e7 on a panel whose returns lie in [0, 1], with estimated propensities
    near 0) is the importance weights blowing up, not a value. ``DataWarning``. Logging the
    propensities is suggested only when they were estimated (``propensity_source``). With the
    steps' ``rewards``, an estimate on the side of 0 no policy can reach is named too
    (:func:`wrong_sign`). Returns those estimators (:func:`far_outside_returns`).
    """
    if returns.size == 0:
        return ()
    span = (float(returns.min()), float(returns.max()))
    r_span = None if rewards is None or not rewards.size else (float(rewards.min()),
                                                               float(rewards.max()))
    msg = out_of_range_message(ests, span, getattr(ess, "trajectory", None), propensity_source,
                               r_span)
    if msg is not None:
        warnings.warn(msg, DataWarning, stacklevel=3)
    return far_outside_returns(ests, span, r_span)


#: The estimators the out-of-range warning recommends, in order (the first two usable ones).
OUT_OF_RANGE_PREFERRED = ("fqe", "wdr", "dr")


def out_of_range_message(ests: Mapping[str, Any], returns_range: tuple[float, float],
                         n_eff: Any, propensity_source: str = "estimated",
                         rewards_range: tuple[float, float] | None = None) -> str | None:
    """The out-of-range warning's text (:func:`_warn_out_of_range`), or None when in range.

    ``returns_range`` is the observed returns' ``(min, max)`` (a streamed evaluation sums it
    chunk by chunk), ``n_eff`` the trajectory ESS (a number, else not said). The estimates
    need only a ``value``. ``rewards_range`` (smallest and largest reward of a step) adds the
    estimates on the side of 0 no policy can reach (:func:`wrong_sign`).
    """
    far = far_outside_returns(ests, returns_range, rewards_range)
    bad = [f"{k} {ests[k].value:.4g}" for k in far]
    if not bad:
        return None
    signed = [k for k in far if wrong_sign(ests[k].value, returns_range, rewards_range)]
    # never the estimators just found out of range (a DR of 1.3e4 beside "prefer ... DR")
    prefer = " or ".join(k.upper() for k in preferred(OUT_OF_RANGE_PREFERRED, far))
    # the range's ends are not printed: they are single members' returns, and the message is
    # copied into published files (the policy card's caveats)
    side = "" if not signed else (
        f", or, for {', '.join(signed)}, on the side of 0 where no policy's value can be: "
        f"every reward of the panel is "
        f"{'<= 0' if rewards_range is not None and rewards_range[1] <= 0 else '>= 0'}")
    return (f"{', '.join(bad)} lie{'s' if len(bad) == 1 else ''} far outside the range of the "
            "observed returns (further beyond it than the range is wide" + side + "): the "
            "importance weights are extreme"
            + (f" (trajectory ESS {n_eff:.1f})" if isinstance(n_eff, float | int) else "")
            + ". Do not use them; truncate the weights (--truncate)"
            + ((f", prefer {prefer}," if prefer else "")
               + " or log the propensities instead of estimating them."
               if propensity_source == "estimated"
               else (f" or prefer {prefer}." if prefer else ".")))


def _pooled_columns_read(prep: Prepared, dataset: TrajectoryDataset, attrs: Sequence[str],
                         policy: Any) -> tuple[list[str], _LevelRefit | None]:
    """Subgroup columns that the tables pool over and the target policy reads, and their refit.

    Pooling over a column that does not change the dynamics keeps the overall estimates right
    (the pooled values' errors cancel over the column's levels), not the estimates within its
    levels when the target policy reads it. Those levels get their own Q-model, fitted on all
    rows with the level's policy (:mod:`equicare.ope._levels`); a gbm or mlp Q-model is not
    refitted, and the estimates within the levels are then warned about (``DataWarning``).
    """
    from equicare.data._cells import policy_reads
    from equicare.ope._levels import refits_per_level

    choice = prep.cell_choice
    if choice is None or not choice.dropped:
        return [], None
    kept = choice.columns  # (binned numeric states among them are not categorical columns)
    kept_cat = tuple(c for c in kept if c in dataset.categorical_names)
    read = [c for c in choice.dropped
            if c in attrs and policy_reads(dataset, prep.target_probs, c, kept_cat)]
    if not read:
        return [], None
    if refits_per_level(prep):
        return read, _LevelRefit(columns=tuple(read), policy=policy)
    cols = ", ".join(read)
    warnings.warn(
        f"The Q-model pools over {cols} (it does not change the dynamics given "
        f"{', '.join(kept)}), but the target policy reads {cols}: the overall FQE, DR and "
        f"WDR average over its levels, while the estimates within each level of {cols} "
        f"carry the pooled values' error, and the {prep.q_name} Q-model is not refitted per "
        "level (docs/ope.md, 'Several categorical columns'). For values within its levels use "
        "a tabular or linear Q-model (--q-model tabular_stationary), or name the cells: "
        f"--q-cells {','.join((*kept, *read))}.", DataWarning, stacklevel=3)
    return read, None


def evaluate_subgroups(
    dataset: TrajectoryDataset,
    policy: Any,
    *,
    attrs: Sequence[str] | None = None,
    estimators: str | Sequence[str] = "all",
    q_model: str | FQEConfig = "auto",
    behavior_model: BehaviorSpec = "logistic",
    behavior_prob: NDArray[np.float64] | None = None,
    q: NDArray[np.float64] | None = None,
    bootstrap: int = 1000,
    ci_method: CIMethod = "studentized",
    alpha: float = 0.05,
    truncate: float | None = None,
    normalization: Normalization = "absorbing",
    min_cell: int = MIN_CELL,
    random_state: int = 0,
    usual_care: UsualCare = "deployed",
) -> dict[str, dict[str, GroupResult]]:
    """Every estimator within each level of each group attribute, with CIs and ESS.

    The nuisance models are fitted once on all episodes (more data for the Q-model and the
    propensities); each level's estimates use only its own episodes. Levels with fewer than
    ``min_cell`` episodes are suppressed (``GroupResult.suppressed``) with a
    :class:`~equicare.exceptions.SmallCellWarning`. ``usual_care`` as in :func:`evaluate`.

    Returns
    -------
    dict of attribute to dict of level (str) to GroupResult
    """
    check_dataset(dataset, "evaluate_subgroups")
    check_param(min_cell, "min_cell", "evaluate_subgroups", kind=(int, np.integer), low=1,
                expected="a positive int")
    warn_low_min_cell(int(min_cell), "evaluate_subgroups")
    keys = parse_estimators(estimators)
    policy = as_deployed(policy, check_usual_care(usual_care, "evaluate_subgroups"))
    rng = check_random_state(random_state)
    attr_list = list(dataset.group_attrs if attrs is None else attrs)
    plan = plan_groups(dataset.groups, attr_list, int(min_cell), owner="evaluate_subgroups")
    prep = prepare(dataset, policy, keys=keys, behavior_prob=behavior_prob,
                   behavior_model=behavior_model, q=q, q_model=as_fqe_config(q_model),
                   random_state=int(rng.integers(2**31 - 1)), groups=attr_list)
    if plan is None:  # no attribute
        return {}
    _, level_refit = _pooled_columns_read(prep, dataset, attr_list, policy)
    n_cells = sum(np.unique(dataset.group_labels(a).astype(str)).size for a in attr_list)
    out, _ = _group_results(prep, dataset, keys, plan,
                            [int(s) for s in rng.integers(0, 2**31 - 1, size=n_cells)],
                            level_refit, truncate=truncate, normalization=normalization,
                            n_boot=bootstrap, ci_method=ci_method, alpha=alpha)
    return out
