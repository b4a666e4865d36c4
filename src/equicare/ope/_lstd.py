r"""Sparse least-squares fixed points of FQE (LSTD-Q) and their first-order sensitivity.

Both the stationary tabular model and the linear model are linear in a design ``x(s, a)``:
``Q(s, a) = x(s, a)^T theta``. FQE iterated to convergence reaches the fixed point of the
(ridge-)projected Bellman equation (Lagoudakis & Parr 2003; Le, Voloshin & Yue 2019),

.. math::

    M \theta = b, \qquad M = \sum_i x_i (x_i - \gamma \bar x'_i)^T + \Lambda, \qquad
    b = \sum_i x_i r_i,

with ``x_i = x(s_i, a_i)`` (sparse rows ``X``) and ``\bar x'_i = E_{a' \sim \pi_e}
x(s_{i+1}, a')`` (zero when row ``i`` has no next row). ``M`` is assembled as a
``scipy.sparse`` matrix from the sufficient statistics ``X^T X`` and ``X_{prev}^T X_\pi`` (no
``(p, p, m)`` dense block, no cardinality-squared memory) and factorised once by SuperLU.

The same factorisation gives the estimate's sensitivity to the data (an influence function).
For a functional ``F(theta)`` with gradient ``j``, re-weighting episodes by ``c_e`` (bootstrap
counts) moves the fixed point by ``M^{-1} (\sum_e c_e g_e - \Lambda \theta)`` to first order,
``g_e = \sum_{i \in e} x_i \delta_i`` with the TD residuals ``\delta_i = r_i + \gamma \bar x'_i
\theta - x_i \theta``. With ``z = M^{-T} j`` the per-episode term ``n z^T g_e`` is what refitting
the Q-model inside a bootstrap replicate adds to ``F`` (the linearised or "infinitesimal"
bootstrap, Efron 1982, ch. 6; for tabular FQE ``n x_i^T z`` is the estimated state-action
density ratio ``d^\pi / d^D`` of marginalised importance sampling, Uehara, Huang & Jiang 2020).
All replicates then cost one matrix product, like the fixed-Q bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

__all__ = ["LSTDFit", "solve_lstd", "shift_prev"]


def shift_prev(x: sp.csr_matrix, has_next: NDArray[np.bool_]) -> sp.csr_matrix:
    """Rows ``j`` hold ``x_{j-1}`` when row ``j - 1`` has a next row (else zero), CSR.

    ``shift_prev(X, has_next).T @ X_pi`` is ``sum_i x_i \\bar x'^T_i`` without indexing the
    (wide) ``X_pi`` by next rows.
    """
    n = x.shape[0]
    src = np.flatnonzero(has_next[: n - 1]) if n > 1 else np.zeros(0, dtype=np.int64)
    sel = sp.csr_matrix((np.ones(src.size), (src + 1, src)), shape=(n, n))
    return sp.csr_matrix(sel @ x)


@dataclass(frozen=True, eq=False)
class LSTDFit:
    """A solved projected Bellman equation with its factorisation.

    Attributes
    ----------
    theta : ndarray of shape (n_params,)
    x : csr_matrix of shape (n_steps, n_params)
        Design at the logged actions.
    x_pi : csr_matrix of shape (n_steps, n_params)
        Expected design under the target policy at each row.
    has_next : ndarray of shape (n_steps,)
    gamma : float
    lu : scipy.sparse.linalg.SuperLU
        Factorisation of ``M``.
    ridge : ndarray of shape (n_params,)
    """

    theta: NDArray[np.float64]
    x: sp.csr_matrix
    x_pi: sp.csr_matrix
    has_next: NDArray[np.bool_]
    gamma: float
    lu: object
    ridge: NDArray[np.float64]

    @property
    def q_sa(self) -> NDArray[np.float64]:
        """``Q(s_i, a_i)``, shape ``(n_steps,)``."""
        return np.asarray(self.x @ self.theta)

    @property
    def v(self) -> NDArray[np.float64]:
        """``V(s_i) = E_{pi_e} Q(s_i, a)``, shape ``(n_steps,)``."""
        return np.asarray(self.x_pi @ self.theta)

    def td_residuals(self, rewards: NDArray[np.float64]) -> NDArray[np.float64]:
        """``delta_i = r_i + gamma V(s_{i+1}) - Q(s_i, a_i)``, shape ``(n_steps,)``."""
        v = self.v
        v_next = np.zeros_like(v)
        v_next[:-1] = np.where(self.has_next[:-1], v[1:], 0.0)
        return rewards + self.gamma * v_next - self.q_sa

    def influence(self, grads: NDArray[np.float64], rewards: NDArray[np.float64],
                  episode_offsets: NDArray[np.int64]) -> NDArray[np.float64]:
        """Per-episode first-order effect of refitting ``theta`` on functionals with gradients.

        Parameters
        ----------
        grads : ndarray of shape (n_params, k)
            Gradients ``dF/dtheta`` of ``k`` functionals (estimators).
        rewards : ndarray of shape (n_steps,)
        episode_offsets : ndarray of shape (n_episodes + 1,)

        Returns
        -------
        ndarray of shape (n_episodes, k)
            ``n z^T g_e`` centred to mean 0 (so the point estimate is unchanged); adding it to an
            estimator's per-episode part makes every bootstrap replicate include the refit.
        """
        z = self.lu.solve(np.asarray(grads, dtype=np.float64), trans="T")  # type: ignore[attr-defined]
        n_ep = episode_offsets.size - 1
        w = np.asarray(self.x @ z)  # (n_steps, k): n x_i^T z is a density ratio in tabular FQE
        contrib = w * self.td_residuals(rewards)[:, None]
        per_ep = np.add.reduceat(contrib, episode_offsets[:-1], axis=0) * n_ep
        return np.asarray(per_ep - per_ep.mean(axis=0, keepdims=True))


def solve_lstd(x: sp.csr_matrix, x_pi: sp.csr_matrix, rewards: NDArray[np.float64],
               has_next: NDArray[np.bool_], gamma: float, ridge: NDArray[np.float64]
               ) -> LSTDFit | None:
    """Solve ``M theta = b`` by sparse LU; None when ``M`` is singular or the result not finite.

    Parameters
    ----------
    x, x_pi : csr_matrix of shape (n_steps, n_params)
    rewards : ndarray of shape (n_steps,)
    has_next : ndarray of shape (n_steps,)
        Whether row ``i + 1`` is row ``i``'s next step (not terminal, not the episode's end).
    gamma : float
    ridge : ndarray of shape (n_params,)

    Returns
    -------
    LSTDFit or None
    """
    from scipy.sparse.linalg import splu

    xt = sp.csr_matrix(x.T)
    m = xt @ x
    if gamma > 0:
        m = m - gamma * (sp.csr_matrix(shift_prev(x, has_next).T) @ x_pi)
    m = sp.csc_matrix(m + sp.diags(ridge))
    b = np.asarray(xt @ rewards)
    try:
        lu = splu(m)
        theta = lu.solve(b)
    except RuntimeError:  # exactly singular
        return None
    if not np.isfinite(theta).all():
        return None
    return LSTDFit(theta=theta, x=x, x_pi=x_pi, has_next=has_next, gamma=float(gamma), lu=lu,
                   ridge=ridge)
