"""Rules that each cover at least ``min_cell`` episodes: pruning a fitted tree by episodes.

scikit-learn's ``min_samples_leaf`` counts rows, and a member contributes a row every week: a
leaf of 20 rows can be one member's 20 weeks, and the rule's share, its held-out agreement and
its action frequencies then describe that member. After the fit, every leaf reached by fewer
than ``min_episodes`` distinct episodes of the fitting data loses its split: its parent is
replaced by the leaf's sibling (a leaf or a subtree), so the small leaf's rows follow the
sibling's tests and no other rule changes its conditions. That repeats until every leaf holds
enough episodes (a panel with fewer episodes than that keeps one rule, its root). The leaves'
distributions are then recomputed from the rows they now hold (:func:`node_sums`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["route_rows", "prune_small_leaves", "node_sums", "compact_tree", "compact_arrays"]


def route_rows(x: NDArray[Any] | sp.spmatrix, left: NDArray[np.int64],
               right: NDArray[np.int64], feature: NDArray[np.int64],
               threshold: NDArray[np.float64]) -> NDArray[np.int64]:
    """Leaf of each row of ``x`` (scikit-learn's rule: ``float32(x) <= threshold`` goes left).

    Only the columns some split tests are made dense.
    """
    used = np.unique(feature[left >= 0])
    cols = x[:, used]
    dense = cols.toarray() if sp.issparse(cols) else np.asarray(cols)  # type: ignore[union-attr]
    x32 = np.asarray(dense, dtype=np.float32)
    pos = np.zeros(max(int(feature.max()) + 1, 1), dtype=np.int64)
    pos[used] = np.arange(used.size)
    n = x32.shape[0]
    node = np.zeros(n, dtype=np.int64)
    rows = np.arange(n)
    active = np.full(n, left[0] >= 0)
    while active.any():  # one tree level per pass, all rows together
        r, nd = rows[active], node[active]
        go_left = x32[r, pos[feature[nd]]].astype(np.float64) <= threshold[nd]
        node[r] = np.where(go_left, left[nd], right[nd])
        active[r] = left[node[r]] >= 0
    return node


def _episodes_per_node(leaf: NDArray[np.int64], episodes: NDArray[np.int64], n_nodes: int
                       ) -> NDArray[np.int64]:
    n_ep = int(episodes.max()) + 1 if episodes.size else 1
    pairs = np.unique(leaf * n_ep + episodes)
    return np.bincount(pairs // n_ep, minlength=n_nodes).astype(np.int64)


def prune_small_leaves(x: NDArray[Any] | sp.spmatrix, episodes: NDArray[np.int64],
                       left: NDArray[np.int64], right: NDArray[np.int64],
                       feature: NDArray[np.int64], threshold: NDArray[np.float64],
                       min_episodes: int
                       ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64],
                                  NDArray[np.float64], NDArray[np.int64]]:
    """Remove the splits of leaves reached by fewer than ``min_episodes`` episodes.

    Parameters
    ----------
    x : ndarray or sparse matrix of shape (n_rows, n_features)
        The fitting rows' features (as the tree saw them).
    episodes : ndarray of shape (n_rows,), int
        Episode of each row.
    left, right, feature, threshold : ndarray of shape (n_nodes,)
        The tree (scikit-learn's layout, parents numbered before their children).
    min_episodes : int

    Returns
    -------
    left, right, feature, threshold : ndarray of shape (n_nodes,)
        The pruned tree in the same numbering (removed nodes are unreachable; see
        :func:`compact_tree`).
    leaf : ndarray of shape (n_rows,), int
        Leaf of each row in the pruned tree.
    """
    left, right = left.copy(), right.copy()
    feature, threshold = feature.copy(), threshold.copy()
    n_nodes = left.size
    while True:  # each pass removes nodes of a shallow tree
        leaf = route_rows(x, left, right, feature, threshold)
        n_ep = _episodes_per_node(leaf, episodes, n_nodes)
        reach = np.unique(leaf)
        small = reach[(n_ep[reach] < min_episodes) & (reach != 0)]
        if small.size == 0:
            return left, right, feature, threshold, leaf
        parent = np.full(n_nodes, -1, dtype=np.int64)
        inner = np.flatnonzero(left >= 0)
        parent[left[inner]] = inner
        parent[right[inner]] = inner
        done: set[int] = set()
        for node in small[np.argsort(n_ep[small], kind="stable")]:
            p = int(parent[node])
            if p in done or left[p] < 0:
                continue
            sib = int(right[p] if left[p] == node else left[p])
            left[p], right[p] = left[sib], right[sib]
            feature[p], threshold[p] = feature[sib], threshold[sib]
            done.add(p)


def node_sums(leaf: NDArray[np.int64], values: NDArray[np.float64] | None,
              left: NDArray[np.int64], right: NDArray[np.int64], *,
              labels: NDArray[np.int64] | None = None, n_labels: int = 0,
              weights: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Sums over the rows of every node (an inner node's: its children's), from each row's leaf.

    Parameters
    ----------
    leaf : ndarray of shape (n_rows,), int
    values : ndarray of shape (n_rows, k), optional
        Summed per node (e.g. a distribution per row); or, when None, ``labels``:
    labels : ndarray of shape (n_rows,), int, optional
        Counted per node (weighted by ``weights``) into ``n_labels`` columns.
    left, right : ndarray of shape (n_nodes,)
        Children numbered after their parents.

    Returns
    -------
    ndarray of shape (n_nodes, k) or (n_nodes, n_labels)
    """
    n_nodes = left.size
    out: NDArray[np.float64]
    if values is None:
        assert labels is not None
        out = np.bincount(leaf * n_labels + labels, weights=weights,
                          minlength=n_nodes * n_labels).reshape(n_nodes, n_labels).astype(float)
    else:
        onehot = sp.csr_matrix((np.ones(leaf.size), (leaf, np.arange(leaf.size))),
                               shape=(n_nodes, leaf.size))
        out = np.asarray(onehot @ values, dtype=np.float64)
    out = np.array(out, dtype=np.float64)
    reach = np.zeros(n_nodes, dtype=bool)
    reach[0] = True
    for node in range(n_nodes):  # nodes, parents first
        if reach[node] and left[node] >= 0:
            reach[left[node]] = reach[right[node]] = True
    for node in range(n_nodes - 1, -1, -1):
        if reach[node] and left[node] >= 0:
            out[node] = out[left[node]] + out[right[node]]
    return out


def compact_tree(left: NDArray[np.int64], right: NDArray[np.int64]) -> NDArray[np.int64]:
    """The reachable nodes, depth-first with parents first (the new numbering's old ids)."""
    order: list[int] = []
    stack = [0]
    while stack:  # nodes of a shallow tree
        node = stack.pop()
        order.append(node)
        if left[node] >= 0:
            stack += [int(right[node]), int(left[node])]
    return np.asarray(order, dtype=np.int64)


def compact_arrays(children_left: NDArray[np.int64], children_right: NDArray[np.int64],
                   feature: NDArray[np.int64], threshold: NDArray[np.float64],
                   probs: NDArray[np.float64], best: NDArray[np.int64] | None = None
                   ) -> dict[str, NDArray[Any]]:
    """The reachable nodes of a tree, renumbered depth-first (parents first).

    Returns the arrays keyed like :class:`~equicare.policy.TreePolicy`'s fields, plus
    ``"best"`` when it was given.
    """
    left, right = children_left, children_right
    order = [int(o) for o in compact_tree(left, right)]
    new_id = {old: i for i, old in enumerate(order)}
    idx = np.asarray(order, dtype=np.int64)
    is_leaf = left[idx] < 0
    new_left = np.array([-1 if left[o] < 0 else new_id[int(left[o])] for o in order], np.int64)
    new_right = np.array([-1 if left[o] < 0 else new_id[int(right[o])] for o in order], np.int64)
    out: dict[str, NDArray[Any]] = {
        "children_left": new_left, "children_right": new_right,
        "feature": np.where(is_leaf, -2, feature[idx]),
        "threshold": np.where(is_leaf, -2.0, threshold[idx]), "probs": probs[idx]}
    if best is not None:
        out["best"] = np.asarray(best)[idx]
    return out
