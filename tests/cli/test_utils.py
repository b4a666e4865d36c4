"""The CLI's error taxonomy, warnings, threads and tables (cli/_utils.py)."""

from __future__ import annotations

import os
import warnings

import pytest
from typer.testing import CliRunner

import equicare.cli._rmab as rmab_cli
from equicare._progress import progress_task
from equicare.cli import app
from equicare.cli._utils import print_table, thread_limits, thread_plan
from equicare.exceptions import InvalidParameterError

runner = CliRunner()
PLAN = ["plan", "--domain", "synthetic", "--arms", "40", "--seeds", "1", "--horizon", "3",
        "--policy", "random"]


@pytest.fixture(autouse=True)
def _logs(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUICARE_LOG_DIR", str(tmp_path / "logs"))


def _raise(exc):
    def fn(*args, **kwargs):
        raise exc
    return fn


def test_user_error_is_one_line_exit_2(monkeypatch):
    monkeypatch.setattr(rmab_cli, "run_plan", _raise(InvalidParameterError("bad budget")))
    res = runner.invoke(app, PLAN)
    assert res.exit_code == 2
    assert res.output == "error: bad budget\n"


def test_usage_error_is_one_line_with_one_prefix():
    res = runner.invoke(app, [*PLAN, "--bogus"])
    assert res.exit_code == 2
    lines = res.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: No such option: --bogus")
    assert "Error" not in res.output and "Usage" not in res.output


@pytest.mark.parametrize("exc", [ValueError("shapes (3,) and (4,) not aligned"),
                                 KeyError("column"), TypeError("unsupported operand")])
def test_unexpected_error_is_a_bug_with_a_log(monkeypatch, tmp_path, exc):
    # a ValueError/KeyError/TypeError from inside a computation is a bug, not bad input
    monkeypatch.setattr(rmab_cli, "run_plan", _raise(exc))
    res = runner.invoke(app, PLAN)
    assert res.exit_code == 1
    assert len(res.output.splitlines()) == 1
    assert res.output.startswith("error: internal error (a bug in equicare, not in your input)")
    logs = list((tmp_path / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and str(logs[0]) in res.output.replace("\n", "")
    text = logs[0].read_text()
    assert "Traceback" in text and type(exc).__name__ in text and "equicare plan" in text


def test_ctrl_c_exits_130(monkeypatch):
    monkeypatch.setattr(rmab_cli, "run_plan", _raise(KeyboardInterrupt()))
    res = runner.invoke(app, PLAN)
    assert res.exit_code == 130
    assert res.output == "error: interrupted (Ctrl-C).\n"


def test_sigterm_exits_130_and_removes_the_half_written_output(monkeypatch, tmp_path):
    # `kill PID` or a scheduler's time limit ended the process at once (Python's default
    # SIGTERM): a hidden temporary file of the atomic write (row-level predictions, for predict)
    # stayed behind and no line said why the command stopped
    import signal

    from equicare.utils import atomic_write

    out = tmp_path / "plan.json"

    def killed_mid_write(*args, **kwargs):
        with atomic_write(out) as fh:
            fh.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)

    def unhandled(signum, frame):  # without the CLI's handler: a clean failure, not a killed run
        raise RuntimeError("SIGTERM not handled by the CLI")

    monkeypatch.setattr(rmab_cli, "run_plan", killed_mid_write)
    old = signal.signal(signal.SIGTERM, unhandled)
    try:
        res = runner.invoke(app, PLAN)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert res.exit_code == 130, res.output
    assert res.output == "error: interrupted (SIGTERM).\n"
    assert [p.name for p in tmp_path.iterdir() if p.name != "logs"] == []  # no .plan.json.*.tmp


@pytest.mark.filterwarnings("default")  # the CLI prints warnings; pytest would raise them
def test_warnings_print_as_one_clean_line(monkeypatch):
    def warn_then_fail(*args, **kwargs):
        warnings.warn("first line\n  second line", UserWarning, stacklevel=1)
        raise InvalidParameterError("stop")

    monkeypatch.setattr(rmab_cli, "run_plan", warn_then_fail)
    res = runner.invoke(app, PLAN)
    assert res.output.splitlines() == ["warning: first line second line", "error: stop"]


def test_existing_outputs_are_refused_before_any_work(monkeypatch, tmp_path):
    fig = tmp_path / "fig.png"
    fig.write_bytes(b"old")
    monkeypatch.setattr(rmab_cli, "run_plan", _raise(AssertionError("must not run")))
    res = runner.invoke(app, [*PLAN, "--figure", str(fig)])
    assert res.exit_code == 2 and "pass --force" in res.output
    assert fig.read_bytes() == b"old"


def _file_in_the_way(tmp_path):
    (tmp_path / "afile").write_text("mine")
    data = tmp_path / "panel.parquet"
    data.write_bytes(b"")
    (tmp_path / "manifest.toml").write_text("")
    return data


@pytest.mark.parametrize("out", ["afile", "afile/sub"])
@pytest.mark.parametrize("command", ["synth", "train", "online"])
def test_out_that_is_or_sits_under_a_file_is_refused_before_any_work(
        command, out, tmp_path, monkeypatch):
    import equicare.cli._dosing as dosing_cli
    import equicare.cli._online as online_cli

    data = _file_in_the_way(tmp_path)
    for mod, name in [(dosing_cli, "synth_heparin"), (dosing_cli, "train_omg"),
                      (online_cli, "run_online")]:
        monkeypatch.setattr(mod, name, _raise(AssertionError("must not run")))
    target = tmp_path / out
    argv = {"synth": ["synth", "--sim", "heparin", "--members", "20"],
            "train": ["train", str(data), "-m", str(tmp_path / "manifest.toml"), "--algo", "omg",
                      "--small"],
            "online": ["online", "--algo", "ppo", "--steps", "64"]}[command]
    for force in ([], ["--force"]):
        res = runner.invoke(app, [*argv, "--out", str(target), *force])
        assert res.exit_code == 2, res.output
        line = res.output.strip()
        assert "\n" not in line and line.startswith(f"error: --out {target}")
        if out == "afile":
            assert line.endswith("is a file; expected a folder (a new or empty one, or pass "
                                 "--force to replace an earlier output folder).")
        else:
            assert f"{tmp_path / 'afile'} is a file, not a folder" in line
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(("argv", "option", "target"), [
    (["evaluate", "{panel}", "-m", "{man}", "--policy", "{pol}"], "out", "panel"),
    (["evaluate", "{panel}", "-m", "{man}", "--policy", "{pol}"], "out", "pol"),
    (["predict", "{model}", "{panel}", "-m", "{man}"], "out", "panel"),
    (["audit", "{panel}", "-m", "{man}", "--policy", "awr={pol}"], "out", "pol"),
    (["audit", "{panel}", "-m", "{man}"], "out", "man"),
    (["mediate", "{panel}", "-m", "{man}", "--policy", "{pol}"], "figure", "pol"),
    (["plan", "--from-panel", "{panel}", "--episode", "id"], "out", "panel"),
])
def test_an_input_is_never_an_output_even_with_force(tmp_path, argv, option, target):
    # --force replaces an earlier output; `evaluate --out panel.parquet --force` wrote the
    # result JSON over the user's panel
    files = {"panel": tmp_path / "panel.parquet", "man": tmp_path / "manifest.toml",
             "pol": tmp_path / "pol.parquet", "model": tmp_path / "model"}
    for name, f in files.items():
        if name == "model":
            f.mkdir()
        else:
            f.write_bytes(name.encode())
    fill = {k: str(v) for k, v in files.items()}
    out = files[target]
    res = runner.invoke(app, [*(a.format(**fill) for a in argv), f"--{option}", str(out),
                              "--force"])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == (
        f"error: --{option} {out} is the input {out}; refusing to overwrite an input, even "
        "with --force: choose another path.")
    assert all(f.read_bytes() == n.encode() for n, f in files.items() if n != "model")


@pytest.mark.parametrize(("argv", "option"), [
    (["evaluate", "{panel}", "-m", "{man}", "--policy", "{panel}"], "out"),
    (["audit", "{panel}", "-m", "{man}"], "out"),
    (["frontier", "{panel}", "-m", "{man}"], "out"),
    (["mediate", "{panel}", "-m", "{man}", "--policy", "{panel}"], "out"),
    (["mediate", "{panel}", "-m", "{man}", "--policy", "{panel}"], "figure"),
    (["plan", "--domain", "synthetic"], "out"),
    (["capacity", "--domain", "synthetic"], "figure"),
])
@pytest.mark.parametrize("force", [False, True])
def test_a_file_output_that_is_a_folder_is_refused_before_any_work(tmp_path, argv, option,
                                                                     force):
    # an empty folder passed the "exists" check, and with --force any folder did: the run then
    # failed at its very end, writing the JSON or figure (IsADirectoryError, an internal error)
    from equicare.cli._utils import MSG_OUT_IS_FOLDER

    panel, man, folder = tmp_path / "panel.parquet", tmp_path / "manifest.toml", tmp_path / "o"
    panel.write_bytes(b"")
    man.write_text("")
    folder.mkdir()
    if force:
        (folder / "mine.txt").write_text("mine")
    fill = {"panel": str(panel), "man": str(man)}
    res = runner.invoke(app, [*(a.format(**fill) for a in argv), f"--{option}", str(folder),
                              *(["--force"] if force else [])])
    assert res.exit_code == 2, res.output
    example = folder / ("figure.png" if option == "figure" else "result.json")
    assert " ".join(res.output.split()) == "error: " + MSG_OUT_IS_FOLDER.format(
        option=f"--{option}", path=folder, example=example), res.output
    assert [p.name for p in folder.iterdir()] == (["mine.txt"] if force else [])


def test_thread_plan(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    auto = thread_plan("auto")
    assert auto["torch"] == 1 and auto["openmp"] == 1
    assert 1 <= auto["blas"] <= min(4, len(os.sched_getaffinity(0)))
    n = len(os.sched_getaffinity(0))
    assert thread_plan("64") == {"torch": min(64, n), "openmp": min(64, n), "blas": min(64, n)}
    with pytest.raises(InvalidParameterError, match="--threads must be 'auto' or an integer"):
        thread_plan("0")


def test_thread_count_is_capped_at_the_free_cores(monkeypatch):
    """--threads 2 on a 2-core host busy with another job ran torch on 2 threads, 5-6x slower
    than on 1 (they wait for each other); N is now capped at the cores not already busy."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert thread_plan("2") == {"torch": 1, "openmp": 1, "blas": 1}
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert thread_plan("2") == {"torch": 2, "openmp": 2, "blas": 2}


def test_thread_limits_apply_and_restore(monkeypatch):
    import torch
    from threadpoolctl import threadpool_info

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = torch.get_num_threads()
    with thread_limits("1") as plan:
        assert plan == {"torch": 1, "openmp": 1, "blas": 1}
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert all(i["num_threads"] == 1 for i in threadpool_info()
                   if i["user_api"] == "blas")
    assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "7"


def test_commands_run_with_the_chosen_threads(monkeypatch):
    seen = {}

    def spy(*args, **kwargs):
        seen["omp"] = os.environ.get("OMP_NUM_THREADS")
        raise InvalidParameterError("stop")

    monkeypatch.setattr(rmab_cli, "run_plan", spy)
    runner.invoke(app, [*PLAN, "--threads", "1"])
    assert seen == {"omp": "1"}
    res = runner.invoke(app, [*PLAN, "--threads", "none"])
    assert res.exit_code == 2 and "--threads must be 'auto' or an integer" in res.output


def test_tables_are_not_truncated_in_files(capsys):
    from rich.table import Table

    run_id = "20261203-111500-" + "a" * 40
    t = Table()
    for c in ("run_id", "name", "status", "started", "seed", "config_hash"):
        t.add_column(c)
    t.add_row(run_id, "care-demo", "finished", "2026-12-03 11:15:00", "42", "f" * 16)
    print_table(t)
    out = capsys.readouterr().out
    assert run_id in out and "f" * 16 in out and "…" not in out


def test_tables_print_user_text_literally(capsys):
    """Group labels, column and policy names with square brackets are text, never markup."""
    from rich.table import Table

    t = Table(title="rate by race [any race]", caption="see [/bold] below")
    t.add_column("race [self-reported]")
    t.add_row("Hispanic [/bold]")
    t.add_row("White [non-Hispanic]")
    t.add_row("Other [red]")
    print_table(t)
    out = capsys.readouterr().out
    for text in ("rate by race [any race]", "see [/bold] below", "race [self-reported]",
                 "Hispanic [/bold]", "White [non-Hispanic]", "Other [red]"):
        assert text in out


def test_progress_prints_lines_without_a_terminal(capsys):
    with progress_task("train awr", 100) as bar:
        bar.update(completed=100, info="loss=0.5")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "train awr: started (0/100)"
    assert err[-1].startswith("train awr: done (100/100) in ") and err[-1].endswith("loss=0.5")


def test_stages_print_bracketed_lines_and_name_their_bars(capsys):
    from equicare._progress import Stages

    Stages("audit", enabled=False)("silent")
    with Stages("audit", enabled=False).bar("group values", 2) as bar:
        bar.update(advance=2)
    assert capsys.readouterr().err == ""
    say = Stages("audit")
    say("behavior: bootstrap 200 replicates")
    with say.bar("group values", 2) as bar:
        bar.update(advance=2, info="eq")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[audit] behavior: bootstrap 200 replicates"
    assert err[1] == "audit: group values: started (0/2)"
    assert err[2].startswith("audit: group values: done (2/2) in ") and err[2].endswith(" eq")


def test_an_unwritable_out_folder_is_refused_before_the_work(monkeypatch, tmp_path):
    # the write at the end failed as "internal error (a bug in equicare)", exit 1, after all
    # the work, naming the hidden temporary file (.plan.json.abc123.tmp)
    from equicare.utils import MSG_OUT_NOT_WRITABLE

    ro = tmp_path / "read only"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
        False if os.path.abspath(p) == str(ro) else real_access(p, mode, **kw)))  # root: no-op
    monkeypatch.setattr(rmab_cli, "run_plan", _raise(AssertionError("the work ran")))
    for args, path in ((["--out", str(ro / "plan.json")], ro / "plan.json"),
                       (["--figure", str(ro / "sub" / "f.png")], ro / "sub" / "f.png")):
        res = runner.invoke(app, [*PLAN, *args])
        assert res.exit_code == 2, res.output
        option = args[0]
        assert " ".join(res.output.split()) == "error: " + MSG_OUT_NOT_WRITABLE.format(
            option=option, path=path, folder=ro)
    assert list(ro.iterdir()) == []


def test_a_file_that_cannot_be_written_is_a_user_error_naming_it(monkeypatch, tmp_path):
    # a PermissionError at write time (a file system that refuses what os.access allowed)
    import tempfile

    monkeypatch.setattr(tempfile, "mkstemp", _raise(PermissionError(13, "Permission denied",
                                                                  "/x/.plan.json.ab12.tmp")))
    out = tmp_path / "plan.json"
    res = runner.invoke(app, [*PLAN, "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == f"error: {out}: Permission denied."
