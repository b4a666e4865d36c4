"""SIGTERM as an exception until the work is recorded (equicare/_signals.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from equicare._signals import mark_committed, sigterm_deferred, sigterm_raises

SRC = Path(__file__).resolve().parents[1] / "src"


class Stop(Exception):
    pass


def test_sigterm_raises_until_the_work_is_committed_then_is_ignored():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stop, match="received signal 15"), sigterm_raises(Stop):
        os.kill(os.getpid(), signal.SIGTERM)
    with sigterm_raises(Stop):
        mark_committed()
        os.kill(os.getpid(), signal.SIGTERM)  # a finished run's record is written: no error
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(Stop), sigterm_raises(Stop):  # each block starts uncommitted
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_nested_block_does_not_end_the_outer_blocks_commit():
    with sigterm_raises(Stop):
        with sigterm_raises(KeyboardInterrupt):  # the run's stages
            pass
        mark_committed()  # the run store's commit, after the stages
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_during_the_commit_arrives_after_it():
    import threading

    other = threading.Event()  # another thread, as DuckDB's: a signal mask would not hold
    t = threading.Thread(target=other.wait, daemon=True)
    t.start()
    try:
        with sigterm_raises(Stop):
            with sigterm_deferred():
                os.kill(os.getpid(), signal.SIGTERM)  # held: nothing raised between the lines
                sum(range(1000))  # the handler gets its chance to run here
                mark_committed()
            # handled here, and ignored: the work is committed
        done = []
        with pytest.raises(Stop), sigterm_raises(Stop):
            with sigterm_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(1000))
                done.append(True)  # not committed: the signal stops the work after the block
        assert done == [True]
    finally:
        other.set()
        t.join()


def _exit_code_with_sigterm_at_exit(tmp_path: Path, args: list[str]) -> int:
    """Run the ``equicare`` entry point; SIGTERM arrives during interpreter exit (atexit)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import atexit, os, signal, sys
        atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))
        sys.argv = ["equicare", *{args!r}]
        from equicare.cli import main
        main()
    """))
    env = {**os.environ, "PYTHONPATH": str(SRC), "EQUICARE_LOG_DIR": str(tmp_path / "logs")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          timeout=120, check=False)
    return done.returncode


def test_a_finished_command_exits_0_whatever_arrives_during_interpreter_exit(tmp_path):
    """Before: the handler was restored when the command returned, and a SIGTERM during
    interpreter exit (a scheduler's stop right after a run was recorded finished) gave 143."""
    code = _exit_code_with_sigterm_at_exit(
        tmp_path, ["plan", "--domain", "synthetic", "--arms", "40", "--seeds", "1",
                   "--horizon", "2", "--policy", "random", "--json"])
    assert code == 0
    assert _exit_code_with_sigterm_at_exit(tmp_path, ["--version"]) == 0
