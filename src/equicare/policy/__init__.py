"""Policies: one protocol, ``action_probs(dataset) -> (n_steps, n_actions)``."""

from equicare._lazy import lazy_exports
from equicare.policy._base import (
    CallablePolicy,
    FixedActionPolicy,
    MixturePolicy,
    Policy,
    TabularPolicy,
    UniformPolicy,
    check_probs,
    greedy_actions,
    sample_actions,
)
from equicare.policy._deployed import USUAL_CARE, DeployedPolicy, as_deployed, deferred_target
from equicare.policy._file import (
    FilePolicy,
    read_policy_file,
    write_policy_file,
    write_policy_stream,
)
from equicare.policy._tree import TreePolicy, tree_features

__all__ = [
    "CallablePolicy",
    "DeployedPolicy",
    "FilePolicy",
    "FixedActionPolicy",
    "MixturePolicy",
    "Policy",
    "TabularPolicy",
    "TreePolicy",
    "USUAL_CARE",
    "UniformPolicy",
    "as_deployed",
    "check_probs",
    "deferred_target",
    "greedy_actions",
    "read_policy_file",
    "sample_actions",
    "tree_features",
    "write_policy_file",
    "write_policy_stream",
]

# --- learned policies (model folders); loaded lazily so that importing equicare.policy does not
# import torch
_LAZY = {
    "BehaviorModel": "equicare.policy._behavior",  # imports scikit-learn
    "CellPolicy": "equicare.policy._cells",
    "LearnedPolicy": "equicare.policy._learned",
    "SimulatorPolicy": "equicare.policy._learned",
    "StatePolicy": "equicare.policy._learned",
    "load_policy": "equicare.policy._load",
    "manifest_fingerprint": "equicare.policy._learned",
}
__all__ += sorted(_LAZY)

__getattr__, __dir__ = lazy_exports("equicare.policy", _LAZY, globals())
