"""Benchmark: generating care-management panels and loading them back (equicare.data).

Measures
--------
* ``CareManagementSim.generate`` for 20,000 members x 52 weeks (1.04M rows; churn off so the row
  count is exact) and with the default churn (~0.83M rows). Target: < 20 s.
* ``CarePanel.write`` (Parquet + manifest).
* ``equicare.data.load_dataset`` (read Parquet, validate, build the TrajectoryDataset) in a fresh
  child process, with its peak resident memory (``resource.getrusage``). Targets: < 5 s, < 1.5 GB.
  Peer: ``pandas.read_parquet`` of the same file (no validation) in another fresh child.
* Scaling of generate and load from 100k to 1M rows (100k, 250k, 500k, 1M), with the log-log slope.
* ``true_value`` of the behaviour policy (2,000 members x 52 weeks).

Run: ``.venv/bin/python benchmarks/bench_data.py``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from equicare.sim.care import CareConfig, CareManagementSim

# Peak resident memory: VmHWM of /proc/self/status (reset by exec, unlike ru_maxrss on Linux,
# which keeps the forking parent's high-water mark); ru_maxrss elsewhere.
_HWM = r"""
import resource
def hwm_kb():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

_CHILD_LOAD = _HWM + r"""
import json, sys, time
from equicare.data import load_dataset
base = hwm_kb()
t, c = time.perf_counter(), time.process_time()
ds = load_dataset(sys.argv[1], sys.argv[2], emit_warnings=False)
dt, dc = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"seconds": dt, "cpu_seconds": dc, "peak_kb": hwm_kb(), "base_kb": base,
                  "n_steps": ds.n_steps}))
"""

_CHILD_PEER = _HWM + r"""
import json, sys, time
import pandas as pd
base = hwm_kb()
t, c = time.perf_counter(), time.process_time()
df = pd.read_parquet(sys.argv[1])
dt, dc = time.perf_counter() - t, time.process_time() - c
print(json.dumps({"seconds": dt, "cpu_seconds": dc, "peak_kb": hwm_kb(), "base_kb": base,
                  "n_rows": len(df)}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _entry(value: float, unit: str, peer: str | None = None,
           peer_value: float | None = None) -> dict[str, Any]:
    # ratio > 1: equicare faster / smaller than the peer (peer / ours)
    ratio = None if peer_value is None or value == 0 else float(peer_value) / value
    return {"value": float(value), "unit": unit, "peer": peer, "peer_value": peer_value,
            "ratio": ratio}


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _timed_cpu(fn: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def run(sizes: tuple[int, ...] = (100_000, 250_000, 500_000, 1_000_000),
        n_members: int = 20_000, n_weeks: int = 52, quick: bool = False
        ) -> dict[str, dict[str, Any]]:
    """Run the benchmark and return ``{name: {value, unit, peer, peer_value, ratio}}``.

    ``quick``: a smoke run at tiny sizes (its numbers mean nothing).
    """
    if quick:
        sizes, n_members, n_weeks = (2_000, 4_000), 100, 20
    res: dict[str, dict[str, Any]] = {}
    sim = CareManagementSim(CareConfig(churn=False))
    sim_churn = CareManagementSim()
    tmp = Path(tempfile.mkdtemp(prefix="equicare_bench_data_"))
    try:
        # ---------------- headline: 20,000 x 52
        panel, dt, dcpu = _timed_cpu(lambda: sim.generate(n_members=n_members, n_weeks=n_weeks,
                                                          random_state=0))
        n_rows = len(panel.frame)
        res["generate_20k_x_52_s"] = _entry(dt, "s")
        res["generate_20k_x_52_cpu_s"] = _entry(dcpu, "s")
        res["generate_rows"] = _entry(n_rows, "rows")
        res["generate_rows_per_s"] = _entry(n_rows / dt, "rows/s")
        pc, dtc = _timed(lambda: sim_churn.generate(n_members=n_members, n_weeks=n_weeks,
                                                    random_state=0))
        res["generate_20k_x_52_churn_s"] = _entry(dtc, "s")
        res["generate_churn_rows"] = _entry(len(pc.frame), "rows")
        del pc
        t0 = time.perf_counter()
        out_dir = panel.write(tmp / "full")
        dtw = time.perf_counter() - t0
        res["write_parquet_s"] = _entry(dtw, "s")
        res["parquet_size_mb"] = _entry((out_dir / "panel.parquet").stat().st_size / 2**20, "MB")
        del panel
        pq_path, man_path = str(out_dir / "panel.parquet"), str(out_dir / "manifest.toml")
        load = _child(_CHILD_LOAD, pq_path, man_path)
        peer = _child(_CHILD_PEER, pq_path)
        res["load_dataset_s"] = _entry(load["seconds"], "s", "pandas.read_parquet (no validation)",
                                       peer["seconds"])
        res["load_dataset_cpu_s"] = _entry(load["cpu_seconds"], "s",
                                           "pandas.read_parquet (no validation)",
                                           peer["cpu_seconds"])
        res["load_dataset_peak_rss_mb"] = _entry(load["peak_kb"] / 1024, "MB",
                                                 "pandas.read_parquet (no validation)",
                                                 peer["peak_kb"] / 1024)
        res["load_dataset_rss_increase_mb"] = _entry((load["peak_kb"] - load["base_kb"]) / 1024,
                                                     "MB", "pandas.read_parquet (no validation)",
                                                     (peer["peak_kb"] - peer["base_kb"]) / 1024)
        for k in ("load_dataset_s", "load_dataset_cpu_s", "load_dataset_peak_rss_mb",
                  "load_dataset_rss_increase_mb"):
            res[k]["note"] = ("not like-for-like: the peer only reads the file; equicare also "
                              "validates it and builds the dataset")
        shutil.rmtree(out_dir)

        # ---------------- scaling 100k .. 1M rows
        gen_t, load_t = [], []
        for rows in sizes:
            m = max(1, round(rows / n_weeks))
            p, dt = _timed(lambda m=m: sim.generate(n_members=m, n_weeks=n_weeks,
                                                    random_state=1))
            d = p.write(tmp / f"s{rows}")
            del p
            ld = _child(_CHILD_LOAD, str(d / "panel.parquet"), str(d / "manifest.toml"))
            shutil.rmtree(d)
            gen_t.append(dt)
            load_t.append(ld["seconds"])
            label = f"{rows // 1000}k" if rows < 1_000_000 else f"{rows // 1_000_000}M"
            res[f"generate_{label}_rows_s"] = _entry(dt, "s")
            res[f"load_{label}_rows_s"] = _entry(ld["seconds"], "s")
            res[f"load_{label}_rows_peak_rss_mb"] = _entry(ld["peak_kb"] / 1024, "MB")
        x = np.log(np.asarray(sizes, dtype=float))
        res["generate_scaling_exponent"] = _entry(float(np.polyfit(x, np.log(gen_t), 1)[0]),
                                                  "log-log slope")
        res["load_scaling_exponent"] = _entry(float(np.polyfit(x, np.log(load_t), 1)[0]),
                                              "log-log slope")

        # ---------------- true value (Monte Carlo) of the behaviour policy
        val, dtv = _timed(lambda: sim_churn.true_value(sim_churn.behavior_policy(),
                                                       n_members=100 if quick else 2000,
                                                       n_weeks=n_weeks,
                                                       random_state=0))
        res["true_value_behavior_2000x52_s"] = _entry(dtv, "s")
        res["true_value_behavior_se"] = _entry(val.se, "value units")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    width = max(len(k) for k in results)
    for name, e in results.items():
        peer = ""
        if e["peer"] is not None:
            peer = f"   peer {e['peer']}: {e['peer_value']:.3f} (ratio {e['ratio']:.2f})"
        v = e["value"]
        txt = f"{v:,.0f}" if abs(v) >= 1000 or (v == int(v) and not math.isnan(v)) else f"{v:.3f}"
        print(f"{name:<{width}}  {txt} {e['unit']}{peer}")
