"""A policy given as one action distribution per discrete state cell (tabular learners' output).

A *cell* is the combination of the categorical state columns' labels, optionally with numeric
state columns cut into bins. Rows are mapped to cells by their labels, not by the dataset's codes,
so the policy applies to any panel with the same columns; rows of a cell never seen in training
get the fallback distribution (the last row of the table).

A cell policy may *defer* part of its mass to current practice (``deferred``): the tabular learners
do so when the clinicians' propensities are logged (``behavior="known"``). In each cell the
clinicians' own probability of the actions never logged there is left to them: the policy keeps
the clinician's choice when it falls on one of those actions (with probability ``deferred_rate``,
1 unless the policy is a mixture). The table spreads that mass evenly over them only as a
stand-in; on a panel with logged propensities, :meth:`CellPolicy.action_probs` gives a row whose
logged action is one of them the probability ``deferred_rate * behavior_prob``, what the
deferring policy truly puts there, so off-policy evaluation values the deployed policy, not the
stand-in.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data._labels import match_levels, unseen_levels_message
from equicare.exceptions import DataWarning, PolicyError
from equicare.policy._base import check_probs
from equicare.spaces import FactoredActionSpace

__all__ = ["CellPolicy", "cell_codes"]

MSG_NO_LEVEL_SEEN = ("{source}: none of the {n} levels of the categorical state column {col!r} "
                     "in the data (e.g. {example!r}) is among the {m} levels the policy was "
                     "trained on ({known}); every row would fall in a cell the policy never saw. "
                     "Check that the column holds the same labels as the training data.")
MSG_MISSING_COLUMN = ("{source}: the policy's cells are defined by the {kind} state column "
                      "{col!r}, which the dataset does not have (it has {got}).")


def _bin_codes(x: NDArray[Any], edges: NDArray[np.float64]) -> NDArray[np.int64]:
    return np.searchsorted(edges, np.asarray(x, dtype=np.float64), side="right").astype(np.int64)


def _check_seen(source: str, column: str, unseen: NDArray[np.bool_], levels: Sequence[Any],
                codes: NDArray[np.int64], lut: NDArray[np.int64], known: Sequence[str]) -> None:
    """Refuse a column none of whose levels the policy knows; warn when most rows are unseen.

    Raises
    ------
    PolicyError
        No level of the dataset's column is among the policy's (labels written differently,
        or another column): every row would get the fallback distribution.
    """
    if len(levels) and unseen.size and not (lut >= 0).any():
        shown = ", ".join(repr(v) for v in list(known)[:5]) + (", ..." if len(known) > 5
                                                               else "")
        raise PolicyError(MSG_NO_LEVEL_SEEN.format(source=source, col=column, n=len(levels),
                                                   example=str(levels[0]), m=len(known),
                                                   known=shown))
    msg = unseen_levels_message(column, unseen, levels, codes, lut, known,
                                f"{source}", "they fall in cells the policy never saw and get "
                                "its fallback distribution")
    if msg is not None:
        warnings.warn(msg, DataWarning, stacklevel=4)


def cell_codes(dataset: Any, columns: tuple[str, ...], numeric: tuple[str, ...],
               edges: tuple[NDArray[np.float64], ...], levels: tuple[tuple[str, ...], ...]
               | None = None, source: str = "<cell policy>"
               ) -> tuple[NDArray[np.int64], tuple[tuple[str, ...], ...]]:
    """Per-row codes of the cell columns, shape ``(n_steps, len(columns) + len(numeric))``.

    Categorical columns are coded by their position in ``levels`` (labels as strings, matched by
    :func:`~equicare.data._labels.match_levels`, so ``136.0`` finds ``136``; -1 when a label is
    not in ``levels``); when ``levels`` is None they are taken from the dataset (sorted labels).
    Numeric columns are coded by their bin in ``edges``.

    With ``levels``, a :class:`~equicare.exceptions.DataWarning` names a column whose levels are
    unseen in more than half the rows.

    Raises
    ------
    PolicyError
        A column is missing, or none of its levels in the dataset is among ``levels``.

    Returns
    -------
    codes : ndarray of shape (n_steps, n_columns), int64
    levels : tuple of tuple of str
        The categorical columns' labels.
    """
    cat_names = list(dataset.categorical_names)
    out = []
    used_levels: list[tuple[str, ...]] = []
    for j, col in enumerate(columns):
        if col not in cat_names:
            raise PolicyError(MSG_MISSING_COLUMN.format(source=source, kind="categorical",
                                                        col=col, got=cat_names))
        k = cat_names.index(col)
        codes = dataset.categorical[:, k]
        if levels is None:
            used_levels.append(tuple(str(v) for v in dataset.categorical_levels[k]))
            out.append(codes.astype(np.int64))
        else:
            lut = match_levels(dataset.categorical_levels[k], levels[j])
            coded = lut[codes]
            _check_seen(source, col, coded < 0, dataset.categorical_levels[k], codes, lut,
                        levels[j])
            out.append(coded)
            used_levels.append(levels[j])
    names = list(dataset.state_names)
    for col, e in zip(numeric, edges, strict=True):
        if col not in names:
            raise PolicyError(MSG_MISSING_COLUMN.format(source=source, kind="numeric", col=col,
                                                        got=names))
        out.append(_bin_codes(dataset.states[:, names.index(col)], e))
    if not out:
        return np.zeros((dataset.n_steps, 0), dtype=np.int64), ()
    return np.stack(out, axis=1), tuple(used_levels)


@dataclass(frozen=True, eq=False)
class CellPolicy:
    """Action probabilities per discrete state cell.

    Parameters
    ----------
    table : ndarray of shape (n_cells + 1, n_actions)
        Row ``c``: the distribution in cell ``c``; the last row: cells not seen in training.
    keys : ndarray of shape (n_cells, n_columns), int64
        Codes of each cell (categorical level positions, then numeric bins).
    columns : tuple of str
        Categorical state columns defining the cells.
    levels : tuple of tuple of str
        Labels of each categorical column (the codes index them).
    numeric : tuple of str
        Numeric state columns cut into bins (may be empty).
    edges : tuple of ndarray
        Inner bin edges of each numeric column.
    action_space : FactoredActionSpace
    source : str
        Name used in error messages.
    deferred : ndarray of shape (n_cells + 1, n_actions), bool, optional
        Entries whose probability is current practice's own, left to the clinicians (module
        docstring); the table's split of that mass over them is a stand-in. None: the table is
        the whole policy.
    deferred_rate : ndarray of shape (n_cells + 1,), optional
        Share of the clinicians' own probability the policy keeps on its deferred entries
        (``pi(a|x) = rate(x) b(a|x)`` there); ones when omitted.
    """

    table: NDArray[np.float64]
    keys: NDArray[np.int64]
    columns: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    numeric: tuple[str, ...]
    edges: tuple[NDArray[np.float64], ...]
    action_space: FactoredActionSpace
    source: str = "<cell policy>"
    window: int = 1
    deferred: NDArray[np.bool_] | None = None
    deferred_rate: NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        t = np.asarray(self.table, dtype=np.float64)
        check_probs(t, t.shape[0], self.action_space.n_actions, f"{self.source} table")
        if self.keys.shape[0] + 1 != t.shape[0]:
            raise PolicyError(f"{self.source}: {self.keys.shape[0]} cells but {t.shape[0]} table "
                              "rows (expected one more, the fallback).")
        object.__setattr__(self, "table", t)
        if self.deferred is not None:
            d = np.asarray(self.deferred, dtype=bool)
            if d.shape != t.shape:
                raise PolicyError(f"{self.source}: deferred mask of shape {d.shape}, expected "
                                  f"the table's {t.shape}.")
            object.__setattr__(self, "deferred", d)
            rate = (np.ones(t.shape[0]) if self.deferred_rate is None
                    else np.asarray(self.deferred_rate, dtype=np.float64))
            if rate.shape != (t.shape[0],) or not np.all((rate >= 0) & (rate <= 1 + 1e-9)):
                raise PolicyError(f"{self.source}: deferred_rate must hold {t.shape[0]} values "
                                  "in [0, 1].")
            object.__setattr__(self, "deferred_rate", rate)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return self.action_space.n_actions

    @property
    def n_cells(self) -> int:
        """Cells seen in training."""
        return int(self.keys.shape[0])

    @property
    def support(self) -> NDArray[np.int64]:
        """Flat actions with positive probability somewhere, shape ``(K,)``."""
        return np.flatnonzero(self.table.max(axis=0) > 0).astype(np.int64)

    def cell_index(self, dataset: Any) -> NDArray[np.int64]:
        """Cell of each row (``n_cells`` for an unseen cell), shape ``(n_steps,)``."""
        if dataset.action_space.to_dict() != self.action_space.to_dict():
            from equicare.policy._learned import MSG_ACTION_SPACE

            raise PolicyError(MSG_ACTION_SPACE.format(source=self.source,
                                                      trained=self.action_space.to_dict(),
                                                      got=dataset.action_space.to_dict()))
        codes, _ = cell_codes(dataset, self.columns, self.numeric, self.edges, self.levels,
                              self.source)
        if codes.shape[1] == 0:
            return np.zeros(dataset.n_steps, dtype=np.int64)
        index = pd.MultiIndex.from_arrays([self.keys[:, j] for j in range(self.keys.shape[1])])
        pos = index.get_indexer(pd.MultiIndex.from_arrays([codes[:, j]
                                                           for j in range(codes.shape[1])]))
        return np.where(pos < 0, self.n_cells, pos).astype(np.int64)

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``.

        The row's cell's table row; for a deferring policy on a panel with logged propensities,
        a row whose logged action is deferred gets ``deferred_rate * behavior_prob`` on it (the
        clinicians' own probability, kept), the rest of the deferred mass evenly on the cell's
        other deferred actions.
        """
        idx = self.cell_index(dataset)
        probs = self.table[idx]
        b = getattr(dataset, "behavior_prob", None)
        if self.deferred is None or b is None:
            return probs
        rate = np.asarray(self.deferred_rate)  # set with ``deferred`` in __post_init__
        a = np.asarray(dataset.actions, dtype=np.int64)
        d = self.deferred[idx]
        rows = np.flatnonzero(d[np.arange(a.size), a])
        if rows.size == 0:
            return probs
        probs = probs.copy()
        dr, pr, ar = d[rows], probs[rows], a[rows]
        mass = (pr * dr).sum(axis=1)
        others = dr.sum(axis=1) - 1
        own = np.minimum(rate[idx[rows]] * np.asarray(b)[rows], mass)
        own = np.where(others > 0, own, mass)
        rest = np.where(others > 0, (mass - own) / np.maximum(others, 1), 0.0)
        pr = np.where(dr, rest[:, None], pr)
        pr[np.arange(rows.size), ar] = own
        probs[rows] = pr
        return probs

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action per row (the cell's table row), shape ``(n_steps,)``."""
        return np.asarray(np.argmax(self.table[self.cell_index(dataset)], axis=1),
                          dtype=np.int64)

    def deferred_mask(self, dataset: Any) -> NDArray[np.bool_] | None:
        """Entries left to current practice at each row, shape ``(n_steps, n_actions)``.

        None when the policy defers nothing (the table is the whole policy).
        """
        if self.deferred is None:
            return None
        return self.deferred[self.cell_index(dataset)]

    def deferred_share(self) -> float:
        """Mean share of a seen cell's mass left to current practice (0 without deferral)."""
        if self.deferred is None or self.n_cells == 0:
            return 0.0
        return float((self.table[:-1] * self.deferred[:-1]).sum(axis=1).mean())

    # ------------------------------------------------------------------ model folder
    def describe(self) -> dict[str, Any]:
        """The ``"policy"`` entry of a model folder's ``config.json`` (weights: ``policy.*``)."""
        return {"kind": "cells", "weights": "policy", "columns": list(self.columns),
                "levels": [list(lv) for lv in self.levels], "numeric": list(self.numeric),
                "edges": [[float(v) for v in e] for e in self.edges],
                "deferred": self.deferred is not None}

    def tensors(self) -> dict[str, Any]:
        """Weights for ``model.safetensors``: the table and the cell keys."""
        import torch

        out = {"policy.table": torch.from_numpy(np.ascontiguousarray(self.table)),
               "policy.keys": torch.from_numpy(np.ascontiguousarray(self.keys))}
        if self.deferred is not None:
            out["policy.deferred"] = torch.from_numpy(
                np.ascontiguousarray(self.deferred.astype(np.uint8)))
            out["policy.deferred_rate"] = torch.from_numpy(
                np.ascontiguousarray(np.asarray(self.deferred_rate)))
        return out

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                    ) -> CellPolicy:
        """Rebuild from a model folder's ``config.json`` and tensors."""
        try:
            pol = cfg["policy"]
            pre = str(pol.get("weights", "policy"))
            deferred = rate = None
            if pol.get("deferred", False):
                deferred = tensors[f"{pre}.deferred"].numpy().astype(bool)
                rate = tensors[f"{pre}.deferred_rate"].numpy().astype(np.float64)
            return cls(table=tensors[f"{pre}.table"].numpy().astype(np.float64),
                       keys=tensors[f"{pre}.keys"].numpy().astype(np.int64),
                       columns=tuple(str(c) for c in pol["columns"]),
                       levels=tuple(tuple(str(v) for v in lv) for lv in pol["levels"]),
                       numeric=tuple(str(c) for c in pol["numeric"]),
                       edges=tuple(np.asarray(e, dtype=np.float64) for e in pol["edges"]),
                       action_space=FactoredActionSpace.from_dict(cfg["action_space"]),
                       source=source, deferred=deferred, deferred_rate=rate)
        except (KeyError, TypeError, ValueError) as exc:
            raise PolicyError(f"{source}: malformed cell policy ({exc}).") from exc
