"""Load the policy to explain: a model folder (any learner, or distilled rules) or a policy file.

One small helper so that the card does not depend on how model folders are loaded: it calls
:func:`equicare.policy.load_policy` (the one loader of model folders) or reads a Contract-2 policy
file with :class:`equicare.policy.FilePolicy`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["load_source_policy"]


def load_source_policy(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Load a policy and describe it for the card.

    Parameters
    ----------
    path : str or Path
        Model folder (``config.json`` + ``model.safetensors``) or policy file (.parquet/.csv).

    Returns
    -------
    policy : Policy
    description : dict
        ``{"path", "kind", "algo"}`` (``kind`` is ``"model folder"`` or ``"policy file"``).

    Raises
    ------
    FileNotFoundError
        ``path`` is neither a folder nor a file.
    PolicyError
        A malformed model folder or policy file.
    """
    import equicare.policy as policy_mod

    p = Path(path)
    if p.is_dir():
        pol = policy_mod.load_policy(p)
        algo = "model"
        try:
            cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
            algo = str(cfg.get("learner") or cfg.get("algo") or "model")
        except (OSError, ValueError):
            pass
        return pol, {"path": str(p), "kind": "model folder", "algo": algo}
    if p.is_file():
        return policy_mod.FilePolicy(p), {"path": str(p), "kind": "policy file",
                                          "algo": p.stem}
    raise FileNotFoundError(f"{p}: no such model folder or policy file.")
