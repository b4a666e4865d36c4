"""Model folders (Contract 2), the one format every learner saves, and the one policy loader.

A model folder is ``config.json`` + ``model.safetensors``:

- ``config.json`` holds ``format = "equicare-model"``, ``format_version``, the ``learner`` that
  wrote it (``bc``, ``awr``, ``cql``, ``omg``, ``ppo``, ``grpo``, ...), its ``action_space``, the
  ``manifest_fingerprint`` of the training data (``null`` for simulator-trained learners), a
  ``policy`` entry describing the network that acts, and whatever else the learner needs to
  rebuild itself;
- ``model.safetensors`` holds every tensor of every sub-network in one file, each name prefixed
  by its sub-network (``policy.``, ``sac.actor.``, ``reward_net.``, ``dynamics.``, ...).

Loading rebuilds the networks from the JSON description and copies the tensors in: no code is
executed, nothing is unpickled, ``torch.load`` is never used.
:func:`equicare.policy.load_policy` (:mod:`equicare.policy._load`) turns any model folder (or a
Contract-2 policy file) into a :class:`~equicare.policy.Policy`, dispatching on the config's
``learner`` through one small table; this module never imports a learner.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.spaces import FactoredActionSpace
from equicare.utils import PARAM_MESSAGE, check_param, row_blocks

__all__ = [
    "LearnedPolicy",
    "StatePolicy",
    "SimulatorPolicy",
    "read_model_folder",
    "write_model_folder",
    "manifest_fingerprint",
    "MASKED_LOGIT",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
]

MODEL_FORMAT = "equicare-model"
#: 2: ``learner`` key (was ``algo``), every learner (OMG, PPO, GRPO too), ``manifest_fingerprint``
MODEL_FORMAT_VERSION = 2
#: versions this equicare reads (1: BC/AWR/CQL folders with ``algo`` instead of ``learner``)
READABLE_VERSIONS = (1, 2)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

MSG_ACTION_SPACE = ("{source}: the model was trained on action space {trained}; the dataset has "
                    "{got}. Retrain on this dataset or use the matching manifest.")
MSG_FEATURES = ("{source}: the model was trained on state columns {trained}; the dataset has "
                "{got}. Retrain on this dataset or use the matching manifest.")
MSG_NOT_FOUND = "{path}: no such policy file or model folder."
MSG_MISSING = ("{file}: missing; a model folder holds " + CONFIG_FILE + " and " + WEIGHTS_FILE
               + ".")
MSG_BAD_JSON = "{file}: not valid JSON ({detail})."
MSG_FOREIGN = "{file}: not an equicare model (expected \"format\": \"" + MODEL_FORMAT + "\")."
MSG_LEGACY = ("{file}: not an equicare model folder; it looks like one written by an earlier "
              "equicare ({legacy}). Retrain, or save again with this version.")
MSG_NEWER = ("{file}: model format version {version} is newer than this equicare reads "
             "(up to " + str(MODEL_FORMAT_VERSION) + "); upgrade equicare.")
MSG_BAD_VERSION = ("{file}: unknown model format version {version!r}; this equicare reads "
                   "versions " + ", ".join(map(str, READABLE_VERSIONS)) + ".")
MSG_CORRUPT = ("{file}: cannot read the weights ({detail}); the file is truncated or corrupt. "
               "Save the model again.")
MSG_MALFORMED = "{source}: malformed " + CONFIG_FILE + " ({detail})."
MSG_UNKNOWN_LEARNER = ("{file}: learner {learner!r} has no policy loader; known learners: "
                       "{known}.")
MSG_EXISTS = ("{path} exists and is not empty; refusing to overwrite it (pass overwrite=True / "
              "--force).")
MSG_NOT_A_MODEL = ("{path} is not empty and holds no model folder ({config} missing); refusing "
                   "to replace it, even with force.")
MSG_NOT_DIR = "{path} exists and is not a folder."
MSG_SIMULATOR = ("{source}: a {learner} policy acts on the observation vector of the simulator it "
                 "was trained in ({environment}, {obs_dim} values per step), not on the rows of a "
                 "panel, so it cannot give action probabilities for a dataset. Evaluate it in its "
                 "simulator (equicare online) or use observation_probs(obs).")


def manifest_fingerprint(manifest: Any) -> str | None:
    """Short hash of a dataset manifest (column roles, action space, reward), or None.

    Two datasets with the same manifest content have the same fingerprint, so a model folder
    records which kind of panel it was trained on.
    """
    if manifest is None or not hasattr(manifest, "to_dict"):
        return None
    text = json.dumps(manifest.to_dict(), sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def check_model_target(path: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse a model folder target that :func:`write_model_folder` would refuse.

    For callers that train first and save last (``equicare train``): the refusal comes before
    the work, not after it. ``FileExistsError``: a file, or a non-empty folder without
    ``overwrite`` or (even with it) without a ``config.json`` of an earlier model.
    """
    _prepare_target(Path(path), overwrite)


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(MSG_NOT_DIR.format(path=path))
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(MSG_EXISTS.format(path=path))
        if not (path / CONFIG_FILE).is_file():
            raise FileExistsError(MSG_NOT_A_MODEL.format(path=path, config=CONFIG_FILE))


#: The ``provenance`` block of the command being run (:func:`model_provenance`).
_PROVENANCE: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "equicare_model_provenance", default=None)


@contextlib.contextmanager
def model_provenance(block: Mapping[str, Any] | None) -> Iterator[None]:
    """Every model folder written inside the block records ``block`` as its ``provenance``.

    The command line's ``train`` and ``explain`` wrap the learner's ``save`` (whichever
    learner: each writes through :func:`write_model_folder`), so that ``config.json`` says how
    the model was made (docs/contracts.md, "Provenance") without a parameter on every
    learner's ``save``. ``None`` records nothing.
    """
    token = _PROVENANCE.set(block)
    try:
        yield
    finally:
        _PROVENANCE.reset(token)


def write_model_folder(path: str | os.PathLike[str], config: Mapping[str, Any],
                       tensors: Mapping[str, Any], *, overwrite: bool = False,
                       extra_files: Mapping[str, str | bytes] | None = None) -> Path:
    """Write a model folder atomically: ``config.json``, ``model.safetensors`` and extra files.

    Everything is written into a temporary sibling folder, which then replaces ``path`` by
    renames, so a reader sees either the old folder or the new one, and no file of an older
    model survives.

    Parameters
    ----------
    path : str or Path
        Folder; created if missing. An existing non-empty folder is refused unless
        ``overwrite``, and even then unless it holds a ``config.json`` (an earlier model).
    config : mapping
        JSON-serialisable model description with at least ``learner`` and ``action_space``;
        ``format`` and ``format_version`` are added.
    tensors : mapping of str to torch.Tensor
        Flat state of every network, keys prefixed by network name (``"policy.encoder..."``).
    overwrite : bool
    extra_files : mapping of str to str or bytes, optional
        Small companion files (reports, grids) written into the folder too.

    Inside :func:`model_provenance` the config also gets that ``provenance`` block.

    Returns
    -------
    Path
    """
    from safetensors.torch import save_file

    for key in ("learner", "action_space"):
        if key not in config:
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="config", owner="write_model_folder",
                expected=f"a mapping with a {key!r} entry", got=sorted(config)))
    p = Path(path)
    _prepare_target(p, overwrite)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.tmp-"))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; use the usual permissions
        save_file({k: v.detach().contiguous() for k, v in tensors.items()},
                  str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~umask)  # safetensors writes 0600 (owner only)
        doc = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, **dict(config)}
        prov = _PROVENANCE.get()
        if prov is not None:  # inside model_provenance(): how the model was made
            doc["provenance"] = dict(prov)
        (tmp / CONFIG_FILE).write_text(json.dumps(doc, indent=2, default=float) + "\n",
                                       encoding="utf-8")
        for name, content in (extra_files or {}).items():
            if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE):
                raise InvalidParameterError(PARAM_MESSAGE.format(
                    name="extra_files", owner="write_model_folder",
                    expected=f"plain file names other than {CONFIG_FILE!r} and "
                             f"{WEIGHTS_FILE!r}", got=name))
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        if p.is_dir():
            _prepare_target(p, overwrite)  # re-check: the folder may have changed meanwhile
            old = Path(tempfile.mkdtemp(dir=p.parent, prefix=f".{p.name}.old-"))
            os.rmdir(old)
            os.rename(p, old)
            os.rename(tmp, p)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


def _legacy_hint(p: Path) -> str | None:
    if (p / "policy.safetensors").is_file() or (p / "meta.json").is_file():
        return "an OMG folder with policy.safetensors and meta.json"
    return None


def read_model_folder(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a model folder written by :func:`write_model_folder`.

    Returns
    -------
    config : dict
        With ``learner`` set (read from ``algo`` in version-1 folders).
    tensors : dict of str to torch.Tensor

    Raises
    ------
    PolicyError
        Missing folder or files, invalid JSON, a foreign, unknown or newer format, truncated or
        corrupt weights. Each message names the file.
    """
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise PolicyError(MSG_NOT_FOUND.format(path=p))
    cfg_path, w_path = p / CONFIG_FILE, p / WEIGHTS_FILE
    if not cfg_path.is_file():
        raise PolicyError(MSG_MISSING.format(file=cfg_path))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(MSG_BAD_JSON.format(file=cfg_path, detail=exc)) from exc
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT:
        legacy = _legacy_hint(p)
        if legacy is not None:
            raise PolicyError(MSG_LEGACY.format(file=p, legacy=legacy))
        raise PolicyError(MSG_FOREIGN.format(file=cfg_path))
    version = cfg.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and \
            version > MODEL_FORMAT_VERSION:
        raise PolicyError(MSG_NEWER.format(file=cfg_path, version=version))
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise PolicyError(MSG_BAD_VERSION.format(file=cfg_path, version=version))
    if version == 1:
        cfg.setdefault("learner", cfg.get("algo"))
    if not isinstance(cfg.get("learner"), str):
        raise PolicyError(MSG_MALFORMED.format(source=cfg_path, detail="no 'learner' entry"))
    if not w_path.is_file():
        raise PolicyError(MSG_MISSING.format(file=w_path))
    try:
        tensors = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own (Rust) error type on bad bytes
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise PolicyError(MSG_CORRUPT.format(file=w_path, detail=detail)) from exc
    return cfg, tensors


def state_with_prefix(tensors: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Sub-dictionary of the tensors under ``prefix.`` with the prefix removed."""
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}


def prefixed(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{prefix.name: tensor}`` for a network's ``state_dict`` (inverse of state_with_prefix)."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def load_state(module: Any, tensors: Mapping[str, Any], prefix: str, source: str) -> None:
    """Copy the tensors under ``prefix.`` into ``module`` (strict), or raise PolicyError."""
    try:
        module.load_state_dict(state_with_prefix(tensors, prefix), strict=True)
    except RuntimeError as exc:
        raise PolicyError(f"{source}: weights do not match the network in {CONFIG_FILE} "
                          f"({str(exc).splitlines()[0]}).") from exc


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
        State columns the model reads (:func:`equicare.models._inputs.input_names`): the one-hot
        names of the training data (``TrajectoryDataset.feature_names()``), or with learned
        embeddings the numeric state names and ``"<column>:categorical"`` per categorical column
        (whose vocabulary is in ``network.spec.categorical_levels``; unseen levels are read as
        "unknown").
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

    @property
    def embedded(self) -> bool:
        """Categorical states go through learned embeddings (not one-hot inputs)."""
        return bool(getattr(self.network.spec, "categorical_levels", ()))

    @property
    def vocabulary(self) -> tuple[tuple[str, ...], ...] | None:
        """Vocabulary of each embedded categorical column, or None (one-hot inputs)."""
        return tuple(self.network.spec.categorical_levels) if self.embedded else None

    def check_compatible(self, dataset: Any) -> None:
        """Raise :class:`PolicyError` if ``dataset`` has another action space or state columns."""
        if dataset.action_space.to_dict() != self.action_space.to_dict():
            raise PolicyError(MSG_ACTION_SPACE.format(
                source=self.source, trained=self.action_space.to_dict(),
                got=dataset.action_space.to_dict()))
        from equicare.models._inputs import input_names

        got = tuple(input_names(dataset, self.embedded))
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
                                          bool(self.network.spec.history_actions),
                                          self.vocabulary)
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


def _check_space(source: str, trained: FactoredActionSpace, dataset: Any) -> None:
    if dataset.action_space.to_dict() != trained.to_dict():
        raise PolicyError(MSG_ACTION_SPACE.format(source=source, trained=trained.to_dict(),
                                                  got=dataset.action_space.to_dict()))


@dataclass(eq=False)
class StatePolicy:
    """A softmax policy over a flat state vector (the dosing actor of OMG-RL).

    ``pi(a|s) = softmax(network(s))`` with ``s`` the dataset's numeric state columns (float32)
    in the training order.

    Parameters
    ----------
    network : torch.nn.Module
        Maps states of shape ``(n, d)`` to logits of shape ``(n, n_actions)``
        (:class:`equicare.models.StandardizedMLP`).
    action_space : FactoredActionSpace
        Action space of the training data.
    state_names : tuple of str
        The numeric state columns the network reads, in order.
    batch_size : int
        Rows per forward pass.
    source : str
        Name used in error messages (the model folder).
    """

    network: Any
    action_space: FactoredActionSpace
    state_names: tuple[str, ...]
    batch_size: int = 65536
    source: str = "<state policy>"
    window: int = 1

    @property
    def n_actions(self) -> int:
        """Size of the flat action space."""
        return self.action_space.n_actions

    def check_compatible(self, dataset: Any) -> None:
        """Raise :class:`PolicyError` if ``dataset`` has another action space or states."""
        _check_space(self.source, self.action_space, dataset)
        got = tuple(dataset.state_names)
        if got != tuple(self.state_names):
            raise PolicyError(MSG_FEATURES.format(source=self.source,
                                                  trained=list(self.state_names), got=list(got)))

    def state_probs(self, states: Any) -> NDArray[np.float64]:
        """Probabilities at raw states of shape ``(n, d)``, shape ``(n, n_actions)``."""
        import torch

        s = np.ascontiguousarray(states, dtype=np.float32)
        out = np.empty((s.shape[0], self.n_actions))
        with torch.no_grad():
            for lo in range(0, s.shape[0], self.batch_size):
                x = torch.as_tensor(s[lo:lo + self.batch_size])
                p = torch.softmax(self.network(x), dim=-1).numpy().astype(np.float64)
                out[lo:lo + self.batch_size] = p / p.sum(axis=1, keepdims=True)
        return out

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Probabilities of each flat action at each row, shape ``(n_steps, n_actions)``."""
        self.check_compatible(dataset)
        return self.state_probs(dataset.states)

    def predict(self, dataset: Any) -> NDArray[np.int64]:
        """Most likely flat action per row, shape ``(n_steps,)``."""
        return np.asarray(np.argmax(self.action_probs(dataset), axis=1), dtype=np.int64)


@dataclass(eq=False)
class SimulatorPolicy:
    """A policy trained online in a simulator (PPO, GRPO): it reads observation vectors.

    It is a :class:`~equicare.policy.Policy` in name only: ``action_probs(dataset)`` raises a
    :class:`PolicyError` that says why (a panel's rows are not the simulator's observations).
    Use :meth:`observation_probs` with the simulator's observations.

    Parameters
    ----------
    network : equicare.models.DiscreteActorCritic
    learner : str
    obs_dim : int
    action_space : FactoredActionSpace
        One component ``action`` with the simulator's discrete actions.
    environment : str
        The environment it was trained in (for messages).
    source : str
    """

    network: Any
    learner: str
    obs_dim: int
    action_space: FactoredActionSpace
    environment: str = "a simulator"
    source: str = "<simulator policy>"
    window: int = 1

    @property
    def n_actions(self) -> int:
        """Number of discrete actions."""
        return self.action_space.n_actions

    def observation_probs(self, obs: Any, action_mask: Any = None) -> NDArray[np.float64]:
        """Probabilities at observations of shape ``(n, obs_dim)``, shape ``(n, n_actions)``.

        ``action_mask`` (bool, ``(n, n_actions)``) gives the valid actions; a row with none is
        left unmasked.
        """
        import torch

        x = np.ascontiguousarray(obs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.obs_dim:
            raise PolicyError(f"{self.source}: observations must have shape (n, {self.obs_dim}); "
                              f"got {x.shape}.")
        with torch.no_grad():
            logits = self.network.logits(torch.from_numpy(x))
            if action_mask is not None:
                m = np.asarray(action_mask, dtype=bool).reshape(x.shape[0], self.n_actions)
                m = m | ~m.any(axis=1, keepdims=True)
                logits = logits.masked_fill(~torch.from_numpy(m), MASKED_LOGIT)
            p = torch.softmax(logits, dim=-1).numpy()
        p = p.astype(np.float64)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def check_compatible(self, dataset: Any) -> None:
        """Always raises :class:`PolicyError`: a panel's rows are not simulator observations."""
        self.action_probs(dataset)

    def action_probs(self, dataset: Any) -> NDArray[np.float64]:
        """Not defined on panel rows: raises :class:`PolicyError` naming why."""
        raise PolicyError(MSG_SIMULATOR.format(source=self.source, learner=self.learner.upper(),
                                               environment=self.environment,
                                               obs_dim=self.obs_dim))


#: logit of an invalid action (finite, so that 0 * logit stays 0 in an entropy)
MASKED_LOGIT = -1.0e8


# ---------------------------------------------------------------------- loaders per learner
def _malformed(source: str, exc: BaseException) -> PolicyError:
    return PolicyError(MSG_MALFORMED.format(source=source, detail=exc))


def network_policy(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                   ) -> LearnedPolicy:
    """The :class:`LearnedPolicy` of an offline learner's folder (BC, AWR, CQL)."""
    from equicare.models._networks import Network, NetworkSpec

    try:
        pol = cfg["policy"]
        spec = NetworkSpec.from_dict(pol["network"])
        space = FactoredActionSpace.from_dict(cfg["action_space"])
        feature_names = tuple(str(f) for f in cfg["feature_names"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(source, exc) from exc
    net = Network(spec)
    load_state(net, tensors, str(pol.get("weights", "policy")), source)
    net.eval()
    return LearnedPolicy(network=net, action_space=space, feature_names=feature_names,
                         output=pol.get("output", "logits"), mode=pol.get("mode", "softmax"),
                         temperature=float(pol.get("temperature", 1.0)), source=source)


#: kept for callers of the earlier name
policy_from_config = network_policy


def state_policy(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                 ) -> StatePolicy:
    """The :class:`StatePolicy` of a dosing learner's folder (OMG-RL's actor)."""
    from equicare.models._mlp import StandardizedMLP

    try:
        pol = cfg["policy"]
        space = FactoredActionSpace.from_dict(cfg["action_space"])
        names = tuple(str(f) for f in cfg["feature_names"])
        net = StandardizedMLP(len(names), space.n_actions, tuple(int(h) for h in pol["hidden"]))
        prefix = str(pol["weights"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(source, exc) from exc
    load_state(net, tensors, prefix, source)
    net.eval()
    return StatePolicy(network=net, action_space=space, state_names=names, source=source)


def simulator_policy(cfg: Mapping[str, Any], tensors: Mapping[str, Any], source: str
                     ) -> SimulatorPolicy:
    """The :class:`SimulatorPolicy` of an online learner's folder (PPO, GRPO)."""
    from equicare.models._ppo_nets import DiscreteActorCritic

    try:
        pol = cfg["policy"]
        space = FactoredActionSpace.from_dict(cfg["action_space"])
        obs_dim = int(pol["obs_dim"])
        net = DiscreteActorCritic(obs_dim, space.n_actions, tuple(int(h) for h in pol["hidden"]),
                                  pol["activation"], n_values=int(pol.get("n_values", 1)))
        prefix = str(pol["weights"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _malformed(source, exc) from exc
    load_state(net, tensors, prefix, source)
    net.eval()
    return SimulatorPolicy(network=net, learner=str(cfg["learner"]), obs_dim=obs_dim,
                           action_space=space, environment=str(pol.get("environment",
                                                                       "a simulator")),
                           source=source)


