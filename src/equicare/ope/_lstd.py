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
``(p, p, m)`` dense block, no cardinality-squared memory) and solved by a dense LU when
small, else by preconditioned GMRES (SuperLU where it does not converge).

The same system gives the estimate's sensitivity to the data (an influence function).
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

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.utils import row_blocks

__all__ = ["LSTDFit", "LSTDSums", "LSTDSolution", "lstd_sums", "solve_lstd", "solve_lstd_sums",
           "shift_prev", "PiDesign", "SparsePi", "KronPi"]


def shift_prev(x: sp.csr_matrix, has_next: NDArray[np.bool_]) -> sp.csr_matrix:
    """Rows ``j`` hold ``x_{j-1}`` when row ``j - 1`` has a next row (else zero), CSR.

    ``shift_prev(X, has_next).T @ X_pi`` is ``sum_i x_i xbar'_i^T`` without indexing the
    (wide) ``X_pi`` by next rows.
    """
    n = x.shape[0]
    src = np.flatnonzero(has_next[: n - 1]) if n > 1 else np.zeros(0, dtype=np.int64)
    sel = sp.csr_matrix((np.ones(src.size), (src + 1, src)), shape=(n, n))
    return sp.csr_matrix(sel @ x)


class PiDesign(Protocol):
    """The target policy's expected design ``X_pi`` (rows ``E_{a ~ pi_e} x(s_i, a)``)."""

    def matvec(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        """``X_pi theta``, shape ``(n_steps,)``."""

    def rmatvec(self, a: NDArray[np.float64]) -> NDArray[np.float64]:
        """``X_pi^T a`` for ``a`` of shape (n_steps, k), shape ``(n_params, k)``."""

    def cross(self, left: sp.csr_matrix) -> sp.spmatrix | NDArray[np.float64]:
        """``left^T X_pi`` for a sparse ``left`` of shape (n_steps, n_params)."""


@dataclass(frozen=True, eq=False)
class SparsePi:
    """``X_pi`` held as one sparse matrix (tabular model)."""

    x_pi: sp.csr_matrix

    def matvec(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(self.x_pi @ theta)

    def rmatvec(self, a: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(self.x_pi.T @ a)

    def cross(self, left: sp.csr_matrix) -> sp.spmatrix:
        return sp.csr_matrix(left.T) @ self.x_pi


@dataclass(frozen=True, eq=False)
class KronPi:
    """``X_pi = [phi_i (x) u_i, C_i]`` built block by block, never whole.

    ``phi`` (n_steps, p) dense state features, ``u`` (n_steps, m) the target policy's expected
    action features, ``cats`` (n_steps, c) sparse categorical main effects (or None).
    """

    phi: NDArray[np.float64]
    u: NDArray[np.float64]
    cats: sp.csr_matrix | None

    @property
    def n_kron(self) -> int:
        return int(self.phi.shape[1] * self.u.shape[1])

    def _block(self, sl: slice) -> NDArray[np.float64]:
        b = self.phi[sl][:, :, None] * self.u[sl][:, None, :]
        return b.reshape(b.shape[0], -1)

    def matvec(self, theta: NDArray[np.float64]) -> NDArray[np.float64]:
        p, m = self.phi.shape[1], self.u.shape[1]
        w = theta[: p * m].reshape(p, m)
        out = np.einsum("ij,ij->i", self.phi @ w, self.u)
        if self.cats is not None:
            out += self.cats @ theta[p * m:]
        return np.asarray(out, dtype=np.float64)

    def rmatvec(self, a: NDArray[np.float64]) -> NDArray[np.float64]:
        a2 = a.reshape(a.shape[0], -1)
        top = np.einsum("ip,im,ik->pmk", self.phi, self.u, a2).reshape(self.n_kron, -1)
        if self.cats is None:
            return np.asarray(top, dtype=np.float64)
        return np.concatenate([top, np.asarray(self.cats.T @ a2)], axis=0)

    def cross(self, left: sp.csr_matrix) -> sp.spmatrix | NDArray[np.float64]:
        nk = self.n_kron
        n_par = left.shape[1]
        dense = np.zeros((n_par, nk))
        for sl in row_blocks(self.phi.shape[0], nk):  # left^T [phi (x) u], one block at a time
            dense += np.asarray(sp.csr_matrix(left[sl].T) @ self._block(sl))
        if self.cats is None:
            return dense
        right = np.asarray((sp.csr_matrix(left.T) @ self.cats).toarray()) if (
            n_par * self.cats.shape[1] <= 4_000_000) else None
        if right is not None:
            return np.concatenate([dense, right], axis=1)
        return sp.hstack([sp.csr_matrix(dense), sp.csr_matrix(left.T) @ self.cats], format="csr")


@dataclass(frozen=True, eq=False)
class LSTDFit:
    """A solved projected Bellman equation with its factorisation.

    Attributes
    ----------
    theta : ndarray of shape (n_params,)
    x : csr_matrix of shape (n_steps, n_params)
        Design at the logged actions.
    x_pi : PiDesign
        Expected design under the target policy at each row.
    has_next : ndarray of shape (n_steps,)
    gamma : float
    solve_t : callable
        ``solve_t(b)`` solves ``M^T z = b``.
    ridge : ndarray of shape (n_params,)
    """

    theta: NDArray[np.float64]
    x: sp.csr_matrix
    x_pi: PiDesign
    has_next: NDArray[np.bool_]
    gamma: float
    solve_t: Callable[[NDArray[np.float64]], NDArray[np.float64]]
    ridge: NDArray[np.float64]

    @property
    def q_sa(self) -> NDArray[np.float64]:
        """``Q(s_i, a_i)``, shape ``(n_steps,)``."""
        return np.asarray(self.x @ self.theta)

    @property
    def v(self) -> NDArray[np.float64]:
        """``V(s_i) = E_{pi_e} Q(s_i, a)``, shape ``(n_steps,)``."""
        return self.x_pi.matvec(self.theta)

    def td_residuals(self, rewards: NDArray[np.float64]) -> NDArray[np.float64]:
        """``delta_i = r_i + gamma V(s_{i+1}) - Q(s_i, a_i)``, shape ``(n_steps,)``."""
        v = self.v
        v_next = np.zeros_like(v)
        v_next[:-1] = np.where(self.has_next[:-1], v[1:], 0.0)
        return rewards + self.gamma * v_next - self.q_sa

    def gradients(self, first: NDArray[np.float64], logged: NDArray[np.float64]
                  ) -> NDArray[np.float64]:
        """``X_pi^T first - X^T logged`` for row weights of shape (n_steps, k): (n_params, k)."""
        return np.asarray(self.x_pi.rmatvec(first) - self.x.T @ logged)

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
        z = self.solve_t(np.asarray(grads, dtype=np.float64))
        n_ep = episode_offsets.size - 1
        w = np.asarray(self.x @ z)  # (n_steps, k): n x_i^T z is a density ratio in tabular FQE
        contrib = w * self.td_residuals(rewards)[:, None]
        per_ep = np.add.reduceat(contrib, episode_offsets[:-1], axis=0) * n_ep
        return np.asarray(per_ep - per_ep.mean(axis=0, keepdims=True))


#: Parameters up to which ``M`` is factorised as a dense matrix (LAPACK) instead of SuperLU.
DENSE_PARAMS = 3000


@dataclass(frozen=True, eq=False)
class LSTDSums:
    """Additive sufficient statistics of the projected Bellman equation (any set of rows).

    Attributes
    ----------
    xtx : sparse matrix or ndarray of shape (n_params, n_params)
        ``sum_i w_i x_i x_i^T``.
    cross : sparse matrix or ndarray of shape (n_params, n_params)
        ``sum_i w_i x_i xbar'_i^T`` (zero when ``gamma`` is 0).
    b : ndarray of shape (n_params,)
        ``sum_i w_i x_i r_i``.

    Sums of disjoint sets of whole episodes add up (``+``): a panel's statistics are the sum of
    its chunks', so :func:`solve_lstd_sums` gives the in-memory fit from any chunking.
    """

    xtx: sp.spmatrix | NDArray[np.float64]
    cross: sp.spmatrix | NDArray[np.float64] | None
    b: NDArray[np.float64]

    def __add__(self, other: LSTDSums) -> LSTDSums:
        cross = (self.cross if other.cross is None else other.cross if self.cross is None
                 else self.cross + other.cross)
        return LSTDSums(xtx=self.xtx + other.xtx, cross=cross, b=self.b + other.b)

    @property
    def diag_xtx(self) -> NDArray[np.float64]:
        """Diagonal of ``X^T W X``, shape ``(n_params,)``."""
        d = self.xtx.diagonal()
        return np.asarray(d, dtype=np.float64).ravel()


def lstd_sums(x: sp.csr_matrix, x_pi: PiDesign, rewards: NDArray[np.float64],
              has_next: NDArray[np.bool_], gamma: float,
              weights: NDArray[np.float64] | None = None) -> LSTDSums:
    """Sufficient statistics ``X^T W X``, ``X_prev^T W X_pi`` and ``X^T W r`` of rows.

    Parameters are those of :func:`solve_lstd`. ``has_next`` must be False at the last row of
    every episode (so that the rows of a chunk of whole episodes never reach the next chunk).
    """
    xw = x if weights is None else sp.csr_matrix(sp.diags(weights) @ x)
    xt = sp.csr_matrix(xw.T)
    xtx = xt @ x
    cross = x_pi.cross(shift_prev(xw, has_next)) if gamma > 0 else None
    return LSTDSums(xtx=xtx, cross=cross, b=np.asarray(xt @ rewards))


#: Ridge, relative to the diagonal, that makes a singular stationary table's system solvable
#: (a closed loop without exit at gamma 1).
VANISHING_RIDGE = 1e-8
#: Relative residual ``||M theta - b|| / ||b||`` an iterative solve must reach to be used.
ITERATIVE_RTOL = 1e-11
#: Krylov iterations (GMRES, restarted every 100) before falling back to SuperLU.
ITERATIVE_MAXITER = 3000


def _jacobi_gmres(m: sp.csc_matrix
                  ) -> Callable[[NDArray[np.float64]], NDArray[np.float64] | None] | None:
    """A solver of ``m x = b`` by GMRES with a Jacobi (diagonal) preconditioner, or None.

    The stationary tabular system ``M = D - gamma C`` (``D`` the pairs' row counts, ``C`` the
    counts of their next pairs weighted by the target policy) is an M-matrix whose Jacobi
    iteration is value iteration, so preconditioned GMRES converges in tens of mat-vecs. A
    direct LU of it is another matter: the graph of a random sparse MDP has no small
    separators, so SuperLU's fill-in is close to dense (93 s for the 32,012 pairs of a
    5,000-state, 100-action panel; GMRES 0.06 s to a relative residual of 1e-12). The solver
    returns None for a column that does not reach :data:`ITERATIVE_RTOL` (the caller then
    factorises), and the whole solver is None without a positive diagonal.
    """
    from scipy.sparse.linalg import LinearOperator, gmres

    d = np.asarray(m.diagonal(), dtype=np.float64)
    if not np.all(d > 0):
        return None
    mr = sp.csr_matrix(m)
    prec = LinearOperator(m.shape, matvec=lambda v: v / d, dtype=np.float64)

    def solve(b: NDArray[np.float64]) -> NDArray[np.float64] | None:
        nb = float(np.linalg.norm(b))
        if nb == 0.0:
            return np.zeros_like(b, dtype=np.float64)
        x, _ = gmres(mr, b, M=prec, rtol=ITERATIVE_RTOL / 10, atol=0.0,
                     restart=min(100, m.shape[0]), maxiter=ITERATIVE_MAXITER // 100 + 1)
        ok = np.all(np.isfinite(x)) and np.linalg.norm(mr @ x - b) <= ITERATIVE_RTOL * nb
        return np.asarray(x, dtype=np.float64) if ok else None

    return solve


def _with_lu_fallback(m: sp.csc_matrix,
                      iterative: Callable[[NDArray[np.float64]], NDArray[np.float64] | None]
                      | None) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """``solve_t`` of ``m``: ``m^T z = g`` column by column.

    Each column by ``iterative`` (a solver of ``m^T``), SuperLU for the columns it does not
    solve (factorised once, on first need).

    ``m`` may be singular although GMRES solved ``m theta = b``: at gamma 1 a closed loop of
    pairs without exit and without reward (the target policy cycling among cells whose logged
    transitions never leave them) makes the system consistent, and GMRES from zero returns
    ``theta = 0`` on the loop, the limit of a vanishing ridge. The transposed system is then
    inconsistent for functionals that reach the loop (its occupancy under the target policy is
    unbounded), and SuperLU raises; those columns are solved with the same vanishing ridge
    (:data:`VANISHING_RIDGE` times the diagonal) that the stationary table's fit adds to a
    singular system, so ``theta`` and its adjoint are of one system.
    """
    from scipy.sparse.linalg import splu

    lu: list[Any] = []

    def direct(g: NDArray[np.float64]) -> NDArray[np.float64]:
        if not lu:
            try:
                lu.append(splu(m))
            except RuntimeError:  # exactly singular: see the docstring
                d = np.maximum(np.abs(np.asarray(m.diagonal(), dtype=np.float64)), 1.0)
                lu.append(splu(sp.csc_matrix(m + sp.diags(VANISHING_RIDGE * d))))
        return np.asarray(lu[0].solve(g, trans="T"))

    def solve_t(g: NDArray[np.float64]) -> NDArray[np.float64]:
        g2 = np.asarray(g, dtype=np.float64)
        cols = g2.reshape(g2.shape[0], -1)
        out = np.empty_like(cols)
        for j in range(cols.shape[1]):  # one solve per functional (a handful of estimators)
            z = None if iterative is None else iterative(cols[:, j])
            out[:, j] = direct(cols[:, j]) if z is None else z
        return out.reshape(g2.shape)

    return solve_t


@dataclass(frozen=True, eq=False)
class LSTDSolution:
    """``theta`` of a solved system and its transposed solve (no row arrays)."""

    theta: NDArray[np.float64]
    solve_t: Callable[[NDArray[np.float64]], NDArray[np.float64]]


def solve_lstd_sums(sums: LSTDSums, gamma: float, ridge: NDArray[np.float64]
                    ) -> LSTDSolution | None:
    """Solve ``(X^T X + diag(ridge) - gamma X_prev^T X_pi) theta = X^T r`` from sums.

    Up to :data:`DENSE_PARAMS` parameters by a dense LU; above, by Jacobi-preconditioned GMRES
    (:func:`_jacobi_gmres`), with SuperLU where GMRES does not reach
    :data:`ITERATIVE_RTOL`. Returns None when the matrix is singular or the result not finite.
    """
    from scipy.linalg import LinAlgWarning, lu_factor, lu_solve
    from scipy.sparse.linalg import splu

    n_par = sums.b.size
    xtx: Any = sums.xtx
    m: Any = (xtx + sp.diags(ridge)) if sp.issparse(xtx) else (np.asarray(xtx) + np.diag(ridge))
    if gamma > 0 and sums.cross is not None:
        cross: Any = sums.cross
        if sp.issparse(m) and not sp.issparse(cross):
            m = m.toarray() - gamma * np.asarray(cross)
        elif sp.issparse(cross) and not sp.issparse(m):
            m = np.asarray(m) - gamma * cross.toarray()
        else:
            m = m - gamma * cross
    b = sums.b
    # a non-finite system is reported as None before LAPACK sees it (factorised with
    # check_finite=False, OpenBLAS's getrf can pick out-of-range pivots on NaN input: OpenBLAS
    # issue 671)
    entries = m.data if sp.issparse(m) else np.asarray(m)
    if not (np.all(np.isfinite(entries)) and np.all(np.isfinite(b))):
        return None
    solve_t: Callable[[NDArray[np.float64]], NDArray[np.float64]]
    if n_par <= DENSE_PARAMS:
        md = m.toarray() if sp.issparse(m) else np.asarray(m)
        # a singular system is detected below and reported as None (the caller skips the
        # Q-model); scipy's LinAlgWarning about it would only repeat that
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", LinAlgWarning)
            lu = lu_factor(md, check_finite=False)
        if not np.all(np.isfinite(lu[0])) or np.any(np.diag(lu[0]) == 0):
            return None
        theta = lu_solve(lu, b, check_finite=False)

        def solve_t(g: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.asarray(lu_solve(lu, g, trans=1, check_finite=False))
    else:
        from scipy.sparse.csgraph import structural_rank

        mc = sp.csc_matrix(m)
        mc.eliminate_zeros()
        # a structurally singular system (e.g. a parameter no row touches) is None without
        # SuperLU, which prints BLAS errors ("On entry to DGEMV ...") to stdout before it
        # raises on such a matrix
        if structural_rank(mc) < n_par:
            return None
        iterative = _jacobi_gmres(mc)
        theta_it = None if iterative is None else iterative(b)
        if iterative is not None and theta_it is not None:
            theta = theta_it
            solve_t = _with_lu_fallback(mc, _jacobi_gmres(sp.csc_matrix(mc.T)))
        else:
            try:
                slu = splu(mc)
                theta = slu.solve(b)
            except RuntimeError:  # exactly singular
                return None

            def solve_t(g: NDArray[np.float64]) -> NDArray[np.float64]:
                return np.asarray(slu.solve(g, trans="T"))
    if not np.isfinite(theta).all():
        return None
    return LSTDSolution(theta=np.asarray(theta, dtype=np.float64), solve_t=solve_t)


def solve_lstd(x: sp.csr_matrix, x_pi: PiDesign, rewards: NDArray[np.float64],
               has_next: NDArray[np.bool_], gamma: float, ridge: NDArray[np.float64],
               weights: NDArray[np.float64] | None = None) -> LSTDFit | None:
    """Solve ``M theta = b`` by LU; None when ``M`` is singular or the result not finite.

    Parameters
    ----------
    x : csr_matrix of shape (n_steps, n_params)
    x_pi : PiDesign
    rewards : ndarray of shape (n_steps,)
    has_next : ndarray of shape (n_steps,)
        Whether row ``i + 1`` is row ``i``'s next step (not terminal, not the episode's end).
    gamma : float
    ridge : ndarray of shape (n_params,)
    weights : ndarray of shape (n_steps,), optional
        Row weights of the sums in ``M`` and ``b`` (e.g. 0 for held-out episodes).

    Returns
    -------
    LSTDFit or None
    """
    sol = solve_lstd_sums(lstd_sums(x, x_pi, rewards, has_next, gamma, weights), gamma, ridge)
    if sol is None:
        return None
    return LSTDFit(theta=sol.theta, x=x, x_pi=x_pi, has_next=has_next, gamma=float(gamma),
                   solve_t=sol.solve_t, ridge=ridge)
