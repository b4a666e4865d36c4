"""Average-reward LSTD: the differential Q-function and the long-run average reward ``eta``.

The Q-function bases of the mediation analysis have one block of features per action: the
design at the logged action is ``e_{A_i} (x) f_i`` and the expected next design
``sum_a w_i(a) e_a (x) f'_i``. With many actions both are wide (``n x A q``), so
:func:`lstd_blocks` never forms them: the first is a sparse matrix (``q`` entries per row,
:func:`action_design`), the second a :class:`MixedDesign` multiplied block of rows by block of
rows. Memory is ``O(n (q + A))`` for the designs plus the ``(A q)^2`` normal matrix, not
``O(n A q)`` per design; :func:`lstd_average` is the dense reference (same numbers to 1e-8).
Sparse features (a one-hot basis of a categorical state, :mod:`equicare.causal._basis`) stay
sparse: both designs then cost their non-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.utils import row_blocks

__all__ = ["LSTDFit", "MixedDesign", "action_design", "gram_entries", "level_action_design",
           "lstd_average", "lstd_blocks", "tikhonov_solve"]


def tikhonov_solve(A: NDArray[np.float64], b: NDArray[np.float64], lam: Any
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Solve the LSTD system ``A theta = b`` regularised on its equations (Tikhonov).

    ``theta = argmin |A theta - b|^2 + lam |theta[1:]|^2``, i.e. ``(A^T A + lam D) theta =
    A^T b`` with ``D = diag(0, 1, ..., 1)`` (``eta``, the first entry, is not penalised).
    ``A`` is not symmetric and, on a finite sample, can have negative eigenvalues: the plain
    ridge ``(A + lam' D) theta = b`` passes through a singular matrix where ``lam'`` meets one
    of them, and near it ``eta`` is any number (a 7-action dosing panel: the eta of one fold
    went -0.040, -0.263, +0.060 for ridges 1e-8, 1e-6, 1e-5; rewards all <= 0). ``A^T A +
    lam D`` is positive definite for every ``lam > 0``: it damps the directions whose singular
    value is below ``sqrt(lam)`` and leaves the well-determined ones as the exact solution.

    Batched: ``A`` of shape ``(..., p1, p1)``, ``b`` of shape ``(..., p1, k)``, ``lam`` a float
    or an array broadcasting against ``A``'s leading axes.

    Returns
    -------
    theta : ndarray of shape (..., p1, k)
    u : ndarray of shape (..., p1)
        ``A H^{-1} e_0`` (``H = A^T A + lam D``): ``eta_hat - eta ~ u' mean(z_i resid_i)``, the
        linearisation of ``eta`` in the equations' right-hand side.
    """
    At = np.swapaxes(A, -1, -2)
    H = At @ A
    p1 = A.shape[-1]
    diag = np.arange(1, p1)
    H[..., diag, diag] += np.asarray(lam, dtype=np.float64)[..., None]
    e0 = np.zeros((p1, 1))
    e0[0] = 1.0
    rhs = np.concatenate([At @ b, np.broadcast_to(e0, (*A.shape[:-2], p1, 1))], axis=-1)
    if A.ndim == 2:
        from scipy.linalg import cho_factor, cho_solve

        # H is symmetric: its transpose is the Fortran-ordered array factorised in place
        sol = cho_solve(cho_factor(H.T, overwrite_a=True, check_finite=False), rhs,
                        check_finite=False)
    else:
        sol = np.linalg.solve(H, rhs)
    k = b.shape[-1]
    return sol[..., :k], (A @ sol[..., k:])[..., 0]


def action_design(a: NDArray[np.int64], f: Any, n_actions: int) -> sp.csr_matrix:
    """Sparse ``e_a (x) f``: row ``i`` holds ``f[i]`` in the block of action ``a[i]``.

    The same matrix as :func:`equicare.causal._basis.action_tensor`, shape
    ``(n, n_actions * q)``, with ``n q`` stored entries (dense ``f``) or those of ``f`` (sparse).
    """
    n, q = f.shape
    if sp.issparse(f):
        f = sp.csr_matrix(f)
        row = np.repeat(np.arange(n), np.diff(f.indptr))
        cols = np.asarray(a, dtype=np.int64)[row] * q + f.indices
        return sp.csr_matrix((f.data.astype(np.float64), cols, f.indptr.astype(np.int64)),
                             shape=(n, n_actions * q))
    # indices in the dtype scipy keeps (int32 when they fit): no n x q int64 temporary
    itype = np.int32 if max(n * q, n_actions * q) < np.iinfo(np.int32).max else np.int64
    cols = (np.asarray(a, dtype=itype)[:, None] * q  # Python ints keep the dtype
            + np.arange(q, dtype=itype)[None, :]).ravel()
    return sp.csr_matrix((np.asarray(f, dtype=np.float64).ravel(), cols,
                          np.arange(0, n * q + 1, q, dtype=itype)), shape=(n, n_actions * q))


def level_action_design(a: NDArray[np.int64], f: NDArray[np.float64],
                        level: NDArray[np.int64], n_levels: int,
                        n_actions: int) -> sp.csr_matrix:
    """Sparse ``e_a (x) f (x) e_level``, the design of a discrete mediator's joint features.

    It is :func:`action_design` of ``combine(f, onehot(level))`` (index ``j * n_levels + level``
    in an action's block). Only the ``n q`` entries of dense ``f`` are stored, not the ``n q K``
    of the joint features (``K - 1`` of every ``K`` are zeros); the values share ``f``'s memory.

    Parameters
    ----------
    a, level : ndarray of shape (n,), int
        Action and mediator level (``0 .. n_levels - 1``) of each row.
    f : ndarray of shape (n, q)
    n_levels, n_actions : int

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n, n_actions * q * n_levels)
    """
    n, q = f.shape
    width = n_actions * q * n_levels
    itype = np.int32 if max(n * q, width) < np.iinfo(np.int32).max else np.int64
    start = np.asarray(a, dtype=itype) * (q * n_levels) + np.asarray(level, dtype=itype)
    cols = (start[:, None] + np.arange(q, dtype=itype)[None, :] * n_levels).ravel()
    return sp.csr_matrix((np.asarray(f, dtype=np.float64).ravel(), cols,
                          np.arange(0, n * q + 1, q, dtype=itype)), shape=(n, width))


def gram_entries(x: sp.csr_matrix) -> sp.coo_matrix:
    """``x^T x`` of an :func:`action_design` as its non-zero entries.

    The design stores every feature of a row, zeros included (``q`` entries per row). With a
    one-hot basis over hundreds of state levels nearly all are zeros, and the sparse product
    over the stored entries costs ``n q^2``: 137 of 186 s of a mediation on a 700-level panel
    (``q`` = 1,414). The explicit zeros are dropped first (a copy), so the product costs
    ``n`` times the squared non-zeros per row. The zero-free matrix is built from the non-zero
    entries only (not a copy of every stored entry, then pruned).
    """
    keep = np.flatnonzero(x.data)                   # positions of the non-zeros, in order
    if keep.size == x.nnz:
        return sp.coo_matrix(x.T @ x)
    indptr = np.searchsorted(keep, x.indptr)        # non-zeros before each row's start
    xs = sp.csr_matrix((x.data[keep], x.indices[keep], indptr), shape=x.shape)
    return sp.coo_matrix(xs.T @ xs)


@dataclass(frozen=True, eq=False)
class MixedDesign:
    """Rows ``w_i (x) f_i`` (action weights times features, action-major), never formed whole.

    Parameters
    ----------
    weights : ndarray of shape (n, A)
        E.g. a policy's probabilities at the next state.
    features : ndarray or scipy.sparse.csr_matrix of shape (n, q)
    """

    weights: NDArray[np.float64]
    features: Any

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, A * q)``."""
        n, A = self.weights.shape
        return n, A * int(self.features.shape[1])

    def block(self, sl: slice | NDArray[np.int64]) -> NDArray[np.float64]:
        """Rows ``sl`` (a slice or row indices) of the dense design."""
        f = self.features[sl]
        f = np.asarray(f.toarray() if sp.issparse(f) else f, dtype=np.float64)
        b = self.weights[sl][:, :, None] * f[:, None, :]
        out: NDArray[np.float64] = b.reshape(b.shape[0], -1)
        return out

    def toarray(self) -> NDArray[np.float64]:
        """The dense design (tests, small problems)."""
        return self.block(slice(None))

    def __matmul__(self, beta: NDArray[np.float64]) -> NDArray[np.float64]:
        A, q = self.weights.shape[1], self.features.shape[1]
        return np.asarray(np.einsum("na,na->n", self.weights,
                                    np.asarray(self.features @ beta.reshape(A, q).T)),
                          dtype=np.float64)

    def colsum(self) -> NDArray[np.float64]:
        """Column sums, shape ``(A * q,)``."""
        return np.asarray(np.asarray(self.features.T @ self.weights).T.ravel(),
                          dtype=np.float64)

    def subtract_cross(self, actions: NDArray[np.int64], features: NDArray[np.float64],
                       out: NDArray[np.float64], scale: float = 1.0) -> None:
        """``out -= scale * X^T @ self`` for ``X = action_design(actions, features, A)``.

        Block row ``a`` of the product only sums the rows with action ``a``, so it is built one
        action and one block of rows at a time: no temporary larger than a row block
        (:func:`~equicare.utils.row_blocks`) or ``q x A q``.

        Parameters
        ----------
        actions : ndarray of shape (n,), int
        features : ndarray of shape (n, q)
        out : ndarray of shape (A * q, A * q)
            Updated in place.
        scale : float
        """
        n, p = self.shape
        q = int(features.shape[1])
        order = np.argsort(actions, kind="stable")
        bounds = np.searchsorted(actions[order], np.arange(self.weights.shape[1] + 1))
        for a in range(self.weights.shape[1]):
            rows_a = order[bounds[a]:bounds[a + 1]]
            for sl in row_blocks(rows_a.size, p):
                rows = rows_a[sl]
                w = self.weights[rows][:, :, None] * self.features[rows][:, None, :]
                out[a * q:(a + 1) * q] -= scale * (features[rows].T @ w.reshape(rows.size, p))

    def subtract_cross_rows(self, x: sp.csr_matrix, out: NDArray[np.float64],
                            scale: float = 1.0) -> None:
        """:meth:`subtract_cross` for a sparse ``x`` whose rows each lie in one action's block.

        E.g. :func:`level_action_design`. Block row ``a`` of ``X^T @ self`` sums the rows of
        action ``a``: one action and one block of rows at a time, as :meth:`subtract_cross`.
        Each block of ``X``'s rows is made dense for the product, so the sums are those of
        :meth:`subtract_cross` on the dense features (a sparse product sums in another order:
        on a 358,000-row panel the G process's ``eta`` moved by 4e-9, relative).

        Raises
        ------
        ValueError
            A row of ``x`` has entries in the blocks of two actions.
        """
        n, p = self.shape
        q = p // self.weights.shape[1]
        stored = np.diff(x.indptr) > 0
        first = x.indices[x.indptr[:-1][stored]] // q
        if np.any(first != x.indices[x.indptr[1:][stored] - 1] // q):
            raise ValueError("x is not an action_design: a row has entries in the blocks of two "
                             "actions")
        actions = np.full(n, -1, dtype=np.int64)
        actions[stored] = first
        for a in range(self.weights.shape[1]):
            rows_a = np.flatnonzero(actions == a)
            for sl in row_blocks(rows_a.size, p):
                rows = rows_a[sl]
                xa = x[rows][:, a * q:(a + 1) * q].toarray()   # as subtract_cross: dense
                out[a * q:(a + 1) * q] -= scale * (xa.T @ self.block(rows))

    def subtract_cross_sparse(self, x: sp.csr_matrix, out: NDArray[np.float64],
                              scale: float = 1.0) -> None:
        """:meth:`subtract_cross` for sparse features and a sparse ``x`` (any ``n x A q``).

        Column block ``b`` of ``X^T @ self`` is ``X^T diag(w_b) F``, a product of sparse
        matrices: one action at a time, the cost of their non-zeros, no ``n x q`` dense array.
        """
        q = int(self.features.shape[1])
        xt = sp.csr_matrix(x.T)
        for b in range(self.weights.shape[1]):
            wb = self.weights[:, b]
            if not np.any(wb):
                continue
            prod = xt @ sp.csr_matrix(self.features.multiply(wb[:, None]))
            out[:, b * q:(b + 1) * q] -= scale * prod.toarray()


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

    i.e. ``Q(s, a) + eta = E[y + V(S') | s, a]`` projected on the basis. The system is solved
    regularised on its equations (:func:`tikhonov_solve`, penalty ``ridge`` times the squared
    mean diagonal of ``x' x / n``), which removes the constant direction Q is not identified in
    and damps the near-singular ones without making the system singular.

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
    sol, u = tikhonov_solve(A, b[:, None], ridge * scale * scale)
    theta = sol[:, 0]
    resid = y - d @ theta
    return LSTDFit(eta=float(theta[0]), beta=theta[1:], influence=(z @ u) * resid)


def lstd_blocks(x: sp.csr_matrix, x_next: MixedDesign, y: NDArray[np.float64],
                ridge: float = 1e-6) -> list[LSTDFit]:
    """:func:`lstd_average` with the designs kept sparse / blockwise (module docstring).

    The equations of several (pseudo-)rewards on the same designs share one factorisation.

    Parameters
    ----------
    x : scipy.sparse.csr_matrix of shape (n, p)
        Basis at the logged rows (:func:`action_design`, of sparse features when
        ``x_next.features`` is sparse, or :func:`level_action_design`).
    x_next : MixedDesign of shape (n, p)
        Expected next basis.
    y : ndarray of shape (n, k)
        One (pseudo-)reward per column.
    ridge : float

    Returns
    -------
    list of LSTDFit
        One per column of ``y``: the solution of :func:`lstd_average` on the dense designs
        (to rounding).
    """
    n, p = x.shape
    n_actions = int(x_next.weights.shape[1])
    q = p // max(n_actions, 1)
    sparse = sp.issparse(x_next.features)
    if x_next.shape != (n, p):
        raise ValueError(f"x ({x.shape}, {x.nnz} entries) is not an action_design matching "
                         f"x_next {x_next.shape}")
    Y = np.asarray(y, dtype=np.float64).reshape(n, -1)
    sx = np.asarray(x.sum(axis=0)).ravel()
    A = np.zeros((p + 1, p + 1))
    A[0, 0] = 1.0
    A[0, 1:] = (sx - x_next.colsum()) / n
    A[1:, 0] = sx / n
    gram = gram_entries(x)  # block diagonal: added entry by entry, never dense
    np.add.at(A, (gram.row + 1, gram.col + 1), gram.data / n)
    if sparse:
        x_next.subtract_cross_sparse(x, A[1:, 1:], 1.0 / n)
    elif x.nnz != n * q:        # not every feature of a row stored: level_action_design
        x_next.subtract_cross_rows(x, A[1:, 1:], 1.0 / n)
    else:
        actions = x.indices.reshape(n, q)[:, 0] // max(q, 1)
        x_next.subtract_cross(actions, x.data.reshape(n, q), A[1:, 1:], 1.0 / n)
    b = np.vstack([Y.mean(axis=0, keepdims=True), np.asarray(x.T @ Y) / n])
    scale = max(float((x.data ** 2).sum()) / (n * max(p, 1)), 1e-12)
    theta, u = tikhonov_solve(A, b, ridge * scale * scale)
    del A
    zu = u[0] + x @ u[1:]
    fits = []
    for j in range(Y.shape[1]):
        beta = theta[1:, j]
        resid = Y[:, j] - theta[0, j] - (x @ beta - x_next @ beta)
        fits.append(LSTDFit(eta=float(theta[0, j]), beta=beta, influence=zu * resid))
    return fits
