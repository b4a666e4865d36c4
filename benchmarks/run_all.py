"""Run every benchmark (benchmarks/bench_*.py) and write benchmarks/results.json.

Each module has ``run() -> {name: {value, unit, peer, peer_value, ratio}}``. A module that fails is
reported and skipped; the others still run. Usage: python benchmarks/run_all.py [name ...]
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str]) -> int:
    wanted = set(argv)
    results: dict[str, dict] = {}
    failures = []
    for path in sorted(HERE.glob("bench_*.py")):
        topic = path.stem.removeprefix("bench_")
        if wanted and topic not in wanted:
            continue
        print(f"== {path.name}", flush=True)
        t0 = time.perf_counter()
        try:
            out = _load(path).run()
        except Exception:  # report and continue with the other benchmarks
            failures.append(path.name)
            traceback.print_exc()
            continue
        for name, entry in out.items():
            results[name] = entry
            ratio = entry.get("ratio")
            peer = entry.get("peer")
            extra = f"   {peer}: {entry.get('peer_value')}  ratio {ratio:.2f}x" if ratio else ""
            print(f"  {name}: {entry['value']:.4g} {entry['unit']}{extra}", flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    target = HERE / "results.json"
    old = json.loads(target.read_text()) if target.is_file() and wanted else {}
    old.update(results)
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}"}
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"_meta": meta, **{k: v for k, v in old.items() if k != "_meta"}},
                              indent=2, default=float) + "\n")
    tmp.replace(target)
    print(f"wrote {target} ({len(results)} results)")
    if failures:
        print("failed:", ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
