r"""Whittle indices of binary-action restless arms, batched over arms, states and horizons.

For a charge :math:`\lambda` on the active action, the single-arm value with ``h`` decisions left
is

.. math::

    V_h(s; \lambda) = r(s) + \max_a \big[-\lambda a + \gamma \sum_{s'} P_a(s, s')
    V_{h-1}(s'; \lambda)\big], \qquad V_0 \equiv 0,

(the reward of the state *before* the transition is earned whatever the action, as in the
reference accounting). The advantage of acting is

.. math::

    A_h(s; \lambda) = -\lambda + \gamma \sum_{s'} [P_1(s, s') - P_0(s, s')]
    V_{h-1}(s'; \lambda),

and the Whittle index :math:`W_h(s)` is the charge at which :math:`A_h(s; \cdot)` crosses zero
(Whittle 1988; finite-horizon, time-dependent form as in Killian et al.). The infinite-horizon
discounted index uses the fixed point :math:`V(\cdot; \lambda)` instead of :math:`V_{h-1}`.

All cells ``(arm type, h, s)`` are solved at once: a bracketing search on arrays of charges in
which each step evaluates every cell with one batched value iteration (``matmul`` over arm types,
one column per cell). The bracket starts at ``bounds`` and is widened automatically until it
contains every index; inside it a safeguarded Newton step (the slope of :math:`A` is
:math:`-1 - \gamma \Delta P \cdot D`, where ``D`` is the expected discounted number of
activations) falls back to bisection. Because :math:`A` is piecewise linear in the charge, the
Newton step usually lands on the exact root in a few iterations; otherwise the bracket shrinks
below ``tol``. Identical arms are solved once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import EquicareWarning, InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["whittle_indices", "check_indexability", "IndexabilityWarning"]

Array = NDArray[np.float64]


class IndexabilityWarning(EquicareWarning):
    """Some arms are not indexable: the passive set does not grow monotonically with the charge."""


INDEXABILITY_MESSAGE = ("{n_bad} of {n_types} distinct arm models are not indexable (the optimal "
                        "action is not monotone in the activation charge, first at arm {arm}); "
                        "their Whittle indices are one crossing of the advantage and the index "
                        "policy is a heuristic for them.")


# --------------------------------------------------------------------------- arm types

def unique_arms(P: Array, R: Array) -> tuple[NDArray[np.int64], Array, Array]:
    """Collapse identical arms.

    Parameters
    ----------
    P : ndarray of shape (n_arms, 2, n_states, n_states)
    R : ndarray of shape (n_arms, n_states)

    Returns
    -------
    type_of_arm : ndarray of shape (n_arms,)
        Index of each arm's distinct model.
    P_types : ndarray of shape (n_types, 2, n_states, n_states)
    R_types : ndarray of shape (n_types, n_states)
    """
    n, _, S, _ = P.shape
    flat = np.concatenate([P.reshape(n, -1), R.reshape(n, -1)], axis=1)
    flat = np.ascontiguousarray(flat)
    rows = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    return inverse.astype(np.int64).ravel(), P[first], R[first]


# --------------------------------------------------------------------------- advantages

def advantage_finite(
    P: Array, R: Array, lam: Array, h: NDArray[np.int64], s: NDArray[np.int64], gamma: float,
    need_slope: bool = True,
) -> tuple[Array, Array]:
    """Advantage of acting for cells ``(type k, remaining horizon h, state s)`` at charges.

    Parameters
    ----------
    P : ndarray of shape (n_types, 2, S, S)
    R : ndarray of shape (n_types, S)
    lam, h, s : ndarrays of shape (n_types, n_cells)
        One column per cell: its charge, remaining horizon (>= 1) and state.
    gamma : float
    need_slope : bool
        Also return the slope ``dA / dlambda``.

    Returns
    -------
    A, slope : ndarrays of shape (n_types, n_cells)
    """
    K, _, S, _ = P.shape
    L = lam.shape[1]
    dP = gamma * (P[:, 1] - P[:, 0])  # (K, S, S)
    dP_cols = np.take_along_axis(dP, s[:, :, None], axis=1)  # (K, L, S)
    A = -lam.copy()
    slope = -np.ones_like(lam)
    hmax = int(h.max()) if h.size else 1
    V = np.zeros((K, S, L))
    D = np.zeros((K, S, L)) if need_slope else None
    P0, P1 = gamma * P[:, 0], gamma * P[:, 1]
    lam_row = lam[:, None, :]
    for j in range(1, hmax):
        c0 = P0 @ V
        c1 = P1 @ V - lam_row
        act = c1 > c0
        V = R[:, :, None] + np.where(act, c1, c0)
        if D is not None:
            D = np.where(act, 1.0 + P1 @ D, P0 @ D)
        rows, cols = np.nonzero(h == j + 1)
        if rows.size:
            dpc = dP_cols[rows, cols]  # (n_sel, S)
            A[rows, cols] = -lam[rows, cols] + np.einsum("ns,ns->n", dpc, V[rows, :, cols])
            if D is not None:
                slope[rows, cols] = -1.0 - np.einsum("ns,ns->n", dpc, D[rows, :, cols])
    return A, slope


def _policy_values(P: Array, R: Array, lam: Array, gamma: float, pi: NDArray[np.bool_] | None
                   ) -> tuple[Array, Array, NDArray[np.bool_]]:
    """Discounted optimal values by policy iteration, one column per charge.

    Returns V, D of shape (K, S, L) and the optimal policy (K, S, L).
    """
    K, _, S, _ = P.shape
    L = lam.shape[1]
    if pi is None:
        pi = np.zeros((K, S, L), dtype=bool)
    eye = np.eye(S)
    P_t = np.transpose(P, (0, 1, 2, 3))
    for _ in range(4 * S + 10):
        Ppi = np.where(pi.transpose(0, 2, 1)[..., None], P_t[:, None, 1], P_t[:, None, 0])
        M = eye - gamma * Ppi  # (K, L, S, S)
        rhs = R[:, None, :] - lam[:, :, None] * pi.transpose(0, 2, 1)
        V = np.linalg.solve(M, rhs[..., None])[..., 0].transpose(0, 2, 1)  # (K, S, L)
        c0 = gamma * (P[:, 0] @ V)
        c1 = gamma * (P[:, 1] @ V) - lam[:, None, :]
        new = c1 > c0 + 1e-12 * (1.0 + np.abs(c0))
        if np.array_equal(new, pi):
            break
        pi = new
    Ppi = np.where(pi.transpose(0, 2, 1)[..., None], P_t[:, None, 1], P_t[:, None, 0])
    M = eye - gamma * Ppi
    D = np.linalg.solve(M, pi.transpose(0, 2, 1)[..., None].astype(float))[..., 0]
    return V.astype(np.float64, copy=False), D.transpose(0, 2, 1).astype(np.float64, copy=False), pi


def advantage_discounted(
    P: Array, R: Array, lam: Array, s: NDArray[np.int64], gamma: float,
    need_slope: bool = True,
) -> tuple[Array, Array]:
    """Infinite-horizon discounted advantage for cells ``(type k, state s)``.

    See :func:`advantage_finite` for the shapes.
    """
    V, D, _ = _policy_values(P, R, lam, gamma, None)
    dP = gamma * (P[:, 1] - P[:, 0])
    dP_cols = np.take_along_axis(dP, s[:, :, None], axis=1)  # (K, L, S)
    A = -lam + np.einsum("kls,ksl->kl", dP_cols, V)
    slope = -1.0 - np.einsum("kls,ksl->kl", dP_cols, D)
    return A, slope


# --------------------------------------------------------------------------- root finding

def _find_roots(
    adv: Callable[[Array], tuple[Array, Array]],
    shape: tuple[int, int],
    *,
    tol: float,
    bounds: tuple[float, float],
    widen: bool,
    newton: bool,
    max_iter: int = 200,
) -> Array:
    lo = np.full(shape, float(bounds[0]))
    hi = np.full(shape, float(bounds[1]))
    if widen:
        for _ in range(200):
            A, _ = adv(np.concatenate([lo, hi], axis=1))
            a_lo, a_hi = A[:, : shape[1]], A[:, shape[1]:]
            too_high = a_lo <= 0  # passive even at the lower bound: index < lo
            too_low = a_hi > 0  # active even at the upper bound: index > hi
            if not (too_high.any() or too_low.any()):
                break
            step_lo = 2.0 * np.maximum(1.0, np.abs(lo))
            step_hi = 2.0 * np.maximum(1.0, np.abs(hi))
            hi = np.where(too_high, lo, hi)
            lo = np.where(too_high, lo - step_lo, lo)
            lo = np.where(too_low & ~too_high, hi, lo)
            hi = np.where(too_low & ~too_high, hi + step_hi, hi)
        else:  # pragma: no cover - A is bounded, so this cannot happen for finite inputs
            raise RuntimeError("Could not bracket the Whittle indices.")
    lam = 0.5 * (lo + hi)
    root = np.full(shape, np.nan)
    width_prev = [hi - lo, hi - lo]
    for _ in range(max_iter):
        open_ = np.isnan(root) & (hi - lo > tol)
        if not open_.any():
            break
        A, slope = adv(lam)
        pos = A > 0
        lo = np.where(open_ & pos, lam, lo)
        hi = np.where(open_ & ~pos, lam, hi)
        if newton:
            exact = open_ & (np.abs(A) <= 1e-12 * (1.0 + np.abs(lam)))
            root = np.where(exact, lam, root)
            with np.errstate(divide="ignore", invalid="ignore"):
                cand = lam - A / slope
            width = hi - lo
            ok = ((slope < 0) & np.isfinite(cand) & (cand > lo) & (cand < hi)
                  & (width <= 0.5 * width_prev[0]))
            width_prev = [width_prev[1], width]
            lam = np.where(ok, cand, 0.5 * (lo + hi))
            # a Newton step that lands on the root of a linear piece is exact: confirm next pass
        else:
            lam = 0.5 * (lo + hi)
    return np.where(np.isnan(root), 0.5 * (lo + hi), root)


def _cells_by_type(k: NDArray[np.int64], n_types: int
                   ) -> tuple[NDArray[np.int64], NDArray[np.int64], int]:
    """Row (type) and column of each cell in a (n_types, width) layout."""
    order = np.argsort(k, kind="stable")
    counts = np.bincount(k, minlength=n_types)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    col = np.empty_like(k)
    col[order] = np.arange(k.size) - np.repeat(starts, counts)
    width = int(counts.max()) if k.size else 0
    return k, col, width


def index_cells(
    P: Array, R: Array, k: NDArray[np.int64], s: NDArray[np.int64],
    h: NDArray[np.int64] | None, gamma: float, *, tol: float = 1e-6,
    bounds: tuple[float, float] = (-1.0, 1.0), widen: bool = True, newton: bool = True,
) -> Array:
    """Whittle index of each cell ``(type k, state s, remaining horizon h)``.

    ``h is None`` requests infinite-horizon discounted indices (``gamma < 1``). Cells of the same
    type share one batched solve; duplicated cells are solved once.
    """
    if k.size == 0:
        return np.zeros(0)
    hh = np.zeros_like(k) if h is None else h
    key = np.stack([k, s, hh], axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    used, kk = np.unique(uniq[:, 0], return_inverse=True)
    kk = kk.ravel()
    rows, cols, width = _cells_by_type(kk, used.size)
    Pu, Ru = P[used], R[used]
    S_ = np.zeros((used.size, width), dtype=np.int64)
    H_ = np.ones((used.size, width), dtype=np.int64)
    S_[rows, cols] = uniq[:, 1]
    H_[rows, cols] = np.maximum(uniq[:, 2], 1)
    if h is None:
        def adv(lam: Array) -> tuple[Array, Array]:
            reps = lam.shape[1] // width
            return advantage_discounted(Pu, Ru, lam, np.tile(S_, reps), gamma, need_slope=True)
    else:
        def adv(lam: Array) -> tuple[Array, Array]:
            reps = lam.shape[1] // width
            return advantage_finite(Pu, Ru, lam, np.tile(H_, reps), np.tile(S_, reps), gamma,
                                    need_slope=newton)
    W = _find_roots(adv, (used.size, width), tol=tol, bounds=bounds, widen=widen, newton=newton)
    return W[rows, cols][inv]


# --------------------------------------------------------------------------- indexability

def check_indexability(
    P: Array, R: Array, W: Array, *, horizon: int | None, gamma: float,
    tol: float = 1e-6, n_charges: int = 48, warn: bool = True,
) -> NDArray[np.bool_]:
    """Check numerically that the passive set grows with the charge.

    Parameters
    ----------
    P : ndarray of shape (n_types, 2, S, S)
    R : ndarray of shape (n_types, S)
    W : ndarray of shape (n_types, H, S) (finite horizon) or (n_types, S) (discounted)
        Indices computed for these arms.
    horizon : int or None
    gamma : float
    tol : float
        Precision of ``W``; charges within ``10 * tol`` of an index are not judged.
    n_charges : int
        Number of test charges per arm (spread over the arm's own indices, each one just below
        and just above an index).
    warn : bool
        Emit an :class:`IndexabilityWarning` naming the first non-indexable arm.

    Returns
    -------
    ndarray of shape (n_types,) of bool
        ``True`` where the arm passed: at every test charge, acting is optimal exactly in the
        cells whose index exceeds the charge.
    """
    K, _, S, _ = P.shape
    flatW = W.reshape(K, -1)
    delta = max(10 * tol, 1e-9)
    q = np.linspace(0.0, 1.0, max(2, n_charges // 2))
    base = np.quantile(flatW, q, axis=1).T  # (K, m)
    lam = np.concatenate([base - delta, base + delta], axis=1)  # (K, L)
    L = lam.shape[1]
    if horizon is None:
        V, _, _ = _policy_values(P, R, lam, gamma, None)
        dP = gamma * (P[:, 1] - P[:, 0])
        adv = (-lam[:, None, :] + dP @ V)[:, None]  # (K, 1, S, L)
        Wc = W[:, None, :, None]
    else:
        dP = gamma * (P[:, 1] - P[:, 0])
        V = np.zeros((K, S, L))
        adv_list = [np.broadcast_to(-lam[:, None, :], (K, S, L))]
        P0, P1 = gamma * P[:, 0], gamma * P[:, 1]
        for _ in range(1, horizon):
            c0 = P0 @ V
            c1 = P1 @ V - lam[:, None, :]
            V = R[:, :, None] + np.maximum(c0, c1)
            adv_list.append(-lam[:, None, :] + dP @ V)
        adv = np.stack(adv_list, axis=1)  # (K, H, S, L)
        Wc = W[..., None]
    acts = adv > 0
    expected = Wc > lam[:, None, None, :]
    near = np.abs(Wc - lam[:, None, None, :]) < 0.5 * delta
    # where the advantage is 0 up to rounding both actions are optimal (an advantage that is flat
    # at 0 over a range of charges, e.g. deterministic transitions): no violation either way
    scale = 1.0 + np.abs(lam)[:, None, None, :] + np.abs(R).max(axis=1)[:, None, None, None] * (
        horizon if horizon is not None else 1.0 / (1.0 - gamma))
    tied = np.abs(adv) <= 1e-9 * scale
    bad = (acts != expected) & ~near & ~tied
    ok: NDArray[np.bool_] = ~bad.reshape(K, -1).any(axis=1)
    if warn and not ok.all():
        warnings.warn(INDEXABILITY_MESSAGE.format(n_bad=int((~ok).sum()), n_types=K,
                                                  arm=int(np.argmin(ok))),
                      IndexabilityWarning, stacklevel=3)
    return ok


# --------------------------------------------------------------------------- public API

def _as_arrays(P: Any, R: Any) -> tuple[Array, Array]:
    P_ = np.asarray(P, dtype=np.float64)
    if P_.ndim == 3:
        P_ = P_[None]
    if P_.ndim != 4 or P_.shape[1] != 2 or P_.shape[2] != P_.shape[3]:
        raise InvalidParameterError(f"P must have shape (n_arms, 2, n_states, n_states) or "
                         f"(2, n_states, n_states); got {np.shape(P)}.")
    R_ = np.asarray(R, dtype=np.float64)
    if R_.ndim == 1:
        R_ = np.broadcast_to(R_, (P_.shape[0], R_.shape[0]))
    if R_.shape != P_.shape[:1] + P_.shape[2:3]:
        raise InvalidParameterError(
            f"R must have shape (n_arms, n_states) = {P_.shape[0], P_.shape[2]} or "
                         f"(n_states,); got {np.shape(R)}.")
    return P_, np.ascontiguousarray(R_)


def whittle_indices(
    P: Any,
    R: Any,
    *,
    horizon: int | None = 20,
    gamma: float = 1.0,
    states: Any = None,
    remaining: int | None = None,
    tol: float = 1e-6,
    bounds: tuple[float, float] = (-1.0, 1.0),
    widen: bool = True,
    check: bool = True,
) -> Array:
    """Whittle indices of every arm, batched over arms, states and remaining horizons.

    Parameters
    ----------
    P : array-like of shape (n_arms, 2, n_states, n_states) or (2, n_states, n_states)
        ``P[i, a, s, s']``; ``a = 0`` passive, ``a = 1`` active.
    R : array-like of shape (n_arms, n_states) or (n_states,)
        State rewards.
    horizon : int or None
        ``H`` for finite-horizon, time-dependent indices (the default, 20); ``None`` for the
        infinite-horizon discounted index (requires ``gamma < 1``).
    gamma : float
        Discount factor in (0, 1].
    states : array-like of shape (n_arms,), optional
        Return only each arm's index in this state.
    remaining : int, optional
        Finite horizon: return only the indices with this many decisions left (``H - t``).
    tol : float
        Precision of each index (bracket width), default ``1e-6``.
    bounds : (float, float)
        Starting bracket of the charge; widened automatically unless ``widen=False`` (the
        reference clips to [-1, 1] that way).
    widen : bool
        Widen ``bounds`` until every index is inside.
    check : bool
        Run :func:`check_indexability` and warn on non-indexable arms.

    Returns
    -------
    ndarray
        Finite horizon: shape (n_arms, horizon, n_states) with ``W[i, h - 1, s]`` the index with
        ``h`` decisions left; shape (n_arms, n_states) when ``remaining`` is given; shape
        (n_arms,) when ``states`` is given too. Infinite horizon: (n_arms, n_states) or
        (n_arms,).

    Examples
    --------
    >>> import numpy as np
    >>> from equicare.rmab import whittle_indices
    >>> P = np.array([[[0.95, 0.05], [0.65, 0.35]], [[0.01, 0.99], [0.01, 0.99]]])
    >>> W = whittle_indices(P, [0.0, 1.0], horizon=3)
    >>> W.shape, round(float(W[0, 1, 0]), 6)   # two decisions left, state 0: P1 - P0 = 0.94
    ((1, 3, 2), 0.94)
    """
    P_, R_ = _as_arrays(P, R)
    if not (isinstance(gamma, float | int) and 0 < gamma <= 1):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="gamma", owner="whittle_indices",
                                              expected="a float in (0, 1]", got=gamma))
    if horizon is None and gamma >= 1:
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name="gamma", owner="whittle_indices",
            expected="a float in (0, 1) for infinite-horizon indices (horizon=None)", got=gamma))
    if horizon is not None and (not isinstance(horizon, int | np.integer) or horizon < 1):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="horizon", owner="whittle_indices",
                                              expected="an int >= 1 or None", got=horizon))
    if not tol > 0:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="tol", owner="whittle_indices",
                                              expected="a float > 0", got=tol))
    n, _, S, _ = P_.shape
    t_of_arm, Pt, Rt = unique_arms(P_, R_)
    K = Pt.shape[0]
    if horizon is None:
        hs: list[int] | None = None
    elif remaining is not None:
        if not 1 <= int(remaining) <= horizon:
            raise InvalidParameterError(
                PARAM_MESSAGE.format(name="remaining", owner="whittle_indices",
                                                  expected=f"an int in [1, {horizon}]",
                                                  got=remaining))
        hs = [int(remaining)]
    else:
        hs = list(range(1, horizon + 1))
    nh = 1 if hs is None else len(hs)
    kk = np.repeat(np.arange(K), nh * S)
    h_cells = None if hs is None else np.tile(np.repeat(np.asarray(hs), S), K)
    s_cells = np.tile(np.arange(S), K * nh)
    Wc = index_cells(Pt, Rt, kk, s_cells, h_cells, float(gamma), tol=tol, bounds=bounds,
                     widen=widen).reshape(K, nh, S)
    if check:
        if horizon is None:
            check_indexability(Pt, Rt, Wc[:, 0], horizon=None, gamma=float(gamma), tol=tol)
        elif remaining is None:
            check_indexability(Pt, Rt, Wc, horizon=horizon, gamma=float(gamma), tol=tol)
    W = Wc[t_of_arm]  # (n, nh, S)
    if horizon is None or remaining is not None:
        W = W[:, 0]
        if states is not None:
            st = np.asarray(states, dtype=np.int64)
            if st.shape != (n,) or (st < 0).any() or (st >= S).any():
                raise InvalidParameterError(
                    f"states must be {n} codes in [0, {S}); got shape {st.shape}.")
            return W[np.arange(n), st]
        return W
    return W
