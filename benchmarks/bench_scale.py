"""Scale benchmark (``make bench-scale``): streamed validation and evaluation on 1M, 5M, 20M rows.

Each panel is simulated part by part (``equicare.sim._care_parts.write_care_parts``: 52 weeks,
no churn, so rows = 52 x members) into a folder of Parquet files, then every measurement runs in
a fresh child process so its peak resident memory (VmHWM) is its own:

* ``validate_stream`` over the whole panel;
* ``evaluate_stream`` of a supported target policy (0.9 x the simulator's rule-based reference
  policy + 0.1 x uniform: cheap to compute, so the time is the engine's) with IS, WIS, PDIS
  and WPDIS, the behaviour value, ESS and 1,000 Poisson bootstrap replicates, chunk by chunk
  (500k rows);
* the same on 2 local Ray workers (one shard per worker) at 5M rows, checking that the numbers
  equal the streamed ones and reporting Ray's overhead over streaming on the same cores.

Reported: seconds and peak MB per size, the log-log slope of time in rows, and the Ray ratio.
Targets (issue #16): slope <= 1.1, streamed peak <= 4 GB at 20M rows and flat in rows, Ray
overhead <= 25 %. ``make bench-scale`` runs it through ``run_all.py --only scale`` (a full
``make bench`` leaves it out and keeps its entries); by hand:
``python benchmarks/bench_scale.py [--sizes 1,5,20] [--folder DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
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

_CHILD_EVALUATE = _HWM + r"""
import json, sys, time
from equicare.ope import evaluate_stream
from equicare.policy import MixturePolicy, UniformPolicy
from equicare.sim.care import CareConfig, CareManagementSim
sim = CareManagementSim(CareConfig(churn=False))
pol = MixturePolicy([sim.reference_policy(), UniformPolicy(sim.n_actions)], [0.9, 0.1])
executor = None
if sys.argv[3] == "ray":
    from equicare.pipeline import get_executor
    executor = get_executor("ray", address="local", jobs=2)
t = time.perf_counter()
res = evaluate_stream(sys.argv[1], pol, manifest=sys.argv[2], n_boot=1000, random_state=1,
                      executor=executor, n_shards=2 if executor else None)
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "peak_mb": hwm_mb(), "result": res.to_dict()}))
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


def run(quick: bool = False, sizes_m: tuple[float, ...] = (1, 5, 20), folder: str | None = None,
        ray: bool = True) -> dict[str, dict[str, Any]]:
    """Measure; returns ``{name: {value, unit, peer, peer_value, ratio}}`` entries.

    ``quick``: 50k and 100k rows, no Ray (a smoke run).
    """
    if quick:
        sizes_m, ray = (0.05, 0.1), False
    import importlib.util

    if ray and importlib.util.find_spec("ray") is None:
        print("Ray is not installed (pip install 'equicare[ray]'): no Ray comparison", flush=True)
        ray = False
    from equicare.sim._care_parts import write_care_parts
    from equicare.sim.care import CareConfig, CareManagementSim

    base = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="equicare-scale-"))
    sim = CareManagementSim(CareConfig(churn=False))
    results: dict[str, dict[str, Any]] = {}
    rows, eval_secs = [], []
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
            v = _child(_CHILD_VALIDATE, info["panel"], info["manifest"])
            e = _child(_CHILD_EVALUATE, info["panel"], info["manifest"], "stream")
            print(f"  validate {v['seconds']:.1f} s / {v['peak_mb']:.0f} MB; evaluate "
                  f"{e['seconds']:.1f} s / {e['peak_mb']:.0f} MB", flush=True)
            results[f"scale_synth_parts_{tag}_rows"] = _entry(gen, "s")
            results[f"scale_validate_stream_{tag}_rows"] = _entry(v["seconds"], "s")
            results[f"scale_validate_stream_{tag}_rows_peak"] = _entry(v["peak_mb"], "MB")
            results[f"scale_evaluate_stream_{tag}_rows"] = _entry(e["seconds"], "s")
            results[f"scale_evaluate_stream_{tag}_rows_peak"] = _entry(e["peak_mb"], "MB")
            rows.append(float(n))
            eval_secs.append(e["seconds"])
            if m == 5 and ray:
                r = _child(_CHILD_EVALUATE, info["panel"], info["manifest"], "ray")
                same = all(
                    abs(r["result"]["estimates"][k]["value"] - e["result"]["estimates"][k]["value"])
                    <= 1e-9 * max(1.0, abs(e["result"]["estimates"][k]["value"]))
                    for k in e["result"]["estimates"])
                results["scale_evaluate_ray2_5M_rows"] = {
                    "value": r["seconds"], "unit": "s", "peer": "equicare streamed (1 process)",
                    "peer_value": e["seconds"], "ratio": r["seconds"] / e["seconds"],
                    "note": f"like-for-like: the same streamed evaluation on 2 Ray workers; same "
                            f"numbers as streamed: {same}; ratio = Ray time / streamed time (Ray "
                            "start-up included)"}
                print(f"  ray (2 workers) {r['seconds']:.1f} s, same numbers: {same}", flush=True)
            if folder is None:
                shutil.rmtree(d, ignore_errors=True)
        if len(rows) >= 2:
            results["scale_evaluate_stream_loglog_slope"] = _entry(_slope(rows, eval_secs),
                                                                   "slope")
    finally:
        if folder is None:
            shutil.rmtree(base, ignore_errors=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,5,20", help="millions of rows, comma-separated")
    ap.add_argument("--folder", default=None, help="keep the panels in this folder")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray comparison")
    a = ap.parse_args()
    sizes = tuple(float(s) for s in a.sizes.split(","))
    print(json.dumps(run(sizes_m=sizes, folder=a.folder, ray=not a.no_ray), indent=2))


if __name__ == "__main__":
    main()
