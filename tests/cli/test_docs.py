"""docs/cli.md is generated from the commands' help and kept in sync."""

from __future__ import annotations

from pathlib import Path

from equicare.cli._docs import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_up_to_date():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is out of date: run `python -m equicare.cli._docs > docs/cli.md`")


def test_cli_reference_covers_every_command():
    text = render()
    for cmd in ("synth", "train", "evaluate", "audit", "runs compare"):
        assert f"## equicare {cmd}\n" in text
