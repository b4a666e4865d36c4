r"""The density ratio of ``auto``'s criterion when numeric states vary within the tables' cells.

``auto`` (:mod:`equicare.ope._select`) estimates each candidate's value bias as
``sum_i w_i delta_i`` with a state-action density ratio ``w = d^pi / d^D`` from the adjoint of an
LSTD system. From the reference table's own system, ``w = X z`` is a function of the (cell,
action) pair, and the table's fixed point makes its TD errors orthogonal to every such function
(``X^T W delta = 0``): its estimated bias is 0 plus held-out noise however far it misses within
its cells (a panel where minutes of activity drive both the nudges and the points: a table over
their bins 9.5% below the truth, estimated bias +0.2, SE 6.6).

The *judge* is an LSTD model that no candidate is: the table's one-hot (cell, action) design
``X_T`` next to the linear model's design ``X_L`` (numeric states and categorical levels by the
actions), ``X = [X_T, X_L]``. The ratio of its adjoint is the minimax-weight-learning solution
with the discriminators ``span(X)`` (Uehara, Huang & Jiang 2020, "Minimax Weight and
Q-Function Learning for Off-Policy Evaluation": with linear classes MWL's weights are LSTDQ's
adjoint): for every ``f`` in that span,

.. math::

    \mathbb E_D\big[w(s, a)\,(\gamma \textstyle\sum_{a'} \pi(a' \mid s') f(s', a')
        - f(s, a))\big] + \mathbb E_{s_0}\big[\textstyle\sum_a \pi(a \mid s_0) f(s_0, a)\big] = 0,

so on the rows it is fitted on, ``sum_i w_i delta_i(Q)`` is exactly ``v_judge - v(Q)`` for the
table and for the linear model alike (both lie in the span), and neither's estimated bias is 0 by
construction. On held-out rows the same holds up to noise. The columns ``X_L`` repeats from
``X_T`` (the per-action intercepts) make the system singular, so ``X_L`` takes the linear model's
ridge (``alpha = 1``) and every column a vanishing one (:data:`JUDGE_RIDGE` of its diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.ope._fqe import (
    FQEConfig,
    _cells,
    _linear_model,
    _next_rows,
    _tabular_design,
    cell_ranges,
)
from equicare.ope._lstd import LSTDFit, PiDesign, SparsePi, solve_lstd

__all__ = ["JUDGE_RIDGE", "StackedPi", "judge_applies", "judge_lstd"]

#: Ridge of every column of the judge's system, relative to its diagonal ``sum_i x_ij^2``.
JUDGE_RIDGE = 1e-6


@dataclass(frozen=True, eq=False)
class StackedPi:
    """``X_pi = [X_pi^(1), X_pi^(2)]``: two designs' target expectations side by side."""

    first: PiDesign
    second: PiDesign
    n_first: int

    def matvec(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        """``X_pi theta``, shape ``(n_steps,)``."""
        k = self.n_first
        return np.asarray(self.first.matvec(theta[:k]) + self.second.matvec(theta[k:]))

    def rmatvec(self, a: NDArray[np.float64]) -> NDArray[np.float64]:
        """``X_pi^T a`` for ``a`` of shape (n_steps, k): shape ``(n_params, k)``."""
        a2 = np.asarray(a, dtype=np.float64).reshape(a.shape[0], -1)
        top = np.asarray(self.first.rmatvec(a2)).reshape(self.n_first, a2.shape[1])
        bottom = np.asarray(self.second.rmatvec(a2)).reshape(-1, a2.shape[1])
        return np.concatenate([top, bottom], axis=0)

    def cross(self, left: sp.csr_matrix) -> sp.spmatrix:
        """``left^T X_pi`` (sparse), shape ``(left.shape[1], n_params)``."""
        return sp.hstack([sp.csr_matrix(self.first.cross(left)),
                          sp.csr_matrix(self.second.cross(left))], format="csr")


def judge_applies(dataset: TrajectoryDataset, cells: tuple[str, ...] | None) -> bool:
    """Whether a numeric state column takes two values within some cell of the table.

    Binned columns among ``cells`` count too (a bin holds a range of values). Without numeric
    or categorical states, or when every numeric column is constant within every cell (the
    Garnet test bed's severity, a function of the state), the judge's span is the table's and
    the reference's own ratio is kept.
    """
    if (dataset.categorical is None or dataset.categorical.shape[1] == 0
            or not dataset.state_names):
        return False
    cell, _ = _cells(dataset, cells)
    _, low, high = cell_ranges(dataset.states, cell)
    return bool(np.any(high > low))


def judge_lstd(dataset: TrajectoryDataset, target_probs: NDArray[np.float64],
               cells: tuple[str, ...] | None, train: NDArray[np.bool_]) -> LSTDFit | None:
    """The judge's LSTD fit on the ``train`` rows: design ``[table one-hot, linear]``.

    Parameters
    ----------
    dataset : TrajectoryDataset
    target_probs : ndarray of shape (n_steps, n_actions)
    cells : tuple of str or None
        The reference table's cells (:class:`~equicare.ope.FQEConfig` ``cells``).
    train : ndarray of shape (n_steps,)
        Rows of the fit (the held-out rows are only predicted).

    Returns
    -------
    LSTDFit or None
        None when the system is singular or its solution not finite.
    """
    pe = np.asarray(target_probs, dtype=np.float64)
    cell, _ = _cells(dataset, cells)
    x_t, x_pi_t, *_ = _tabular_design(cell, dataset.actions, pe, train)
    x_l, x_pi_l = _linear_model(dataset, FQEConfig(model="linear")).design(dataset.actions, pe)
    x = sp.hstack([x_t, x_l], format="csr")
    x_pi = StackedPi(first=SparsePi(sp.csr_matrix(x_pi_t)), second=x_pi_l,
                     n_first=int(x_t.shape[1]))
    weights = train.astype(np.float64)
    diag = np.asarray(sp.csr_matrix(sp.diags(weights) @ x).multiply(x).sum(axis=0)).ravel()
    alpha = float(FQEConfig(model="linear").alpha)
    ridge = np.r_[np.zeros(x_t.shape[1]), np.full(x_l.shape[1], alpha)] + JUDGE_RIDGE * (
        np.maximum(diag, 1.0))
    _, has_next = _next_rows(dataset)
    return solve_lstd(x, x_pi, dataset.rewards, has_next, float(dataset.gamma), ridge, weights)
