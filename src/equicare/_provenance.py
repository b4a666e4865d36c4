"""Provenance: what a result file needs to be reproduced, in one block (docs/contracts.md).

Every command that writes a result adds the same ``provenance`` block::

    {"equicare": "0.1.0", "git_revision": "5812511" | "5812511-dirty" | null,
     "command": ["equicare", "evaluate", "data/panel.parquet", ...],
     "seed": 42 | null, "settings": {option: resolved value, ...},
     "inputs": [{"role": "data", "path": "/abs/panel.parquet", "sha256": "...", "bytes": 123}],
     "created": "2026-12-05T14:20:03Z"}

Only what reproduces the numbers is recorded: no environment variables, no host or user name,
no row of data; paths are the ones the user named, made absolute. Input files are hashed in full
(SHA-256 of their bytes; a folder: of its files' relative paths and bytes in sorted order), the
same fingerprint as a run folder's ``inputs.json`` (:func:`file_fingerprint`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["file_fingerprint", "git_revision", "provenance_block", "trained_on", "PROVENANCE_KEY"]

#: The key of the block in every result JSON (and a model folder's ``config.json``).
PROVENANCE_KEY = "provenance"


def git_revision(where: str | os.PathLike[str] | None = None) -> str:
    """Git revision of the equicare checkout, or ``"unknown"`` outside a checkout.

    Outside a checkout means too: a folder that git does not track (equicare installed into a
    virtualenv inside the user's own repository, whose commit says nothing about equicare).

    ``-dirty`` is appended when tracked files differ from that commit (as ``git describe
    --dirty`` does): the commit alone would not reproduce the run. ``where``: a folder of the
    checkout (default: this module's).
    """
    here = Path(where) if where is not None else Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(here), *args], capture_output=True,
                                 text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    rev = git("rev-parse", "--short", "HEAD")
    if not rev or not git("ls-files", "--", "."):  # no checkout, or not equicare's files:
        return "unknown"  # an installed copy in a virtualenv inside the user's own repository
    changed = git("status", "--porcelain", "--untracked-files=no")
    return f"{rev}-dirty" if changed else rev


def _fingerprinted_files(p: Path) -> list[Path]:
    """The file ``p``, or a folder's non-hidden files in sorted order (:func:`file_fingerprint`)."""
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file()
                  and not any(part.startswith(".") for part in f.relative_to(p).parts))


def file_fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """SHA-256 and size of a file, or of a folder's files (a Parquet folder panel).

    A folder's digest covers each file's path relative to it and its bytes, in sorted order
    (hidden files left out). Returns ``{"path": absolute path, "sha256": hex, "bytes": int}``.
    """
    p = Path(path).absolute()
    files = _fingerprinted_files(p)
    digest, size = hashlib.sha256(), 0
    for f in files:
        if f != p:
            digest.update(f.relative_to(p).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
    return {"path": str(p), "sha256": digest.hexdigest(), "bytes": size}


def _json_value(v: Any) -> Any:
    """An option's value as JSON: enums by value, paths absolute, sequences as lists."""
    import enum

    if isinstance(v, enum.Enum):
        return _json_value(v.value)
    if isinstance(v, os.PathLike):
        return str(Path(v).absolute())
    if isinstance(v, list | tuple):
        return [_json_value(x) for x in v]
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def provenance_block(*, command: Sequence[str], seed: int | None,
                     settings: Mapping[str, Any],
                     inputs: Mapping[str, str | os.PathLike[str] | Sequence[
                         str | os.PathLike[str]] | None]) -> dict[str, Any]:
    """The ``provenance`` block of a result (module docstring).

    Parameters
    ----------
    command : sequence of str
        The command as typed, program name first (``["equicare", "audit", ...]``).
    seed : int or None
        The random seed the result used (None: the command takes none).
    settings : mapping
        Every option that changes a number, resolved (defaults included); enums are written
        by value, paths absolute.
    inputs : mapping of str to path, paths or None
        The files (or folders) read, by role (``data``, ``manifest``, ``policy``...); each is
        fingerprinted (:func:`file_fingerprint`). A path that does not exist gets
        ``"sha256": null`` (the command refuses it later).

    Returns
    -------
    dict
    """
    from equicare import __version__

    rev = git_revision()
    files: list[dict[str, Any]] = []
    for role, given in inputs.items():
        paths = ([] if given is None else [given] if isinstance(given, str | os.PathLike)
                 else list(given))
        for p in paths:
            entry: dict[str, Any]
            if Path(p).exists():
                entry = file_fingerprint(p)
            else:
                entry = {"path": str(Path(p).absolute()), "sha256": None, "bytes": None}
            files.append({"role": role, **entry})
    return {"equicare": __version__, "git_revision": None if rev == "unknown" else rev,
            "command": [str(a) for a in command], "seed": seed,
            "settings": {k: _json_value(settings[k]) for k in sorted(settings)},
            "inputs": files,
            "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def _recorded_inputs(path: Path) -> list[dict[str, Any]]:
    """The ``inputs`` of the provenance a model folder or a policy file's sidecar records."""
    import json

    doc_path = (path / "config.json" if path.is_dir()
                else Path(f"{path}.provenance.json"))
    try:
        doc = json.loads(doc_path.read_text())
        inputs = doc[PROVENANCE_KEY]["inputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [f for f in inputs if isinstance(f, dict)] if isinstance(inputs, list) else []


def _size(path: Path) -> int:
    """Bytes of a file, or of a folder's non-hidden files (as :func:`file_fingerprint`)."""
    return sum(f.stat().st_size for f in _fingerprinted_files(path.absolute()))


def trained_on(policy: str | os.PathLike[str], data: str | os.PathLike[str]) -> Path | None:
    """The model folder behind ``policy`` when it was trained on ``data`` itself, else None.

    A model folder records the panel it was trained on (``config.json``'s provenance, role
    ``data``, with its SHA-256); a policy file written by ``predict`` records the model folder
    it came from (its ``.provenance.json`` sidecar, role ``policy``). ``data`` matches when its
    fingerprint (:func:`file_fingerprint`) is the recorded one. ``data`` is hashed only when its
    size is the recorded size, so a panel of another size costs one ``stat``. Policies without
    provenance (hand-written files) return None.

    Parameters
    ----------
    policy : path
        A model folder or a policy file.
    data : path
        The panel (a file or a folder of Parquet files) to be evaluated.

    Returns
    -------
    Path or None
        The model folder (``policy`` itself, or the one its policy file was predicted from).
    """
    p, d = Path(policy), Path(data)
    if not d.exists() or not p.exists():
        return None
    model = p if p.is_dir() else next(
        (Path(f["path"]) for f in _recorded_inputs(p)
         if f.get("role") == "policy" and isinstance(f.get("path"), str)
         and Path(f["path"]).is_dir()), None)
    if model is None:
        return None
    trained = [f for f in _recorded_inputs(model) if f.get("role") == "data"
               and isinstance(f.get("sha256"), str) and isinstance(f.get("bytes"), int)]
    if not trained:
        return None
    size = _size(d)
    if not any(f["bytes"] == size for f in trained):
        return None
    digest = file_fingerprint(d)["sha256"]
    return model if any(f["sha256"] == digest for f in trained) else None
