r"""Fitted-Q evaluation (Le, Voloshin & Yue 2019) with expected-value targets.

The target of row ``i`` is

.. math::

    y_i = r_i + \gamma \, \mathbb 1[\text{row } i \text{ has a next row}]
          \sum_a \pi_e(a \mid s_{i+1}) \hat Q(s_{i+1}, a),

the expectation over the *target* policy's action at the next row (no sampled next action), and
an episode's last row bootstraps nothing (the value of Contract 1 is the return over the
episode). Function classes:

``tabular``
    One cell per combination of categorical states. ``horizon="backward"`` (default) adds the step
    to the cell and solves the empirical finite-horizon MDP by backward induction (exact on
    tabular data); ``"stationary"`` solves the empirical Bellman equations ``(I - gamma P_pi) Q =
    R`` in closed form; ``"window"`` estimates the same stationary dynamics (reward, outcome hazard,
    transitions; a censored last row counts as "not absorbed", not as an end) and values the
    logged window by backward recursion over steps, ``Q_t = R + gamma c_t (1 - h) P_pi Q_{t+1}``
    with ``c_t`` the share of non-terminal rows at step ``t`` that are followed by a row.
    Unvisited (state, action) cells get the mean of the visited actions of their state.
``linear``
    ``Q(s, a) = phi(s)^T Theta psi(a)`` with ``phi(s) = [1, standardised features, tau, tau^2]``
    (``tau`` = scaled step) and ``psi(a) = [1, onehot(a)]`` (a shared model plus a ridge-shrunk
    deviation per action; ``[1, onehot of each component]`` for large factored spaces). FQE
    iterated to convergence reaches the fixed point of the ridge-projected Bellman equation,
    which is solved directly (LSTD-Q): ``(X^T X + Lambda - gamma X^T X') theta = X^T r``; the
    iteration is the fall-back when that system is singular.
``gbm``
    Histogram gradient-boosted trees (scikit-learn), backward per step by default.
``mlp``
    A small PyTorch MLP with one output per action, iterated with a frozen target network (torch
    is imported only here).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.data._cells import check_cells, column_positions
from equicare.exceptions import InvalidParameterError
from equicare.ope._lstd import VANISHING_RIDGE, KronPi, LSTDFit, SparsePi, solve_lstd
from equicare.utils import (
    PARAM_MESSAGE,
    RandomState,
    check_param,
    check_random_state,
    config_from_dict,
    config_to_dict,
    row_blocks,
)

__all__ = ["FQEConfig", "QFit", "LoggedQFit", "fit_fqe", "fit_fqe_logged", "QModel",
           "cell_columns", "table_ignored_numeric", "cell_ranges", "merge_cell_ranges",
           "varies_within_cells", "CellRanges", "binned_name", "parse_binned", "bin_codes",
           "cell_parts", "ranged_states",
           "BIN_SEP"]

QModel = Literal["auto", "tabular", "linear", "gbm", "mlp"]
_OWNER = "FQEConfig"
_GBM_THREADED_ROWS = 200_000


@dataclass(frozen=True, kw_only=True)
class FQEConfig:
    """Settings of fitted-Q evaluation.

    Parameters
    ----------
    model : {"auto", "tabular", "linear", "gbm", "mlp"}, default="linear"
        Function class of ``Q``; ``"auto"`` chooses among the candidates of
        :func:`equicare.ope.select_q_model` by cross-fitting (the other fields are then unused).
    horizon : {"auto", "stationary", "backward", "window"}, default="auto"
        ``"backward"`` fits one model per step from the last step back (finite horizon,
        tabular and gbm); ``"stationary"`` one model for all steps (with time features);
        ``"window"`` (tabular only) one stationary model of the dynamics valued over the logged
        window by backward recursion over steps (see :func:`_fit_tabular_window`).
        ``"auto"``: backward for tabular and gbm, stationary for linear and mlp.
    alpha : float, default=1.0
        Ridge penalty of the linear model's per-action deviations (> 0).
    time_features : bool, default=True
        Add the scaled step and its square to the linear/mlp/stationary-gbm inputs.
    state_design : {"linear", "quadratic"}, default="linear"
        Linear model's state features: standardised features, or those plus their squares and
        pairwise products (for up to 30 features).
    action_design : {"auto", "flat", "components"}, default="auto"
        Linear model's action features: one-hot flat action, or one-hot per component;
        ``"auto"``: flat up to 128 actions.
    n_iterations : int, optional
        Iterations of iterative fits (stationary gbm, mlp, linear fall-back); default: the
        longest episode (at most 100).
    solver : {"fixed_point", "iterate"}, default="fixed_point"
        Linear model: solve for the FQE fixed point directly, or iterate ``n_iterations`` ridge
        regressions (the fall-back when the fixed-point system is singular).
    hidden : tuple of int, default=(64, 64)
        MLP hidden sizes.
    epochs : int, default=2
        MLP epochs per iteration.
    batch_size : int, default=1024
    learning_rate : float, default=1e-3
    gbm_max_iter : int, default=100
        Boosting rounds per gbm fit.
    cells : tuple of str, optional
        Tabular model only: the categorical state columns whose combinations are the table's
        cells. None: all of them in :func:`fit_fqe`; :func:`~equicare.ope.evaluate`,
        :func:`~equicare.ope.evaluate_stream` and the CLI then choose them
        (:func:`equicare.data.choose_cells`: those that change the dynamics given the others).
        A column that does not drive outcomes, a care site say, multiplies the cells without
        adding information.
    """

    model: QModel = "linear"
    horizon: Literal["auto", "stationary", "backward", "window"] = "auto"
    alpha: float = 1.0
    time_features: bool = True
    state_design: Literal["linear", "quadratic"] = "linear"
    action_design: Literal["auto", "flat", "components"] = "auto"
    n_iterations: int | None = None
    solver: Literal["fixed_point", "iterate"] = "fixed_point"
    hidden: tuple[int, ...] = (64, 64)
    epochs: int = 2
    batch_size: int = 1024
    learning_rate: float = 1e-3
    gbm_max_iter: int = 100
    cells: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_param(self.model, "model", _OWNER,
                    choices=("auto", "tabular", "linear", "gbm", "mlp"))
        check_param(self.horizon, "horizon", _OWNER,
                    choices=("auto", "stationary", "backward", "window"))
        check_param(self.alpha, "alpha", _OWNER, kind=(float, int), low=0.0, low_inclusive=False)
        check_param(self.state_design, "state_design", _OWNER, choices=("linear", "quadratic"))
        check_param(self.action_design, "action_design", _OWNER,
                    choices=("auto", "flat", "components"))
        check_param(self.n_iterations, "n_iterations", _OWNER, kind=int, low=1, allow_none=True)
        check_param(self.solver, "solver", _OWNER, choices=("fixed_point", "iterate"))
        check_param(self.epochs, "epochs", _OWNER, kind=int, low=1)
        check_param(self.batch_size, "batch_size", _OWNER, kind=int, low=1)
        check_param(self.learning_rate, "learning_rate", _OWNER, kind=float, low=0.0,
                    low_inclusive=False)
        check_param(self.gbm_max_iter, "gbm_max_iter", _OWNER, kind=int, low=1)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.cells is not None:
            if self.model not in ("tabular", "auto"):
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="cells", owner=_OWNER, expected="None unless model is 'tabular' or "
                    "'auto' (they are a table's cells)", got=self.cells))
            object.__setattr__(self, "cells", check_cells(self.cells, _OWNER, modes=()))
        if self.resolved_horizon == "backward" and self.model in ("linear", "mlp"):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="horizon", owner=_OWNER,
                expected=f"'stationary' or 'auto' for model={self.model!r}", got=self.horizon))
        if self.horizon == "window" and self.model != "tabular":
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="horizon", owner=_OWNER,
                expected=f"'auto', 'stationary' or 'backward' for model={self.model!r} ('window' "
                         "is tabular only)", got=self.horizon))

    @property
    def resolved_horizon(self) -> Literal["stationary", "backward", "window"]:
        """The horizon mode after resolving ``"auto"``."""
        if self.horizon != "auto":
            return self.horizon
        return "backward" if self.model in ("tabular", "gbm") else "stationary"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FQEConfig:
        """Inverse of :meth:`to_dict`."""
        return config_from_dict(cls, d)


@dataclass(frozen=True)
class QFit:
    """A fitted Q-function evaluated on a dataset.

    Attributes
    ----------
    q : ndarray of shape (n_steps, n_actions)
        ``Q(s_t, a)`` for every row and action.
    v : ndarray of shape (n_steps,)
        ``V(s_t) = sum_a pi_e(a|s_t) Q(s_t, a)``.
    seconds : float
        Fitting time.
    info : dict
        Model details (solver used, iterations).
    """

    q: NDArray[np.float64]
    v: NDArray[np.float64]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _QFunction:
    """``Q`` of the fitting rows, evaluated block by block.

    Either a dense ``(n_steps, n_actions)`` matrix, or the linear model's state design ``phi``
    (n_steps, p) and weights (p, m): ``Q = phi W psi^T``, with ``psi = [1, onehot(a)]``
    (``psi=None``, ``Q = b_0 + b_{1+a}``) or a given action design ``psi`` (n_actions, m).
    """

    n_steps: int
    n_actions: int
    dense: NDArray[np.float64] | None = None
    phi: NDArray[np.float64] | None = None
    weights: NDArray[np.float64] | None = None
    psi: NDArray[np.float64] | None = None
    offset: NDArray[np.float64] | None = None

    def rows(self, sl: slice) -> NDArray[np.float64]:
        """``Q(s_t, a)`` of the rows ``sl``, shape ``(n_rows, n_actions)``."""
        if self.dense is not None:
            return self.dense[sl]
        assert self.phi is not None and self.weights is not None
        b = self.phi[sl] @ self.weights  # (rows, m)
        q = b[:, :1] + b[:, 1:] if self.psi is None else b @ self.psi.T
        return q if self.offset is None else q + self.offset[sl, None]

    def matrix(self) -> NDArray[np.float64]:
        """The whole ``(n_steps, n_actions)`` matrix (assembled block by block)."""
        if self.dense is not None:
            return self.dense
        out = np.empty((self.n_steps, self.n_actions))
        for sl in row_blocks(self.n_steps, self.n_actions):
            out[sl] = self.rows(sl)
        return out

    def bounded(self, limit: float) -> bool:
        """Whether every entry is finite and at most ``limit`` in absolute value."""
        for sl in row_blocks(self.n_steps, self.n_actions):
            b = self.rows(sl)
            if not np.isfinite(b).all() or np.abs(b).max() > limit:
                return False
        return True


@dataclass(frozen=True, eq=False)
class LoggedQFit:
    """A fitted Q-function kept per row: ``Q`` at the logged action and ``V``.

    What the estimators use, without holding an ``(n_steps, n_actions)`` matrix for the linear
    model; :attr:`q` rebuilds the full matrix on demand.

    Attributes
    ----------
    q_sa : ndarray of shape (n_steps,)
        ``Q(s_t, a_t)`` at the logged action.
    v, seconds, info
        As in :class:`QFit`.
    """

    q_sa: NDArray[np.float64]
    v: NDArray[np.float64]
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    _qfun: _QFunction | None = field(default=None, repr=False)
    lstd: LSTDFit | WindowLinearisation | None = field(default=None, repr=False)

    @property
    def q(self) -> NDArray[np.float64]:
        """``Q(s_t, a)`` for every row and action, shape ``(n_steps, n_actions)`` (built anew)."""
        if self._qfun is None:
            raise InvalidParameterError(
                "This LoggedQFit keeps no Q-function to rebuild the full matrix.")
        return self._qfun.matrix()


def _logged_values(qfun: _QFunction, pe: NDArray[np.float64], actions: NDArray[np.int64]
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``Q(s_t, a_t)`` and ``sum_a pi_e(a|s_t) Q(s_t, a)`` in row blocks, each of shape (n,)."""
    n = qfun.n_steps
    q_sa, v = np.empty(n), np.empty(n)
    for sl in row_blocks(n, qfun.n_actions):
        qb = qfun.rows(sl)
        q_sa[sl] = qb[np.arange(qb.shape[0]), actions[sl]]
        v[sl] = np.einsum("ij,ij->i", qb, pe[sl])
    return q_sa, v


def logged_q_fit(q: NDArray[np.float64], pe: NDArray[np.float64], actions: NDArray[np.int64],
                 seconds: float = 0.0, info: dict[str, Any] | None = None) -> LoggedQFit:
    """Wrap a given dense Q matrix (n_steps, n_actions) as a :class:`LoggedQFit`."""
    qfun = _QFunction(n_steps=q.shape[0], n_actions=q.shape[1], dense=q)
    q_sa, v = _logged_values(qfun, pe, actions)
    return LoggedQFit(q_sa=q_sa, v=v, seconds=seconds, info=dict(info or {}), _qfun=qfun)


# ---------------------------------------------------------------------- shared pieces
def _next_rows(dataset: TrajectoryDataset) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    nxt = dataset.next_index
    has_next = (nxt >= 0) & ~dataset.terminals
    return np.where(has_next, nxt, 0), has_next


def _time_feature(dataset: TrajectoryDataset, max_len: int | None = None) -> NDArray[np.float64]:
    longest = int(dataset.episode_lengths.max()) if max_len is None else int(max_len)
    scale = max(longest - 1, 1)
    return dataset.step.astype(np.float64) / scale


@dataclass(frozen=True, eq=False)
class StateStats:
    """Whole-panel statistics the linear model's state design needs (streamed fits).

    Attributes
    ----------
    mean, sd : ndarray of shape (n_features,)
        Mean and (population) standard deviation of every column of ``features(one_hot)``.
    max_len : int
        The panel's longest episode (scale of the time features).
    """

    mean: NDArray[np.float64]
    sd: NDArray[np.float64]
    max_len: int


def _standardise(x: NDArray[np.float64]) -> NDArray[np.float64]:
    mu = x.mean(axis=0) if x.shape[0] else np.zeros(x.shape[1])
    sd = x.std(axis=0) if x.shape[0] else np.ones(x.shape[1])
    z = (x - mu) / np.where(sd > 0, sd, 1.0)
    return z[:, sd > 0] if x.shape[1] else z


def _state_design(dataset: TrajectoryDataset, time_features: bool,
                  design: str = "linear", one_hot: bool = True,
                  stats: StateStats | None = None) -> NDArray[np.float64]:
    x = np.asarray(dataset.features(one_hot=one_hot), dtype=np.float64)
    if stats is None:
        z = _standardise(x)
    else:  # a chunk of a larger panel: the panel's own standardisation
        sd = stats.sd
        z = ((x - stats.mean) / np.where(sd > 0, sd, 1.0))
        z = z[:, sd > 0] if x.shape[1] else z
        if design == "quadratic":
            raise InvalidParameterError(
                "state_design='quadratic' does not stream; use state_design='linear'.")
    if design == "quadratic" and 0 < z.shape[1] <= 30:
        iu = np.triu_indices(z.shape[1])
        z = np.concatenate([z, _standardise(z[:, iu[0]] * z[:, iu[1]])], axis=1)
    blocks = [np.ones((x.shape[0], 1)), z]
    if time_features:
        tau = _time_feature(dataset, None if stats is None else stats.max_len)[:, None]
        blocks += [tau, tau * tau]
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def _action_design(dataset: TrajectoryDataset, design: str) -> NDArray[np.float64]:
    n_a = dataset.n_actions
    if design == "auto":
        design = "flat" if n_a <= 128 or dataset.action_space.n_components == 1 else "components"
    if design == "flat":
        return np.concatenate([np.ones((n_a, 1)), np.eye(n_a)], axis=1)
    codes = dataset.action_space.all_codes()
    blocks = [np.ones((n_a, 1))]
    for j, size in enumerate(dataset.action_space.sizes):
        blocks.append(np.eye(size)[codes[:, j]])
    return np.concatenate(blocks, axis=1)


def fit_fqe(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
            config: FQEConfig | None = None, *, gamma: float | None = None,
            random_state: RandomState = None) -> QFit:
    """Fit ``Q`` of the target policy by FQE and evaluate it on every row and action.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
        ``pi_e(a|s_t)`` at every row (used for the expected-value targets and ``V``).
    config : FQEConfig, optional
    gamma : float, optional
        Discount of the targets (default: the dataset's gamma; 0 gives a one-step reward model,
        as used by the single-step doubly robust estimator).
    random_state : int, Generator or None
        Seed of the gbm and mlp fits.

    Returns
    -------
    QFit
    """
    t0 = time.perf_counter()
    pe, qfun, info = _fit(dataset, target_probs, config, gamma, random_state)
    info.pop("_lstd", None)
    q = np.ascontiguousarray(qfun.matrix())
    v = np.einsum("ij,ij->i", q, pe)
    return QFit(q=q, v=v, seconds=time.perf_counter() - t0, info=info)


def fit_fqe_logged(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
                   config: FQEConfig | None = None, *, gamma: float | None = None,
                   random_state: RandomState = None,
                   weights: NDArray[np.float64] | None = None) -> LoggedQFit:
    """Fit ``Q`` like :func:`fit_fqe`, keeping only ``Q(s_t, a_t)`` and ``V(s_t)`` per row.

    The same fit and the same numbers as :func:`fit_fqe`; the linear model is evaluated in row
    blocks, so no ``(n_steps, n_actions)`` matrix of Q-values is held (the tabular, gbm and mlp
    models build theirs while fitting).

    ``weights`` (shape ``(n_steps,)``, >= 0) weight each row in the fit; rows of weight 0 are
    only predicted (cross-fitting: the held-out episodes of a fold). The stationary tabular and
    linear fits keep their LSTD system in ``lstd`` (first-order refit effects, see
    :mod:`equicare.ope._lstd`).

    Returns
    -------
    LoggedQFit
    """
    t0 = time.perf_counter()
    pe, qfun, info = _fit(dataset, target_probs, config, gamma, random_state, weights)
    q_sa, v = _logged_values(qfun, pe, dataset.actions)
    lstd = info.pop("_lstd", None)
    return LoggedQFit(q_sa=q_sa, v=v, seconds=time.perf_counter() - t0, info=info, _qfun=qfun,
                      lstd=lstd)


#: ``{"select": select_q_model, "config": candidate_config}``, filled by equicare.ope._select
AUTO_SELECTOR: dict[str, Any] = {}


def _fit(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
         config: FQEConfig | None, gamma: float | None, random_state: RandomState,
         weights: NDArray[np.float64] | None = None
         ) -> tuple[NDArray[np.float64], _QFunction, dict[str, Any]]:
    """Checked target probabilities, the fitted Q-function and its info."""
    pe = np.asarray(target_probs, dtype=np.float64)
    if pe.shape != (dataset.n_steps, dataset.n_actions):
        raise InvalidParameterError(
            f"target_probs must have shape ({dataset.n_steps}, {dataset.n_actions}), "
                         f"got {pe.shape}.")
    cfg = config or FQEConfig()
    g = dataset.gamma if gamma is None else float(gamma)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if cfg.model == "auto":  # choose by cross-fitting, then fit the winner
        # equicare.ope._select (imported by the package before any of its modules is used)
        # registers the selector here: it fits candidates with this module, so importing it
        # from here would make an import cycle
        select_q_model, candidate_config = AUTO_SELECTOR["select"], AUTO_SELECTOR["config"]
        sel = select_q_model(dataset, pe, random_state=random_state, cells=cfg.cells)
        pe, qfun, info = _fit(dataset, pe, candidate_config(sel.chosen), gamma, random_state,
                              weights)
        info["selection"] = sel.to_dict()
        return pe, qfun, info
    if cfg.model == "linear":
        qfun, info, lstd = _fit_linear_lstd(dataset, pe, g, cfg, w)
        if lstd is not None:
            info["_lstd"] = lstd
        return pe, qfun, info
    if cfg.model == "tabular":
        q, info = _fit_tabular(dataset, pe, g, cfg, w)
    elif cfg.model == "gbm":
        q, info = _fit_gbm(dataset, pe, g, cfg, random_state, w)
    else:
        q, info = _fit_mlp(dataset, pe, g, cfg, random_state, w)
    return pe, _QFunction(n_steps=q.shape[0], n_actions=q.shape[1], dense=q), info


# ---------------------------------------------------------------------- tabular
def cell_columns(dataset: TrajectoryDataset, columns: tuple[str, ...] | None
                 ) -> tuple[int, ...]:
    """Positions of ``columns`` among the dataset's categorical states (all when None)."""
    if columns is None:
        return tuple(range(len(dataset.categorical_names)))
    return column_positions(dataset, columns, "The tabular Q-model's cells")


#: The stationary tabular system has no solution on this panel (a closed loop, gamma 1).
MSG_SINGULAR_STATIONARY = ("The stationary tabular FQE system is singular; use the backward "
                           "table (--q-model tabular_backward on the command line, "
                           "horizon='backward' in Python).")

#: The tabular Q-models on a panel without categorical states (named for the command line too).
MSG_TABULAR_NUMERIC = ("The tabular Q-model needs categorical_states in the dataset (manifest); "
                       "for numeric states use the linear Q-model (--q-model linear on the "
                       "command line, q_model='linear' in Python).")


def table_ignored_numeric(chosen: str | None, state_names: Sequence[str],
                          varying: Sequence[bool] | None = None) -> list[str]:
    """The numeric state columns a tabular Q-model's cells leave out (``[]`` for other models).

    A table's cells are categorical state levels only; where numeric states (a risk score)
    drive both the clinicians' actions and the outcomes, each cell averages over members whose
    numeric states differ with the action, and its values can be biased beyond their intervals
    (docs/ope.md, "Tables and numeric states"). ``evaluate`` and ``audit`` report these columns
    (``q_model["ignored_numeric"]``) and say so on the terminal. A column that is constant
    within every cell (a function of the categorical state, as the Garnet test bed's severity)
    loses nothing and is not listed.

    Parameters
    ----------
    chosen : str or None
        The Q-model used, as named in ``q_model["chosen"]`` (``"tabular_window"``,
        ``"tabular_stationary[site]"``, ``"linear"``, ...).
    state_names : sequence of str
        The panel's numeric state columns.
    varying : sequence of bool, optional
        Per column, whether it takes two values in some cell of the table
        (:func:`varies_within_cells`; streamed, from the table's first pass). None: all do.
    """
    if chosen is None or not str(chosen).startswith("tabular"):
        return []
    flags = [True] * len(state_names) if varying is None else list(varying)
    return [str(c) for c, v in zip(state_names, flags, strict=True) if v]


#: Per visited cell, the minimum and maximum of each numeric state column:
#: ``(cells (m,), low (m, k), high (m, k))``.
CellRanges = tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]


def cell_ranges(values: NDArray[Any], cell: NDArray[np.int64]) -> CellRanges:
    """Each visited cell's range of every column of ``values`` (shape ``(n, k)``)."""
    v = np.asarray(values, dtype=np.float64).reshape(len(cell), -1)
    return _reduce_ranges(np.asarray(cell, dtype=np.int64), v, v)


def merge_cell_ranges(a: CellRanges, b: CellRanges) -> CellRanges:
    """The ranges of two parts of a panel (chunks) as one."""
    return _reduce_ranges(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]),
                          np.concatenate([a[2], b[2]]))


def _reduce_ranges(cell: NDArray[np.int64], low: NDArray[np.float64],
                   high: NDArray[np.float64]) -> CellRanges:
    """Per distinct ``cell``, the minimum of ``low`` and the maximum of ``high`` (one sort)."""
    if cell.size == 0:
        return cell.astype(np.int64), low[:0], high[:0]
    order = np.argsort(cell, kind="stable")
    c = cell[order]
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    return (c[starts].astype(np.int64), np.minimum.reduceat(low[order], starts, axis=0),
            np.maximum.reduceat(high[order], starts, axis=0))


def varies_within_cells(dataset: TrajectoryDataset, chosen: str | None,
                        cells: Sequence[str] | None = None) -> list[bool] | None:
    """Per numeric state column, whether it takes two values in some cell of ``chosen``'s table.

    ``cells``: the table's columns (its ``FQEConfig.cells``; None: all categorical ones). None
    when ``chosen`` is not a table (or the panel has no categorical or numeric state). A column
    the cells bin (:func:`binned_name`) is used by the table and is not flagged.
    """
    if (chosen is None or not str(chosen).startswith("tabular") or dataset.categorical is None
            or dataset.categorical.shape[1] == 0 or not dataset.state_names):
        return None
    cols = None if cells is None else tuple(cells)
    cell, _ = _cells(dataset, cols)
    _, low, high = cell_ranges(ranged_states(dataset, cols), cell)
    return [bool(x) for x in np.asarray((high > low).any(axis=0)).ravel()]


def ranged_states(dataset: TrajectoryDataset, cells: tuple[str, ...] | None
                  ) -> NDArray[np.float64]:
    """The numeric states whose ranges within ``cells`` tell what the table ignores.

    A column the cells bin (:func:`binned_name`) is used by the table: its values are replaced
    by zeros, so it never varies within a cell (in memory and in each streamed chunk alike).
    """
    binned = {b[0] for b in (parse_binned(c) for c in cells or ()) if b is not None}
    keep = np.array([name not in binned for name in dataset.state_names], dtype=bool)
    states = np.asarray(dataset.states, dtype=np.float64)
    return states if keep.all() else np.where(keep, states, 0.0)


#: Separates a numeric state column from its bin edges in a table's cells: ``"risk@0.8/1.3"``.
BIN_SEP = "@"


def binned_name(column: str, edges: NDArray[np.float64]) -> str:
    """A table cell column that bins numeric state ``column`` at ``edges`` (``"risk@0.8/1.3"``).

    Rows with ``x < edges[0]`` are bin 0, ``edges[k-1] <= x < edges[k]`` bin ``k``
    (:func:`bin_codes`); each edge is written in the shortest form that reads back as the same
    float (``repr``; :func:`~equicare.privacy.quantile_edges` rounds them to 4 significant
    digits, more only when two observed values are that close), so every fit that names the
    cells bins alike.
    """
    return column + BIN_SEP + "/".join(_edge_text(float(e)) for e in edges)


def _edge_text(e: float) -> str:
    """``repr(e)`` without a trailing ``.0`` (``"1.5"``, ``"2"``, ``"1e-05"``)."""
    text = repr(e)
    return text[:-2] if text.endswith(".0") else text


def parse_binned(name: str) -> tuple[str, NDArray[np.float64]] | None:
    """``(column, edges)`` of a :func:`binned_name`, or None for a categorical column's name."""
    if BIN_SEP not in name:
        return None
    column, _, rest = name.rpartition(BIN_SEP)
    try:
        edges = np.array([float(e) for e in rest.split("/")], dtype=np.float64)
    except ValueError:
        return None
    if not column or edges.size == 0 or np.any(np.diff(edges) <= 0) or not np.isfinite(
            edges).all():
        return None
    return column, edges


def bin_codes(values: NDArray[Any], edges: NDArray[np.float64]) -> NDArray[np.int64]:
    """Bin of every value: the number of ``edges`` at or below it."""
    return np.asarray(np.searchsorted(edges, np.asarray(values, dtype=np.float64),
                                      side="right"), dtype=np.int64)


def cell_parts(dataset: TrajectoryDataset, columns: tuple[str, ...] | None = None
               ) -> tuple[tuple[str, ...], tuple[int, ...], NDArray[np.int64]]:
    """The cells' columns: their names, numbers of levels and every row's codes.

    A column named by :func:`binned_name` is a numeric state column's bins (its edges plus one
    levels; codes by :func:`bin_codes`), so a streamed chunk codes its rows with the edges the
    whole panel's table was named with.

    Returns
    -------
    names : tuple of str
    sizes : tuple of int
    codes : ndarray of shape (n_steps, n_columns), int64
    """
    if dataset.categorical is None or dataset.categorical.shape[1] == 0:
        raise InvalidParameterError(MSG_TABULAR_NUMERIC)
    if columns is None or not any(parse_binned(c) for c in columns):
        cols = list(cell_columns(dataset, columns))
        return (tuple(dataset.categorical_names[j] for j in cols),
                tuple(len(dataset.categorical_levels[j]) for j in cols),
                np.asarray(dataset.categorical[:, cols], dtype=np.int64))
    parts, size_list = [], []
    for c in columns:
        binned = parse_binned(c)
        if binned is None:
            j = cell_columns(dataset, (c,))[0]
            parts.append(dataset.categorical[:, j])
            size_list.append(len(dataset.categorical_levels[j]))
            continue
        col, edges = binned
        if col not in dataset.state_names:
            raise InvalidParameterError(
                f"The tabular Q-model's cells {list(columns)} bin {col!r}, which is not a "
                f"numeric state column; the dataset's numeric states are "
                f"{list(dataset.state_names)}.")
        parts.append(bin_codes(dataset.states[:, dataset.state_names.index(col)], edges))
        size_list.append(edges.size + 1)
    return (tuple(columns), tuple(size_list),
            np.asarray(np.column_stack(parts), dtype=np.int64))


def _cells(dataset: TrajectoryDataset, columns: tuple[str, ...] | None = None
           ) -> tuple[NDArray[np.int64], int]:
    """Each row's cell (a combination of the ``columns``' levels) and the number of cells.

    The columns' levels are those of :func:`cell_parts`.
    """
    _, sizes, codes = cell_parts(dataset, columns)
    return (np.asarray(np.ravel_multi_index(codes.T, sizes), dtype=np.int64),
            int(np.prod(sizes)))


def _fill_unvisited(sums: NDArray[np.float64], counts: NDArray[np.float64]
                    ) -> NDArray[np.float64]:
    """Means per (cell, action); unvisited actions get the mean of the cell's visited ones."""
    q = np.zeros_like(sums)
    np.divide(sums, counts, out=q, where=counts > 0)
    visited = counts > 0
    n_vis = visited.sum(axis=1, keepdims=True)
    fill = np.zeros((q.shape[0], 1))
    np.divide(q.sum(axis=1, keepdims=True), n_vis, out=fill, where=n_vis > 0)
    return np.where(visited, q, fill)


def _fit_tabular(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                 cfg: FQEConfig, weights: NDArray[np.float64] | None = None
                 ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    n_a = dataset.n_actions
    a, r = dataset.actions, dataset.rewards
    nxt, has_next = _next_rows(dataset)
    if cfg.resolved_horizon == "backward":
        cell_full, _ = _cells(dataset, cfg.cells)
        _, cell = np.unique(cell_full, return_inverse=True)  # visited cells only
        cell = cell.astype(np.int64).ravel()
        n_cells = int(cell.max()) + 1
        step = dataset.step
        q_rows = np.zeros((dataset.n_steps, n_a))
        v_rows = np.zeros(dataset.n_steps)
        order = np.argsort(step, kind="stable")
        bounds = np.searchsorted(step[order], np.arange(int(step.max()) + 2))
        for t in range(int(step.max()), -1, -1):  # backward induction over steps
            rows = order[bounds[t]:bounds[t + 1]]
            y = r[rows] + gamma * np.where(has_next[rows], v_rows[nxt[rows]], 0.0)
            key = cell[rows] * n_a + a[rows]
            wr = None if weights is None else weights[rows]
            sums = np.bincount(key, weights=y if wr is None else y * wr,
                               minlength=n_cells * n_a).astype(np.float64).reshape(n_cells, n_a)
            cnt = np.bincount(key, weights=wr, minlength=n_cells * n_a).reshape(
                n_cells, n_a).astype(float)
            table = _fill_unvisited(sums, cnt)
            q_rows[rows] = table[cell[rows]]
            v_rows[rows] = np.einsum("ij,ij->i", q_rows[rows], pe[rows])
        return q_rows, {"solver": "backward", "n_cells": n_cells}
    if cfg.resolved_horizon == "window":
        return _fit_tabular_window(dataset, pe, gamma, weights, cfg.cells)
    fit = _tabular_lstd(dataset, pe, gamma, weights, cfg.cells)
    table = _tabular_table(fit)
    seen = fit.cell_rows >= 0
    q_rows = np.zeros((dataset.n_steps, n_a))
    q_rows[seen] = table[fit.cell_rows[seen]]
    return q_rows, {"solver": "sparse_fixed_point", "n_cells": int(fit.n_cells),
                    "n_pairs": int(fit.n_pairs), "_lstd": fit.lstd}


@dataclass(frozen=True, eq=False)
class _TabularLSTD:
    """The stationary tabular model as an LSTD fit on visited (cell, action) pairs."""

    lstd: LSTDFit
    cell_rows: NDArray[np.int64]  # compressed cell of every row, (n_steps,)
    pair_cell: NDArray[np.int64]  # (n_pairs,)
    pair_action: NDArray[np.int64]  # (n_pairs,)
    n_cells: int
    n_actions: int

    @property
    def n_pairs(self) -> int:
        return int(self.pair_cell.size)


def visited_pairs(cell: NDArray[np.int64], actions: NDArray[np.int64], n_actions: int
                  ) -> NDArray[np.int64]:
    """Sorted unique keys ``cell * n_actions + action`` of the visited (cell, action) pairs."""
    return np.unique(cell.astype(np.int64) * n_actions + actions)


def _tabular_design(cell: NDArray[np.int64], actions: NDArray[np.int64], pe: NDArray[np.float64],
                    train: NDArray[np.bool_] | None = None,
                    visited: NDArray[np.int64] | None = None
                    ) -> tuple[sp.csr_matrix, sp.csr_matrix, NDArray[np.int64], NDArray[np.int64],
                               NDArray[np.int64], int]:
    """One-hot design of the (cell, action) pairs visited by training rows, and its expectation.

    An unvisited action of a cell has ``Q`` = the mean of the cell's visited actions (its design
    row is their average), so target mass on unvisited actions is spread evenly over the
    visited ones. Rows in a cell no training row visits have an all-zero design (``Q = 0``) and
    compressed cell ``-1``. ``visited`` (keys of :func:`visited_pairs` over a whole panel) gives
    the pairs when the rows are a chunk of a larger panel.
    """
    n, n_a = pe.shape
    tr = np.ones(n, dtype=bool) if train is None else train
    uc = np.unique(cell[tr]) if visited is None else np.unique(visited // n_a)
    pos = np.clip(np.searchsorted(uc, cell), 0, max(uc.size - 1, 0))
    known = uc[pos] == cell if uc.size else np.zeros(n, dtype=bool)
    cellc = np.where(known, pos, -1).astype(np.int64)
    pairs = (np.unique(cellc[tr] * n_a + actions[tr]) if visited is None
             else np.searchsorted(uc, visited // n_a) * n_a + visited % n_a)
    pair_cell, pair_action = pairs // n_a, pairs % n_a
    n_pairs = pairs.size
    ptr = np.searchsorted(pair_cell, np.arange(uc.size + 1))
    n_vis = np.diff(ptr)
    k = np.where(known, n_vis[np.maximum(cellc, 0)], 0)  # entries per row of X_pi
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(k, out=indptr[1:])
    rows = np.repeat(np.arange(n), k)
    cols = np.repeat(ptr[np.maximum(cellc, 0)], k) + np.arange(int(indptr[-1])) - np.repeat(
        indptr[:-1], k)
    vals = pe[rows, pair_action[cols]]
    vsum = np.bincount(rows, weights=vals, minlength=n)
    umass = np.maximum(1.0 - vsum, 0.0)
    vals = vals + np.repeat(umass / np.maximum(k, 1), k)
    x_pi = sp.csr_matrix((vals, cols, indptr), shape=(n, n_pairs))
    # logged design: the pair's one-hot, or the cell's average when the pair is unvisited
    key = cellc * n_a + actions
    ppos = np.clip(np.searchsorted(pairs, key), 0, max(n_pairs - 1, 0))
    hit = known & (pairs[ppos] == key) if n_pairs else np.zeros(n, dtype=bool)
    kx = np.where(hit, 1, k)
    xptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(kx, out=xptr[1:])
    xrows = np.repeat(np.arange(n), kx)
    within = np.arange(int(xptr[-1])) - np.repeat(xptr[:-1], kx)
    xcols = np.where(np.repeat(hit, kx), np.repeat(ppos, kx),
                     np.repeat(ptr[np.maximum(cellc, 0)], kx) + within)
    xvals = 1.0 / np.repeat(np.maximum(kx, 1), kx)
    x = sp.csr_matrix((xvals, xcols, xptr), shape=(n, n_pairs))
    del xrows
    return x, x_pi, cellc, pair_cell, pair_action, int(uc.size)


def _tabular_lstd(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                  weights: NDArray[np.float64] | None = None,
                  columns: tuple[str, ...] | None = None) -> _TabularLSTD:
    """Solve the empirical Bellman equations ``Q = R + gamma P_pi Q`` on visited pairs."""
    cell, _ = _cells(dataset, columns)
    train = None if weights is None else weights > 0
    x, x_pi, cellc, pair_cell, pair_action, n_cells = _tabular_design(cell, dataset.actions, pe,
                                                                        train)
    _, has_next = _next_rows(dataset)
    r = dataset.rewards
    fit = solve_lstd(x, SparsePi(x_pi), r, has_next, gamma, np.zeros(x.shape[1]), weights)
    if fit is None:  # a closed loop without exit in the data (gamma 1): a vanishing ridge
        counts = np.asarray(x.sum(axis=0)).ravel()
        fit = solve_lstd(x, SparsePi(x_pi), r, has_next, gamma,
                         VANISHING_RIDGE * np.maximum(counts, 1.0), weights)
    if fit is None:
        raise InvalidParameterError(MSG_SINGULAR_STATIONARY)
    return _TabularLSTD(lstd=fit, cell_rows=cellc, pair_cell=pair_cell, pair_action=pair_action,
                        n_cells=n_cells, n_actions=dataset.n_actions)


def _tabular_table(fit: _TabularLSTD) -> NDArray[np.float64]:
    """``Q`` per (compressed cell, action), shape ``(n_cells, n_actions)``."""
    sums = np.zeros((fit.n_cells, fit.n_actions))
    cnt = np.zeros((fit.n_cells, fit.n_actions))
    sums[fit.pair_cell, fit.pair_action] = fit.lstd.theta
    cnt[fit.pair_cell, fit.pair_action] = 1.0
    return _fill_unvisited(sums, cnt)



def _fit_tabular_window(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                        weights: NDArray[np.float64] | None = None,
                        columns: tuple[str, ...] | None = None
                        ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    r"""Stationary tabular dynamics valued over the logged window (``horizon="window"``).

    The stationary table (:func:`_tabular_lstd`) treats a censored last row (not terminal, no
    next row) as an end with no further reward, at every visit of its (state, action) pair, so
    it under-values long stays (about -1% on 50-state Garnet panels at gamma 1 with 2% of the
    episodes censored, still -0.3% to -0.95% with 100,000 episodes). Here the dynamics are
    estimated from the rows with right-censoring handled as such: per visited pair ``p``

    .. math::

        \hat R(p) = \text{mean } r, \quad
        \hat h(p) = \frac{\#\text{terminal rows}}{\#\text{rows}}, \quad
        \widehat{P V}(p) = \text{mean over rows with a next row of } V(s_{i+1})

    (a censored row counts in ``R`` and as "not absorbed" in ``h``, and not in ``P``). The value
    of the logged window (Contract 1) follows by backward recursion over steps,

    .. math::

        Q_{H} = 0, \qquad Q_t(p) = \hat R(p) + \gamma\, c_t\, (1 - \hat h(p))\,
        \widehat{P V_{t+1}}(p), \qquad V_{t+1}(s_j) = \textstyle\sum_a \pi_e(a|s_j)
        Q_{t+1}(s_j, a),

    with ``c_t`` the share of non-terminal rows at step ``t`` that have a next row (the
    probability that the window goes on; censoring is assumed to depend on the step only) and
    ``H`` the longest stay. A row at step ``t`` gets ``Q_t`` (rows are time-dependent, like the
    exact ``Q`` of a finite window). Each step costs one sparse mat-vec over the visited pairs,
    ``M = diag(1/n_next) B X_pi`` (``B`` maps a pair to the next rows of its rows) built once.
    Its refit enters bootstrap replicates to first order through
    :class:`WindowLinearisation` (while ``H x visited pairs`` is at most
    :data:`WINDOW_LINEARISED_CELLS`; above, the Q-model is held fixed).
    """
    n, n_a = pe.shape
    cell, _ = _cells(dataset, columns)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    train = w > 0
    x_logged, x_pi, cellc, pair_cell, pair_action, n_cells = _tabular_design(
        cell, dataset.actions, pe, train)
    pairs = pair_cell * n_a + pair_action
    n_pairs = pairs.size
    key = cellc * n_a + dataset.actions
    idx = np.clip(np.searchsorted(pairs, key), 0, max(n_pairs - 1, 0))
    use = train & (cellc >= 0) & (pairs[idx] == key) if n_pairs else np.zeros(n, dtype=bool)
    nxt, has_next = _next_rows(dataset)
    wu = np.where(use, w, 0.0)
    n_all = np.bincount(idx, weights=wu, minlength=n_pairs)
    r_hat = np.divide(np.bincount(idx, weights=wu * dataset.rewards, minlength=n_pairs), n_all,
                      out=np.zeros(n_pairs), where=n_all > 0)
    n_term = np.bincount(idx, weights=wu * dataset.terminals, minlength=n_pairs)
    stay = np.divide(n_all - n_term, n_all, out=np.zeros(n_pairs), where=n_all > 0)
    cont_rows = np.flatnonzero(use & has_next)
    n_next = np.bincount(idx[cont_rows], weights=w[cont_rows], minlength=n_pairs)
    b = sp.csr_matrix((w[cont_rows], (idx[cont_rows], nxt[cont_rows])), shape=(n_pairs, n))
    scale = np.divide(stay, n_next, out=np.zeros(n_pairs), where=n_next > 0)
    m = sp.csr_matrix(sp.diags(scale) @ (b @ x_pi))  # (n_pairs, n_pairs)
    step = dataset.step
    horizon = int(step.max()) + 1
    nonterm = np.bincount(step, weights=w * ~dataset.terminals, minlength=horizon)
    followed = np.bincount(step, weights=w * has_next, minlength=horizon)
    cont = np.divide(followed, nonterm, out=np.zeros(horizon), where=nonterm > 0)
    order = np.argsort(step, kind="stable")
    bounds = np.searchsorted(step[order], np.arange(horizon + 1))
    cnt = np.zeros((n_cells, n_a))
    cnt[pair_cell, pair_action] = 1.0
    sums = np.zeros((n_cells, n_a))
    q_rows = np.zeros((n, n_a))
    theta = np.zeros(n_pairs)
    keep = horizon * n_pairs <= WINDOW_LINEARISED_CELLS
    thetas = np.zeros((horizon + 1, n_pairs)) if keep else None
    for t in range(horizon - 1, -1, -1):  # backward over steps: one sparse mat-vec each
        theta = r_hat + (gamma * cont[t]) * (m @ theta) if gamma > 0 else r_hat
        if thetas is not None:
            thetas[t] = theta
        rows = order[bounds[t]:bounds[t + 1]]
        rows = rows[cellc[rows] >= 0]
        if rows.size:
            sums[pair_cell, pair_action] = theta
            q_rows[rows] = _fill_unvisited(sums, cnt)[cellc[rows]]
    info: dict[str, Any] = {"solver": "window", "n_cells": int(n_cells), "n_pairs": int(n_pairs),
                            "horizon": horizon}
    if thetas is not None and gamma > 0:
        info["_lstd"] = WindowLinearisation(
            thetas=thetas, x=x_logged, x_pi=x_pi, m=m, b=sp.csr_matrix(b @ x_pi), pair=idx,
            use=use, w_all=np.asarray(n_all, dtype=np.float64),
            w_next=np.asarray(n_next, dtype=np.float64),
            w_nonterm=np.asarray(n_all - n_term, dtype=np.float64), cont=cont,
            gamma=float(gamma), step=step, terminals=dataset.terminals, has_next=has_next,
            nxt=nxt)
    return q_rows, info


#: Largest ``steps x visited pairs`` for which the window table keeps ``Q_t`` of every step
#: (for its linearised refit); above it the Q-model is held fixed in bootstrap replicates.
WINDOW_LINEARISED_CELLS = 5_000_000


def window_step_delta(rewards: NDArray[np.float64], gamma_cont: float,
                      v_next: NDArray[np.float64], nxt: NDArray[np.int64],
                      has_next: NDArray[np.bool_], censored: NDArray[np.bool_],
                      mean_next: NDArray[np.float64], ratio: NDArray[np.float64],
                      theta: NDArray[np.float64], inv_w: NDArray[np.float64]
                      ) -> NDArray[np.float64]:
    """``(y_{t,i} - Q_t(p_i)) / W_{p_i}`` at every row for one step (in memory and streamed).

    ``y = r + gamma c_t V~_{t+1}`` with the completed next value ``V~`` of
    :class:`WindowLinearisation`; the pair quantities (``mean_next``, ``ratio``, ``theta``,
    ``inv_w``) are given at the rows' pairs, shape ``(n_rows,)`` each.
    """
    completed = np.where(has_next, mean_next + (v_next[nxt] - mean_next) * ratio,
                         np.where(censored, mean_next, 0.0))
    y = rewards + gamma_cont * completed
    return np.asarray((y - theta) * inv_w)


@dataclass(frozen=True, eq=False)
class WindowLinearisation:
    r"""First-order effect of refitting the window table (same interface as ``LSTDFit``).

    With completed next values (a terminal row: 0; a censored row: its pair's mean next value
    ``m_p``; a row with a next row: ``m_p + (V_{t+1}(s_{i+1}) - m_p) W^{nt}_p / W^{next}_p``),
    ``Q_t(p)`` is the weighted mean over the pair's rows of ``y_{t,i} = r_i + gamma c_t
    \tilde V_{t+1, i}``, so re-weighting rows moves it by ``sum_i dw_i (y_{t,i} - Q_t(p)) /
    W_p`` at fixed ``Q_{t+1}``. A functional ``F = sum_t j_t^T theta_t`` then moves by
    ``sum_i dw_i sum_t lambda_t(p_i) (y_{t,i} - theta_t(p_i)) / W_{p_i}``, with the forward
    adjoint ``lambda_0 = j_0``, ``lambda_t = j_t + gamma c_{t-1} M^T lambda_{t-1}``. The
    censoring shares ``c_t`` are held fixed (they depend on the step only).
    """

    thetas: NDArray[np.float64]  # (H + 1, n_pairs), row H is 0
    x: sp.csr_matrix  # logged design (n_steps, n_pairs)
    x_pi: sp.csr_matrix  # target's expected design (n_steps, n_pairs)
    m: sp.csr_matrix  # (n_pairs, n_pairs)
    b: sp.csr_matrix  # (n_pairs, n_pairs): weighted sums over a pair's next rows of X_pi
    pair: NDArray[np.int64]  # pair of each row (valid where ``use``)
    use: NDArray[np.bool_]
    w_all: NDArray[np.float64]
    w_next: NDArray[np.float64]
    w_nonterm: NDArray[np.float64]
    cont: NDArray[np.float64]
    gamma: float
    step: NDArray[np.int64]
    terminals: NDArray[np.bool_]
    has_next: NDArray[np.bool_]
    nxt: NDArray[np.int64]

    def gradients(self, first: NDArray[np.float64], logged: NDArray[np.float64]
                  ) -> NDArray[np.float64]:
        """Per-step gradients ``j_t`` of functionals of V and Q at rows, ``(H, n_pairs, k)``."""
        horizon, n_pairs = self.thetas.shape[0] - 1, self.thetas.shape[1]
        k = first.shape[1]
        out = np.zeros((horizon, n_pairs, k))
        order = np.argsort(self.step, kind="stable")
        bounds = np.searchsorted(self.step[order], np.arange(horizon + 1))
        for t in range(horizon):
            rows = order[bounds[t]:bounds[t + 1]]
            if rows.size:
                out[t] = np.asarray(self.x_pi[rows].T @ first[rows]
                                    - self.x[rows].T @ logged[rows])
        return out

    def influence(self, grads: NDArray[np.float64], rewards: NDArray[np.float64],
                  episode_offsets: NDArray[np.int64]) -> NDArray[np.float64]:
        """``n`` x per-episode first-order effect, centred, shape ``(n_episodes, k)``."""
        horizon = grads.shape[0]
        k = grads.shape[2]
        n = self.x.shape[0]
        p = np.where(self.use, self.pair, 0)
        inv_w = np.divide(1.0, self.w_all, out=np.zeros_like(self.w_all), where=self.w_all > 0)
        ratio = np.divide(self.w_nonterm, self.w_next, out=np.zeros_like(self.w_all),
                          where=self.w_next > 0)
        censored = ~self.terminals & ~self.has_next
        lam = np.zeros((self.thetas.shape[1], k))
        infl = np.zeros((n, k))
        for t in range(horizon):  # forward: adjoint of the backward recursion
            lam = grads[t] + (self.gamma * self.cont[t - 1] * np.asarray(self.m.T @ lam)
                              if t > 0 else 0.0)
            th_next = self.thetas[t + 1]
            mean_next = np.divide(self.b @ th_next, self.w_next,
                                  out=np.zeros_like(self.w_next), where=self.w_next > 0)
            v_next = self.x_pi @ th_next  # V_{t+1} at every row
            delta = np.where(self.use, window_step_delta(
                rewards, self.gamma * self.cont[t], v_next, self.nxt, self.has_next, censored,
                mean_next[p], ratio[p], self.thetas[t][p], inv_w[p]), 0.0)
            infl += delta[:, None] * lam[p]
        n_ep = episode_offsets.size - 1
        per_ep = np.add.reduceat(infl, episode_offsets[:-1], axis=0) * n_ep
        return np.asarray(per_ep - per_ep.mean(axis=0, keepdims=True))

# ---------------------------------------------------------------------- linear
#: One-hot columns up to which categorical states enter the linear model's dense features
#: (interacted with the action); above it each level gets a main effect in a sparse design.
_MAX_DENSE_ONEHOT = 32


def _rowwise_kron(d: NDArray[np.float64], u: NDArray[np.float64] | sp.csr_matrix
                  ) -> sp.csr_matrix:
    """Row-wise Kronecker product ``[d_i (x) u_i]`` as CSR, shape ``(n, p * m)``.

    Column ``j * m + l`` holds ``d[i, j] * u[i, l]``.
    """
    n, p = d.shape
    m = u.shape[1]
    if sp.issparse(u):
        u = sp.csr_matrix(u)
        k = np.diff(u.indptr)
        rows = np.repeat(np.arange(n), k)
        cols = (np.arange(p)[None, :] * m + u.indices[:, None]).ravel()
        vals = (d[rows] * u.data[:, None]).ravel()
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(k * p, out=indptr[1:])
        return sp.csr_matrix((vals, cols, indptr), shape=(n, p * m))
    data = (d[:, :, None] * np.asarray(u)[:, None, :]).reshape(-1)
    indices = np.tile(np.arange(p * m, dtype=np.int32), n)
    indptr = np.arange(0, n * p * m + 1, p * m, dtype=np.int64)
    return sp.csr_matrix((data, indices, indptr), shape=(n, p * m))


def _category_design(dataset: TrajectoryDataset) -> sp.csr_matrix | None:
    """Sparse one-hot main effects of every categorical state column, or None."""
    if dataset.categorical is None or dataset.categorical.shape[1] == 0:
        return None
    sizes = [len(lv) for lv in dataset.categorical_levels]
    if sum(sizes) <= _MAX_DENSE_ONEHOT:
        return None
    n, k = dataset.categorical.shape
    offs = np.r_[0, np.cumsum(sizes)[:-1]]
    cols = (dataset.categorical + offs[None, :]).ravel()
    return sp.csr_matrix((np.ones(n * k), cols, np.arange(0, n * k + 1, k)),
                         shape=(n, int(sum(sizes))))


@dataclass(frozen=True, eq=False)
class _LinearModel:
    """Design pieces of the linear model: ``Q = phi W psi^T + onehot(cat) c``."""

    phi: NDArray[np.float64]  # (n, p)
    psi: NDArray[np.float64]  # (A, m)
    flat: bool
    cats: sp.csr_matrix | None

    def design(self, actions: NDArray[np.int64], pe: NDArray[np.float64]
               ) -> tuple[sp.csr_matrix, KronPi]:
        """``X`` at the logged actions (CSR) and ``X_pi`` under the target policy."""
        psi_a = sp.csr_matrix(self.psi)[actions]
        x = _rowwise_kron(self.phi, psi_a)
        upi = np.concatenate([np.ones((pe.shape[0], 1)), pe], axis=1) if self.flat else (
            pe @ self.psi)
        if self.cats is not None:
            x = sp.hstack([x, self.cats], format="csr")
        return x, KronPi(phi=self.phi, u=upi, cats=self.cats)

    def q_function(self, theta: NDArray[np.float64]) -> _QFunction:
        p, m = self.phi.shape[1], self.psi.shape[1]
        offset = None if self.cats is None else np.asarray(self.cats @ theta[p * m:])
        return _QFunction(n_steps=self.phi.shape[0], n_actions=self.psi.shape[0], phi=self.phi,
                          weights=theta[: p * m].reshape(p, m),
                          psi=None if self.flat else self.psi, offset=offset)


def _fit_linear(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                cfg: FQEConfig) -> tuple[_QFunction, dict[str, Any]]:
    qfun, info, _ = _fit_linear_lstd(dataset, pe, gamma, cfg)
    return qfun, info


def _linear_model(dataset: TrajectoryDataset, cfg: FQEConfig,
                  stats: StateStats | None = None) -> _LinearModel:
    cats = _category_design(dataset)
    phi = _state_design(dataset, cfg.time_features, cfg.state_design,
                        one_hot=cats is None, stats=stats)  # (n, p)
    psi = _action_design(dataset, cfg.action_design)  # (A, m)
    n_a, m = psi.shape
    flat = m == n_a + 1 and np.array_equal(psi[:, 1:], np.eye(n_a))
    return _LinearModel(phi=phi, psi=psi, flat=flat, cats=cats)


def _fit_linear_lstd(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                     cfg: FQEConfig, weights: NDArray[np.float64] | None = None
                     ) -> tuple[_QFunction, dict[str, Any], LSTDFit | None]:
    """Fit the linear model by sparse LSTD (fall-back: iterated ridge regressions)."""
    lm = _linear_model(dataset, cfg)
    x, x_pi = lm.design(dataset.actions, pe)
    p, m = lm.phi.shape[1], lm.psi.shape[1]
    n_par = x.shape[1]
    _, has_next = _next_rows(dataset)
    r = dataset.rewards
    xw = x if weights is None else sp.csr_matrix(sp.diags(weights) @ x)
    diag_xtx = np.asarray(xw.multiply(x).sum(axis=0)).ravel()
    penalty = np.full(n_par, float(cfg.alpha))
    shared = np.arange(p) * m  # psi column 0: the shared model of each state feature
    penalty[shared] = 1e-8 * max(1.0, float(diag_xtx[: p * m].sum()) / (p * m))
    info: dict[str, Any] = {"solver": "fixed_point", "n_params": int(n_par),
                            "design": "sparse" if lm.cats is not None else "dense_features"}
    scale = (np.abs(r).max() + 1e-12) * int(dataset.episode_lengths.max())
    fit: LSTDFit | None = None
    if gamma > 0 and cfg.solver == "fixed_point":
        fit = solve_lstd(x, x_pi, r, has_next, gamma, penalty, weights)
        if fit is not None and not lm.q_function(fit.theta).bounded(10 * scale):
            fit = None  # unstable projected Bellman fixed point: iterate instead
    elif gamma == 0:
        fit = solve_lstd(x, x_pi, r, has_next, 0.0, penalty, weights)
        info["solver"] = "ridge"
    if fit is not None:
        return lm.q_function(fit.theta), info, fit
    from scipy.sparse.linalg import splu

    info["solver"] = "iterate"
    n_iter = cfg.n_iterations or min(int(dataset.episode_lengths.max()), 100)
    xt = sp.csr_matrix(xw.T)
    lu = splu(sp.csc_matrix(xt @ x + sp.diags(penalty)))
    theta = np.zeros(n_par)
    v_next = np.zeros(dataset.n_steps)
    for _ in range(n_iter):
        v = x_pi.matvec(theta)
        v_next[:-1] = np.where(has_next[:-1], v[1:], 0.0)
        theta = lu.solve(np.asarray(xt @ (r + gamma * v_next)))
    info["n_iterations"] = n_iter
    return lm.q_function(theta), info, None


# ---------------------------------------------------------------------- gbm
def _gbm_inputs(x: NDArray[np.float64], codes: NDArray[np.int64]) -> NDArray[np.float64]:
    return np.concatenate([x, codes.astype(np.float64)], axis=1)


def _fit_gbm(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float, cfg: FQEConfig,
             random_state: RandomState, weights: NDArray[np.float64] | None = None
             ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    from threadpoolctl import threadpool_limits

    # many small fits: OpenMP threads cost more than they save (and oversubscribe shared hosts)
    limit = 1 if dataset.n_steps < _GBM_THREADED_ROWS else None
    with threadpool_limits(limits=limit, user_api="openmp"):
        return _fit_gbm_impl(dataset, pe, gamma, cfg, random_state, weights)


def _fit_gbm_impl(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                  cfg: FQEConfig, random_state: RandomState,
                  weights: NDArray[np.float64] | None = None
                  ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = check_random_state(random_state)
    cats = dataset.categorical
    n_onehot = sum(len(lv) for lv in dataset.categorical_levels) if cats is not None else 0
    wide = cats is not None and n_onehot > _MAX_DENSE_ONEHOT
    x = np.asarray(dataset.features(one_hot=not wide), dtype=np.float64)
    x_cat = np.zeros(x.shape[1], bool)
    if wide:  # codes, not one-hot columns: memory stays linear in rows
        assert cats is not None
        x = np.concatenate([x, cats.astype(np.float64)], axis=1)
        x_cat = np.r_[x_cat, [len(lv) <= 255 for lv in dataset.categorical_levels]]
    backward = cfg.resolved_horizon == "backward"
    if not backward and cfg.time_features:
        x = np.concatenate([x, _time_feature(dataset)[:, None]], axis=1)
        x_cat = np.r_[x_cat, False]
    n_comp = dataset.action_space.n_components
    cat = np.r_[x_cat, np.ones(n_comp, bool)]
    w_all = weights
    all_codes = dataset.action_space.all_codes()
    n_a = dataset.n_actions
    codes = dataset.action_codes
    nxt, has_next = _next_rows(dataset)

    def model() -> Any:
        return HistGradientBoostingRegressor(
            max_iter=cfg.gbm_max_iter, learning_rate=0.1, max_leaf_nodes=15,
            categorical_features=cat if max(dataset.action_space.sizes) <= 255 else None,
            random_state=int(rng.integers(2**31 - 1)))

    def predict_all(est: Any, rows: NDArray[np.int64]) -> NDArray[np.float64]:
        xr = np.repeat(x[rows], n_a, axis=0)
        cr = np.tile(all_codes, (rows.size, 1))
        return np.asarray(est.predict(_gbm_inputs(xr, cr))).reshape(rows.size, n_a)

    r = dataset.rewards
    q = np.zeros((dataset.n_steps, n_a))
    if backward:
        step = dataset.step
        v_rows = np.zeros(dataset.n_steps)
        for t in range(int(step.max()), -1, -1):
            rows = np.flatnonzero(step == t)
            y = r[rows] + gamma * np.where(has_next[rows], v_rows[nxt[rows]], 0.0)
            sw = None if w_all is None else w_all[rows]
            fit_rows = rows.size if sw is None else int(np.sum(sw > 0))
            if fit_rows < 4 or np.ptp(y if sw is None else y[sw > 0]) == 0:
                q[rows] = (y.mean() if sw is None else (
                    float(np.average(y, weights=sw)) if sw.sum() > 0 else 0.0))
            else:
                est = model().fit(_gbm_inputs(x[rows], codes[rows]), y, sample_weight=sw)
                q[rows] = predict_all(est, rows)
            v_rows[rows] = np.einsum("ij,ij->i", q[rows], pe[rows])
        return q, {"solver": "backward"}
    n_iter = 1 if gamma == 0 else (cfg.n_iterations or min(int(dataset.episode_lengths.max()), 100))
    v = np.zeros(dataset.n_steps)
    all_rows = np.arange(dataset.n_steps)
    for _ in range(n_iter):
        y = r + gamma * np.where(has_next, v[nxt], 0.0)
        est = model().fit(_gbm_inputs(x, codes), y, sample_weight=w_all)
        q = predict_all(est, all_rows)
        v = np.einsum("ij,ij->i", q, pe)
    return q, {"solver": "iterate", "n_iterations": n_iter}


# ---------------------------------------------------------------------- mlp
def _fit_mlp(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float, cfg: FQEConfig,
             random_state: RandomState, weights: NDArray[np.float64] | None = None
             ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    import torch  # heavy: only in this code path

    threads = torch.get_num_threads()
    if dataset.n_steps * dataset.n_actions <= 20_000_000:
        torch.set_num_threads(1)  # small nets: threads cost more than they save
    try:
        return _fit_mlp_impl(dataset, pe, gamma, cfg, random_state, weights)
    finally:
        torch.set_num_threads(threads)


def _fit_mlp_impl(dataset: TrajectoryDataset, pe: NDArray[np.float64], gamma: float,
                  cfg: FQEConfig, random_state: RandomState,
                  weights: NDArray[np.float64] | None
                  ) -> tuple[NDArray[np.float64], dict[str, Any]]:
    import torch

    rng = check_random_state(random_state)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31 - 1)))
    cats = dataset.categorical
    n_onehot = sum(len(lv) for lv in dataset.categorical_levels) if cats is not None else 0
    wide = cats is not None and n_onehot > _MAX_DENSE_ONEHOT
    x = torch.as_tensor(_state_design(dataset, cfg.time_features, one_hot=not wide),
                        dtype=torch.float32)
    n, n_a = dataset.n_steps, dataset.n_actions
    emb_dim = 16 if wide else 0
    codes_t = None
    if wide:  # categorical codes through an embedding: no (rows x levels) one-hot matrix
        assert cats is not None
        offs = np.r_[0, np.cumsum([len(lv) for lv in dataset.categorical_levels])[:-1]]
        codes_t = torch.as_tensor(cats + offs[None, :])

    class _Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(n_onehot, emb_dim, mode="sum") if wide else None
            layers: list[Any] = []
            width = x.shape[1] + emb_dim
            for hdim in cfg.hidden:
                layers += [torch.nn.Linear(width, hdim), torch.nn.ReLU()]
                width = hdim
            layers.append(torch.nn.Linear(width, n_a))
            self.body = torch.nn.Sequential(*layers)

        def forward(self, idx: Any) -> Any:
            h = x[idx]
            if self.emb is not None:
                assert codes_t is not None
                h = torch.cat([h, self.emb(codes_t[idx])], dim=1)
            return self.body(h)

    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global state untouched
        torch.manual_seed(int(rng.integers(2**31 - 1)))
        net = _Net()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    nxt, has_next = _next_rows(dataset)
    nxt_t = torch.as_tensor(nxt)
    mask = torch.as_tensor(has_next, dtype=torch.float32)
    pe_t = torch.as_tensor(pe, dtype=torch.float32)
    r_t = torch.as_tensor(dataset.rewards, dtype=torch.float32)
    a_t = torch.as_tensor(dataset.actions)
    train = np.arange(n) if weights is None else np.flatnonzero(weights > 0)
    train_t = torch.as_tensor(train)
    w_t = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)
    all_idx = torch.arange(n)
    n_iter = 1 if gamma == 0 else (cfg.n_iterations or min(int(dataset.episode_lengths.max()), 100))
    for _ in range(n_iter):
        with torch.no_grad():  # frozen target network = the previous iteration's Q
            v = (net(all_idx) * pe_t).sum(dim=1)
            y = r_t + gamma * mask * v[nxt_t]
        for _ in range(cfg.epochs):
            perm = train_t[torch.randperm(train.size, generator=gen)]
            for s in range(0, train.size, cfg.batch_size):
                b = perm[s:s + cfg.batch_size]
                pred = net(b).gather(1, a_t[b, None]).squeeze(1)
                if w_t is None:
                    loss = torch.nn.functional.mse_loss(pred, y[b])
                else:
                    wb = w_t[b]
                    loss = (wb * (pred - y[b]) ** 2).sum() / wb.sum()
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
    with torch.no_grad():
        q = net(all_idx).double().numpy()
    return np.ascontiguousarray(q), {"solver": "iterate", "n_iterations": n_iter}
