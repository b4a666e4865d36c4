r"""Subgroups of a streamed evaluation: every estimator within each level of each group attribute.

A level's estimates are the whole panel's estimators on its own episodes, with the nuisance models
fitted once on all of them (as in memory, :func:`equicare.ope.evaluate_subgroups`). So a
level's statistics are the same additive sums as the panel's
(:class:`~equicare.ope._stream_sums.StreamSums`) restricted to its episodes: each chunk adds its
members' parts, their Poisson-bootstrap sums and trajectory weights to the level's sums, and the
chunks' sums add up in any order or sharding. Every attribute partitions the episodes, so the
levels of one attribute cost one more set of the panel's bootstrap products, whatever their
number.

With a Q-model (FQE, DR, WDR) a level's estimate moves with the Q-model's refit on *every*
episode, its own and the others, by ``sum_e (w_be - 1) x_e^T z_c delta_e`` to first order, with
``z_c = M^{-T} dF_c/dtheta`` the level's own refit direction
(:func:`~equicare.ope._stream_q.group_refit_directions`). As in memory
(:func:`equicare.ope._evaluate.refit_effects`), the level's own episodes carry that term in their
parts (an influence column, studentised with the rest) and the other episodes' term is an
independent replicate shift, centred on their mean, whose variance is added to every studentising
standard error (:class:`~equicare.ope._bootstrap.Shift`). Its sums (:class:`OtherRefit`) are
additive too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._labels import check_group_labels
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.ope._bootstrap import Shift
from equicare.ope._core import OPEInputs
from equicare.ope._ess import WeightSums
from equicare.ope._group_check import episode_gaps, gap_sums
from equicare.ope._resample import resampling_ids
from equicare.ope._stream_sums import (
    JackknifeCoefs,
    JackknifeSums,
    SquareSums,
    StreamSums,
    StudentCoefs,
    episode_sums,
    pass_coefs,
)
from equicare.privacy import suppressed_levels
from equicare.utils import PARAM_MESSAGE

__all__ = ["GroupPlan", "GroupSums", "GroupSquares", "OtherRefit", "WithGroups", "plan_groups",
           "check_suppress",
           "group_chunk_sums", "group_chunk_squares", "group_coefs", "membership_matrix"]


@dataclass(frozen=True)
class GroupPlan:
    """The levels an evaluation reports, fixed before any estimate (before the first chunk).

    In memory and streamed alike (:func:`plan_groups`), so both publish the same levels.

    Attributes
    ----------
    attrs : tuple of str
        Group attributes (manifest ``dataset.groups``).
    levels : tuple of tuple of str
        Each attribute's published levels (at least ``min_cell`` episodes, not withheld by the
        caller, and not suppressed to protect a smaller or withheld one,
        :func:`equicare.privacy.suppressed_levels`), sorted.
    counts : tuple of dict of str to int
        Each attribute's episodes per level, suppressed levels included.
    min_cell : int
    """

    attrs: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    counts: tuple[dict[str, int], ...]
    min_cell: int

    @property
    def columns(self) -> list[tuple[str, str]]:
        """``(attribute, level)`` of every published level, in the sums' order."""
        return [(a, lv) for a, lvs in zip(self.attrs, self.levels, strict=True) for lv in lvs]

    @property
    def n_columns(self) -> int:
        return sum(len(lvs) for lvs in self.levels)

    def hidden(self, attr: str) -> set[str]:
        """The suppressed levels of ``attr`` (primary, withheld and complementary)."""
        j = self.attrs.index(attr)
        return set(self.counts[j]) - set(self.levels[j])

    def codes(self, ds: TrajectoryDataset) -> NDArray[np.int64]:
        """Each episode's column for every attribute (-1: a suppressed level).

        Returns
        -------
        ndarray of shape (n_episodes, n_attrs)
        """
        out = np.empty((ds.n_episodes, len(self.attrs)), dtype=np.int64)
        offset = 0
        for j, (a, lvs) in enumerate(zip(self.attrs, self.levels, strict=True)):
            idx = pd.Index(lvs).get_indexer(np.asarray(ds.group_labels(a)).astype(str))
            out[:, j] = np.where(idx >= 0, idx + offset, -1)
            offset += len(lvs)
        return out



def membership_matrix(codes: NDArray[np.int64], n_columns: int) -> NDArray[np.bool_]:
    """One-hot membership of episodes given their columns in one or more partitions.

    Parameters
    ----------
    codes : ndarray of shape (n_episodes,) or (n_episodes, P)
        Each episode's column in each of ``P`` partitions of the episodes (-1: none).
    n_columns : int

    Returns
    -------
    ndarray of shape (n_episodes, n_columns)
    """
    c = np.asarray(codes, dtype=np.int64).reshape(codes.shape[0], -1)
    m = np.zeros((c.shape[0], n_columns), dtype=bool)
    rows, part = np.nonzero(c >= 0)
    m[rows, c[rows, part]] = True
    return m


def plan_groups(labels: Mapping[str, NDArray[Any]], attrs: Sequence[str] | None,
                min_cell: int, *, where: str = "subgroups",
                episode_ids: NDArray[Any] | None = None,
                withheld: Mapping[str, Collection[str]] | None = None,
                owner: str = "evaluate") -> GroupPlan | None:
    """The :class:`GroupPlan` of a panel's per-episode group labels.

    The one place where an evaluation's published levels are decided, in memory
    (:func:`~equicare.ope.evaluate`) and streamed (:func:`~equicare.ope.evaluate_stream`).

    Parameters
    ----------
    labels : mapping of str to ndarray of shape (n_episodes,)
        Every group attribute's label of each episode (the scan of a panel on storage, or a
        dataset's ``groups``).
    attrs : sequence of str, optional
        Attributes to report (default: every one the panel has).
    min_cell : int
        Levels with fewer episodes are suppressed.
    where : str
        What holds the labels (the panel's file), named when a label is missing.
    episode_ids : ndarray of shape (n_episodes,), optional
        The episodes' ids, to name those without a label.
    withheld : mapping of str to collection of str, optional
        Levels to suppress whatever their size, by attribute (the ``suppress`` of
        ``evaluate``): e.g. held-out levels whose training complement is small
        (:func:`equicare.privacy.split_withheld`). Complementary suppression completes them
        like small levels. A key that is not a reported attribute is an error.
    owner : str
        The function named in that error.

    Returns
    -------
    GroupPlan or None
        None when there is no attribute to report.
    """
    names = list(labels) if attrs is None else list(attrs)
    unknown = [a for a in names if a not in labels]
    if unknown:
        raise DataValidationError(
            f"Unknown group attribute(s) {unknown} for the subgroups; the panel's manifest names "
            f"{list(labels)} as dataset.groups.")
    hold = check_suppress(withheld, names, owner)
    if not names:
        return None
    levels, counts = [], []
    for a in names:
        # str() would make None a level "None"
        check_group_labels(labels[a], a, where, episode_ids)
        lv, n = np.unique(np.asarray(labels[a]).astype(str), return_counts=True)
        # primary (small or withheld) and complementary
        hidden = suppressed_levels(labels[a], min_cell, hold.get(a, ()))
        counts.append({str(k): int(c) for k, c in zip(lv, n, strict=True)})
        levels.append(tuple(str(k) for k in lv if str(k) not in hidden))
    return GroupPlan(attrs=tuple(names), levels=tuple(levels), counts=tuple(counts),
                     min_cell=int(min_cell))


def check_suppress(suppress: Mapping[str, Collection[str]] | None, attrs: Sequence[str],
                   owner: str = "evaluate") -> dict[str, set[str]]:
    """``suppress`` of an evaluation as sets of str, its attributes among the evaluated ones."""
    out = {str(a): {str(v) for v in lv} for a, lv in (suppress or {}).items()}
    bad = sorted(set(out) - set(attrs))
    if bad:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="suppress", owner=owner,
            expected=("a mapping whose keys are evaluated group attributes "
                      f"({', '.join(map(str, attrs)) or 'none'})"), got=bad))
    return out


@dataclass
class OtherRefit:
    """Sums that give each level's *other* episodes' share of the Q-model's refit.

    With ``c_be = w_be - 1`` and ``f_e`` the episode's effect on the level's estimate:

    Attributes
    ----------
    s1 : ndarray of shape (n_boot, C, K)
        ``sum_{e not in c} c_be f_e``.
    s2 : ndarray of shape (n_boot, C)
        ``sum_{e not in c} c_be``.
    s3, s4 : ndarray of shape (C, K)
        ``sum_{e not in c} f_e`` and ``sum_{e not in c} f_e^2``.
    n : ndarray of shape (C,)
        Episodes not in each level.
    """

    s1: NDArray[np.float64]
    s2: NDArray[np.float64]
    s3: NDArray[np.float64]
    s4: NDArray[np.float64]
    n: NDArray[np.float64]

    def __add__(self, o: OtherRefit) -> OtherRefit:
        return OtherRefit(s1=self.s1 + o.s1, s2=self.s2 + o.s2, s3=self.s3 + o.s3,
                          s4=self.s4 + o.s4, n=self.n + o.n)

    def shift(self, column: int, keys: Sequence[str]) -> Shift:
        """Level ``column``'s other episodes' replicate term and its variance.

        The term is ``sum_{e not in c} c_be (f_e - mean f)``, its variance
        ``sum_{e not in c} (f_e - mean f)^2``.
        """
        n = max(float(self.n[column]), 1.0)
        mean = self.s3[column] / n
        reps = self.s1[:, column, :] - self.s2[:, column, None] * mean[None, :]
        var = np.maximum(self.s4[column] - self.s3[column] ** 2 / n, 0.0)
        return Shift(replicates={k: np.asarray(reps[:, j]) for j, k in enumerate(keys)},
                     variance={k: float(var[j]) for j, k in enumerate(keys)})


@dataclass
class GroupSums:
    """Each published level's :class:`StreamSums` (None: no episode yet) and the refit sums.

    ``gaps``: each level's summed ``DR_e - FQE_e`` and TD residuals and their squares
    (:func:`~equicare.ope._group_check.gap_sums`, shape ``(2, 2)``; None without a Q-model).
    """

    sums: list[StreamSums | None]
    other: OtherRefit | None = None
    gaps: list[NDArray[np.float64] | None] | None = None

    def __add__(self, o: GroupSums) -> GroupSums:
        def add(a: Any, b: Any) -> Any:
            return b if a is None else a if b is None else a + b

        sums = [add(a, b) for a, b in zip(self.sums, o.sums, strict=True)]
        gaps = (None if self.gaps is None or o.gaps is None
                else [add(a, b) for a, b in zip(self.gaps, o.gaps, strict=True)])
        return GroupSums(sums=sums, other=add(self.other, o.other), gaps=gaps)


@dataclass
class GroupSquares:
    """Each level's summed squared influences (studentized intervals), or jackknife sums."""

    sq: list[SquareSums | JackknifeSums | None]

    def __add__(self, o: GroupSquares) -> GroupSquares:
        def add(a: Any, b: Any) -> Any:  # the same kind on both sides (one pass's sums)
            return b if a is None else a if b is None else a + b

        return GroupSquares(sq=[add(a, b) for a, b in zip(self.sq, o.sq, strict=True)])


@dataclass
class WithGroups:
    """A pass's whole-panel statistics and, when subgroups are asked, the levels' (additive)."""

    main: Any
    groups: Any = None

    def __add__(self, o: WithGroups) -> WithGroups:
        return WithGroups(self.main + o.main,
                          None if self.groups is None or o.groups is None
                          else self.groups + o.groups)


def _level_matrix(mat: NDArray[np.float64], own: NDArray[np.int64], column: int,
                  eff: NDArray[np.float64] | None) -> NDArray[np.float64]:
    """The level's rows of ``mat``, its own refit effects in the influence columns."""
    if eff is None:
        return mat[own]
    k = eff.shape[2]
    return np.concatenate([mat[own, :mat.shape[1] - k], eff[own, column, :]], axis=1)


def _levels(plan: GroupPlan, codes: NDArray[np.int64]) -> list[tuple[int, NDArray[np.int64]]]:
    """``(column, member episodes)`` of every level with episodes in the chunk."""
    out = []
    for j in range(codes.shape[1]):
        col = codes[:, j]
        order = np.argsort(col, kind="stable")
        values, starts = np.unique(col[order], return_index=True)
        bounds = np.r_[starts, col.size]
        out += [(int(v), order[bounds[i]:bounds[i + 1]])
                for i, v in enumerate(values) if v >= 0]
    return out


def group_chunk_sums(ds: TrajectoryDataset, mat: NDArray[np.float64],
                     traj_weights: NDArray[np.float64], w: NDArray[np.float64],
                     plan: GroupPlan, *, layout: Any, infl_keys: tuple[str, ...] = (),
                     eff: NDArray[np.float64] | None = None,
                     trunc_weights: NDArray[np.float64] | None = None,
                     inputs: OPEInputs | None = None, truncate: float | None = None
                     ) -> GroupSums:
    """One chunk's contribution to every level's statistics.

    Parameters
    ----------
    ds : TrajectoryDataset
        The chunk (whole episodes).
    mat : ndarray of shape (n_episodes, n_parts + 1 + K)
        The chunk's matrix as the estimates pass built it: parts, return, and (``K`` = number of
        ``infl_keys``) the panel's raw refit influences, replaced here by the level's own.
    traj_weights : ndarray of shape (n_episodes,)
        Trajectory weights (the levels' effective sample sizes).
    w : ndarray of shape (n_boot, n_episodes)
        The episodes' Poisson bootstrap weights.
    plan : GroupPlan
    layout : tuple
        ``StreamSums.parts_layout``.
    infl_keys : tuple of str
        Estimators whose Q-model refit enters the bootstrap.
    eff : ndarray of shape (n_episodes, n_columns, K), optional
        Each episode's first-order effect on each level's estimate (``x_e^T z_c delta_e``).
    trunc_weights : ndarray of shape (n_episodes,), optional
        Truncated trajectory weights (with ``truncate``).
    inputs : OPEInputs, optional
        The chunk's OPE inputs: each level's summed weights per step
        (:attr:`StreamSums.weights`, whether its weighted values may be published) and, when
        they carry the Q-model, each level's check sums (:attr:`GroupSums.gaps`).
    truncate : float, optional
        The truncation of the weights the estimates use.
    """
    codes = plan.codes(ds)
    sums: list[StreamSums | None] = [None] * plan.n_columns
    lengths = ds.episode_lengths
    ws = (None if inputs is None else
          WeightSums.by_group(inputs, membership_matrix(codes, plan.n_columns), truncate))
    gaps = None if inputs is None else episode_gaps(inputs, truncate)
    level_gaps: list[NDArray[np.float64] | None] | None = (
        None if gaps is None else [None] * plan.n_columns)
    for c, own in _levels(plan, codes):  # a loop over levels, each a vectorised block
        level = episode_sums(_level_matrix(mat, own, c, eff if infl_keys else None),
                             w[:, own], traj_weights[own], n_steps=int(lengths[own].sum()),
                             gamma=ds.gamma, layout=layout, infl_keys=infl_keys,
                             trunc_weights=None if trunc_weights is None
                             else trunc_weights[own])
        sums[c] = level if ws is None else dataclasses.replace(level, weights=ws[c])
        if level_gaps is not None and gaps is not None:
            level_gaps[c] = gap_sums(gaps[own])
    other = None
    if eff is not None and infl_keys:
        n_e, n_c, k = eff.shape
        notm = (~membership_matrix(codes, n_c)).astype(np.float64)  # (n_episodes, C)
        e2 = eff * notm[:, :, None]
        cw = w - 1.0
        other = OtherRefit(s1=(cw @ e2.reshape(n_e, n_c * k)).reshape(w.shape[0], n_c, k),
                           s2=cw @ notm, s3=e2.sum(axis=0), s4=(e2 * e2).sum(axis=0),
                           n=notm.sum(axis=0))
    return GroupSums(sums=sums, other=other, gaps=level_gaps)


def group_coefs(groups: GroupSums, seed: int) -> list[StudentCoefs | JackknifeCoefs | None]:
    """Each level's :class:`StudentCoefs` from its summed statistics (after the estimates pass).

    Without replicates (``n_boot == 0``) its :class:`JackknifeCoefs`.
    """
    return [None if s is None else pass_coefs(s, seed) for s in groups.sums]


def group_chunk_squares(ds: TrajectoryDataset, mat: NDArray[np.float64], plan: GroupPlan,
                        coefs: list[StudentCoefs | JackknifeCoefs | None],
                        eff: NDArray[np.float64] | None = None) -> GroupSquares:
    """One chunk's summed squared influences of every level (its own episodes).

    With :class:`JackknifeCoefs` (``n_boot == 0``) the summed deviations of each level's
    leave-one-episode-out estimates instead.
    """
    sq: list[SquareSums | JackknifeSums | None] = [None] * plan.n_columns
    ids = resampling_ids(ds)  # each episode's person, when known
    w = None  # every level's coefficients share the seed and replicates: one draw per chunk
    for c, own in _levels(plan, plan.codes(ds)):
        coef = coefs[c]
        if coef is None:
            continue
        if w is None:
            w = coef.weights(ids)
        m = _level_matrix(mat, own, c, eff if coef.corrections else None)
        sq[c] = coef.squares(m, ids[own], w[:, own])
    return GroupSquares(sq=sq)
