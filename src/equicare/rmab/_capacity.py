"""Capacity planning: the smallest weekly budget that brings a cohort to a target state mix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError
from equicare.rmab._domain import RMABDomain
from equicare.rmab._metrics import se
from equicare.rmab._simulate import (
    PlanConfig,
    _ArmBatch,
    _check_common,
    _check_policy,
    _run,
    _seed_of,
    resolve_budget,
)
from equicare.utils import PARAM_MESSAGE, RandomState

__all__ = ["CapacityResult", "capacity_plan"]

Array = NDArray[np.float64]


@dataclass(frozen=True, kw_only=True, eq=False)
class CapacityResult:
    """Share of arms ending in the goal states, per policy and budget.

    Attributes
    ----------
    budgets : ndarray of shape (n_budgets,)
        Budgets simulated (actions per step), sorted.
    share : dict of str to ndarray of shape (n_budgets,)
        Mean share of arms in a goal state after the last step, per policy.
    share_se : dict of str to ndarray of shape (n_budgets,)
    min_budget : dict of str to int or None
        Smallest budget whose mean share reaches ``target_share`` (None: not reached even at
        the largest budget tried). Found on the grid, then refined by bisection between the
        last grid budget that misses and the first that reaches (assumes the share grows with
        the budget).
    target_share : float
    goal_states : tuple of str
    n_arms, horizon, seeds : int
    """

    budgets: NDArray[np.int64]
    share: dict[str, Array]
    share_se: dict[str, Array]
    min_budget: dict[str, int | None]
    target_share: float
    goal_states: tuple[str, ...]
    n_arms: int
    horizon: int
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return {"n_arms": self.n_arms, "horizon": self.horizon, "seeds": self.seeds,
                "target_share": self.target_share, "goal_states": list(self.goal_states),
                "budgets": self.budgets.tolist(),
                "policies": {p: {"share": self.share[p].tolist(),
                                 "share_se": [None if not np.isfinite(v) else float(v)
                                              for v in self.share_se[p]],
                                 "min_budget": self.min_budget[p]} for p in self.share}}


def _goal_mask(domain: RMABDomain, goal_states: Any) -> NDArray[np.bool_]:
    S = domain.n_states
    if goal_states is None:
        if domain.high_risk is None:
            raise InvalidParameterError(
                "capacity_plan needs goal_states (which states count as reaching the "
                             f"goal); domain {domain.name!r} defines no high-risk states to "
                             "take the complement of.")
        return ~domain.high_risk
    g = np.asarray(goal_states)
    if g.dtype == bool:
        if g.shape != (S,):
            raise InvalidParameterError(
                f"A boolean goal_states mask must have shape ({S},); got {g.shape}.")
        return g
    mask = np.zeros(S, dtype=bool)
    names = domain.state_names or ()
    for v in np.atleast_1d(g).tolist():
        if isinstance(v, str):
            if v not in names:
                raise InvalidParameterError(f"Unknown goal state {v!r}; states are {list(names)}.")
            mask[names.index(v)] = True
        elif isinstance(v, int) and 0 <= v < S:
            mask[v] = True
        else:
            raise InvalidParameterError(
                f"goal_states must be state codes in [0, {S}) or state names; "
                             f"got {v!r}.")
    return mask


def capacity_plan(
    domain: RMABDomain,
    *,
    target_share: float,
    goal_states: Any = None,
    policies: tuple[str, ...] | list[str] = ("opt", "mmr", "mnw-eg", "random"),
    budgets: Any = None,
    horizon: int | None = None,
    seeds: int = 25,
    random_state: RandomState = 0,
    config: PlanConfig | None = None,
    refine: bool = True,
) -> CapacityResult:
    """Smallest budget per step that brings the cohort to ``target_share`` in the goal states.

    Parameters
    ----------
    domain : RMABDomain
    target_share : float in [0, 1]
        Required mean share of arms in a goal state after the last step.
    goal_states : bool mask, state codes or state names, optional
        Default: the complement of ``domain.high_risk`` (diabetes: A1c < 8).
    policies : sequence of str
    budgets : sequence of int or float, optional
        Budgets to simulate (ints: actions per step; floats: fractions of the arms); default
        0%, 10%, ..., 100% of the arms.
    horizon, seeds, random_state, config
        As in :func:`plan`.
    refine : bool
        Bisect between grid budgets to find the exact smallest budget.

    Returns
    -------
    CapacityResult
    """
    cfg = config or PlanConfig()
    H = _check_common(domain, horizon, seeds)
    if not (isinstance(target_share, float | int) and 0.0 <= float(target_share) <= 1.0):
        raise InvalidParameterError(PARAM_MESSAGE.format(name="target_share", owner="capacity_plan",
                                              expected="a float in [0, 1]", got=target_share))
    for p in policies:
        _check_policy(p, domain)
    goal = _goal_mask(domain, goal_states)
    N = domain.n_arms
    if budgets is None:
        grid = np.unique(np.round(np.linspace(0, N, 11)).astype(np.int64))
    else:
        grid = np.unique([resolve_budget(b, N, "capacity_plan") for b in budgets])
    seed = _seed_of(random_state)
    batch = _ArmBatch(domain, int(seeds), seed, cfg)
    share: dict[str, Array] = {}
    share_se: dict[str, Array] = {}
    best: dict[str, int | None] = {}

    def outcome(p: str, b: int) -> tuple[float, float]:
        sim = _run(batch, p, int(b), H, seed)
        per_seed = goal[sim.final_states].mean(axis=1)
        return float(per_seed.mean()), float(se(per_seed))

    for p in policies:
        res = [outcome(p, int(b)) for b in grid]
        share[p] = np.array([r[0] for r in res])
        share_se[p] = np.array([r[1] for r in res])
        hit = np.flatnonzero(share[p] >= target_share)
        if hit.size == 0:
            best[p] = None
            continue
        j = int(hit[0])
        hi = int(grid[j])
        if refine and j > 0:
            lo = int(grid[j - 1])  # misses the target
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if outcome(p, mid)[0] >= target_share:
                    hi = mid
                else:
                    lo = mid
        best[p] = hi
    names = domain.state_names or tuple(str(s) for s in range(domain.n_states))
    return CapacityResult(budgets=grid, share=share, share_se=share_se, min_budget=best,
                          target_share=float(target_share),
                          goal_states=tuple(n for n, m in zip(names, goal, strict=True) if m),
                          n_arms=N, horizon=H, seeds=int(seeds))
