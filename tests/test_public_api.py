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


#: Names the docs present to users, with the public package they import from.
DOCUMENTED = {
    "equicare.causal": ["binarize_actions", "collapse_probs"],
    "equicare.pipeline": ["OnlineExperimentConfig", "run_seed", "run_experiment", "lambda_sweep",
                          "compare_runs", "evaluate_hospital_policy"],
    "equicare.online": ["PPO", "PPOConfig", "GRPO", "GRPOConfig"],
    "equicare.learn": ["fit_stream"],
    "equicare.sim": ["write_care_parts"],
    "equicare.report": ["plot_learning_curves", "plot_frontier", "plot_group_waits"],
}
#: Private paths the docs used to present (docs/online.md, docs/scale.md, README.md).
PRIVATE_PATHS = ("equicare.pipeline._online", "equicare.online._ppo", "equicare.online._grpo",
                 "equicare.learn._stream", "equicare.sim._care_parts",
                 "equicare.report._online_figures")


@pytest.mark.parametrize("modname", sorted(DOCUMENTED))
def test_documented_names_import_from_their_public_package(modname):
    mod = importlib.import_module(modname)
    for name in DOCUMENTED[modname]:
        assert name in mod.__all__, f"{modname}.{name}"
        assert getattr(mod, name) is not None


def test_docs_name_public_paths_not_private_modules():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if doc.name == "design.md":  # the module layout itself
            continue
        text = doc.read_text()
        for private in PRIVATE_PATHS:
            assert private not in text, f"{doc.name} names {private}"
