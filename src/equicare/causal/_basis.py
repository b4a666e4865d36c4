"""Feature maps of states and mediators for LSTD, density ratios and the default nuisance models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import check_random_state

__all__ = ["BasisKind", "state_features", "MediatorEncoder", "combine", "combine_dot",
           "action_tensor", "is_sparse", "sqsum", "dense_rows"]

BasisKind = Literal["auto", "onehot", "spline", "rff", "poly", "constant"]

#: Joint one-hot is used by ``"auto"`` when the data have at most this many distinct states.
MAX_ONEHOT_STATES = 50
#: A state column with at most this many distinct values is one-hot coded (not splined).
MAX_DISCRETE_LEVELS = 10
#: A ``onehot`` or ``spline`` basis with at least this many features and at most
#: :data:`SPARSE_MAX_DENSITY` of its entries non-zero is returned as a ``scipy.sparse`` CSR
#: matrix (one-hot codes of a categorical state with hundreds of levels): the mediation models,
#: LSTD designs and ratios then cost its non-zeros, not ``n x p``.
SPARSE_MIN_FEATURES = 64
#: Largest share of non-zero entries of a sparse basis (see :data:`SPARSE_MIN_FEATURES`).
SPARSE_MAX_DENSITY = 0.25


def is_sparse(x: Any) -> bool:
    """Whether ``x`` is a ``scipy.sparse`` matrix (a sparse basis or design)."""
    return bool(sp.issparse(x))


def sqsum(x: Any) -> float:
    """Sum of squared entries of a dense array or a sparse matrix."""
    if sp.issparse(x):
        return float(np.dot(x.data, x.data))
    return float(np.einsum("ij,ij->", x, x))


def dense_rows(x: Any) -> NDArray[np.float64]:
    """``x`` as a dense array (a sparse matrix's rows, e.g. a bounded chunk of them)."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def _sparse_or_dense(blocks: list[Any], blocks_n: list[Any]) -> tuple[Any, Any]:
    """Stack feature blocks into CSR matrices when the basis is wide and mostly zeros."""
    p = sum(int(b.shape[1]) for b in blocks)
    n = int(blocks[0].shape[0]) + int(blocks_n[0].shape[0])
    nnz = sum((b.nnz if sp.issparse(b) else int(np.count_nonzero(b)))
              for b in (*blocks, *blocks_n))
    if p >= SPARSE_MIN_FEATURES and nnz <= SPARSE_MAX_DENSITY * n * p:
        return (sp.hstack(blocks, format="csr", dtype=np.float64),
                sp.hstack(blocks_n, format="csr", dtype=np.float64))
    return (np.hstack([dense_rows(b) for b in blocks]),
            np.hstack([dense_rows(b) for b in blocks_n]))


def _standardize(x: NDArray[np.float64], ref: NDArray[np.float64]) -> NDArray[np.float64]:
    mu, sd = ref.mean(axis=0), ref.std(axis=0)
    return (x - mu) / np.where(sd > 0, sd, 1.0)


def _additive(s: NDArray[np.float64], sn: NDArray[np.float64], n_knots: int
              ) -> tuple[Any, Any]:
    """Intercept + per column: one-hot of levels (discrete columns) or cubic B-splines.

    Two-valued columns (e.g. the one-hot codes of a categorical state) are found in one pass
    and coded as ``column == max`` without sorting them; runs of them are built as sparse
    blocks. The result is CSR when wide and mostly zeros (:data:`SPARSE_MIN_FEATURES`).
    """
    from sklearn.preprocessing import SplineTransformer

    d = s.shape[1]
    lo = np.minimum(s.min(axis=0, initial=np.inf), sn.min(axis=0, initial=np.inf))
    hi = np.maximum(s.max(axis=0, initial=-np.inf), sn.max(axis=0, initial=-np.inf))
    two = (np.all((s == lo) | (s == hi), axis=0) & np.all((sn == lo) | (sn == hi), axis=0)
           if d else np.zeros(0, dtype=bool))
    blocks: list[Any] = [np.ones((len(s), 1))]
    blocks_n: list[Any] = [np.ones((len(sn), 1))]
    j = 0
    while j < d:
        if two[j]:
            end = j
            while end < d and two[end]:
                end += 1
            keep = np.flatnonzero(lo[j:end] < hi[j:end])      # constant columns are dropped
            if keep.size:
                for x, out in ((s, blocks), (sn, blocks_n)):
                    b = sp.csr_matrix(x[:, j:end] == hi[j:end])
                    out.append((b if keep.size == end - j else b[:, keep]).astype(np.float64))
            j = end
            continue
        col = np.concatenate([s[:, j], sn[:, j]])
        levels = np.unique(col)
        if levels.size <= MAX_DISCRETE_LEVELS:
            blocks.append((s[:, j, None] == levels[None, 1:]).astype(np.float64))
            blocks_n.append((sn[:, j, None] == levels[None, 1:]).astype(np.float64))
        else:
            st = SplineTransformer(n_knots=n_knots, degree=3, knots="quantile",
                                   extrapolation="linear", include_bias=False)
            st.fit(col[:, None])
            blocks.append(st.transform(s[:, j, None]))
            blocks_n.append(st.transform(sn[:, j, None]))
        j += 1
    return _sparse_or_dense(blocks, blocks_n)


def _n_distinct_rows(x: NDArray[np.float64], y: NDArray[np.float64], limit: int) -> int:
    """Distinct rows of ``x`` and ``y`` together, or ``limit + 1`` when there are more.

    A random projection of the rows is counted first (equal rows project equally, so more
    than ``limit`` projected values means more than ``limit`` rows, without sorting wide rows).
    """
    r = np.random.default_rng(0).standard_normal(x.shape[1])
    if np.unique(np.concatenate([x @ r, y @ r])).size > limit:
        return limit + 1
    return int(np.unique(np.vstack([x, y]), axis=0).shape[0])


def state_features(states: NDArray[np.float64], next_states: NDArray[np.float64],
                   kind: BasisKind, *, n_knots: int = 5, n_features: int = 64,
                   random_state: Any = 0) -> tuple[Any, Any, str]:
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
    phi, phi_next : ndarray or scipy.sparse.csr_matrix of shape (n, p)
        ``onehot`` and ``spline`` bases with at least :data:`SPARSE_MIN_FEATURES` features, at
        most :data:`SPARSE_MAX_DENSITY` of them non-zero, are CSR matrices (the one-hot codes
        of a categorical state with many levels), else dense.
    kind : str
        The kind used (``auto`` resolved).
    """
    n = states.shape[0]
    if kind == "auto":
        n_unique = (_n_distinct_rows(states, next_states, MAX_ONEHOT_STATES)
                    if states.shape[1] else 1)
        kind = "onehot" if n_unique <= MAX_ONEHOT_STATES else "spline"
    if kind == "constant" or states.shape[1] == 0:
        return np.ones((n, 1)), np.ones((n, 1)), "constant"
    if kind == "onehot":
        _, inv = np.unique(np.vstack([states, next_states]), axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        k = int(inv.max()) + 1
        if k >= SPARSE_MIN_FEATURES:
            def onehot(c: NDArray[np.int64]) -> Any:
                return sp.csr_matrix((np.ones(c.size), c, np.arange(c.size + 1)),
                                     shape=(c.size, k))

            return onehot(inv[:n]), onehot(inv[n:]), kind
        eye = np.eye(k)
        return eye[inv[:n]], eye[inv[n:]], kind
    if kind == "spline":
        phi, phin = _additive(states, next_states, n_knots)
        return phi, phin, kind
    both = np.vstack([states, next_states])
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


def basis_width(numeric: NDArray[np.float64], next_numeric: NDArray[np.float64],
                codes: NDArray[np.int64], next_codes: NDArray[np.int64],
                n_levels: tuple[int, ...], kind: BasisKind, *, n_knots: int = 5,
                n_features: int = 64) -> tuple[int, str]:
    """Columns of :func:`state_features` on one-hot coded states, from their codes.

    The states are the numeric columns followed by one indicator column per level of each
    categorical column (``equicare.causal._data.feature_rows``); this gives the width of their
    basis without forming them (``n x sum(n_levels)`` floats, gigabytes for a state with
    thousands of levels), so that a basis too wide for the data is refused first.

    Parameters
    ----------
    numeric, next_numeric : ndarray of shape (n, d)
        Numeric states and next states.
    codes, next_codes : ndarray of shape (n, c)
        Level codes of the categorical states and next states.
    n_levels : tuple of int
        Levels of each categorical column (its indicator columns).
    kind : {"auto", "onehot", "spline", "rff", "poly", "constant"}
    n_knots, n_features : int
        As in :func:`state_features`.

    Returns
    -------
    width : int
    kind : str
        The kind used (``auto`` resolved).
    """
    n = numeric.shape[0]
    d = numeric.shape[1] + sum(n_levels)
    if kind in ("auto", "onehot") and d:
        both = np.vstack([np.hstack([numeric, codes]), np.hstack([next_numeric, next_codes])])
        n_unique = _n_distinct_rows(both[:n], both[n:], MAX_ONEHOT_STATES if kind == "auto"
                                    else 2 * n)
        kind = "onehot" if n_unique <= MAX_ONEHOT_STATES or kind == "onehot" else "spline"
        if kind == "onehot":
            return n_unique, kind
    if kind == "constant" or d == 0:
        return 1, "constant"
    if kind == "poly":
        return 1 + d + d * (d + 1) // 2, kind
    if kind == "rff":
        return n_features + 1, kind
    if kind != "spline":
        raise InvalidParameterError(f"Unknown basis kind {kind!r}.")
    width = 1
    for j in range(numeric.shape[1]):  # each column's own blocks (the intercept counted once)
        width += _additive(numeric[:, j:j + 1], next_numeric[:, j:j + 1], n_knots)[0].shape[1] - 1
    for j, k in enumerate(n_levels):  # an indicator is a column unless it is constant
        count = np.bincount(np.concatenate([codes[:, j], next_codes[:, j]]), minlength=k)
        width += int(np.count_nonzero((count > 0) & (count < 2 * n)))
    return width, kind


def action_tensor(a: NDArray[np.int64], h: NDArray[np.float64], n_actions: int
                  ) -> NDArray[np.float64]:
    """Features ``e_a (x) h``: place ``h`` (n, q) in the block of action ``a``, shape (n, A*q)."""
    n, q = h.shape
    out = np.zeros((n, n_actions, q))
    out[np.arange(n), a] = h
    return out.reshape(n, n_actions * q)


def _row_kron(phi: Any, enc: NDArray[np.float64]) -> Any:
    """Sparse rows ``phi_i (x) enc_i`` (index ``j * K + k``): CSR ``phi`` (n, p), dense ``enc``.

    ``enc`` has shape (n, K); entries that are zero because ``enc`` is are not stored.
    """
    phi = sp.csr_matrix(phi)
    phi.sort_indices()
    n, p = phi.shape
    K = int(enc.shape[1])
    row = np.repeat(np.arange(n), np.diff(phi.indptr))
    data = (phi.data[:, None] * enc[row]).ravel()
    cols = (phi.indices[:, None].astype(np.int64) * K + np.arange(K)[None, :]).ravel()
    out = sp.csr_matrix((data, cols, phi.indptr.astype(np.int64) * K), shape=(n, p * K))
    out.eliminate_zeros()
    return out


def combine(phi: Any, enc: NDArray[np.float64], discrete: bool, n_raw: int) -> Any:
    """Joint state-mediator features ``h(phi, enc)``, linear in ``enc``.

    Discrete mediators: the tensor ``phi (x) onehot(m)``; continuous mediators (``enc`` =
    ``[spline(m), m]``): ``[phi, enc, phi (x) m]``. Leading axes of ``phi`` and ``enc`` broadcast.
    A sparse ``phi`` (2-D, one row per row of ``enc``) gives a sparse CSR result.
    """
    if sp.issparse(phi):
        if discrete:
            return _row_kron(phi, enc)
        return sp.hstack([phi, sp.csr_matrix(enc), _row_kron(phi, enc[:, -n_raw:])],
                         format="csr")
    if discrete:
        return (phi[..., :, None] * enc[..., None, :]).reshape(*np.broadcast_shapes(
            phi.shape[:-1], enc.shape[:-1]), -1)
    shape = np.broadcast_shapes(phi.shape[:-1], enc.shape[:-1])
    p_b = np.broadcast_to(phi, (*shape, phi.shape[-1]))
    e_b = np.broadcast_to(enc, (*shape, enc.shape[-1]))
    m_raw = e_b[..., -n_raw:]
    inter = (p_b[..., :, None] * m_raw[..., None, :]).reshape(*shape, -1)
    return np.concatenate([p_b, e_b, inter], axis=-1)


def combine_dot(phi: Any, enc: NDArray[np.float64], discrete: bool, n_raw: int,
                coef: NDArray[np.float64]) -> NDArray[np.float64]:
    """``combine(phi, enc, discrete, n_raw) @ coef.T`` without forming the joint features.

    The joint features are ``n x p K`` (discrete mediator with ``K`` levels) or
    ``n x (p + q + p m)``; their products with a few coefficient rows are sums over the
    mediator encoding of products of ``phi`` (dense or sparse, 2-D) with ``coef``'s blocks:
    temporaries of ``n x r``, not of the joint width.

    Parameters
    ----------
    phi : ndarray or scipy.sparse matrix of shape (n, p)
    enc : ndarray of shape (n, q)
    discrete, n_raw : bool, int
        As in :func:`combine`.
    coef : ndarray of shape (r, width)
        Coefficients of the joint features (e.g. one row per action).

    Returns
    -------
    ndarray of shape (n, r)
    """
    p, r = int(phi.shape[1]), int(coef.shape[0])
    if discrete:
        blocks = coef.reshape(r, p, -1)                     # index j * K + k
        weights = enc
        out = np.zeros((int(phi.shape[0]), r))
    else:
        q = int(enc.shape[1])
        blocks = coef[:, p + q:].reshape(r, p, n_raw)      # index j * n_raw + k
        weights = enc[:, -n_raw:]
        out = np.asarray(phi @ coef[:, :p].T) + enc @ coef[:, p:p + q].T
    for k in range(blocks.shape[2]):
        out += weights[:, k, None] * np.asarray(phi @ blocks[:, :, k].T)
    return out


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
