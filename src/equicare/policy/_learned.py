"""Learned policies stored as model folders (Contract 2): ``config.json`` + ``model.safetensors``.

A model folder holds the architecture of every network (:class:`~equicare.models.NetworkSpec`),
the action space and state columns the model was trained on, and the weights in safetensors.
Loading rebuilds the networks from the JSON spec and copies the tensors in: no code is executed,
nothing is unpickled, ``torch.load`` is never used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import PolicyError
from equicare.spaces import FactoredActionSpace
from equicare.utils import atomic_write_text, check_param, row_blocks

__all__ = [
    "LearnedPolicy",
    "load_policy",
    "read_model_folder",
    "write_model_folder",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
]

MODEL_FORMAT = "equicare-model"
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

MSG_ACTION_SPACE = ("{source}: the model was trained on action space {trained}; the dataset has "
                    "{got}. Retrain on this dataset or use the matching manifest.")
MSG_FEATURES = ("{source}: the model was trained on state columns {trained}; the dataset has "
                "{got}. Retrain on this dataset or use the matching manifest.")


def _check_dir_free(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{path} exists and is not empty; refusing to overwrite "
                                  "(pass overwrite=True / --force).")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            (path / name).unlink(missing_ok=True)


def write_model_folder(path: str | os.PathLike[str], config: Mapping[str, Any],
                       tensors: Mapping[str, Any], *, overwrite: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into a folder (each file atomically).

    Parameters
    ----------
    path : str or Path
        Folder; created if missing. An existing non-empty folder is refused unless ``overwrite``.
    config : mapping
        JSON-serialisable model description (``format`` keys are added).
    tensors : mapping of str to torch.Tensor
        Flat state of every network, keys prefixed by network name (``"policy.encoder..."``).
    overwrite : bool
    """
    from safetensors.torch import save_file

    p = Path(path)
    _check_dir_free(p, overwrite)
    p.mkdir(parents=True, exist_ok=True)
    tmp = p / f".{WEIGHTS_FILE}.tmp"
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, p / WEIGHTS_FILE)
    doc = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **dict(config)}
    atomic_write_text(p / CONFIG_FILE, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return p


def read_model_folder(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a model folder written by :func:`write_model_folder`.

    Returns
    -------
    config : dict
    tensors : dict of str to torch.Tensor

    Raises
    ------
    PolicyError
        Missing files, a foreign or newer format.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise PolicyError(f"Model folder not found: {p}")
    cfg_path, w_path = p / CONFIG_FILE, p / WEIGHTS_FILE
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise PolicyError(f"{p}: missing {f.name}; a model folder holds {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}.")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{cfg_path}: not valid JSON ({exc}).") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        raise PolicyError(f"{cfg_path}: not an equicare model (expected \"format\": "
                          f"\"{MODEL_FORMAT}\").")
    if int(cfg.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise PolicyError(f"{cfg_path}: model format version {cfg['format_version']} is newer than "
                          f"this equicare supports ({MODEL_FORMAT_VERSION}); upgrade equicare.")
    return cfg, load_file(str(w_path))


def state_with_prefix(tensors: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Sub-dictionary of the tensors under ``prefix.`` with the prefix removed."""
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}


@dataclass(eq=False)
class LearnedPolicy:
    """A trained network used as a :class:`~equicare.policy.Policy`.

    Parameters
    ----------
    network : equicare.models.Network
        Scores the support actions: logits (``output="logits"``) or action values
        (``output="q"``).
    action_space : FactoredActionSpace
        Action space of the training data.
    feature_names : tuple of str
        Model input columns of the training data (``TrajectoryDataset.feature_names()``).
    output : {"logits", "q"}
    mode : {"softmax", "greedy"}
        ``softmax``: ``pi(a|s) = softmax(score / temperature)`` over the support; ``greedy``: all
        mass on the best-scoring support action (first on ties).
    temperature : float
        Softmax temperature (> 0).
    batch_size : int
        Rows per forward pass at inference.
    source : str
        Name used in error messages (the model folder).
    """

    network: Any
    action_space: FactoredActionSpace
    feature_names: tuple[str, ...]
    output: Literal["logits", "q"] = "logits"
    mode: Literal["softmax", "greedy"] = "softmax"
    temperature: float = 1.0
    batch_size: int = 8192
    source: str = "<learned policy>"

    def __post_init__(self) -> None:
        check_param(self.output, "output", "LearnedPolicy", choices=("logits", "q"))
        check_param(self.mode, "mode", "LearnedPolicy", choices=("softmax", "greedy"))
        check_param(self.temperature, "temperature", "LearnedPolicy", kind=(int, float),
                    low=0, low_inclusive=False)

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return self.action_space.n_actions

    @property
    def window(self) -> int:
        """Rows of history the policy reads (1 for an MLP encoder)."""
        return int(self.network.window)

    @property
    def support(self) -> NDArray[np.int64]:
        """Flat actions the policy can choose, shape ``(K,)``."""
        return np.asarray(self.network.spec.support, dtype=np.int64)

    def check_compatible(self, dataset: Any) -> None:
        """Raise :class:`PolicyError` if ``dataset`` has another action space or state columns."""
        if dataset.action_space.to_dict() != self.action_space.to_dict():
            raise PolicyError(MSG_ACTION_SPACE.format(
                source=self.source, trained=self.action_space.to_dict(),
                got=dataset.action_space.to_dict()))
        got = tuple(dataset.feature_names())
        if got != tuple(self.feature_names):
            raise PolicyError(MSG_FEATURES.format(source=self.source,
                                                  trained=list(self.feature_names), got=list(got)))

    def support_probs(self, scores: Any) -> Any:
        """Probabilities over the support from scores (torch), shape ``(n, K)``."""
        import torch

        if self.mode == "greedy":
            out = torch.zeros_like(scores)
            out.scatter_(1, scores.argmax(dim=1, keepdim=True), 1.0)
            return out
        return torch.softmax(scores / float(self.temperature), dim=1)

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``.

        Actions outside the support get probability 0. History encoders read the earlier rows of
        each episode in ``dataset`` (at most ``window`` of them).
        """
        import torch

        from equicare.models._inputs import ModelInputs, batched_forward

        self.check_compatible(dataset)
        inputs = ModelInputs.from_dataset(dataset, self.window,
                                          bool(self.network.spec.history_actions))
        out = np.zeros((dataset.n_steps, self.n_actions))
        support = self.support
        # blocks of whole forward batches (the same batches, so the same numbers, as one pass)
        blocks = list(row_blocks(dataset.n_steps, support.size, multiple=self.batch_size))
        for sl in blocks or [slice(0, 0)]:  # no rows: batched_forward says so
            rows = torch.arange(sl.start, sl.stop)
            p_sup = self.support_probs(batched_forward(self.network, inputs, self.batch_size,
                                                       rows=rows))
            p = p_sup.double().numpy()
            p /= p.sum(axis=1, keepdims=True)
            out[sl, support] = p
        return out

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action per row, shape ``(n_steps,)``."""
        return np.asarray(np.argmax(self.action_probs(dataset), axis=1), dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        """Describe the policy: the ``"policy"`` entry of a model folder's ``config.json``."""
        return {"output": self.output, "mode": self.mode, "temperature": float(self.temperature),
                "network": self.network.spec.to_dict(), "weights": "policy"}


def policy_from_config(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                       ) -> LearnedPolicy:
    """Build the :class:`LearnedPolicy` described by a model folder's config and tensors."""
    from equicare.models._networks import Network, NetworkSpec

    try:
        pol = cfg["policy"]
        spec = NetworkSpec.from_dict(pol["network"])
        space = FactoredActionSpace.from_dict(cfg["action_space"])
        feature_names = tuple(str(f) for f in cfg["feature_names"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolicyError(f"{source}: malformed {CONFIG_FILE} ({exc}).") from exc
    net = Network(spec)
    state = state_with_prefix(tensors, str(pol.get("weights", "policy")))
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PolicyError(f"{source}: weights do not match the network in {CONFIG_FILE} "
                          f"({str(exc).splitlines()[0]}).") from exc
    net.eval()
    return LearnedPolicy(network=net, action_space=space, feature_names=feature_names,
                         output=pol.get("output", "logits"), mode=pol.get("mode", "softmax"),
                         temperature=float(pol.get("temperature", 1.0)), source=source)


def load_policy(path: str | os.PathLike[str]) -> Any:
    """Load the policy of a model folder written by any equicare learner's ``save``.

    Parameters
    ----------
    path : str or Path
        Folder with ``config.json`` and ``model.safetensors``.

    Returns
    -------
    LearnedPolicy or CellPolicy
        A network policy, or the per-cell table of a tabular learner (SPIBB,
        ``"policy": {"kind": "cells"}``). ``action_probs(dataset)`` checks that ``dataset`` has
        the training action space and state columns.

    Raises
    ------
    PolicyError
        Missing or malformed files.
    """
    cfg, tensors = read_model_folder(path)
    pol = cfg.get("policy")
    if isinstance(pol, Mapping) and pol.get("kind") == "cells":
        from equicare.policy._cells import CellPolicy

        return CellPolicy.from_config(cfg, tensors, str(path))
    return policy_from_config(cfg, tensors, str(path))

