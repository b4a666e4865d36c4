r"""Pessimistic value iteration with count-based penalties on discrete state cells.

The learner builds the panel's maximum-likelihood MDP of cells (as :class:`~equicare.learn.SPIBB`
does: terminal rows absorb, the last row of a censored episode adds no transition), shrinks each
(cell, action) pair's model toward the cell's pooled model, and runs a finite-horizon value
iteration on a lower confidence bound of the action values:

.. math::

    \tilde P(\cdot \mid x, a) &= w_{xa} \hat P(\cdot \mid x, a)
        + (1 - w_{xa}) \bar P(\cdot \mid x), \qquad w_{xa} = \frac{N(x, a)}{N(x, a) + k}, \\
    \underline Q(x, a) &= \tilde r(x, a) + \gamma \sum_{x'} \tilde P(x' \mid x, a)
        \underline V(x') - \frac{\beta}{\sqrt{N(x, a) + k}}, \\
    \underline V(x) &= \max_{a : N(x, a) \ge n_{\min}} \underline Q(x, a).

``\bar P(\cdot | x)`` (and ``\bar r(x)``) pool every logged action of the cell, i.e. the cell's
dynamics under current practice: the posterior mean under a Dirichlet prior of mass ``k`` centred
on the pooled model. This is what keeps a rarely logged action from looking perfect because its
few transitions happened to contain no death. The penalty is the count-based bonus of
pessimistic value iteration (PEVI, Jin, Yang and Wang, 2021, *Is Pessimism Provably Efficient for
Offline RL?*, ICML; VI-LCB, Rashidinejad, Zhu, Ma, Jiao and Russell, 2021, *Bridging Offline
Reinforcement Learning and Imitation Learning: A Tale of Pessimism*, NeurIPS): ``beta`` is in
value units. The greedy policy takes the best ``\underline Q`` among the pairs logged at least
``n_min`` times; a cell without such a pair keeps the behaviour estimate. With ``mix < 1`` the
returned policy is the mixture ``(1 - mix) pi_b + mix pi_greedy`` (a conservative policy
update toward the greedy policy, Kakade and Langford, 2002): it moves less far from the
clinicians, so its off-policy evaluation is much less variable and a held-out bound can confirm
a gain that the full greedy policy's noisier estimate cannot.

Unlike SPIBB it is not anchored to the behaviour's probabilities, so it is not safe by
construction: the penalty and the shrinkage make it conservative, and ``equicare train --select
auto`` checks every candidate on held-out episodes before keeping it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data._cells import check_cells
from equicare.exceptions import InvalidParameterError
from equicare.learn._params import check_fit_options
from equicare.learn._spibb import BEHAVIOR_MODES, NUMERIC_MODES, SPIBB, CellModel
from equicare.utils import check_param, config_to_dict

__all__ = ["PVI", "PVIConfig"]


@dataclass(frozen=True, kw_only=True)
class PVIConfig:
    """Settings of :class:`PVI`.

    Parameters
    ----------
    beta : float, default 0.3
        Penalty scale in value units: ``beta / sqrt(N(x, a) + prior)`` is subtracted at every
        backup (0: no penalty).
    prior : float, default 5
        Pseudo-count ``k`` of the shrinkage of each pair's reward and transitions toward its
        cell's pooled model (0: the MLE model).
    min_count : int, default 3
        Pairs with fewer model transitions are never chosen (the greedy step ignores them).
    mix : float, default 1
        Weight of the greedy policy in the returned ``(1 - mix) pi_b + mix pi_greedy``
        (1: the greedy policy; 0: the behaviour estimate).
    tau : float, default 0
        0: the greedy step takes the largest ``Q_lower`` among pairs logged ``min_count``
        times. ``tau > 0`` (value units): it takes the mode of the behaviour-tilted policy
        ``pi_b(a | x) exp(Q_lower(x, a) / tau)`` over the logged actions, i.e. the largest
        ``Q_lower(x, a) / tau + log pi_b(a | x)``: the clinicians' preference counts as prior
        evidence, and a rarely given action must beat a common one by ``tau log`` of their
        propensity ratio.
    behavior : {"auto", "counts", "logged", "known"}
        Behaviour estimate per cell (as in :class:`~equicare.learn.SPIBBConfig`); it is the
        policy of cells without an eligible pair.
    numeric : {"auto", "ignore", "bin"}
        Numeric state columns, as in :class:`~equicare.learn.SPIBBConfig` (``auto``: bin
        those whose quantile bins predict the logged actions beyond the cells).
    cells : "auto", "all" or tuple of str, default "auto"
        The categorical state columns whose combinations are the cells. ``"auto"``: with
        several columns, those that change the dynamics given the others
        (:func:`equicare.data.choose_cells`; a care site that does not drive outcomes
        is pooled over); ``"all"``: every column.
    numeric_bins : int, default 10
        As in :class:`~equicare.learn.SPIBBConfig`.
    horizon : int or None
        Bellman backups. None: the longest episode in the data.
    tol : float
        Stop the value iteration early when the values move less than this.
    """

    beta: float = 0.3
    prior: float = 5.0
    min_count: int = 3
    mix: float = 1.0
    tau: float = 0.0
    behavior: Literal["auto", "counts", "logged", "known"] = "auto"
    numeric: Literal["auto", "ignore", "bin"] = "auto"
    numeric_bins: int = 10
    cells: str | tuple[str, ...] = "auto"
    horizon: int | None = None
    tol: float = 1e-10

    def __post_init__(self) -> None:
        o = "PVIConfig"
        check_param(self.beta, "beta", o, kind=(int, float), low=0)
        check_param(self.prior, "prior", o, kind=(int, float), low=0)
        check_param(self.min_count, "min_count", o, kind=int, low=1, expected="an int >= 1")
        check_param(self.mix, "mix", o, kind=(int, float), low=0, high=1)
        check_param(self.tau, "tau", o, kind=(int, float), low=0)
        check_param(self.behavior, "behavior", o, choices=BEHAVIOR_MODES)
        check_param(self.numeric, "numeric", o, choices=NUMERIC_MODES)
        check_param(self.numeric_bins, "numeric_bins", o, kind=int, low=2,
                    expected="an int >= 2")
        object.__setattr__(self, "cells", check_cells(self.cells, o))
        check_param(self.horizon, "horizon", o, kind=int, low=1, allow_none=True,
                    expected="an int >= 1 or None")
        check_param(self.tol, "tol", o, kind=(int, float), low=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PVIConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidParameterError(
                f"Unknown PVIConfig keys {unknown}; known: {sorted(known)}.")
        return cls(**d)


class PVI(SPIBB):
    """Pessimistic value iteration with count penalties and pooled shrinkage, on cells.

    Parameters
    ----------
    config : PVIConfig, optional
    **overrides
        Config fields to change (``PVI(beta=0.1, prior=20)``).

    Attributes
    ----------
    policy_ : CellPolicy
        The fitted policy (with ``mix = 1``, deterministic in cells with an eligible pair).
        Cells of fewer than ``MIN_CELL`` episodes have no eligible pair and no table row, as
        in :class:`~equicare.learn.SPIBB` (``pooled_cells_``).
    behavior_ : ndarray of shape (n_cells, n_actions)
    counts_ : ndarray of shape (n_cells, n_actions), int64
        Model transitions per (cell, action).
    bootstrapped_ : ndarray of shape (n_cells, n_actions), bool
        Pairs of cells that keep the behaviour estimate (no pair logged ``min_count`` times).
    q_ : ndarray of shape (n_cells, n_actions)
        Pessimistic action values ``Q_lower``.
    critic_ : ndarray of shape (n_cells + 1, n_actions)
        ``q_`` with NaN where it is no estimate: pairs without model transitions when
        ``prior = 0`` or when their cell has none at all (their value is the penalty alone), and
        the last row (cells not seen in training). ``scores(dataset, "critic")`` reads it; with
        ``mix = 1`` and ``tau = 0`` the policy takes, in each cell with a pair logged
        ``min_count`` times, the largest ``critic_`` among those pairs.
    value_ : float
        ``sum_a pi(a|x) Q_lower(x, a)`` of the returned policy, averaged over the data's initial
        rows (pairs without transitions count with their penalised shrunk values).
    behavior_value_ : float
        Value of the behaviour estimate in the MLE model, likewise.
    n_cells_, pooled_cells_ : int
    cell_columns_, ignored_numeric_ : tuple of str
    numeric_choice_ : dict or None
        As in :class:`~equicare.learn.SPIBB`.

    Notes
    -----
    Censoring is handled by the shared cell model (see :class:`~equicare.learn.SPIBB`): only a
    row with ``terminal = 1`` has zero future value.
    """

    algo: ClassVar[str] = "pvi"
    config_class: ClassVar[type[Any]] = PVIConfig

    def fit(self, dataset: Any, *, valid: Any | None = None, progress: bool = False,
            checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
            **kwargs: Any) -> Self:
        """Fit on a :class:`~equicare.data.TrajectoryDataset`; returns ``self``.

        Options as :meth:`SPIBB.fit` (any other keyword argument is refused).
        """
        check_fit_options(type(self).__name__, self.config, valid=valid,
                          checkpoint_dir=checkpoint_dir, resume=resume, extra=kwargs)
        cfg: PVIConfig = self.config
        m = self._model(dataset)
        pi, Q = pessimistic_iteration(m, beta=float(cfg.beta), prior=float(cfg.prior),
                                      min_count=int(cfg.min_count), tol=float(cfg.tol))
        if cfg.tau > 0:
            pi = tilted_mode(Q, np.where(m.n_all > 0, m.pb, 0.0), float(cfg.tau))
            pi[m.small] = m.pb[m.small]
        pi = (1.0 - cfg.mix) * m.pb + cfg.mix * pi
        self.q_ = Q
        eligible = (m.counts >= cfg.min_count) & ~m.small[:, None]
        self.bootstrapped_ = np.repeat(~eligible.any(axis=1, keepdims=True), m.n_actions, axis=1)
        self.value_ = float(np.mean((pi * Q).sum(axis=1)[m.first]))
        self._finish(dataset, m, pi)
        return self

    def _valued(self, m: CellModel) -> NDArray[np.bool_]:
        """Pairs whose ``Q_lower`` is an estimate.

        The modelled pairs, and with ``prior > 0`` the unmodelled pairs of a modelled cell
        (shrunk to its pooled model).
        """
        cell = m.has_model.any(axis=1, keepdims=True)
        pooled = cell if self.config.prior > 0 else np.zeros_like(cell)
        return np.asarray(m.has_model | pooled, dtype=bool)


def pooled_model(m: CellModel) -> tuple[NDArray[np.float64], sp.csr_matrix]:
    """Each cell's reward and transitions pooled over its logged actions.

    Returns
    -------
    r_pool : ndarray of shape (n_cells,)
    P_pool : scipy.sparse.csr_matrix of shape (n_cells, n_cells)
        ``sum_a N(x, a) P(. | x, a) / sum_a N(x, a)`` (a cell without transitions: zero row).
    """
    C, A = m.n_cells, m.n_actions
    n_cell = m.counts.sum(axis=1)
    share = m.counts / np.maximum(n_cell, 1.0)[:, None]
    r_pool = (share * m.R).sum(axis=1)
    agg = sp.csr_matrix((share.ravel(), (np.repeat(np.arange(C), A), np.arange(C * A))),
                        shape=(C, C * A))
    return r_pool, sp.csr_matrix(agg @ m.P)


def pessimistic_iteration(m: CellModel, *, beta: float, prior: float, min_count: int,
                          tol: float = 1e-10) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Finite-horizon value iteration on the penalised, shrunk model (module docstring).

    Parameters
    ----------
    m : CellModel
    beta, prior : float
    min_count : int
    tol : float

    Returns
    -------
    pi : ndarray of shape (n_cells, n_actions)
        Greedy on ``Q_lower`` among eligible pairs; the behaviour estimate in cells without one
        (cells of fewer than ``MIN_CELL`` episodes, ``m.pooled``, have none).
    Q : ndarray of shape (n_cells, n_actions)
        ``Q_lower`` after the last backup.
    """
    C, A = m.n_cells, m.n_actions
    n = m.counts
    w = n / (n + prior) if prior > 0 else np.ones_like(n)
    r_pool, P_pool = pooled_model(m)
    r_tilde = w * m.R + (1.0 - w) * r_pool[:, None]
    penalty = beta / np.sqrt(np.maximum(n + prior, 1.0))
    eligible = (n >= min_count) & ~m.small[:, None]
    any_eligible = eligible.any(axis=1)
    w_b = np.where(m.has_model, m.pb, 0.0)
    tot = w_b.sum(axis=1)
    w_b = np.where(tot[:, None] > 0, w_b / np.where(tot > 0, tot, 1.0)[:, None], 0.0)
    no_model = ~m.has_model.any(axis=1)
    V = np.zeros(C)
    Q = r_tilde - penalty
    for _sweep in range(m.horizon):
        PV = (m.P @ V).reshape(C, A)
        Q = r_tilde + m.gamma * (w * PV + (1.0 - w) * (P_pool @ V)[:, None]) - penalty
        V_new = np.where(any_eligible, np.where(eligible, Q, -np.inf).max(axis=1),
                         (w_b * Q).sum(axis=1))
        if no_model.any():  # cells never left by a transition: their mean value
            V_new[no_model] = V_new[~no_model].mean() if (~no_model).any() else 0.0
        converged = bool(np.max(np.abs(V_new - V)) < tol)
        V = V_new
        if converged:
            break
    pi = m.pb.copy()
    rows = np.flatnonzero(any_eligible)
    best = np.where(eligible, Q, -np.inf).argmax(axis=1)
    pi[rows] = 0.0
    pi[rows, best[rows]] = 1.0
    return pi, Q


def tilted_mode(Q: NDArray[np.float64], pb: NDArray[np.float64],
                tau: float) -> NDArray[np.float64]:
    """Mode of ``pb exp(Q / tau)`` per cell, over the actions with ``pb > 0``.

    Parameters
    ----------
    Q : ndarray of shape (n_cells, n_actions)
    pb : ndarray of shape (n_cells, n_actions)
        Behaviour estimate (every row has a positive entry).
    tau : float
        Temperature in value units (> 0).

    Returns
    -------
    ndarray of shape (n_cells, n_actions)
        One-hot rows.
    """
    score = np.where(pb > 0, Q / tau + np.log(np.where(pb > 0, pb, 1.0)), -np.inf)
    pi = np.zeros_like(pb)
    pi[np.arange(pb.shape[0]), score.argmax(axis=1)] = 1.0
    return pi
