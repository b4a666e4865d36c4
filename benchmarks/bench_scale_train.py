"""Streamed training benchmark (``run_all.py --only scale_train``): BC steps/s on 1M vs 20M rows.

Each panel is simulated part by part (``write_care_parts``: 52 weeks, no churn) into a folder of
Parquet files. BC then trains with :func:`equicare.learn._stream.fit_stream` (one pass counts the
actions and samples 200k rows of episodes for the input statistics; then the training pass reads
what its step budget needs, ``read_factor`` (2) x steps x 256 rows: the whole 1M-row panel, or
about 1M rows of a larger one in random units of whole episodes, and draws mini-batches of 256
rows from a shuffle buffer of two 500k-row chunks, the steps spread over the chunks in proportion
to their rows), each run in a fresh child process (its own
peak resident memory, VmHWM), in two modes: the next buffer built in the training process between
the steps (``prefetch=0``, the default) and by a producer process while the steps run
(``prefetch=1``; ``EQUICARE_BENCH_SCALE_TRAIN_PREFETCH``, default ``0,1``).

The runs are **interleaved** (1M, 20M, 1M, 20M, ...; ``EQUICARE_BENCH_SCALE_TRAIN_REPEATS``
rounds, default 3) so that a change of the host's load hits every size alike. Reported per size
and mode: the **median** over the rounds of the gradient steps per second after the first 100
steps (the warm-up), with the lowest and highest run and the steps per CPU-second of the training
thread; the wall-clock steps/s of the training pass (waits for the next buffer included) and the
seconds spent waiting; the median end-to-end seconds; the largest peak (the training process's
plus the producer's). And the ratios of the median steps/s (gradient steps, and wall-clock) at
the largest size over the smallest, with the range of the per-round ratios (issue #16: no fewer
steps/s at 20M than at 1M, memory bounded). Sizes: ``EQUICARE_BENCH_SCALE_TRAIN_SIZES``
(default ``1,20`` millions of rows); steps per run: ``EQUICARE_BENCH_SCALE_TRAIN_STEPS`` (default
2,000). Like ``bench_scale``, it runs only when named (``run_all.py --only scale_train``).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_scale import _HWM

_CHILD = _HWM + r"""
import json, sys, time
from equicare.learn import BC
from equicare.learn._stream import fit_stream
t = time.perf_counter()
bc = fit_stream(BC(n_steps=int(sys.argv[3]), batch_size=256, seed=1), sys.argv[1], sys.argv[2],
                chunk_rows=500_000, buffer_chunks=2, sample_rows=200_000,
                prefetch=int(sys.argv[4]))
info = bc.stream_info_
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": hwm_mb(),
                  "steps_per_second": info["steps_per_second_after_warmup"],
                  "wall_steps_per_second": info["wall_steps_per_second"],
                  "cpu_steps_per_second": info["cpu_steps_per_second_after_warmup"],
                  "wait_seconds": info["wait_seconds"], "steps": bc.n_steps_done_,
                  "producer_peak_mb": info["producer_peak_mb"],
                  "chunks_read": info["chunks_read"], "read": info["read"],
                  "rows_read": info["rows_read_per_pass"]}))
"""


def _entry(value: float, unit: str, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "unit": unit, "peer": None, "peer_value": None,
                           "ratio": None}
    if note:
        out["note"] = note
    return out


def _child(panel: str, manifest: str, steps: int, prefetch: int = 0) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, panel, manifest, str(steps),
                          str(prefetch)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _summary(runs: dict[float, list[dict[str, Any]]], sizes: tuple[float, ...], rounds: int,
             steps: int, suffix: str) -> dict[str, dict[str, Any]]:
    """Entries of one prefetch mode (``suffix`` "" for the default, in-process buffers)."""
    results: dict[str, dict[str, Any]] = {}
    how = ("buffers built in the training process (prefetch=0)" if not suffix else
           f"buffers from a producer process ({suffix.lstrip('_')})")
    for m in sizes:
        rs = runs[m]
        sps = [r["steps_per_second"] for r in rs]
        tag = f"{m:g}M"
        results[f"scale_train_bc_stream_{tag}_rows_steps_per_s{suffix}"] = _entry(
            statistics.median(sps), "steps/s",
            f"median of {rounds} interleaved runs (range {min(sps):.1f}-{max(sps):.1f}) of "
            f"{steps} steps of 256 rows after {min(100, steps // 10)} warm-up steps; {how}; "
            f"{rs[0]['chunks_read']} chunks read ({rs[0]['rows_read']:,} rows, "
            f"{rs[0]['read']}); per CPU-second of the training thread: "
            f"{statistics.median(r['cpu_steps_per_second'] for r in rs):.1f}")
        wall = [r["wall_steps_per_second"] for r in rs]
        results[f"scale_train_bc_stream_{tag}_rows_wall_steps_per_s{suffix}"] = _entry(
            statistics.median(wall), "steps/s",
            "median wall-clock steps/s of the training pass, waits for the next buffer "
            f"included (median wait {statistics.median(r['wait_seconds'] for r in rs):.1f} s)")
        results[f"scale_train_bc_stream_{tag}_rows{suffix}"] = _entry(
            statistics.median(r["seconds"] for r in rs), "s",
            "median end to end: the counting/sampling pass and the training pass")
        top = max(rs, key=lambda r: r["peak_mb"] + r["producer_peak_mb"])
        results[f"scale_train_bc_stream_{tag}_rows_peak{suffix}"] = _entry(
            top["peak_mb"] + top["producer_peak_mb"], "MB",
            f"largest of {rounds} runs: training process {top['peak_mb']:.0f} MB + "
            f"buffer producer {top['producer_peak_mb']:.0f} MB (each its own peak)")
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        for key, name, what in (
                ("steps_per_second", "steps_per_s_ratio",
                 "median steps/s at {hi}M rows over {lo}M (>= 1: no slower on the larger panel)"),
                ("wall_steps_per_second", "wall_steps_per_s_ratio",
                 "median wall-clock steps/s (waits for data included) at {hi}M rows over {lo}M")):
            med = [statistics.median(r[key] for r in runs[m]) for m in (lo, hi)]
            pairs = [b[key] / a[key] for a, b in zip(runs[lo], runs[hi], strict=True)]
            results[f"scale_train_bc_{name}{suffix}"] = _entry(
                med[1] / med[0], "x",
                f"{what.format(hi=f'{hi:g}', lo=f'{lo:g}')}; per-round ratios "
                f"{min(pairs):.2f}-{max(pairs):.2f}; {how}")
    return results


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure; ``quick``: 50k and 100k rows, 300 steps, 2 rounds."""
    env = os.environ.get
    sizes = tuple(float(x) for x in env("EQUICARE_BENCH_SCALE_TRAIN_SIZES", "1,20").split(","))
    steps = int(env("EQUICARE_BENCH_SCALE_TRAIN_STEPS", "2000"))
    rounds = int(env("EQUICARE_BENCH_SCALE_TRAIN_REPEATS", "3"))
    modes = tuple(int(x) for x in env("EQUICARE_BENCH_SCALE_TRAIN_PREFETCH", "0,1").split(","))
    if quick:
        sizes, steps, rounds = (0.05, 0.1), 300, 2
    from equicare.sim._care_parts import write_care_parts
    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig(churn=False))
    base = Path(tempfile.mkdtemp(prefix="equicare-scale-train-"))
    results: dict[str, dict[str, Any]] = {}
    all_runs: dict[int, dict[float, list[dict[str, Any]]]] = {}
    try:
        panels = {}
        for m in sizes:
            t = time.perf_counter()
            info = write_care_parts(sim, base / f"care_{m:g}m",
                                    n_members=int(round(m * 1_000_000 / 52)), n_weeks=52,
                                    members_per_part=20_000, seed=7, overwrite=True)
            print(f"{info['n_rows']:,} rows written in {time.perf_counter() - t:.1f} s",
                  flush=True)
            panels[m] = (info["panel"], info["manifest"])
        for mode in modes:
            runs: dict[float, list[dict[str, Any]]] = {m: [] for m in sizes}
            all_runs[mode] = runs
        for k in range(rounds):
            for m in sizes:
                for mode in modes:
                    r = _child(*panels[m], steps, mode)
                    all_runs[mode][m].append(r)
                    print(f"  round {k + 1}, {m:g}M rows, prefetch {mode}: "
                          f"{r['steps_per_second']:.1f} steps/s "
                          f"({r['wall_steps_per_second']:.1f} with waits, "
                          f"{r['wait_seconds']:.1f} s waiting), {r['seconds']:.1f} s end to end, "
                          f"{r['peak_mb']:.0f} + {r['producer_peak_mb']:.0f} MB", flush=True)
        for mode in modes:
            results.update(_summary(all_runs[mode], sizes, rounds, steps,
                                    "" if mode == 0 else f"_prefetch{mode}"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
