"""Streamed subgroup levels whose Q-model is refitted on their own episodes.

In memory, a level whose pooled Q-model fails its check (:mod:`equicare.ope._group_check`) gets
the same Q-model class and cells fitted on its own episodes
(:func:`~equicare.ope._group_check.own_prepared`). Streamed, the Q-model's passes run again
over the panel's chunks restricted to the level's episodes (:class:`LevelSource`: every chunk
keeps the level's episodes, a chunk without any adds nothing), with the level's longest stay as
the horizon, as the in-memory fit on the level's episodes has. The level's FQE, DR and WDR, their
intervals (the refit on the level's episodes in every replicate, the same Poisson weights keyed
by episode id) and its check then come from those sums.

Cost: one pass for the levels' horizons, then the Q-model's passes (about 4-5) once per refitted
level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._fqe import FQEConfig
from equicare.ope._stream_groups import GroupPlan

__all__ = ["LevelPick", "LevelSource", "level_horizons", "own_level_stream", "check_levels_stream"]


@dataclass(frozen=True)
class LevelPick:
    """The episodes of a chunk at one level of one attribute (picklable)."""

    attr: str
    label: str

    def __call__(self, dataset: TrajectoryDataset) -> NDArray[np.int64]:
        return np.flatnonzero(dataset.group_labels(self.attr).astype(str) == self.label)


@dataclass(frozen=True, eq=False)
class _OnLevel:
    """``fn`` on a chunk's episodes that ``pick`` selects (None when it has none; picklable)."""

    fn: Callable[[TrajectoryDataset], Any]
    pick: Callable[[TrajectoryDataset], NDArray[np.int64]]

    def __call__(self, dataset: TrajectoryDataset) -> Any:
        ep = self.pick(dataset)
        return None if ep.size == 0 else self.fn(dataset.subset(ep))


class LevelSource:
    """A :class:`~equicare.ope._stream.ChunkSource` restricted to one level's episodes.

    What the Q-model's passes read of a source (``horizon``, ``categorical_names``,
    ``map_reduce``); ``horizon`` is the level's longest stay. ``pick(chunk)`` gives the indices
    of the chunk's episodes of the level (:class:`LevelPick`; the fairness audit's groups,
    intersections included, pick their own).
    """

    def __init__(self, source: Any, pick: Callable[[TrajectoryDataset], NDArray[np.int64]],
                 horizon: int) -> None:
        self.source, self.pick, self.horizon = source, pick, int(horizon)

    def categorical_names(self) -> tuple[str, ...]:
        """The panel's categorical state columns."""
        return tuple(self.source.categorical_names())

    def map_reduce(self, fn: Callable[[TrajectoryDataset], Any],
                   progress: Callable[[int], None] | None = None) -> tuple[Any, int]:
        """Sum of ``fn`` over the level's episodes of every chunk, and the number of chunks."""
        return tuple(self.source.map_reduce(_OnLevel(fn, self.pick), progress))


@dataclass
class _Longest:
    """Each level's longest stay (additive by maximum)."""

    longest: NDArray[np.int64]

    def __add__(self, o: _Longest) -> _Longest:
        return _Longest(np.maximum(self.longest, o.longest))


@dataclass(frozen=True, eq=False)
class _LongestChunk:
    plan: GroupPlan

    def __call__(self, dataset: TrajectoryDataset) -> _Longest:
        codes = self.plan.codes(dataset)
        out = np.zeros(self.plan.n_columns, dtype=np.int64)
        lengths = dataset.episode_lengths.astype(np.int64)
        for j in range(codes.shape[1]):
            ok = codes[:, j] >= 0
            np.maximum.at(out, codes[ok, j], lengths[ok])
        return _Longest(out)


def level_horizons(source: Any, plan: GroupPlan) -> dict[tuple[str, str], int]:
    """Every published level's longest stay, ``{(attribute, level): steps}`` (one pass)."""
    total, _ = source.map_reduce(_LongestChunk(plan))
    return {col: int(total.longest[c]) for c, col in enumerate(plan.columns)}


def own_level_stream(source: Any, policy: Any, attr: str, label: str, n_episodes: int,
                     horizon: int, *, keys: tuple[str, ...], cfg: FQEConfig, n_boot: int,
                     seed: int, truncate: float | None, studentized: bool, min_cell: int,
                     finish: Callable[..., dict[str, dict[str, Any]]]) -> Any:
    """The level's :class:`~equicare.ope._stream.StreamGroup` with its own Q-model.

    ``cfg`` is the pooled Q-model's (class and cells); the censoring check is not made again
    (the pooled evaluation chose the table). ``finish(plan, sums, squares)`` turns a plan's
    summed statistics into its levels (:func:`~equicare.ope._stream.finish_groups`).
    """
    from equicare.ope._stream_q import evaluate_stream_q

    one = GroupPlan(attrs=(attr,), levels=((label,),), counts=({label: n_episodes},),
                    min_cell=min_cell)
    res = evaluate_stream_q(LevelSource(source, LevelPick(attr, label), horizon), policy,
                            keys=keys, cfg=cfg, n_boot=n_boot, seed=seed, truncate=truncate,
                            studentized=studentized, groups=one)
    assert res.groups is not None  # the plan's one level
    return finish(one, res.groups, res.group_squares)[attr][label]


def check_levels_stream(groups: dict[str, dict[str, Any]], source: Any, policy: Any,
                        plan: GroupPlan, cfg: FQEConfig, *, keys: tuple[str, ...], n_boot: int,
                        seed: int, truncate: float | None, studentized: bool,
                        alpha: float, finish: Callable[..., dict[str, dict[str, Any]]]) -> None:
    """Every published level's check; a failing tabular or linear Q-model refitted on its own.

    In place on ``groups`` (attribute -> level -> ``StreamGroup``, low-ESS values already
    withheld), as the in-memory evaluation does (:mod:`equicare.ope._group_check`). ``finish``
    as in :func:`own_level_stream`.
    """
    from dataclasses import replace

    from equicare.ope._evaluate import hide_low_ess
    from equicare.ope._group_check import (
        needs_own_fit,
        plan_checks,
        publish_checks,
        refitted_check,
    )
    from equicare.ope._levels import REFIT_MODELS

    q_keys = [k for k in keys if k in ("fqe", "dr", "wdr")]
    refittable = cfg.model in REFIT_MODELS
    horizons: dict[tuple[str, str], int] | None = None
    for attr, levels in groups.items():
        shown = {lv: g for lv, g in levels.items() if not g.suppressed}
        checks = plan_checks({lv: g.gaps for lv, g in shown.items()},
                             {lv: g.n_episodes for lv, g in shown.items()})
        for lv, chk in checks.items():
            if not needs_own_fit(chk, refittable):
                continue
            g = levels[lv]
            if horizons is None:
                horizons = level_horizons(source, plan)
            own = own_level_stream(source, policy, attr, lv, g.n_episodes, horizons[(attr, lv)],
                                   keys=keys, cfg=cfg, n_boot=n_boot, seed=seed,
                                   truncate=truncate, studentized=studentized,
                                   min_cell=plan.min_cell, finish=finish)
            levels[lv] = replace(g, estimates={**g.estimates,
                                               **{k: own.estimates[k] for k in q_keys}})
            checks[lv] = refitted_check(own.gaps, g.n_episodes, chk)
        hide_low_ess(levels, {lv: g.weights for lv, g in levels.items()
                              if not g.suppressed and g.weights is not None}, keys,
                     plan.min_cell)  # the refitted levels' too (the same weights)
        publish_checks(levels, checks, alpha)
