"""Scale benchmark (``make bench-scale``): streamed validation, evaluation and audit on 1M-20M rows.

Each panel is simulated part by part (``equicare.sim._care_parts.write_care_parts``: 52 weeks,
no churn, so rows = 52 x members) into a folder of Parquet files, then every measurement runs in
a fresh child process so its peak resident memory (VmHWM) is its own:

* ``validate_stream`` over the whole panel;
* ``evaluate_stream`` of a supported target policy (0.9 x the simulator's rule-based reference
  policy + 0.1 x uniform: cheap to compute, so the time is the engine's) with all seven
  estimators: IS, WIS, PDIS, WPDIS and FQE, DR, WDR with the linear Q-model fitted from
  sufficient statistics summed over chunks (three passes), the behaviour value, ESS and 1,000
  Poisson bootstrap replicates (the Q-model's refit linearised into each), chunk by chunk
  (500k rows), and every estimator within each level of the panel's group attributes (the
  default of ``evaluate_stream``);
* ``audit_stream`` of the same policy and the logged behaviour (allocation of home visits by
  race/ethnicity, WIS group values, 1,000 bootstrap replicates, 1,000 permutations);
* at 5M rows the same evaluation sharded on 2 local Ray workers and on a local pool of 2
  processes (the same shards on the same cores), checking that the numbers equal the streamed
  ones; Ray's overhead is its time over the process pool's.

Reported: seconds and peak MB per size, the log-log slope of time in rows of each job, the growth
of the streamed peak from the smallest to the largest panel, and Ray's overhead. Targets (issue
#16): slope <= 1.1, streamed peak <= 4 GB at 20M rows and flat in rows, Ray overhead <= 25 %.
``make bench-scale`` runs it through ``run_all.py --only scale`` (a full ``make bench`` leaves it
out and keeps its entries); by hand:
``python benchmarks/bench_scale.py [--sizes 1,5,20] [--folder DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HWM = r"""
def hwm_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
"""

_CHILD_VALIDATE = _HWM + r"""
import json, sys, time
from equicare.data import validate_stream
t = time.perf_counter()
rep, scan = validate_stream(sys.argv[1], sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": hwm_mb(), "ok": rep.ok,
                  "rows": scan.n_rows}))
"""

_POLICY = r"""
from equicare.policy import MixturePolicy, UniformPolicy
from equicare.sim.care import CareConfig, CareManagementSim
sim = CareManagementSim(CareConfig(churn=False))
pol = MixturePolicy([sim.reference_policy(), UniformPolicy(sim.n_actions)], [0.9, 0.1])
"""

_CHILD_EVALUATE = _HWM + _POLICY + r"""
import json, sys, time
from equicare.ope import evaluate_stream
executor = None
if sys.argv[3] in ("ray", "local"):
    from equicare.pipeline import get_executor
    executor = get_executor(sys.argv[3], address="local", jobs=2)
t = time.perf_counter()
res = evaluate_stream(sys.argv[1], pol, manifest=sys.argv[2],
                      estimators=("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"),
                      q_model="linear", n_boot=1000, random_state=1, executor=executor,
                      n_shards=2 if executor else None)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_mb": hwm_mb(), "result": res.to_dict()}))
"""

_CHILD_AUDIT = _HWM + _POLICY + r"""
import json, sys, time
from equicare.fairness import FairnessAudit
from equicare.fairness._stream import audit_stream
cfg = FairnessAudit(action="modality=home_visit", n_boot=1000, n_permutations=1000,
                    estimator="wis")
t = time.perf_counter()
res = audit_stream(sys.argv[1], {"target": pol}, manifest=sys.argv[2], config=cfg,
                   random_state=1)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": hwm_mb(),
                  "n_episodes": res.n_episodes}))
"""


def _child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entry(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "peer": None, "peer_value": None, "ratio": None}


def _slope(rows: list[float], secs: list[float]) -> float:
    x = [math.log(r) for r in rows]
    y = [math.log(s) for s in secs]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
        (a - mx) ** 2 for a in x)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two streamed results have the same estimates, intervals and ESS (1e-9)."""
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= 1e-9 * max(1.0, abs(y))

    ok = close(a["ess"]["trajectory"], b["ess"]["trajectory"])
    for k, e in b["estimates"].items():
        f = a["estimates"][k]
        ok = ok and close(f["value"], e["value"]) and close(f["se"], e["se"]) and all(
            close(u, v) for u, v in zip(f["ci"], e["ci"], strict=True))
    return bool(ok)


def _env_sizes() -> tuple[tuple[float, ...], float]:
    """Sizes (millions of rows) and the size of the sharded comparison, from the environment.

    ``EQUICARE_BENCH_SCALE_SIZES`` (default ``1,5,20``) and ``EQUICARE_BENCH_SCALE_SHARDED``
    (default 5, or the smallest size when 5 is not among them): for a host too busy or too small
    for the full run. Every entry names its size, so a partial run says what it measured.
    """
    sizes = tuple(float(x) for x in os.environ.get("EQUICARE_BENCH_SCALE_SIZES",
                                                   "1,5,20").split(","))
    default = 5.0 if 5.0 in sizes else min(sizes)
    return sizes, float(os.environ.get("EQUICARE_BENCH_SCALE_SHARDED", default))


def run(quick: bool = False, sizes_m: tuple[float, ...] | None = None, folder: str | None = None,
        ray: bool = True) -> dict[str, dict[str, Any]]:
    """Measure; returns ``{name: {value, unit, peer, peer_value, ratio}}`` entries.

    ``quick``: 50k and 100k rows, the sharded comparison at 100k rows.
    """
    env_sizes, shard_size = _env_sizes()
    sizes_m = sizes_m or env_sizes
    if quick:
        sizes_m, shard_size = (0.05, 0.1), 0.1
    import importlib.util

    if ray and importlib.util.find_spec("ray") is None:
        print("Ray is not installed (pip install 'equicare[ray]'): no Ray comparison", flush=True)
        ray = False
    from equicare.sim._care_parts import write_care_parts
    from equicare.sim.care import CareConfig, CareManagementSim

    base = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="equicare-scale-"))
    sim = CareManagementSim(CareConfig(churn=False))
    results: dict[str, dict[str, Any]] = {}
    rows: list[float] = []
    secs: dict[str, list[float]] = {"validate": [], "evaluate": [], "audit": []}
    peaks: dict[str, list[float]] = {"validate": [], "evaluate": [], "audit": []}
    try:
        for m in sizes_m:
            members = int(round(m * 1_000_000 / 52))
            d = base / f"care_{m:g}m"
            t = time.perf_counter()
            info = write_care_parts(sim, d, n_members=members, n_weeks=52,
                                    members_per_part=20_000, seed=7, overwrite=True)
            gen = time.perf_counter() - t
            n = info["n_rows"]
            print(f"{n:,} rows written in {gen:.1f} s", flush=True)
            tag = f"{m:g}M"
            results[f"scale_synth_parts_{tag}_rows"] = _entry(gen, "s")
            jobs = {"validate": _child(_CHILD_VALIDATE, info["panel"], info["manifest"]),
                    "evaluate": _child(_CHILD_EVALUATE, info["panel"], info["manifest"],
                                       "stream"),
                    "audit": _child(_CHILD_AUDIT, info["panel"], info["manifest"])}
            for job, r in jobs.items():
                print(f"  {job} {r['seconds']:.1f} s / {r['peak_mb']:.0f} MB", flush=True)
                results[f"scale_{job}_stream_{tag}_rows"] = _entry(r["seconds"], "s")
                results[f"scale_{job}_stream_{tag}_rows_peak"] = _entry(r["peak_mb"], "MB")
                secs[job].append(r["seconds"])
                peaks[job].append(r["peak_mb"])
            rows.append(float(n))
            e = jobs["evaluate"]
            if m == shard_size:
                pool = _child(_CHILD_EVALUATE, info["panel"], info["manifest"], "local")
                same_pool = _same(pool["result"], e["result"])
                results[f"scale_evaluate_pool2_{tag}_rows"] = {
                    "value": pool["seconds"], "unit": "s",
                    "peer": "equicare streamed (1 process)", "peer_value": e["seconds"],
                    "ratio": e["seconds"] / pool["seconds"],
                    "note": f"like-for-like: the same evaluation on a local pool of 2 processes, "
                            f"one shard each (one pool kept for every pass); same numbers as "
                            f"streamed (1e-9): {same_pool}"}
                print(f"  process pool (2) {pool['seconds']:.1f} s, same numbers: {same_pool}",
                      flush=True)
                if ray:
                    r = _child(_CHILD_EVALUATE, info["panel"], info["manifest"], "ray")
                    same = _same(r["result"], e["result"])
                    results[f"scale_evaluate_ray2_{tag}_rows"] = {
                        "value": r["seconds"], "unit": "s",
                        "peer": "equicare on a local pool of 2 processes (same shards, cores)",
                        "peer_value": pool["seconds"], "ratio": pool["seconds"] / r["seconds"],
                        "note": f"like-for-like: the same sharded evaluation on 2 local Ray "
                                f"workers (Ray start-up included); same numbers as streamed "
                                f"(1e-9): {same}; 1-process streamed: {e['seconds']:.1f} s"}
                    results[f"scale_evaluate_ray2_overhead_{tag}_rows"] = _entry(
                        100.0 * (r["seconds"] / pool["seconds"] - 1.0), "%")
                    print(f"  ray (2 workers) {r['seconds']:.1f} s, same numbers: {same}",
                          flush=True)
            if folder is None:
                shutil.rmtree(d, ignore_errors=True)
        if len(rows) >= 2:
            for job in ("validate", "evaluate", "audit"):
                results[f"scale_{job}_stream_loglog_slope"] = _entry(_slope(rows, secs[job]),
                                                                     "slope")
                results[f"scale_{job}_stream_peak_growth"] = {
                    **_entry(peaks[job][-1] / peaks[job][0], "x"),
                    "note": f"streamed peak at {rows[-1]:,.0f} rows over the peak at "
                            f"{rows[0]:,.0f} rows (1.0 = flat)"}
    finally:
        if folder is None:
            shutil.rmtree(base, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=None, help="millions of rows, comma-separated "
                    "(default: $EQUICARE_BENCH_SCALE_SIZES or 1,5,20)")
    ap.add_argument("--folder", default=None, help="keep the panels in this folder")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    a = ap.parse_args()
    sizes = tuple(float(s) for s in a.sizes.split(",")) if a.sizes else None
    print(json.dumps(run(sizes_m=sizes, folder=a.folder, ray=not a.no_ray), indent=2))


if __name__ == "__main__":
    main()
