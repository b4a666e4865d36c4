"""Torch building blocks: state encoders (MLP, LSTM + attention history), factored heads, networks.

Every name is loaded lazily (module ``__getattr__``), so ``import equicare.models`` does not
import torch; the first attribute access does.
"""

from __future__ import annotations

from equicare._lazy import lazy_exports

# name -> private module that defines it
_LAZY: dict[str, str] = {
    "CategoricalEmbedding": "equicare.models._encoders",
    "embedding_size": "equicare.models._encoders",
    "HistoryEncoder": "equicare.models._encoders",
    "MLPEncoder": "equicare.models._encoders",
    "Standardize": "equicare.models._encoders",
    "window_index": "equicare.models._encoders",
    "FactoredCategoricalHead": "equicare.models._heads",
    "FactoredQHead": "equicare.models._heads",
    "JointCategoricalHead": "equicare.models._heads",
    "JointQHead": "equicare.models._heads",
    "ValueHead": "equicare.models._heads",
    "flat_codes": "equicare.models._heads",
    "ModelInputs": "equicare.models._inputs",
    "batched_forward": "equicare.models._inputs",
    "previous_action_features": "equicare.models._inputs",
    "Network": "equicare.models._networks",
    "NetworkSpec": "equicare.models._networks",
    "build_network": "equicare.models._networks",
    "seeded": "equicare.models._networks",
    "DiscreteActorCritic": "equicare.models._ppo_nets",
    "StandardizedMLP": "equicare.models._mlp",
    "DynamicsEnsemble": "equicare.models._dynamics",
    "DynamicsConfig": "equicare.models._dynamics",
    "GaussianEnsembleNet": "equicare.models._dynamics",
    "Transitions": "equicare.models._dynamics",
    "transitions_from_dataset": "equicare.models._dynamics",
    "RewardNet": "equicare.models._reward_net",
    "RewardEnsemble": "equicare.models._reward_net",
    # --- other helpers' modules (PPO networks, dynamics ensemble) add their names here ---
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.models", _LAZY, globals())
