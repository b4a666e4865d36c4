"""Online learners that interact with a simulator: PPO and group-robust PPO (GRPO).

Names load lazily, so ``import equicare.online`` does not import torch.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "PPO": "equicare.online._ppo",
    "PPOConfig": "equicare.online._ppo",
    "GRPO": "equicare.online._grpo",
    "GRPOConfig": "equicare.online._grpo",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.online", _LAZY, globals())
