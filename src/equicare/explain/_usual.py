"""The clinicians' own action distribution ("usual care"), stored with exception rules.

Exception rules (:class:`~equicare.explain.DistillConfig` ``mode="exceptions"``) say where to
deviate from current practice; every other row keeps the clinicians' estimated distribution. That
estimate must travel with the rules (a model folder is self-contained), so it is one of two
readable, pickle-free representations:

``"cells"``
    A :class:`~equicare.policy._cells.CellPolicy`: the observed frequency of each action in each
    combination of the categorical states' levels held by at least ``min_episodes`` (11)
    episodes. Unseen and smaller combinations are *left to the clinicians* (the table's last
    row, marked ``deferred`` as the tabular learners' fallback row is): no stored number
    describes practice there, and the overall frequencies the table holds for them are only a
    stand-in. The rules (``TreePolicy.action_probs``, ``predict``, ``--usual-care stored``)
    give those rows the stand-in; their ``deferred_mask`` says the clinicians choose there,
    which exact valuations honour (``garnet_policy_table``, as for SPIBB's fallback row) and
    the card's support share of the estimate does not count.
    On Garnet (``s700_a25_g1``, 5,000 episodes) the 29 of 700 states seen in fewer than 11
    episodes (0.4% of rows) cost the estimate, when they got the overall frequencies, 0.0044
    of exact value (0.7959 against practice's 0.8003, -72% of SPIBB's gain); left to the
    clinicians, -9%. Exact for a categorical state such as Garnet's, where the numeric columns
    are functions of the cell.
``"tree"``
    A :class:`~equicare.policy.TreePolicy` fitted to the logged actions (a scikit-learn tree of
    depth ``depth`` with at least ``min_samples_leaf`` rows and ``min_episodes`` episodes per
    leaf) over the numeric states and
    one indicator per categorical level: a modelled behaviour for numeric states. Its numeric
    features are snapped to a coarse grid before the fit, so no threshold is the midpoint of two
    rows' values (:mod:`equicare.explain._features`).

``"auto"`` takes the cells when the data has categorical states and every numeric state is
constant within each cell (nothing is lost by ignoring them), else the tree.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError
from equicare.explain._features import (
    feature_records,
    grid_steps,
    grid_thresholds,
    snap_to_grid,
)
from equicare.explain._prune import compact_arrays, node_sums, prune_small_leaves
from equicare.policy._cells import CellPolicy, cell_codes
from equicare.policy._tree import TreePolicy, tree_features
from equicare.utils import MIN_CELL, RandomState, check_param, check_random_state

__all__ = ["fit_usual_care", "usual_care_cells", "usual_care_counts", "usual_care_kind",
           "usual_care_probs"]

UsualKind = Literal["auto", "cells", "tree"]


def _cells(dataset: TrajectoryDataset) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                                 tuple[tuple[str, ...], ...]]:
    columns = tuple(dataset.categorical_names)
    codes, levels = cell_codes(dataset, columns, (), (), None, "usual care")
    keys, cell = np.unique(codes, axis=0, return_inverse=True)
    return np.asarray(cell, dtype=np.int64).ravel(), keys.astype(np.int64), levels


def usual_care_kind(dataset: TrajectoryDataset, kind: UsualKind = "auto") -> str:
    """``"cells"`` or ``"tree"``: the representation :func:`fit_usual_care` uses for ``kind``."""
    check_param(kind, "usual_care", "fit_usual_care", choices=("auto", "cells", "tree"))
    has_cat = dataset.categorical is not None and len(dataset.categorical_names) > 0
    if kind != "auto":
        if kind == "cells" and not has_cat:
            raise InvalidParameterError("usual_care='cells' needs categorical states; the data "
                                        "has none (use 'tree').")
        return kind
    if not has_cat:
        return "tree"
    if dataset.n_features == 0:
        return "cells"
    cell, _, _ = _cells(dataset)
    x = np.asarray(dataset.states, dtype=np.float64)
    n_cells = int(cell.max()) + 1
    lo = np.full((n_cells, x.shape[1]), np.inf)
    hi = np.full((n_cells, x.shape[1]), -np.inf)
    np.minimum.at(lo, cell, x)
    np.maximum.at(hi, cell, x)
    scale = np.ptp(x, axis=0) + 1e-12
    return "cells" if bool(np.all((hi - lo) <= 1e-9 * scale)) else "tree"


def fit_usual_care(dataset: TrajectoryDataset, kind: UsualKind = "auto", *, depth: int = 8,
                   min_samples_leaf: int = 50, min_episodes: int = MIN_CELL,
                   random_state: RandomState = None
                   ) -> CellPolicy | TreePolicy:
    """Estimate the clinicians' action distribution from the logged actions.

    Parameters
    ----------
    dataset : TrajectoryDataset
    kind : {"auto", "cells", "tree"}
        Representation (see the module docstring).
    depth, min_samples_leaf : int
        Size of the behaviour tree (``kind="tree"``).
    min_episodes : int, default=11
        Fewest distinct episodes behind a cell's own frequencies (a cell with fewer is left to
        the clinicians, as an unseen cell is) or a leaf of the tree (a leaf with fewer
        loses its split, :mod:`equicare.explain._prune`): no stored frequency describes a
        handful of members.
    random_state : int, Generator or None

    Returns
    -------
    CellPolicy or TreePolicy
        Probabilities of each flat action, shape ``(n_steps, n_actions)`` from
        ``action_probs``; no leaf of the tree follows another model.
    """
    from sklearn.tree import DecisionTreeClassifier

    A = dataset.n_actions
    used = usual_care_kind(dataset, kind)
    acts = np.asarray(dataset.actions, dtype=np.int64)
    marginal = np.bincount(acts, minlength=A) / max(acts.size, 1)
    if used == "cells":
        cell, keys, levels = _cells(dataset)
        counts = np.bincount(cell * A + acts, minlength=keys.shape[0] * A).reshape(-1, A)
        n_ep = int(dataset.n_episodes)
        pairs = np.unique(cell * n_ep + np.asarray(dataset.episode_index, dtype=np.int64))
        keep = np.bincount(pairs // n_ep, minlength=keys.shape[0]) >= min_episodes
        # a cell of fewer episodes is left out: its rows are left to the clinicians (deferred;
        # the overall frequencies stand in for them)
        table = counts[keep] / counts[keep].sum(axis=1, keepdims=True)
        deferred = np.zeros((table.shape[0] + 1, A), dtype=bool)
        deferred[-1] = True
        return CellPolicy(table=np.vstack([table, marginal]), keys=keys[keep],
                          columns=tuple(dataset.categorical_names), levels=levels, numeric=(),
                          edges=(), action_space=dataset.action_space,
                          source="current practice (observed frequencies per cell)",
                          deferred=deferred)
    rng = check_random_state(random_state)
    feats = feature_records(dataset, 1)
    x = tree_features(dataset, feats, "usual care", sparse="auto")
    steps = grid_steps(x, feats)  # thresholds at half-steps of a coarse grid, not midpoints
    x = snap_to_grid(x, steps)  # of two rows' values (equicare.explain._features)
    tree = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=min_samples_leaf,
                                  random_state=int(rng.integers(2**31 - 1))).fit(x, acts)
    t = tree.tree_
    feature = np.asarray(t.feature, dtype=np.int64)
    left0 = np.asarray(t.children_left, dtype=np.int64)
    thr = grid_thresholds(feature, np.asarray(t.threshold, dtype=np.float64), left0, steps)
    left, right, feature, thr, leaf = prune_small_leaves(
        x, np.asarray(dataset.episode_index, dtype=np.int64), left0,
        np.asarray(t.children_right, dtype=np.int64), feature, thr, min_episodes)
    n_act = node_sums(leaf, None, left, right, labels=acts, n_labels=A)
    probs = n_act / np.maximum(n_act.sum(axis=1, keepdims=True), 1e-300)
    arrays: dict[str, Any] = compact_arrays(left, right, feature, thr, probs)  # the tree's
    return TreePolicy(**arrays, features=tuple(feats), action_space=dataset.action_space,
                      source="current practice (behaviour tree)",
                      info={"usual_care": {"kind": "tree", "depth": depth,
                                           "min_samples_leaf": min_samples_leaf,
                                           "min_episodes": min_episodes}})


def usual_care_probs(usual: CellPolicy | TreePolicy, dataset: TrajectoryDataset
                     ) -> NDArray[np.float64]:
    """Practice as the estimate stores it at each row, shape ``(n_steps, n_actions)``.

    The rows of cells left to the clinicians get the table's stand-in (the overall
    frequencies), not the row's own logged propensity that ``action_probs`` gives the logged
    action there: the labels of exception rules compare the source with an estimate of
    practice that does not know which action the row took.
    """
    if isinstance(usual, CellPolicy):
        return np.asarray(usual.table[usual.cell_index(dataset)], dtype=np.float64)
    return np.asarray(usual.action_probs(dataset), dtype=np.float64)


def usual_care_counts(usual: CellPolicy, dataset: TrajectoryDataset) -> NDArray[np.int64]:
    """Rows of ``dataset`` in each row's cell of ``usual``, shape ``(n_steps,)``.

    Current practice as cells (:func:`fit_usual_care` ``kind="cells"``) is the observed
    frequency of each action over the rows of the row's cell: on the data it was fitted on, this
    is the ``n`` of its standard error. A cell of fewer than ``min_episodes`` episodes, left to
    the clinicians with the overall frequencies as the table's stand-in, counts its own rows:
    the overall frequencies say no more about practice in that cell than its own rows do.

    Parameters
    ----------
    usual : CellPolicy
    dataset : TrajectoryDataset
    """
    return usual_care_cells(usual, dataset)[1]


def usual_care_cells(usual: CellPolicy, dataset: TrajectoryDataset
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Each row's cell of ``usual`` (numbered 0, 1, ... in ``dataset``) and the cell's rows.

    Returns
    -------
    cell : ndarray of shape (n_steps,), int
    counts : ndarray of shape (n_steps,), int
        As :func:`usual_care_counts`.
    """
    codes, _ = cell_codes(dataset, usual.columns, usual.numeric, usual.edges, usual.levels,
                          usual.source)
    if codes.shape[1] == 0:
        return (np.zeros(dataset.n_steps, dtype=np.int64),
                np.full(dataset.n_steps, dataset.n_steps, dtype=np.int64))
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = np.asarray(group, dtype=np.int64).ravel()
    return group, np.asarray(np.bincount(group)[group], dtype=np.int64)
