"""``equicare train --algo omg`` options (``equicare.cli._dosing.build_omg_config``)."""

from __future__ import annotations

from equicare.cli._dosing import build_omg_config


def test_explicit_sizes_override_small_and_the_defaults():
    # --small with --iterations 7 trained 3 iterations without a word
    small = build_omg_config(small=True, iterations=7, policy_updates=50, dynamics_epochs=4)
    assert (small.n_iterations, small.policy_updates, small.dynamics.max_epochs) == (7, 50, 4)
    base = build_omg_config(small=True)
    assert (base.n_iterations, base.policy_updates, base.dynamics.max_epochs) == (3, 20, 3)
    full = build_omg_config()
    assert (full.n_iterations, full.policy_updates, full.dynamics.max_epochs) == (40, 500, 60)
    assert build_omg_config(iterations=2).n_iterations == 2
    # the small networks stay small when a size is given
    assert small.sac == build_omg_config(small=True).sac


def test_synth_heparin_with_one_patient_writes_the_panel_and_reports_the_truth(tmp_path):
    """``synth --sim heparin --members 1`` wrote the panel, then failed (exit 2) with "The
    'n_patients' parameter of evaluate_heparin_policy must be a number in [2, inf)": an option
    the user never gave, and a rerun refused because the panel now existed."""
    import pandas as pd

    from equicare.cli._dosing import synth_heparin

    res = synth_heparin(tmp_path / "hep.parquet", n_patients=1, seed=0)
    assert res["n_patients"] == 1
    assert pd.read_parquet(tmp_path / "hep.parquet")["patient_id"].nunique() == 1
    tir = res["behavior"]["tir"]
    assert 0 <= tir["value"] <= 1 and tir["se"] >= 0
