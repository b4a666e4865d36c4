"""Run the benchmarks (benchmarks/bench_*.py), write benchmarks/results.json, render BENCHMARKS.md.

Each module has ``run(quick: bool = False) -> {name: entry}`` with
``entry = {value, unit, peer, peer_value, ratio}`` and an optional ``note`` (set when a peer
comparison is not the same work: "not like-for-like: ..."). ``ratio`` is how many times better
equicare is than the peer on that entry (peer time / our time, or our rate / peer rate), so > 1
means equicare is faster or smaller.

This script adds to every entry its own provenance: ``date`` (UTC, when its module finished),
``machine``, git ``revision`` (short hash, ``+dirty`` when src/ or benchmarks/ had uncommitted
changes) and ``bench`` (the module's topic). A partial run (``--only ope,rmab``) replaces only
the entries of the modules it ran and keeps every other entry with its own date; a full run
replaces the file. Then ``benchmarks/render.py`` regenerates the tables of BENCHMARKS.md.

``--quick`` runs every selected module at a tiny size as a smoke test and writes nothing.

Usage::

    python benchmarks/run_all.py                 # everything (what `make bench` runs)
    python benchmarks/run_all.py --only ope      # re-measure one module's entries
    python benchmarks/run_all.py --quick         # smoke run, no results written
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import importlib.util
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"
REQUIRED = ("value", "unit", "peer", "peer_value", "ratio")
PROVENANCE = ("date", "machine", "revision", "bench")


#: Topics run only when named (``make bench-scale``): a full run leaves them out and keeps their
#: entries.
SEPARATE = ("scale", "scale_train")


def topics(include_separate: bool = True) -> list[str]:
    """Topics of the benchmark modules, sorted (``bench_ope.py`` -> ``ope``)."""
    out = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    return out if include_separate else [t for t in out if t not in SEPARATE]


def _load(topic: str) -> ModuleType:
    path = HERE / f"bench_{topic}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    spec.loader.exec_module(mod)
    return mod


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def revision() -> str:
    """Short git hash of HEAD, ``+dirty`` if src/ or benchmarks/ (other than the results this
    script writes) differ from it."""
    head = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src", "benchmarks",
                 ":(exclude)benchmarks/results.json")
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """One line naming the hardware and the software stack the numbers were measured on."""
    try:  # the installed version, without importing torch
        torch_v = f", torch {importlib.metadata.version('torch')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a dependency
        torch_v = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
            f"Python {platform.python_version()}{torch_v}")


def check_entry(name: str, entry: dict[str, Any]) -> None:
    """Raise ValueError unless ``entry`` follows the benchmark entry contract."""
    missing = [k for k in REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"benchmark entry {name!r} lacks {missing}")
    v = entry["value"]
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"benchmark entry {name!r} has a non-finite or non-numeric value {v!r}")
    if (entry["peer_value"] is None) != (entry["peer"] is None):
        raise ValueError(f"benchmark entry {name!r}: peer and peer_value must be set together")


def _call(mod: ModuleType, quick: bool) -> dict[str, dict[str, Any]]:
    if "quick" in inspect.signature(mod.run).parameters:
        out: dict[str, dict[str, Any]] = mod.run(quick=quick)
    else:
        if quick:
            raise TypeError(f"{mod.__name__}.run has no quick mode")
        out = mod.run()
    return out


def _fmt(entry: dict[str, Any]) -> str:
    ratio, peer = entry.get("ratio"), entry.get("peer")
    extra = f"   {peer}: {entry.get('peer_value'):.4g}  ratio {ratio:.2f}x" if ratio else ""
    note = f"   [{entry['note']}]" if entry.get("note") else ""
    return f"{entry['value']:.4g} {entry['unit']}{extra}{note}"


def merge(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]],
          ran: set[str], full: bool) -> dict[str, dict[str, Any]]:
    """Entries after a run: a full run keeps only ``new``; a partial run replaces the entries of
    the modules in ``ran`` (dropping their entries that no longer exist) and keeps the others."""
    if full:  # the separate topics (scale) are not part of a full run: keep their entries
        kept = {k: v for k, v in old.items() if v.get("bench") in SEPARATE}
        kept.update(new)
        return kept
    kept = {k: v for k, v in old.items() if not k.startswith("_") and v.get("bench") not in ran}
    kept.update(new)
    return kept


def write(results: dict[str, dict[str, Any]], path: Path = RESULTS) -> None:
    """Write ``results`` atomically, sorted by module and then in measurement order."""
    order = {t: i for i, t in enumerate(topics())}
    items = sorted(results.items(), key=lambda kv: order.get(kv[1].get("bench", ""), len(order)))
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(items), indent=2, default=float) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="comma-separated topics, e.g. ope,rmab")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, smoke test only: results.json is not written")
    ap.add_argument("--no-render", action="store_true", help="do not regenerate BENCHMARKS.md")
    ap.add_argument("names", nargs="*", help="topics (same as --only)")
    args = ap.parse_args(argv)
    known = topics()
    wanted = {t for t in args.only.split(",") if t} | set(args.names)
    unknown = wanted - set(known)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(known)}",
              file=sys.stderr)
        return 2
    selected = [t for t in known if t in wanted] if wanted else topics(include_separate=False)
    rev, mach = revision(), machine()
    print(f"revision {rev}; {mach}; load average {os.getloadavg()[0]:.2f}"
          + ("; QUICK smoke run, nothing is written" if args.quick else ""), flush=True)
    results: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    ran: set[str] = set()
    t_all = time.perf_counter()
    for topic in selected:
        print(f"== bench_{topic}.py", flush=True)
        t0 = time.perf_counter()
        try:
            out = _call(_load(topic), args.quick)
            for name, entry in out.items():
                check_entry(name, entry)
        except Exception:  # report and continue with the other benchmarks
            failures.append(topic)
            traceback.print_exc()
            continue
        date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for name, entry in out.items():
            if name in results:
                failures.append(f"{topic} (duplicate entry {name})")
            results[name] = {**entry, "date": date, "machine": mach, "revision": rev,
                             "bench": topic}
            print(f"  {name}: {_fmt(entry)}", flush=True)
        ran.add(topic)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"total {time.perf_counter() - t_all:.0f} s", flush=True)
    if args.quick:
        print(f"quick run: {len(results)} entries measured, nothing written")
    else:
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        full = not wanted and not failures
        write(merge(old, results, ran, full))
        print(f"wrote {RESULTS} ({len(results)} entries measured)")
        if not args.no_render:
            sys.path.insert(0, str(HERE))
            import render

            render.main([])
    if failures:
        print("failed:", ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
