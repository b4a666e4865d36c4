"""Policy learners: offline (BC, AWR, CQL, fairness-constrained) and online (PPO, group-robust PPO).

Every name is loaded lazily (module ``__getattr__``), so ``import equicare.algos`` does not
import torch; the first attribute access does.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

# name -> private module that defines it
_LAZY: dict[str, str] = {
    # ---- offline learners (issue 4)
    "LearnerConfig": "equicare.algos._base",
    "OfflineLearner": "equicare.algos._base",
    "load_learner": "equicare.algos._base",
    "BC": "equicare.algos._bc",
    "BCConfig": "equicare.algos._bc",
    "AWR": "equicare.algos._awr",
    "AWRConfig": "equicare.algos._awr",
    "CQL": "equicare.algos._cql",
    "CQLConfig": "equicare.algos._cql",
    "GroupDRO": "equicare.algos._fairness",
    "parity_penalty": "equicare.algos._fairness",
    "to_d3rlpy": "equicare.algos._d3rlpy",
    "from_d3rlpy": "equicare.algos._d3rlpy",
    # ---- online learners (issue 9)
    "PPO": "equicare.algos.ppo",
    "PPOConfig": "equicare.algos.ppo",
    "GRPO": "equicare.algos.grpo",
    "GRPOConfig": "equicare.algos.grpo",
    # ---- model-based offline reward learning for dosing (issue 8)
    "OMG": "equicare.algos.omg",
    "OMGConfig": "equicare.algos.omg",
    "DiscreteSAC": "equicare.algos._sac",
    "SACConfig": "equicare.algos._sac",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.algos", _LAZY, globals())
