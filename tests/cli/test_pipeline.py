"""``equicare run | report | runs``: the thin layer over the run store."""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.pipeline import RunStore
from equicare.pipeline._store import Metric

runner = CliRunner()


def _reject_constant(name: str) -> float:
    raise ValueError(f"not JSON: {name}")


@pytest.fixture
def store(tmp_path):
    """A store with one finished run (metrics without group or interval) and a failed one."""
    s = RunStore(tmp_path / "runs")
    rid = s.start({"name": "ok"}, name="ok", seed=0)
    s.finish(rid, [Metric("audit.gini.bc", 0.25),
                   Metric("ope.dr.bc.race", 0.5, group="A", ci_low=0.4, ci_high=0.6),
                   Metric("audit.worst", math.nan)])
    bad = s.start({"name": "bad"}, name="bad", seed=1)
    s.fail(bad, "failed", "ConfigError: run.toml: [audit] group 'race' is not a group")
    return s, rid, bad


def test_runs_show_json_is_valid_json_with_nulls(store):
    s, rid, _ = store
    res = runner.invoke(app, ["runs", "show", rid, "--store", str(s.root), "--json"])
    assert res.exit_code == 0, res.output
    assert "NaN" not in res.stdout
    doc = json.loads(res.stdout, parse_constant=_reject_constant)  # strict: no NaN / Infinity
    gini = next(m for m in doc["metrics"] if m["name"] == "audit.gini.bc")
    assert gini["ci_low"] is None and gini["ci_high"] is None and gini["value"] == 0.25
    worst = next(m for m in doc["metrics"] if m["name"] == "audit.worst")
    assert worst["value"] is None


def test_runs_show_leaves_missing_groups_blank_and_shows_a_failed_runs_message(store):
    s, rid, bad = store
    res = runner.invoke(app, ["runs", "show", rid, "--store", str(s.root)])
    assert res.exit_code == 0, res.output
    assert "nan" not in res.stdout.lower()
    res = runner.invoke(app, ["runs", "show", bad, "--store", str(s.root)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.stdout.split())
    assert "message: ConfigError: run.toml: [audit] group 'race' is not a group" in said


def test_runs_show_says_n_a_for_a_value_without_a_number_and_why(store):
    """A withheld value (small cell, low ESS) was a blank cell, like a missing interval: it
    reads n/a, with a caption saying where the reason is; intervals stay blank."""
    from equicare.cli._pipeline import NO_VALUE_CAPTION

    s, rid, _ = store
    res = runner.invoke(app, ["runs", "show", rid, "--store", str(s.root)])
    assert res.exit_code == 0, res.output
    worst = next(ln for ln in res.stdout.splitlines() if "audit.worst" in ln)
    assert [c.strip() for c in worst.split("│")[1:-1]][2:] == ["n/a", "", ""]
    gini = next(ln for ln in res.stdout.splitlines() if "audit.gini.bc" in ln)
    assert "n/a" not in gini
    assert " ".join(NO_VALUE_CAPTION.split()) in " ".join(res.stdout.split())


def test_json_safe_turns_missing_and_infinite_numbers_into_null():
    import numpy as np
    import pandas as pd

    from equicare.cli._utils import json_safe

    got = json_safe({"a": [np.nan, 1.0, np.float32("inf"), np.int64(3), np.array([1.0, np.nan]),
                           pd.NA, pd.NaT, None, "x", (2, -math.inf)]})
    assert got == {"a": [None, 1.0, None, 3, [1.0, None], None, None, None, "x", [2, None]]}


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.filterwarnings(  # a small care panel: groups with few high-need episodes
    "ignore:Proportional parity is not published:equicare.exceptions.SmallCellWarning")
def test_report_elsewhere_leaves_the_archived_run_folder_alone(tmp_path):
    """``report RUN --out other.html`` embeds its figures and writes nothing in the run folder
    (it used to rewrite the run's figures/ in place); the run's own report.html (--force) still
    refreshes its figures."""
    from equicare.fairness import audit
    from tests.fairness.conftest import random_panel

    ds = random_panel(60, 0)
    res = audit(ds, {}, action="modality=home_visit", group="race", n_boot=20, n_permutations=0,
                random_state=0)
    s = RunStore(tmp_path / "runs")
    rid = s.start({"name": "r"}, name="r", seed=0)
    (s.partial_dir(rid) / "audit.json").write_text(json.dumps(res.to_dict()))
    run_dir = s.finish(rid, [Metric("audit.rate.behavior", 0.1)])
    before = _snapshot(run_dir)
    other = tmp_path / "elsewhere" / "other.html"
    other.parent.mkdir()
    res = runner.invoke(app, ["report", rid, "--store", str(s.root), "--out", str(other)])
    assert res.exit_code == 0, res.output
    assert _snapshot(run_dir) == before  # nothing written, nothing touched
    html = other.read_text()
    assert html.count("data:image/png;base64,") >= 2  # the figures are in the page
    assert sorted(p.name for p in other.parent.iterdir()) == ["other.html"]
    res = runner.invoke(app, ["report", rid, "--store", str(s.root), "--force"])
    assert res.exit_code == 0, res.output
    assert (run_dir / "figures" / "allocation.png").is_file()


def test_sweep_table_prints_each_points_seed_in_full(tmp_path, monkeypatch):
    """A point's seed is printed as the integer ``equicare run --seed S`` takes (a row-wise
    read of the table upcast it to float: ``1.371e+09``); values keep 4 significant digits."""
    import pandas as pd

    import equicare.pipeline._sweep as sweep_mod

    table = pd.DataFrame({"learner.window": [2, 8], "reward.engagement": [0.0, 0.5],
                          "seed": [1371234567, 923912345], "dr": [12.3456, 11.0],
                          "dr_ci_low": [10.0, 9.0], "dr_ci_high": [14.0, 13.0]})

    def fake_sweep(cfg, axes, *, store_root=None, progress=True):
        return sweep_mod.SweepOutcome("20260101-abc", tmp_path, tmp_path / "report.html", table)

    monkeypatch.setattr(sweep_mod, "run_sweep", fake_sweep)
    res = runner.invoke(app, ["sweep", "--example", "care", "--grid", "learner.window=[2,8]",
                              "--store", str(tmp_path / "runs"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "1371234567" in res.stdout and "923912345" in res.stdout, res.stdout
    assert "e+0" not in res.stdout and "12.35" in res.stdout and "0.5" in res.stdout


def test_run_summary_marks_the_estimates_far_outside_the_observed_returns(tmp_path, monkeypatch):
    """ICU panel: the final table listed 'dr -94.9605' beside 'wdr 0.7550' as one more value
    of a survival probability; an estimator the evaluation found far outside the observed
    returns is marked in a note column (the warning scrolled away above the progress)."""
    summary = {"behavior_value": 0.8095, "out_of_range": ["dr"],
               "estimates": {"dr": {"value": -94.9605, "ci": [-503.0, 313.1]},
                             "wdr": {"value": 0.755, "ci": [0.649, 0.861]}}}
    lines = _run_table(tmp_path, monkeypatch, summary)
    dr = next(ln for ln in lines if "-94.9605" in ln)
    wdr = next(ln for ln in lines if "0.7550" in ln)
    assert "off range: not a value" in dr and "off range" not in wdr


def test_run_summary_prints_blown_up_estimates_with_significant_digits(tmp_path, monkeypatch):
    """ICU panel, estimated propensities cross-fitted on thin levels: the final table printed IS
    as 1206224360637499935839637233738023323098834534400.0000 and its interval twice as wide.
    From 1e6 on a value gets 4 significant digits; smaller ones keep 4 decimals."""
    summary = {"behavior_value": 0.84, "out_of_range": ["is"],
               "estimates": {"is": {"value": 1.2062243606374999e48,
                                    "ci": [3.348872904617981e30, 3.627713422666695e48]},
                             "wdr": {"value": 1.2372, "ci": [-0.1243, 2.5987]}}}
    lines = _run_table(tmp_path, monkeypatch, summary)
    is_line = next(ln for ln in lines if ln.startswith("│ is "))
    assert "1.206e+48" in is_line and "[3.349e+30, 3.628e+48]" in is_line
    assert not any("120622436063" in ln for ln in lines)
    assert "[-0.1243, 2.5987]" in next(ln for ln in lines if ln.startswith("│ wdr "))
    assert any("0.8400" in ln for ln in lines)


def _run_table(tmp_path, monkeypatch, summary: dict) -> list[str]:
    """The lines ``equicare run`` prints for a run whose summary is ``summary`` (faked)."""
    import equicare.pipeline._run as run_mod

    def fake_run(cfg, *, store_root=None, progress=True):
        return run_mod.RunOutcome("20260101-abc", tmp_path, tmp_path / "report.html", [],
                                  {"train": 1.0}, summary)

    monkeypatch.setattr(run_mod, "run_pipeline", fake_run)
    res = runner.invoke(app, ["run", "--example", "care", "--store", str(tmp_path / "runs"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    return res.stdout.splitlines()


def test_runs_compare_of_a_run_and_a_sweep_is_one_line_and_exit_code_2(store):
    s, rid, _ = store
    sweep = s.start({"sweep": {"learner.n_steps": [20]}, "base": {"name": "ok"}})
    s.finish(sweep, [Metric("sweep.dr", 1.1, group="learner.n_steps=20")])
    res = runner.invoke(app, ["runs", "compare", rid, "latest", "--store", str(s.root)])
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert f"{sweep} is a sweep and {rid} a single run: they do not compare" in said
    assert "configs differ" not in said


def test_runs_compare_says_when_the_same_config_read_other_data(tmp_path):
    # a panel regenerated in place between two runs of one config: compare listed no
    # difference (same config, same config_hash) while every number had moved
    s = RunStore(tmp_path / "runs")
    panel = tmp_path / "panel.parquet"
    ids = []
    for content in (b"first panel", b"second panel"):
        panel.write_bytes(content)
        rid = s.start({"data": {"path": "panel.parquet"}}, name="same")
        s.write_inputs(rid, {"data": [panel], "manifest": []})
        s.finish(rid, [Metric("ope.dr.bc", float(len(ids)))])
        ids.append(rid)
    assert s.get_run(ids[0])["config_hash"] == s.get_run(ids[1])["config_hash"]
    digests = [hashlib.sha256(c).hexdigest() for c in (b"first panel", b"second panel")]
    res = runner.invoke(app, ["runs", "compare", *ids, "--store", str(s.root)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert f"The input files differ (SHA-256 in the runs' inputs.json; differences below may " \
           f"come from these): data: {digests[0][:12]} -> {digests[1][:12]}" in said
    assert "configs differ" not in said
    res = runner.invoke(app, ["runs", "compare", *ids, "--store", str(s.root), "--json"])
    assert json.loads(res.stdout)["inputs_diff"] == [
        {"role": "data", "a": [digests[0]], "b": [digests[1]]}]
    res = runner.invoke(app, ["runs", "show", ids[1], "--store", str(s.root)])
    assert f"data: {panel} (sha256 {digests[1][:12]}, 12 bytes)" in " ".join(res.output.split())


def test_runs_compare_says_why_an_unfinished_runs_column_is_empty(store):
    # compare with a failed (or interrupted) run printed an empty B column and nothing else
    from equicare.cli._pipeline import MSG_COMPARE_UNFINISHED

    s, rid, bad = store
    res = runner.invoke(app, ["runs", "compare", rid, bad, "--store", str(s.root)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert MSG_COMPARE_UNFINISHED.format(label="B", run=bad, status="failed") in said
    assert f"A ({rid}) is" not in said  # nothing said about the finished one
    res = runner.invoke(app, ["runs", "compare", rid, bad, "--store", str(s.root), "--json"])
    got = json.loads(res.stdout)
    assert (got["status_a"], got["status_b"]) == ("finished", "failed")


def test_runs_list_show_compare_read_a_store_that_cannot_be_written(store, monkeypatch):
    # an auditor's read-only copy of a store: every `runs` command waited 30 s for a "lock"
    # and ended as an internal error (each opened the database read-write)
    import time

    import duckdb

    s, rid, bad = store
    real_connect = duckdb.connect

    def read_only_fs(path, read_only=False, **kw):
        if not read_only:
            raise duckdb.IOException(f'IO Error: Cannot open file "{path}": Read-only file '
                                     "system")
        return real_connect(path, read_only=True, **kw)

    monkeypatch.setattr(duckdb, "connect", read_only_fs)
    monkeypatch.setattr(time, "sleep", _raise_on_wait)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if mode & os.W_OK and str(s.root) in os.path.abspath(p)
        else real_access(p, mode, **kw)))
    res = runner.invoke(app, ["runs", "list", "--store", str(s.root), "--json"])
    assert res.exit_code == 0, res.output
    assert {r["run_id"] for r in json.loads(res.stdout)} == {rid, bad}
    res = runner.invoke(app, ["runs", "show", rid, "--store", str(s.root), "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["runs", "compare", rid, bad, "--store", str(s.root)])
    assert res.exit_code == 0, res.output


def _raise_on_wait(seconds):
    raise AssertionError("waited for a lock that no process holds")


def test_a_store_that_cannot_be_opened_says_why_at_once(tmp_path, monkeypatch):
    import time

    import duckdb

    from equicare.exceptions import EquicareError
    from equicare.pipeline._store import MSG_STORE_UNOPENED

    detail = 'IO Error: Cannot open file "x": Permission denied'
    RunStore(tmp_path)

    def denied(*args, **kw):
        raise duckdb.IOException(detail)

    monkeypatch.setattr(duckdb, "connect", denied)
    monkeypatch.setattr(time, "sleep", _raise_on_wait)
    with pytest.raises(EquicareError) as info:
        RunStore(tmp_path)
    assert str(info.value) == MSG_STORE_UNOPENED.format(db=tmp_path / "equicare.duckdb",
                                                        detail=detail)
