r"""Distil any policy into a shallow decision tree (scikit-learn) over readable row features.

The tree is fitted to imitate the source policy on the panel's rows: its inputs are the numeric
state columns (raw values, so thresholds read in the data's units), one indicator per level of
each categorical state, and, when the source policy reads history (``window > 1``), the previous
row's states, action components and reward and the counts of each action level over the window.

Rows are weighted by how much the choice matters there: the spread of the source policy's
Q-function over the actions practice takes,

.. math::

    w_i = f + (1 - f) \, \frac{\max_a Q(s_i, a) - \min_a Q(s_i, a)}
                               {\tfrac1n \sum_j \max_a Q(s_j, a) - \min_a Q(s_j, a)},

with ``Q`` the OPE engine's fitted-Q evaluation of the source policy
(:func:`equicare.ope.fit_fqe`), the maximum and minimum over the actions observed in the data
(the Q-model extrapolates elsewhere) and a floor ``f`` so that no row is ignored. A row where
every action is worth the same teaches the tree little; a row where the wrong action costs a lot
counts more (as in VIPER, Bastani, Pu & Solar-Lezama 2018).

**Factored actions.** The tree predicts the *joint* action (the flat index): each leaf names one
complete combination (``modality=home_visit, provider=chw, ...``), so the rules can never combine
component choices the source policy would not make together. Per-component trees would be smaller
per component but need a consistency repair; the joint tree needs none and its leaves read as
whole care plans.

**Leaves are stochastic.** Each leaf's distribution is the (weighted) frequency of the source's
choices among the fitting rows that reach it, optionally smoothed by ``smoothing`` pseudo-counts
over the actions seen in the fit. With ``labels="argmax"`` the choices are the source's most
likely actions; with ``labels="sample"`` each row contributes ``n_samples`` draws from the source
distribution, so the leaf frequencies estimate the source's average distribution in the leaf.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.policy._base import check_probs, sample_actions
from equicare.policy._tree import TreePolicy, tree_features
from equicare.utils import (
    RandomState,
    check_is_fitted,
    check_param,
    check_random_state,
    config_from_dict,
    config_to_dict,
)

__all__ = ["DistillConfig", "Distiller", "distill", "feature_records", "choice_weights",
           "merge_same_action"]

_OWNER = "DistillConfig"


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Settings of the distillation.

    Parameters
    ----------
    max_depth : int, default=3
        Depth of the tree (1 to 12): at most ``2 ** max_depth`` rules.
    max_leaf_nodes : int, optional
        Cap on the number of rules (leaves), grown best-first.
    min_samples_leaf : int, default=20
        Fewest fitting rows behind a rule.
    weighting : {"q_spread", "uniform"}, default="q_spread"
        Row weights: the spread of the source's Q over the observed actions, or none.
    q_model : {"linear", "gbm", "tabular", "mlp"}, default="linear"
        Function class of the FQE Q-model behind the weights.
    weight_floor : float, default=0.1
        Share ``f`` of the mean weight every row keeps (in [0, 1]).
    labels : {"argmax", "sample"}, default="argmax"
        Imitate the source's most likely action, or ``n_samples`` draws per row.
    n_samples : int, default=4
        Draws per row with ``labels="sample"``.
    smoothing : float, default=0.0
        Pseudo-count added to every action seen in the fit at every leaf (>= 0).
    history : int, optional
        Rows of history the features read (1: current row only); default: the source policy's
        ``window``.
    ccp_alpha : float, default=0.0
        Minimal cost-complexity pruning of scikit-learn's tree (>= 0).
    merge : bool, default=True
        Collapse sibling leaves whose most likely action is the same into their parent (the
        parent's distribution is the pooled one), so no two rules differ only in a condition
        that does not change the recommendation.
    """

    max_depth: int = 3
    max_leaf_nodes: int | None = None
    min_samples_leaf: int = 20
    weighting: Literal["q_spread", "uniform"] = "q_spread"
    q_model: Literal["linear", "gbm", "tabular", "mlp"] = "linear"
    weight_floor: float = 0.1
    labels: Literal["argmax", "sample"] = "argmax"
    n_samples: int = 4
    smoothing: float = 0.0
    history: int | None = None
    ccp_alpha: float = 0.0
    merge: bool = True

    def __post_init__(self) -> None:
        check_param(self.max_depth, "max_depth", _OWNER, kind=int, low=1, high=12)
        check_param(self.max_leaf_nodes, "max_leaf_nodes", _OWNER, kind=int, low=2,
                    allow_none=True)
        check_param(self.min_samples_leaf, "min_samples_leaf", _OWNER, kind=int, low=1)
        check_param(self.weighting, "weighting", _OWNER, choices=("q_spread", "uniform"))
        check_param(self.q_model, "q_model", _OWNER, choices=("linear", "gbm", "tabular", "mlp"))
        check_param(self.weight_floor, "weight_floor", _OWNER, kind=(int, float), low=0, high=1)
        check_param(self.labels, "labels", _OWNER, choices=("argmax", "sample"))
        check_param(self.n_samples, "n_samples", _OWNER, kind=int, low=1)
        check_param(self.smoothing, "smoothing", _OWNER, kind=(int, float), low=0)
        check_param(self.history, "history", _OWNER, kind=int, low=1, allow_none=True)
        check_param(self.ccp_alpha, "ccp_alpha", _OWNER, kind=(int, float), low=0)
        check_param(self.merge, "merge", _OWNER, kind=bool)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict`."""
        return config_from_dict(cls, d)


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


def choice_weights(dataset: TrajectoryDataset, source_probs: NDArray[np.float64],
                   config: DistillConfig | None = None, *, random_state: RandomState = None
                   ) -> NDArray[np.float64]:
    """Row weights: how much the choice matters, from the source policy's FQE Q-function.

    Parameters
    ----------
    dataset : TrajectoryDataset
    source_probs : ndarray of shape (n_steps, n_actions)
        The source policy's probabilities (the FQE target policy).
    config : DistillConfig, optional
    random_state : int, Generator or None

    Returns
    -------
    ndarray of shape (n_steps,)
        Mean 1, at least ``weight_floor``.
    """
    from equicare.ope import FQEConfig, fit_fqe

    cfg = config or DistillConfig()
    n = dataset.n_steps
    if cfg.weighting == "uniform":
        return np.ones(n)
    fit = fit_fqe(dataset, source_probs, FQEConfig(model=cfg.q_model),
                  random_state=random_state)
    observed = np.unique(dataset.actions)
    q = fit.q[:, observed]
    spread = q.max(axis=1) - q.min(axis=1)
    spread = np.where(np.isfinite(spread), spread, 0.0)
    mean = float(spread.mean())
    if mean <= 0:
        return np.ones(n)
    f = float(cfg.weight_floor)
    return f + (1.0 - f) * spread / mean


@dataclass(eq=False)
class Distiller:
    """Fit a shallow decision tree that imitates a policy; the result is itself a policy.

    Parameters
    ----------
    config : DistillConfig, optional

    Attributes
    ----------
    policy_ : TreePolicy
        The distilled policy (stochastic leaves; ``policy_.save(path)`` writes a model folder).
    tree_ : sklearn.tree.DecisionTreeClassifier
    features_ : list of dict
        The candidate features (records of :func:`equicare.policy.tree_features`).
    weights_ : ndarray of shape (n_steps,)
        Row weights used in the fit.
    agreement_ : float
        Weighted share of fitting rows where the tree's most likely action is the source's.

    Examples
    --------
    >>> d = Distiller(DistillConfig(max_depth=3)).fit(train, awr)   # doctest: +SKIP
    >>> d.policy_.action_probs(test)                                 # doctest: +SKIP
    """

    config: DistillConfig | None = None

    def fit(self, dataset: TrajectoryDataset, policy: Any = None, *,
            source_probs: NDArray[np.float64] | None = None,
            weights: NDArray[np.float64] | None = None,
            random_state: RandomState = None) -> Distiller:
        """Fit the tree on the rows of ``dataset``.

        Parameters
        ----------
        dataset : TrajectoryDataset
        policy : Policy, optional
            The source policy (its ``window`` sets the history features).
        source_probs : ndarray of shape (n_steps, n_actions), optional
            The source's probabilities on ``dataset`` (default: ``policy.action_probs``).
        weights : ndarray of shape (n_steps,), optional
            Row weights (default: :func:`choice_weights`).
        random_state : int, Generator or None

        Returns
        -------
        self
        """
        from sklearn.tree import DecisionTreeClassifier

        cfg = self.config or DistillConfig()
        if policy is None and source_probs is None:
            raise ValueError("Distiller.fit needs the source policy or its source_probs.")
        rng = check_random_state(random_state)
        probs = (policy.action_probs(dataset) if source_probs is None else source_probs)
        probs = check_probs(probs, dataset.n_steps, dataset.n_actions, "source policy")
        window = cfg.history if cfg.history is not None else int(getattr(policy, "window", 1))
        feats = feature_records(dataset, window)
        x = tree_features(dataset, feats, "distillation")
        w = (choice_weights(dataset, probs, cfg, random_state=int(rng.integers(2**31 - 1)))
             if weights is None else np.asarray(weights, dtype=np.float64))
        if w.shape != (dataset.n_steps,) or not np.all(np.isfinite(w) & (w >= 0)):
            raise ValueError(f"weights must be finite, >= 0 and of shape ({dataset.n_steps},).")
        if cfg.labels == "argmax":
            xf, y, wf = x, np.argmax(probs, axis=1), w
        else:
            k = cfg.n_samples
            y = np.concatenate([sample_actions(probs, rng) for _ in range(k)])
            xf, wf = np.tile(x, (k, 1)), np.tile(w, k) / k
        tree = DecisionTreeClassifier(max_depth=cfg.max_depth, max_leaf_nodes=cfg.max_leaf_nodes,
                                      min_samples_leaf=cfg.min_samples_leaf,
                                      ccp_alpha=float(cfg.ccp_alpha),
                                      random_state=int(rng.integers(2**31 - 1)))
        tree.fit(xf, y, sample_weight=wf)
        t = tree.tree_
        value = np.asarray(t.value[:, 0, :], dtype=np.float64)
        value = value / np.maximum(value.sum(axis=1, keepdims=True), 1e-300)
        counts = value * np.asarray(t.weighted_n_node_samples, dtype=np.float64)[:, None]
        counts += float(cfg.smoothing)
        node_probs = np.zeros((t.node_count, dataset.n_actions))
        node_probs[:, np.asarray(tree.classes_, dtype=np.int64)] = (
            counts / counts.sum(axis=1, keepdims=True))
        arrays = {"children_left": np.asarray(t.children_left, dtype=np.int64),
                  "children_right": np.asarray(t.children_right, dtype=np.int64),
                  "feature": np.asarray(t.feature, dtype=np.int64),
                  "threshold": np.asarray(t.threshold, dtype=np.float64), "probs": node_probs}
        if cfg.merge:
            arrays = merge_same_action(**arrays)
        self.policy_ = TreePolicy(
            **arrays, features=tuple(feats), action_space=dataset.action_space,
            source="distilled rules", info={"distill": cfg.to_dict()})
        self.tree_ = tree
        self.features_ = feats
        self.weights_ = w
        leaves = self.policy_.apply_features(x)
        hit = np.argmax(self.policy_.probs, axis=1)[leaves] == np.argmax(probs, axis=1)
        self.agreement_ = float(np.average(hit, weights=w)) if w.sum() > 0 else float(hit.mean())
        return self

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        check_is_fitted(self, "policy_")
        return self.policy_.n_actions

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """The distilled policy's probabilities, shape ``(n_steps, n_actions)``."""
        check_is_fitted(self, "policy_")
        return self.policy_.action_probs(dataset)


def merge_same_action(children_left: NDArray[np.int64], children_right: NDArray[np.int64],
                      feature: NDArray[np.int64], threshold: NDArray[np.float64],
                      probs: NDArray[np.float64]) -> dict[str, NDArray[Any]]:
    """Collapse sibling leaves with the same most likely action into their parent, repeatedly.

    Node ``i``'s distribution must be the pooled distribution of its subtree (as in a fitted
    scikit-learn tree). Returns the compacted arrays (nodes renumbered depth-first, parents
    first), keyed like :class:`~equicare.policy.TreePolicy`'s fields.
    """
    left, right = children_left.copy(), children_right.copy()
    best = np.argmax(probs, axis=1)
    changed = True
    while changed:  # over the nodes of a shallow tree
        changed = False
        for node in range(left.size - 1, -1, -1):
            lc, rc = left[node], right[node]
            if lc < 0 or left[lc] >= 0 or left[rc] >= 0 or best[lc] != best[rc]:
                continue
            left[node] = right[node] = -1
            changed = True
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] >= 0:
            stack += [int(right[node]), int(left[node])]
    new_id = {old: i for i, old in enumerate(order)}
    idx = np.asarray(order, dtype=np.int64)
    is_leaf = left[idx] < 0
    new_left = np.array([-1 if left[o] < 0 else new_id[int(left[o])] for o in order], np.int64)
    new_right = np.array([-1 if left[o] < 0 else new_id[int(right[o])] for o in order], np.int64)
    return {"children_left": new_left, "children_right": new_right,
            "feature": np.where(is_leaf, -2, feature[idx]),
            "threshold": np.where(is_leaf, -2.0, threshold[idx]), "probs": probs[idx]}


def distill(dataset: TrajectoryDataset, policy: Any, *, max_depth: int = 3,
            random_state: RandomState = None, **settings: Any) -> TreePolicy:
    """Distil ``policy`` into a tree of depth ``max_depth`` in one call.

    ``settings`` are the other :class:`DistillConfig` fields.

    Returns
    -------
    TreePolicy
    """
    cfg = replace(DistillConfig(**settings), max_depth=max_depth)
    return Distiller(cfg).fit(dataset, policy, random_state=random_state).policy_
