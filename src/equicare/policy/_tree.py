"""A decision-tree policy (distilled rules) evaluated with NumPy.

The tree is stored as flat arrays in scikit-learn's layout (``children_left``, ``children_right``,
``feature``, ``threshold``) plus a probability distribution over the flat actions at every node
(only the leaves' are used). Its inputs are named features of a dataset row, described by small
JSON records so that a saved tree reads the same columns on any panel with the same manifest:

``{"kind": "state", "name": "risk"}``
    A numeric state column.
``{"kind": "categorical", "name": "region", "level": "north"}``
    1 if the categorical state ``region`` is ``north``, else 0.
``{"kind": "categorical_set", "name": "region", "levels": ["north", "east"]}``
    1 if the categorical state ``region`` is one of the listed levels, else 0 (a set-valued
    split, as CART's "region is one of ..."; a level the list does not name, also one unseen
    when the rules were fitted, is in no set).
``{"kind": "prev_state", "name": "risk"}``
    The numeric state at the previous row of the episode (the current value at the first row).
``{"kind": "prev_action", "component": "modality", "level": "phone"}``
    1 if the previous row's action had ``modality = phone`` (0 at an episode's first row).
``{"kind": "prev_reward"}``
    The previous row's (shaped) reward (0 at the first row).
``{"kind": "recent_action", "component": "modality", "level": "home_visit", "rows": 3}``
    How many of the previous ``rows`` rows of the episode had ``modality = home_visit``.

A row goes left at a node when ``x[feature] <= threshold`` (scikit-learn's rule, with the inputs
rounded to float32 as scikit-learn does). Evaluation walks all rows down the tree together, one
level per iteration: no loop over rows.

A model folder of a tree (Contract 2) has ``"kind": "tree"`` in its ``config.json`` and the arrays
as tensors ``tree.children_left`` ... ``tree.probs`` in ``model.safetensors``.

**Exceptions to current practice.** A tree may mark some leaves *usual care*
(``usual[leaf]``): rows reaching them get the action distribution of a behaviour model stored
with the tree (``usual_policy``: a per-cell :class:`~equicare.policy._cells.CellPolicy` of the
clinicians' observed frequencies, or a tree of the logged actions), not the leaf's own. Such a
tree reads "where to deviate from current practice; otherwise as current practice". In the model
folder the ``tree`` entry then has ``"usual_care": {"kind": "cells" | "tree", ...}``, the mask is
the tensor ``tree.usual`` and the behaviour model's tensors are prefixed ``usual.``.
:meth:`TreePolicy.deferred_rows` says which rows reach those leaves: deployed, the clinicians
decide there, and the OPE engine and the audit value the tree so by default
(:mod:`equicare.policy._deployed`); ``action_probs`` and ``predict`` give the stored estimate.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data._labels import match_levels, unseen_levels_message
from equicare.exceptions import DataWarning, PolicyError
from equicare.spaces import FactoredActionSpace

__all__ = ["TreePolicy", "tree_features", "feature_label", "TREE_KIND", "FEATURE_KINDS",
           "tree_policy_from_config"]

#: ``config.json`` ``kind`` of a tree model folder.
TREE_KIND = "tree"
#: Known feature kinds.
FEATURE_KINDS = ("state", "categorical", "categorical_set", "prev_state", "prev_action",
                 "prev_reward", "recent_action")
#: Tensor prefix of the usual-care behaviour model in a tree model folder.
_USUAL = "usual"
_ARRAYS = ("children_left", "children_right", "feature", "threshold", "probs")
MSG_MISSING_COLUMN = ("{source}: the tree reads {what} {name!r}, which the dataset does not have "
                      "(it has {have}). Use the manifest the rules were distilled with.")


def _state_column(dataset: Any, name: str, source: str) -> NDArray[np.float64]:
    names = list(dataset.state_names)
    if name not in names:
        raise PolicyError(MSG_MISSING_COLUMN.format(source=source, what="state column", name=name,
                                                    have=names))
    return np.asarray(dataset.states[:, names.index(name)], dtype=np.float64)


def _component_codes(dataset: Any, component: str, level: str, source: str
                     ) -> NDArray[np.bool_]:
    space = dataset.action_space
    if component not in space.names:
        raise PolicyError(MSG_MISSING_COLUMN.format(source=source, what="action component",
                                                    name=component, have=list(space.names)))
    j = space.names.index(component)
    levels = space.components[j].levels
    if level not in levels:
        return np.zeros(dataset.n_steps, dtype=bool)
    return np.asarray(dataset.action_codes[:, j] == levels.index(level))


#: Rows x features above which :func:`tree_features` with ``sparse="auto"`` returns a sparse
#: matrix (dense float64 would take more than 160 MB; wide categorical states are one-hot).
SPARSE_FEATURE_CELLS = 20_000_000


def tree_features(dataset: Any, features: Sequence[Mapping[str, Any]],
                  source: str = "<tree>", *, sparse: bool | str = False
                  ) -> NDArray[np.float64] | sp.csc_matrix:
    """The tree's input matrix of a dataset.

    Parameters
    ----------
    dataset : TrajectoryDataset
    features : sequence of dict
        Feature records (see the module docstring).
    source : str
        Name used in error messages.
    sparse : bool or "auto", default=False
        Return a ``scipy.sparse`` CSC matrix (True), a dense array (False), or sparse only when
        rows x features exceed :data:`SPARSE_FEATURE_CELLS` ("auto"; scikit-learn's trees take
        either, and the one-hot columns of a state with thousands of levels are mostly zero).

    Returns
    -------
    ndarray or csc_matrix of shape (n_steps, n_features)

    Raises
    ------
    PolicyError
        A feature reads a column the dataset does not have, or has an unknown kind.
    """
    n = dataset.n_steps
    n_feat = len(features)
    as_sparse = (n * n_feat > SPARSE_FEATURE_CELLS) if sparse == "auto" else bool(sparse)
    step = np.asarray(dataset.step)
    has_prev = step > 0
    prev = np.maximum(np.arange(n) - 1, 0)
    starts = np.repeat(dataset.episode_offsets[:-1], dataset.episode_lengths)
    # nonzeros as (rows, feature, values) triplets, one entry per feature or per categorical
    # column (all of its level indicators at once: one pass over the rows, not one per level)
    trip_r: list[NDArray[np.int64]] = []
    trip_j: list[NDArray[np.int64]] = []
    trip_v: list[NDArray[np.float64]] = []

    def put(j: int, col: NDArray[Any]) -> None:
        c = np.asarray(col, dtype=np.float64)
        nz = np.flatnonzero(c)
        trip_r.append(nz)
        trip_j.append(np.full(nz.size, j, dtype=np.int64))
        trip_v.append(c[nz])

    by_column: dict[str, list[tuple[int, str]]] = {}
    for j, f in enumerate(features):
        if f.get("kind") == "categorical":
            name = str(f["name"])
            if name not in dataset.categorical_names:
                raise PolicyError(MSG_MISSING_COLUMN.format(
                    source=source, what="categorical state", name=name,
                    have=list(dataset.categorical_names)))
            by_column.setdefault(name, []).append((j, str(f["level"])))
    for name, items in by_column.items():
        c = list(dataset.categorical_names).index(name)
        # a dataset level matches a feature's level by its string or normalised string
        # (136.0 finds 136), as the network models match their vocabulary; a level no feature
        # names is an all-zero row of the column's indicators
        lut = match_levels(dataset.categorical_levels[c], [level for _, level in items])
        js = np.array([j for j, _ in items], dtype=np.int64)
        feature_of_code = np.where(lut >= 0, js[np.maximum(lut, 0)], -1)
        fj = feature_of_code[np.asarray(dataset.categorical[:, c], dtype=np.int64)]
        rows = np.flatnonzero(fj >= 0)
        trip_r.append(rows)
        trip_j.append(fj[rows])
        trip_v.append(np.ones(rows.size))
    for j, f in enumerate(features):
        kind = f.get("kind")
        if kind == "categorical":
            continue
        if kind == "categorical_set":
            put(j, _in_set(dataset, f, source))
        elif kind == "state":
            put(j, _state_column(dataset, str(f["name"]), source))
        elif kind == "prev_state":
            col = _state_column(dataset, str(f["name"]), source)
            put(j, np.where(has_prev, col[prev], col))
        elif kind == "prev_action":
            hit = _component_codes(dataset, str(f["component"]), str(f["level"]), source)
            put(j, has_prev & hit[prev])
        elif kind == "prev_reward":
            put(j, np.where(has_prev, dataset.rewards[prev], 0.0))
        elif kind == "recent_action":
            hit = _component_codes(dataset, str(f["component"]), str(f["level"]), source)
            rows_back = int(f["rows"])
            # csum[i] = hits in rows < i; the count over rows [max(start, i - rows), i)
            csum = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
            lo = np.maximum(starts, np.arange(n) - rows_back)
            put(j, csum[np.arange(n)] - csum[lo])
        else:
            raise PolicyError(f"{source}: unknown tree feature kind {kind!r}; expected one of "
                              f"{', '.join(FEATURE_KINDS)}.")
    r = np.concatenate(trip_r) if trip_r else np.zeros(0, dtype=np.int64)
    jj = np.concatenate(trip_j) if trip_j else np.zeros(0, dtype=np.int64)
    v = np.concatenate(trip_v) if trip_v else np.zeros(0)
    if not as_sparse:
        out = np.zeros((n, n_feat), dtype=np.float64)
        out[r, jj] = v
        return out
    return sp.csc_matrix((v, (r, jj)), shape=(n, n_feat))


def _in_set(dataset: Any, f: Mapping[str, Any], source: str) -> NDArray[np.bool_]:
    """Whether each row's level of a categorical column is one of a set feature's levels.

    Vectorised: one lookup per level of the column (matched as :func:`match_levels` matches
    the one-hot features' levels), then one table read per row.
    """
    name = str(f["name"])
    names = list(dataset.categorical_names)
    if name not in names:
        raise PolicyError(MSG_MISSING_COLUMN.format(
            source=source, what="categorical state", name=name, have=names))
    c = names.index(name)
    inside = match_levels(dataset.categorical_levels[c], [str(v) for v in f["levels"]]) >= 0
    return np.asarray(inside[np.asarray(dataset.categorical[:, c], dtype=np.int64)])


def feature_label(f: Mapping[str, Any], time_unit: str = "step") -> str:
    """Readable name of a feature record, e.g. ``"previous modality = phone"``."""
    kind = f.get("kind")
    if kind == "state":
        return str(f["name"])
    if kind == "prev_state":
        return f"{f['name']} last {time_unit}"
    if kind == "categorical":
        return f"{f['name']} = {f['level']}"
    if kind == "categorical_set":
        return f"{f['name']} in {{{', '.join(str(v) for v in f['levels'])}}}"
    if kind == "prev_action":
        return f"last {time_unit}'s {f['component']} = {f['level']}"
    if kind == "prev_reward":
        return f"last {time_unit}'s reward"
    if kind == "recent_action":
        return f"{f['component']} = {f['level']} in the last {f['rows']} {time_unit}s"
    return str(f)


def known_levels(features: Sequence[Mapping[str, Any]], name: str) -> list[str]:
    """The levels of categorical column ``name`` the features name (one-hot, then sets)."""
    out = [str(f["level"]) for f in features
           if f.get("kind") == "categorical" and str(f["name"]) == name]
    for f in features:
        if f.get("kind") == "categorical_set" and str(f["name"]) == name:
            out += [str(v) for v in f["levels"]]
    return out


def _window(features: Sequence[Mapping[str, Any]]) -> int:
    """Rows of history the features read (1: only the current row)."""
    w = 1
    for f in features:
        if f.get("kind") in ("prev_state", "prev_action", "prev_reward"):
            w = max(w, 2)
        elif f.get("kind") == "recent_action":
            w = max(w, int(f["rows"]) + 1)
    return w


@dataclass(frozen=True, eq=False)
class TreePolicy:
    """A decision tree over named row features with a distribution over actions at each leaf.

    Parameters
    ----------
    children_left, children_right : ndarray of shape (n_nodes,), int
        Child node of each node (``-1`` at a leaf), scikit-learn's layout.
    feature : ndarray of shape (n_nodes,), int
        Index into ``features`` tested at each node (negative at a leaf).
    threshold : ndarray of shape (n_nodes,), float
        A row goes left when ``x[feature] <= threshold``.
    probs : ndarray of shape (n_nodes, n_actions), float
        Action distribution at each node (rows sum to 1; the leaves' are used).
    features : tuple of dict
        Feature records (see :func:`tree_features`).
    action_space : FactoredActionSpace
    source : str
        Name used in error messages.
    info : dict
        Free-form description saved with the model (source policy, settings, rules).
    usual : ndarray of shape (n_nodes,), bool, optional
        Leaves that follow current practice: their rows get ``usual_policy``'s distribution.
    usual_policy : CellPolicy or TreePolicy, optional
        The behaviour model of those rows (required when ``usual`` marks a leaf).
    manifest_fingerprint : str, optional
        :func:`equicare.policy.manifest_fingerprint` of the panel the rules were distilled on
        (the model folder's ``manifest_fingerprint``, as every learner's).

    Examples
    --------
    >>> pol = load_policy("card/model")          # doctest: +SKIP
    >>> pol.action_probs(dataset).shape          # doctest: +SKIP
    (61234, 300)
    """

    children_left: NDArray[np.int64]
    children_right: NDArray[np.int64]
    feature: NDArray[np.int64]
    threshold: NDArray[np.float64]
    probs: NDArray[np.float64]
    features: tuple[dict[str, Any], ...]
    action_space: FactoredActionSpace
    source: str = "<tree policy>"
    info: dict[str, Any] = field(default_factory=dict)
    usual: NDArray[np.bool_] | None = None
    usual_policy: Any = None
    manifest_fingerprint: str | None = None

    def __post_init__(self) -> None:
        arrs = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        n = arrs["children_left"].shape[0]
        for k in ("children_right", "feature", "threshold"):
            if arrs[k].shape != (n,):
                raise PolicyError(f"{self.source}: tree array {k!r} has shape {arrs[k].shape}; "
                                  f"expected ({n},).")
        if arrs["probs"].shape != (n, self.action_space.n_actions):
            raise PolicyError(f"{self.source}: tree array 'probs' has shape "
                              f"{arrs['probs'].shape}; expected ({n}, "
                              f"{self.action_space.n_actions}).")
        p = arrs["probs"].astype(np.float64)
        leaf = arrs["children_left"] < 0
        if (p < 0).any() or not np.allclose(p[leaf].sum(axis=1), 1.0, atol=1e-6):
            raise PolicyError(f"{self.source}: leaf probabilities must be >= 0 and sum to 1.")
        feats = tuple(dict(f) for f in self.features)
        inner = arrs["feature"][~leaf]
        if inner.size and (inner.min() < 0 or inner.max() >= len(feats)):
            raise PolicyError(f"{self.source}: a node tests feature {int(inner.max())}, but the "
                              f"tree has {len(feats)} features.")
        for f in feats:
            if f.get("kind") not in FEATURE_KINDS:
                raise PolicyError(f"{self.source}: unknown tree feature kind {f.get('kind')!r}; "
                                  f"expected one of {', '.join(FEATURE_KINDS)}.")
            if f["kind"] == "categorical_set":
                levels = f.get("levels")
                if not isinstance(levels, list | tuple) or "name" not in f:
                    raise PolicyError(f"{self.source}: a categorical_set feature needs a 'name' "
                                      f"and a list of 'levels'; got {f!r}.")
                f["levels"] = [str(v) for v in levels]
        object.__setattr__(self, "children_left", arrs["children_left"].astype(np.int64))
        object.__setattr__(self, "children_right", arrs["children_right"].astype(np.int64))
        object.__setattr__(self, "feature", arrs["feature"].astype(np.int64))
        object.__setattr__(self, "threshold", arrs["threshold"].astype(np.float64))
        object.__setattr__(self, "probs", p)
        object.__setattr__(self, "features", feats)
        if self.usual is not None:
            u = np.asarray(self.usual, dtype=bool)
            if u.shape != (n,):
                raise PolicyError(f"{self.source}: tree array 'usual' has shape {u.shape}; "
                                  f"expected ({n},).")
            u = u & leaf
            object.__setattr__(self, "usual", u)
            if u.any() and self.usual_policy is None:
                raise PolicyError(f"{self.source}: leaves follow current practice but the tree "
                                  "has no behaviour model (usual_policy).")
            if u.any() and self.usual_policy.action_space.to_dict() != \
                    self.action_space.to_dict():
                raise PolicyError(f"{self.source}: the behaviour model of the usual-care leaves "
                                  "has another action space.")

    # ------------------------------------------------------------------ properties
    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return self.action_space.n_actions

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.children_left.shape[0])

    @property
    def leaves(self) -> NDArray[np.int64]:
        """Node ids of the leaves, shape ``(n_leaves,)``."""
        return np.flatnonzero(self.children_left < 0).astype(np.int64)

    @property
    def depth(self) -> int:
        """Longest root-to-leaf path (0 for a single leaf)."""
        depth = np.zeros(self.n_nodes, dtype=np.int64)
        for node in range(self.n_nodes):  # nodes, not rows: parents come before children
            if self.children_left[node] >= 0:
                depth[self.children_left[node]] = depth[node] + 1
                depth[self.children_right[node]] = depth[node] + 1
        return int(depth.max())

    @property
    def window(self) -> int:
        """Rows of history the tree reads (1: current row only)."""
        w = _window(self.features)
        if self.has_usual:
            w = max(w, int(getattr(self.usual_policy, "window", 1)))
        return w

    @property
    def has_usual(self) -> bool:
        """Whether some leaf follows current practice (the behaviour model)."""
        return self.usual is not None and bool(self.usual.any())

    @property
    def support(self) -> NDArray[np.int64]:
        """Flat actions with positive probability at some leaf, shape ``(K,)``."""
        mass = self.probs[self.leaves].sum(axis=0)
        if self.has_usual:
            mass = mass + np.bincount(np.asarray(self.usual_policy.support, dtype=np.int64),
                                      minlength=self.n_actions)
        return np.flatnonzero(mass > 0).astype(np.int64)

    # ------------------------------------------------------------------ evaluation
    def check_compatible(self, dataset: Any) -> None:
        """Raise :class:`PolicyError` if ``dataset`` has another action space."""
        if dataset.action_space.to_dict() != self.action_space.to_dict():
            raise PolicyError(f"{self.source}: the rules were distilled on action space "
                              f"{self.action_space.to_dict()}; the dataset has "
                              f"{dataset.action_space.to_dict()}. Use the matching manifest.")

    def apply_features(self, x: NDArray[Any] | sp.spmatrix,
                       columns: NDArray[np.int64] | None = None) -> NDArray[np.int64]:
        """Leaf reached by each row of a feature matrix.

        Parameters
        ----------
        x : ndarray or sparse matrix of shape (n, n_features) or (n, len(columns))
        columns : ndarray of shape (n_features,), int, optional
            Column of ``x`` that holds each feature (``-1`` for features ``x`` leaves out,
            which no split may test); default: feature ``j`` in column ``j``.

        Returns
        -------
        ndarray of shape (n,), int
        """
        if self.children_left[0] < 0:  # a single leaf (one rule for every row): no split
            return np.zeros(x.shape[0], dtype=np.int64)
        xd = x.toarray() if sp.issparse(x) else x  # type: ignore[union-attr]
        x32 = np.asarray(xd, dtype=np.float32)  # scikit-learn compares float32 inputs
        feat = self.feature if columns is None else np.where(
            self.feature >= 0, columns[np.maximum(self.feature, 0)], self.feature)
        n = x32.shape[0]
        node = np.zeros(n, dtype=np.int64)
        rows = np.arange(n)
        active = self.children_left[node] >= 0
        while active.any():
            r, nd = rows[active], node[active]
            go_left = x32[r, feat[nd]].astype(np.float64) <= self.threshold[nd]
            node[r] = np.where(go_left, self.children_left[nd], self.children_right[nd])
            active[r] = self.children_left[node[r]] >= 0
        return node

    @property
    def used_features(self) -> NDArray[np.int64]:
        """Indices of the features some split tests, sorted, shape ``(k,)``."""
        return np.unique(self.feature[self.children_left >= 0]).astype(np.int64)

    def apply(self, dataset: Any) -> NDArray[np.int64]:
        """Leaf reached by each row of ``dataset``, shape ``(n_steps,)``.

        Only the features some split tests are computed (a tree over a state with thousands of
        one-hot levels reads a handful of them).
        """
        self.check_compatible(dataset)
        used = self.used_features
        columns = np.full(len(self.features), -1, dtype=np.int64)
        columns[used] = np.arange(used.size)
        self._warn_unseen_levels(dataset, used)
        x = tree_features(dataset, [self.features[j] for j in used], self.source)
        return self.apply_features(x, columns)

    def _warn_unseen_levels(self, dataset: Any, used: NDArray[np.int64]) -> None:
        """Warn when most rows of a tested categorical column have levels the rules never saw.

        The same check and :class:`DataWarning` as the network models, for each categorical
        column some split tests.
        """
        if dataset.categorical is None:
            return
        cat_kinds = ("categorical", "categorical_set")
        tested = {str(self.features[j]["name"]) for j in used
                  if self.features[j].get("kind") in cat_kinds}
        names = list(dataset.categorical_names)
        for name in sorted(tested & set(names)):
            known = list(dict.fromkeys(known_levels(self.features, name)))
            c = names.index(name)
            levels = dataset.categorical_levels[c]
            lut = match_levels(levels, known)
            codes = np.asarray(dataset.categorical[:, c], dtype=np.int64)
            msg = unseen_levels_message(
                name, lut[codes] < 0, levels, codes, lut, known, self.source,
                "the rules read them as none of the levels they test")
            if msg is not None:
                warnings.warn(msg, DataWarning, stacklevel=4)

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``.

        Rows reaching a usual-care leaf get the behaviour model's distribution as stored: a cell
        estimate's table row, with its stand-in where it leaves the cell to the clinicians
        (:meth:`deferred_mask`; never the row's own logged propensity, so the rows' values do
        not depend on whether the panel carries propensities, logged or estimated).
        """
        leaf = self.apply(dataset)
        out = np.array(self.probs[leaf], dtype=np.float64)
        if self.usual is not None and self.has_usual:
            rows = self.usual[leaf]
            if rows.any():
                from equicare.policy._cells import CellPolicy

                up = self.usual_policy
                stored = (up.table[up.cell_index(dataset)] if isinstance(up, CellPolicy)
                          else up.action_probs(dataset))
                out[rows] = np.asarray(stored, dtype=np.float64)[rows]
        return out

    def deferred_mask(self, dataset: Any) -> NDArray[np.bool_] | None:
        """Entries left to current practice at each row, shape ``(n_steps, n_actions)``.

        At a usual-care leaf, the entries the stored estimate of practice itself leaves to the
        clinicians (practice as cells defers the whole row of a cell seen in fewer than 11
        episodes or never seen, :func:`equicare.explain.fit_usual_care`); none elsewhere. None
        when the estimate defers nothing.
        """
        if self.usual is None or not self.has_usual:
            return None
        inner = getattr(self.usual_policy, "deferred_mask", None)
        mask = inner(dataset) if inner is not None else None
        if mask is None:
            return None
        return np.asarray(mask & self.usual[self.apply(dataset)][:, None], dtype=bool)

    def deferred_rows(self, dataset: Any) -> NDArray[np.bool_] | None:
        """Rows that reach a usual-care leaf (left to current practice), shape ``(n_steps,)``.

        None when no leaf follows current practice. ``action_probs`` and ``predict`` give those
        rows the stored estimate of practice (``usual_policy``); deployed, the clinicians decide
        there, which is how ``evaluate``, ``audit`` and ``frontier`` value the tree by default
        (:mod:`equicare.policy._deployed`).
        """
        if self.usual is None or not self.has_usual:
            return None
        return np.asarray(self.usual[self.apply(dataset)], dtype=bool)

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action per row, shape ``(n_steps,)``."""
        return np.asarray(np.argmax(self.action_probs(dataset), axis=1), dtype=np.int64)

    # ------------------------------------------------------------------ model folder
    def _describe(self, prefix: str) -> dict[str, Any]:
        """The ``tree`` entry of ``config.json`` (tensors under ``prefix``)."""
        d: dict[str, Any] = {"features": [dict(f) for f in self.features],
                             "n_nodes": self.n_nodes, "n_leaves": int(self.leaves.size),
                             "depth": self.depth, "window": self.window, "weights": prefix}
        if self.has_usual:
            up = self.usual_policy
            if isinstance(up, TreePolicy):
                d["usual_care"] = {"kind": TREE_KIND, "tree": up._describe(_USUAL)}
            else:
                d["usual_care"] = {**up.describe(), "weights": _USUAL}
        return d

    def _tensors(self, prefix: str) -> dict[str, Any]:
        import torch

        out = {f"{prefix}.{k}": torch.from_numpy(np.ascontiguousarray(getattr(self, k)))
               for k in _ARRAYS}
        if self.usual is not None and self.has_usual:
            out[f"{prefix}.usual"] = torch.from_numpy(self.usual.astype(np.uint8))
            up = self.usual_policy
            if isinstance(up, TreePolicy):
                out.update(up._tensors(_USUAL))
            else:
                out.update({_USUAL + k[k.index("."):]: v for k, v in up.tensors().items()})
        return out

    def to_config(self) -> dict[str, Any]:
        """The ``config.json`` content of the model folder (without the format keys)."""
        return {"kind": TREE_KIND, "learner": TREE_KIND,
                "action_space": self.action_space.to_dict(),
                "manifest_fingerprint": self.manifest_fingerprint,
                "tree": self._describe("tree"), "info": self.info}

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write a model folder (``config.json`` + ``model.safetensors``; no pickle)."""
        from equicare.policy._learned import write_model_folder

        return write_model_folder(path, self.to_config(), self._tensors("tree"),
                                  overwrite=overwrite)


def tree_policy_from_config(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                            ) -> TreePolicy:
    """Build the :class:`TreePolicy` of a tree model folder's config and tensors."""
    from equicare.policy._cells import CellPolicy

    try:
        tree = cfg["tree"]
        prefix = str(tree.get("weights", "tree"))
        arrays = {k: np.asarray(tensors[f"{prefix}.{k}"].numpy()) for k in _ARRAYS}
        space = FactoredActionSpace.from_dict(cfg["action_space"])
        features = tuple(dict(f) for f in tree["features"])
        usual: NDArray[np.bool_] | None = None
        usual_policy: Any = None
        uc = tree.get("usual_care")
        if uc is not None:
            usual = np.asarray(tensors[f"{prefix}.usual"].numpy()).astype(bool)
            sub = {"action_space": cfg["action_space"]}
            if uc.get("kind") == TREE_KIND:
                usual_policy = tree_policy_from_config({**sub, "tree": uc["tree"]}, tensors,
                                                       f"{source} (usual care)")
            elif uc.get("kind") == "cells":
                usual_policy = CellPolicy.from_config({**sub, "policy": uc}, tensors,
                                                      f"{source} (usual care)")
            else:
                raise ValueError(f"unknown usual_care kind {uc.get('kind')!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyError(f"{source}: malformed tree model folder ({exc}).") from exc
    fingerprint = cfg.get("manifest_fingerprint")
    return TreePolicy(**arrays, features=features, action_space=space, source=source,
                      info=dict(cfg.get("info") or {}), usual=usual, usual_policy=usual_policy,
                      manifest_fingerprint=None if fingerprint is None else str(fingerprint))
