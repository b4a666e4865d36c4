"""The candidate features of a distilled tree and the grid its numeric thresholds fall on.

A scikit-learn tree splits a numeric feature at the midpoint of two neighbouring values of the
fitting rows, ``(x_i + x_j) / 2``: saved at full precision, a threshold pins two patients'
values to a few millionths, and the rules publish it (the policy card's conditions, the rules'
model folder). So the numeric features (numeric states, their previous values, the previous
reward) are snapped to a coarse grid before the fit (:func:`grid_steps`, :func:`snap_to_grid`):
a step of about a hundredth of the column's interquartile range (one significant digit below its
order of magnitude, as :func:`equicare.privacy.coarse_bounds` rounds), so a column of risks with
an IQR of 0.3 is cut at multiples of 0.01. Every threshold then lies between two grid values and
is moved to a half-step ``(k + 1/2) * step`` between them (:func:`grid_thresholds`), a number no
patient's value determines beyond its rounding, which reads as the rule's text does ("risk <=
0.345"). A raw value compares to a half-step as its rounded value does (values halfway round
down, also in the float32 the panel stores them in: :func:`half_steps`), so the fitted tree
routes raw rows as it routed the snapped ones: only its fit sees the coarser values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.privacy import round_significant, tail_quantile
from equicare.utils import MIN_CELL

__all__ = ["feature_records", "set_features", "grid_steps", "snap_to_grid", "grid_thresholds",
           "half_steps", "GRID_KINDS"]

#: Feature kinds snapped to a grid before a fit (the others are 0/1 indicators or counts,
#: whose thresholds are already half-integers).
GRID_KINDS = ("state", "prev_state", "prev_reward")
#: Most grid steps a column's range may span (a column with far outliers gets a coarser step
#: so that its grid positions stay exact in float32).
_MAX_STEPS = 100_000


def feature_records(dataset: TrajectoryDataset, window: int = 1) -> list[dict[str, Any]]:
    """The candidate features of the tree for a dataset and a history window.

    Parameters
    ----------
    dataset : TrajectoryDataset
    window : int
        Rows of history (1: current row; 2: also the previous row; more: also counts of each
        action level over the previous ``window - 1`` rows).

    Returns
    -------
    list of dict
        Feature records of :func:`equicare.policy.tree_features`.
    """
    recs: list[dict[str, Any]] = [{"kind": "state", "name": n} for n in dataset.state_names]
    for name, levels in zip(dataset.categorical_names, dataset.categorical_levels, strict=True):
        recs += [{"kind": "categorical", "name": name, "level": str(lv)} for lv in levels]
    if window > 1:
        recs += [{"kind": "prev_state", "name": n} for n in dataset.state_names]
        for c in dataset.action_space.components:
            recs += [{"kind": "prev_action", "component": c.name, "level": lv}
                     for lv in c.levels]
        recs.append({"kind": "prev_reward"})
    if window > 2:
        for c in dataset.action_space.components:
            recs += [{"kind": "recent_action", "component": c.name, "level": lv,
                      "rows": window - 1} for lv in c.levels]
    return recs


def set_features(dataset: TrajectoryDataset, labels: NDArray[np.int64],
                 weights: NDArray[np.float64], n_labels: int, *, skip: int | None = None,
                 min_episodes: int = MIN_CELL) -> list[dict[str, Any]]:
    """Candidate set-valued splits of the categorical columns, from the fitting rows' labels.

    CART and rpart split a categorical column into two *sets* of levels ("state is one of
    s12, s45, s101"); a tree over one indicator per level names at most one level per split.
    Here, per categorical column and per label ``a`` (an action to imitate, or a deviation of
    exception rules), one candidate is the set ``L_a`` of the levels whose weighted majority
    label among the fitting rows is ``a``: ``{"kind": "categorical_set", "name": column,
    "levels": L_a}`` (:func:`equicare.policy.tree_features`). The tree then chooses among those
    sets and the one-hot indicators as it chooses any split. A level no fitting row (or only
    rows of weight 0) has is in no set, nor is one whose majority is ``skip`` (usual care), nor
    one of fewer than ``min_episodes`` distinct episodes (a rule covers at least that many
    members, and so does every level its text names: the card publishes the sets);
    a set of one level (the one-hot indicator already tests it) or of every level with weight
    (constant on the fitting rows) is left out. Ties go to the smaller label, the records come
    in the column order then the label order and list the levels in the column's order, so the
    candidates are deterministic.

    Parameters
    ----------
    dataset : TrajectoryDataset
        The fitting rows.
    labels : ndarray of shape (k * n_steps,), int
        Label of each row in ``[0, n_labels)`` (``k`` stacked copies of the rows when labels
        are sampled).
    weights : ndarray of shape (k * n_steps,)
        Row weights (>= 0).
    n_labels : int
    skip : int, optional
        A label that gets no set (usual care in exception rules).
    min_episodes : int, default=11
        Fewest distinct episodes of the fitting rows a listed level has.

    Returns
    -------
    list of dict
    """
    if dataset.categorical is None or not dataset.categorical_names:
        return []
    n = dataset.n_steps
    reps = labels.shape[0] // max(n, 1)
    y = np.asarray(labels, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    episodes = np.asarray(dataset.episode_index, dtype=np.int64)
    n_ep = int(episodes.max()) + 1 if episodes.size else 1
    recs: list[dict[str, Any]] = []
    for c, (name, levels) in enumerate(zip(dataset.categorical_names,
                                           dataset.categorical_levels, strict=True)):
        codes = np.tile(np.asarray(dataset.categorical[:, c], dtype=np.int64), reps)
        n_lv = len(levels)
        # weight of each (level, label) pair: one bincount over the rows
        mass = np.bincount(codes * n_labels + y, weights=w,
                           minlength=n_lv * n_labels).reshape(n_lv, n_labels)
        # distinct episodes per level: one unique over (level, episode) pairs
        pairs = np.unique(codes[:n] * n_ep + episodes)
        members = np.bincount(pairs // n_ep, minlength=n_lv)
        seen = (mass.sum(axis=1) > 0) & (members >= min_episodes)
        majority = np.argmax(mass, axis=1)
        for a in range(n_labels):
            if a == skip:
                continue
            listed = np.flatnonzero(seen & (majority == a))
            if listed.size < 2 or listed.size == int(seen.sum()):
                continue
            recs.append({"kind": "categorical_set", "name": str(name),
                         "levels": [str(levels[i]) for i in listed]})
    return recs


def _column(x: NDArray[np.float64] | sp.spmatrix, j: int) -> NDArray[np.float64]:
    col = x[:, [j]].toarray().ravel() if sp.issparse(x) else x[:, j]  # type: ignore[union-attr]
    return np.asarray(col, dtype=np.float64)


def _step(col: NDArray[np.float64]) -> float:
    """Grid step of one column: a hundredth of its spread, to one significant digit."""
    col = col[np.isfinite(col)]
    if col.size == 0:
        return 1.0
    q25, q75 = np.quantile(col, [0.25, 0.75])
    spread = float(q75 - q25)
    if spread <= 0:  # a column mostly at one value: the spread of its inner rows
        p = tail_quantile(col.size)
        lo, hi = np.quantile(col, [p, 1.0 - p])
        spread = float(hi - lo)
    if spread <= 0:
        spread = float(np.max(np.abs(col)))
    if spread <= 0:
        return 1.0
    step = 10.0 ** (np.floor(np.log10(spread)) - 1)
    span = float(np.max(col) - np.min(col))
    if span / step > _MAX_STEPS:
        step *= 10.0 ** np.ceil(np.log10(span / step / _MAX_STEPS))
    return float(round_significant(step, 1))


def grid_steps(x: NDArray[np.float64] | sp.spmatrix, features: Sequence[Mapping[str, Any]]
               ) -> NDArray[np.float64]:
    """The grid step of each feature (NaN: not snapped), from the fitting rows.

    Parameters
    ----------
    x : ndarray or sparse matrix of shape (n_rows, n_features)
        The features of the fitting rows (:func:`equicare.policy.tree_features`).
    features : sequence of dict
        Their records; numeric kinds (:data:`GRID_KINDS`) get a step, a previous state the step
        of its current state's column.

    Returns
    -------
    ndarray of shape (n_features,)
    """
    steps = np.full(len(features), np.nan)
    by_state: dict[str, float] = {}
    for j, f in enumerate(features):
        if f.get("kind") == "state":
            steps[j] = by_state[str(f["name"])] = _step(_column(x, j))
    for j, f in enumerate(features):
        kind = f.get("kind")
        if kind == "prev_state":
            name = str(f["name"])
            steps[j] = by_state[name] if name in by_state else _step(_column(x, j))
        elif kind == "prev_reward":
            steps[j] = _step(_column(x, j))
    return steps


def half_steps(h: Any) -> NDArray[np.float64]:
    """The stored thresholds of the half-steps ``h`` of a grid: what a row must not exceed.

    Rows are compared in float32 (the panel's states are float32, and so is the tree's routing,
    :meth:`equicare.policy.TreePolicy.apply_features`), so a value recorded as the half-step
    itself is ``float32(h)``, which is above ``h`` for about half of them (float32(0.425) =
    0.42500001). The threshold is therefore the larger of ``h`` (12 significant digits) and
    ``float32(h)``: a value recorded at exactly ``h`` goes to ``<= h``, as the rule's text says.
    """
    t = round_significant(h, 12)
    return np.asarray(np.maximum(t, t.astype(np.float32).astype(np.float64)), dtype=np.float64)


def _snap(v: NDArray[np.float64], step: Any) -> NDArray[np.float64]:
    """Nearest grid value, halves rounded down as the stored thresholds route them.

    ``v`` goes to ``k * step`` exactly when ``float32(v)`` is above the threshold of the
    half-step below (:func:`half_steps`) and not above the one above it, so the rows the fit
    puts on a grid value are those a threshold between grid values routes the same way.
    """
    v32 = np.asarray(v, dtype=np.float32).astype(np.float64)
    k = np.ceil(v / step - 0.5)
    k = np.where(v32 <= half_steps((k - 0.5) * step), k - 1.0, k)
    k = np.where(v32 > half_steps((k + 0.5) * step), k + 1.0, k)
    return np.asarray(k * step, dtype=np.float64)


def snap_to_grid(x: NDArray[np.float64] | sp.spmatrix, steps: NDArray[np.float64]
                 ) -> NDArray[np.float64] | sp.csc_matrix:
    """A copy of ``x`` with each gridded column rounded to its grid (:func:`grid_steps`)."""
    cols = np.flatnonzero(np.isfinite(steps))
    if sp.issparse(x):
        out = sp.csc_matrix(x, copy=True)
        for j in cols:  # columns, not rows
            a, b = out.indptr[j], out.indptr[j + 1]
            out.data[a:b] = _snap(out.data[a:b], float(steps[j]))
        return out
    dense = np.array(x, dtype=np.float64, copy=True)
    dense[:, cols] = _snap(dense[:, cols], steps[cols][None, :])
    return dense


def grid_thresholds(feature: NDArray[np.int64], threshold: NDArray[np.float64],
                    children_left: NDArray[np.int64], steps: NDArray[np.float64]
                    ) -> NDArray[np.float64]:
    """Thresholds of a tree fitted on snapped features, moved to half-steps of the grid.

    A split of a gridded feature lies between two grid values ``k * step < j * step`` (the
    midpoint scikit-learn chose, in float32); it becomes ``(k + 1/2) * step`` when ``j = k + 1``
    and ``((k + j) / 2 - 1/2) * step`` otherwise, a half-step strictly between them, so the
    fitting rows follow the same branches (stored as :func:`half_steps` does, so that a value
    recorded at the half-step itself goes left). Other thresholds are kept.

    Parameters
    ----------
    feature, threshold, children_left : ndarray of shape (n_nodes,)
        The tree's arrays (scikit-learn's layout).
    steps : ndarray of shape (n_features,)
        :func:`grid_steps`.

    Returns
    -------
    ndarray of shape (n_nodes,)
    """
    out = np.asarray(threshold, dtype=np.float64).copy()
    inner = np.asarray(children_left) >= 0
    step = np.where(inner, steps[np.where(inner, feature, 0)], np.nan)
    on = inner & np.isfinite(step)
    if on.any():
        s = step[on]
        twice = np.round(2.0 * out[on] / s)  # k + j
        out[on] = half_steps((np.floor((twice - 1.0) / 2.0) + 0.5) * s)
    return out
