r"""Distil any policy into a shallow decision tree (scikit-learn) over readable row features.

The tree is fitted to imitate the source policy on the panel's rows: its inputs are the numeric
state columns (in the data's units, rounded to a coarse grid so that every threshold is a
half-step of the grid rather than the midpoint of two patients' values, see
:mod:`equicare.explain._features`), one indicator per level of
each categorical state, and, when the source policy reads history (``window > 1``), the previous
row's states, action components and reward and the counts of each action level over the window.

**Set-valued splits** (``set_splits``, on by default). A tree of one-hot indicators names one
level per split, so a depth-4 tree names at most about 8 levels of a column; CART and rpart split
a categorical column into two *sets* of levels. Here the candidates also hold, per categorical
column and per label (the source's action, or a deviation of exception rules), the set of levels
whose weighted majority label among the fitting rows is that label, each level of at least
``min_leaf_episodes`` episodes (:func:`equicare.explain._features.set_features`): a rule then
reads "state is one of s12, s45, s101".

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

**Exceptions to current practice** (``mode="exceptions"``). What a clinical committee approves
is often "current practice, except these rules". The tree then learns where to *deviate*: each
fitting row is labelled with the source's most likely action ``a*`` when the source's own
distribution beats current practice there by a share ``m`` (``deviation_margin``) of what is at
stake in the row, so that the noise of the estimate of practice is not read as a deviation, and
so does ``a*`` (``deviation_margin="auto"``, where practice is estimated by cells, labels every
row with ``m = 0`` and tests each fitted rule instead: its rows together must beat practice by
two standard errors of the estimate, :func:`rule_advantage_z`; see :class:`DistillConfig`):

.. math::

    \sum_a (\pi(a|s_i) - \hat b(a|s_i)) Q(s_i, a) > m \, (\max_a Q(s_i, a) - \min_a Q(s_i, a))
    \quad\text{and}\quad g_i = Q(s_i, a^*_i) - \sum_a \hat b(a|s_i) Q(s_i, a) > 0,

and *usual care* otherwise. Rows are weighted by what the choice is worth: a deviation by the
smaller of the two gains (so a source that matches practice up to the noise of its estimate
teaches nothing), a usual-care row by the loss ``max(-g_i, 0)`` of deviating there plus the floor
``f`` (by default a row that says nothing keeps current practice). ``\hat b`` is the
clinicians' estimated distribution (:func:`equicare.explain.fit_usual_care`: observed
frequencies per categorical cell, or a tree of the logged actions), stored with the rules; a
leaf whose weighted majority is usual care follows it, so every state no rule names keeps the
clinicians' own distribution ("otherwise: as current practice"). A source that agrees with
practice somewhere (SPIBB where data are thin) is never turned into a deviation there. Shallow
imitation fails where the source differs from practice cell by cell over many states (Garnet):
its leaves put whole populations on one action; exception rules change only what they name.

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
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import InvalidParameterError
from equicare.explain._features import (
    feature_records,
    grid_steps,
    grid_thresholds,
    set_features,
    snap_to_grid,
)
from equicare.explain._prune import compact_arrays, node_sums, prune_small_leaves, route_rows
from equicare.explain._usual import fit_usual_care, usual_care_cells, usual_care_probs
from equicare.ope._prepare import check_q_model
from equicare.policy._base import check_probs, sample_actions
from equicare.policy._cells import CellPolicy
from equicare.policy._learned import manifest_fingerprint
from equicare.policy._tree import TreePolicy, tree_features
from equicare.utils import (
    MIN_CELL,
    PARAM_MESSAGE,
    RandomState,
    check_dataset,
    check_is_fitted,
    check_param,
    check_random_state,
    config_from_dict,
    config_to_dict,
)

__all__ = ["DistillConfig", "Distiller", "distill", "feature_records", "choice_weights",
           "merge_same_action", "deviation_targets", "exception_targets", "rule_advantage_z",
           "source_q"]

_OWNER = "DistillConfig"

#: Standard errors of practice's estimated expected Q by which the source must beat it over a
#: rule's rows (``deviation_margin="auto"`` with practice as cells; :func:`rule_advantage_z`),
#: or in a row (:func:`deviation_targets` with ``margin="auto"``).
DEVIATION_Z = 2.0
#: The share of the row's spread of Q that ``deviation_margin="auto"`` (the default) asks when
#: practice is a behaviour tree.
AUTO_TREE_MARGIN = 0.2


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
        Fewest fitting rows behind a rule (scikit-learn's constraint, while the tree grows).
    min_leaf_episodes : int, default=11
        Fewest distinct episodes of the fitting data behind a rule: a leaf with fewer loses its
        split after the fit (its rows follow its sibling's tests; :mod:`equicare.explain._prune`),
        so no rule, its share or its action frequencies describe a handful of members
        (``equicare.utils.MIN_CELL``).
    weighting : {"q_spread", "uniform"}, default="q_spread"
        Row weights: the spread of the source's Q over the observed actions, or none.
    q_model : str, default="linear"
        The FQE Q-model behind the weights: any ``q_model`` of :func:`equicare.ope.evaluate`
        (``"linear"``, ``"tabular"``, ``"tabular_stationary"``, ...). ``"auto"`` is
        ``evaluate``'s criterion, which judges a model's value rather than the spread of its
        action values that the weights need; ``explain`` therefore turns its own ``"auto"``
        into ``"linear"`` here (:func:`equicare.explain._evidence.weights_q_model`).
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
        that does not change the recommendation. A merge never changes a row's most likely
        action (a pooled count keeps the siblings' shared argmax), so held-out agreement is
        the same; measured at depths 2-6 on the care simulator (AWR) it cuts the rules at
        depth 4 from 16 to 11 and lowers the total variation (0.796 -> 0.778), and on Garnet
        (SPIBB, exact values) it changes nothing: its exception rules are chains of "state is".
    mode : {"imitate", "exceptions"}, default="imitate"
        Imitate the source everywhere, or learn where to deviate from current practice (every
        other state keeps the clinicians' estimated distribution; see the module docstring).
    usual_care : {"auto", "cells", "tree"}, default="auto"
        Representation of current practice in ``mode="exceptions"``
        (:func:`equicare.explain.fit_usual_care`).
    deviation_margin : float or "auto", default="auto"
        In ``mode="exceptions"``, a row counts as a deviation only if the source's expected Q
        beats current practice's by more than this share of the row's spread of Q over the
        observed actions (in [0, 1)). The margin keeps the noise of the estimate of practice
        from reading as deviations: with 0, a source that follows (uniform) practice where
        ``x1 <= 0.6`` gets rules that deviate there too (action ``a0`` with p = 0.90 on those
        rows, ``tests/explain/test_distill.py``'s half expert). Where the source's gains are
        small but real in many categorical states, set-valued splits need those labels:
        measured on Garnet (SPIBB, exact values, rules as deployed, depth 3 / 4), 0.2 keeps 23%
        / 26% of the gain on ``s700_a25_g1`` seed 1 and 0 keeps 100% / 123% (seed 2: 5% / 25%
        against 37% / 57%; seed 3: 9% / 9% against 59% / 65%). On the care simulator (Monte
        Carlo; AWR, CQL and a source departing from practice only where risk > 0.5) both
        margins keep the same shares (115%, 138%, 121%).

        ``"auto"`` tests the rules instead of the rows, where the noise of the estimate is known.
        With practice as cells (``usual_care``), every row where the source gains is labelled
        (margin 0, so the set-valued splits can name every state where it gains), and after the fit
        a rule that deviates keeps its recommendation only if, over its rows together, the source
        beats practice's estimated value by more than ``DEVIATION_Z`` (2) standard errors of that
        estimate (:func:`rule_advantage_z`: frequencies over the ``n_c`` logged rows of each cell,
        cells independent); any other rule follows current practice. A rule pools the evidence of
        the states it names, so real gains too small to stand out state by state pass, and a rule
        made of the noise of the frequencies does not. The half expert with practice as cells:
        margin 0 gives rules that deviate on 1% to 55% of the rows below 0.6 (five data sets, depth
        3 / 4), ``"auto"`` on 0% to 2% (as 0.2: 0% to 1%; rules such as "0.585 < x1 <= 0.605" whose
        rows are mostly above 0.6). On Garnet (SPIBB, 5,000 episodes, exact values, rules as
        deployed, depth 3 / 4) no fitted rule fails the test (its z is 2.4 to 198), so ``"auto"``
        keeps what margin 0 keeps: 100% / 123% on ``s700_a25_g1`` seed 1, 37% / 57% (seed 2), 59% /
        65% (seed 3), 48% / 49% on ``s50_a25_g1`` and 76% / 96% on ``s700_a25_g099`` (the share 0.2:
        23% / 26%, 5% / 25%, 9% / 9%, 25% / 30%, 25% / 24%; the earlier row-by-row test of 2
        standard errors: 68% / 77%, 30% / 39%, 55% / 62%, 48% / 49%, 46% / 63%). A Garnet source
        equal to the true practice gets rules on 0% to 0.6% of the rows with ``"auto"`` (0.5% to
        1.6% with margin 0), each worth more than practice exactly (the rules' tree is selected on
        the same rows it is tested on, so the test is optimistic). Practice as a behaviour tree
        (numeric states) keeps the share 0.2 (``AUTO_TREE_MARGIN``): its leaves are chosen by the
        same logged actions, so their counts understate the noise (on the half expert, 8% to 12% of
        the rows below 0.6 pass a 2-standard-error bar row by row over three data sets, and 25% to
        54% of them reject uniform practice at the 5% level over five), and the row-by-row test gave
        a spurious "a0" rule over 11% of the rows at depth 4.
    set_splits : bool, default=True
        Add set-valued splits of the categorical columns to the candidate features ("state is
        one of s12, s45, s101"): per column and per label, the levels whose weighted majority
        label is that action (:func:`equicare.explain._features.set_features`), built from the
        fitting rows' labels and weights.
    """

    max_depth: int = 3
    max_leaf_nodes: int | None = None
    min_samples_leaf: int = 20
    min_leaf_episodes: int = MIN_CELL
    weighting: Literal["q_spread", "uniform"] = "q_spread"
    q_model: str = "linear"
    weight_floor: float = 0.1
    labels: Literal["argmax", "sample"] = "argmax"
    n_samples: int = 4
    smoothing: float = 0.0
    history: int | None = None
    ccp_alpha: float = 0.0
    merge: bool = True
    mode: Literal["imitate", "exceptions"] = "imitate"
    usual_care: Literal["auto", "cells", "tree"] = "auto"
    deviation_margin: float | Literal["auto"] = "auto"
    set_splits: bool = True

    def __post_init__(self) -> None:
        check_param(self.max_depth, "max_depth", _OWNER, kind=int, low=1, high=12)
        check_param(self.max_leaf_nodes, "max_leaf_nodes", _OWNER, kind=int, low=2,
                    allow_none=True)
        check_param(self.min_samples_leaf, "min_samples_leaf", _OWNER, kind=int, low=1)
        check_param(self.min_leaf_episodes, "min_leaf_episodes", _OWNER, kind=int, low=1)
        check_param(self.weighting, "weighting", _OWNER, choices=("q_spread", "uniform"))
        check_q_model(self.q_model, _OWNER)
        check_param(self.weight_floor, "weight_floor", _OWNER, kind=(int, float), low=0, high=1)
        check_param(self.labels, "labels", _OWNER, choices=("argmax", "sample"))
        check_param(self.n_samples, "n_samples", _OWNER, kind=int, low=1)
        check_param(self.smoothing, "smoothing", _OWNER, kind=(int, float), low=0)
        check_param(self.history, "history", _OWNER, kind=int, low=1, allow_none=True)
        check_param(self.ccp_alpha, "ccp_alpha", _OWNER, kind=(int, float), low=0)
        check_param(self.merge, "merge", _OWNER, kind=bool)
        check_param(self.mode, "mode", _OWNER, choices=("imitate", "exceptions"))
        check_param(self.usual_care, "usual_care", _OWNER, choices=("auto", "cells", "tree"))
        if self.deviation_margin != "auto":
            check_param(self.deviation_margin, "deviation_margin", _OWNER, kind=(int, float),
                        low=0, high=1, high_inclusive=False,
                        expected="'auto' or a number in [0, 1)")
        check_param(self.set_splits, "set_splits", _OWNER, kind=bool)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        """Inverse of :meth:`to_dict`."""
        return config_from_dict(cls, d)


def choice_weights(dataset: TrajectoryDataset, source_probs: NDArray[np.float64],
                   config: DistillConfig | None = None, *, random_state: RandomState = None,
                   q: NDArray[np.float64] | None = None) -> NDArray[np.float64]:
    """Row weights: how much the choice matters, from the source policy's FQE Q-function.

    Parameters
    ----------
    dataset : TrajectoryDataset
    source_probs : ndarray of shape (n_steps, n_actions)
        The source policy's probabilities (the FQE target policy).
    config : DistillConfig, optional
    random_state : int, Generator or None
    q : ndarray of shape (n_steps, n_actions), optional
        The source's Q-function when already fitted (default: FQE here).

    Returns
    -------
    ndarray of shape (n_steps,)
        Mean 1, at least ``weight_floor``.
    """
    cfg = config or DistillConfig()
    n = dataset.n_steps
    if cfg.weighting == "uniform":
        return np.ones(n)
    observed = np.unique(dataset.actions)
    q = (source_q(dataset, source_probs, cfg, random_state) if q is None else q)[:, observed]
    spread = q.max(axis=1) - q.min(axis=1)
    return _floored(np.where(np.isfinite(spread), spread, 0.0), cfg.weight_floor)


def _floored(w: NDArray[np.float64], floor: float) -> NDArray[np.float64]:
    """``f + (1 - f) w / mean(w)`` (all ones when ``w`` is zero)."""
    mean = float(w.mean()) if w.size else 0.0
    if mean <= 0:
        return np.ones(w.shape[0])
    f = float(floor)
    return np.asarray(f + (1.0 - f) * w / mean, dtype=np.float64)


def source_q(dataset: TrajectoryDataset, source_probs: NDArray[np.float64],
              cfg: DistillConfig, random_state: RandomState) -> NDArray[np.float64]:
    """The FQE Q-function of the source policy, shape ``(n_steps, n_actions)``.

    Parameters
    ----------
    dataset : TrajectoryDataset
    source_probs : ndarray of shape (n_steps, n_actions)
    cfg : DistillConfig
        Its ``q_model`` is the function class.
    random_state : int, Generator or None
    """
    from equicare.ope import fit_fqe
    from equicare.ope._prepare import q_model_config

    fit = fit_fqe(dataset, source_probs, q_model_config(cfg.q_model), random_state=random_state)
    return np.asarray(fit.q, dtype=np.float64)


def deviation_targets(dataset: TrajectoryDataset, source_probs: NDArray[np.float64],
                      usual_probs: NDArray[np.float64], q: NDArray[np.float64],
                      weight_floor: float = 0.1, margin: float | str = 0.2,
                      counts: NDArray[np.int64] | None = None
                      ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Labels and weights of exception rules: the source's action where deviating pays.

    Parameters
    ----------
    dataset : TrajectoryDataset
    source_probs, usual_probs : ndarray of shape (n_steps, n_actions)
        The source policy's and current practice's (estimated) distributions.
    q : ndarray of shape (n_steps, n_actions)
        The source's Q-function (FQE); actions never logged in the data count as unknown.
    weight_floor : float
    margin : float or "auto"
        The source's expected Q must beat practice's by at least this share of the row's spread
        of Q over the observed actions; ``"auto"``: by ``DEVIATION_Z`` standard errors of
        practice's estimated expected Q (see the module docstring).
    counts : ndarray of shape (n_steps,), int, optional
        Logged rows behind each row's estimate of practice
        (:func:`equicare.explain._usual.usual_care_counts`); needed with ``margin="auto"``.

    Returns
    -------
    labels : ndarray of shape (n_steps,), int
        The source's most likely action, or ``n_actions`` (usual care).
    weights : ndarray of shape (n_steps,)
        What each label is worth (see the module docstring), mean 1.
    """
    n, A = source_probs.shape
    observed = np.zeros(A, dtype=bool)
    observed[np.unique(dataset.actions)] = True
    qo = np.where(observed[None, :] & np.isfinite(q), q, 0.0)
    usual_v = (usual_probs * qo).sum(axis=1)
    best = np.argmax(source_probs, axis=1)
    gain = qo[np.arange(n), best] - usual_v
    adv = (source_probs * qo).sum(axis=1) - usual_v
    qs = np.where(observed[None, :], qo, np.nan)
    spread = np.nan_to_num(np.nanmax(qs, axis=1) - np.nanmin(qs, axis=1))
    if margin == "auto":
        if counts is None or np.shape(counts) != (n,):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="counts", owner="deviation_targets",
                expected=f"the rows behind each row's estimate of practice, shape ({n},), "
                         "with margin='auto'", got=None if counts is None else np.shape(counts)))
        # practice's value is a frequency-weighted mean of Q over n rows: its standard error
        var = (usual_probs * np.where(observed[None, :], qo - usual_v[:, None], 0.0) ** 2
               ).sum(axis=1)
        bar = DEVIATION_Z * np.sqrt(var / np.maximum(np.asarray(counts, dtype=np.float64), 1))
    else:
        # the source must beat practice by a share of what is at stake in the row
        bar = float(margin) * spread
    # so that the noise of the estimate of practice is not read as a deviation
    deviate = (adv > bar) & (adv > 0) & (gain > 0) & observed[best]
    labels = np.where(deviate, best, A).astype(np.int64)
    cost = np.where(deviate, np.minimum(adv, gain), np.maximum(-gain, 0.0))
    cost = np.where(np.isfinite(cost), cost, 0.0)
    mean = float(cost.mean()) if cost.size else 0.0
    if mean <= 0:
        return labels, np.ones(n)
    # the floor goes to usual care only: a deviation counts as much as the source gains by it
    f = float(weight_floor)
    w = (1.0 - f) * cost / mean + np.where(deviate, 0.0, f)
    return labels, np.asarray(w / w.mean(), dtype=np.float64)


def exception_targets(dataset: TrajectoryDataset, source_probs: NDArray[np.float64],
                      usual_care: Any, q: NDArray[np.float64], cfg: DistillConfig
                      ) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """:func:`deviation_targets` against the estimate of practice ``usual_care`` on ``dataset``.

    Returns the labels, the weights and practice's estimated distribution (``n_steps`` rows).
    With ``deviation_margin="auto"``, practice as cells labels every row where the source
    gains (margin 0; the noise test then applies to each fitted rule's rows together,
    :func:`rule_advantage_z`); any other estimate (the behaviour tree) takes the share
    ``AUTO_TREE_MARGIN``.
    """
    b = usual_care_probs(usual_care, dataset)
    margin = cfg.deviation_margin
    if margin == "auto":
        # practice as cells: every row where the source gains is labelled, and the noise test
        # applies to each rule's rows together (rule_advantage_z, in Distiller.fit); a
        # behaviour tree's leaves are chosen by the same logged actions, so their counts
        # understate the noise of its frequencies (see DistillConfig.deviation_margin)
        margin = 0.0 if isinstance(usual_care, CellPolicy) else AUTO_TREE_MARGIN
    labels, weights = deviation_targets(dataset, source_probs, b, q, cfg.weight_floor, margin)
    return labels, weights, b


def rule_advantage_z(leaf: NDArray[np.int64], n_nodes: int, source_probs: NDArray[np.float64],
                     usual_probs: NDArray[np.float64], q: NDArray[np.float64],
                     observed: NDArray[np.bool_], cell: NDArray[np.int64],
                     counts: NDArray[np.int64]) -> NDArray[np.float64]:
    r"""The source's advantage over practice summed over each node's rows, in standard errors.

    Practice as cells is a frequency ``\hat b_c`` over the ``n_c`` logged rows of cell ``c``,
    so over the rows ``R`` of a rule its estimated value ``\sum_{i \in R} \hat b_{c(i)}
    \cdot Q_i = \sum_c \hat b_c \cdot S_c`` (``S_c``: the sum of ``Q_i`` over the rule's rows
    in cell ``c``) has variance ``\sum_c \mathrm{Var}_{\hat b_c}(S_c) / n_c`` (multinomial
    frequencies, cells independent). The statistic is ``\sum_{i \in R} \sum_a (\pi_i(a) -
    \hat b_i(a)) Q_i(a)`` over that standard error: for a source that *is* practice on the
    rule's rows, about standard normal.

    Parameters
    ----------
    leaf : ndarray of shape (n_steps,), int
        Node of each row.
    n_nodes : int
    source_probs, usual_probs, q : ndarray of shape (n_steps, n_actions)
    observed : ndarray of shape (n_actions,), bool
        Actions logged in the data (others' Q count as unknown).
    cell, counts : ndarray of shape (n_steps,), int
        Each row's cell and the cell's rows (:func:`equicare.explain._usual.usual_care_cells`).

    Returns
    -------
    ndarray of shape (n_nodes,)
        ``inf`` for a node with a gain and no noise, ``nan`` for a node without rows.
    """
    A = q.shape[1]
    qo = np.where(observed[None, :] & np.isfinite(q), q, 0.0)
    adv = ((source_probs - usual_probs) * qo).sum(axis=1)
    # one group per (node, cell): the sum of Q over its rows, its cell's frequencies and rows
    _, first, group = np.unique(leaf * (int(cell.max()) + 1) + cell, return_index=True,
                                return_inverse=True)
    group = np.asarray(group, dtype=np.int64).ravel()
    s = np.zeros((first.size, A))
    np.add.at(s, group, qo)
    b = usual_probs[first]
    mean = (b * s).sum(axis=1)
    var = (b * (s - mean[:, None]) ** 2).sum(axis=1) / np.maximum(counts[first], 1)
    var_node = np.bincount(leaf[first], weights=var, minlength=n_nodes)
    adv_node = np.bincount(leaf, weights=adv, minlength=n_nodes)
    rows = np.bincount(leaf, minlength=n_nodes)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var_node > 0, adv_node / np.sqrt(var_node),
                     np.where(adv_node > 0, np.inf, 0.0))
    return np.asarray(np.where(rows > 0, z, np.nan), dtype=np.float64)


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
            q: NDArray[np.float64] | None = None, usual_care: Any = None,
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
            Row weights (default: :func:`choice_weights`, or :func:`deviation_targets`' with
            ``mode="exceptions"``).
        q : ndarray of shape (n_steps, n_actions), optional
            The source's FQE Q-function on ``dataset`` when already fitted.
        usual_care : CellPolicy or TreePolicy, optional
            Current practice for ``mode="exceptions"`` (default:
            :func:`~equicare.explain.fit_usual_care` on ``dataset``).
        random_state : int, Generator or None

        Returns
        -------
        self
        """
        from sklearn.tree import DecisionTreeClassifier

        cfg = self.config or DistillConfig()
        if policy is None and source_probs is None:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="policy", owner="Distiller.fit",
                expected="a Policy when source_probs is None", got=policy))
        rng = check_random_state(random_state)
        probs = (policy.action_probs(dataset) if source_probs is None else source_probs)
        probs = check_probs(probs, dataset.n_steps, dataset.n_actions, "source policy")
        window = cfg.history if cfg.history is not None else int(getattr(policy, "window", 1))
        feats = feature_records(dataset, window)
        x_raw = tree_features(dataset, feats, "distillation", sparse="auto")
        # numeric features on a coarse grid: no threshold is the midpoint of two rows' values
        steps = grid_steps(x_raw, feats)
        x = snap_to_grid(x_raw, steps)
        A = dataset.n_actions
        seed_w, seed_u, seed_t = (int(v) for v in rng.integers(2**31 - 1, size=3))
        usual_pol: Any = None
        if cfg.mode == "exceptions":
            usual_pol = (fit_usual_care(dataset, cfg.usual_care, random_state=seed_u)
                         if usual_care is None else usual_care)
            if q is None:
                q = source_q(dataset, probs, cfg, seed_w)
            target, w_dev, b = exception_targets(dataset, probs, usual_pol, q, cfg)
            if weights is None:
                weights = w_dev if cfg.weighting == "q_spread" else np.ones(dataset.n_steps)
        w = (choice_weights(dataset, probs, cfg, random_state=seed_w, q=q)
             if weights is None else np.asarray(weights, dtype=np.float64))
        if w.shape != (dataset.n_steps,) or not np.all(np.isfinite(w) & (w >= 0)):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="weights", owner="Distiller.fit",
                expected=f"finite values >= 0 of shape ({dataset.n_steps},)",
                got=f"shape {w.shape}"))
        k = 1 if cfg.labels == "argmax" else cfg.n_samples
        if cfg.mode == "exceptions":
            # the source's action (argmax, or draws of its distribution) where it deviates
            y = target if k == 1 else np.concatenate(
                [np.where(target < A, sample_actions(probs, rng), A) for _ in range(k)])
        else:
            y = np.argmax(probs, axis=1) if k == 1 else np.concatenate(
                [sample_actions(probs, rng) for _ in range(k)])
        wf = w if k == 1 else np.tile(w, k) / k
        if cfg.set_splits:
            # "state is one of ...": per column and label, the levels that label holds
            exc = cfg.mode == "exceptions"
            sets = set_features(dataset, y, wf, A + 1 if exc else A, skip=A if exc else None,
                                min_episodes=cfg.min_leaf_episodes)
            if sets:
                feats = feats + sets
                x = _hstack(x, tree_features(dataset, sets, "distillation",
                                             sparse=sp.issparse(x)))
                steps = np.concatenate([steps, np.full(len(sets), np.nan)])
        xf = x if k == 1 else _tile_rows(x, k)
        tree = DecisionTreeClassifier(max_depth=cfg.max_depth, max_leaf_nodes=cfg.max_leaf_nodes,
                                      min_samples_leaf=cfg.min_samples_leaf,
                                      ccp_alpha=float(cfg.ccp_alpha), random_state=seed_t)
        tree.fit(xf, y, sample_weight=wf)
        t = tree.tree_
        classes = np.asarray(tree.classes_, dtype=np.int64)
        feature = np.asarray(t.feature, dtype=np.int64)
        left0 = np.asarray(t.children_left, dtype=np.int64)
        thr = grid_thresholds(feature, np.asarray(t.threshold, dtype=np.float64), left0, steps)
        # every rule covers at least min_leaf_episodes episodes of the fitting data (rows are
        # not members: 20 rows can be one member's 20 weeks)
        left, right, feature, thr, leaf = prune_small_leaves(
            x, np.asarray(dataset.episode_index, dtype=np.int64), left0,
            np.asarray(t.children_right, dtype=np.int64), feature, thr, cfg.min_leaf_episodes)
        reps = y.shape[0] // dataset.n_steps  # rows tiled for sampled labels
        full = node_sums(np.tile(leaf, reps), None, left, right, labels=y, n_labels=A + 1,
                         weights=wf)
        best = np.argmax(full, axis=1)
        act = full[:, :A] + float(cfg.smoothing) * np.isin(np.arange(A), classes)[None, :]
        node_probs = act / np.maximum(act.sum(axis=1, keepdims=True), 1e-300)
        usual_nodes = best == A
        if usual_nodes.any():
            node_probs[usual_nodes] = _usual_node_probs(dataset, leaf, b, left, right)[usual_nodes]
        best = np.where(usual_nodes, -1, best)
        arrays = {"children_left": left, "children_right": right, "feature": feature,
                  "threshold": thr, "probs": node_probs, "best": best}
        arrays = merge_same_action(**arrays) if cfg.merge else compact_arrays(**arrays)
        if (cfg.mode == "exceptions" and cfg.deviation_margin == "auto"
                and isinstance(usual_pol, CellPolicy) and q is not None):
            arrays = self._noise_test(arrays, x, dataset, probs, b, q, usual_pol, cfg.merge)
        usual = np.asarray(arrays.pop("best")) < 0
        has_usual = bool(usual[np.asarray(arrays["children_left"]) < 0].any())
        self.policy_ = TreePolicy(
            **arrays, features=tuple(feats), action_space=dataset.action_space,
            source="distilled rules", info={"distill": cfg.to_dict()},
            usual=usual if cfg.mode == "exceptions" else None,
            usual_policy=usual_pol if has_usual else None,
            manifest_fingerprint=manifest_fingerprint(getattr(dataset, "manifest", None)))
        self.tree_ = tree
        self.features_ = feats
        self.weights_ = w
        self.usual_care_ = usual_pol
        hit = (np.argmax(self.policy_.action_probs(dataset), axis=1)
               == np.argmax(probs, axis=1))
        self.agreement_ = float(np.average(hit, weights=w)) if w.sum() > 0 else float(hit.mean())
        return self

    @staticmethod
    def _noise_test(arrays: dict[str, Any], x: Any, dataset: TrajectoryDataset,
                    probs: NDArray[np.float64], b: NDArray[np.float64], q: NDArray[np.float64],
                    usual: CellPolicy, merge: bool) -> dict[str, Any]:
        """The rule-level noise test of ``deviation_margin="auto"`` with practice as cells.

        A rule (a leaf, after merging) that deviates keeps its recommendation only if, over
        its rows together, the source beats practice by more than ``DEVIATION_Z`` standard
        errors of the estimate (:func:`rule_advantage_z`); any other follows current practice.
        """
        left, right = np.asarray(arrays["children_left"]), np.asarray(arrays["children_right"])
        leaf = route_rows(x, left, right, np.asarray(arrays["feature"]),
                          np.asarray(arrays["threshold"]))
        A = dataset.n_actions
        observed = np.zeros(A, dtype=bool)
        observed[np.unique(dataset.actions)] = True
        z = rule_advantage_z(leaf, left.size, probs, b, q, observed,
                             *usual_care_cells(usual, dataset))
        best = np.asarray(arrays["best"]).copy()
        noise = (left < 0) & (best >= 0) & ~(z > DEVIATION_Z)
        if not noise.any():
            return arrays
        best[noise] = -1
        for node in range(left.size - 1, -1, -1):  # children first: a parent of usual care only
            if left[node] >= 0 and best[left[node]] < 0 and best[right[node]] < 0:
                best[node] = -1  # is usual care (the merge keeps the parent's recommendation)
        out = {**arrays, "best": best}
        out = merge_same_action(**out) if merge else compact_arrays(**out)
        # every usual-care node (a merged parent too) reads as its rows' mean estimated practice
        left, right = np.asarray(out["children_left"]), np.asarray(out["children_right"])
        leaf = route_rows(x, left, right, np.asarray(out["feature"]),
                          np.asarray(out["threshold"]))
        node_probs = np.asarray(out["probs"]).copy()
        usual_nodes = np.asarray(out["best"]) < 0
        node_probs[usual_nodes] = _usual_node_probs(dataset, leaf, b, left, right)[usual_nodes]
        return {**out, "probs": node_probs}

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        check_is_fitted(self, "policy_")
        return self.policy_.n_actions

    def action_probs(self, dataset: TrajectoryDataset) -> NDArray[np.float64]:
        """The distilled policy's probabilities, shape ``(n_steps, n_actions)``."""
        check_is_fitted(self, "policy_")
        return self.policy_.action_probs(dataset)


def _usual_node_probs(dataset: TrajectoryDataset, leaf: NDArray[np.int64],
                      b: NDArray[np.float64], left: NDArray[np.int64], right: NDArray[np.int64]
                      ) -> NDArray[np.float64]:
    """Each node's mean estimated practice over its rows (the overall frequencies if none).

    A usual-care node's stored distribution (for reading; its rows follow the behaviour model).
    """
    n_node = node_sums(leaf, np.ones((leaf.size, 1)), left, right)[:, 0]
    mean_b = node_sums(leaf, b, left, right) / np.maximum(n_node, 1)[:, None]
    mean_b[n_node == 0] = np.bincount(dataset.actions, minlength=dataset.n_actions
                                      ) / dataset.n_steps
    return np.asarray(mean_b, dtype=np.float64)


def _hstack(x: NDArray[np.float64] | sp.csc_matrix, more: NDArray[np.float64] | sp.csc_matrix
            ) -> NDArray[np.float64] | sp.csc_matrix:
    """``x`` with the columns of ``more`` appended (sparse when ``x`` is)."""
    if sp.issparse(x):
        return sp.csc_matrix(sp.hstack([x, sp.csc_matrix(more)], format="csc"))
    return np.hstack([np.asarray(x), np.asarray(more)])


def _tile_rows(x: NDArray[np.float64] | sp.csc_matrix, k: int
               ) -> NDArray[np.float64] | sp.csr_matrix:
    """``x`` stacked ``k`` times by rows (dense or sparse)."""
    if sp.issparse(x):
        return sp.csr_matrix(sp.vstack([x] * k, format="csr"))
    return np.tile(x, (k, 1))


def merge_same_action(children_left: NDArray[np.int64], children_right: NDArray[np.int64],
                      feature: NDArray[np.int64], threshold: NDArray[np.float64],
                      probs: NDArray[np.float64], best: NDArray[np.int64] | None = None
                      ) -> dict[str, NDArray[Any]]:
    """Collapse sibling leaves with the same recommendation into their parent, repeatedly.

    Node ``i``'s distribution must be the pooled distribution of its subtree (as in a fitted
    scikit-learn tree). ``best`` is each node's recommendation (default: the most likely
    action; exception rules mark usual care with -1); siblings recommending the same merge.
    Returns the compacted arrays (nodes renumbered depth-first, parents first), keyed like
    :class:`~equicare.policy.TreePolicy`'s fields, plus ``"best"`` when it was given.
    """
    left, right = children_left.copy(), children_right.copy()
    rec = np.argmax(probs, axis=1) if best is None else np.asarray(best, dtype=np.int64)
    changed = True
    while changed:  # over the nodes of a shallow tree
        changed = False
        for node in range(left.size - 1, -1, -1):
            lc, rc = left[node], right[node]
            if lc < 0 or left[lc] >= 0 or left[rc] >= 0 or rec[lc] != rec[rc]:
                continue
            left[node] = right[node] = -1
            changed = True
    return compact_arrays(left, right, feature, threshold, probs,
                          None if best is None else rec)


def distill(dataset: TrajectoryDataset, policy: Any, *, max_depth: int = 3,
            random_state: RandomState = None, **settings: Any) -> TreePolicy:
    """Distil ``policy`` into a tree of depth ``max_depth`` in one call.

    ``settings`` are the other :class:`DistillConfig` fields.

    Returns
    -------
    TreePolicy
    """
    check_dataset(dataset, "distill")
    cfg = replace(DistillConfig(**settings), max_depth=max_depth)
    return Distiller(cfg).fit(dataset, policy, random_state=random_state).policy_
