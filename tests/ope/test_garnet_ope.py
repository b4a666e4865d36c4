"""OPE against the Garnet test bed's exact values: accuracy, auto vs fixed Q-models, coverage.

All slow (minutes). Thresholds are those of issue 14; the numbers measured are in docs/ope.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.ope._garnet import STUDY_PRESETS, SUPPORTED, study

pytestmark = pytest.mark.slow

FIXED = ("tabular_stationary", "tabular_backward", "linear")


@pytest.fixture(scope="module")
def accuracy() -> pd.DataFrame:
    """One 5,000-episode panel per configuration; auto and every fixed Q-model."""
    recs = study(STUDY_PRESETS, (*SUPPORTED, "optimal_supported"), reps=1, n_episodes=5000,
                 q_models=("auto", *FIXED))
    df = pd.DataFrame(recs)
    df["abs"] = df["rel_error"].abs()
    return df


def test_supported_stochastic_policies_dr_and_wdr_within_1_5_percent(accuracy):
    d = accuracy[(accuracy.q_model == "auto") & accuracy.family.isin(SUPPORTED)
                 & accuracy.estimator.isin(["dr", "wdr"])]
    assert d["abs"].median() <= 0.015, d.groupby(["preset", "estimator"])["abs"].max()
    assert d["abs"].max() <= 0.03


def test_deterministic_optimum_within_5_percent(accuracy):
    d = accuracy[(accuracy.q_model == "auto") & (accuracy.family == "optimal_supported")
                 & accuracy.estimator.isin(["dr", "wdr"])]
    assert d["abs"].max() <= 0.05


def test_auto_within_1_2x_of_the_best_fixed_q_model(accuracy):
    """Mean |error| of DR, WDR and FQE over the families, per configuration."""
    err = accuracy.groupby(["preset", "q_model"])["abs"].mean().unstack()
    best_fixed = err[list(FIXED)].min(axis=1)
    assert np.all(err["auto"] <= 1.2 * best_fixed + 1e-12), err


def test_intervals_cover_the_truth():
    """6 configurations x 3 supported families x 50 panels of 1,000 episodes, with
    ``evaluate``'s default interval (studentized; percentile covered 87% / 87% for DR / WDR)."""
    import inspect

    from equicare.ope import evaluate

    default = inspect.signature(evaluate).parameters["ci_method"].default
    assert default == "studentized"
    df = pd.DataFrame(study(STUDY_PRESETS, SUPPORTED, reps=50, n_episodes=1000,
                            ci_methods=(default,)))
    cov = df.groupby("estimator")["covered"].mean()
    assert cov["dr"] >= 0.90 and cov["wdr"] >= 0.90, cov
    assert cov["fqe"] >= 0.85, cov
