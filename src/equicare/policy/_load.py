"""Loading any policy: one explicit table from a model folder's learner to its policy builder.

The builders live with the policy representations (network policies in
:mod:`equicare.policy._learned`, per-cell tables in :mod:`equicare.policy._cells`, distilled rules
in :mod:`equicare.policy._tree`); this module only dispatches, so none of them imports another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from equicare.exceptions import PolicyError
from equicare.policy._learned import (
    CONFIG_FILE,
    MSG_NOT_FOUND,
    MSG_UNKNOWN_LEARNER,
    network_policy,
    read_model_folder,
    simulator_policy,
    state_policy,
)

__all__ = ["POLICY_BUILDERS", "PolicyBuilder", "load_policy", "policy_name"]


def tree_policy(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str) -> Any:
    """The :class:`~equicare.policy.TreePolicy` of distilled rules (``equicare explain``)."""
    from equicare.policy._tree import tree_policy_from_config

    return tree_policy_from_config(cfg, tensors, source)


def cell_policy(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str) -> Any:
    """The per-cell probability table of a tabular learner (SPIBB, PVI)."""
    from equicare.policy._cells import CellPolicy

    return CellPolicy.from_config(cfg, tensors, source)


PolicyBuilder = Callable[[Mapping[str, Any], Mapping[str, Any], str], Any]

#: learner (``config.json``'s ``learner``) -> builder of its policy. One explicit table: a new
#: kind of model folder adds one line here.
POLICY_BUILDERS: dict[str, PolicyBuilder] = {
    "bc": network_policy,
    "awr": network_policy,
    "cql": network_policy,
    "omg": state_policy,
    "ppo": simulator_policy,
    "grpo": simulator_policy,
    "spibb": cell_policy,
    "pvi": cell_policy,
    "tree": tree_policy,
}


def load_policy(path: str | os.PathLike[str]) -> Any:
    """Load any policy: a model folder of any equicare learner, or a Contract-2 policy file.

    Parameters
    ----------
    path : str or Path
        A model folder (``config.json`` + ``model.safetensors``) or a ``.parquet`` / ``.csv``
        policy file.

    Returns
    -------
    Policy
        :class:`LearnedPolicy` (BC, AWR, CQL), :class:`StatePolicy` (OMG),
        :class:`SimulatorPolicy` (PPO, GRPO), a per-cell table (SPIBB), distilled rules
        (:class:`~equicare.policy.TreePolicy`) or :class:`~equicare.policy.FilePolicy`. The model
        policies check that a dataset has their training action space and state columns.

    Raises
    ------
    PolicyError
        No such path; missing, malformed, foreign, future-version or corrupt files; a learner
        without a loader. Each message names the file.
    """
    p = Path(path)
    if p.is_file():
        from equicare.policy._file import FilePolicy

        return FilePolicy(p)
    if not p.is_dir():
        raise PolicyError(MSG_NOT_FOUND.format(path=p))
    cfg, tensors = read_model_folder(p)
    learner = cfg["learner"]
    builder = POLICY_BUILDERS.get(learner)
    if builder is None:
        raise PolicyError(MSG_UNKNOWN_LEARNER.format(file=p / CONFIG_FILE, learner=learner,
                                                     known=", ".join(sorted(POLICY_BUILDERS))))
    return builder(cfg, tensors, str(p))


def policy_name(path: str | os.PathLike[str]) -> str:
    """A readable name of the policy at ``path`` for result files and tables.

    The file or folder name without suffix, except for distilled rules (a tree model folder,
    usually ``card/model``, whose name says nothing): ``"rules (depth 3) of m_awr"``, from the
    depth asked for and the source policy recorded in its ``config.json``.

    Parameters
    ----------
    path : str or Path
        A policy file or model folder (not checked: an unreadable one gets its file name).

    Returns
    -------
    str
    """
    p = Path(path)
    try:
        cfg = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return p.stem
    if not isinstance(cfg, dict) or cfg.get("kind") != "tree":
        return p.stem
    info: dict[str, Any] = cfg["info"] if isinstance(cfg.get("info"), dict) else {}
    distill = info.get("distill") if isinstance(info.get("distill"), dict) else {}
    depth = distill.get("max_depth") if distill else None
    src: dict[str, Any] = info["source"] if isinstance(info.get("source"), dict) else {}
    of = (Path(str(src["path"])).name if src.get("path") else
          src.get("algo") if src.get("algo") else None)
    return ("rules" + (f" (depth {depth})" if depth is not None else "")
            + (f" of {of}" if of else ""))
