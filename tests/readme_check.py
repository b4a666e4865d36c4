"""Run every ```bash block of README.md as written, in a fresh copy of the repository.

Usage: ``python tests/readme_check.py [--keep] [--only N]``. Each block runs with ``bash -euo
pipefail`` in one temporary folder holding a copy of the tracked files (so blocks see each other's
outputs, as a reader running them in order would), with this interpreter's ``bin`` folder first
on ``PATH`` (``equicare`` and ``python``) and ``PYTHONPATH`` pointing at the copy's ``src``. A
block preceded by ``<!-- readme-check: skip ... -->`` is listed but not run (e.g. ``make demo``,
which creates a virtual environment and installs packages). Exit code 0 when every block
succeeds; otherwise the failing block, its exit code and the tail of its output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"<!--\s*readme-check:\s*skip")


@dataclass(frozen=True)
class Block:
    """One ```bash block: its first line number in README.md, its text, skipped or not."""

    line: int
    text: str
    skip: bool


def bash_blocks(readme: Path = ROOT / "README.md") -> list[Block]:
    """Every ```bash block of ``readme`` in order."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            out.append(Block(start + 1, "\n".join(lines[start:j]) + "\n", bool(SKIP.search(prev))))
            i = j
        i += 1
    return out


def fresh_copy(dest: Path) -> Path:
    """Copy the tracked files of the repository (a fresh clone's content) into ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
                           ).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def run_blocks(workdir: Path, only: int | None = None, log=print) -> list[tuple[Block, int]]:
    """Run the blocks in ``workdir``; return ``(block, exit code)`` of each block run."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(workdir / "src")
    env.setdefault("EQUICARE_LOG_DIR", str(workdir / ".equicare-logs"))
    results = []
    for k, b in enumerate(bash_blocks(workdir / "README.md")):
        if only is not None and k != only:
            continue
        if b.skip:
            log(f"README.md:{b.line}: skipped")
            continue
        t0 = time.perf_counter()
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", b.text], cwd=workdir, env=env,
                              capture_output=True, text=True)
        log(f"README.md:{b.line}: exit {proc.returncode} in {time.perf_counter() - t0:.0f} s")
        if proc.returncode != 0:
            log((proc.stdout + proc.stderr)[-4000:])
        results.append((b, proc.returncode))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line of the check."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--only", type=int, help="run only the N-th bash block (0-based)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="equicare-readme-"))
    try:
        results = run_blocks(fresh_copy(tmp), args.only)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(code == 0 for _, code in results) else 1


if __name__ == "__main__":
    sys.exit(main())
