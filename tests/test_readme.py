"""Every README command block runs as written on a fresh copy (slow: trains and evaluates)."""

from __future__ import annotations

import pytest

from tests.readme_check import bash_blocks, fresh_copy, run_blocks


def test_readme_has_runnable_blocks():
    blocks = bash_blocks()
    assert [b for b in blocks if not b.skip], "README.md has no bash block to check"
    assert all("equicare" in b.text or "make" in b.text for b in blocks)


@pytest.mark.slow
def test_every_readme_bash_block_runs_as_written(tmp_path):
    results = run_blocks(fresh_copy(tmp_path))
    failed = [(b.line, code) for b, code in results if code != 0]
    assert results and not failed, f"README blocks failed (line, exit code): {failed}"
