"""Equitable restless-bandit planning (Killian et al., "Equitable Restless Multi-Armed Bandits").

Arms with passive/active transition matrices and groups (:class:`RMABDomain`,
:func:`load_domain`), batched Whittle indices (:func:`whittle_indices`), Lagrangian group value
curves (:func:`group_value_curves`), equitable budget splits (:func:`allocate_budget`: MMR, MNW,
MNW-EG), vectorised simulation and Contract-5 results (:func:`simulate`, :func:`plan`), capacity
planning (:func:`capacity_plan`) and arm models estimated from a panel (:func:`estimate_arms`).
Figures (:func:`plot_group_outcomes`, :func:`plot_pareto`, :func:`plot_capacity`) load
matplotlib lazily.
"""

from __future__ import annotations

from typing import Any

from equicare.rmab._allocate import allocate_budget
from equicare.rmab._capacity import CapacityResult, capacity_plan
from equicare.rmab._curves import GroupValueCurves, group_value_curves
from equicare.rmab._domain import BUILTIN_DOMAINS, RMABDomain, load_domain
from equicare.rmab._estimate import EstimatedArms, estimate_arms
from equicare.rmab._metrics import gini
from equicare.rmab._simulate import (
    POLICIES,
    PlanConfig,
    PlanResult,
    PolicySummary,
    SimulationResult,
    plan,
    simulate,
)
from equicare.rmab._whittle import IndexabilityWarning, check_indexability, whittle_indices

__all__ = [
    "BUILTIN_DOMAINS",
    "POLICIES",
    "CapacityResult",
    "EstimatedArms",
    "GroupValueCurves",
    "IndexabilityWarning",
    "PlanConfig",
    "PlanResult",
    "PolicySummary",
    "RMABDomain",
    "SimulationResult",
    "allocate_budget",
    "capacity_plan",
    "check_indexability",
    "estimate_arms",
    "gini",
    "group_value_curves",
    "load_domain",
    "plan",
    "plot_capacity",
    "plot_group_outcomes",
    "plot_pareto",
    "simulate",
    "whittle_indices",
]

_LAZY = {"plot_capacity", "plot_group_outcomes", "plot_pareto"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from equicare.rmab import _plots

        return getattr(_plots, name)
    raise AttributeError(f"module 'equicare.rmab' has no attribute {name!r}")
