from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from equicare.pipeline._store import Metric, RunStore, config_hash


def test_finish_publishes_artifacts_and_metrics(tmp_path):
    store = RunStore(tmp_path)
    rid = store.start({"a": 1}, name="t", seed=3)
    assert store.get_run(rid)["status"] == "running"
    (store.partial_dir(rid) / "result.json").write_text("{}")
    store.finish(
        rid,
        [Metric("ope.dr", 1.5, ci_low=1.0, ci_high=2.0), Metric("audit.rate", 0.1, group="black")],
    )
    row = store.get_run(rid)
    assert row["status"] == "finished" and row["seed"] == 3 and row["config"] == {"a": 1}
    assert row["config_hash"] == config_hash({"a": 1})
    assert (store.run_dir(rid) / "result.json").exists() and not store.partial_dir(rid).exists()
    m = store.metrics(rid)
    assert set(m["name"]) == {"ope.dr", "audit.rate"}
    assert float(m.loc[m.name == "ope.dr", "ci_high"].iloc[0]) == 2.0


def test_compare_and_prefix(tmp_path):
    store = RunStore(tmp_path)
    a = store.start({"x": 1})
    store.finish(a, [Metric("v", 1.0)])
    b = store.start({"x": 2})
    store.finish(b, [Metric("v", 3.0)])
    cmp_ = store.compare(a, b)
    assert float(cmp_["diff"].iloc[0]) == 2.0
    with pytest.raises(KeyError, match="No run 'zzz'"):
        store.get_run("zzz")


def test_ambiguous_prefix_says_so_and_lists_the_matches(tmp_path):
    store = RunStore(tmp_path)
    a, b = store.start({"x": 1}), store.start({"x": 2})
    common = os.path.commonprefix([a, b])
    assert common and common not in (a, b)
    with pytest.raises(KeyError, match=f"prefix '{common}' is ambiguous.*matches 2 runs") as err:
        store.get_run(common)
    assert a in str(err.value) and b in str(err.value)
    assert store.get_run(a[: len(common) + 1])["run_id"] == a  # one more character resolves it


def test_runs_with_different_learners_compare_by_role_and_name_their_differences(tmp_path):
    """``ope.dr.bc`` against ``ope.dr.awr`` lined up as ``ope.dr.learned``; the settings the
    configs differ in are listed (not where results went)."""
    store = RunStore(tmp_path)
    a = store.start({"learner": {"algo": "bc"}, "audit": {"group": "race"},
                     "output": {"store": "x"}})
    store.finish(a, [Metric("ope.dr.bc", 1.0), Metric("ope.behavior", 0.5),
                     Metric("audit.parity_gap_pp.bc", 4.0)])
    b = store.start({"learner": {"algo": "awr"}, "audit": {"group": "sex"},
                     "output": {"store": "y"}})
    store.finish(b, [Metric("ope.dr.awr", 1.5), Metric("ope.behavior", 0.5),
                     Metric("audit.parity_gap_pp.awr", 2.0)])
    cmp_ = store.compare(a, b).set_index("name")
    assert set(cmp_.index) == {"ope.dr.learned", "ope.behavior", "audit.parity_gap_pp.learned"}
    assert float(cmp_.loc["ope.dr.learned", "diff"]) == 0.5
    assert store.config_diff(a, b) == [("audit.group", "race", "sex"),
                                       ("learner.algo", "bc", "awr")]


def test_sweeps_compare_without_their_output_settings(tmp_path):
    """A sweep's config nests the run config under ``base.``: its ``output.*`` (executor,
    jobs, address, store) and name are not differences either."""
    store = RunStore(tmp_path)
    a = store.start({"sweep": {"learner.n_steps": [20]}, "base": {
        "name": "s1", "ope": {"ci": "studentized"},
        "output": {"executor": "ray", "jobs": 1, "address": "local", "store": "x"}}})
    b = store.start({"sweep": {"learner.n_steps": [20, 40]}, "base": {
        "name": "s2", "ope": {"ci": "percentile"},
        "output": {"executor": "local", "jobs": 2, "address": "auto", "store": "y"}}})
    assert store.config_diff(a, b) == [("base.ope.ci", "studentized", "percentile"),
                                       ("sweep.learner.n_steps", [20], [20, 40])]


def test_failed_run_not_finished(tmp_path):
    store = RunStore(tmp_path)
    rid = store.start({})
    store.fail(rid, "failed", "boom")
    assert store.get_run(rid)["status"] == "failed"


def test_discarded_run_leaves_nothing(tmp_path):
    store = RunStore(tmp_path)
    keep = store.start({"a": 1})
    rid = store.start({"b": 2})
    (store.partial_dir(rid) / "half.json").write_text("{")
    store.discard(rid)
    assert list(store.list_runs()["run_id"]) == [keep]
    assert not store.partial_dir(rid).exists() and store.partial_dir(keep).is_dir()


SCRIPT = textwrap.dedent("""
    import sys, time
    from equicare.pipeline._store import RunStore
    s = RunStore(sys.argv[1])
    rid = s.start({"slow": True})
    (s.partial_dir(rid) / "half.json").write_text("{")
    print(rid, flush=True)
    time.sleep(60)
""")


def test_killed_run_is_marked_interrupted(tmp_path):
    store = RunStore(tmp_path)
    done = store.start({"earlier": True})
    store.finish(done, [Metric("v", 1.0)])
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    rid = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    time.sleep(0.1)
    store2 = RunStore(tmp_path)  # reopening marks dead runs
    assert store2.get_run(rid)["status"] == "interrupted"
    assert store2.get_run(done)["status"] == "finished"
    assert float(store2.metrics(done)["value"].iloc[0]) == 1.0
    assert not store2.run_dir(rid).exists()


def test_runs_list_prints_the_status_as_text_not_markup(tmp_path):
    """The status column is coloured by style; no ``[green]finished[/]`` in a pipe."""
    from typer.testing import CliRunner

    from equicare.cli import app

    store = RunStore(tmp_path)
    done = store.start({"x": 1}, name="ok")
    store.finish(done, [Metric("v", 1.0)])
    store.fail(store.start({"x": 2}, name="bad"), "failed", "boom")
    res = CliRunner().invoke(app, ["runs", "list", "--store", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "[/]" not in res.output and "[green]" not in res.output and "[red]" not in res.output
    assert " finished " in res.output and " failed " in res.output


def test_store_that_is_a_file_says_it_must_be_a_folder(tmp_path):
    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.exceptions import InvalidParameterError

    from .test_run import tiny_config

    f = tmp_path / "panel.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidParameterError, match=r"is a folder .*; .*panel.csv is a file\."):
        RunStore(f)
    with pytest.raises(InvalidParameterError, match=r"cannot be one because .*panel.csv is a"):
        RunStore(f / "sub")
    db = RunStore(tmp_path / "runs").db_path
    with pytest.raises(InvalidParameterError, match="pass its folder, .*runs"):
        RunStore(db)
    cfg = tiny_config(tmp_path)
    for args in (["runs", "list", "--store", str(f)], ["run", str(cfg), "--store", str(f)]):
        res = CliRunner().invoke(app, [*args, "--no-progress"] if args[0] == "run" else args)
        said = " ".join(res.output.split())
        assert res.exit_code == 2 and "panel.csv is a file" in said, res.output
        assert "File exists" not in said and "Traceback" not in said


def test_a_sweep_and_a_single_run_do_not_compare(tmp_path):
    """No metric (``sweep.dr`` per point vs ``ope.dr.learned``) and no config key (``base.x``
    vs ``x``) of a sweep lines up with a run's: say so instead of listing every key twice."""
    from equicare.exceptions import InvalidParameterError

    store = RunStore(tmp_path)
    run = store.start({"learner": {"algo": "bc"}, "ope": {"ci": "studentized"}})
    store.finish(run, [Metric("ope.dr.bc", 1.0)])
    sweep = store.start({"sweep": {"learner.n_steps": [20, 40]},
                         "base": {"learner": {"algo": "bc"}, "ope": {"ci": "studentized"}}})
    store.finish(sweep, [Metric("sweep.dr", 1.1, group="learner.n_steps=20")])
    for a, b in ((run, sweep), (sweep, run)):
        with pytest.raises(InvalidParameterError, match=f"{sweep} is a sweep and {run} a single"):
            store.compare(a, b)
        with pytest.raises(InvalidParameterError, match="do not compare"):
            store.config_diff(a, b)
    assert store.config_diff(run, run) == [] and store.config_diff(sweep, sweep) == []


def test_a_store_locked_by_another_process_is_a_user_error_and_publishes_nothing(tmp_path,
                                                                                   monkeypatch):
    # a DuckDB session left open on equicare.duckdb: after ~30 s of retries the command ended
    # as "internal error (a bug in equicare)", and `run` had already moved the run's files to
    # their final folder while the store still said 'running' (later 'interrupted')
    import duckdb

    from equicare.exceptions import EquicareError
    from equicare.pipeline._store import MSG_STORE_LOCKED

    store = RunStore(tmp_path)
    rid = store.start({"a": 1})
    (store.partial_dir(rid) / "result.json").write_text("{}")
    detail = 'IO Error: Could not set lock on file "x": Conflicting lock is held in python'

    def locked(*args, **kwargs):
        raise duckdb.IOException(detail)

    monkeypatch.setattr(duckdb, "connect", locked)
    monkeypatch.setattr(time, "sleep", lambda s: None)
    with pytest.raises(EquicareError) as info:
        store.finish(rid, [Metric("v", 1.0)])
    assert str(info.value) == MSG_STORE_LOCKED.format(db=store.db_path, detail=detail)
    assert store.partial_dir(rid).is_dir() and not store.run_dir(rid).exists()
    monkeypatch.undo()
    assert store.get_run(rid)["status"] == "running"


def _git_repo(path):
    """``git(*args)`` run in ``path`` with a throw-away identity (skips without git)."""
    import shutil

    if shutil.which("git") is None:
        pytest.skip("no git")

    def git(*args):
        subprocess.run(["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t",
                        *args], check=True, capture_output=True)

    return git


def test_git_revision_says_when_the_checkout_has_uncommitted_changes(tmp_path):
    # a run from an edited checkout recorded the bare commit: checking it out did not
    # reproduce the run's numbers, and nothing said so
    from equicare.pipeline._store import git_revision

    git = _git_repo(tmp_path)
    git("init", "-q")
    (tmp_path / "m.py").write_text("x = 1\n")
    git("add", "m.py")
    git("commit", "-qm", "one")
    rev = git_revision(tmp_path)
    assert len(rev) >= 7 and not rev.endswith("-dirty")
    (tmp_path / "notes.txt").write_text("untracked files do not count")
    assert git_revision(tmp_path) == rev
    (tmp_path / "m.py").write_text("x = 2\n")
    assert git_revision(tmp_path) == f"{rev}-dirty"
    assert git_revision(tmp_path / "no such folder") == "unknown"


def test_file_fingerprint_of_a_file_and_of_a_folder_panel(tmp_path):
    import hashlib

    from equicare.pipeline._store import file_fingerprint

    (tmp_path / "p.parquet").write_bytes(b"abc")
    fp = file_fingerprint(tmp_path / "p.parquet")
    assert fp == {"path": str(tmp_path / "p.parquet"), "sha256": hashlib.sha256(b"abc").hexdigest(),
                  "bytes": 3}
    d = tmp_path / "panel"
    d.mkdir()
    (d / "part-1.parquet").write_bytes(b"one")
    (d / "part-0.parquet").write_bytes(b"zero")
    (d / ".part-2.parquet.tmp").write_bytes(b"half-written, hidden: left out")
    first = file_fingerprint(d)
    assert first["bytes"] == 7
    (d / "part-1.parquet").write_bytes(b"One")
    assert file_fingerprint(d)["sha256"] != first["sha256"]
    (d / "part-1.parquet").write_bytes(b"one")
    (d / "part-1.parquet").rename(d / "part-9.parquet")  # names count: another panel
    assert file_fingerprint(d)["sha256"] != first["sha256"]


def test_a_sigterm_once_the_run_is_recorded_finished_does_not_fail_it(tmp_path):
    """Item 16: a SIGTERM after the finish was committed (the command printing its report, or
    the interpreter exiting) raised inside the command line's handler: exit 130 for a run
    recorded finished (143 during interpreter exit, tests/test_signals.py)."""
    from equicare._signals import sigterm_raises

    s = RunStore(tmp_path / "runs")
    rid = s.start({"name": "x"}, name="x", seed=0)
    with sigterm_raises(KeyboardInterrupt):  # the command line's SIGTERM-as-Ctrl-C
        s.finish(rid, [Metric("m", 1.0)])
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the run is finished
    assert s.get_run(rid)["status"] == "finished"
    assert s.run_dir(rid).is_dir()
    rid2 = s.start({"name": "y"}, name="y", seed=0)
    with pytest.raises(KeyboardInterrupt), sigterm_raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)  # before the finish it still stops the run
    s.fail(rid2, "interrupted")
    assert s.get_run(rid2)["status"] == "interrupted"


def test_git_revision_of_an_installed_copy_inside_another_repository_is_unknown(tmp_path):
    # equicare pip-installed into .venv/ of the user's own project repository: git found the
    # project's commit from site-packages and recorded it (and its -dirty) as equicare's
    from equicare.pipeline._store import git_revision

    git = _git_repo(tmp_path)
    git("init", "-q")
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "analysis.py").write_text("x = 1\n")
    git("add", ".gitignore", "analysis.py")
    git("commit", "-qm", "study")
    site = tmp_path / ".venv" / "lib" / "site-packages" / "equicare" / "pipeline"
    site.mkdir(parents=True)
    (site / "_store.py").write_text("# installed copy\n")
    assert git_revision(site) == "unknown"
    assert git_revision(tmp_path) != "unknown"  # the project itself is a checkout
