"""Executors: serial, local pool and Ray give the same numbers for the same seeds.

The Ray checks need the extra (``pip install 'equicare[ray]'``; ``make test-slow`` installs it) and
are skipped without it. They run with a throwaway auth token in the environment (nothing is
written to ``~/.ray``), no dashboard and usage statistics off, so they need no network.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.pipeline import RayExecutor, RunStore, get_executor, load_run_config
from equicare.pipeline._executor import (
    RAY_NO_CLUSTER,
    LocalExecutor,
    SerialExecutor,
    iter_map,
)

from .test_run import tiny_config

GRID = {"learner.n_steps": [20, 40], "reward.engagement": [0.0, 0.3]}
SWEEP_COLUMNS = ["learner.n_steps", "reward.engagement", "behavior", "wis", "dr", "wdr"]


def _task(seed: int) -> float:
    return float(np.random.default_rng(seed).normal(size=100).mean())


def _warning_task(i: int) -> int:
    import warnings

    from equicare.exceptions import DataWarning

    warnings.warn("the same warning from every task", DataWarning, stacklevel=1)
    if i == 2:
        warnings.warn(f"only task {i} says this", UserWarning, stacklevel=1)
    return i * 10


@pytest.mark.parametrize("executor", ["serial", "local"])
def test_task_warnings_are_issued_in_the_caller_once(executor):
    """Warnings raised in pool workers reach the caller's showwarning, deduplicated."""
    import warnings

    from equicare.exceptions import DataWarning

    ex = get_executor(executor, jobs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert list(iter_map(ex, _warning_task, [1, 2, 3])) == [10, 20, 30]
    got = [(w.category, str(w.message)) for w in caught]
    assert got == [(DataWarning, "the same warning from every task"),
                   (UserWarning, "only task 2 says this")]


def test_sweep_worker_warnings_are_one_line_cli_warnings(tmp_path):
    """`equicare sweep --executor local --jobs 2`: the workers' warnings are printed as the
    command line's `warning: ...` lines (as in-process), not Python's raw format."""
    import os

    cfg = tiny_config(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "equicare.cli", "sweep", str(cfg), "--grid",
         "learner.n_steps=[20,40]", "--executor", "local", "--jobs", "2", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("warning: ") for ln in lines), proc.stderr
    assert "SupportWarning:" not in proc.stderr and "_support.py" not in proc.stderr
    assert len(lines) == len(set(lines))
    assert any("probability mass on actions" in ln for ln in lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_local_pool_equals_serial():
    seeds = [1, 2, 3, 4]
    serial = get_executor("serial").map(_task, seeds)
    pooled = get_executor("local", jobs=2).map(_task, seeds)
    assert serial == pooled


def _pid(_: int) -> int:
    import os

    return os.getpid()


def _blas_threads(_: int) -> int:
    from threadpoolctl import threadpool_info

    return max((int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"),
               default=-1)


def test_pool_workers_share_the_cores():
    """Each of n workers runs BLAS on cores / n threads: n workers never oversubscribe the
    machine (a 2-worker pool of the sharded streamed evaluation ran 2-3x slower without it)."""
    import os

    n = 2
    got = set(get_executor("local", jobs=n).map(_blas_threads, range(4)))
    assert got == {max(1, (os.cpu_count() or 1) // n)}


def test_session_keeps_one_pool_for_every_map():
    """Inside a session the same worker processes serve every map (multi-pass streamed jobs)."""
    import pickle

    ex = LocalExecutor(jobs=2)
    with ex.session() as same:
        assert same is ex
        first = set(ex.map(_pid, range(4)))
        second = set(ex.map(_pid, range(4)))
        assert pickle.loads(pickle.dumps(ex)) == ex  # the pool is not pickled
        with ex.session():  # nested: the outer pool
            third = set(ex.map(_pid, range(4)))
        assert ex.map(_task, [4, 3]) == [_task(4), _task(3)]
        pool = ex.__dict__["_pool"]
        workers = set(pool._processes)  # the session's pool's processes
    assert first | second | third <= workers and len(workers) <= 2  # no pool per map
    assert "_pool" not in ex.__dict__  # closed with the session
    with LocalExecutor(jobs=1).session() as serial:  # one worker: no pool at all
        assert serial.map(_task, [1]) == [_task(1)]


def _started(log: list[int], seed: int) -> int:
    log.append(seed)
    return seed


def test_imap_is_ordered_and_lazy():
    log: list[int] = []
    it = SerialExecutor().imap(lambda s: _started(log, s), [3, 1, 2])
    assert log == []  # nothing runs before the first result is asked for
    assert next(it) == 3 and log == [3]
    assert list(it) == [1, 2]
    assert list(LocalExecutor(jobs=2).imap(_task, [4, 3, 2, 1])) == [_task(s) for s in (4, 3, 2, 1)]


def test_iter_map_falls_back_to_map():
    class MapOnly:
        def map(self, fn, items):
            return [fn(x) for x in items]

    assert list(iter_map(MapOnly(), abs, [-1, -2])) == [1, 2]
    assert list(iter_map(SerialExecutor(), abs, [-3])) == [3]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: get_executor("spark"), "The 'executor' parameter of get_executor must be one of"),
        (lambda: LocalExecutor(jobs=0), "The 'jobs' parameter of LocalExecutor"),
        (
            lambda: RayExecutor(address="head-node"),
            "The 'address' parameter of RayExecutor must be 'auto', 'local' or 'HOST:PORT'. "
            "Got 'head-node' instead.",
        ),
        (
            lambda: RayExecutor(address="local", num_cpus=0),
            "The 'num_cpus' parameter of RayExecutor must be a positive int or None. "
            "Got 0 instead.",
        ),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


# ---------------------------------------------------------------------------------------------
# Ray (optional extra)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The reference numbers: the tiny sweep on the local process pool (jobs=2)."""
    from equicare.pipeline._sweep import run_sweep

    d = tmp_path_factory.mktemp("local_sweep")
    cfg = load_run_config(tiny_config(d))
    t0 = time.perf_counter()
    out = run_sweep(cfg, GRID, executor=get_executor("local", jobs=2), progress=False)
    print(
        f"\n[timing] sweep of 4 points, local executor (jobs=2): {time.perf_counter() - t0:.1f} s"
    )
    return out.table


@pytest.mark.slow
def _ray_auto_sweep(tmp_path: Path) -> Any:
    """``equicare sweep`` of a tiny config on ``--executor ray --address auto``."""
    return CliRunner().invoke(app, ["sweep", str(tiny_config(tmp_path)), "--grid",
                                    "learner.n_steps=[20]", "--executor", "ray", "--address",
                                    "auto", "--store", str(tmp_path / "runs")])


def test_ray_without_cluster_says_how_to_fix(ray, monkeypatch, tmp_path):
    from ray._private.services import find_gcs_addresses

    if ray.is_initialized() or find_gcs_addresses():
        pytest.skip("a Ray cluster is running on this machine")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no ray_current_cluster file here
    for address in ("auto", f"127.0.0.1:{_free_port()}"):
        with pytest.raises(ValueError, match=re.escape(RAY_NO_CLUSTER.format(address=address))):
            RayExecutor(address=address).map(_task, [1])
    res = _ray_auto_sweep(tmp_path)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "ray start --head" in res.output
    assert not (tmp_path / "runs").exists() or RunStore(tmp_path / "runs").list_runs().empty


def test_ray_auto_with_stale_cluster_file_fails_fast(ray, monkeypatch, tmp_path):
    """``auto`` naming a dead cluster (``ray_current_cluster`` left by a killed head) exits 2.

    ``ray.init`` would retry that address without end, so it must not be reached: it is
    replaced by a stub that fails the test. No cluster is started; the file is a private copy.
    """
    from ray._private.services import find_gcs_addresses

    if ray.is_initialized() or find_gcs_addresses():
        pytest.skip("a Ray cluster is running on this machine")

    def no_init(*args: object, **kwargs: object) -> None:
        raise AssertionError("ray.init was called for a cluster that does not answer")

    monkeypatch.setattr(ray, "init", no_init)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    port = _free_port()  # closed: nothing listens there any more
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
    t0 = time.perf_counter()
    stale = f"No Ray cluster answers at .*:{port}, where address 'auto'"
    with pytest.raises(ValueError, match=stale):
        RayExecutor(address="auto").connect()
    res = _ray_auto_sweep(tmp_path)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert str(tmp_path / "ray" / "ray_current_cluster") in res.output.replace("\n", "")
    assert "ray start --head" in res.output and "--address local" in res.output
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "runs").exists() or RunStore(tmp_path / "runs").list_runs().empty


@pytest.mark.slow
def test_ray_equals_local(ray):
    seeds = list(range(7))  # more tasks than CPUs: results must still come back in input order
    with RayExecutor(address="local", num_cpus=2) as ex:
        assert ex.n_workers == 2
        assert ex.map(_task, seeds) == get_executor("serial").map(_task, seeds)
    assert not ray.is_initialized()  # the session it started is gone


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_ray_sweep_equals_local(ray, local_sweep, tmp_path):
    from equicare.pipeline._sweep import run_sweep

    cfg = load_run_config(tiny_config(tmp_path))
    t0 = time.perf_counter()
    with RayExecutor(address="local", num_cpus=2) as ex:
        out = run_sweep(cfg, GRID, executor=ex, progress=False)
    print(
        f"\n[timing] same sweep, ray executor (local cluster, 2 CPUs, incl. start-up): "
        f"{time.perf_counter() - t0:.1f} s"
    )
    assert "true_value" in out.table
    pd.testing.assert_frame_equal(out.table, local_sweep, check_exact=True)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_ray_sweep_cli(ray, local_sweep, tmp_path):
    cfg = tiny_config(tmp_path)
    args = ["sweep", str(cfg), "--executor", "ray", "--address", "local", "--jobs", "2"]
    for k, v in GRID.items():
        args += ["--grid", f"{k}=[{','.join(map(str, v))}]"]
    t0 = time.perf_counter()
    res = CliRunner().invoke(app, [*args, "--store", str(tmp_path / "runs"), "--quiet"])
    print(
        f"\n[timing] same sweep, `equicare sweep --executor ray --address local --jobs 2`: "
        f"{time.perf_counter() - t0:.1f} s"
    )
    assert res.exit_code == 0, res.output
    assert not ray.is_initialized()  # the sweep shut down the cluster it started
    store = RunStore(tmp_path / "runs")
    run = store.get_run(store.list_runs()["run_id"].iloc[0])
    assert run["status"] == "finished"
    assert run["config"]["base"]["output"]["executor"] == "ray"
    table = pd.read_csv(store.run_dir(run["run_id"]) / "sweep.csv")
    # the CSV round trip keeps 17 significant digits, so the numbers match exactly
    pd.testing.assert_frame_equal(table[SWEEP_COLUMNS], local_sweep[SWEEP_COLUMNS])


@pytest.mark.slow
def test_ray_connects_to_running_cluster(ray, tmp_path):
    """``ray start --head`` on a free loopback port, then RayExecutor(address="127.0.0.1:PORT").

    The head node gets a private temporary folder: ``ray start`` writes its address to
    ``<temp dir>/ray_current_cluster``, which by default is the machine's ``/tmp/ray`` that
    ``--address auto`` reads (a stale one there is what a user's next run would find). The
    folder's path is short: Ray's socket paths inside it must stay under 108 characters.
    """
    import tempfile

    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.is_file():
        ray_cli = Path(shutil.which("ray") or "ray")
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="eqray-", dir="/tmp" if Path("/tmp").is_dir() else None)
    shared = Path("/tmp/ray/ray_current_cluster")
    before = shared.read_bytes() if shared.is_file() else None
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=1",
            "--include-dashboard=false",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so cleanup reaches every Ray process
    )
    try:
        t0 = time.perf_counter()
        # a session left by an earlier executor with other settings is replaced, not reused
        RayExecutor(address="local", num_cpus=1).map(_task, [0])
        ex = RayExecutor(address=f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                got = ex.map(_task, [3, 4, 5])
                break
            except ValueError:
                if time.monotonic() > deadline or head.poll() is not None:
                    raise
                time.sleep(1)  # the head node is still starting
        print(
            f"\n[timing] ray start --head + connect by 127.0.0.1:{port} + 3 tasks: "
            f"{time.perf_counter() - t0:.1f} s"
        )
        assert got == get_executor("serial").map(_task, [3, 4, 5])
        assert ray.cluster_resources()["CPU"] == 1  # the started head node, not the local one
        ex.shutdown()  # disconnects this driver; the cluster keeps running
        assert not ray.is_initialized() and head.poll() is None
        assert (Path(temp_dir) / "ray_current_cluster").is_file()
        assert (shared.read_bytes() if shared.is_file() else None) == before  # left alone
    finally:
        ray.shutdown()
        _stop_process_group(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    import os
    import signal

    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_serial_sweep_and_frontier_points_restore_torch_threads(monkeypatch) -> None:
    """A serial executor runs points in the caller's process: each point may use one torch
    thread, but the caller's thread count comes back afterwards (also after an error)."""
    import torch

    import equicare.learn
    from equicare.pipeline import _frontier, _sweep

    before = torch.get_num_threads()
    target = 3 if before != 3 else 2
    torch.set_num_threads(target)
    try:
        monkeypatch.setattr(_sweep, "_sweep_point",
                            lambda task: {"threads": torch.get_num_threads()})
        assert _sweep.sweep_point(None) == {"threads": 1}
        assert torch.get_num_threads() == target
        seen = []

        class Boom:
            config_class = type("C", (), {"from_dict": staticmethod(lambda d: d)})

            def __init__(self, config):
                pass

            def fit(self, *args, **kwargs):
                seen.append(torch.get_num_threads())
                raise RuntimeError("boom")

        monkeypatch.setattr(equicare.learn, "Boom", Boom, raising=False)
        task = _frontier._Task(learner_cls="Boom", config={}, train=None, eval=None, audit={},
                               weights=None, seed=0, torch_threads=1)
        with pytest.raises(RuntimeError, match="boom"):
            _frontier._run_point(task)
        assert seen == [1] and torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)


def _sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_an_interrupt_stops_the_pools_workers_instead_of_waiting():
    """A sweep stopped by SIGTERM left its pool's workers running (the parent waited on, or
    left, tasks that were still sleeping); on an exception the pool's workers now stop."""
    import os
    import signal

    from equicare.pipeline._executor import Interrupted, _owned_pool, sigterm_as_interrupt

    t0 = time.perf_counter()
    with pytest.raises(Interrupted), sigterm_as_interrupt(), _owned_pool(2) as pool:
        futures = [pool.submit(_sleep, 60.0) for _ in range(2)]
        while not all(f.running() for f in futures):
            time.sleep(0.05)
        workers = list(pool._processes.values())
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` does
        time.sleep(5)
    # a worker the pool's own manager thread reaps can read as alive for a moment after its
    # exit (both threads wait on it): allow it a few seconds, far below the tasks' 60 s
    deadline = time.monotonic() + 10
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert time.perf_counter() - t0 < 40  # not the 60 s the tasks would take
    assert workers and not any(w.is_alive() for w in workers)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored


@pytest.mark.parametrize("address", ["local", "127.0.0.1:6379"])
def test_ray_init_silences_the_driver_logger(ray, monkeypatch, address):
    """Ray's own start-up notices (token authentication, "Started a local Ray instance") stay
    off stderr: the driver's "ray" logger is set to ERROR in both connection paths."""
    import logging

    from equicare.pipeline import _executor

    if ray.is_initialized():
        pytest.skip("a Ray session is open in this process")
    seen: dict[str, object] = {}

    def fake_init(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(_executor, "_answers", lambda host, port: True)
    monkeypatch.setattr(_executor, "_ray_session", [])
    RayExecutor(address=address, num_cpus=1 if address == "local" else None).connect()
    assert seen["logging_level"] == logging.ERROR
    assert seen["log_to_driver"] is False
