"""Fairness audits of panels larger than memory: group sums added up chunk by chunk.

Every audit metric is a function of *group sums* of per-episode columns (allocation numerators
and denominators, need, the OPE parts of each policy's value) for the data and for each bootstrap
replicate. A chunk of whole episodes contributes ``H^T x`` and ``W (H * x)`` (``H`` the episodes'
group one-hot rows, ``W`` Poisson(1) bootstrap weights keyed by episode id, or by the person
when the manifest names ``member`` (all of a person's episodes share each weight: a bootstrap
of people), :mod:`equicare.ope._resample`), so the chunks' contributions add up and the audit
equals the
in-memory :meth:`FairnessAudit.run` given the same weights (tests check 1e-9). What is kept per
episode is a handful of numbers (for the permutation test and the level-rate table), never rows.

Group values use the importance-sampling estimators (``is``, ``wis``, ``pdis``, ``wpdis``) with the
logged propensities, or ``fqe``, ``dr``, ``wdr`` with each policy's linear, stationary tabular or
window tabular Q-model fitted first from sufficient statistics summed over chunks
(:mod:`equicare.ope._stream_q`; the same fit as in memory, its refit carried into every replicate
as the in-memory audit does). A stationary table on a panel with censored stays gets the
in-memory censoring check before the audit's pass, and ``auto`` uses the window table in its
place when the check warns, as in memory (:func:`~equicare.ope._stream_q.fit_q_checked`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._labels import check_group_labels
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.fairness._allocation import build_frames, level_table, set_levels
from equicare.fairness._audit import (
    BEHAVIOR,
    AuditResult,
    FairnessAudit,
    PolicyAudit,
    _mean_combine,
    _outcome_frame,
    allocation_stage,
    hide_low_ess,
    q_model_entry,
)
from equicare.fairness._bootstrap import split_random_state
from equicare.fairness._groups import (
    GroupIndex,
    joined_labels,
    require_comparison,
    table_index,
)
from equicare.fairness._rows import (
    NEED_RULE_NO_ROW_MESSAGE,
    action_set,
    episode_totals,
    level_matrix,
    need_rows,
    row_pass,
)
from equicare.ope._bootstrap import resampling_unit
from equicare.ope._ess import ESS_KIND
from equicare.ope._stream_groups import membership_matrix
from equicare.policy._deployed import as_deployed, deferred_counts, deployed_propensities
from equicare.privacy import few_members
from equicare.utils import PARAM_MESSAGE, RandomState, int_seed

__all__ = ["audit_stream", "STREAM_ESTIMATORS"]

#: Estimators of the group values that stream with the logged propensities alone.
STREAM_ESTIMATORS = ("is", "wis", "pdis", "wpdis")
#: Rows (about) of the sample of whole episodes that chooses the Q-model (``auto``) or its cells.
SAMPLE_ROWS = 1_000_000
#: Estimators of the group values that stream with a Q-model fitted from chunk sums.
Q_ESTIMATORS = ("fqe", "dr", "wdr")


class _Acc:
    """Running group sums of one block of columns (point and replicates)."""

    def __init__(self) -> None:
        self.point: NDArray[np.float64] | None = None
        self.reps: NDArray[np.float64] | None = None

    def add(self, h: NDArray[np.float64], x: NDArray[np.float64],
            w: NDArray[np.float64] | None) -> None:
        e, g = h.shape
        m = x.shape[1]
        hx = (h[:, :, None] * x[:, None, :]).reshape(e, g * m)
        self.merge(hx.sum(axis=0).reshape(g, m),
                   None if w is None else (w @ hx).reshape(w.shape[0], g, m))

    def merge(self, point: NDArray[np.float64] | None, reps: NDArray[np.float64] | None) -> None:
        if point is None:
            return
        self.point = point if self.point is None else self.point + point
        if reps is not None:
            self.reps = reps if self.reps is None else self.reps + reps

    def sums(self) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
        assert self.point is not None
        return self.point, self.reps


@dataclass(frozen=True)
class _Context:
    """What every chunk (or shard) of one streamed audit needs."""

    cfg: FairnessAudit
    policies: dict[str, Any]
    attrs: list[str]
    published: tuple[str, ...]
    horizon: int
    seed: int
    q_fits: dict[str, Any] = field(default_factory=dict)
    #: refit directions per policy, ``(n_params, n_groups + 1)`` (the Q-model's refit; the
    #: window table's adjoint directions, ``(H, n_params, n_groups + 1)``)
    q_refit: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    #: the support check (:class:`~equicare.ope._stream_support.SupportCheck`), or None
    support: Any = None
    #: the behaviour model fitted on sampled episodes when no propensities are logged
    #: (:class:`~equicare.ope._stream_behavior.StreamBehavior`), or None
    behavior: Any = None


@dataclass(frozen=True)
class _Membership:
    """Each episode's published group (one-hot) and, last column, whether it is audited."""

    attrs: tuple[str, ...]
    published: tuple[str, ...]

    def codes(self, ds: TrajectoryDataset) -> NDArray[np.int64]:
        """Each episode's published group, -1 for a suppressed one."""
        return np.asarray(pd.Index(self.published).get_indexer(
            joined_labels(ds.groups, list(self.attrs))), dtype=np.int64)

    def partitions(self, ds: TrajectoryDataset) -> NDArray[np.int64]:
        """Two partitions of the episodes: the published group, and the audited column.

        Shape ``(n_episodes, 2)``: the group's column, then ``n_groups`` (the audited
        episodes); -1 for a suppressed group's episodes in both.
        """
        c = self.codes(ds)
        return np.stack([c, np.where(c >= 0, len(self.published), -1)], axis=1)


@dataclass
class _RefitAcc:
    """Sums that give the Q-model's refit in every replicate (:func:`refit_shift` in memory)."""

    s1: NDArray[np.float64] | None = None  # (n_boot, C): sum_e (w_be - 1) effect_e
    s2: NDArray[np.float64] | None = None  # (n_boot,): sum_e (w_be - 1)
    s3: NDArray[np.float64] | None = None  # (C,): sum_e effect_e
    n: int = 0

    def add(self, effect: NDArray[np.float64], w: NDArray[np.float64]) -> None:
        c = w - 1.0
        self.merge(c @ effect, c.sum(axis=1), effect.sum(axis=0), effect.shape[0])

    def merge(self, s1: Any, s2: Any, s3: Any, n: int) -> None:
        if self.s1 is None:
            self.s1, self.s2, self.s3 = s1, s2, s3
        else:
            self.s1, self.s2, self.s3 = self.s1 + s1, self.s2 + s2, self.s3 + s3
        self.n += n

    def shift(self) -> NDArray[np.float64]:
        """``sum_e (w_be - 1) (effect_e - mean effect)``, shape ``(n_boot, C)``."""
        assert self.s1 is not None and self.s2 is not None and self.s3 is not None
        return np.asarray(self.s1 - self.s2[:, None] * (self.s3 / max(self.n, 1))[None, :])


@dataclass
class _EssAcc:
    """Sums that give Kish's ESS of a policy's weights in each partition (groups, then audited).

    Per partition, the :class:`~equicare.ope._ess.WeightSums` of its episodes' weights (and of
    the truncated weights) and their heaviest trajectory weights
    (:func:`~equicare.ope._ess.heaviest`), added over chunks: the numbers of
    :func:`~equicare.ope.effective_sample_size` on each partition's episodes, exactly.
    """

    sums: list[Any]
    top: NDArray[np.float64]
    truncated: list[Any] | None = None
    tail: NDArray[np.float64] | None = None

    @classmethod
    def of(cls, inputs: Any, m: NDArray[np.float64], truncate: float | None) -> _EssAcc:
        """One chunk's sums; ``m`` is the ``(n_episodes, P)`` partition indicator."""
        from equicare.ope._ess import WeightSums, heaviest
        from equicare.ope._pareto import PARETO_KEEP

        traj = inputs.cumulative_weights()[:, -1]
        own = np.where(m > 0, traj[:, None], 0.0)
        return cls(sums=WeightSums.by_group(inputs, m), top=heaviest(own),
                   truncated=None if truncate is None
                   else WeightSums.by_group(inputs, m, truncate),
                   tail=heaviest(own, min(PARETO_KEEP, own.shape[0])))

    def merge(self, other: _EssAcc) -> None:
        """Add another chunk's sums."""
        self.sums = [a + b for a, b in zip(self.sums, other.sums, strict=True)]
        if self.truncated is not None and other.truncated is not None:
            self.truncated = [a + b for a, b in zip(self.truncated, other.truncated,
                                                    strict=True)]
        from equicare.ope._ess import heaviest
        from equicare.ope._pareto import PARETO_KEEP

        self.top = heaviest(np.concatenate([self.top, other.top]))
        if self.tail is not None and other.tail is not None:
            both = np.concatenate([self.tail, other.tail])
            self.tail = heaviest(both, min(PARETO_KEEP, both.shape[0]))

    def weight_sums(self, p: int, truncate: float | None) -> Any:
        """The :class:`~equicare.ope._ess.WeightSums` of partition ``p``.

        Of the truncated weights with ``truncate``, as the estimates use.
        """
        if truncate is not None:
            assert self.truncated is not None
            return self.truncated[p]
        return self.sums[p]

    def ess(self, p: int, truncate: float | None) -> Any:
        """The :class:`~equicare.ope.EffectiveSampleSize` of partition ``p``."""
        from equicare.ope._ess import ess_from_sums

        return ess_from_sums(self.sums[p], top=self.top[:, p],
                             truncated=None if self.truncated is None else self.truncated[p],
                             truncate=truncate,
                             tail=None if self.tail is None else self.tail[:, p])


@dataclass(frozen=True)
class _Kept:
    """Whether each episode of a chunk is audited (its group is published; picklable)."""

    member: _Membership

    def __call__(self, ds: TrajectoryDataset) -> NDArray[np.bool_]:
        return np.asarray(self.member.codes(ds) >= 0)


@dataclass
class _Partial:
    """An audit's additive statistics over some chunks (merged in storage order)."""

    alloc: _Acc = field(default_factory=_Acc)
    out: dict[str, _Acc] = field(default_factory=dict)
    ep_num: list[NDArray[np.float64]] = field(default_factory=list)
    ep_den: list[NDArray[np.float64]] = field(default_factory=list)
    ep_lnum: list[NDArray[np.float64]] = field(default_factory=list)
    ep_codes: list[NDArray[np.int64]] = field(default_factory=list)
    #: each chunk's episodes' people (manifest ``member``), in the order of ``ep_codes``
    ep_members: list[NDArray[Any]] = field(default_factory=list)
    layouts: dict[str, Any] = field(default_factory=dict)
    spec: str | None = None
    level_names: list[str] = field(default_factory=list)
    audited: NDArray[np.int64] | None = None
    refit: dict[str, _RefitAcc] = field(default_factory=dict)
    ess: dict[str, _EssAcc] = field(default_factory=dict)
    support: dict[str, Any] = field(default_factory=dict)
    #: ``[rows left to current practice, rows]`` of each policy that can defer rows
    deferred: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    #: ``(min, max)`` of the episodes' discounted returns (the values' yardstick), or None
    returns_range: tuple[float, float] | None = None
    #: ``(min, max)`` of the steps' rewards (values on the side of 0 no policy reaches)
    rewards_range: tuple[float, float] | None = None
    #: each Q-valued policy's summed check statistics by group, ``(n_groups, 2, 2)``
    #: (:func:`~equicare.ope._group_check.gap_sums` of each group's episodes)
    gaps: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    #: each published group's longest stay (the horizon of its own Q-model)
    longest: NDArray[np.int64] | None = None

    def merge(self, other: _Partial) -> None:
        for k, g in other.gaps.items():
            self.gaps[k] = g if k not in self.gaps else self.gaps[k] + g
        if other.longest is not None:
            self.longest = (other.longest if self.longest is None
                            else np.maximum(self.longest, other.longest))
        if other.returns_range is not None:
            self.returns_range = other.returns_range if self.returns_range is None else (
                min(self.returns_range[0], other.returns_range[0]),
                max(self.returns_range[1], other.returns_range[1]))
        if other.rewards_range is not None:
            self.rewards_range = other.rewards_range if self.rewards_range is None else (
                min(self.rewards_range[0], other.rewards_range[0]),
                max(self.rewards_range[1], other.rewards_range[1]))
        for k, c in other.deferred.items():
            self.deferred[k] = c if k not in self.deferred else self.deferred[k] + c
        for k, e in other.ess.items():
            if k in self.ess:
                self.ess[k].merge(e)
            else:
                self.ess[k] = e
        for k, sup in other.support.items():
            self.support[k] = sup if k not in self.support else self.support[k] + sup
        for k, r in other.refit.items():
            if r.s1 is not None:
                self.refit.setdefault(k, _RefitAcc()).merge(r.s1, r.s2, r.s3, r.n)
        if other.alloc.point is not None:
            self.alloc.merge(*other.alloc.sums())
        for k, acc in other.out.items():
            if acc.point is not None:
                self.out.setdefault(k, _Acc()).merge(*acc.sums())
        self.ep_num += other.ep_num
        self.ep_den += other.ep_den
        self.ep_lnum += other.ep_lnum
        self.ep_codes += other.ep_codes
        self.ep_members += other.ep_members
        self.layouts.update(other.layouts)
        self.spec = self.spec or other.spec
        self.level_names = self.level_names or other.level_names
        self.audited = self.audited if self.audited is not None else other.audited


def _add_chunk(part: _Partial, ds: TrajectoryDataset, ctx: _Context) -> None:
    """Add one chunk of whole episodes to the partial statistics."""
    from equicare.ope import episode_keys, episode_parts, poisson_weights
    from equicare.ope._resample import resampling_ids

    cfg, pols = ctx.cfg, ctx.policies
    if ctx.behavior is not None and cfg.estimator is not None and pols:
        ds = ctx.behavior(ds)  # the estimated propensities as the chunk's behavior_prob
    names = [BEHAVIOR, *pols]
    spec, mask = action_set(ds.action_space, cfg.action)
    level_names, lmat = level_matrix(ds.action_space)
    part.spec, part.level_names = spec, level_names
    part.audited = set_levels(mask, lmat, level_names)
    cols = mask[:, None].astype(np.float64)
    if cfg.with_level_rates:
        cols = np.concatenate([cols, lmat], axis=1)
    member = _Membership(tuple(ctx.attrs), ctx.published)
    codes = member.codes(ds)
    h = membership_matrix(codes, len(ctx.published)).astype(np.float64)
    # people who re-enrol: keyed by the person, so all their episodes share every weight
    w = (poisson_weights(episode_keys(resampling_ids(ds)), cfg.n_boot, ctx.seed)
         if cfg.n_boot > 0 else None)
    if ds.members is not None:
        part.ep_members.append(np.asarray(ds.members))
    nums, lnums, p_logged = [], [], {}
    den = np.zeros(ds.n_episodes)
    for name in names:
        pol = None if name == BEHAVIOR else pols[name]
        alloc, pl, _, _ = row_pass(ds, pol, cols, source=name)
        counts = None if pol is None else deferred_counts(ds, pol)
        if counts is not None:
            part.deferred[name] = counts + part.deferred.get(name, 0.0)
        num, den = episode_totals(ds, alloc, cfg.level)
        nums.append(num[:, 0])
        lnums.append(num[:, 1:])
        p_logged[name] = pl
    nr = need_rows(ds, cfg.need, require_any=False)  # checked over the panel, after the pass
    block = [np.stack(nums, axis=1), den[:, None]]
    if nr is not None:  # the need totals and whether each episode has need (for suppression)
        need_ep = episode_totals(ds, nr, cfg.level)[0]
        block += [need_ep[:, None], (need_ep > 0)[:, None].astype(np.float64)]
    part.alloc.add(h, np.concatenate(block, axis=1), w)
    part.ep_num.append(np.stack(nums, axis=1))
    part.ep_den.append(den)
    part.ep_lnum.append(np.stack(lnums))
    part.ep_codes.append(codes)
    if cfg.estimator is None:
        return
    ones = np.ones((ds.n_episodes, 1))
    returns = ds.returns(discount=True)
    if returns.size:
        part.merge(_Partial(returns_range=(float(returns.min()), float(returns.max())),
                            rewards_range=(float(ds.rewards.min()), float(ds.rewards.max()))))
    part.out.setdefault(BEHAVIOR, _Acc()).add(
        h, np.concatenate([returns[:, None], ones], axis=1), w)
    for name in pols:
        # 1 where a deployed policy leaves the row to the clinicians (the logged action)
        b = (None if ds.behavior_prob is None
             else deployed_propensities(pols[name], ds, ds.behavior_prob))
        if b is None or not bool(np.all(np.isfinite(b) & (b > 0) & (b <= 1 + 1e-9))):
            raise DataValidationError(
                "A streamed audit values policies by importance sampling with the logged or "
                "estimated propensities; this chunk's are not all in (0, 1].")
        inputs = _inputs(ds, pols[name], p_logged[name] / b, ctx.q_fits.get(name), ctx.horizon)
        parts = episode_parts(inputs, [cfg.estimator], truncate=cfg.truncate)
        if name in ctx.q_fits:  # evaluate's check of the Q-model within each group
            from equicare.ope._group_check import episode_gaps

            gaps = episode_gaps(inputs, cfg.truncate)
            if gaps is not None:
                g_sums = np.stack([h.T @ gaps, h.T @ (gaps * gaps)], axis=1)  # (G, 2, 2)
                part.gaps[name] = g_sums + part.gaps.get(name, 0.0)
            longest = np.zeros(len(ctx.published), dtype=np.int64)
            ok = codes >= 0
            np.maximum.at(longest, codes[ok], ds.episode_lengths.astype(np.int64)[ok])
            part.merge(_Partial(longest=longest))
        part.layouts[name] = EpisodeLayout(parts.slices, parts.keys, parts.horizon)
        # the weight diagnostics: the published groups, then the audited episodes
        m = np.concatenate([h, h.sum(axis=1, keepdims=True)], axis=1)
        e_acc = _EssAcc.of(inputs, m, cfg.truncate)
        if name in part.ess:
            part.ess[name].merge(e_acc)
        else:
            part.ess[name] = e_acc
        if ctx.support is not None:
            sup = ctx.support(ds, pols[name])
            part.support[name] = sup if name not in part.support else part.support[name] + sup
        part.out.setdefault(name, _Acc()).add(h, np.concatenate([parts.matrix, ones], axis=1), w)
        if name in ctx.q_refit and w is not None:  # the Q-model's refit, group by group
            from equicare.ope._stream_q import refit_contributions

            effect = refit_contributions(ds, pols[name], ctx.q_fits[name], ctx.q_refit[name])
            part.refit.setdefault(name, _RefitAcc()).add(effect, w)


def _inputs(ds: TrajectoryDataset, policy: Any, rho: NDArray[np.float64], q: Any,
            horizon: int) -> Any:
    """A chunk's OPE inputs of a policy: its importance ratios and, with ``q``, its Q-model."""
    from equicare.ope import OPEInputs

    q_sa = v_s = None
    if q is not None:  # FQE, DR, WDR: the policy's streamed Q-model on this chunk
        q_sa, v_s = q.values(ds, policy)
    return OPEInputs(rewards=ds.rewards, episode_offsets=ds.episode_offsets, gamma=ds.gamma,
                     rho=rho, q_sa=q_sa, v_s=v_s, horizon=horizon)


@dataclass(frozen=True)
class GroupPick:
    """A chunk's episodes of the audit's published group ``j`` (picklable)."""

    member: _Membership
    j: int

    def __call__(self, ds: TrajectoryDataset) -> NDArray[np.int64]:
        return np.flatnonzero(self.member.codes(ds) == self.j)


def _one_group(ds: TrajectoryDataset) -> NDArray[np.int64]:
    """Every episode of a chunk in group 0 (a level source's chunk holds one group)."""
    return np.zeros((ds.n_episodes, 1), dtype=np.int64)


@dataclass
class _OwnSums:
    """A group's sums with its own Q-model: ``[parts, 1]``, replicates, refit, check."""

    cols: NDArray[np.float64]
    reps: NDArray[np.float64] | None
    refit: _RefitAcc
    gaps: NDArray[np.float64] | None
    layout: EpisodeLayout

    def __add__(self, o: _OwnSums) -> _OwnSums:
        refit = _RefitAcc()
        for r in (self.refit, o.refit):
            if r.s1 is not None:
                refit.merge(r.s1, r.s2, r.s3, r.n)
        return _OwnSums(cols=self.cols + o.cols,
                        reps=None if self.reps is None or o.reps is None else self.reps + o.reps,
                        refit=refit,
                        gaps=None if self.gaps is None or o.gaps is None else self.gaps + o.gaps,
                        layout=self.layout)


@dataclass(frozen=True, eq=False)
class _OwnChunk:
    """A chunk of one group's episodes valued with the group's own Q-model (picklable)."""

    name: str
    policy: Any
    q: Any
    z: NDArray[np.float64] | None
    key: str
    truncate: float | None
    n_boot: int
    seed: int
    horizon: int

    def __call__(self, ds: TrajectoryDataset) -> _OwnSums:
        from equicare.ope import episode_keys, episode_parts, poisson_weights
        from equicare.ope._group_check import episode_gaps, gap_sums
        from equicare.ope._resample import resampling_ids
        from equicare.ope._stream_q import refit_contributions

        _, pl, _, _ = row_pass(ds, self.policy, np.zeros((ds.n_actions, 0)), source=self.name)
        assert ds.behavior_prob is not None
        b = deployed_propensities(self.policy, ds, ds.behavior_prob)
        inputs = _inputs(ds, self.policy, pl / b, self.q, self.horizon)
        parts = episode_parts(inputs, [self.key], truncate=self.truncate)
        cols = np.concatenate([parts.matrix, np.ones((ds.n_episodes, 1))], axis=1)
        w = (poisson_weights(episode_keys(resampling_ids(ds)), self.n_boot, self.seed)
             if self.n_boot > 0 else None)
        refit = _RefitAcc()
        if w is not None and self.z is not None:
            refit.add(refit_contributions(ds, self.policy, self.q, self.z), w)
        gaps = episode_gaps(inputs, self.truncate)
        return _OwnSums(cols=cols.sum(axis=0), reps=None if w is None else w @ cols,
                        refit=refit, gaps=None if gaps is None else gap_sums(gaps),
                        layout=EpisodeLayout(parts.slices, parts.keys, parts.horizon))


def own_values_stream(source: Any, name: str, policy: Any, fit: Any, pick: GroupPick,
                      horizon: int, *, key: str, truncate: float | None, n_boot: int,
                      seed: int) -> Any:
    """A group's :class:`~equicare.fairness._group_q.OwnValues` with its own Q-model, streamed.

    The pooled Q-model's class and cells (``fit``, its :class:`~equicare.ope._stream_q.
    StreamQFit`) fitted again over the group's episodes of every chunk
    (:class:`~equicare.ope._stream_own.LevelSource`, the group's longest stay as the horizon, as
    in memory), its refit direction, then one pass over the group's episodes: its value, its
    replicates (the audit's Poisson weights keyed by episode id, or by the person when the
    manifest names ``member``; the own Q-model's refit linearised in each) and its check.
    About 4-5 passes over the group's episodes.
    """
    from equicare.fairness._group_q import OwnValues, value_of_sums
    from equicare.ope._core import EpisodeParts
    from equicare.ope._stream_own import LevelSource
    from equicare.ope._stream_q import GroupCodes, fit_q_stream, group_refit_directions

    src = LevelSource(source, pick, horizon)
    one = GroupCodes(codes=_one_group, n_groups=1, keys=(key,))
    own = fit_q_stream(src, policy, cfg=fit.design.cfg, keys=(key,), truncate=truncate,
                       groups=one if n_boot > 0 else None)
    z = group_refit_directions(src, own, policy, one) if n_boot > 0 else None
    sums, _ = src.map_reduce(_OwnChunk(name=name, policy=policy, q=own.applier(),
                                       z=None if z is None else z[key], key=key,
                                       truncate=truncate, n_boot=n_boot, seed=seed,
                                       horizon=horizon))
    lay = sums.layout
    tmpl = EpisodeParts(matrix=np.zeros((0, 0)), slices=lay.slices, keys=lay.keys,
                        horizon=lay.horizon)
    value, reps = value_of_sums(tmpl, key, sums.cols, sums.reps)
    if reps is not None and sums.refit.s1 is not None:
        reps = reps + sums.refit.shift()[:, 0]
    return OwnValues(value=value, reps=reps, gaps=sums.gaps)


@dataclass(frozen=True)
class EpisodeLayout:
    """Column layout of an estimator's parts (what ``combine`` needs, without the matrix)."""

    slices: dict[str, slice]
    keys: tuple[str, ...]
    horizon: int


@dataclass(frozen=True)
class _ShardTask:
    spec: Any
    ctx: _Context
    chunk_rows: int


def _run_shard(task: _ShardTask) -> _Partial:
    from equicare.data import iter_shard_chunks

    part = _Partial()
    for chunk in iter_shard_chunks(task.spec, chunk_rows=task.chunk_rows):
        _add_chunk(part, chunk.dataset, task.ctx)
    return part


def audit_stream(
    source: str | os.PathLike[str],
    policies: Mapping[str, Any] | None = None,
    *,
    manifest: Any,
    config: FairnessAudit | None = None,
    chunk_rows: int = 500_000,
    random_state: RandomState = None,
    executor: Any = None,
    n_shards: int | None = None,
    progress: bool = False,
    suppress: Collection[str] = (),
) -> AuditResult:
    """Audit the logged behaviour and each policy on a panel read in chunks of whole episodes.

    Parameters
    ----------
    source : path-like
        Parquet file or folder, CSV or DuckDB file.
    policies : mapping of name to Policy, optional
        Each must serve any subset of the panel's rows (a policy file, a model folder).
    manifest : Manifest, dict or path to a TOML manifest
    config : FairnessAudit, optional
        Settings (default ``FairnessAudit()``); ``estimator`` must be one of ``is, wis, pdis,
        wpdis``, None, or ``fqe, dr, wdr`` with ``q_model="linear"``,
        ``"tabular_stationary"``, ``"tabular_window"`` (with several categorical state columns
        a table's cells are chosen on a sample of whole episodes, as streamed ``evaluate``
        does) or ``"auto"`` (each policy's choice between the linear model and the stationary
        table on that sample, :func:`~equicare.ope._stream_q.choose_q_stream`, and the window
        table in place of the stationary one when censored stays bias it, as in memory). A
        stationary table gets ``evaluate``'s censoring check (one more pass when censoring
        could move the value by 2%): the policy's ``diagnostics.censoring``, and a named
        table's warning.
    chunk_rows : int
        Rows per chunk. Without logged propensities (no ``dataset.behavior_prob``) a logistic
        behaviour model is fitted on a random sample of whole episodes (about 1,000,000 rows;
        the whole panel when smaller, then the in-memory audit's model) and its out-of-fold
        propensities weight the episodes, as :func:`~equicare.ope.evaluate_stream` does
        (:func:`~equicare.ope._stream_behavior.fit_behavior_stream`).
    random_state : int, Generator or None, default=None
        Seed of the Poisson bootstrap weights (keyed by episode id, or by the person when the
        manifest names ``member``) and of the permutation test (labels shuffled over people
        then).
        The default is the in-memory :func:`~equicare.fairness.audit`'s (``None``: a seed drawn
        from fresh OS entropy; a Generator draws one int seed); ``equicare audit`` passes
        ``--seed`` (default 42) to both. Pass an int to reproduce a result.
    executor : object with ``map(fn, items)``, optional
        Runs one task per shard (a local process pool or a Ray cluster); the panel must be a
        clustered Parquet file or folder every worker can read.
    n_shards : int, optional
        Shards for the executor (default: its worker count, else 2).
    progress : bool, default=False
        One ``[audit] ...`` line per stage on stderr, bars over the policies' Q-models and over
        the rows of the audit's pass (advanced per chunk or shard); never changes a number.
    suppress : collection of str, optional
        Group cells to suppress whatever their size, named as the audit names its groups, as
        :meth:`FairnessAudit.run`'s: e.g. the held-out cells whose training complement is
        small (:func:`equicare.privacy.split_withheld`;
        :func:`~equicare.fairness._groups.withheld_cells` of the panel's scan gives an
        intersection's). Complementary suppression completes them, as in memory (the cells
        are decided by the same function, before the first chunk is read).

    Returns
    -------
    AuditResult
        The same result as ``config.run(dataset, policies, weights=W, random_state=seed)`` on the
        whole panel in memory with ``W = poisson_weights(episode_keys(ids), n_boot, seed)``
        (``ids`` the members when the manifest names them; the in-memory audit's permutations
        are then drawn from another stream, so the p-values agree only in distribution).
    """
    from equicare._progress import Stages
    from equicare.data import iter_chunks, scan_panel
    from equicare.data._manifest import manifest_of as _manifest_of
    from equicare.ope import combine
    from equicare.ope._core import EpisodeParts, undefined_estimates
    from equicare.ope._stream import ChunkSource, executor_session

    cfg = config if config is not None else FairnessAudit()
    if cfg.estimator not in (*STREAM_ESTIMATORS, *Q_ESTIMATORS, None):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="estimator", owner="audit_stream",
            expected="one of 'is', 'wis', 'pdis', 'wpdis', 'fqe', 'dr', 'wdr' or None",
            got=cfg.estimator))
    from equicare.ope._stream_q import STREAM_Q_NAMED

    if cfg.estimator in Q_ESTIMATORS and cfg.q_model not in (*STREAM_Q_NAMED, "auto"):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="q_model", owner="audit_stream",
            expected=f"'auto', 'linear', 'tabular_stationary' or 'tabular_window' with "
                     f"estimator={cfg.estimator!r} (fitted from sums over chunks; the backward "
                     "table, gbm and mlp need the whole panel in memory)", got=cfg.q_model))
    seed = int_seed(random_state, "audit_stream")  # checked before the panel is scanned
    pols = {k: as_deployed(v, cfg.usual_care) for k, v in (policies or {}).items()}
    if BEHAVIOR in pols:
        raise InvalidParameterError(
            f"The policy name {BEHAVIOR!r} is reserved for the logged behaviour.")
    man = _manifest_of(manifest)
    scan = scan_panel(source, man)
    if not man.groups:
        raise DataValidationError("The panel has no group attributes (manifest dataset.groups); "
                                  "a fairness audit needs at least one.")
    attrs = [cfg.group or man.groups[0], *cfg.intersect]
    unknown = [a for a in attrs if a not in man.groups]
    if unknown:
        raise DataValidationError(f"Unknown group attribute(s) {unknown}; the panel has "
                                  f"{list(man.groups)}.")
    for a in attrs:  # before str() makes a missing label a group "nan" (chunks check it later)
        check_group_labels(scan.episode_groups[a], a, str(source), scan.episode_ids)
    gname = " x ".join(attrs)
    # the cells published, decided as in memory (small, withheld, complementary; cells of
    # fewer than 11 people when the manifest names member)
    if scan.episode_members is not None:
        suppress = {*suppress, *few_members(joined_labels(scan.episode_groups, attrs),
                                            scan.episode_members, cfg.min_cell)}
    gi_all = require_comparison(table_index(scan.episode_groups, attrs, min_cell=cfg.min_cell,
                                            withheld=suppress, source=str(source)))
    _, rng = split_random_state(seed)
    names = [BEHAVIOR, *pols]
    say = Stages("audit", progress)
    say(f"{scan.n_rows} rows, {len(scan.episode_ids)} episodes in chunks of {chunk_rows} rows: "
        f"allocation by {gname} of {', '.join(names)}")
    with executor_session(executor):  # one local pool for the Q-model's passes and this one
        q_fits: dict[str, Any] = {}
        q_refit: dict[str, NDArray[np.float64]] = {}
        censoring: dict[str, Any] = {}  # each policy's censoring check (stationary table)
        q_models: dict[str, Any] = {}  # each policy's q_model entry (auto's choice)
        fits: dict[str, Any] = {}  # each policy's streamed Q-model fit
        src: Any = None
        behavior: Any = None
        counted: dict[str, Any] = {}
        kept = _Kept(_Membership(tuple(attrs), gi_all.labels))
        if cfg.estimator is not None and pols:
            # the support check's counts over the whole panel (what practice does, as the
            # in-memory behaviour model sees it): on the Q-model's first pass, else a pass of
            # their own (the mass of the audited episodes is summed in the audit's pass)
            import functools

            from equicare.ope._stream_support import count_chunk, fast_rate

            src = ChunkSource(source, manifest=man, chunk_rows=chunk_rows, executor=executor,
                              n_shards=n_shards, owner="audit_stream")
            src.ride(lambda: functools.partial(
                count_chunk, rate=fast_rate(scan.n_rows) if src.logged else 0.0, seed=seed),
                lambda c: counted.__setitem__("counts", c))
            if not src.logged:  # as streamed evaluate: a behaviour model on sampled episodes
                from equicare.ope._evaluate import nuisance_seed

                say("no logged propensities: a behaviour model on a sample of episodes")
                from equicare.ope._stream_behavior import fit_behavior_stream

                behavior = fit_behavior_stream(src, model="logistic", sample_rows=SAMPLE_ROWS,
                                               seed=seed, model_seed=nuisance_seed(seed))
                src.transform = behavior
        if cfg.estimator in Q_ESTIMATORS and pols:
            # each policy's Q-model from sums over chunks (two passes, one more for the linear
            # model's stability check or the stationary table's censoring check), then applied
            # chunk by chunk below
            from equicare.ope._evaluate import nuisance_seed
            from equicare.ope._prepare import q_model_name
            from equicare.ope._stream_q import (
                GroupCodes,
                fit_q_checked,
                group_refit_directions,
                resolve_stream_q,
            )

            fit_seed = nuisance_seed(seed)  # the in-memory audit's (and evaluate's) Q-model seed
            q_key = str(cfg.estimator)
            memb = _Membership(tuple(attrs), gi_all.labels)
            codes = (GroupCodes(codes=memb.partitions, n_groups=len(memb.published) + 1,
                                keys=(q_key,)) if cfg.n_boot > 0 else None)

            def q_fit(pol: Any) -> tuple[Any, Any, dict[str, Any]]:
                # auto: per policy, chosen on a sample of episodes, and the window table in
                # place of the stationary one when censored stays bias it (as in memory)
                qcfg, sel, _ = resolve_stream_q(src, pol, cfg.q_model, keys=[q_key],
                                                sample_rows=SAMPLE_ROWS, seed=seed,
                                                model_seed=fit_seed)
                # each group's refit pieces ride on the fit's pass 1
                fit, check = fit_q_checked(src, pol, cfg=qcfg, keys=(q_key,),
                                           truncate=cfg.truncate, groups=codes,
                                           switch=sel is not None)
                if sel is not None and check is not None and check.switched:
                    sel = dataclasses.replace(sel, chosen="tabular_window",
                                              replaced=sel.chosen, group_bias={})
                return fit, check, q_model_entry(
                    sel, q_model_name(fit.design.cfg), src.state_names(),
                    None if fit.cells is None else fit.cells.varying)

            with say.bar(f"{q_key} Q-models", len(pols)) as bar:
                for name, pol in pols.items():
                    say(f"{name}: {cfg.q_model} Q-model for {q_key} from chunk sums")
                    fits[name], censoring[name], q_models[name] = q_fit(pol)
                    bar.update(advance=1, info=name)
            q_fits = {name: f.applier() for name, f in fits.items()}
            if codes is not None:  # each group's refit direction
                for name, f in fits.items():
                    z = group_refit_directions(src, f, pols[name], codes)
                    if z is not None:
                        q_refit[name] = z[q_key]
        check = None
        if src is not None:
            from equicare.ope._evaluate import evaluate_seeds
            from equicare.ope._stream_support import needs_fast_model, support_check

            say("support check of the policies over the audited episodes")
            src.flush()
            c = counted["counts"]
            fast = bool(c.sample) and needs_fast_model(
                int(c.sample[0].states.shape[1]), tuple(int(x.shape[0]) for x in c.counts))
            # the in-memory audit's check: LoggedSupport on the panel, evaluate's seed, the
            # audited episodes' rows reported
            check, _ = support_check(c, behavior=behavior, fast=fast,
                                     seed=evaluate_seeds(seed)[0], episodes=kept)
        ctx = _Context(cfg=cfg, policies=pols, attrs=attrs, published=gi_all.labels,
                       horizon=scan.max_len, seed=seed, q_fits=q_fits, q_refit=q_refit,
                       support=check, behavior=behavior)
        part = _Partial()
        what = "allocation" if cfg.estimator is None else f"allocation and {cfg.estimator} values"
        say(f"{what}: one pass over the panel, Poisson bootstrap {cfg.n_boot} replicates")
        with say.bar("rows", scan.n_rows) as bar:
            if executor is not None:
                from equicare.data import plan_shards

                shards = n_shards or int(getattr(executor, "n_workers", 2) or 2)
                tasks = [_ShardTask(spec=s, ctx=ctx, chunk_rows=chunk_rows)
                         for s in plan_shards(source, man, shards, scan=scan)]
                from equicare._tasks import iter_map  # workers' warnings relayed

                for t, p in zip(tasks, iter_map(executor, _run_shard, tasks), strict=True):
                    part.merge(p)
                    bar.update(advance=t.spec.stop - t.spec.start)
            else:
                for chunk in iter_chunks(source, man, chunk_rows=chunk_rows, scan=scan):
                    _add_chunk(part, chunk.dataset, ctx)
                    bar.update(advance=chunk.dataset.n_steps)
        # evaluate's check of each policy's Q-model within each group; a group whose TD
        # residuals stand out gets the Q-model's passes again over its own episodes
        own_q = {name: _stream_checks(src, name, pols[name], fits[name], part, gi_all, attrs,
                                      cfg, seed, say)
                 for name in pols if name in fits and name in part.gaps}
    spec = part.spec
    assert spec is not None
    gi = GroupIndex(name=gname, labels=gi_all.labels, suppressed=gi_all.suppressed,
                    codes=np.concatenate(part.ep_codes), counts=gi_all.counts,
                    min_cell=cfg.min_cell, small=gi_all.small)
    num_all = np.concatenate(part.ep_num)
    den_all = np.concatenate(part.ep_den)
    if isinstance(cfg.need, str) and not part.alloc.sums()[0][:, len(names) + 1].any():
        raise DataValidationError(NEED_RULE_NO_ROW_MESSAGE.format(rule=cfg.need, ranges=""))
    say(allocation_stage(cfg.n_boot, cfg.n_permutations))
    clusters = (np.concatenate(part.ep_members)
                if part.ep_members and len(part.ep_members) == len(part.ep_codes) else None)
    frames = build_frames(names, num_all, den_all, None, gi, None, action=spec,
                          level=cfg.level, alpha=cfg.alpha,
                          ci_method=cfg.ci_method, n_permutations=cfg.n_permutations,
                          random_state=rng, sums=part.alloc.sums(), clusters=clusters)
    outcomes: dict[str, Any] = dict.fromkeys(names)
    diags: dict[str, Any] = dict.fromkeys(names)
    if cfg.estimator is not None:
        outcomes[BEHAVIOR] = _outcome_frame(BEHAVIOR, "on_policy", np.zeros((0, 1)),
                                            _mean_combine, gi, None, cfg.alpha, cfg.ci_method,
                                            sums=part.out[BEHAVIOR].sums())
        key = cfg.estimator
        for name in pols:
            parts = part.layouts[name]

            def comb(s: NDArray[np.float64], c: NDArray[np.float64], parts: Any = parts
                     ) -> NDArray[np.float64]:
                tmpl = EpisodeParts(matrix=np.zeros((0, 0)), slices=parts.slices,
                                    keys=parts.keys, horizon=parts.horizon)
                return np.asarray(combine(tmpl, s, np.asarray(c))[key])

            def why(s: NDArray[np.float64], parts: Any = parts) -> str | None:
                tmpl = EpisodeParts(matrix=np.zeros((0, 0)), slices=parts.slices,
                                    keys=parts.keys, horizon=parts.horizon)
                return undefined_estimates(tmpl, s).get(key)

            acc = part.refit.get(name)
            outcomes[name] = _outcome_frame(
                name, key, np.zeros((0, 1)), comb, gi, None, cfg.alpha, cfg.ci_method,
                sums=part.out[name].sums(),
                rep_shift=None if acc is None or acc.s1 is None else acc.shift(), reason_fn=why)
            cells = {g: part.ess[name].weight_sums(j, cfg.truncate)
                     for j, g in enumerate(gi.labels)}
            if key in ESS_KIND:
                outcomes[name] = hide_low_ess(outcomes[name], cells, gi.min_cell)
            q_msg = None
            if name in own_q:  # the corrected group values, as in memory
                from equicare.fairness._group_q import corrected_frame, dr_withheld, refit_message

                outcomes[name] = corrected_frame(outcomes[name], *own_q[name],
                                                 dr_withheld(cells, gi.min_cell))
                q_msg = refit_message(name, outcomes[name], q_models[name]["chosen"])
            diags[name] = _diagnostics(name, key, part, gi, check, cfg.truncate,
                                       censoring.get(name), outcomes[name],
                                       None if behavior is None else behavior.info,
                                       scan.max_len, q_msg)
    levels = None
    if cfg.with_level_rates:
        levels = level_table(names, np.concatenate(part.ep_lnum, axis=1), den_all, gi,
                             part.level_names, frames, part.audited)
    return AuditResult(group=gname, action=spec, n_episodes=gi.n_kept,
                       policies={k: PolicyAudit(k, frames[k], outcomes[k], diags[k],
                                                q_models.get(k))
                                 for k in names},
                       settings={**cfg.to_dict(), "resampling": resampling_unit(clusters),
                                 "deferred_share": {
                           k: float(c[0] / max(c[1], 1.0)) for k, c in part.deferred.items()}},
                       level_rates=levels)


def _stream_checks(src: Any, name: str, policy: Any, fit: Any, part: _Partial, gi: GroupIndex,
                   attrs: list[str], cfg: FairnessAudit, seed: int, say: Any
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """One policy's check of its Q-model in each published group, and the refitted values.

    As :func:`~equicare.fairness._group_q.memory_checks`, from the groups' check statistics
    summed in the audit's pass; a group whose TD residuals stand out gets its own Q-model
    (:func:`own_values_stream`).
    """
    from equicare.ope._group_check import needs_own_fit, plan_checks
    from equicare.ope._levels import REFIT_MODELS

    labels = list(gi.labels)
    checks = plan_checks({g: part.gaps[name][j] for j, g in enumerate(labels)},
                         {g: int(c) for g, c in zip(labels, gi.counts, strict=True)})
    member = _Membership(tuple(attrs), gi.labels)
    own = {}
    assert part.longest is not None and cfg.estimator is not None
    for g, chk in checks.items():
        if needs_own_fit(chk, fit.design.cfg.model in REFIT_MODELS):
            j = labels.index(g)
            say(f"{name}: {cfg.estimator} Q-model of group {g} on its own episodes")
            own[g] = own_values_stream(src, name, policy, fit, GroupPick(member, j),
                                       int(part.longest[j]), key=cfg.estimator,
                                       truncate=cfg.truncate, n_boot=cfg.n_boot, seed=seed)
    return checks, own


def _diagnostics(name: str, key: str, part: _Partial, gi: GroupIndex, check: Any,
                 truncate: float | None, censoring: Any = None, values: Any = None,
                 behavior: dict[str, Any] | None = None, max_length: int = 0,
                 q_check: str | None = None) -> Any:
    """The in-memory audit's weight and support diagnostics of one policy, from chunk sums.

    ``censoring``: the policy's censoring check (:func:`~equicare.ope._stream_q.fit_q_checked`);
    ``values``: its group values, checked against the returns' range as in memory;
    ``behavior``: the summary of the behaviour model of estimated propensities (its in-sample
    warning, from the audited episodes' summed weights, as in memory), or None; ``q_check``:
    the warning on groups refitted on their own episodes or whose FQE is biased.
    """
    from equicare.fairness._audit import in_sample_of
    from equicare.fairness._diagnostics import diagnose

    acc = part.ess[name]
    n_groups = len(gi.labels)
    in_sample = None
    if behavior is not None:
        audited = acc.sums[n_groups]  # the last partition: the audited episodes
        n_ep = float(audited.trajectory[2, 0])
        in_sample = in_sample_of(name, key, behavior,
                                 float(audited.trajectory[0, 0]) / n_ep if n_ep else float("nan"),
                                 int(n_ep), int(audited.per_decision[2].sum()), max_length)
    support = None
    if check is not None and name in part.support:
        support = part.support[name].report(threshold=check.threshold,
                                            uses_categorical=check.uses_categorical,
                                            estimators=(key,))
    return diagnose(name, key, acc.ess(n_groups, truncate),
                    {g: acc.ess(j, truncate) for j, g in enumerate(gi.labels)}, support,
                    censoring=censoring, values=values, returns_range=part.returns_range,
                    rewards_range=part.rewards_range,
                    in_sample=in_sample, q_check=q_check)
