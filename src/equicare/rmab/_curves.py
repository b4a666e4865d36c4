r"""Group value curves: the Lagrangian upper bound on a group's value for every budget level.

For a group ``g`` of ``n_g`` arms in states ``s_i`` with ``h`` decisions left, relaxing "act on
exactly ``b`` arms at every step" with a charge :math:`\lambda` per action gives, for *any*
real :math:`\lambda`,

.. math::

    V_g(b) \le L_b(\lambda) = \sum_{i \in g} V_{i,h}(s_i; \lambda)
    + \lambda\, b \sum_{t=0}^{h-1} \gamma^t ,

(Hawkins 2003; Killian et al.). :math:`L_b` is convex in :math:`\lambda` and its minimum
:math:`U_g(b)` is concave in ``b``. Three ways to evaluate it are offered:

``"index"`` (default)
    The WhittleToLagrange idea: sort the group's current Whittle indices
    :math:`W_{(1)} \ge \dots \ge W_{(n_g)}` and use the charges between consecutive indices,
    :math:`\lambda_b = (W_{(b)} + W_{(b+1)}) / 2`, as candidates. All candidates are evaluated in
    one batched value iteration and each :math:`V_g(b)` is the lower envelope
    :math:`\min_c L_b(\lambda_c)` - an upper bound never above the reference's single-charge
    value, and concave in ``b`` by construction. The ends are exact:
    :math:`V_g(0)` is the all-passive value and :math:`V_g(n_g)` the all-active value.
``"reference"``
    The reference's single charge per level: :math:`V_g(b) = L_b(\lambda_b)` (with
    :math:`\lambda_{n_g} = W_{(n_g)}`).
``"exact"``
    :math:`U_g(b) = \min_\lambda L_b(\lambda)` by bisection on the subgradient
    :math:`b\sum_t\gamma^t - \sum_i D_i(\lambda)` (``D`` = expected discounted activations).
``"lp"``
    The same minimum as a linear program solved by HiGHS (``scipy.optimize.linprog``); for
    checking on small groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["GroupValueCurves", "group_value_curves", "CurveMethod"]

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]
CurveMethod = Literal["index", "reference", "exact", "lp"]
_METHODS = ("index", "reference", "exact", "lp")
_MAX_BREAKPOINTS = 256


@dataclass(frozen=True, kw_only=True, eq=False)
class GroupValueCurves:
    """Upper bounds on each group's total value for every budget level.

    Attributes
    ----------
    values : ndarray of shape (n_groups, max_group_size + 1)
        ``values[g, b]`` bounds the expected total reward of group ``g`` over the remaining
        horizon when ``b`` of its arms are acted on at every step; NaN beyond the group's size.
    sizes : ndarray of shape (n_groups,)
        Number of arms in each group.
    group_names : tuple of str
    method : str
    """

    values: Array
    sizes: IntArray
    group_names: tuple[str, ...] = ()
    method: str = "index"

    def curve(self, g: int) -> Array:
        """Curve of group ``g``, shape (sizes[g] + 1,)."""
        return self.values[g, : int(self.sizes[g]) + 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: one list per group."""
        names = self.group_names or tuple(str(g) for g in range(len(self.sizes)))
        return {"method": self.method,
                "curves": {n: self.curve(g).tolist() for g, n in enumerate(names)}}


# --------------------------------------------------------------------------- value iteration

def fixed_policy_values(P: Array, R: Array, depth: int, gamma: float) -> tuple[Array, Array]:
    """Values of always-passive and always-active play, each of shape (n_types, S)."""
    K, _, S, _ = P.shape
    vp = np.zeros((K, S))
    va = np.zeros((K, S))
    for _ in range(depth):
        vp = R + gamma * np.einsum("kst,kt->ks", P[:, 0], vp)
        va = R + gamma * np.einsum("kst,kt->ks", P[:, 1], va)
    return vp, va


def charged_values(P: Array, R: Array, lam: Array, depth: int, gamma: float,
                   need_d: bool = False) -> tuple[Array, Array | None]:
    """Optimal values with ``depth`` decisions left under a per-column charge.

    Parameters
    ----------
    P : ndarray of shape (K, 2, S, S)
    R : ndarray of shape (K, S)
    lam : ndarray of shape (K, L)
    depth : int
    gamma : float
    need_d : bool
        Also return the expected discounted number of activations of the optimal policy.

    Returns
    -------
    V, D : ndarrays of shape (K, S, L) (``D`` is None unless requested)
    """
    K, _, S, _ = P.shape
    L = lam.shape[1]
    V = np.zeros((K, S, L))
    D = np.zeros((K, S, L)) if need_d else None
    P0, P1 = gamma * P[:, 0], gamma * P[:, 1]
    lam_row = lam[:, None, :]
    for _ in range(depth):
        c0 = P0 @ V
        c1 = P1 @ V - lam_row
        act = c1 > c0
        V = R[:, :, None] + np.where(act, c1, c0)
        if D is not None:
            D = np.where(act, 1.0 + P1 @ D, P0 @ D)
    return V, D


class _Units:
    """Arms aggregated by (unit, type, state) for batched sums over units."""

    def __init__(self, type_of_arm: IntArray, unit_of_arm: IntArray, states: IntArray,
                 n_units: int) -> None:
        # one int64 key (unit, type, state) in mixed radix: a 1-D unique, sorted by unit first
        # (np.unique over rows sorted a structured view: 4.5 s of a 22.6 s panel plan)
        n_types = int(type_of_arm.max(initial=0)) + 1
        n_states = int(states.max(initial=0)) + 1
        key = (np.asarray(unit_of_arm, dtype=np.int64) * n_types
               + np.asarray(type_of_arm, dtype=np.int64)) * n_states + states
        uniq, counts = np.unique(key, return_counts=True)
        ut, self.state = np.divmod(uniq, n_states)
        self.unit, self.type = np.divmod(ut, n_types)
        self.count = counts.astype(np.float64)
        self.n_units = n_units
        self.n_agg = np.bincount(self.unit, minlength=n_units)

    def sums(self, P: Array, R: Array, job_unit: IntArray, job_lam: Array, depth: int,
             gamma: float, need_d: bool = False) -> tuple[Array, Array | None]:
        """``sum_{i in unit} V_i(s_i; lam)`` (and activations) for each job (unit, charge).

        One value-iteration row per (unit, arm model) with the unit's charges as columns.
        """
        U = self.n_units
        order = np.argsort(job_unit, kind="stable")
        n_jobs = np.bincount(job_unit, minlength=U)
        jstart = np.concatenate([[0], np.cumsum(n_jobs)[:-1]])
        width = max(int(n_jobs.max()), 1)
        lam_unit = np.zeros((U, width))
        ju = job_unit[order]
        jcol = np.arange(ju.size) - jstart[ju]
        lam_unit[ju, jcol] = job_lam[order]
        # rows: distinct (unit, model) pairs; agg rows are sorted by (unit, type, state)
        K = int(self.type.max()) + 1 if self.type.size else 1
        ut_key = self.unit * K + self.type
        ut, q = np.unique(ut_key, return_inverse=True)
        q = q.ravel()
        ut_unit, ut_type = ut // K, ut % K
        # identical (model, charges) rows - e.g. the same group in every seed - are solved once
        rows = np.concatenate([ut_type[:, None].astype(np.float64), lam_unit[ut_unit]], axis=1)
        rows_u, rinv = np.unique(rows, axis=0, return_inverse=True)
        rtype = rows_u[:, 0].astype(np.int64)
        V, D = charged_values(P[rtype], R[rtype], rows_u[:, 1:], depth, gamma, need_d)
        q = rinv.ravel()[q]
        starts = np.concatenate([[0], np.cumsum(self.n_agg)[:-1]])
        w = self.count[:, None]
        F_unit = np.add.reduceat(V[q, self.state, :] * w, starts, axis=0)  # (U, width)
        F = np.empty(job_unit.size)
        F[order] = F_unit[ju, jcol]
        Dsum = None
        if D is not None:
            D_unit = np.add.reduceat(D[q, self.state, :] * w, starts, axis=0)
            Dsum = np.empty(job_unit.size)
            Dsum[order] = D_unit[ju, jcol]
        return F, Dsum

    def fixed(self, vp: Array, va: Array) -> tuple[Array, Array]:
        """Group sums of always-passive and always-active values, each (n_units,)."""
        p = np.bincount(self.unit, weights=vp[self.type, self.state] * self.count,
                        minlength=self.n_units)
        a = np.bincount(self.unit, weights=va[self.type, self.state] * self.count,
                        minlength=self.n_units)
        return p.astype(np.float64), a.astype(np.float64)


def unit_curves(
    P: Array, R: Array, type_of_arm: IntArray, unit_of_arm: IntArray, states: IntArray,
    W: Array, remaining: int, gamma: float, n_units: int, method: str = "index",
    table: Array | None = None, max_breakpoints: int = _MAX_BREAKPOINTS,
) -> tuple[Array, IntArray]:
    r"""Value curves of many units (group x seed) at once; see :func:`group_value_curves`.

    ``table`` (n_types, >= remaining, S) holds the types' indices at every horizon: for units
    whose types have at most ``max_breakpoints`` indices at horizons ``<= remaining``, those
    indices join the candidate charges. For indexable arms they are all the breakpoints of
    :math:`\sum_i V_i(s_i; \lambda)`, so the envelope is then the exact Lagrangian bound.

    Returns ``values`` of shape (n_units, max_size + 1) (NaN padded) and ``sizes``.
    """
    h = int(remaining)
    sizes = np.bincount(unit_of_arm, minlength=n_units).astype(np.int64)
    nmax = int(sizes.max())
    hg = float(np.sum(gamma ** np.arange(h)))
    units = _Units(type_of_arm, unit_of_arm, states, n_units)
    vp, va = fixed_policy_values(P, R, h, gamma)
    v_pass, v_act = units.fixed(vp, va)
    out = np.full((n_units, nmax + 1), np.nan)
    out[:, 0] = v_pass
    out[np.arange(n_units), sizes] = v_act
    # sorted indices within each unit (descending)
    order = np.lexsort((-W, unit_of_arm))
    Ws, us = W[order], unit_of_arm[order]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(Ws.size) - starts[us]
    if method in ("index", "reference"):
        nxt = np.r_[Ws[1:], np.nan]
        has_next = rank < sizes[us] - 1
        mid = np.where(has_next, 0.5 * (Ws + nxt), Ws)  # lambda_b for b = rank + 1
        b_of = rank + 1
        if method == "reference":
            F, _ = units.sums(P, R, us, mid, h, gamma)
            vals = F + mid * b_of * hg
            keep = b_of < sizes[us]
            out[us[keep], b_of[keep]] = vals[keep]
            # b = n_g: the reference uses lambda = the smallest index
            last = ~keep
            out[us[last], b_of[last]] = vals[last]
            return out, sizes
        cand = np.concatenate([mid, Ws[rank == 0]])
        cu = np.concatenate([us, us[rank == 0]])
        if table is not None:
            ut = np.unique(np.stack([units.unit, units.type], axis=1), axis=0)
            n_types_u = np.bincount(ut[:, 0], minlength=n_units)
            small = n_types_u[ut[:, 0]] * h * table.shape[2] <= max_breakpoints
            ut = ut[small]
            if ut.size:
                bp = table[ut[:, 1], :h, :].reshape(ut.shape[0], -1)
                cand = np.concatenate([cand, bp.ravel()])
                cu = np.concatenate([cu, np.repeat(ut[:, 0], bp.shape[1])])
        # distinct (unit, charge) pairs sorted by unit, then charge (np.unique over rows, the
        # same order, sorted a structured view: most of a panel plan's time)
        srt = np.lexsort((cand, cu))
        cu, cand = np.asarray(cu, dtype=np.int64)[srt], cand[srt]
        new = np.r_[True, (cu[1:] != cu[:-1]) | (cand[1:] != cand[:-1])]
        cu, cand = cu[new], cand[new]
        F, _ = units.sums(P, R, cu, cand, h, gamma)
        ncand = np.bincount(cu, minlength=n_units)
        cmax = int(ncand.max())
        cstart = np.concatenate([[0], np.cumsum(ncand)[:-1]])
        ccol = np.arange(cu.size) - cstart[cu]
        Fm = np.full((n_units, cmax), np.inf)
        Lm = np.zeros((n_units, cmax))
        Fm[cu, ccol] = F
        Lm[cu, ccol] = cand
        # the lower envelope min_c F_c + lambda_c b hg, one candidate at a time: the exact
        # minimum, without the (units, budgets, candidates) array (556 MB for 25 seeds of a
        # 8,000-member panel, at every step of every equitable policy)
        b = np.arange(nmax + 1)
        env = np.full((n_units, nmax + 1), np.inf)
        for c in range(cmax):  # the same operations, in the same order, as before
            np.minimum(env, Fm[:, c, None] + Lm[:, c, None] * b[None, :] * hg, out=env)
        inner = (b[None, :] >= 1) & (b[None, :] < sizes[:, None])
        out = np.where(inner, env, out)
        return out, sizes
    if method == "exact":
        return _exact_curves(P, R, units, W, sizes, h, gamma, hg, out), sizes
    if method == "lp":
        return _lp_curves(P, R, type_of_arm, unit_of_arm, states, sizes, h, gamma, out), sizes
    raise InvalidParameterError(PARAM_MESSAGE.format(name="method", owner="group_value_curves",
                                          expected="one of " + ", ".join(map(repr, _METHODS)),
                                          got=method))


def _exact_curves(P: Array, R: Array, units: _Units, W: Array, sizes: IntArray, h: int,
                  gamma: float, hg: float, out: Array, n_iter: int = 100) -> Array:
    n_units = sizes.size
    ju = np.repeat(np.arange(n_units), np.maximum(sizes - 1, 0))
    jb = (np.arange(ju.size) - np.repeat(np.cumsum(np.maximum(sizes - 1, 0))
                                         - np.maximum(sizes - 1, 0), np.maximum(sizes - 1, 0))
          + 1).astype(np.float64)
    if ju.size == 0:
        return out
    span = max(1.0, float(np.abs(W).max()))
    lo = np.full(ju.size, float(W.min()) - span)
    hi = np.full(ju.size, float(W.max()) + span)
    for _ in range(200):  # widen until g(lo) < 0 <= g(hi)
        _, Dl = units.sums(P, R, ju, lo, h, gamma, need_d=True)
        _, Dh = units.sums(P, R, ju, hi, h, gamma, need_d=True)
        assert Dl is not None and Dh is not None
        bad_lo = jb * hg - Dl >= 0
        bad_hi = jb * hg - Dh < 0
        if not (bad_lo.any() or bad_hi.any()):
            break
        lo = np.where(bad_lo, lo - 2 * np.maximum(1, np.abs(lo)), lo)
        hi = np.where(bad_hi, hi + 2 * np.maximum(1, np.abs(hi)), hi)
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        _, Dm = units.sums(P, R, ju, mid, h, gamma, need_d=True)
        assert Dm is not None
        up = jb * hg - Dm < 0  # L still decreasing: minimiser is to the right
        lo = np.where(up, mid, lo)
        hi = np.where(up, hi, mid)
        if np.all(hi - lo <= 1e-12 * (1 + np.abs(lo))):
            break
    Fl, _ = units.sums(P, R, ju, lo, h, gamma)
    Fh, _ = units.sums(P, R, ju, hi, h, gamma)
    val = np.minimum(Fl + lo * jb * hg, Fh + hi * jb * hg)
    out[ju, jb.astype(np.int64)] = val
    return out


def _lp_curves(P: Array, R: Array, type_of_arm: IntArray, unit_of_arm: IntArray,
               states: IntArray, sizes: IntArray, h: int, gamma: float, out: Array) -> Array:
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    S = P.shape[2]
    for u in range(sizes.size):
        arms = np.flatnonzero(unit_of_arm == u)
        types, tinv = np.unique(type_of_arm[arms], return_inverse=True)
        K = types.size
        # variables: lambda, then L[k, s, t] for t = 0..h-1 (L at t = h is 0)
        nv = 1 + K * S * h

        def var(k: int, s: int, t: int) -> int:
            return 1 + (k * S + s) * h + t

        rows, cols, vals, rhs = [], [], [], []
        r = 0
        for k in range(K):
            Pk, Rk = P[types[k]], R[types[k]]
            for s in range(S):
                for t in range(h):
                    for a in (0, 1):
                        # -L[k,s,t] - a*lam + gamma * sum P L[k,s',t+1] <= -R[s]
                        rows.append(r)
                        cols.append(var(k, s, t))
                        vals.append(-1.0)
                        if a:
                            rows.append(r)
                            cols.append(0)
                            vals.append(-1.0)
                        if t + 1 < h:
                            for s2 in range(S):
                                if Pk[a, s, s2] != 0:
                                    rows.append(r)
                                    cols.append(var(k, s2, t + 1))
                                    vals.append(gamma * Pk[a, s, s2])
                        rhs.append(-Rk[s])
                        r += 1
        A = coo_matrix((vals, (rows, cols)), shape=(r, nv)).tocsr()
        c0 = np.zeros(nv)
        for i in arms:
            c0[var(int(np.searchsorted(types, type_of_arm[i])), int(states[i]), 0)] += 1.0
        hg = float(np.sum(gamma ** np.arange(h)))
        for b in range(1, int(sizes[u])):
            c = c0.copy()
            c[0] = b * hg
            res = linprog(c, A_ub=A, b_ub=np.asarray(rhs), bounds=[(None, None)] * nv,
                          method="highs")
            if res.status != 0:  # pragma: no cover - the LP is always feasible and bounded
                raise RuntimeError(f"HiGHS failed on group {u}, budget {b}: {res.message}")
            out[u, b] = res.fun
        del tinv
    return out


# --------------------------------------------------------------------------- public API

def group_value_curves(
    domain: Any,
    states: Sequence[int] | NDArray[np.int64],
    *,
    remaining: int | None = None,
    indices: Any = None,
    method: CurveMethod = "index",
    gamma: float | None = None,
    tol: float = 1e-6,
) -> GroupValueCurves:
    """Upper bound on each group's value for every budget ``b = 0..n_g``.

    Parameters
    ----------
    domain : RMABDomain
        Arms and their groups.
    states : array-like of shape (n_arms,)
        Current state of each arm.
    remaining : int, optional
        Decisions left (``H - t``); default ``domain.horizon``.
    indices : array-like of shape (n_arms,), optional
        Current Whittle indices (computed when omitted).
    method : {"index", "reference", "exact", "lp"}
        See the module docstring: the batched WhittleToLagrange envelope (default), the
        reference's single charge per level, exact 1-D convex minimisation, or an LP (HiGHS).
    gamma : float, optional
        Discount; default ``domain.gamma``.
    tol : float
        Precision of the indices when they are computed here.

    Returns
    -------
    GroupValueCurves
        ``values[g, b]`` for ``b <= n_g``.

    Examples
    --------
    >>> from equicare.rmab import load_domain, group_value_curves
    >>> d = load_domain("synthetic", n_arms=20)
    >>> c = group_value_curves(d, [0] * 20, remaining=3)
    >>> c.curve(0).round(3).tolist()   # group A (5 arms in state 0), b = 0..5
    [0.575, 4.241, 7.34, 9.26, 9.9, 9.9]
    """
    from equicare.rmab._whittle import index_cells, unique_arms

    if method not in _METHODS:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="method", owner="group_value_curves",
                                              expected="one of " + ", ".join(map(repr, _METHODS)),
                                              got=method))
    g = float(domain.gamma if gamma is None else gamma)
    h = int(domain.horizon if remaining is None else remaining)
    if h < 1:
        raise InvalidParameterError(
            PARAM_MESSAGE.format(name="remaining", owner="group_value_curves",
                                              expected="an int >= 1", got=remaining))
    st = np.asarray(states, dtype=np.int64)
    if st.shape != (domain.n_arms,) or (st < 0).any() or (st >= domain.n_states).any():
        raise InvalidParameterError(f"states must be {domain.n_arms} state codes in "
                         f"[0, {domain.n_states}); got shape {st.shape}.")
    t_of_arm, Pt, Rt = unique_arms(domain.P, domain.R)
    table = None
    if method == "index" and Pt.shape[0] * h * domain.n_states <= 4 * _MAX_BREAKPOINTS:
        K, S = Pt.shape[0], domain.n_states
        kk = np.repeat(np.arange(K), h * S)
        hh = np.tile(np.repeat(np.arange(1, h + 1), S), K)
        ss = np.tile(np.arange(S), K * h)
        table = index_cells(Pt, Rt, kk, ss, hh, g, tol=tol).reshape(K, h, S)
    if indices is None:
        if table is not None:
            W = table[t_of_arm, h - 1, st]
        else:
            W = index_cells(Pt, Rt, t_of_arm, st, np.full(st.size, h), g, tol=tol)
    else:
        W = np.asarray(indices, dtype=np.float64)
    vals, sizes = unit_curves(Pt, Rt, t_of_arm, domain.groups, st, W, h, g, domain.n_groups,
                              method, table=table)
    return GroupValueCurves(values=vals, sizes=sizes, group_names=domain.group_names,
                            method=method)
