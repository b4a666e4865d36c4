"""The docs' panel generators (benchmarks/panels) write panels equicare reads, reproducibly."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame, load_dataset, read_manifest

PANELS = Path(__file__).resolve().parents[2] / "benchmarks" / "panels"

# module -> (tiny size options, the policy files it writes and the key columns of those files)
TINY = {
    "substance_use": (["--members", "60"], ["mat_first.parquet", "blend.parquet"]),
    "medicaid_cost": (["--members", "60"], ["policy_targeted.parquet", "policy_none.parquet"]),
    "outreach_campaign": (["--members", "500"], ["pol_rule.parquet", "pol_uniform.parquet"]),
    "prenatal": (["--pregnancies", "60"], []),
    "reenrolment": (["--people", "30"], ["policy.parquet"]),
    "diabetes_groups": (["--members", "60"], ["policy_practice.parquet", "policy_nudge.parquet"]),
    "mediation_outreach": (["--members", "60"], ["target.parquet", "control.parquet"]),
    "transition_families": (["--family", "A", "--members", "40"], ["target.parquet"]),
}


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_panel_{name}", PANELS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_panel_module_is_listed_here_and_in_the_readme():
    names = {p.stem for p in PANELS.glob("*.py")} - {"__init__"}
    assert names == set(TINY)
    readme = (PANELS / "README.md").read_text()
    for name in names:
        assert f"benchmarks/panels/{name}.py" in readme, name


def test_no_panel_is_a_benchmark():
    assert not list(PANELS.glob("bench_*.py"))


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_panel_loads_and_is_reproducible(name, tmp_path, capsys):
    size, policies = TINY[name]
    mod = _module(name)
    for sub, seed in (("a", 3), ("b", 3), ("c", 4)):
        mod.main(["--seed", str(seed), "--out", str(tmp_path / sub), *size])
    capsys.readouterr()
    a = tmp_path / "a"
    man = read_manifest(a / "manifest.toml")
    frame = pd.read_parquet(a / "panel.parquet")
    ds = from_frame(frame, man, emit_warnings=False)
    assert ds.n_episodes == frame[man.episode].nunique() > 0
    assert load_dataset(a / "panel.parquet", a / "manifest.toml", emit_warnings=False).n_episodes \
        == ds.n_episodes
    for extra in a.glob("manifest_*.toml"):
        from_frame(frame, read_manifest(extra), emit_warnings=False)
    # same seed -> the same panel; another seed -> another panel
    pd.testing.assert_frame_equal(frame, pd.read_parquet(tmp_path / "b" / "panel.parquet"))
    assert not frame.equals(pd.read_parquet(tmp_path / "c" / "panel.parquet"))
    for pol in policies:
        p = pd.read_parquet(a / pol)
        assert len(p) == len(frame), pol
        np.testing.assert_allclose(p.filter(regex=r"^p_\d+$").sum(axis=1), 1.0, atol=1e-9)


@pytest.mark.parametrize("family", ["B", "C"])
def test_the_other_transition_families_load(family, tmp_path, capsys):
    _module("transition_families").main(
        ["--family", family, "--seed", "1", "--members", "40", "--out", str(tmp_path)])
    capsys.readouterr()
    ds = load_dataset(tmp_path / "panel.parquet", tmp_path / "manifest.toml", emit_warnings=False)
    assert ds.n_episodes == 40
    assert len(pd.read_parquet(tmp_path / "target.parquet")) == ds.n_steps


def test_a_non_empty_out_folder_is_refused_without_force(tmp_path, capsys):
    """A generator never overwrites files in a folder that holds something: exit 2 naming the
    folder, unless --force."""
    mod = _module("reenrolment")
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as err:
        mod.main(["--seed", "0", "--people", "30", "--out", str(tmp_path)])
    assert err.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert not (tmp_path / "panel.parquet").exists()
    mod.main(["--seed", "0", "--people", "30", "--out", str(tmp_path), "--force"])
    assert (tmp_path / "panel.parquet").exists()
    assert (tmp_path / "notes.txt").read_text() == "keep me"
