"""Benchmark: ``equicare explain`` end to end on Garnet test-bed panels (no peer offers it).

Workload
--------
The two clinical-shaped panels of ``bench_ope_garnet.py`` (3,900 episodes, about 50,000 rows
each): ``700x25`` (preset ``s700_a25_g1``) and ``5000x100`` (preset ``s5000_a100_g1``): a
categorical state with 700 / 5,000 levels (one-hot candidate features of the tree), a numeric
severity score, logged propensities. Source policy: the panel's ``soft_optimal`` policy file.

Measures (per panel)
--------------------
* ``explain_garnet_<S>x<A>_end_to_end``: wall time of ``equicare explain
  policies/soft_optimal.parquet PANEL --manifest ... --out card`` with its defaults in a fresh
  subprocess (load; FQE Q-model of the source for the weights; usual care; distillation at
  depths 1-6; OPE of the source and every depth; fairness audit; support; HTML card).
* ``explain_garnet_<S>x<A>_peak_memory``: peak resident memory of that subprocess (MB, its own
  ``VmHWM``).

No peer library distils policies into rules (d3rlpy, SCOPE-RL, OBP and Fairlearn stop at the
policy), so the entries have no peer. ``EQUICARE_BENCH_SCALE=small`` runs 300-episode panels;
``run(quick=True)`` (``run_all.py --quick``, or ``--quick`` here) is a smoke run on tiny panels
(``bench_ope_garnet.QUICK_PRESET``, ``QUICK_EPISODES`` episodes, ``QUICK_BOOT`` bootstrap
replicates) whose numbers mean nothing.
Run: ``.venv/bin/python benchmarks/bench_explain.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench_ope_garnet import _OURS, QUICK_BOOT, _entry, _run, measure_panels

FAMILY = "soft_optimal"


def run_panel(name: str, preset: str, n_episodes: int, workdir: Path, quick: bool = False
              ) -> dict[str, Any]:
    """Synthesise one panel and time ``equicare explain`` on it (``quick``: few replicates)."""
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import garnet_preset

    d = workdir / name
    synth_garnet(d, config=garnet_preset(preset), n_episodes=n_episodes, seed=1, overwrite=True)
    return _run(_OURS, ["explain", str(d / "policies" / f"{FAMILY}.parquet"),
                        str(d / "panel.parquet"), "--manifest", str(d / "manifest.toml"),
                        "--out", str(d / "card"),
                        *(["--bootstrap", str(QUICK_BOOT)] if quick else [])])


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure both panels (see the module docstring; ``quick``: a tiny smoke run)."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in measure_panels(run_panel, quick=quick):
        out[f"explain_garnet_{name}_end_to_end"] = _entry(m["wall"], "s")
        out[f"explain_garnet_{name}_peak_memory"] = _entry(m["max_rss_mb"], "MB")
        print(f"{name}: {m['wall']:.1f} s, {m['max_rss_mb']:.0f} MB")
    return out


if __name__ == "__main__":
    for k, v in run(quick="--quick" in sys.argv).items():
        print(k, v)
