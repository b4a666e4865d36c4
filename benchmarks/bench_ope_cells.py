"""Benchmark: ``equicare evaluate`` on a Garnet panel with a second categorical column.

Workload
--------
The ``700x25`` panel of ``bench_ope_garnet.py`` (preset ``s700_a25_g1``, 3,900 episodes, about
50,000 rows) written by ``equicare synth --sim garnet --sites 30``: a categorical ``state`` with
700 levels, a numeric severity score, and a categorical ``site`` with 30 levels, one per
episode, that changes nothing in the dynamics or the policies (real panels carry such
columns; their combinations with the state leave a few rows per cell). Target: the
``soft_optimal`` policy file; truth from ``truth.json``.

Measures
--------
* ``ope_cells_700x25_sites_end_to_end``: wall time of ``equicare evaluate PANEL --manifest ...
  --policy policies/soft_optimal.parquet --bootstrap 1000 --out r.json`` in a fresh subprocess
  (load, support check, the choice of the tables' cells, ``q_model=auto`` with every candidate
  cross-fitted, seven estimators, 1,000 bootstrap replicates, subgroups).
* ``ope_cells_700x25_sites_peak_memory``: its own peak resident memory (MB).
* ``ope_cells_700x25_sites_fqe_rel_error``: |FQE - truth| / truth of that run; the note gives
  the same with ``--q-cells state,site`` (the tables over every combination, what ``evaluate``
  did before it chose the cells).

No peer library chooses a table's cells (SCOPE-RL and d3rlpy take the state as given), so the
entries have no peer. ``EQUICARE_BENCH_SCALE=small`` runs a 300-episode panel;
``run(quick=True)`` (``run_all.py --quick``, or ``--quick`` here) is a smoke run on a tiny panel
(``bench_ope_garnet.QUICK_PRESET``, ``QUICK_EPISODES`` episodes, :data:`QUICK_SITES` sites,
``QUICK_BOOT`` bootstrap replicates) whose numbers mean nothing. Run:
``.venv/bin/python benchmarks/bench_ope_cells.py [--quick]``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_ope_garnet import (
    _OURS,
    N_BOOT,
    PANELS,
    QUICK_BOOT,
    QUICK_EPISODES,
    QUICK_PRESET,
    SMALL_EPISODES,
    _entry,
    _run,
)

FAMILY = "soft_optimal"
SITES = 30
QUICK_SITES = 5


def _evaluate(d: Path, out: str, *extra: str, n_boot: int = N_BOOT
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    m = _run(_OURS, ["evaluate", str(d / "panel.parquet"), "--manifest",
                     str(d / "manifest.toml"), "--policy",
                     str(d / "policies" / f"{FAMILY}.parquet"), "--bootstrap", str(n_boot),
                     "--out", str(d / out), "--force", *extra])
    return m, json.loads((d / out).read_text())


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure the panel (see the module docstring; ``quick``: a tiny smoke run)."""
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import garnet_preset

    preset, n_ep = PANELS["700x25"]
    sites, n_boot = SITES, N_BOOT
    if quick:
        preset, n_ep, sites, n_boot = QUICK_PRESET, QUICK_EPISODES, QUICK_SITES, QUICK_BOOT
    elif os.environ.get("EQUICARE_BENCH_SCALE") == "small":
        n_ep = SMALL_EPISODES
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "sites"
        synth_garnet(d, config=garnet_preset(preset), n_episodes=n_ep, seed=1, overwrite=True,
                     sites=sites)
        truth = float(json.loads((d / "truth.json").read_text())["policies"][FAMILY]["value"])
        ours, res = _evaluate(d, "r.json", n_boot=n_boot)
        _, res_all = _evaluate(d, "r_all.json", "--q-cells", "state,site", n_boot=n_boot)
    err = abs(res["estimates"]["fqe"]["value"] / truth - 1.0)
    err_all = abs(res_all["estimates"]["fqe"]["value"] / truth - 1.0)
    chosen = res["q_model"].get("chosen")
    print(f"700x25 + {sites} sites: {ours['wall']:.1f} s, {ours['max_rss_mb']:.0f} MB, "
          f"q_model {chosen}, FQE error {100 * err:.2f}% (all columns {100 * err_all:.2f}%)")
    note = (f"q_model {chosen}; FQE error with --q-cells state,site (every combination): "
            f"{100 * err_all:.2f}%")
    return {"ope_cells_700x25_sites_end_to_end": _entry(ours["wall"], "s"),
            "ope_cells_700x25_sites_peak_memory": _entry(ours["max_rss_mb"], "MB"),
            "ope_cells_700x25_sites_fqe_rel_error": {**_entry(err, "relative"), "note": note}}


if __name__ == "__main__":
    for k, v in run(quick="--quick" in sys.argv).items():
        print(k, v)
