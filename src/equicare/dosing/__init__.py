"""Model-based offline reward learning for medication dosing (OMG-RL) and its discrete SAC.

Names load lazily, so ``import equicare.dosing`` does not import torch.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "OMG": "equicare.dosing._omg",
    "OMGConfig": "equicare.dosing._omg",
    "DiscreteSAC": "equicare.dosing._sac",
    "SACConfig": "equicare.dosing._sac",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.dosing", _LAZY, globals())
