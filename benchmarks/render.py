"""Generate the tables of BENCHMARKS.md from benchmarks/results.json.

BENCHMARKS.md holds hand-written method sections and generated blocks::

    <!-- generated:begin ope -->
    ... table of every results.json entry with "bench": "ope" ...
    <!-- generated:end ope -->

plus one ``provenance`` block (dates, machines and revisions of the entries). Only the text
between the markers is replaced. Every benchmark topic that has entries must have a block, and
every block must name a known topic, so no measured number goes unpublished and no table is stale.

Usage: ``python benchmarks/render.py`` (rewrites BENCHMARKS.md), ``--check`` (exit 1 if
BENCHMARKS.md differs from the render of results.json). ``make bench`` runs it at the end.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
DOC = HERE.parent / "BENCHMARKS.md"
BLOCK = re.compile(r"(<!-- generated:begin (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- generated:end (?P=name) -->)", re.S)
PROVENANCE = "provenance"


def fmt(x: float | None) -> str:
    """Four significant figures, thousands separators for large numbers; '' for None."""
    if x is None:
        return ""
    ax = abs(x)
    if ax >= 1e4:
        return f"{x:,.0f}"
    if ax >= 1e-3 or ax == 0:
        return f"{x:.4g}"
    return f"{x:.2e}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(entries: dict[str, dict[str, Any]]) -> str:
    """Markdown table of the entries of one benchmark module, in their measured order."""
    if not entries:
        return "_No entries in results.json yet: run `make bench`._\n"
    rows = ["| entry | equicare | peer | peer value | ratio | note | date | revision |",
            "|---|---|---|---|---|---|---|---|"]
    for name, e in entries.items():
        unit = e["unit"]
        value = f"{fmt(e['value'])} {unit}"
        peer_value = "" if e.get("peer_value") is None else f"{fmt(e['peer_value'])} {unit}"
        ratio = "" if e.get("ratio") is None else f"{fmt(e['ratio'])}x"
        rows.append(" | ".join(["", f"`{name}`", _cell(value), _cell(e.get("peer") or ""),
                                _cell(peer_value), ratio, _cell(e.get("note") or ""),
                                str(e.get("date", ""))[:10], f"`{e.get('revision', '')}`", ""]
                               ).strip())
    return "\n".join(rows) + "\n"


def provenance(results: dict[str, dict[str, Any]]) -> str:
    """Table of where and when the entries were measured, one row per module."""
    rows = ["| benchmark | entries | measured (UTC) | revision | machine |",
            "|---|---|---|---|---|"]
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for e in results.values():
        by_topic.setdefault(e["bench"], []).append(e)
    for topic, es in by_topic.items():
        dates = sorted({str(e["date"]) for e in es})
        when = dates[0] if len(dates) == 1 else f"{dates[0]} .. {dates[-1]}"
        revs = ", ".join(f"`{r}`" for r, _ in Counter(e["revision"] for e in es).most_common())
        machines = "; ".join(sorted({e["machine"] for e in es}))
        rows.append(f"| `bench_{topic}.py` | {len(es)} | {when} | {revs} | {_cell(machines)} |")
    return "\n".join(rows) + "\n"


def blocks(results: dict[str, dict[str, Any]], topics: list[str]) -> dict[str, str]:
    """The text of every generated block, keyed by block name."""
    out = {PROVENANCE: provenance(results)}
    for t in topics:
        out[t] = table({k: v for k, v in results.items() if v.get("bench") == t})
    return out


def _topics() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def render(doc: str, results: dict[str, dict[str, Any]],
           topics: list[str] | None = None) -> str:
    """``doc`` with every generated block replaced by the render of ``results``.

    Raises ValueError if a block names no known topic, a topic is missing a block or appears
    twice, or an entry's module has no block.
    """
    topics = _topics() if topics is None else topics
    new = blocks(results, topics)
    names = [m.group("name") for m in BLOCK.finditer(doc)]
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    unknown = sorted(set(names) - set(new))
    missing = sorted(set(new) - set(names))
    orphans = sorted({e.get("bench", "?") for e in results.values()} - set(topics))
    if dup or unknown or missing or orphans:
        raise ValueError(f"BENCHMARKS.md blocks do not match the benchmarks: duplicate {dup}, "
                         f"unknown {unknown}, missing {missing}; entries of unknown modules "
                         f"{orphans}")
    return BLOCK.sub(lambda m: m.group(1) + new[m.group("name")] + m.group(4), doc)


def load_results(path: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """results.json as a dict of entries."""
    data: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if BENCHMARKS.md is not the render of results.json")
    args = ap.parse_args(argv)
    doc = DOC.read_text()
    new = render(doc, load_results())
    if args.check:
        if new != doc:
            print("BENCHMARKS.md is out of date: run python benchmarks/render.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != doc:
        tmp = DOC.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(DOC)
        print(f"rendered {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
