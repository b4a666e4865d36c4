"""OPE on the care-management simulator (exact logged propensities, Monte-Carlo truth).

Tolerances: an estimate passes when ``|estimate - truth| <= 3 * sqrt(se_est^2 + se_truth^2)
+ 0.02 * |truth|`` (3 combined standard errors, the estimate's from the episode bootstrap and the
truth's from the Monte-Carlo rollout, plus 2% of the truth).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from equicare.exceptions import SmallCellWarning, SupportWarning
from equicare.ope import DR, IS, WDR, evaluate, point_estimates, prepare
from equicare.ope._core import episode_parts
from equicare.policy import MixturePolicy
from equicare.sim import care

N_EPISODES = 2000
N_TRUTH = 20_000


@pytest.fixture(scope="module")
def sim():
    return care.CareManagementSim(care.CareConfig())


@pytest.fixture(scope="module")
def policies(sim):
    b, ref = sim.behavior_policy(), sim.reference_policy()
    return {"equitable": sim.behavior_policy(equitable=True),  # near: no home-visit disparity
            "mix30": MixturePolicy([ref, b], [0.3, 0.7]),  # between
            "reference": ref}  # far: deterministic targeted rules


@pytest.fixture(scope="module")
def panel(sim):
    return sim.generate(n_members=N_EPISODES, n_weeks=52, random_state=11).dataset()


def _truth(sim, pol, n=N_TRUTH):
    tv = sim.true_value(pol, n_members=n, n_weeks=52, random_state=123, by_group=False)
    return tv.value, tv.se


def _close(est, truth, se_truth):
    return abs(est.value - truth) <= 3 * np.hypot(est.se, se_truth) + 0.02 * abs(truth)


def test_dr_wdr_near_policy(sim, panel, policies):
    """Fast check: the near policy, DR and WDR with the default linear Q-model."""
    truth, se = _truth(sim, policies["equitable"], n=6000)
    for est in (DR(n_bootstrap=500), WDR(n_bootstrap=500)):
        e = est.estimate(panel, policies["equitable"], random_state=0)
        assert _close(e, truth, se), (type(est).__name__, e, truth, se)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["equitable", "mix30", "reference"])
def test_dr_wdr_three_policies(sim, panel, policies, name):
    truth, se = _truth(sim, policies[name])
    for est in (DR(n_bootstrap=1000), WDR(n_bootstrap=1000)):
        e = est.estimate(panel, policies[name], random_state=0)
        assert _close(e, truth, se), (name, type(est).__name__, e, truth, se)


@pytest.mark.slow
def test_is_unbiased_over_repeated_datasets(sim, policies):
    """Mean of IS (and PDIS) over 40 panels of 500 members is within 3 SEs of the truth."""
    pol = policies["equitable"]
    truth, se_t = _truth(sim, pol)
    vals = {"is": [], "pdis": []}
    for rep in range(40):
        ds = sim.generate(n_members=500, n_weeks=52, random_state=500 + rep).dataset()
        prep = prepare(ds, pol, keys=("is", "pdis"), random_state=0)
        est = point_estimates(episode_parts(prep.inputs, ("is", "pdis")))
        for k in vals:
            vals[k].append(est[k])
    for k, v in vals.items():
        v = np.asarray(v)
        se = np.hypot(v.std(ddof=1) / np.sqrt(v.size), se_t)
        assert abs(v.mean() - truth) <= 3 * se, (k, v.mean(), truth, se)


@pytest.mark.slow
def test_ci_coverage_over_50_datasets(sim, policies):
    """95% bootstrap intervals of DR cover the Monte-Carlo truth in >= 90% of 50 panels."""
    pol = policies["equitable"]
    truth, _ = _truth(sim, pol, n=40_000)
    hits = 0
    for rep in range(50):
        ds = sim.generate(n_members=1000, n_weeks=52, random_state=2000 + rep).dataset()
        e = DR(n_bootstrap=1000).estimate(ds, pol, random_state=rep)
        hits += e.ci[0] <= truth <= e.ci[1]
    assert hits >= 45, hits


@pytest.mark.slow
def test_dr_with_estimated_propensities(sim, panel, policies):
    """Propensities from the cross-fitted behaviour model instead of the logged ones."""
    from dataclasses import replace

    pol = policies["equitable"]
    truth, _ = _truth(sim, pol)
    unlogged = replace(panel, behavior_prob=None, _cache={})
    e = DR(n_bootstrap=200).estimate(unlogged, pol, random_state=0)
    assert abs(e.value - truth) <= 0.05 * abs(truth), (e, truth)


@pytest.mark.slow
def test_headline_is_collapses_dr_stays(sim, panel, policies):
    """Far policy: naive-IS ESS near 0% while DR keeps a usable interval around the truth."""
    pol = policies["reference"]
    truth, se = _truth(sim, pol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCellWarning)
        warnings.simplefilter("ignore", SupportWarning)
        res = evaluate(panel, pol, estimators="is,wis,dr,wdr", bootstrap=1000, groups=[])
    assert res.ess.trajectory_pct < 1.0
    assert res.estimates["is"].value < 0.5 * truth  # IS collapses (a handful of episodes)
    assert _close(res.estimates["dr"], truth, se)
    assert IS(n_bootstrap=0).estimate(panel, pol).value == pytest.approx(
        res.estimates["is"].value)
