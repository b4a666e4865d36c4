"""Streamed training benchmark (``run_all.py --only scale_train``): BC steps/s on 1M vs 20M rows.

Each panel is simulated part by part (``write_care_parts``: 52 weeks, no churn) into a folder of
Parquet files; in a fresh child process (its own peak resident memory, VmHWM), BC trains for
2,000 steps of 256 rows with :func:`equicare.learn._stream.fit_stream`: one pass counts the
actions and samples 200k rows of episodes (input statistics), then mini-batches are drawn from a
shuffle buffer of two 500k-row chunks while the panel streams by, the steps spread over the chunks
in proportion to their rows.

Reported per size: gradient steps per second of the training loop (batches from the buffer),
end-to-end seconds (reading the panel twice included) and peak MB; and the ratio of the loop's
steps/s at the largest size over the smallest (issue #16: no fewer steps/s at 20M than at 1M,
memory bounded). Sizes: ``EQUICARE_BENCH_SCALE_TRAIN_SIZES`` (default ``1,20`` millions of rows).
Like ``bench_scale``, it runs only when named (``run_all.py --only scale_train``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_CHILD = r"""
import json, sys, time
def hwm_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
from equicare.learn import BC
from equicare.learn._stream import fit_stream
t = time.perf_counter()
bc = fit_stream(BC(n_steps=int(sys.argv[3]), batch_size=256, seed=1), sys.argv[1], sys.argv[2],
                chunk_rows=500_000, buffer_chunks=2, sample_rows=200_000)
info = bc.stream_info_
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": hwm_mb(),
                  "steps_per_second": info["steps_per_second"], "steps": bc.n_steps_done_,
                  "chunks_read": info["chunks_read"]}))
"""


def _entry(value: float, unit: str, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value, "unit": unit, "peer": None, "peer_value": None,
                           "ratio": None}
    if note:
        out["note"] = note
    return out


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure; ``quick``: 50k and 100k rows, 200 steps."""
    sizes = tuple(float(x) for x in os.environ.get("EQUICARE_BENCH_SCALE_TRAIN_SIZES",
                                                   "1,20").split(","))
    steps = 2000
    if quick:
        sizes, steps = (0.05, 0.1), 200
    from equicare.sim._care_parts import write_care_parts
    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig(churn=False))
    base = Path(tempfile.mkdtemp(prefix="equicare-scale-train-"))
    results: dict[str, dict[str, Any]] = {}
    rates: list[float] = []
    try:
        for m in sizes:
            d = base / f"care_{m:g}m"
            t = time.perf_counter()
            info = write_care_parts(sim, d, n_members=int(round(m * 1_000_000 / 52)), n_weeks=52,
                                    members_per_part=20_000, seed=7, overwrite=True)
            print(f"{info['n_rows']:,} rows written in {time.perf_counter() - t:.1f} s",
                  flush=True)
            out = subprocess.run([sys.executable, "-c", _CHILD, info["panel"], info["manifest"],
                                  str(steps)], capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            r = json.loads(out.stdout.strip().splitlines()[-1])
            tag = f"{m:g}M"
            print(f"  BC {r['steps_per_second']:.1f} steps/s, {r['seconds']:.1f} s end to end, "
                  f"{r['peak_mb']:.0f} MB", flush=True)
            results[f"scale_train_bc_stream_{tag}_rows_steps_per_s"] = _entry(
                r["steps_per_second"], "steps/s",
                f"{r['steps']} steps of 256 rows from a 2-chunk shuffle buffer; "
                f"{r['chunks_read']} chunks read")
            results[f"scale_train_bc_stream_{tag}_rows"] = _entry(
                r["seconds"], "s", "end to end: the counting/sampling pass and the training pass")
            results[f"scale_train_bc_stream_{tag}_rows_peak"] = _entry(r["peak_mb"], "MB")
            rates.append(r["steps_per_second"])
            shutil.rmtree(d, ignore_errors=True)
        if len(rates) >= 2:
            results["scale_train_bc_steps_per_s_ratio"] = _entry(
                rates[-1] / rates[0], "x",
                f"training-loop steps/s at {sizes[-1]:g}M rows over {sizes[0]:g}M (>= 1: no "
                "slower on the larger panel)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
