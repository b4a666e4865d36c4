"""equicare: equitable sequential decision-making in health care.

Learn intervention policies offline, evaluate them honestly (off-policy evaluation with
uncertainty), audit their equity, allocate scarce interventions fairly (restless bandits) and
explain effects through mediators. ``import equicare`` is light: heavy layers (torch, matplotlib,
ray) load only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "data", "spaces", "rewards", "sim", "models", "policy", "learn", "online", "dosing", "ope",
    "fairness", "rmab", "explain",
    "causal", "pipeline", "report", "cli", "exceptions", "utils",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"equicare.{name}")
    raise AttributeError(f"module 'equicare' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
