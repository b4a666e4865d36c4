r"""Off-policy evaluation of panels larger than memory, as sums of per-chunk statistics.

Every importance-sampling estimator is a combination of column sums of per-episode *parts*
(:func:`~equicare.ope._core.episode_parts`). A chunk of whole episodes therefore contributes

* the plain sums of its parts (point estimates),
* ``W @ parts`` for the bootstrap, with Poisson(1) episode weights ``W`` that are a pure function
  of (seed, episode id, replicate) (:mod:`equicare.ope._resample`), or of (seed, person,
  replicate) when the manifest names ``member``: a person's episodes share every weight in
  whichever chunk they are read, so the replicates resample people with all their episodes
  (a cluster bootstrap, as in memory; :func:`~equicare.ope._resample.resampling_ids`),
* the sums of trajectory weights and of their squares (Kish's effective sample size),

and the chunks' statistics add up. Computed on the whole panel in memory, streamed chunk by chunk
or sharded over an executor (local processes, a Ray cluster), the result is the same up to
floating-point summation order (tests check 1e-9 relative). Memory is bounded by the chunk: the
sums are ``(n_boot, n_parts)``, ``n_parts`` growing with the longest episode, not with the panel.

The behaviour policy's value (the mean discounted return of the logged episodes) and its interval
come from the same weights. The estimators that need a Q-model (FQE, DR, WDR) take two more
passes over the chunks (the LSTD fit from summed sufficient statistics, then the estimates with
the fitted Q): :mod:`equicare.ope._stream_q`.

Studentized intervals (the default, as in memory; :func:`~equicare.ope._bootstrap.
studentized_intervals`) studentise each replicate by its own delta-method standard error
``se*_b^2 = sum_e W_be IF_be^2``. The influence ``IF_be = sum_j x_eA_j u_bj - x_eB_j v_bj`` of a
ratio or self-normalised estimator needs the replicate's normalisers ``u_bj, v_bj``, known only
once every chunk has been summed, so the squares are summed in one more pass over the chunks
(:func:`chunk_squares`): the chunk's parts are rebuilt, and ``(n_boot + 1, J)`` coefficients
(``J`` at most four times the longest episode) are all it receives. Expanding the squares into
per-replicate sums instead would need ``(n_boot, J, J)`` cross products for WPDIS and WDR.

With people (``member``) the replicates are people's, but each replicate's studentising standard
error still sums squared influences over episodes: a person's episodes can sit in different
chunks, and summing their influences first would need each split person's parts carried across
chunks. The pivot stays consistent: the episode-level standard error is off by about the same
factor (the square root of the design effect) in the full sample and in every replicate, so the
factor cancels from ``q se`` (on a panel of 5,000 people with 2-4 strongly correlated episodes
each the streamed intervals were within 3% of the in-memory bootstrap of people, whose standard
errors sum each person's influence; tests/ope/test_stream.py checks width and coverage).

Without bootstrap (``n_boot=0``) the intervals are in memory's normal intervals of the
leave-one-episode-out (jackknife) standard error. Episode ``e``'s leave-one-out estimate is the
estimator's combination of ``total - parts_e``, so the same extra pass forms each chunk's
leave-one-out estimates from the totals of the estimates pass and sums their deviations from
the point estimate and the squares of those (:class:`~equicare.ope._stream_sums.JackknifeSums`):
the same numbers as in memory (tests: 1e-9 relative), never an array over the panel's episodes.

Subgroups (each level of each group attribute, as in memory) are the same sums restricted to the
level's episodes, added in the same passes; with a Q-model each level's intervals carry the
Q-model's refit on every episode (:mod:`equicare.ope._stream_groups`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import Chunk, TrajectoryDataset
from equicare.exceptions import (
    DataValidationError,
    DataWarning,
    InvalidParameterError,
    PolicyError,
    SmallCellWarning,
)
from equicare.ope._bootstrap import (
    CI_METHODS,
    Shift,
    estimate_json,
    normal_interval,
    percentile_interval,
    resampling_unit,
    studentized_interval,
)
from equicare.ope._core import (
    IS_TYPE,
    EpisodeParts,
    OPEInputs,
    combine,
    episode_parts,
    undefined_estimates,
)
from equicare.ope._ess import WeightSums, mean_and_se, pareto_k_na
from equicare.ope._fqe import table_ignored_numeric
from equicare.ope._group_check import GroupQCheck
from equicare.ope._pareto import pareto_k
from equicare.ope._propensity_check import (
    PropensityCheck,
    floored_counts_message,
    in_sample_weights_message,
    sample_propensity_check,
)
from equicare.ope._resample import resampling_ids
from equicare.ope._stream_groups import (
    GroupPlan,
    GroupSquares,
    GroupSums,
    WithGroups,
    group_chunk_squares,
    group_chunk_sums,
    group_coefs,
    plan_groups,
)
from equicare.ope._stream_levels import (
    LevelColumn,
    evaluate_levels_stream,
    per_level_info,
    plan_levels,
)
from equicare.ope._stream_sums import (
    JackknifeCoefs,
    JackknifeSums,
    SquareSums,
    StreamSums,
    StudentCoefs,
    _target_probs,
    chunk_policy_error,
    corrected_sums,
    episode_sums,
    logged_propensities,
    pass_coefs,
    replicate_weights,
)
from equicare.ope._support import SUPPORT_THRESHOLD, StreamSupportReport
from equicare.policy import check_probs
from equicare.privacy import small_cells_message
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    ROW_BLOCK_ELEMENTS,
    RandomState,
    check_param,
    int_seed,
)

__all__ = ["StreamSums", "StreamEvaluation", "StreamGroup", "chunk_sums", "chunk_squares",
           "evaluate_stream",
           "STREAM_KEYS", "STREAM_CI_METHODS", "BCA_STREAM_MESSAGE", "ChunkSource"]

#: Estimators that stream (importance sampling only; no Q-model).
STREAM_KEYS: tuple[str, ...] = IS_TYPE
#: Interval methods that stream.
STREAM_CI_METHODS: tuple[str, ...] = ("studentized", "percentile")
#: Warning of a streamed evaluation without bootstrap of a panel whose manifest names member
#: (tests match it): its jackknife leaves one episode out (with replicates, people are resampled).
MEMBER_STREAM_MESSAGE = (
    "The manifest names member (people with several episodes), but streamed intervals without "
    "bootstrap (--bootstrap 0 with --chunk-rows) leave one episode out as if episodes were "
    "independent, so they can be too narrow when a person's episodes are correlated; bootstrap "
    "(--bootstrap 1000: the streamed replicates resample people) or evaluate in memory (without "
    "--chunk-rows: its jackknife leaves one person out).")
#: Error when BCa intervals are asked of a streamed evaluation (tests match it).
BCA_STREAM_MESSAGE = (
    "BCa intervals are in memory only (their acceleration needs every leave-one-episode-out "
    "estimate); streamed intervals are 'studentized' or 'percentile'.")


def _chunk_matrix(dataset: TrajectoryDataset, policy: Any, keys: Sequence[str], horizon: int,
                  truncate: float | None) -> tuple[OPEInputs, EpisodeParts, NDArray[np.float64]]:
    """A chunk's inputs, parts, and the parts with the episode returns as a last column."""
    b = logged_propensities(dataset, policy)
    # the target's probability of the logged action, in blocks of whole episodes: never a
    # (chunk rows, n_actions) matrix beyond ROW_BLOCK_ELEMENTS
    p_logged = np.empty(dataset.n_steps, dtype=np.float64)
    max_rows = max(1, ROW_BLOCK_ELEMENTS // max(1, dataset.n_actions))
    for lo, hi, part in dataset.episode_blocks(max_rows):
        probs = check_probs(_target_probs(part, policy), part.n_steps, part.n_actions,
                            "evaluate_stream")
        p_logged[lo:hi] = probs[np.arange(part.n_steps), part.actions]
    inputs = OPEInputs(rewards=dataset.rewards, episode_offsets=dataset.episode_offsets,
                       gamma=dataset.gamma, rho=p_logged / b, horizon=horizon)
    parts = episode_parts(inputs, keys, truncate=truncate)
    return inputs, parts, np.column_stack([parts.matrix, inputs.returns()])


def chunk_sums(
    dataset: TrajectoryDataset,
    policy: Any,
    *,
    keys: Sequence[str] = STREAM_KEYS,
    horizon: int,
    n_boot: int,
    seed: int,
    truncate: float | None = None,
) -> StreamSums:
    """Additive statistics of one chunk of whole episodes.

    Parameters
    ----------
    dataset : TrajectoryDataset
        The chunk; its ``behavior_prob`` must be logged.
    policy : Policy or callable
        Target policy.
    keys : sequence of str
        Estimators among ``is, wis, pdis, wpdis``.
    horizon : int
        The whole panel's longest episode (the grid width every chunk shares).
    n_boot : int
        Poisson replicates (0: none, for jackknife intervals).
    seed : int
    truncate : float, optional
        Cap on cumulative importance weights.

    Returns
    -------
    StreamSums
    """
    sums: StreamSums = _is_sums(dataset, policy, keys=keys, horizon=horizon, n_boot=n_boot,
                                seed=seed, truncate=truncate).main
    return sums


def _is_sums(dataset: TrajectoryDataset, policy: Any, *, keys: Sequence[str], horizon: int,
             n_boot: int, seed: int, truncate: float | None,
             groups: GroupPlan | None = None) -> WithGroups:
    """:func:`chunk_sums` and, with ``groups``, every subgroup level's sums."""
    inputs, parts, mat = _chunk_matrix(dataset, policy, keys, horizon, truncate)
    w = replicate_weights(resampling_ids(dataset), n_boot, seed)  # people, when known
    tw = inputs.trajectory_weights()  # the ESS of the weights and of the truncated ones
    tt = None if truncate is None else inputs.trajectory_weights(truncate)
    layout = (parts.keys, parts.slices, parts.horizon)
    sums = episode_sums(mat, w, tw, n_steps=dataset.n_steps, gamma=dataset.gamma,
                        layout=layout, trunc_weights=tt, n_censored=int(dataset.censored.sum()),
                        rewards=dataset.rewards)
    return WithGroups(sums, None if groups is None else
                      group_chunk_sums(dataset, mat, tw, w, groups, layout=layout,
                                       trunc_weights=tt, inputs=inputs, truncate=truncate))


def chunk_squares(dataset: TrajectoryDataset, policy: Any, *, keys: Sequence[str], horizon: int,
                  truncate: float | None, coefs: StudentCoefs | JackknifeCoefs
                  ) -> SquareSums | JackknifeSums:
    """The standard-error pass of one chunk: summed squared influences (studentized intervals).

    Rebuilds the chunk's parts exactly as :func:`chunk_sums` did and returns
    ``sum_e w_be IF_be^2`` of every estimator under the full sample and every Poisson replicate
    (:meth:`~equicare.ope._stream_sums.StudentCoefs.squares`); with :class:`~equicare.ope.
    _stream_sums.JackknifeCoefs` (``n_boot == 0``) the summed deviations of the chunk's
    leave-one-episode-out estimates.
    """
    sq: SquareSums | JackknifeSums = _is_squares(dataset, policy, keys=keys, horizon=horizon,
                                                 truncate=truncate, coefs=coefs).main
    return sq


def _is_squares(dataset: TrajectoryDataset, policy: Any, *, keys: Sequence[str], horizon: int,
                truncate: float | None, coefs: StudentCoefs | JackknifeCoefs,
                groups: GroupPlan | None = None,
                level_coefs: list[StudentCoefs | JackknifeCoefs | None] | None = None
                ) -> WithGroups:
    """:func:`chunk_squares` and, with ``groups``, every subgroup level's squares."""
    _, _, mat = _chunk_matrix(dataset, policy, keys, horizon, truncate)
    return WithGroups(coefs.squares(mat, resampling_ids(dataset)),
                      None if groups is None or level_coefs is None
                      else group_chunk_squares(dataset, mat, groups, level_coefs))


@dataclass(frozen=True)
class StreamEstimate:
    """One estimator's value, bootstrap interval and bootstrap standard error."""

    value: float
    ci: tuple[float, float]
    se: float
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "ci", "se"}`` as in Contract 3, NaN as ``None``.

        An estimate that cannot be computed adds its ``"reason"``.
        """
        return estimate_json(self.value, self.ci, self.se, self.reason)

    def undefined(self, reason: str) -> StreamEstimate:
        """The same estimate without a value: NaN with ``reason``."""
        nan = float("nan")
        return StreamEstimate(value=nan, ci=(nan, nan), se=nan, reason=reason)


@dataclass(frozen=True)
class StreamGroup:
    """Estimates within one subgroup level of a streamed evaluation (or a suppressed cell).

    Attributes
    ----------
    n_episodes : int
    suppressed : bool
        True when the level has fewer than ``MIN_CELL`` (11) episodes, or would reveal such a
        level by difference (complementary suppression): nothing is reported.
    behavior : StreamEstimate or None
        Mean observed return of the level's episodes.
    estimates : dict of str to StreamEstimate
    ess : float or None
        Kish's effective sample size of the level's trajectory weights.
    ess_truncated : float or None
        The same of the truncated weights (with ``truncate``).
    truncate : float or None
        The truncation threshold.
    weights : WeightSums or None
        The level's summed importance weights (not written: whether its weighted values may be
        published, :func:`~equicare.ope._evaluate.hide_low_ess`).
    q_check : GroupQCheck or None
        Whether the Q-model is right within the level (as in memory,
        :mod:`equicare.ope._group_check`).
    gaps : ndarray of shape (2, 2) or None
        The level's summed check statistics (not written; :func:`~equicare.ope._group_check.
        check_of`).
    weight_pareto_k : float
        The Pareto tail index of the level's trajectory weights (NaN: not estimated; the JSON
        says why, :func:`~equicare.ope._ess.pareto_k_na`), as in memory.
    """

    n_episodes: int
    suppressed: bool
    behavior: StreamEstimate | None = None
    estimates: dict[str, StreamEstimate] = field(default_factory=dict)
    ess: float | None = None
    ess_truncated: float | None = None
    truncate: float | None = None
    weights: WeightSums | None = field(default=None, repr=False, compare=False)
    q_check: GroupQCheck | None = None
    gaps: NDArray[np.float64] | None = field(default=None, repr=False, compare=False)
    weight_pareto_k: float = float("nan")

    @property
    def pareto_k(self) -> float:
        """:attr:`weight_pareto_k` (as ``GroupResult.pareto_k`` in memory)."""
        return float(self.weight_pareto_k)

    def to_dict(self) -> dict[str, Any]:
        """Contract 3 group entry; ``{"suppressed": true, "n_episodes": null}`` when suppressed."""
        if self.suppressed:
            return {"suppressed": True, "n_episodes": None}
        assert self.behavior is not None and self.ess is not None
        ess = ess_dict(self.ess, self.ess_truncated, self.truncate, self.n_episodes,
                       weight_pareto_k=self.weight_pareto_k)
        na = pareto_k_na(self.weight_pareto_k, self.n_episodes)
        if na is not None:
            ess["trajectory_weight_pareto_k_na"] = na
        out = {"n_episodes": self.n_episodes, "behavior": self.behavior.to_dict(),
               "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
               "ess": ess}
        if self.q_check is not None:
            out["q_check"] = self.q_check.to_dict()
        return out


def ess_dict(ess: float, truncated: float | None, truncate: float | None,
             n_episodes: int, weight_mean: tuple[float, float] | None = None,
             weight_pareto_k: float | None = None) -> dict[str, Any]:
    """The streamed ``"ess"``: the in-memory keys that sums give (``trajectory`` untruncated).

    ``weight_mean``: the trajectory weights' mean and its standard error, when known;
    ``weight_pareto_k``: their Pareto tail index, when known.
    """
    out = {"trajectory": ess, "trajectory_pct": 100.0 * ess / n_episodes, "truncate": truncate,
           "trajectory_truncated": truncated,
           "trajectory_truncated_pct": None if truncated is None
           else 100.0 * truncated / n_episodes}
    if weight_mean is not None:
        out["trajectory_weight_mean"], out["trajectory_weight_mean_se"] = (
            float(v) if np.isfinite(v) else None for v in weight_mean)
    if weight_pareto_k is not None:
        out["trajectory_weight_pareto_k"] = (float(weight_pareto_k)
                                             if np.isfinite(weight_pareto_k) else None)
    return out


@dataclass(frozen=True)
class StreamEvaluation:
    """Result of :func:`evaluate_stream` (the keys of Contract 3's result JSON).

    Attributes
    ----------
    n_episodes, n_steps, n_chunks : int
    gamma : float
    behavior : StreamEstimate
        Value of current practice (mean discounted return of the logged episodes).
    estimates : dict of str to StreamEstimate
    ess : float
        Kish's effective sample size of the trajectory weights (untruncated, as in memory).
    n_boot : int
    q_model : dict, optional
        The streamed Q-model (name, solver, parameters, how its refit enters the bootstrap)
        when FQE, DR or WDR were computed.
    behavior_model : dict, optional
        The behaviour model's sample and summary when the propensities were estimated.
    ci_method : {"studentized", "percentile", "jackknife"}
        Interval of the estimators (the behaviour value's is percentile, as in memory);
        ``"jackknife"`` without replicates (``n_boot == 0``): normal intervals of the jackknife
        standard errors, the behaviour value's of its returns' standard error.
    groups : dict of str to dict of str to StreamGroup
        Every estimator within each level of each group attribute (nuisance models fitted on
        all episodes; with a Q-model the intervals carry its refit on every episode).
    ess_truncated : float or None
        Kish's effective sample size of the truncated trajectory weights (with ``truncate``).
    settings : dict
        The settings that apply to a streamed evaluation (estimators, bootstrap, ci_method,
        alpha, truncate, random_state, propensity_source), as the in-memory ``settings``, and
        how the support check was made (``support_check``).
    support : StreamSupportReport or None
        The support diagnostics (result JSON ``"support"``, as in memory;
        :mod:`equicare.ope._stream_support`).
    propensity_check : PropensityCheck or None
        With logged propensities and the support check: their agreement with the logged
        actions on the support check's sample of about 20,000 rows of whole episodes
        (:func:`~equicare.ope._propensity_check.sample_propensity_check`; ``equicare evaluate``
        warns from it, as in memory). Not in the result JSON, as in memory.
    out_of_range : tuple of str
        The estimators far outside the range of the observed returns, as in memory.
    weight_mean, weight_mean_se : float
        The untruncated trajectory weights' mean and its standard error, as in memory
        (:attr:`~equicare.ope.EffectiveSampleSize.weight_mean`).
    weight_pareto_k : float
        Their Pareto tail index, as in memory
        (:attr:`~equicare.ope.EffectiveSampleSize.weight_pareto_k`).
    """

    n_episodes: int
    n_steps: int
    n_chunks: int
    gamma: float
    behavior: StreamEstimate
    estimates: dict[str, StreamEstimate]
    ess: float
    n_boot: int
    q_model: dict[str, Any] | None = None
    behavior_model: dict[str, Any] | None = None
    ci_method: str = "percentile"
    groups: dict[str, dict[str, StreamGroup]] = field(default_factory=dict)
    ess_truncated: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    support: StreamSupportReport | None = None
    propensity_check: PropensityCheck | None = None
    out_of_range: tuple[str, ...] = ()
    weight_mean: float = float("nan")
    weight_mean_se: float = float("nan")
    weight_pareto_k: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The result JSON (Contract 3: ``n_episodes``, ``behavior``, ``estimates``, ``ess``).

        Plus ``support`` (the support diagnostics, as in memory), settings and model summaries.
        """
        out = {
            "n_episodes": self.n_episodes, "n_steps": self.n_steps, "gamma": self.gamma,
            "behavior": self.behavior.to_dict(),  # with its "se", as in memory
            "estimates": {k: e.to_dict() for k, e in self.estimates.items()},
            "ess": ess_dict(self.ess, self.ess_truncated, self.settings.get("truncate"),
                            self.n_episodes, (self.weight_mean, self.weight_mean_se),
                            self.weight_pareto_k),
            "bootstrap": {"n_boot": self.n_boot,
                          "weights": "poisson" if self.n_boot else None, "ci": self.ci_method},
            "streaming": {"n_chunks": self.n_chunks},
            "groups": {attr: {lv: g.to_dict() for lv, g in levels.items()}
                       for attr, levels in self.groups.items()},
            "support": None if self.support is None else self.support.to_dict(),
            "out_of_range": list(self.out_of_range),
        }
        out["propensity_source"] = "logged" if self.behavior_model is None else "estimated"
        if self.settings:
            out["settings"] = self.settings
        if self.behavior_model is not None:
            out["behavior_model"] = self.behavior_model
        if self.q_model is not None:
            from equicare.ope._evaluate import withhold_suppressed_bias

            out["q_model"] = withhold_suppressed_bias(self.q_model, {
                (a, lv) for a, levels in self.groups.items() for lv, g in levels.items()
                if g.suppressed})
        return out


def finish(sums: StreamSums, *, alpha: float = 0.05, n_chunks: int = 1,
           q_model: dict[str, Any] | None = None,
           behavior_model: dict[str, Any] | None = None,
           squares: SquareSums | JackknifeSums | None = None, shift: Shift | None = None,
           fqe_bias: tuple[float, float] | None = None) -> StreamEvaluation:
    """Turn summed statistics into estimates with intervals.

    The influence columns (``sums.infl_keys``) add the linearised Q-model refit to every
    replicate of FQE, DR and WDR exactly as the in-memory engine does: episode ``e``'s
    correction is ``n raw_e - sum_e raw_e`` (centred, so the point estimate is unchanged), times
    the mean step-0 weight for WDR (:func:`~equicare.ope._stream_sums.corrected_sums`). With
    ``squares`` (the standard-error pass) the intervals are studentized
    (:func:`~equicare.ope._bootstrap.studentized_interval`), else percentile. Without replicates
    (``n_boot == 0``) ``squares`` are the jackknife pass's sums
    (:class:`~equicare.ope._stream_sums.JackknifeSums`) and every interval, the behaviour
    value's too, is the in-memory normal interval of the jackknife standard error. ``shift``
    adds an independent term to some estimators' replicates and its variance to their
    studentising (or jackknife) standard errors (a subgroup level's other episodes' share of
    the refit). ``fqe_bias``
    (``auto``'s estimated bias and its standard error) joins FQE's interval with the bias-aware
    one (:func:`~equicare.ope._evaluate.bias_aware`, as in memory).
    """
    keys, slices, horizon = sums.parts_layout
    total, boot = corrected_sums(sums)
    n_parts = total.size
    n = float(sums.n_episodes)
    template = EpisodeParts(matrix=np.zeros((0, n_parts)), slices=slices, keys=keys,
                            horizon=horizon)
    point = combine(template, total, np.asarray(n))
    reps = combine(template, boot, sums.boot_n)
    undefined = undefined_estimates(template, total)
    jack = None
    if sums.boot_n.size == 0:  # no replicates: the jackknife's standard errors
        if not isinstance(squares, JackknifeSums):
            raise InvalidParameterError("Intervals without bootstrap replicates need the "
                                        "jackknife pass's sums.")
        jack = squares.se(sums.n_episodes)
    estimates = {}
    for i, k in enumerate(keys):
        if k in undefined:  # every weight 0: no estimate, not 0 [0, 0]
            nan = float("nan")
            estimates[k] = StreamEstimate(value=nan, ci=(nan, nan), se=nan, reason=undefined[k])
            continue
        r, v = reps[k], float(point[k])
        extra = 0.0
        if shift is not None and k in shift.replicates:
            r = r + shift.replicates[k]
            extra = shift.variance[k]
        if jack is not None:  # in memory's estimates_with_ci with n_boot == 0
            se_r = float(np.sqrt(jack[i] ** 2 + extra)) if extra else float(jack[i])
            ci = normal_interval(v, se_r, alpha)
        elif isinstance(squares, JackknifeSums):
            raise InvalidParameterError("Jackknife sums with bootstrap replicates.")
        elif squares is None:
            ci = percentile_interval(r, alpha)
        else:
            se = np.sqrt(squares.sq[i] + extra)
            ci = studentized_interval(v, r, se[1:], float(se[0]), alpha)
        if jack is None:
            se_r = float(r.std(ddof=1)) if r.size > 1 else 0.0
        if k == "fqe" and fqe_bias is not None:
            from equicare.ope._bootstrap import Estimate, bias_aware

            ci = bias_aware(Estimate(value=v, ci=ci, se=se_r, n_episodes=0), *fqe_bias,
                            alpha).ci
        estimates[k] = StreamEstimate(value=v, ci=ci, se=se_r)
    beh_value = float(sums.total[n_parts] / n)
    if jack is not None:  # in memory: the returns' standard error, a normal interval
        behavior = StreamEstimate(value=beh_value, ci=normal_interval(beh_value, jack[-1], alpha),
                                  se=float(jack[-1]))
    else:
        beh_reps = np.divide(sums.boot[:, n_parts], sums.boot_n,
                             out=np.zeros_like(sums.boot_n), where=sums.boot_n > 0)
        behavior = StreamEstimate(value=beh_value, ci=percentile_interval(beh_reps, alpha),
                                  se=float(beh_reps.std(ddof=1)) if beh_reps.size > 1 else 0.0)
    ess, ess_truncated = sums.ess()
    wm, wse = mean_and_se(sums.w_sum, sums.w_sq, float(sums.n_episodes))
    return StreamEvaluation(n_episodes=sums.n_episodes, n_steps=sums.n_steps, n_chunks=n_chunks,
                            gamma=sums.gamma, behavior=behavior, estimates=estimates,
                            ess=ess, ess_truncated=ess_truncated, n_boot=int(sums.boot_n.size),
                            weight_mean=wm, weight_mean_se=wse,
                            weight_pareto_k=pareto_k(sums.top_weights, sums.n_episodes),
                            q_model=q_model, behavior_model=behavior_model,
                            ci_method="jackknife" if jack is not None
                            else "percentile" if squares is None else "studentized")


def finish_groups(plan: GroupPlan, groups: GroupSums, squares: GroupSquares | None, *,
                  alpha: float = 0.05,
                  group_bias: dict[str, dict[str, tuple[float, float]]] | None = None,
                  truncate: float | None = None) -> dict[str, dict[str, StreamGroup]]:
    """Every subgroup level's estimates from its summed statistics (:func:`finish` per level).

    Levels with fewer than ``plan.min_cell`` episodes are suppressed, with a
    :class:`~equicare.exceptions.SmallCellWarning`. ``group_bias`` (``auto``'s, per attribute
    and level) makes each level's FQE interval bias-aware. ``truncate`` is the threshold of the
    levels' truncated-weights ESS (reported with it).
    """
    out: dict[str, dict[str, StreamGroup]] = {}
    index = {col: c for c, col in enumerate(plan.columns)}
    small: list[str] = []
    for attr, counts in zip(plan.attrs, plan.counts, strict=True):
        levels: dict[str, StreamGroup] = {}
        for lv, n in counts.items():
            c = index.get((attr, lv), -1)
            sums = None if c < 0 else groups.sums[c]
            if sums is None:
                small.append(f"{attr}={lv}")
                levels[lv] = StreamGroup(n_episodes=n, suppressed=True)
                continue
            keys = sums.infl_keys
            shift = (None if groups.other is None or not keys
                     else groups.other.shift(c, keys))
            sq = None if squares is None else squares.sq[c]
            res = finish(sums, alpha=alpha, squares=sq, shift=shift,
                         fqe_bias=(group_bias or {}).get(attr, {}).get(lv))
            levels[lv] = StreamGroup(n_episodes=res.n_episodes, suppressed=False,
                                     behavior=res.behavior, estimates=res.estimates, ess=res.ess,
                                     ess_truncated=res.ess_truncated, truncate=truncate,
                                     weights=sums.weights,
                                     gaps=None if groups.gaps is None else groups.gaps[c],
                                     weight_pareto_k=res.weight_pareto_k)
        out[attr] = levels
    if small:
        warnings.warn(small_cells_message(small, plan.min_cell), SmallCellWarning, stacklevel=3)
    return out


# ---------------------------------------------------------------------- map-reduce over chunks
@dataclass(frozen=True)
class _ShardApply:
    spec: Any
    fn: Callable[[TrajectoryDataset], Any]
    chunk_rows: int


def _apply_shard(task: _ShardApply) -> tuple[Any, int]:
    """``fn`` over the chunks of one shard, summed (runs on a worker)."""
    from equicare.data import iter_shard_chunks

    total: Any = None
    n = 0
    for chunk in iter_shard_chunks(task.spec, chunk_rows=task.chunk_rows):
        s = task.fn(chunk.dataset)
        total = s if total is None else total + s
        n += 1
    return total, n


class ChunkSource:
    """A panel as chunks of whole episodes: a dataset, chunks in memory, a path, or shards.

    :meth:`map_reduce` maps a picklable ``fn(dataset) -> additive statistics`` over every chunk
    (on the executor's workers, one task per shard, when one is given) and adds the results; it
    can be called several times (multi-pass estimators re-read the panel).

    Parameters
    ----------
    source, manifest, chunk_rows, executor, n_shards
        As in :func:`evaluate_stream`.
    owner : str
        Name used in error messages.
    """

    def __init__(self, source: Any, *, manifest: Any = None, chunk_rows: int = 500_000,
                 executor: Any = None, n_shards: int | None = None,
                 owner: str = "evaluate_stream") -> None:
        self.executor = executor
        self.chunk_rows = chunk_rows
        self.dataset: TrajectoryDataset | None = None
        self.chunks: list[Chunk] | None = None
        self.path: Any = None
        self.specs: list[Any] = []
        #: applied to every chunk before ``fn`` (estimated propensities, for instance)
        self.transform: Callable[[TrajectoryDataset], TrajectoryDataset] | None = None
        #: statistics that ride on the next passes (:meth:`ride`)
        self._riders: list[tuple[Callable[[], Callable[[TrajectoryDataset], Any]],
                                 Callable[[Any], None]]] = []
        if isinstance(source, TrajectoryDataset):
            self.dataset = source
            self.horizon = int(source.episode_lengths.max())
            self.n_rows = source.n_steps
            self.logged = source.behavior_prob is not None
        elif isinstance(source, str | os.PathLike):
            from equicare.data import plan_shards, scan_panel
            from equicare.data._manifest import manifest_of as _manifest_of

            if manifest is None:
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="manifest", owner=owner, expected="the panel's manifest", got=None))
            self.path = source
            self.manifest = _manifest_of(manifest)
            self.scan = scan_panel(source, self.manifest)
            self.horizon = self.scan.max_len
            self.n_rows = self.scan.n_rows
            self.logged = self.manifest.behavior_prob is not None
            if executor is not None:
                shards = n_shards or int(getattr(executor, "n_workers", 2) or 2)
                self.specs = plan_shards(source, self.manifest, shards, scan=self.scan)
        else:
            self.chunks = list(source)
            if not self.chunks:
                raise DataValidationError("The panel has no episodes.")
            self.horizon = max(int(c.dataset.episode_lengths.max()) for c in self.chunks)
            self.n_rows = sum(c.dataset.n_steps for c in self.chunks)
            self.logged = all(c.dataset.behavior_prob is not None for c in self.chunks)

    @property
    def n_episodes(self) -> int:
        """Episodes of the panel (from the scan when on storage)."""
        if self.dataset is not None:
            return self.dataset.n_episodes
        if self.path is not None:
            return self.scan.n_episodes
        assert self.chunks is not None
        return sum(c.dataset.n_episodes for c in self.chunks)

    def episode_members(self) -> NDArray[Any] | None:
        """Each episode's person (the manifest's ``member``), in :meth:`episode_groups`' order."""
        if self.dataset is not None:
            return self.dataset.members
        if self.path is not None:
            return self.scan.episode_members
        assert self.chunks is not None
        if self.chunks[0].dataset.members is None:
            return None
        return np.concatenate([np.asarray(c.dataset.members) for c in self.chunks])

    def episode_groups(self) -> dict[str, NDArray[Any]]:
        """Every group attribute's label of each episode (from the scan when on storage)."""
        if self.dataset is not None:
            return dict(self.dataset.groups)
        if self.path is not None:
            return dict(self.scan.episode_groups)
        assert self.chunks is not None
        names = list(self.chunks[0].dataset.groups)
        return {g: np.concatenate([np.asarray(c.dataset.groups[g]) for c in self.chunks])
                for g in names}

    def _columns(self, dataset_attr: str, manifest_attr: str) -> tuple[str, ...]:
        """A dataset's column names (``dataset_attr``), or the manifest's (on storage)."""
        if self.path is not None:
            return tuple(getattr(self.manifest, manifest_attr))
        ds = self.dataset
        if ds is None:
            assert self.chunks is not None
            ds = self.chunks[0].dataset
        return tuple(getattr(ds, dataset_attr))

    def categorical_names(self) -> tuple[str, ...]:
        """The panel's categorical state columns."""
        return self._columns("categorical_names", "categorical_states")

    def state_names(self) -> tuple[str, ...]:
        """The panel's numeric state columns."""
        return self._columns("state_names", "states")

    def ride(self, build: Callable[[], Callable[[TrajectoryDataset], Any]],
             done: Callable[[Any], None]) -> None:
        """Sum one more statistic in the next pass over the chunks, without a pass of its own.

        When the next :meth:`map_reduce` starts, ``build()`` gives the (picklable) chunk
        function; it runs on every chunk beside that pass's own, and ``done`` receives its sum.
        Riders take the passes in turn, one each; :meth:`flush` makes a pass for those left.
        """
        self._riders.append((build, done))

    def flush(self) -> None:
        """Run the riders that no pass has taken, one pass each."""
        while self._riders:
            self.map_reduce(_nothing)

    def map_reduce(self, fn: Callable[[TrajectoryDataset], Any],
                   progress: Callable[[int], None] | None = None) -> tuple[Any, int]:
        """Sum of ``fn`` over every chunk, and the number of chunks.

        A :class:`~equicare.exceptions.PolicyError` raised in a chunk (a policy file that does
        not cover its rows) counts that chunk's rows only: its count is said as a lower bound
        (:func:`chunk_policy_error`). The next rider (:meth:`ride`) is summed in the same pass.
        """
        if self._riders:
            build, done = self._riders.pop(0)
            pair, n = self.map_reduce(_Both(fn, build()), progress)
            done(pair.side)
            return pair.main, n
        if self.transform is not None:
            fn = functools.partial(_transformed, fn, self.transform)
        if self.dataset is not None:
            return fn(self.dataset), 1
        try:
            return self._map_chunks(fn, progress)
        except PolicyError as exc:
            raise chunk_policy_error(exc) from exc

    def _map_chunks(self, fn: Callable[[TrajectoryDataset], Any],
                    progress: Callable[[int], None] | None) -> tuple[Any, int]:
        if self.path is not None and self.executor is not None:
            tasks = [_ShardApply(spec=sp, fn=fn, chunk_rows=self.chunk_rows)
                     for sp in self.specs]
            from equicare._tasks import iter_map  # workers' warnings relayed

            return _reduce(list(iter_map(self.executor, _apply_shard, tasks)))
        if self.path is not None:
            from equicare.data import iter_chunks

            chunks: Iterable[Chunk] = iter_chunks(self.path, self.manifest,
                                                  chunk_rows=self.chunk_rows, scan=self.scan)
        else:
            assert self.chunks is not None
            chunks = self.chunks

        def each() -> Iterator[tuple[Any, int]]:
            for k, c in enumerate(chunks):
                yield fn(c.dataset), 1
                if progress is not None:
                    progress(k + 1)

        try:
            return _reduce(each())
        finally:  # a chunk that raised: the reader's temporary folder goes now, not at exit
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


def _nothing(dataset: TrajectoryDataset) -> None:
    """A pass of its own for a rider (:meth:`ChunkSource.flush`)."""
    return None


@dataclass
class _Pair:
    """A pass's own sum and its rider's (additive; either may be None)."""

    main: Any
    side: Any

    def __add__(self, other: _Pair) -> _Pair:
        def add(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else a + b

        return _Pair(add(self.main, other.main), add(self.side, other.side))


@dataclass(frozen=True, eq=False)
class _Both:
    """``fn`` and a rider on the same chunk (picklable)."""

    fn: Callable[[TrajectoryDataset], Any]
    side: Callable[[TrajectoryDataset], Any]

    def __call__(self, dataset: TrajectoryDataset) -> _Pair:
        return _Pair(self.fn(dataset), self.side(dataset))


@contextlib.contextmanager
def executor_session(executor: Any) -> Iterator[Any]:
    """``executor.session()`` when it has one (a local pool kept for every pass), else a no-op."""
    session = getattr(executor, "session", None)
    if session is None:
        yield executor
        return
    with session() as ex:
        yield ex


def _transformed(fn: Callable[[TrajectoryDataset], Any],
                 transform: Callable[[TrajectoryDataset], TrajectoryDataset],
                 dataset: TrajectoryDataset) -> Any:
    return fn(transform(dataset))


def _reduce(items: Iterable[tuple[Any, int]]) -> tuple[Any, int]:
    total: Any = None
    n = 0
    for s, k in items:
        if s is not None:
            total = s if total is None else total + s
        n += k
    if total is None:
        raise DataValidationError("The panel has no episodes.")
    return total, n


def evaluate_stream(
    source: str | os.PathLike[str] | TrajectoryDataset | Iterable[Chunk],
    policy: Any,
    *,
    manifest: Any = None,
    estimators: Sequence[str] = STREAM_KEYS,
    q_model: Any = "auto",
    behavior_model: Any = "logistic",
    behavior_sample_rows: int = 1_000_000,
    n_boot: int = 1000,
    ci_method: str = "studentized",
    alpha: float = 0.05,
    random_state: RandomState = 0,
    truncate: float | None = None,
    groups: Sequence[str] | None = None,
    chunk_rows: int = 500_000,
    executor: Any = None,
    n_shards: int | None = None,
    support_threshold: float = SUPPORT_THRESHOLD,
    diagnose_support: bool = True,
    progress: Callable[[int], None] | None = None,
    level_progress: Callable[[int, int], None] | None = None,
    usual_care: str = "deployed",
    suppress: Mapping[str, Collection[str]] | None = None,
) -> StreamEvaluation:
    """Evaluate a policy on a panel of any size, chunk by chunk or shard by shard.

    Parameters
    ----------
    source : path, TrajectoryDataset or iterable of Chunk
        A panel on storage (Parquet file or folder, CSV, DuckDB file; read in chunks of whole
        episodes), a dataset in memory (one chunk), or chunks already read.
    policy : Policy or callable
        Target policy; it must serve any subset of the panel's rows (a policy file does).
    manifest : Manifest, dict or path, optional
        Required when ``source`` is a path.
    estimators : sequence of str
        Among ``is, wis, pdis, wpdis`` and, with a streamable ``q_model``, ``fqe, dr, wdr``.
    q_model : {"auto", "linear", "tabular_stationary", "tabular_window"} or FQEConfig
        Q-model of FQE, DR and WDR, fitted from sufficient statistics summed over chunks (see
        :mod:`equicare.ope._stream_q`); equal to the in-memory fit of the same model.
        ``"auto"`` chooses between the linear model and the stationary table by ``auto``'s
        cross-fitted criterion on a random sample of about ``behavior_sample_rows`` rows of
        whole episodes (the whole panel when it has no more rows: then the in-memory choice
        among these two), and FQE's intervals, overall and per level, carry the estimated bias
        as in memory (:func:`~equicare.ope._stream_q.choose_q_stream`). The stationary table
        gets the in-memory censoring check (:mod:`equicare.ope._censoring`: the window table
        fitted from the same passes, ``q_model["censoring"]``): a named one warns, and with
        ``"auto"`` the window table replaces it when the check fires
        (``q_model["replaced"]``), as in memory.
    behavior_model : {"logistic", "lgbm"}, classifier or BehaviorModel
        When the panel logs no propensities: the behaviour model, fitted on a random sample of
        whole episodes keyed by episode id and applied chunk by chunk
        (:mod:`equicare.ope._stream_behavior`). Unused when propensities are logged.
    behavior_sample_rows : int
        Rows (about) of that sample (and of ``auto``'s); at least the panel's rows fits on the
        whole panel.
    n_boot : int
        Poisson bootstrap replicates, keyed by each episode's person when the manifest names
        ``member`` (people resampled with all their episodes, ``settings["resampling"]`` says
        ``"people (member)"``), else by episode id. ``0``: no bootstrap; every interval is
        the normal interval of the leave-one-episode-out (jackknife) standard error, as in
        memory's ``bootstrap=0`` without ``member`` (same numbers; with ``member`` it warns,
        as the in-memory jackknife leaves one person out): after the estimates pass has summed
        the parts, one more pass forms each chunk's leave-one-out estimates from the totals
        and sums their deviations (:class:`~equicare.ope._stream_sums.JackknifeCoefs`), so
        memory stays bounded by the chunk. The Q-model's linearised refit and a level's other
        episodes' share of it enter the standard errors as in memory.
    ci_method : {"studentized", "percentile"}
        ``"studentized"`` (the default, as in memory): symmetric bootstrap-t intervals, each
        replicate studentised by its own delta-method standard error. That standard error
        needs the replicate's normalisers before the squared influences can be summed, so it
        takes one more pass over the chunks (:func:`chunk_squares`). ``"percentile"``: no
        extra pass. BCa is in memory only. Unused with ``n_boot=0`` (any of the three is
        accepted then, as in memory).
    alpha : float
        ``1 - alpha`` intervals.
    random_state : int, Generator or None, default=0
        As :func:`~equicare.ope.evaluate`'s (same default; a Generator or ``None`` draws one
        int seed, kept in ``settings["random_state"]``). Seed of the counter-based bootstrap
        weights (same seed, same intervals, any sharding)
        and of the samples of episodes; the nuisance models' folds and fits (behaviour model,
        ``auto``'s choice, the cells) take the seed that :func:`~equicare.ope.evaluate` derives
        from it (:func:`~equicare.ope._evaluate.nuisance_seed`), so a sample that is the whole
        panel gives the in-memory numbers.
    truncate : float, optional
        Cap on cumulative importance weights.
    groups : sequence of str, optional
        Group attributes to evaluate within (default: every one the panel has; ``()`` for
        none), as in memory: each level's estimators on its own episodes, the nuisance models
        fitted on all of them, levels under 11 episodes suppressed. With a Q-model each level's
        intervals carry its refit on every episode (the levels' gradient pieces are summed in
        the fit's pass; :mod:`equicare.ope._stream_groups`), and with ``auto`` each level's FQE
        interval its estimated bias. A column that the table pools over and the target policy
        reads gets a Q-model per level, as in memory (:mod:`equicare.ope._stream_levels`: the
        Q-model's passes once more per level).
    chunk_rows : int
        Rows per chunk (whole episodes).
    executor : object with ``map(fn, items)``, optional
        Runs one task per shard (``equicare.pipeline.get_executor("ray", ...)`` for a cluster);
        the panel must then be a clustered Parquet file or folder every worker can read
        (:func:`equicare.data.cluster_panel` writes one).
    n_shards : int, optional
        Shards for the executor (default: its worker count, else 2).
    support_threshold : float, default=1e-3
        Behaviour probability below which an action counts as unsupported (fast numeric model
        or streamed behaviour model), as in memory.
    diagnose_support : bool, default=True
        As :func:`~equicare.ope.evaluate`'s: ``False`` skips the support check when the
        propensities are logged (``support`` is then None); with estimated propensities the
        check always runs.
    progress : callable, optional
        Called with the number of chunks done (streamed in this process).
    level_progress : callable, optional
        Called with (levels done, levels) as the levels that get their own Q-model are done.
    usual_care : {"deployed", "stored"}, default="deployed"
        As :func:`~equicare.ope.evaluate`'s: rows a policy leaves to current practice keep
        their logged action with target and behaviour probability 1 (chunk by chunk, the same
        code as in memory), or follow the estimate of practice stored with the policy.
    suppress : mapping of str to collection of str, optional
        Group levels to suppress whatever their size, by attribute (``{"site": {"s_rare"}}``),
        as :func:`~equicare.ope.evaluate`'s: e.g. the held-out levels whose training
        complement is small (:func:`equicare.privacy.split_withheld`). They are reported as
        suppressed like small levels, and complementary suppression completes them; the levels
        are decided as in memory (:func:`~equicare.ope._stream_groups.plan_groups`), before the
        first chunk is read. A key that is not an evaluated attribute is an error.

    Returns
    -------
    StreamEvaluation

    Warns
    -----
    LowESSWarning
        As :func:`~equicare.ope.evaluate`, from the trajectory ESS (the streamed result has no
        per-decision one): once, when the overall ``is``, ``wis``, ``pdis`` or ``wpdis`` value
        rests on fewer than 11 episodes' worth of importance weight.
    """
    from equicare.ope._core import Q_TYPE

    keys = tuple(dict.fromkeys(estimators))
    allowed = (*STREAM_KEYS, "fqe", "dr", "wdr")
    bad = [k for k in keys if k not in allowed]
    if bad:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="estimators", owner="evaluate_stream",
            expected="estimators that stream: " + ", ".join(allowed), got=bad))
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="n_boot", owner="evaluate_stream",
            expected="an int >= 0 (the Poisson bootstrap's replicates; 0: jackknife normal "
                     "intervals)", got=n_boot))
    n_boot = int(n_boot)
    if ci_method == "bca" and n_boot > 0:
        raise InvalidParameterError(BCA_STREAM_MESSAGE)
    if ci_method not in (CI_METHODS if n_boot == 0 else STREAM_CI_METHODS):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="ci_method", owner="evaluate_stream",
            expected="'studentized' or 'percentile'", got=ci_method))
    seed = int_seed(random_state, "evaluate_stream")
    check_param(truncate, "truncate", "evaluate_stream",  # before the panel is read, as in memory
                kind=(int, float, np.integer, np.floating), low=0.0, low_inclusive=False,
                allow_none=True, expected="a positive float or None")
    support_threshold = float(check_param(
        support_threshold, "support_threshold", "evaluate_stream",
        kind=(int, float, np.integer, np.floating), low=0.0, high=1.0))
    check_param(diagnose_support, "diagnose_support", "evaluate_stream", kind=bool)
    from equicare.policy._deployed import (
        as_deployed,
        can_defer,
        check_usual_care,
        deferred_counts,
        usual_care_settings,
    )

    usual_care = check_usual_care(usual_care, "evaluate_stream")
    policy = as_deployed(policy, usual_care)
    from equicare.data.validate import check_episodes
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY, nuisance_seed

    fit_seed = nuisance_seed(seed)  # the in-memory nuisance models' folds and fits
    src = ChunkSource(source, manifest=manifest, chunk_rows=chunk_rows, executor=executor,
                      n_shards=n_shards)
    check_episodes(src, 2, "evaluate", EVALUATE_EPISODES_WHY, src.path)
    on_file = src.path is not None  # a missing label: the file and the episode's id
    members = src.episode_members()
    if members is not None and n_boot == 0:  # replicates are keyed by the person (people)
        warnings.warn(MEMBER_STREAM_MESSAGE, DataWarning, stacklevel=3)
    if members is not None:  # levels of fewer than 11 people, as in memory
        from equicare.privacy import few_members

        labels = src.episode_groups()
        few = {a: few_members(labels[a], members)
               for a in (list(labels) if groups is None else groups) if a in labels}
        few = {a: v for a, v in few.items() if v}
        if few:
            suppress = {a: {*(suppress or {}).get(a, ()), *few.get(a, ())}
                        for a in dict.fromkeys([*(suppress or {}), *few])}
    plan = plan_groups(src.episode_groups(), groups, MIN_CELL,
                       where=str(src.path) if on_file else "subgroups",
                       episode_ids=src.scan.episode_ids if on_file else None,
                       withheld=suppress, owner="evaluate_stream")
    support = None if src.logged and not diagnose_support else _SupportRider(
        src, policy, behavior_model=behavior_model, seed=seed, threshold=support_threshold)
    counted: list[NDArray[np.float64]] = []  # rows left to practice, rows (the first pass's)
    if can_defer(policy):
        src.ride(lambda: functools.partial(deferred_counts, policy=policy), counted.append)
    sel: Any = None  # auto's selection, when it chose the Q-model
    level_cols: list[LevelColumn] = []
    own_levels: dict[str, tuple[dict[str, StreamGroup], dict[str, Any]]] = {}
    q_cfg = None  # the Q-model's, when there is one
    fqe_bias = None
    with executor_session(executor):  # one local pool for every pass
        beh_info = None
        if not src.logged:  # no logged propensities: a behaviour model on a sample of episodes
            from equicare.ope._stream_behavior import fit_behavior_stream, thin_sample_message

            sb = fit_behavior_stream(src, model=behavior_model, sample_rows=behavior_sample_rows,
                                     seed=seed, model_seed=fit_seed)
            src.transform = sb
            assert support is not None  # estimated propensities: always checked
            support.behavior = sb
            beh_info = dict(sb.info)
            floored = None if beh_info["floored_expected"] is None else floored_counts_message(
                *sb.floored, int(beh_info["sample_episodes"]), float(beh_info["floor"]),
                tuple(keys), float(beh_info["floored_expected"]))
            if floored is not None and float(beh_info["sample_rate"]) < 1.0:
                floored += (f" (Counted on the behaviour model's random sample of "
                            f"{int(beh_info['sample_episodes']):,} episodes.)")
            if floored is not None:
                warnings.warn(floored, DataWarning, stacklevel=2)
            beh_info["floored_warning"] = floored
            thin = thin_sample_message(sb.model, beh_info, src.n_episodes, tuple(keys))
            if thin is not None:  # out-of-sample probabilities in thin levels
                warnings.warn(thin, DataWarning, stacklevel=2)
            beh_info["sample_warning"] = thin
        if any(k in Q_TYPE for k in keys):
            from equicare.ope._stream_q import evaluate_stream_q, resolve_stream_q

            # auto: the in-memory choice on a sample of whole episodes
            cfg, sel, q_info = resolve_stream_q(
                src, policy, q_model, keys=[k for k in keys if k in Q_TYPE],
                sample_rows=behavior_sample_rows, seed=seed, model_seed=fit_seed,
                groups=() if plan is None else plan.attrs)
            stationary = cfg.model == "tabular" and cfg.resolved_horizon == "stationary"
            out = evaluate_stream_q(
                src, policy, keys=keys, cfg=cfg, n_boot=n_boot, seed=seed, truncate=truncate,
                progress=progress, studentized=ci_method == "studentized", groups=plan,
                censoring="off" if not stationary else "check" if sel is None else "switch")
            check = out.censoring
            if check is not None and check.switched:  # auto: the window table, as in memory
                assert out.cfg is not None and sel is not None
                cfg = out.cfg
                sel = dataclasses.replace(sel, chosen="tabular_window", replaced=sel.chosen,
                                          group_bias={})
                sample = {k: v for k, v in q_info["selection"].items()
                          if k.startswith("sample_")}
                sd = sel.to_dict()
                q_info = {**q_info, "chosen": sel.chosen, "selection": {**sd, **sample},
                          "replaced": sd["replaced"]}
            elif check is not None and check.warn:  # a named stationary table: the warning
                warnings.warn(check.message(), DataWarning, stacklevel=2)
            out.q_model.update(q_info)
            ignored = table_ignored_numeric(
                out.q_model.get("chosen"), src.state_names(),
                None if out.cells is None else out.cells.varying)
            if ignored:  # a table's cells leave the numeric states out: said on screen
                out.q_model["ignored_numeric"] = ignored
            if check is not None:
                out.q_model["censoring"] = check.to_dict()
            if out.cells is not None:  # thin cells: the in-memory warning, from pass 0's sums
                from equicare.ope._prepare import q_cells_hint

                thin = out.cells.message(q_cells_hint(cfg.cells, sel))
                if thin is not None:
                    warnings.warn(thin, DataWarning, stacklevel=2)
            level_cols = plan_levels(src, policy, cfg, plan, sample_rows=behavior_sample_rows,
                                     seed=seed, selection=sel,
                                     level_seeds=None if plan is None else _level_seeds(plan, seed))
            if "cell_choice" in out.q_model or level_cols:
                out.q_model.setdefault("cell_choice", {})["target_reads"] = [
                    c.column for c in level_cols]
            if sel is not None and sel.bias.get(sel.chosen) is not None and "fqe" in keys:
                from equicare.ope._evaluate import fqe_interval_note

                fqe_bias = (sel.bias[sel.chosen], sel.bias_se[sel.chosen])
                out.q_model["fqe_interval"] = fqe_interval_note(
                    sel, refitted_levels=bool(level_cols))
            elif "fqe" in keys:
                from equicare.ope._evaluate import FQE_VARIANCE_ONLY

                out.q_model["fqe_interval"] = FQE_VARIANCE_ONLY
            main, q_cfg = out.sums, cfg
            res = finish(out.sums, alpha=alpha, n_chunks=out.n_chunks, q_model=out.q_model,
                         behavior_model=beh_info, squares=out.squares, fqe_bias=fqe_bias)
            g_sums, g_squares = out.groups, out.group_squares
            if level_cols:  # each level's own Q-model: the passes once per level
                assert plan is not None
                done, total = [0], sum(len(plan.levels[plan.attrs.index(c.column)])
                                       for c in level_cols)

                def tick() -> None:
                    done[0] += 1
                    if level_progress is not None:
                        level_progress(done[0], total)

                for col in level_cols:
                    runs, backed = evaluate_levels_stream(
                        src, policy, col, plan, keys=keys, cfg=cfg, n_boot=n_boot, seed=seed,
                        truncate=truncate, studentized=ci_method == "studentized", tick=tick)
                    levels = {r.label: finish_groups(r.plan, r.sums, r.squares, alpha=alpha,
                                                     group_bias=r.bias, truncate=truncate
                                                     )[col.column][r.label]
                              for r in runs}
                    own_levels[col.column] = (levels, per_level_info(col, backed))
        else:
            fn = functools.partial(_is_sums, policy=policy, keys=keys, horizon=src.horizon,
                                   n_boot=n_boot, seed=seed, truncate=truncate, groups=plan)
            total, n = src.map_reduce(fn, progress)
            sq = g_squares = None
            if ci_method == "studentized" or n_boot == 0:  # the standard-error (jackknife) pass
                level_coefs = None if total.groups is None else group_coefs(total.groups, seed)
                both, _ = src.map_reduce(functools.partial(
                    _is_squares, policy=policy, keys=keys, horizon=src.horizon,
                    truncate=truncate, coefs=pass_coefs(total.main, seed), groups=plan,
                    level_coefs=level_coefs))
                sq, g_squares = both.main, both.groups
            main = total.main
            res = finish(total.main, alpha=alpha, n_chunks=n, behavior_model=beh_info,
                         squares=sq)
            g_sums = total.groups
        src.flush()  # the support check's sums, when no pass was left to carry them
    report = None if support is None else support.report(keys)
    if beh_info is not None:  # in-sample propensities: plain IS / PDIS biased low, as in memory
        mean_w = res.weight_mean  # the untruncated trajectory weights' mean (finish)
        in_sample = in_sample_weights_message(beh_info, tuple(keys), mean_w, main.n_episodes,
                                              main.n_steps, src.horizon)
        if in_sample is not None:
            warnings.warn(in_sample, DataWarning, stacklevel=2)
        res = dataclasses.replace(res, behavior_model={
            **beh_info, "mean_trajectory_weight": mean_w, "in_sample_warning": in_sample})
    from equicare.ope._evaluate import far_outside_returns, out_of_range_message

    r_span = (main.rewards_min, main.rewards_max)
    far = out_of_range_message(res.estimates, (main.returns_min, main.returns_max), res.ess,
                               "logged" if beh_info is None else "estimated", r_span)
    if far is not None:  # as in memory: the importance weights blowing up, not a value
        warnings.warn(far, DataWarning, stacklevel=2)
        res = dataclasses.replace(res, out_of_range=far_outside_returns(
            res.estimates, (main.returns_min, main.returns_max), r_span))
    if plan is not None and g_sums is not None:
        res = dataclasses.replace(res, groups=finish_groups(
            plan, g_sums, g_squares, alpha=alpha,
            group_bias=None if sel is None else sel.group_bias, truncate=truncate))
    res = dataclasses.replace(res, settings={
        "estimators": list(keys), "bootstrap": n_boot, "ci_method": ci_method, "alpha": alpha,
        "truncate": truncate, "random_state": seed,
        # Poisson weights keyed by the person when the manifest names member; the jackknife
        # (n_boot=0) leaves one episode out
        "resampling": resampling_unit(None if n_boot == 0 else members),
        "propensity_source": "logged" if beh_info is None else "estimated",
        "support_check": None if support is None else support.how,
        **usual_care_settings(usual_care, None if not counted else
                              float(counted[0][0] / max(counted[0][1], 1.0)))},
        support=report,
        propensity_check=None if support is None or beh_info is not None
        else support.propensity_check())
    if own_levels:  # subgroup columns the table pools over and the target reads
        assert res.q_model is not None
        for column, (levels, _) in own_levels.items():
            res.groups[column].update(levels)
        res.q_model["per_level"] = {c: info for c, (_, info) in own_levels.items()}
    from equicare.ope._evaluate import hide_low_ess, hide_out_of_range, warn_groups_out_of_range

    far_cells: list[str] = []
    for levels in res.groups.values():  # weighted values of low-ESS levels: not published
        hide_low_ess(levels, {lv: g.weights for lv, g in levels.items()
                              if not g.suppressed and g.weights is not None}, keys,
                     MIN_CELL if plan is None else plan.min_cell)
    if plan is not None and q_cfg is not None:  # the Q-model within each level (as in memory)
        from equicare.ope._group_check import biased_groups_message
        from equicare.ope._stream_own import check_levels_stream

        check_levels_stream(res.groups, src, policy, plan, q_cfg, keys=keys, n_boot=n_boot,
                            seed=seed, truncate=truncate, studentized=ci_method == "studentized",
                            alpha=alpha, finish=functools.partial(finish_groups, alpha=alpha,
                                                                  truncate=truncate))
        from equicare.ope._prepare import q_model_name

        biased = biased_groups_message(res.groups, q_model_name(q_cfg))
        if biased is not None:
            warnings.warn(biased, DataWarning, stacklevel=2)
    for attr, levels in res.groups.items():  # after the levels' own Q-models, as in memory
        far_cells.extend(hide_out_of_range(  # against the whole panel's ranges
            attr, levels, (main.returns_min, main.returns_max) if main.n_episodes else None,
            (main.rewards_min, main.rewards_max) if main.n_steps else None))
    warn_groups_out_of_range(far_cells, stacklevel=2)
    from equicare.ope._ess import heavy_tail_groups, stream_low_ess_message, warn_low_ess

    warn_low_ess(heavy_tail_groups(res.groups, keys), stacklevel=2)  # a level's heavy tail

    warn_low_ess(stream_low_ess_message(res.estimates, res.n_episodes, res.ess,
                                        res.ess_truncated, logged=src.logged,
                                        unusable=res.out_of_range or (),
                                        weight_mean=(res.weight_mean, res.weight_mean_se),
                                        weight_pareto_k=res.weight_pareto_k),
                 stacklevel=2)  # as in memory
    return res


def _level_seeds(plan: GroupPlan, seed: int) -> dict[str, dict[str, int]]:
    """Each level's seed as the in-memory evaluation draws it (every level, suppressed too)."""
    from equicare.ope._evaluate import level_seeds

    flat = iter(level_seeds(seed, sum(len(c) for c in plan.counts)))
    return {a: {lv: next(flat) for lv in counts}
            for a, counts in zip(plan.attrs, plan.counts, strict=True)}


class _SupportRider:
    """The support check's two sums riding on the evaluation's passes (:meth:`ChunkSource.ride`).

    The first pass counts the logged ``(level, action)`` pairs (and, with logged propensities,
    samples the fast numeric model's episodes); the next sums the target's unsupported mass
    (:mod:`equicare.ope._stream_support`).
    """

    def __init__(self, src: ChunkSource, policy: Any, *, behavior_model: Any, seed: int,
                 threshold: float) -> None:
        from equicare.ope._evaluate import evaluate_seeds
        from equicare.ope._stream_support import count_chunk, fast_rate

        self.src, self.policy, self.behavior_model = src, policy, behavior_model
        self.threshold = threshold
        self.seed = evaluate_seeds(seed)[0]  # the in-memory check's fast model's seed
        self.behavior: Any = None  # the streamed behaviour model, once fitted
        self.how = ""
        self._counts: Any = None
        self._sums: Any = None
        self._check: Any = None
        rate = fast_rate(src.n_rows) if src.logged else 0.0
        src.ride(lambda: functools.partial(count_chunk, rate=rate, seed=seed), self._counted)

    def _counted(self, counts: Any) -> None:
        self._counts = counts
        self.src.ride(self._build, self._summed)

    def _build(self) -> Callable[[TrajectoryDataset], Any]:
        from equicare.ope._stream_support import PolicySupport, needs_fast_model, support_check

        c = self._counts
        fast = bool(c.sample) and needs_fast_model(
            int(c.sample[0].states.shape[1]), tuple(int(x.shape[0]) for x in c.counts))
        self._check, self.how = support_check(
            c, behavior=self.behavior, behavior_model=self.behavior_model, fast=fast,
            seed=self.seed, threshold=self.threshold)
        return PolicySupport(self._check, self.policy)

    def _summed(self, sums: Any) -> None:
        self._sums = sums

    def propensity_check(self) -> PropensityCheck | None:
        """The logged propensities' plausibility on the counting pass's sample, or None.

        The support check's fast numeric model, fitted on that sample, is reused.
        """
        if self._counts is None:
            return None
        model = None if self._check is None else self._check.model
        return sample_propensity_check(self._counts, self.src.n_rows, model=model)

    def report(self, keys: tuple[str, ...]) -> StreamSupportReport:
        """The report (a SupportWarning over 1%, as in memory)."""
        from equicare.ope._stream_support import warn_support

        assert self._sums is not None and self._check is not None
        rep: StreamSupportReport = self._sums.report(threshold=self._check.threshold,
                                uses_categorical=self._check.uses_categorical, estimators=keys)
        warn_support(rep, stacklevel=4)
        return rep
