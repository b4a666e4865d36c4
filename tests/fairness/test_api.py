from __future__ import annotations

import subprocess
import sys

import equicare.fairness as fairness


def test_every_public_name_imports() -> None:
    for name in fairness.__all__:
        assert getattr(fairness, name) is not None, name


def test_import_is_light() -> None:
    code = ("import sys, equicare.fairness; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
