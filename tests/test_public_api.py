"""Every public name is importable; `import equicare` stays light (no torch, matplotlib, ray)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import equicare

PACKAGES = sorted(
    m.name for m in pkgutil.walk_packages(equicare.__path__, "equicare.")
    if m.ispkg or not m.name.rsplit(".", 1)[-1].startswith("_")
)


@pytest.mark.parametrize("modname", PACKAGES)
def test_all_names_import(modname):
    mod = importlib.import_module(modname)
    for name in getattr(mod, "__all__", []):
        assert getattr(mod, name) is not None, f"{modname}.{name}"


def test_import_is_light():
    code = ("import sys, equicare, equicare.data, equicare.policy, equicare.spaces; "
            "heavy = [m for m in ('torch', 'matplotlib', 'ray') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import equicare loaded: {out.stdout.strip()}"
