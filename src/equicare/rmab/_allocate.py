r"""Splitting a budget across groups from their value curves: MMR, MNW and MNW-EG.

Each rule is a greedy over a heap of groups, ``O(B log G)`` once the curves are known:

``"mmr"`` (maximin reward, water-filling)
    give the next unit to the group whose per-arm value :math:`V_g(b_g) / n_g` is lowest.
    Optimal for :math:`\max \min_g V_g(b_g)/n_g` when the curves are non-decreasing.
``"mnw"`` (maximum Nash welfare)
    give the next unit to the largest gain :math:`\log V_g(b_g + 1) - \log V_g(b_g)`.
    Optimal for :math:`\max \sum_g \log V_g(b_g)` when the curves are concave and positive.
    When a curve has a negative value (rewards that are costs) the logarithm is undefined, and
    the welfare is that of each group's gain over no action (the Nash bargaining solution
    with no action as the disagreement point, Nash 1950):
    :math:`\max \sum_g \log (V_g(b_g) - V_g(0))`. Before, every gain read minus infinity
    and the budget went to the groups in the order they were listed (on a Medicaid cost panel
    the first group got all 1,000 home visits a month and the worst-off group none).
``"mnw-eg"`` (Nash welfare with equal groups)
    up-sample every group to the largest size :math:`n_{\max}` (its curve read at
    :math:`b\, n_g / n_{\max}`, linear interpolation, times :math:`n_{\max}/n_g`), allocate the
    budget by MNW, scale each share back by :math:`n_g / n_{\max}`, renormalise to the budget,
    cap at the group sizes and round by largest remainders. Small groups then no longer win
    every unit just because one unit moves their (small) total a lot.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE

__all__ = ["allocate_budget", "AllocationRule"]

AllocationRule = Literal["mmr", "mnw", "mnw-eg"]
_RULES = ("mmr", "mnw", "mnw-eg")
Array = NDArray[np.float64]


def _curves_of(curves: Any) -> list[Array]:
    if hasattr(curves, "values") and hasattr(curves, "sizes"):
        return [np.asarray(curves.values[g, : int(n) + 1], dtype=np.float64)
                for g, n in enumerate(curves.sizes)]
    out = [np.asarray(c, dtype=np.float64) for c in curves]
    for g, c in enumerate(out):
        if c.ndim != 1 or c.size < 2 or not np.isfinite(c).all():
            raise InvalidParameterError(
                f"Curve {g} must be a finite 1-D array with one value per budget "
                             f"level 0..n_g (at least 2 values); got shape {c.shape}.")
    return out


def _log(v: float) -> float:
    return float(np.log(v)) if v > 0 else -np.inf


def _gain(c: Array, b: int) -> float:
    lo, hi = _log(float(c[b])), _log(float(c[b + 1]))
    if hi == -np.inf:
        return -np.inf
    if lo == -np.inf:
        return np.inf
    return hi - lo


def _mmr(curves: list[Array], sizes: Sequence[int], budget: int) -> NDArray[np.int64]:
    b = np.zeros(len(curves), dtype=np.int64)
    heap = [(float(c[0]) / n, g) for g, (c, n) in enumerate(zip(curves, sizes, strict=True))
            if n > 0]
    heapq.heapify(heap)
    for _ in range(budget):
        _, g = heapq.heappop(heap)
        b[g] += 1
        if b[g] < sizes[g]:
            heapq.heappush(heap, (float(curves[g][b[g]]) / sizes[g], g))
    return b


def _mnw(curves: list[Array], caps: Sequence[int], budget: int) -> NDArray[np.int64]:
    b = np.zeros(len(curves), dtype=np.int64)
    heap = [(-_gain(c, 0), g) for g, (c, n) in enumerate(zip(curves, caps, strict=True)) if n > 0]
    heapq.heapify(heap)
    for _ in range(budget):
        _, g = heapq.heappop(heap)
        b[g] += 1
        if b[g] < caps[g]:
            heapq.heappush(heap, (-_gain(curves[g], int(b[g])), g))
    return b


def _largest_remainder(x: Array, total: int, caps: NDArray[np.int64]) -> NDArray[np.int64]:
    """Integer vector summing to ``total`` with ``out <= caps``, closest to ``x`` (Hamilton)."""
    base = np.minimum(np.floor(x + 1e-9).astype(np.int64), caps)
    left = int(total - base.sum())
    if left > 0:
        frac = np.where(base < caps, x - base, -np.inf)
        order = np.lexsort((np.arange(x.size), -frac))
        for g in order:
            if left == 0:
                break
            if base[g] < caps[g]:
                base[g] += 1
                left -= 1
    return base


def _cap_and_scale(x: Array, total: int, caps: NDArray[np.int64]) -> Array:
    """Scale shares ``x`` to sum to ``total`` while keeping ``x <= caps`` (water-filling)."""
    x = np.asarray(x, dtype=np.float64).copy()
    fixed = np.zeros(x.size, dtype=bool)
    for _ in range(x.size + 1):
        free_total = total - caps[fixed].sum()
        s = x[~fixed].sum()
        if s > 0:
            x[~fixed] = x[~fixed] * free_total / s
        else:
            room = caps[~fixed].astype(float)
            x[~fixed] = room * free_total / max(room.sum(), 1.0)
        x[fixed] = caps[fixed]
        over = (x > caps + 1e-12) & ~fixed
        if not over.any():
            break
        fixed |= over
    return x


def allocate_budget(
    curves: Any,
    budget: int,
    rule: AllocationRule = "mmr",
    *,
    sizes: Sequence[int] | None = None,
) -> NDArray[np.int64]:
    """Split ``budget`` actions per step across groups.

    Parameters
    ----------
    curves : GroupValueCurves or sequence of 1-D arrays
        ``curves[g][b]`` = value of group ``g`` with ``b`` actions per step, ``b = 0..n_g``.
    budget : int
        Total actions per step, ``0 <= budget <= sum_g n_g``.
    rule : {"mmr", "mnw", "mnw-eg"}
        Maximin reward (water-filling), maximum Nash welfare, or Nash welfare with groups
        up-sampled to equal size. With a negative value in any curve (costs) the two Nash
        rules weigh each group's gain over no action, ``V_g(b) - V_g(0)`` (module docstring).
    sizes : sequence of int, optional
        Group sizes ``n_g`` (default ``len(curves[g]) - 1``).

    Returns
    -------
    ndarray of shape (n_groups,)
        Actions per group, summing to ``budget``.

    Examples
    --------
    >>> from equicare.rmab import allocate_budget
    >>> allocate_budget([[0, 1, 2, 3], [0, 5]], 2, "mmr").tolist()
    [1, 1]
    """
    cs = _curves_of(curves)
    n = [len(c) - 1 for c in cs] if sizes is None else [int(x) for x in sizes]
    if rule not in _RULES:
        raise InvalidParameterError(PARAM_MESSAGE.format(name="rule", owner="allocate_budget",
                                              expected="one of " + ", ".join(map(repr, _RULES)),
                                              got=rule))
    total = int(sum(n))
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or not (
            0 <= budget <= total):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="budget", owner="allocate_budget",
                                              expected=f"an int in [0, {total}] (the number of "
                                                       "arms)", got=budget))
    for g, (c, m) in enumerate(zip(cs, n, strict=True)):
        if m < 1:
            raise InvalidParameterError(f"Group {g} is empty; every group needs at least one arm.")
        if len(c) != m + 1:
            raise InvalidParameterError(
                f"Curve {g} must have n_g + 1 = {m + 1} values; got {len(c)}.")
    budget = int(budget)
    if rule == "mmr":
        return _mmr(cs, n, budget)
    if any(float(c.min()) < 0 for c in cs):  # costs: Nash welfare of the gains over no action
        cs = [c - c[0] for c in cs]
    if rule == "mnw":
        return _mnw(cs, n, budget)
    # mnw-eg: up-sample to equal size, allocate, rescale
    nmax = max(n)
    grid = np.arange(nmax + 1, dtype=np.float64)
    eq = [(nmax / m) * np.interp(grid * m / nmax, np.arange(m + 1), c) for c, m in zip(cs, n,
                                                                                      strict=True)]
    b_eq = _mnw(eq, [nmax] * len(cs), min(budget, nmax * len(cs)))
    caps = np.asarray(n, dtype=np.int64)
    x = b_eq * caps / nmax
    x = _cap_and_scale(x, budget, caps)
    return _largest_remainder(x, budget, caps)
