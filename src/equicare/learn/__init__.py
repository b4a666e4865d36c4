"""Offline policy learners: BC, AWR, CQL, SPIBB, PVI, fairness penalties, group DRO, d3rlpy interop.

Every name is loaded lazily (module ``__getattr__``), so ``import equicare.learn`` does not
import torch; the first attribute access does.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

# name -> private module that defines it
_LAZY: dict[str, str] = {
    "LearnerConfig": "equicare.learn._base",
    "OfflineLearner": "equicare.learn._base",
    "LEARNERS": "equicare.learn._registry",
    "load_learner": "equicare.learn._registry",
    "BC": "equicare.learn._bc",
    "BCConfig": "equicare.learn._bc",
    "AWR": "equicare.learn._awr",
    "AWRConfig": "equicare.learn._awr",
    "CQL": "equicare.learn._cql",
    "CQLConfig": "equicare.learn._cql",
    "PVI": "equicare.learn._pvi",
    "PVIConfig": "equicare.learn._pvi",
    "SPIBB": "equicare.learn._spibb",
    "SPIBBConfig": "equicare.learn._spibb",
    "fit_stream": "equicare.learn._stream",
    "GroupDRO": "equicare.learn._fairness",
    "parity_penalty": "equicare.learn._fairness",
    "to_d3rlpy": "equicare.learn._d3rlpy",
    "from_d3rlpy": "equicare.learn._d3rlpy",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.learn", _LAZY, globals())
