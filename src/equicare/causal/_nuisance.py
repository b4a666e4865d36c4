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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.base import BaseEstimator, ClassifierMixin

from equicare.causal._basis import MediatorEncoder, action_tensor, combine

__all__ = ["RewardModel", "MediatorModel", "BehaviorModel", "NewtonLogit", "ridge_fit"]

_CHUNK = 8192


def ridge_fit(X: NDArray[np.float64], y: NDArray[np.float64], ridge: float = 1e-6
              ) -> NDArray[np.float64]:
    """Ridge least squares ``(X'X + lam I)^-1 X'y`` with ``lam`` relative to the mean diagonal."""
    G = X.T @ X
    lam = ridge * max(float(np.trace(G)) / max(G.shape[0], 1), 1e-12)
    return np.linalg.solve(G + lam * np.eye(G.shape[0]), X.T @ y)


def _onehot(a: NDArray[np.int64], n: int) -> NDArray[np.float64]:
    return np.eye(n)[a]


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
    object: ``fit``, ``predict_proba``, ``classes_``.

    Parameters
    ----------
    ridge : float
        Penalty ``ridge * n * |beta|^2 / 2`` (relative to the sample size).
    max_iter : int
    """

    def __init__(self, ridge: float = 1e-6, max_iter: int = 50) -> None:
        self.ridge = ridge
        self.max_iter = max_iter

    def fit(self, X: NDArray[np.float64], y: NDArray[Any]) -> NewtonLogit:
        """Fit on features (n, p) and labels (n,)."""
        self.classes_, yi = np.unique(y, return_inverse=True)
        n, p = X.shape
        K = self.classes_.size
        self.coef_ = np.zeros((p, max(K - 1, 0)))
        if K < 2:
            return self
        Y = np.eye(K)[yi][:, 1:]
        lam = self.ridge * n * max(float((X ** 2).sum()) / (n * p), 1e-12)
        B = self.coef_
        for _ in range(self.max_iter):
            P = self._probs(X, B)[:, 1:]                              # (n, K-1)
            g = X.T @ (P - Y) + lam * B                               # (p, K-1)
            # Hessian blocks: X' diag(P_j (delta_jk - P_k)) X
            W = P[:, :, None] * (np.eye(K - 1)[None] - P[:, None, :])  # (n, K-1, K-1)
            H = np.einsum("ni,njk,nl->jikl", X, W, X).reshape((K - 1) * p, (K - 1) * p)
            H = H.reshape(K - 1, p, K - 1, p).transpose(1, 0, 3, 2).reshape(p * (K - 1), -1)
            H += lam * np.eye(p * (K - 1))
            step = np.linalg.solve(H, g.reshape(-1)).reshape(p, K - 1)
            B = B - step
            if np.abs(step).max() < 1e-8:
                break
        self.coef_ = B
        return self

    @staticmethod
    def _probs(X: NDArray[np.float64], B: NDArray[np.float64]) -> NDArray[np.float64]:
        eta = np.hstack([np.zeros((X.shape[0], 1)), X @ B])
        eta -= eta.max(axis=1, keepdims=True)
        e = np.exp(eta)
        return e / e.sum(axis=1, keepdims=True)

    def predict_proba(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        """Class probabilities, shape (n, n_classes)."""
        if self.classes_.size < 2:
            return np.ones((X.shape[0], 1))
        return self._probs(X, self.coef_)


def _default_logistic() -> Any:
    return NewtonLogit()


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

    def _X(self, states: NDArray[np.float64], phi: NDArray[np.float64],
           a: NDArray[np.int64]) -> NDArray[np.float64]:
        if self.estimator is not None:
            return np.hstack([states, _onehot(a, self.n_actions)])
        return action_tensor(a, phi, self.n_actions)

    def fit(self, states: NDArray[np.float64], phi: NDArray[np.float64],
            actions: NDArray[np.int64], mediators: NDArray[np.float64]) -> MediatorModel:
        """Fit on rows (states (n, d), basis (n, p), actions (n,), mediators (n, m))."""
        X = self._X(states, phi, actions)
        if self.encoder.discrete:
            y = self.encoder.codes(mediators)
            est = self.estimator if self.estimator is not None else _default_logistic()
            self.model_ = _fit_clone(est, X, y)
            return self
        if self.estimator is not None:
            self.model_ = _fit_clone(self.estimator, X, mediators if mediators.shape[1] > 1
                                     else mediators[:, 0])
        else:
            self.model_ = ridge_fit(X, mediators, self.ridge)
        resid = mediators - self._mean_rows(X)
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

    def _mean_rows(self, X: NDArray[np.float64]) -> NDArray[np.float64]:
        if isinstance(self.model_, np.ndarray):
            return X @ self.model_
        out = np.asarray(self.model_.predict(X), dtype=np.float64)
        return out.reshape(X.shape[0], -1)

    def _all_actions_X(self, states: NDArray[np.float64], phi: NDArray[np.float64]
                       ) -> NDArray[np.float64]:
        n, A = states.shape[0], self.n_actions
        a = np.repeat(np.arange(A), n)
        return self._X(np.tile(states, (A, 1)), np.tile(phi, (A, 1)), a)

    def probs(self, states: NDArray[np.float64], phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Discrete: ``p_m(k | S, a)`` for every action and level, shape (n, A, K)."""
        n, A, K = states.shape[0], self.n_actions, self.encoder.n_levels
        p = _proba(self.model_, self._all_actions_X(states, phi), K)
        return p.reshape(A, n, K).transpose(1, 0, 2)

    def means(self, states: NDArray[np.float64], phi: NDArray[np.float64]) -> NDArray[np.float64]:
        """Continuous: ``E[M | S, a]`` for every action, shape (n, A, m)."""
        n, A = states.shape[0], self.n_actions
        mu = self._mean_rows(self._all_actions_X(states, phi))
        return mu.reshape(A, n, -1).transpose(1, 0, 2)

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
        return np.einsum("nak,nakq->naq", w, self.encoder.encode(nodes))

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

    def _h(self, phi: NDArray[np.float64], mediators: NDArray[np.float64]) -> NDArray[np.float64]:
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
            X = action_tensor(actions, self._h(phi, mediators), self.n_actions)
            self.model_ = ridge_fit(X, rewards, self.ridge).reshape(self.n_actions, -1)
        return self

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
            if self.estimator is None:
                ph = phi[sl].reshape(-1, *([1] * len(extra)), phi.shape[1])
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
