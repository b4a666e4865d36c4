"""End-to-end `equicare run` on a 20,000-member x 52-week simulated panel.

Runs the bundled demo config with 20,000 members in a child process (to measure its peak memory)
and reports the total and stage-by-stage times. Goal: under 10 minutes and 4 GB on 2 cores.
The demo simulates with churn, so the panel has fewer than 20,000 x 52 rows; the count the run
loaded is recorded as ``pipeline_rows_<members>``. Entries are named after the members
(``pipeline_end_to_end_20k_members``), which the config fixes, not after the rows.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Peak memory: the child's own VmHWM (/proc/self/status). ru_maxrss of RUSAGE_CHILDREN is not
# used: on Linux it keeps the high-water mark of the forking parent across exec.
CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
from equicare.pipeline import load_run_config
from equicare.pipeline._run import run_pipeline
cfg = load_run_config(sys.argv[1])
out = run_pipeline(cfg, store_root=sys.argv[2], progress=False)
hwm = None
with open("/proc/self/status") as fh:
    for line in fh:
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
rows = {m.name: m.value for m in out.metrics}["data.n_steps"]
print(json.dumps({"stages": out.stage_seconds, "n_rows": int(rows), "peak_mb": hwm}))
"""


def members_label(members: int) -> str:
    """The entry-name suffix of a run of ``members`` members: ``20k_members``, ``200_members``."""
    return f"{members // 1000}k_members" if members % 1000 == 0 else f"{members}_members"


def run(members: int = 20_000, quick: bool = False) -> dict[str, dict]:
    """Time ``equicare run`` of the demo config with ``members`` members in a child process.

    ``quick``: 200 members, a smoke run (its numbers mean nothing).
    """
    if quick:
        members = 200
    text = (ROOT / "src" / "equicare" / "examples" / "care_demo.toml").read_text()
    text = text.replace("members = 2000", f"members = {members}")
    if quick:
        text = text.replace("n_steps = 3000", "n_steps = 50").replace(
            "truth_members = 2000", "truth_members = 100")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.toml"
        cfg.write_text(text)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(Path(tmp) / "runs")],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = child["stages"]
    peak_mb = child["peak_mb"]
    if peak_mb is None:  # no /proc (not Linux): the children's high-water mark
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    label = members_label(members)

    def entry(value: float, unit: str) -> dict:
        return {"value": value, "unit": unit, "peer": None, "peer_value": None, "ratio": None}

    out = {f"pipeline_rows_{label}": entry(child["n_rows"], "rows"),
           f"pipeline_end_to_end_{label}": entry(wall, "s"),
           f"pipeline_peak_memory_{label}": entry(peak_mb, "MB")}
    for k, v in stages.items():
        out[f"pipeline_stage_{k}_{label}"] = entry(v, "s")
    return out


if __name__ == "__main__":
    for k, v in run(quick="--quick" in sys.argv).items():
        print(f"{k}: {v['value']:.1f} {v['unit']}")
