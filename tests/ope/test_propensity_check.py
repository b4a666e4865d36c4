"""Logged propensities that do not fit the logged actions are reported (a warning only)."""

from __future__ import annotations

import numpy as np
import pytest

from equicare.ope._propensity_check import (
    PROPENSITY_LOG_RATIO,
    check_logged_propensities,
    propensity_warning,
)
from equicare.sim import care

from ._garnet import make


@pytest.fixture(scope="module")
def sim():
    return care.CareManagementSim(care.CareConfig())


@pytest.fixture(scope="module")
def care_panel(sim):
    return sim.generate(n_members=300, n_weeks=20, random_state=3).dataset()


def _nonsense(ds, kind: str):
    rng = np.random.default_rng(0)
    p = np.ones(ds.n_steps) if kind == "ones" else rng.uniform(0.001, 1.0, ds.n_steps)
    return ds.with_behavior_prob(p)


@pytest.mark.parametrize("panel", ["care", "garnet"])
def test_true_propensities_pass_and_nonsense_is_reported(care_panel, panel):
    ds = care_panel if panel == "care" else make("s50_a5_g1", 1000, seed=0)[1]
    clean = check_logged_propensities(ds)
    assert clean is not None and not clean.warn and clean.stat < 0.25
    assert clean.message("panel.csv", "propensity") is None
    for kind in ("ones", "random"):  # every propensity 1.0 while many actions are logged
        bad = check_logged_propensities(_nonsense(ds, kind))
        assert bad is not None and bad.stat > PROPENSITY_LOG_RATIO, (kind, bad)
        msg = bad.message("panel.csv", "propensity")
        assert msg is not None and msg.startswith(
            "panel.csv: the logged propensities (column 'propensity') disagree with the logged "
            "actions: a quick behaviour model fitted to the actions")


def test_the_warning_needs_a_manifest_column(care_panel):
    assert propensity_warning(_nonsense(care_panel, "ones"), "p.csv") is not None
    assert propensity_warning(care_panel, "p.csv") is None
    from dataclasses import replace

    assert propensity_warning(replace(care_panel, behavior_prob=None), "p.csv") is None
