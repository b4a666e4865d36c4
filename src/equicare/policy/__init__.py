"""Policies: one protocol, ``action_probs(dataset) -> (n_steps, n_actions)``."""

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
from equicare.policy._file import FilePolicy, read_policy_file, write_policy_file

__all__ = [
    "CallablePolicy",
    "FilePolicy",
    "FixedActionPolicy",
    "MixturePolicy",
    "Policy",
    "TabularPolicy",
    "UniformPolicy",
    "check_probs",
    "greedy_actions",
    "read_policy_file",
    "sample_actions",
    "write_policy_file",
]
