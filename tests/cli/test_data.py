from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.data import Manifest

from ..conftest import make_frame

runner = CliRunner()


@pytest.fixture
def panel(tmp_path, manifest_dict):
    frame = make_frame(30)
    p = tmp_path / "panel.csv"
    frame.to_csv(p, index=False)
    m = tmp_path / "manifest.toml"
    m.write_text(Manifest.from_dict(manifest_dict).to_toml())
    return p, m, frame


def test_every_command_has_help_with_example():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for name in names:
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, name
        assert "Example" in r.output, f"{name} --help shows no example"


def test_validate_summary(panel):
    p, m, frame = panel
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m)])
    assert res.exit_code == 0, res.output
    assert "observed action combinations" in res.output and "valid" in res.output
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m), "--json"])
    out = json.loads(res.stdout)
    assert out["valid"] and out["n_episodes"] == frame.member_id.nunique()
    assert out["n_steps"] == len(frame)


def test_validate_summary_suppresses_small_groups_and_their_complements(tmp_path, manifest_dict):
    frame = make_frame(60)
    ids = frame.member_id.unique()
    attr = manifest_dict["dataset"]["groups"][0]
    # one level of 5 episodes and two big ones: the small one and one complement are hidden
    level = {m: ("tiny" if i < 5 else "a" if i < 30 else "b") for i, m in enumerate(ids)}
    frame[attr] = frame.member_id.map(level)
    p = tmp_path / "panel.csv"
    frame.to_csv(p, index=False)
    m = tmp_path / "manifest.toml"
    m.write_text(Manifest.from_dict(manifest_dict).to_toml())
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m), "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["groups"][attr]
    assert counts["tiny"] is None and sum(v is None for v in counts.values()) == 2
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m)])
    assert "tiny <11" in res.output and " suppressed" in res.output
    assert " 5," not in res.output and "tiny 5" not in res.output


def test_validate_errors_exit_2(panel):
    p, m, frame = panel
    frame.loc[3, "risk"] = np.nan
    frame.loc[5, "modality"] = "fax"
    frame.to_csv(p, index=False)
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m)])
    assert res.exit_code == 2
    assert "2 problems found" in res.output and "'fax'" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m), "--json"])
    assert res.exit_code == 2
    assert len(json.loads(res.stdout)["errors"]) == 2


def test_validate_bad_manifest(panel, tmp_path):
    p, _, _ = panel
    bad = tmp_path / "bad.toml"
    bad.write_text('[dataset]\nepsiode = "member_id"\n')
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(bad)])
    assert res.exit_code == 2
    assert "did you mean 'episode'?" in res.output


def test_validate_says_every_end_is_censored_without_terminal(panel):
    p, m, frame = panel
    res = runner.invoke(app, ["validate", str(p), "--manifest", str(m)], terminal_width=200)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "censored" in ln and "note" in ln]
    assert lines == ["note: no 'terminal' column: every episode end is treated as censored"]
    out = json.loads(runner.invoke(app, ["validate", str(p), "--manifest", str(m),
                                         "--json"]).stdout)
    assert out["notes"] == ["no 'terminal' column: every episode end is treated as censored"]
    assert out["episode_ends"] == {"terminal": 0, "censored": frame.member_id.nunique()}


def test_synth_sim_config_keys_are_not_overridden_by_cli_defaults(tmp_path):
    # --churn defaults to on, --history-dependence to off: a --sim-config setting them must win
    # unless the option is given on the command line
    from equicare.data import load_dataset

    cfg = tmp_path / "care.json"
    cfg.write_text(json.dumps({"churn": False, "history_dependence": True}))
    out = tmp_path / "a"
    res = runner.invoke(app, ["synth", "--out", str(out), "--members", "40", "--weeks", "6",
                              "--sim-config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out / "panel.parquet", out / "manifest.toml", emit_warnings=False)
    assert (np.diff(ds.episode_offsets) == 6).all()  # no churn: every member stays 6 weeks
    res = runner.invoke(app, ["synth", "--out", str(out), "--members", "40", "--weeks", "6",
                              "--sim-config", str(cfg), "--churn", "--force", "--json"])
    assert res.exit_code == 0, res.output
    ds = load_dataset(out / "panel.parquet", out / "manifest.toml", emit_warnings=False)
    assert (np.diff(ds.episode_offsets) < 6).any()  # the option given on the command line wins


def test_run_example_show_config_and_bad_run_names(tmp_path):
    from importlib.resources import files

    res = runner.invoke(app, ["run", "--example", "care", "--show-config"])
    shipped = (files("equicare") / "examples" / "care_demo.toml").read_text(encoding="utf-8")
    assert res.exit_code == 0 and res.output == shipped
    res = runner.invoke(app, ["run"])
    assert res.exit_code == 2 and res.output.startswith("error: give a run configuration TOML")
    res = runner.invoke(app, ["runs", "show", "latest~3", "--store", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "No run store at" in " ".join(res.output.split())
    assert not (tmp_path / "runs").exists()  # a mistyped --store creates nothing
    from equicare.pipeline import RunStore

    RunStore(tmp_path / "runs")
    for cmd in (["runs", "show", "latest~3"], ["report", "latest"]):
        res = runner.invoke(app, [*cmd, "--store", str(tmp_path / "runs")])
        assert res.exit_code == 2 and "holds 0 run(s)" in res.output


def test_validate_warns_when_logged_propensities_do_not_fit_the_actions(panel):
    """make_frame draws actions uniformly over 6 combinations and propensities at random."""
    p, m, frame = panel
    out = json.loads(runner.invoke(app, ["validate", str(p), "--manifest", str(m),
                                         "--json"]).stdout)
    assert out["valid"]  # a warning, never a failure
    assert any(w.startswith(f"{p}: the logged propensities (column 'propensity') disagree")
               for w in out["warnings"])
    frame["propensity"] = 1 / 6  # the truth
    frame.to_csv(p, index=False)
    out = json.loads(runner.invoke(app, ["validate", str(p), "--manifest", str(m),
                                         "--json"]).stdout)
    assert out["valid"] and not any("logged propensities" in w for w in out["warnings"])


def test_validate_publishes_no_extreme_length_or_propensity(panel):
    """Table and --json, in memory and streamed: no min or max of a numeric column."""
    p, m, frame = panel
    for extra in ([], ["--chunk-rows", "50"]):
        res = runner.invoke(app, ["validate", str(p), "--manifest", str(m), "--json", *extra])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert set(out["episode_length"]) == {"median", "p_bottom11", "p_top11"}, extra
        if not extra:
            assert set(out["behavior_prob"]) == {"p_bottom11", "p_top11"}
        table = runner.invoke(app, ["validate", str(p), "--manifest", str(m), *extra]).output
        assert "11+ episodes <= " in table and "max " not in table, extra
        assert "propensity range" not in table


@pytest.mark.parametrize(("name", "args", "said"), [
    ("manifest.toml", ["validate", "{data}", "-m", "{bad}"], "{bad}: not valid TOML ("),
    ("run.toml", ["run", "{bad}"], "{bad}: not valid TOML ("),
    ("domain.json", ["plan", "{bad}", "--seeds", "1"], "{bad}: not valid JSON ("),
    ("care.json", ["synth", "--sim-config", "{bad}", "--out", "{tmp}/s"],
     "Cannot read the config file {bad}: 'utf-8' codec"),
])
def test_text_inputs_that_are_not_utf8_are_user_errors(tmp_path, name, args, said):
    # a manifest, run config or JSON saved as UTF-16 or Latin-1 was an internal error (exit 1)
    bad = tmp_path / name
    bad.write_bytes("# région\n".encode("utf-16"))
    data = tmp_path / "panel.csv"
    make_frame().to_csv(data, index=False)
    fill = {"bad": str(bad), "data": str(data), "tmp": str(tmp_path)}
    res = runner.invoke(app, [a.format(**fill) for a in args])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert out.startswith("error: " + said.format(**fill)) and "internal error" not in out, out
