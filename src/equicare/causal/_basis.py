"""Feature maps of states and mediators for LSTD, density ratios and the default nuisance models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import check_random_state

__all__ = ["BasisKind", "state_features", "MediatorEncoder", "combine", "action_tensor"]

BasisKind = Literal["auto", "onehot", "spline", "rff", "poly", "constant"]

#: Joint one-hot is used by ``"auto"`` when the data have at most this many distinct states.
MAX_ONEHOT_STATES = 50
#: A state column with at most this many distinct values is one-hot coded (not splined).
MAX_DISCRETE_LEVELS = 10


def _standardize(x: NDArray[np.float64], ref: NDArray[np.float64]) -> NDArray[np.float64]:
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _additive(s: NDArray[np.float64], sn: NDArray[np.float64], n_knots: int
              ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Intercept + per column: one-hot of levels (discrete columns) or cubic B-splines."""
    from sklearn.preprocessing import SplineTransformer

    both = np.vstack([s, sn])
    blocks, blocks_n = [np.ones((len(s), 1))], [np.ones((len(sn), 1))]
    for j in range(s.shape[1]):
        levels = np.unique(both[:, j])
        if levels.size <= 1:
            continue
        if levels.size <= MAX_DISCRETE_LEVELS:
            blocks.append((s[:, j, None] == levels[None, 1:]).astype(np.float64))
            blocks_n.append((sn[:, j, None] == levels[None, 1:]).astype(np.float64))
            continue
        st = SplineTransformer(n_knots=n_knots, degree=3, knots="quantile",
                               extrapolation="linear", include_bias=False)
        st.fit(both[:, j, None])
        blocks.append(st.transform(s[:, j, None]))
        blocks_n.append(st.transform(sn[:, j, None]))
    return np.hstack(blocks), np.hstack(blocks_n)


def state_features(states: NDArray[np.float64], next_states: NDArray[np.float64],
                   kind: BasisKind, *, n_knots: int = 5, n_features: int = 64,
                   random_state: Any = 0) -> tuple[NDArray[np.float64], NDArray[np.float64], str]:
    """Basis ``phi`` at every state and next state (fitted on both, no outcomes used).

    Parameters
    ----------
    states, next_states : ndarray of shape (n, d)
    kind : {"auto", "onehot", "spline", "rff", "poly", "constant"}
        ``onehot``: one column per distinct state (tabular); ``spline``: intercept plus additive
        cubic B-splines (one-hot levels for columns with few values); ``rff``: random Fourier
        features of a Gaussian kernel (median-heuristic bandwidth); ``poly``: quadratic
        polynomial; ``constant``: one column of ones; ``auto``: onehot when there are at most 50
        distinct states, else spline.
    n_knots, n_features : int
    random_state : int or Generator
        Seed of the random Fourier features.

    Returns
    -------
    phi, phi_next : ndarray of shape (n, p)
    kind : str
        The kind used (``auto`` resolved).
    """
    n = states.shape[0]
    both = np.vstack([states, next_states])
    if kind == "auto":
        n_unique = np.unique(both, axis=0).shape[0] if both.shape[1] else 1
        kind = "onehot" if n_unique <= MAX_ONEHOT_STATES else "spline"
    if kind == "constant" or both.shape[1] == 0:
        return np.ones((n, 1)), np.ones((n, 1)), "constant"
    if kind == "onehot":
        _, inv = np.unique(both, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        eye = np.eye(int(inv.max()) + 1)
        return eye[inv[:n]], eye[inv[n:]], kind
    if kind == "spline":
        phi, phin = _additive(states, next_states, n_knots)
        return phi, phin, kind
    z, zn = _standardize(states, both), _standardize(next_states, both)
    if kind == "poly":
        from sklearn.preprocessing import PolynomialFeatures

        pf = PolynomialFeatures(degree=2, include_bias=True).fit(z)
        return pf.transform(z), pf.transform(zn), kind
    if kind == "rff":
        rng = check_random_state(random_state)
        zz = np.vstack([z, zn])
        sub = zz[rng.choice(len(zz), size=min(len(zz), 2000), replace=False)]
        d2 = ((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1)
        bw = float(np.sqrt(np.median(d2[d2 > 0]) / 2.0)) if (d2 > 0).any() else 1.0
        omega = rng.standard_normal((z.shape[1], n_features)) / bw
        b = rng.uniform(0, 2 * np.pi, n_features)
        scale = np.sqrt(2.0 / n_features)

        def f(x: NDArray[np.float64]) -> NDArray[np.float64]:
            return np.hstack([np.ones((len(x), 1)), scale * np.cos(x @ omega + b)])

        return f(z), f(zn), kind
    raise InvalidParameterError(f"Unknown basis kind {kind!r}.")


def action_tensor(a: NDArray[np.int64], h: NDArray[np.float64], n_actions: int
                  ) -> NDArray[np.float64]:
    """Features ``e_a (x) h``: place ``h`` (n, q) in the block of action ``a``, shape (n, A*q)."""
    n, q = h.shape
    out = np.zeros((n, n_actions, q))
    out[np.arange(n), a] = h
    return out.reshape(n, n_actions * q)


def combine(phi: NDArray[np.float64], enc: NDArray[np.float64], discrete: bool,
            n_raw: int) -> NDArray[np.float64]:
    """Joint state-mediator features ``h(phi, enc)``, linear in ``enc``.

    Discrete mediators: the tensor ``phi (x) onehot(m)``; continuous mediators (``enc`` =
    ``[spline(m), m]``): ``[phi, enc, phi (x) m]``. Leading axes of ``phi`` and ``enc`` broadcast.
    """
    if discrete:
        return (phi[..., :, None] * enc[..., None, :]).reshape(*np.broadcast_shapes(
            phi.shape[:-1], enc.shape[:-1]), -1)
    shape = np.broadcast_shapes(phi.shape[:-1], enc.shape[:-1])
    p_b = np.broadcast_to(phi, (*shape, phi.shape[-1]))
    e_b = np.broadcast_to(enc, (*shape, enc.shape[-1]))
    m_raw = e_b[..., -n_raw:]
    inter = (p_b[..., :, None] * m_raw[..., None, :]).reshape(*shape, -1)
    return np.concatenate([p_b, e_b, inter], axis=-1)


@dataclass
class MediatorEncoder:
    """Encoding of mediator values: one-hot categories (discrete) or splines plus raw values.

    Parameters
    ----------
    discrete : bool
    levels : ndarray of shape (K, m)
        Distinct mediator rows (discrete mediators).
    """

    discrete: bool
    levels: NDArray[np.float64]
    n_raw: int
    n_knots: int = 5
    _splines: Any = None

    @classmethod
    def fit(cls, mediators: NDArray[np.float64], mediator_type: str, max_levels: int,
            n_knots: int = 5) -> MediatorEncoder:
        """Decide discrete vs continuous and fit the encoding on observed mediators (n, m)."""
        levels = np.unique(mediators, axis=0)
        discrete = (mediator_type == "discrete"
                    or (mediator_type == "auto" and levels.shape[0] <= max_levels))
        enc = cls(discrete=discrete, levels=levels if discrete else np.empty((0, 0)),
                  n_raw=mediators.shape[1], n_knots=n_knots)
        if not discrete:
            from sklearn.preprocessing import SplineTransformer

            enc._splines = SplineTransformer(n_knots=n_knots, degree=3, knots="quantile",
                                             extrapolation="linear", include_bias=False
                                             ).fit(mediators)
        return enc

    @property
    def n_levels(self) -> int:
        """Number of categories (discrete), 0 otherwise."""
        return int(self.levels.shape[0]) if self.discrete else 0

    def codes(self, mediators: NDArray[np.float64]) -> NDArray[np.int64]:
        """Category of each mediator row, shape (n,) (discrete only; -1 if unseen)."""
        hit = np.all(mediators[:, None, :] == self.levels[None, :, :], axis=2)
        return np.where(hit.any(axis=1), np.argmax(hit, axis=1), -1).astype(np.int64)

    def encode(self, mediators: NDArray[np.float64]) -> NDArray[np.float64]:
        """Encode mediator values ``(..., m)`` as ``(..., q)``."""
        if self.discrete:
            c = self.codes(mediators.reshape(-1, mediators.shape[-1]))
            out = np.zeros((c.size, self.n_levels))
            ok = c >= 0
            out[np.flatnonzero(ok), c[ok]] = 1.0
            return out.reshape(*mediators.shape[:-1], self.n_levels)
        flat = mediators.reshape(-1, mediators.shape[-1])
        out = np.hstack([self._splines.transform(flat), flat])
        return out.reshape(*mediators.shape[:-1], out.shape[-1])
