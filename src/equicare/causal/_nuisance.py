"""Nuisance models of dynamic mediation: reward mean, mediator law and behaviour policy.

Each model is pluggable with a scikit-learn estimator (fitted on raw features: states, one-hot
action, mediator values) or uses a default built on the state basis ``phi`` (saturated, hence
correct, for discrete states). All predictions are vectorised over rows, actions and mediator
nodes; the estimators only need:

* ``r(S, a, M)`` for every action at the observed mediator, and ``r(S, a, m)`` at the mediator
  nodes of every action (to integrate over ``p_m``);
* ``p_m(M | S, a)`` at the observed mediator for every action, and the expected mediator
  encoding ``E[enc(M) | S, a]`` at states and next states;
* ``pi_b(A | S)`` at the logged action.

The default reward and mediator models use the design ``e_a (x) h`` (one block of features per
action). Its Gram matrix and logistic Hessian are block diagonal by action, so they are fitted
one ``q x q`` block per action (:func:`block_ridge_fit`, :class:`BlockNewtonLogit`) and never
form the dense ``(n, A*q)`` design or an ``(A*q)^2`` matrix: memory ``O(A q^2 + n q)`` and time
``O(n q^2 + A q^3)``, the same numbers as the dense fit. Predictions for every action are taken
block by block, in row chunks of bounded size. A sparse basis (``scipy.sparse``, the one-hot codes
of a categorical state) stays sparse: Gram matrices, Hessians and predictions cost its non-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

from equicare.causal._basis import MediatorEncoder, combine, dense_rows, sqsum

__all__ = ["RewardModel", "MediatorModel", "BehaviorModel", "NewtonLogit", "BlockNewtonLogit",
           "ridge_fit", "block_ridge_fit"]

_CHUNK = 8192
#: Floats per intermediate array of the row-chunked predictions (32 MB).
_BUDGET = 1 << 22
#: Above this many coefficients (or ``n (K-1)^2`` floats of Hessian weights above ``_BUDGET``)
#: NewtonLogit solves each Newton step by conjugate gradients on Hessian-vector products instead
#: of forming the (p (K-1))^2 Hessian.
NEWTON_MAX_PARAMS = 1024
#: Pseudo-observations of each mediator level per basis function in the default discrete
#: mediator model (Jeffreys' Dirichlet(1/2) prior; see :class:`BlockNewtonLogit`).
MEDIATOR_PRIOR = 0.5


def _exact_newton(n: int, p: int, k1: int) -> bool:
    """Form the Hessian (small problems) or use conjugate gradients (many classes)."""
    return p * k1 <= NEWTON_MAX_PARAMS and n * k1 * k1 <= _BUDGET


def ridge_fit(X: NDArray[np.float64], y: NDArray[np.float64], ridge: float = 1e-6
              ) -> NDArray[np.float64]:
    """Ridge least squares ``(X'X + lam I)^-1 X'y`` with ``lam`` relative to the mean diagonal."""
    G = X.T @ X
    lam = ridge * max(float(np.trace(G)) / max(G.shape[0], 1), 1e-12)
    return np.linalg.solve(G + lam * np.eye(G.shape[0]), X.T @ y)


def action_groups(a: NDArray[np.int64], n_actions: int) -> list[NDArray[np.int64]]:
    """Rows of each action ``0 .. n_actions - 1`` (in row order), a list of index arrays."""
    order = np.argsort(a, kind="stable")
    bounds = np.searchsorted(a[order], np.arange(n_actions + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n_actions)]


def block_ridge_fit(h: Any, a: NDArray[np.int64], n_actions: int,
                    y: NDArray[np.float64], ridge: float = 1e-6) -> NDArray[np.float64]:
    """:func:`ridge_fit` on the design ``e_a (x) h`` without forming it.

    ``X'X`` of ``X = action_tensor(a, h, n_actions)`` is block diagonal (one ``q x q`` block per
    action) and ``trace(X'X) = |h|^2``, so each action's block is solved on its own rows with the
    same ridge; an action without rows gets zero coefficients, as in the dense solve.

    Parameters
    ----------
    h : ndarray or scipy.sparse matrix of shape (n, q)
    a : ndarray of shape (n,), int
    n_actions : int
    y : ndarray of shape (n,) or (n, m)
    ridge : float

    Returns
    -------
    ndarray of shape (n_actions, q) or (n_actions, q, m)
        ``ridge_fit(action_tensor(a, h, n_actions), y).reshape(n_actions, q, ...)``.
    """
    n, q = h.shape
    y2 = y.reshape(n, -1)
    G = np.zeros((n_actions, q, q))
    b = np.zeros((n_actions, q, y2.shape[1]))
    for k, rows in enumerate(action_groups(a, n_actions)):
        if rows.size:
            hk = h[rows]
            G[k] = dense_rows(hk.T @ hk)
            b[k] = np.asarray(hk.T @ y2[rows])
    lam = ridge * max(sqsum(h) / max(n_actions * q, 1), 1e-12)
    G += lam * np.eye(q)
    coef = np.asarray(np.linalg.solve(G, b), dtype=np.float64)
    return coef.reshape(n_actions, q, *y.shape[1:])


def _onehot(a: NDArray[np.int64], n: int) -> NDArray[np.float64]:
    return np.eye(n)[a]


def softmax0(eta: NDArray[np.float64]) -> NDArray[np.float64]:
    """Softmax of ``[0, eta]`` over the last axis: (..., K-1) -> (..., K)."""
    z = np.concatenate([np.zeros((*eta.shape[:-1], 1)), eta], axis=-1)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def _logit_probs(X: Any, B: NDArray[np.float64]) -> NDArray[np.float64]:
    """Softmax of ``[0, X @ B]``: (n, p) x (p, K-1) -> (n, K)."""
    return softmax0(np.asarray(X @ B))


def _dot_actions(phi: Any, coef: NDArray[np.float64]) -> NDArray[np.float64]:
    """``phi @ coef[a]`` for every action: (n, p) x (A, p, k) -> (n, A, k)."""
    if sp.issparse(phi):
        return np.stack([np.asarray(phi @ coef[a]) for a in range(coef.shape[0])], axis=1)
    return np.asarray(np.einsum("np,apk->nak", phi, coef), dtype=np.float64)


def _dot_rows(phi: Any, coef: NDArray[np.float64], a: NDArray[np.int64]) -> NDArray[np.float64]:
    """``phi_i @ coef[a_i]`` of every row: (n, p) x (A, p, k) -> (n, k)."""
    if not sp.issparse(phi):
        return np.asarray(np.einsum("np,npm->nm", phi, coef[a]), dtype=np.float64)
    out = np.empty((phi.shape[0], coef.shape[2]))
    for k, rows in enumerate(action_groups(a, coef.shape[0])):
        if rows.size:
            out[rows] = np.asarray(phi[rows] @ coef[k])
    return out


def _leverages(X: Any) -> NDArray[np.float64]:
    """``x_i' (X'X)^+ x_i`` of every row (rows in chunks of bounded size when sparse)."""
    if not sp.issparse(X):
        return np.asarray(((X @ np.linalg.pinv(X.T @ X, hermitian=True)) * X).sum(axis=1),
                          dtype=np.float64)
    X = sp.csr_matrix(X)
    G = np.linalg.pinv(dense_rows(X.T @ X), hermitian=True)
    out = np.empty(X.shape[0])
    step = max(1, _BUDGET // max(X.shape[1], 1))
    for lo in range(0, X.shape[0], step):
        xc = X[lo:lo + step]
        out[lo:lo + step] = np.asarray(xc.multiply(np.asarray(xc @ G)).sum(axis=1)).ravel()
    return out


def _weighted_gram(X: Any, w: NDArray[np.float64]) -> NDArray[np.float64]:
    """``X' diag(w) X`` (p, p), a matrix product (BLAS, or sparse when ``X`` is sparse)."""
    if sp.issparse(X):
        return dense_rows(X.multiply(w[:, None]).T @ X)
    out: NDArray[np.float64] = (X * w[:, None]).T @ X
    return out


def _newton_step(X: Any, P: NDArray[np.float64], g: NDArray[np.float64],
                 lam: float) -> NDArray[np.float64]:
    """Newton step ``H^-1 g`` of multinomial logistic regression (exact Hessian).

    ``X`` (n, p) dense or sparse, ``P`` (n, K-1) probabilities of the non-reference classes,
    gradient ``g`` (p, K-1); returns (p, K-1).
    """
    p, k1 = g.shape
    # Hessian blocks X' diag(P_j (delta_jk - P_k)) X, each a matrix product (BLAS): a
    # three-operand einsum loops in C without BLAS, 5 s a step at n = 12,000, p = 707
    H4 = np.empty((p, k1, p, k1))
    for j in range(k1):
        for k in range(j, k1):
            blk = _weighted_gram(X, P[:, j] * (float(j == k) - P[:, k]))
            H4[:, j, :, k] = blk
            H4[:, k, :, j] = blk
    H = H4.reshape(p * k1, p * k1)
    H += lam * np.eye(p * k1)
    return np.asarray(np.linalg.solve(H, g.reshape(-1)).reshape(p, k1), dtype=np.float64)


def _newton_cg_step(X: Any, P: NDArray[np.float64], g: NDArray[np.float64],
                    lam: float) -> NDArray[np.float64]:
    """Newton step ``H^-1 g`` by conjugate gradients on Hessian-vector products.

    ``H V = X' (P * U - P * sum_j(P_j U_j)) + lam V`` with ``U = X V``: memory ``O(n K)``,
    never the ``(p (K-1))^2`` Hessian. Solved to a relative residual of 1e-12 (of the
    unpreconditioned residual, as before).

    Preconditioned by the Hessian's class-diagonal blocks ``X' diag(P_j (1 - P_j)) X + lam I``
    (block Jacobi: the cross-class terms left out), inverted once per step, when the
    ``(K-1) p^2`` floats fit in :data:`_BUDGET`: they undo the basis's collinearity (an
    intercept with one-hot codes and splines) that the plain iteration fought. On a
    25-action behaviour model (85,763 rows, 53 features) the first step took 196
    Hessian-vector products, now 15 (forming the blocks costs about 13 of them); the steps
    agree to 5e-8 (4e-9 in the linear predictors).
    """
    from scipy.sparse.linalg import LinearOperator, cg

    p, k1 = g.shape
    pre = None
    if k1 * p * p <= _BUDGET:
        W = P * (1.0 - P)
        inv = np.linalg.inv(np.stack([_weighted_gram(X, W[:, j]) for j in range(k1)])
                            + lam * np.eye(p))                          # (K-1, p, p)

        def jacobi(r: NDArray[np.float64]) -> NDArray[np.float64]:
            z: NDArray[np.float64] = np.matmul(inv, r.reshape(p, k1).T[:, :, None])[:, :, 0]
            return z.T.reshape(-1)

        pre = LinearOperator((p * k1, p * k1), matvec=jacobi, dtype=np.float64)

    def hv(v: NDArray[np.float64]) -> NDArray[np.float64]:
        V = v.reshape(p, k1)
        U = np.asarray(X @ V)
        PU = P * U
        out: NDArray[np.float64] = (np.asarray(X.T @ (PU - P * PU.sum(axis=1, keepdims=True)))
                                    + lam * V).reshape(-1)
        return out

    op = LinearOperator((p * k1, p * k1), matvec=hv, dtype=np.float64)
    step, _ = cg(op, g.reshape(-1), rtol=1e-12, atol=0.0, maxiter=10 * p * k1, M=pre)
    out: NDArray[np.float64] = step.reshape(p, k1)
    return out


def newton_objective(eta: NDArray[np.float64], Y: NDArray[np.float64], B: NDArray[np.float64],
                     lam: Any, w: NDArray[np.float64] | None = None) -> Any:
    """Objective of the Newton logits, ``sum_i w_i lse_i - sum_ik Y_ik eta_ik + lam |B|^2 / 2``.

    Batched over leading axes (the refit's replicates): linear predictors ``eta`` (..., n, K-1)
    of the non-reference classes (the reference class's is 0), their (pseudo-)counts ``Y``
    (..., n, K-1), coefficients ``B`` (..., p, K-1), penalty ``lam`` (scalar or (...)) and the
    total count ``w`` (..., n) of each row (default 1). Returns a float or an array of shape
    (...). Its gradient in ``B`` is ``X' (w P - Y) + lam B``, the Newton steps' gradient.
    """
    top = np.maximum(eta.max(axis=-1), 0.0)                     # the reference class's 0
    lse = top + np.log(np.exp(-top) + np.exp(eta - top[..., None]).sum(axis=-1))
    if w is not None:
        lse = w * lse
    return (lse.sum(axis=-1) - (eta * Y).sum(axis=(-2, -1))
            + 0.5 * lam * (B * B).sum(axis=(-2, -1)))


def _penalised_nll(X: Any, B: NDArray[np.float64], Y: NDArray[np.float64], lam: float
                   ) -> float:
    """Objective of :class:`NewtonLogit`: ``-loglik + lam |B|^2 / 2``.

    ``X`` (n, p), coefficients ``B`` (p, K-1) of the non-reference classes, their indicators
    ``Y`` (n, K-1).
    """
    return float(newton_objective(np.asarray(X @ B), Y, B, lam))


def newton_rises(new: Any, old: Any) -> Any:
    """Whether a Newton step raised the objective: the divergence guard of the Newton logits.

    Newton's method on a logistic likelihood converges only near the optimum; on a
    near-collinear basis with rare classes its full steps can leave that region and grow
    without bound (coefficients of 1e7, probabilities off by a factor of 600). A step for
    which this is True is not taken: the fit (or block, or replicate) stops at its best
    iterate. Elementwise for arrays; rounding (1e-10 relative) is not a rise.
    """
    return new > old + 1e-10 * (1.0 + np.abs(old))


def _fit_clone(est: Any, X: NDArray[np.float64], y: NDArray[Any]) -> Any:
    from sklearn.base import clone

    return clone(est).fit(X, y)


def _proba(model: Any, X: NDArray[np.float64], n_classes: int) -> NDArray[np.float64]:
    """``predict_proba`` mapped onto classes ``0 .. n_classes - 1`` (missing classes get 0)."""
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    out = np.zeros((X.shape[0], n_classes))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = p
    return out


class NewtonLogit(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Multinomial logistic regression by Newton's method with a small ridge (the default).

    Features are used as given (the bases carry their own intercept). A scikit-learn-like
    object: ``fit``, ``predict_proba``, ``classes_``. With more than
    :data:`NEWTON_MAX_PARAMS` coefficients or many classes (e.g. a behaviour policy over
    hundreds of actions) each Newton step is solved by conjugate gradients on Hessian-vector
    products, so memory stays ``O(n K + p K)`` instead of ``O(n K^2 + p^2 K^2)``.

    A Newton step that raises the penalised negative log-likelihood ends the fit at the best
    iterate, with ``converged_ = False``: on a near-collinear basis with rare classes (a
    behaviour policy over 17 sparse outreach actions on a spline and one-hot basis) the full
    steps grew to 1e7 and the fitted propensities were off by a factor of about 600 (mean
    ``|log(fitted / true)|`` 6.4), after 50 steps; the best iterate is off by 0.35.

    Parameters
    ----------
    ridge : float
        Penalty ``ridge * n * |beta|^2 / 2`` (relative to the sample size).
    max_iter : int

    Attributes
    ----------
    coef_ : ndarray of shape (p, n_classes - 1)
    converged_ : bool
        False when the fit stopped at a step that would raise its objective, or after
        ``max_iter`` steps.
    """

    def __init__(self, ridge: float = 1e-6, max_iter: int = 50) -> None:
        self.ridge = ridge
        self.max_iter = max_iter

    def fit(self, X: Any, y: NDArray[Any]) -> NewtonLogit:
        """Fit on features (n, p), dense or sparse, and labels (n,)."""
        self.classes_, yi = np.unique(y, return_inverse=True)
        n, p = X.shape
        K = self.classes_.size
        self.coef_ = np.zeros((p, max(K - 1, 0)))
        self.converged_ = True
        if K < 2:
            return self
        Y = np.eye(K)[yi][:, 1:]
        lam = self.ridge * n * max(sqsum(X) / (n * p), 1e-12)
        solve = _newton_step if _exact_newton(n, p, K - 1) else _newton_cg_step
        B = self.coef_
        eta = np.zeros((n, K - 1))                                    # X @ B, reused
        loss = newton_objective(eta, Y, B, lam)
        self.converged_ = False
        for _ in range(self.max_iter):
            P = softmax0(eta)[:, 1:]                                  # (n, K-1)
            g = np.asarray(X.T @ (P - Y)) + lam * B                   # (p, K-1)
            step = solve(X, P, g, lam)
            trial = B - step
            eta_trial = np.asarray(X @ trial)
            new = newton_objective(eta_trial, Y, trial, lam)
            if newton_rises(new, loss):
                # Newton left its region of convergence (a near-collinear basis, rare
                # classes): its next steps grew to 1e7 and the fit diverged; keep the best
                break
            B, loss, eta = trial, new, eta_trial
            if np.abs(step).max() < 1e-8:
                self.converged_ = True
                break
        self.coef_ = B
        return self

    @staticmethod
    def _probs(X: Any, B: NDArray[np.float64]) -> NDArray[np.float64]:
        return _logit_probs(X, B)

    def predict_proba(self, X: Any) -> NDArray[np.float64]:
        """Class probabilities, shape (n, n_classes)."""
        if self.classes_.size < 2:
            return np.ones((X.shape[0], 1))
        return self._probs(X, self.coef_)


def _default_logistic() -> Any:
    return NewtonLogit()


class BlockNewtonLogit:
    r""":class:`NewtonLogit` on the design ``e_a (x) phi`` without forming it.

    The features of a row are ``phi`` in the block of its action, so the log-likelihood, its
    gradient and Hessian split into one block per action; the penalty ``lam`` is that of the
    dense fit (``ridge * n * |phi|^2 / (n * A * p)``) and all blocks take their Newton steps
    together until the largest step is below 1e-8: with ``prior=0`` the same iterates as
    ``NewtonLogit().fit(action_tensor(a, phi, A), y)``.

    With ``prior = alpha > 0`` each row also carries ``alpha * h_i`` pseudo-observations of
    every class, where ``h_i = phi_i' (Phi_a' Phi_a)^+ phi_i`` is the leverage of the row in the
    block of its action (the fit maximises the concave
    ``sum_i sum_k (y_ik + alpha h_i) log p_k(x_i)``). The leverages of a block sum to its rank,
    so the prior is worth ``alpha`` observations of each class per basis function. For a
    saturated basis (one-hot states: ``h_i = 1 / n_{s,a}``) the fitted probabilities are the
    Dirichlet(``alpha``) posterior modes in the logit scale of every (state, action) cell,

    .. math::

        \hat p(k \mid s, a) = \frac{n_{s,a,k} + \alpha}{n_{s,a} + K \alpha},

    and ``alpha = 1/2`` (Jeffreys' prior) is Firth's (1993) bias-reduced estimate, the
    standard remedy for separated logistic fits (R ``logistf``, ``brglm2``): a class never
    seen in a cell gets ``1 / (2 n_{s,a} + K)`` instead of a probability that tends to 0.

    The prior bounds the optimum, not Newton's path to it: with many mediator levels, some
    rare, on a near-collinear basis (an intercept, one-hot clinic codes and splines) the full
    steps left the region of convergence as :class:`NewtonLogit`'s did (objective 2e4 -> 2e11,
    coefficients 1.4e7). A block whose step would raise its objective (:func:`newton_rises`)
    stops at its best iterate and ``converged_`` is False; the other blocks go on.

    Parameters
    ----------
    n_actions : int
    ridge : float
    max_iter : int
    prior : float
        Pseudo-observations of each class per basis function (0: maximum likelihood).

    Attributes
    ----------
    coef_ : ndarray of shape (n_actions, p, n_classes - 1)
    converged_ : bool
        False when a block stopped at a step that would raise its objective, or after
        ``max_iter`` steps.

    References
    ----------
    Firth, D. (1993). Bias reduction of maximum likelihood estimates. Biometrika 80, 27-38.
    """

    def __init__(self, n_actions: int, ridge: float = 1e-6, max_iter: int = 50,
                 prior: float = 0.0) -> None:
        self.n_actions, self.ridge, self.max_iter = n_actions, ridge, max_iter
        self.prior = prior

    def fit(self, phi: Any, a: NDArray[np.int64], y: NDArray[Any],
            n_classes: int | None = None) -> BlockNewtonLogit:
        """Fit on basis (n, p), dense or sparse, actions (n,) and labels (n,).

        ``n_classes`` (labels ``0 .. n_classes - 1``): every class gets the prior, including
        classes absent from ``y``; default: the classes in ``y``.
        """
        if n_classes is None:
            self.classes_, yi = np.unique(y, return_inverse=True)
        else:
            self.classes_, yi = np.arange(n_classes), np.asarray(y, dtype=np.int64)
        n, p = phi.shape
        A, K = self.n_actions, self.classes_.size
        B = np.zeros((A, p, max(K - 1, 0)))
        self.coef_ = B
        self.converged_ = True
        if K < 2:
            return self
        Y = np.eye(K)[yi]                                          # (n, K) class counts
        w = np.ones(n)                                             # total count of each row
        groups = [(k, rows) for k, rows in enumerate(action_groups(a, A)) if rows.size]
        if self.prior > 0:
            h = np.empty(n)
            for _, rows in groups:
                h[rows] = _leverages(phi[rows])
            Y = Y + self.prior * h[:, None]
            w = w + K * self.prior * h
        Y = Y[:, 1:]
        lam = self.ridge * n * max(sqsum(phi) / (n * A * p), 1e-12)
        solve = _newton_step if _exact_newton(max(r.size for _, r in groups), p,
                                              K - 1) else _newton_cg_step
        # each block's X @ B[k] (reused) and objective; a block stops at a rise (the guard)
        eta = {k: np.zeros((rows.size, K - 1)) for k, rows in groups}
        loss = {k: newton_objective(eta[k], Y[rows], B[k], lam, w[rows]) for k, rows in groups}
        stopped: set[int] = set()
        self.converged_ = False
        for _ in range(self.max_iter):
            step = np.zeros_like(B)                  # blocks without rows: gradient 0, step 0
            for k, rows in groups:
                if k in stopped:
                    continue
                X, wk = phi[rows], w[rows]
                P = softmax0(eta[k])[:, 1:]
                # row weights w: Hessian (sqrt(w) X)' W (sqrt(w) X), gradient X'(w P - Y)
                Xw = (sp.csr_matrix(X.multiply(np.sqrt(wk)[:, None])) if sp.issparse(X)
                      else X * np.sqrt(wk)[:, None])
                st = solve(Xw, P, np.asarray(X.T @ (wk[:, None] * P - Y[rows]))
                           + lam * B[k], lam)
                eta_trial = np.asarray(X @ (B[k] - st))
                new = newton_objective(eta_trial, Y[rows], B[k] - st, lam, wk)
                if newton_rises(new, loss[k]):
                    stopped.add(k)
                    continue
                step[k], eta[k], loss[k] = st, eta_trial, new
            B = B - step
            if np.abs(step).max() < 1e-8:
                self.converged_ = not stopped
                break
        self.coef_ = B
        return self

    def predict_proba_all(self, phi: Any, n_classes: int) -> NDArray[np.float64]:
        """Probabilities of classes ``0 .. n_classes - 1`` under every action, (n, A, n_classes)."""
        n, A = phi.shape[0], self.n_actions
        cls = np.asarray(self.classes_, dtype=np.int64)
        if cls.size > 1 and np.array_equal(cls, np.arange(n_classes)):  # no scatter
            return softmax0(_dot_actions(phi, self.coef_))
        out = np.zeros((n, A, n_classes))
        if cls.size < 2:
            out[:, :, cls] = 1.0
            return out
        out[:, :, cls] = softmax0(_dot_actions(phi, self.coef_))
        return out


@dataclass
class BehaviorModel:
    """``pi_b(a | s)``: a classifier of the action on the state.

    Parameters
    ----------
    estimator : scikit-learn classifier or None
        Fitted on raw states; default: logistic regression on the state basis.
    """

    estimator: Any = None
    n_actions: int = 2
    model_: Any = None

    def fit(self, states: NDArray[np.float64], phi: NDArray[np.float64],
            actions: NDArray[np.int64]) -> BehaviorModel:
        """Fit on rows (states (n, d), basis (n, p), actions (n,))."""
        X = states if self.estimator is not None else phi
        est = self.estimator if self.estimator is not None else _default_logistic()
        if np.unique(actions).size == 1:
            from sklearn.dummy import DummyClassifier

            est = DummyClassifier(strategy="prior")
        self.model_ = _fit_clone(est, X, actions)
        return self

    def probs(self, states: NDArray[np.float64], phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """``pi_b(. | S)``, shape (n, n_actions)."""
        X = states if self.estimator is not None else phi
        return _proba(self.model_, X, self.n_actions)


@dataclass
class MediatorModel:
    """``p_m(m | s, a)``: a classifier (discrete mediators) or a Gaussian (continuous).

    Continuous mediators: mean by regression on (state, action), one residual covariance; the
    expectation over the mediator uses Gauss-Hermite nodes (one mediator) or a fixed
    quasi-random normal design (several).

    Parameters
    ----------
    encoder : MediatorEncoder
    estimator : scikit-learn classifier / regressor or None
        Fitted on ``[states, one-hot action]``; default: logistic (discrete) or ridge
        (continuous) on ``e_a (x) phi``.
    n_nodes : int
        Quadrature nodes for continuous mediators.
    """

    encoder: MediatorEncoder
    estimator: Any = None
    n_actions: int = 2
    n_nodes: int = 9
    ridge: float = 1e-6
    model_: Any = None
    chol_: NDArray[np.float64] | None = None
    nodes_z_: NDArray[np.float64] | None = None
    nodes_w_: NDArray[np.float64] | None = None

    def _X(self, states: NDArray[np.float64], a: NDArray[np.int64]) -> NDArray[np.float64]:
        """Features of a scikit-learn estimator: ``[states, one-hot action]``."""
        return np.hstack([states, _onehot(a, self.n_actions)])

    def fit(self, states: NDArray[np.float64], phi: NDArray[np.float64],
            actions: NDArray[np.int64], mediators: NDArray[np.float64]) -> MediatorModel:
        """Fit on rows (states (n, d), basis (n, p), actions (n,), mediators (n, m))."""
        if self.encoder.discrete:
            y = self.encoder.codes(mediators)
            if self.estimator is None:
                self.model_ = BlockNewtonLogit(self.n_actions, prior=MEDIATOR_PRIOR).fit(
                    phi, actions, y, self.encoder.n_levels)
            else:
                self.model_ = _fit_clone(self.estimator, self._X(states, actions), y)
            return self
        if self.estimator is not None:
            X = self._X(states, actions)
            self.model_ = _fit_clone(self.estimator, X, mediators if mediators.shape[1] > 1
                                     else mediators[:, 0])
            fitted = self._predict_rows(X)
        else:
            self.model_ = block_ridge_fit(phi, actions, self.n_actions, mediators,
                                          self.ridge)                 # (A, p, m)
            fitted = _dot_rows(phi, self.model_, actions)
        resid = mediators - fitted
        cov = np.atleast_2d(np.cov(resid, rowvar=False)) + 1e-9 * np.eye(mediators.shape[1])
        self.chol_ = np.linalg.cholesky(cov).astype(np.float64, copy=False)
        m = mediators.shape[1]
        if m == 1:
            z, w = np.polynomial.hermite_e.hermegauss(self.n_nodes)
            self.nodes_z_, self.nodes_w_ = z[:, None], w / w.sum()
        else:
            from scipy.stats import norm, qmc

            u = qmc.Sobol(d=m, scramble=True, seed=12345).random(32)
            self.nodes_z_ = norm.ppf(np.clip(u, 1e-6, 1 - 1e-6))
            self.nodes_w_ = np.full(32, 1.0 / 32)
        return self

    def _predict_rows(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.asarray(self.model_.predict(X), dtype=np.float64)
        return out.reshape(X.shape[0], -1)

    def probs(self, states: NDArray[np.float64], phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Discrete: ``p_m(k | S, a)`` for every action and level, shape (n, A, K)."""
        n, A, K = states.shape[0], self.n_actions, self.encoder.n_levels
        if self.estimator is None:
            return self.model_.predict_proba_all(phi, K)
        out = np.empty((n, A, K))
        for a in range(A):
            out[:, a] = _proba(self.model_, self._X(states, np.full(n, a)), K)
        return out

    def means(self, states: NDArray[np.float64], phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Continuous: ``E[M | S, a]`` for every action, shape (n, A, m)."""
        n, A = states.shape[0], self.n_actions
        if self.estimator is None:
            return _dot_actions(phi, self.model_)
        return np.stack([self._predict_rows(self._X(states, np.full(n, a)))
                         for a in range(A)], axis=1)

    def nodes(self, states: NDArray[np.float64], phi: NDArray[np.float64]
              ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Mediator nodes and weights integrating ``p_m(. | S, a)``.

        Returns
        -------
        nodes : ndarray of shape (n, A, K, m)
        weights : ndarray of shape (n, A, K)
        """
        n, A = states.shape[0], self.n_actions
        if self.encoder.discrete:
            K = self.encoder.n_levels
            lv = np.broadcast_to(self.encoder.levels, (n, A, K, self.encoder.levels.shape[1]))
            return lv, self.probs(states, phi)
        assert self.chol_ is not None and self.nodes_z_ is not None and self.nodes_w_ is not None
        mu = self.means(states, phi)
        offs = self.nodes_z_ @ self.chol_.T                       # (K, m)
        nodes = mu[:, :, None, :] + offs[None, None, :, :]
        return nodes, np.broadcast_to(self.nodes_w_, (n, A, self.nodes_w_.size))

    def expected_encoding(self, states: NDArray[np.float64], phi: NDArray[np.float64]
                          ) -> NDArray[np.float64]:
        """``E[enc(M) | S, a]`` for every action, shape (n, A, q)."""
        if self.encoder.discrete:
            return self.probs(states, phi)
        nodes, w = self.nodes(states, phi)
        n, A, K = w.shape
        q = self.encoder.encode(nodes[:1, :1, :1]).shape[-1]
        out = np.empty((n, A, q))
        step = max(1, _BUDGET // max(A * K * q, 1))
        for lo in range(0, n, step):                     # rows in chunks of bounded size
            sl = slice(lo, min(n, lo + step))
            out[sl] = np.einsum("nak,nakq->naq", w[sl], self.encoder.encode(nodes[sl]))
        return out

    def density(self, states: NDArray[np.float64], phi: NDArray[np.float64],
                mediators: NDArray[np.float64]) -> NDArray[np.float64]:
        """``p_m(M_i | S_i, a)`` at the observed mediator for every action, shape (n, A)."""
        n = states.shape[0]
        if self.encoder.discrete:
            c = self.encoder.codes(mediators)
            p = self.probs(states, phi)
            out = np.take_along_axis(p, np.maximum(c, 0)[:, None, None], axis=2)[:, :, 0]
            return np.where(c[:, None] >= 0, out, 0.0)
        assert self.chol_ is not None
        mu = self.means(states, phi)
        diff = mediators[:, None, :] - mu                          # (n, A, m)
        m = diff.shape[-1]
        from scipy.linalg import solve_triangular

        z = solve_triangular(self.chol_, diff.reshape(-1, m).T, lower=True).T.reshape(n, -1, m)
        logdet = 2.0 * np.log(np.diag(self.chol_)).sum()
        return np.exp(-0.5 * (z ** 2).sum(-1) - 0.5 * (m * np.log(2 * np.pi) + logdet))


@dataclass
class RewardModel:
    """``r(s, a, m) = E[R | S=s, A=a, M=m]``.

    Parameters
    ----------
    encoder : MediatorEncoder
    estimator : scikit-learn regressor or None
        Fitted on ``[states, one-hot action, mediators]``; default: ridge on
        ``e_a (x) h(phi, enc(m))`` (saturated for discrete states and mediators).
    """

    encoder: MediatorEncoder
    estimator: Any = None
    n_actions: int = 2
    ridge: float = 1e-6
    model_: Any = None

    def _h(self, phi: Any, mediators: NDArray[np.float64]) -> Any:
        return combine(phi, self.encoder.encode(mediators), self.encoder.discrete,
                       self.encoder.n_raw)

    def fit(self, states: NDArray[np.float64], phi: NDArray[np.float64],
            actions: NDArray[np.int64], mediators: NDArray[np.float64],
            rewards: NDArray[np.float64]) -> RewardModel:
        """Fit on rows."""
        if self.estimator is not None:
            X = np.hstack([states, _onehot(actions, self.n_actions), mediators])
            self.model_ = _fit_clone(self.estimator, X, rewards)
        else:
            self.model_ = block_ridge_fit(self._h(phi, mediators), actions, self.n_actions,
                                          rewards, self.ridge)          # (A, q)
        return self

    def node_terms(self, states: NDArray[np.float64], phi: NDArray[np.float64],
                   nodes: NDArray[np.float64], p0: NDArray[np.float64], shared: bool
                   ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Rewards at the mediator nodes of every action, own action and mixed over ``p0``.

        Parameters
        ----------
        states : ndarray of shape (n, d)
        phi : ndarray of shape (n, p)
        nodes : ndarray of shape (n, A, K, m), or (n, K, m) when ``shared``
            Mediator nodes ``m_k(a)`` of each action (``shared``: the same for every action,
            as the levels of a discrete mediator).
        p0 : ndarray of shape (n, A)
            Weights over the action of the reward.
        shared : bool

        Returns
        -------
        r_own : ndarray of shape (n, A, K)
            ``r(S, a, m_k(a))``.
        r_mix : ndarray of shape (n, A, K)
            ``sum_b p0(b) r(S, b, m_k(a))``.

        Rows are processed in chunks of bounded size; the linear default never forms the
        ``(n, A, K, A)`` array of every reward action at every node.
        """
        n, A = states.shape[0], self.n_actions
        if shared:
            R = self.predict(states, phi, nodes)                          # (n, K, A)
            K = R.shape[1]
            mix = np.einsum("nkb,nb->nk", R, p0)
            return (R.transpose(0, 2, 1).copy(),
                    np.broadcast_to(mix[:, None, :], (n, A, K)).copy())
        K = nodes.shape[2]
        r_own, r_mix = np.empty((n, A, K)), np.empty((n, A, K))
        if self.estimator is None:
            q = self.model_.shape[1]
            step = max(1, _BUDGET // max(A * K * q, 1))
            for lo in range(0, n, step):
                sl = slice(lo, min(n, lo + step))
                h = self._h(dense_rows(phi[sl])[:, None, None, :], nodes[sl])  # (c,A,K,q)
                r_own[sl] = np.einsum("cakq,aq->cak", h, self.model_)
                r_mix[sl] = np.einsum("cakq,cq->cak", h, p0[sl] @ self.model_)
            return r_own, r_mix
        step = max(1, _BUDGET // max(A * K * A, 1))
        for lo in range(0, n, step):
            sl = slice(lo, min(n, lo + step))
            R = self.predict(states[sl], phi[sl], nodes[sl])              # (c, A, K, A)
            r_own[sl] = np.einsum("caka->cak", R)
            r_mix[sl] = np.einsum("cakb,cb->cak", R, p0[sl])
        return r_own, r_mix

    def predict(self, states: NDArray[np.float64], phi: NDArray[np.float64],
                mediators: NDArray[np.float64]) -> NDArray[np.float64]:
        """``r(S_i, a, m_i...)`` for every action.

        Parameters
        ----------
        states : ndarray of shape (n, d)
        phi : ndarray of shape (n, p)
        mediators : ndarray of shape (n, ..., m)
            Mediator values per row (extra axes, e.g. nodes, allowed).

        Returns
        -------
        ndarray of shape (n, ..., A)
            Last axis: the action of the reward.
        """
        n = states.shape[0]
        extra = mediators.shape[1:-1]
        out = np.empty((n, *extra, self.n_actions))
        for lo in range(0, n, _CHUNK):
            sl = slice(lo, min(n, lo + _CHUNK))
            med = mediators[sl]
            if self.estimator is None and sp.issparse(phi) and self.encoder.discrete:
                # h = phi (x) enc(m): h @ coef_a = enc(m) @ (phi @ coef_a as p x K), never h
                p, K = phi.shape[1], self.encoder.n_levels
                W = self.model_.reshape(-1, p, K).transpose(1, 2, 0).reshape(p, -1)
                T = np.asarray(phi[sl] @ W).reshape(-1, K, self.n_actions)   # (c, K, A)
                out[sl] = np.einsum("c...k,cka->c...a", self.encoder.encode(med), T)
                continue
            if self.estimator is None:
                ph = dense_rows(phi[sl]).reshape(-1, *([1] * len(extra)), phi.shape[1])
                h = self._h(ph, med)                              # (c, ..., q)
                out[sl] = np.einsum("...q,aq->...a", h, self.model_)
                continue
            c = med.shape[0]
            k = int(np.prod(extra)) if extra else 1
            s_rep = np.repeat(states[sl], k, axis=0)
            m_rep = med.reshape(c * k, med.shape[-1])
            cols = []
            for a in range(self.n_actions):
                X = np.hstack([s_rep, np.tile(_onehot(np.array([a]), self.n_actions),
                                              (c * k, 1)), m_rep])
                cols.append(np.asarray(self.model_.predict(X), dtype=np.float64))
            out[sl] = np.stack(cols, axis=-1).reshape(c, *extra, self.n_actions)
        return out
