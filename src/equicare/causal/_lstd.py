"""Average-reward LSTD: the differential Q-function and the long-run average reward ``eta``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["LSTDFit", "lstd_average"]


@dataclass(frozen=True)
class LSTDFit:
    """Solution of the average-reward LSTD equations.

    Attributes
    ----------
    eta : float
        Long-run average (pseudo-)reward.
    beta : ndarray of shape (p,)
        ``Q(z) = x(z) @ beta``.
    influence : ndarray of shape (n,)
        Influence of each training row on ``eta`` (linearisation of the estimating equation),
        so that ``eta_hat - eta ~ mean(influence)``.
    """

    eta: float
    beta: NDArray[np.float64]
    influence: NDArray[np.float64]


def lstd_average(x: NDArray[np.float64], x_next: NDArray[np.float64], y: NDArray[np.float64],
                 ridge: float = 1e-6) -> LSTDFit:
    r"""Solve the projected Bellman equation of the average-reward Q-function.

    With basis ``x_i = x(S_i, A_i[, M_i])``, expected next basis ``xi_i = E_pi[x(S'_i, .)]`` and
    (pseudo-)reward ``y_i``, find ``(eta, beta)`` with

    .. math::

        \frac1n \sum_i \begin{pmatrix}1\\ x_i\end{pmatrix}
        \bigl(y_i - \eta - (x_i - \xi_i)^\top \beta\bigr) = \lambda \begin{pmatrix}0\\ \beta
        \end{pmatrix},

    i.e. ``Q(s, a) + eta = E[y + V(S') | s, a]`` projected on the basis (ridge ``lambda``,
    relative to the mean diagonal, removes the constant direction Q is not identified in).

    Parameters
    ----------
    x, x_next : ndarray of shape (n, p)
    y : ndarray of shape (n,)
    ridge : float

    Returns
    -------
    LSTDFit
    """
    n, p = x.shape
    z = np.hstack([np.ones((n, 1)), x])
    d = np.hstack([np.ones((n, 1)), x - x_next])
    A = z.T @ d / n
    b = z.T @ y / n
    scale = max(float((x ** 2).sum()) / (n * max(p, 1)), 1e-12)
    A_reg = A.copy()
    A_reg[1:, 1:] += ridge * scale * np.eye(p)
    theta = np.linalg.solve(A_reg, b)
    resid = y - d @ theta
    # eta_hat - eta ~ e0' A^-1 mean(z_i resid_i)
    u = np.linalg.solve(A_reg.T, np.eye(p + 1)[0])
    return LSTDFit(eta=float(theta[0]), beta=theta[1:], influence=(z @ u) * resid)
