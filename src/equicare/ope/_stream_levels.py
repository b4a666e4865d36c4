r"""Streamed values within the levels of a pooled column that the target policy reads.

The streamed stationary table pools over a categorical column that does not change the dynamics
(its cells are chosen on a sample, :func:`~equicare.ope._stream_q.choose_cells_stream`). When
that column is also a subgroup attribute and the target policy reads it, the pooled ``Q(s, a)``
mixes the levels' futures and the values *within* its levels are off (on Garnet panels with ten
sites, -4% at the sites that follow a good policy and +4% at the others), while the overall value
stays right. In memory each such level gets its own Q-model, ``Q_l = R + gamma P (pi_l Q_l)``
with pooled dynamics and the policy ``pi_l`` the level's members follow
(:mod:`equicare.ope._levels`); this module does the same over chunks:

* :func:`plan_levels` decides, on the same sample of whole episodes as the cells' choice, which
  subgroup columns the table pools over and the target reads
  (:func:`equicare.data._cells.policy_reads`), and how each level's policy is built: asked of
  the policy object with the column set to the level (``"counterfactual"``), or, for a policy
  file, the level's mean target probabilities per kept cell, backed off to the pooled mean in
  cells the level never visits (``"empirical"``; one more pass sums them, :func:`level_tables`);
* :class:`LevelStreamPolicy` is that policy at the rows of any chunk (the level's own rows keep
  their probabilities, so its importance weights do not change);
* :func:`evaluate_levels_stream` runs the streamed Q-model passes once per level with it
  (:func:`~equicare.ope._stream_q.evaluate_stream_q` restricted to the level; ``evaluate_stream``
  finishes the sums), so each level's
  FQE, DR and WDR, and their intervals with the level's own refit, equal the in-memory
  per-level refit (tests: 1e-9 for values).

Cost: the Q-model's passes once more per level of such a column (about 4-5 passes each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._fqe import FQEConfig, _cells
from equicare.ope._stream_groups import GroupPlan
from equicare.ope._stream_sums import _target_probs

__all__ = ["LevelColumn", "LevelTable", "LevelStreamPolicy", "LevelRun", "plan_levels",
           "level_tables", "evaluate_levels_stream", "per_level_info"]


@dataclass(frozen=True)
class LevelColumn:
    """A subgroup column whose levels get their own streamed Q-model.

    Attributes
    ----------
    column : str
        The pooled categorical state column (also a group attribute).
    kept : tuple of str
        The columns the table's cells keep.
    source : {"counterfactual", "empirical"}
        How each level's policy is built.
    bias : dict of str to (float, float)
        ``auto``'s estimated FQE bias of each level's own Q-model, on the sample (levels the
        sample holds).
    """

    column: str
    kept: tuple[str, ...]
    source: Literal["counterfactual", "empirical"]
    bias: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class LevelTable:
    """The target's mean probabilities per kept cell, overall and per level (policy files).

    Attributes
    ----------
    keys : ndarray of shape (k,)
        Sorted cell ids (:func:`equicare.ope._fqe._cells` over the kept columns).
    sums : ndarray of shape (k, n_levels + 1, n_actions)
        Summed target probabilities per cell; slot 0 holds rows of unpublished levels.
    counts : ndarray of shape (k, n_levels + 1)
    labels : tuple of str
        The published levels (slots 1...).
    """

    keys: NDArray[np.int64]
    sums: NDArray[np.float64]
    counts: NDArray[np.float64]
    labels: tuple[str, ...]

    def __add__(self, o: LevelTable) -> LevelTable:
        keys = np.union1d(self.keys, o.keys)
        sums = np.zeros((keys.size, *self.sums.shape[1:]))
        counts = np.zeros((keys.size, self.counts.shape[1]))
        for part in (self, o):
            pos = np.searchsorted(keys, part.keys)
            sums[pos] += part.sums
            counts[pos] += part.counts
        return LevelTable(keys=keys, sums=sums, counts=counts, labels=self.labels)

    def level_probs(self, label: str) -> tuple[NDArray[np.float64], float]:
        """The level's policy per cell, and the share of rows valued with the pooled one.

        A cell the level visits takes the level's mean target probabilities there, any other
        the mean over all rows; the share counts the panel's rows in those other cells.
        """
        slot = self.labels.index(label) + 1
        n_all = self.counts.sum(axis=1)
        pooled = self.sums.sum(axis=1) / np.maximum(n_all, 1.0)[:, None]
        own_n = self.counts[:, slot]
        own = self.sums[:, slot] / np.maximum(own_n, 1.0)[:, None]
        probs = np.where((own_n > 0)[:, None], own, pooled)
        return probs, float(n_all[own_n == 0].sum() / max(n_all.sum(), 1.0))


def _published(ds: TrajectoryDataset, column: str, labels: Sequence[str]
               ) -> NDArray[np.int64]:
    """Each row's published level of ``column`` (-1: none)."""
    idx = pd.Index(list(labels)).get_indexer(np.asarray(ds.group_labels(column)).astype(str))
    return np.asarray(idx, dtype=np.int64)[ds.episode_index]


def _table_chunk(ds: TrajectoryDataset, *, policy: Any, kept: tuple[str, ...], column: str,
                 labels: tuple[str, ...]) -> LevelTable:
    p = _target_probs(ds, policy)
    keys, inv = np.unique(_cells(ds, kept)[0], return_inverse=True)
    slots = len(labels) + 1
    idx = inv.ravel() * slots + (_published(ds, column, labels) + 1)
    ind = sp.csr_matrix((np.ones(ds.n_steps), (idx, np.arange(ds.n_steps))),
                        shape=(keys.size * slots, ds.n_steps))
    sums = np.asarray(ind @ p).reshape(keys.size, slots, p.shape[1])
    counts = np.asarray(ind.sum(axis=1)).reshape(keys.size, slots)
    return LevelTable(keys=keys.astype(np.int64), sums=sums, counts=counts, labels=labels)


def level_tables(source: Any, policy: Any, col: LevelColumn, labels: tuple[str, ...]
                 ) -> LevelTable:
    """One pass: the target's summed probabilities per kept cell and published level."""
    import functools

    table, _ = source.map_reduce(functools.partial(
        _table_chunk, policy=policy, kept=col.kept, column=col.column, labels=labels))
    assert isinstance(table, LevelTable)
    return table


@dataclass(frozen=True, eq=False)
class LevelStreamPolicy:
    """The target policy that the members of one level follow, at the rows of a chunk.

    The level's own rows (its episodes) keep the target's probabilities. At other rows:
    ``"counterfactual"`` asks ``policy`` with ``column`` set to the level; ``"empirical"``
    looks up the level's policy per kept cell (``table``). Picklable when ``policy`` is.
    """

    policy: Any
    column: str
    label: str
    kept: tuple[str, ...]
    table_keys: NDArray[np.int64] | None = None
    table_probs: NDArray[np.float64] | None = None

    def action_probs(self, ds: TrajectoryDataset) -> NDArray[np.float64]:
        from equicare.data._cells import column_positions
        from equicare.ope._levels import _level_code, at_level

        p = _target_probs(ds, self.policy)
        own = (np.asarray(ds.group_labels(self.column)).astype(str) == self.label)[
            ds.episode_index]
        if self.table_probs is None:
            j = column_positions(ds, (self.column,), "LevelStreamPolicy")[0]
            code = _level_code(ds, j, self.label)
            assert code is not None
            other = _target_probs(at_level(ds, j, code), self.policy)
        else:
            assert self.table_keys is not None
            pos = np.searchsorted(self.table_keys, _cells(ds, self.kept)[0])
            other = self.table_probs[pos]
        return np.asarray(np.where(own[:, None], p, other), dtype=np.float64)

    def deployed_rows(self, ds: TrajectoryDataset) -> NDArray[np.bool_] | None:
        """The wrapped policy's rows left to the clinicians, if it is valued as deployed.

        The level's own rows keep the target's probabilities, so their logged action there
        (target and behaviour probability 1), as in memory.
        """
        from equicare.policy._deployed import deployed_rows

        return deployed_rows(self.policy, ds)


def plan_levels(source: Any, policy: Any, cfg: FQEConfig, groups: GroupPlan | None, *,
                sample_rows: int, seed: int, selection: Any = None,
                level_seeds: dict[str, dict[str, int]] | None = None) -> list[LevelColumn]:
    """The subgroup columns whose levels need their own Q-model, decided on a sample.

    Only a stationary table whose cells drop a categorical column that is also a published
    subgroup attribute qualifies (the cells' choice pools over it); then, on the sample of whole
    episodes of :func:`~equicare.ope._stream_behavior.sample_episodes` (same ``seed``, the one
    the cells were chosen on), :func:`~equicare.data._cells.policy_reads` decides whether the
    target reads it, as in memory. With ``auto`` (``selection``), each level's FQE bias is
    :func:`~equicare.ope._evaluate.level_fqe_bias` on the sample, its folds drawn from the
    level's seed in ``level_seeds`` (attribute, level; default ``seed``): the in-memory
    evaluation's (:func:`~equicare.ope._evaluate.level_seeds`), so a sample that is the whole
    panel gives the in-memory bias.

    Returns
    -------
    list of LevelColumn
        Empty when no column qualifies (no pass is made then).
    """
    if groups is None or cfg.model != "tabular" or cfg.cells is None:
        return []
    names = tuple(source.categorical_names())
    dropped = [c for c in names if c not in cfg.cells and c in groups.attrs
               and groups.levels[groups.attrs.index(c)]]
    if not dropped:
        return []
    from equicare.data._cells import policy_reads
    from equicare.ope._levels import _level_code, counterfactual_capable, level_target_probs
    from equicare.ope._stream_behavior import sample_episodes
    from equicare.ope._stream_q import _target_matrix

    data, _ = sample_episodes(source, sample_rows, seed)
    if data is None:
        return []
    probs = _target_matrix(data, policy)
    out = []
    for c in dropped:
        if not policy_reads(data, probs, c, cfg.cells):
            continue
        labels = groups.levels[groups.attrs.index(c)]
        j = names.index(c)
        capable = counterfactual_capable(policy) and all(
            _level_code(data, j, lv) is not None for lv in labels)
        bias: dict[str, tuple[float, float]] = {}
        if selection is not None:
            from equicare.ope._evaluate import level_fqe_bias

            sample_labels = np.asarray(data.group_labels(c)).astype(str)
            for lv in labels:
                ep = np.flatnonzero(sample_labels == lv)
                if ep.size == 0:
                    continue
                lp = level_target_probs(data, probs, c, cfg.cells, ep, lv,
                                        policy=policy if capable else None)
                b = level_fqe_bias(selection, data, lp.probs, ep,
                                   (level_seeds or {}).get(c, {}).get(lv, seed))
                if b is not None:
                    bias[lv] = b
        out.append(LevelColumn(column=c, kept=tuple(cfg.cells),
                               source="counterfactual" if capable else "empirical", bias=bias))
    return out


@dataclass(frozen=True)
class LevelRun:
    """One level's sums from its own streamed Q-model.

    :func:`equicare.ope._stream.finish_groups` with ``plan`` turns them into its estimates.
    """

    label: str
    plan: GroupPlan
    sums: Any
    squares: Any
    bias: dict[str, dict[str, tuple[float, float]]] | None


def evaluate_levels_stream(source: Any, policy: Any, col: LevelColumn, groups: GroupPlan, *,
                           keys: tuple[str, ...], cfg: FQEConfig, n_boot: int, seed: int,
                           truncate: float | None, studentized: bool,
                           tick: Callable[[], None] | None = None
                           ) -> tuple[list[LevelRun], dict[str, float]]:
    """Every published level of ``col.column`` with its own streamed Q-model.

    ``tick`` is called as each level is done.

    Returns
    -------
    runs : list of LevelRun
        Each level's sums (they replace the pooled ones once finished).
    backed_off : dict of str to float
        Per level, the share of rows valued with the pooled policy (``"empirical"``; else 0).
    """
    from equicare.ope._stream_q import evaluate_stream_q

    a = groups.attrs.index(col.column)
    labels = groups.levels[a]
    table = level_tables(source, policy, col, labels) if col.source == "empirical" else None
    runs: list[LevelRun] = []
    backed: dict[str, float] = {}
    for lv in labels:
        if table is None:
            pol = LevelStreamPolicy(policy, col.column, lv, col.kept)
            backed[lv] = 0.0
        else:
            probs, backed[lv] = table.level_probs(lv)
            pol = LevelStreamPolicy(policy, col.column, lv, col.kept, table.keys, probs)
        one = GroupPlan(attrs=(col.column,), levels=((lv,),),
                        counts=({lv: groups.counts[a][lv]},), min_cell=groups.min_cell)
        res = evaluate_stream_q(source, pol, keys=keys, cfg=cfg, n_boot=n_boot, seed=seed,
                                truncate=truncate, studentized=studentized, groups=one)
        runs.append(LevelRun(label=lv, plan=one, sums=res.groups, squares=res.group_squares,
                             bias={col.column: {lv: col.bias[lv]}} if lv in col.bias else None))
        if tick is not None:
            tick()
    return runs, backed


def per_level_info(col: LevelColumn, backed: dict[str, float]) -> dict[str, Any]:
    """The result JSON's ``q_model.per_level[column]`` (as in memory)."""
    return {"q_model": "refitted per level: pooled dynamics, the level's policy",
            "policy": col.source, "backed_off": {k: round(v, 4) for k, v in backed.items()}}
