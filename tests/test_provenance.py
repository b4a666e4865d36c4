"""The provenance block (equicare/_provenance.py); per command: tests/cli/test_provenance.py."""

from __future__ import annotations

import enum
import hashlib
import json
import os
from pathlib import Path

import equicare._provenance as prov_mod
from equicare import __version__
from equicare._provenance import provenance_block


class Color(enum.Enum):
    RED = "red"


def test_the_block_has_only_what_reproduces_the_numbers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "panel.csv").write_text("a,b\n1,2\n")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "p0.parquet").write_bytes(b"x" * 10)
    (tmp_path / "parts" / "p1.parquet").write_bytes(b"y" * 5)
    monkeypatch.setenv("EQUICARE_SECRET", "do-not-record")
    monkeypatch.setattr(prov_mod, "git_revision", lambda where=None: "unknown")
    b = provenance_block(command=["equicare", "evaluate", "panel.csv"], seed=3,
                         settings={"z": Color.RED, "data": Path("panel.csv"), "k": (1, 2),
                                   "none": None},
                         inputs={"data": Path("panel.csv"), "folder": "parts",
                                 "policy": ["missing.parquet"], "control": None})
    assert list(b) == ["equicare", "git_revision", "command", "seed", "settings", "inputs",
                       "created"]
    assert b["equicare"] == __version__ and b["git_revision"] is None  # outside a checkout
    assert b["settings"] == {"data": str(tmp_path / "panel.csv"), "k": [1, 2], "none": None,
                             "z": "red"}
    data, folder, missing = b["inputs"]
    assert data == {"role": "data", "path": str(tmp_path / "panel.csv"),
                    "sha256": hashlib.sha256(b"a,b\n1,2\n").hexdigest(), "bytes": 8}
    assert folder["bytes"] == 15 and folder["path"] == str(tmp_path / "parts")
    assert missing == {"role": "policy", "path": str(tmp_path / "missing.parquet"),
                       "sha256": None, "bytes": None}
    assert b["created"].endswith("Z")
    text = json.dumps(b)
    assert "do-not-record" not in text and os.environ.get("HOME", "/nonexistent") + "/" not in \
        text.replace(str(tmp_path), "")


def test_trained_on_reads_the_model_behind_a_policy_file_and_hashes_only_same_sizes(
        tmp_path, monkeypatch):
    from equicare._provenance import file_fingerprint, trained_on

    (tmp_path / "panel.csv").write_text("a,b\n1,2\n")
    (tmp_path / "other.csv").write_text("a,b\n1,3\n")  # same size, other bytes
    (tmp_path / "big.csv").write_text("a,b\n1,2\n3,4\n")
    model = tmp_path / "m"
    model.mkdir()
    fp = file_fingerprint(tmp_path / "panel.csv")
    (model / "config.json").write_text(json.dumps(
        {"provenance": {"inputs": [{"role": "data", **fp}]}}))
    (tmp_path / "p.parquet").write_bytes(b"x")
    (tmp_path / "p.parquet.provenance.json").write_text(json.dumps(
        {"provenance": {"inputs": [{"role": "policy", "path": str(model)}]}}))
    (tmp_path / "hand.parquet").write_bytes(b"x")  # a hand-written file: no provenance
    assert trained_on(model, tmp_path / "panel.csv") == model
    assert trained_on(tmp_path / "p.parquet", tmp_path / "panel.csv") == model
    assert trained_on(tmp_path / "p.parquet", tmp_path / "other.csv") is None
    assert trained_on(tmp_path / "hand.parquet", tmp_path / "panel.csv") is None

    def boom(path: object) -> dict[str, object]:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(prov_mod, "file_fingerprint", boom)
    assert trained_on(tmp_path / "p.parquet", tmp_path / "big.csv") is None  # a stat, no hash
