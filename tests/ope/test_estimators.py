"""Estimator objects: common contract (defaults, round-trip, seeds, inputs) and exact values."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.ope import (
    DR,
    FQE,
    IS,
    PDIS,
    WDR,
    WIS,
    WPDIS,
    BanditDR,
    Estimate,
    FQEConfig,
    OffPolicyEstimator,
    OPEInputs,
    episode_parts,
    point_estimates,
)
from equicare.policy import TabularPolicy

from ._mdp import BEHAVIOR, TARGET, small_mdp

CLASSES = (IS, WIS, PDIS, WPDIS, FQE, DR, WDR, BanditDR)


@pytest.fixture(scope="module")
def data():
    mdp = small_mdp(horizon=4)
    return mdp, mdp.sample(BEHAVIOR, 300, seed=5)


@pytest.mark.parametrize("cls", CLASSES)
def test_default_construct_round_trip_and_estimate(cls, data):
    mdp, ds = data
    est = cls(n_bootstrap=200)
    assert cls.from_dict(est.to_dict()) == est
    assert OffPolicyEstimator.from_dict(est.to_dict()) == est
    pol = TabularPolicy(TARGET)
    kw = {"q_model": "tabular"} if cls in (FQE, DR, WDR, BanditDR) else {}
    e1 = cls(n_bootstrap=200, **kw).estimate(ds, pol, random_state=3)
    e2 = cls(n_bootstrap=200, **kw).estimate(ds, pol.action_probs(ds).tolist(), random_state=3)
    assert isinstance(e1, Estimate) and e1 == e2  # same seed, same numbers; list input
    assert e1.n_episodes == ds.n_episodes
    assert e1.ci[0] <= e1.value <= e1.ci[1] and e1.se > 0
    assert Estimate.from_dict(e1.to_dict()) == e1
    if cls is not BanditDR:  # 300 episodes: within 0.35 of the truth (about 5 SEs)
        assert abs(e1.value - mdp.value(TARGET)) < 0.35


def test_estimate_equals_core_on_the_same_arrays(data):
    _, ds = data
    pe = TabularPolicy(TARGET).action_probs(ds)
    q = np.random.default_rng(0).normal(size=pe.shape)
    inputs = OPEInputs.from_arrays(rewards=ds.rewards, episode_offsets=ds.episode_offsets,
                                   gamma=ds.gamma, actions=ds.actions, target_probs=pe,
                                   behavior_prob=ds.behavior_prob, q=q)
    core = point_estimates(episode_parts(inputs, ("is", "wis", "pdis", "wpdis", "fqe", "dr",
                                                  "wdr", "bandit_dr"), truncate=3.0))
    for cls in CLASSES:
        got = cls(n_bootstrap=0, truncate=3.0).estimate(ds, pe, q=q)
        assert got.value == pytest.approx(core[cls.key], rel=1e-12), cls.__name__


def test_behavior_prob_argument_and_estimated_propensities(data):
    _, ds = data
    pol = TabularPolicy(TARGET)
    logged = WIS(n_bootstrap=0).estimate(ds, pol)
    given = WIS(n_bootstrap=0).estimate(ds, pol, behavior_prob=pd.Series(ds.behavior_prob))
    assert logged == given
    from dataclasses import replace

    unlogged = replace(ds, behavior_prob=None, _cache={})
    est = WIS(n_bootstrap=0).estimate(unlogged, pol, random_state=0)
    # cross-fitted logistic propensities on a one-hot state: close to the exact ones
    assert est.value == pytest.approx(logged.value, abs=0.05)


def test_bandit_dr_equals_dr_on_one_step_episodes():
    mdp = small_mdp(horizon=1)
    mdp.noise_sd = 0.5
    ds = mdp.sample(BEHAVIOR, 400, seed=1)
    pol = TabularPolicy(TARGET)
    b = BanditDR(n_bootstrap=100, q_model="tabular").estimate(ds, pol, random_state=0)
    d = DR(n_bootstrap=100, q_model="tabular").estimate(ds, pol, random_state=0)
    assert b.value == pytest.approx(d.value, rel=1e-12)
    assert b.ci == pytest.approx(d.ci)


def test_bca_interval_and_jackknife_without_bootstrap(data):
    _, ds = data
    pol = TabularPolicy(TARGET)
    bca = DR(n_bootstrap=400, ci_method="bca", q_model="tabular").estimate(ds, pol,
                                                                          random_state=0)
    pct = DR(n_bootstrap=400, q_model="tabular").estimate(ds, pol, random_state=0)
    assert bca.value == pct.value and bca.ci != pct.ci
    assert bca.ci[0] < bca.value < bca.ci[1]
    jk = DR(n_bootstrap=0, q_model="tabular").estimate(ds, pol)
    assert jk.se == pytest.approx(pct.se, rel=0.25)  # jackknife and bootstrap SE agree roughly
    assert jk.ci[1] - jk.ci[0] == pytest.approx(2 * 1.959964 * jk.se, rel=1e-5)


def test_fqe_config_in_estimator():
    est = DR(q_model=FQEConfig(model="gbm", gbm_max_iter=10))
    assert isinstance(est.q_model, FQEConfig) and est.q_model.model == "gbm"
    assert DR.from_dict(est.to_dict()) == est
    assert isinstance(DR().q_model, FQEConfig) and DR().q_model.model == "linear"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"truncate": 0}, "The 'truncate' parameter of WIS must be a number in (0, inf). "
                      "Got 0 instead."),
    ({"n_bootstrap": -1}, "The 'n_bootstrap' parameter of WIS must be a number in [0, inf). "
                          "Got -1 instead."),
    ({"ci_method": "normal"}, "The 'ci_method' parameter of WIS must be one of 'percentile', "
                              "'bca', 'studentized'. Got 'normal' instead."),
    ({"alpha": 1.5}, "The 'alpha' parameter of WIS must be a number in (0, 1). Got 1.5 instead."),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WIS(**kwargs)


def test_bad_policy_probabilities(data):
    _, ds = data
    from equicare.exceptions import PolicyError

    bad = np.full((ds.n_steps, 2), 0.4)
    with pytest.raises(PolicyError, match="do not sum to 1 within 1e-06"):
        WIS(n_bootstrap=0).estimate(ds, bad)


def _frame_message(owner: str) -> str:
    from equicare.utils import DATASET_EXPECTED, PARAM_MESSAGE

    return PARAM_MESSAGE.format(name="dataset", owner=owner, expected=DATASET_EXPECTED,
                                got="DataFrame")


@pytest.mark.parametrize("cls", [IS, WIS, DR, FQE])
def test_a_data_frame_is_refused_with_how_to_build_a_dataset(cls):
    from equicare.exceptions import InvalidParameterError

    with pytest.raises(InvalidParameterError,
                       match=re.escape(_frame_message(f"{cls.__name__}.estimate"))):
        cls().estimate(pd.DataFrame({"x": [1]}), TabularPolicy(TARGET))


def test_an_estimator_class_resamples_people_when_they_re_enrol():
    """WIS(...).estimate on 8 correlated episodes a person: evaluate's person-level standard
    error; estimate_arrays without members (episodes as if independent) about half of it."""
    import dataclasses
    import warnings

    from equicare.ope import evaluate
    from equicare.ope._prepare import prepare

    from ._mdp import clustered_sample

    ds = clustered_sample(small_mdp(horizon=4), BEHAVIOR, 60, 8, 2.0, seed=0)
    est = WIS(n_bootstrap=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-ESS notes of a small panel
        people = est.estimate(ds, TabularPolicy(TARGET), random_state=0)
        ref = evaluate(ds, TabularPolicy(TARGET), estimators="wis", bootstrap=300, groups=[],
                       random_state=0)
        inputs = prepare(dataclasses.replace(ds, members=None, _cache={}), TabularPolicy(TARGET),
                         keys=("wis",), behavior_prob=None, behavior_model="logistic", q=None,
                         q_model="tabular_stationary", random_state=0).inputs
    episodes = est.estimate_arrays(inputs, random_state=0)
    assert people.value == pytest.approx(episodes.value)
    assert people.se == pytest.approx(ref.estimates["wis"].se, rel=0.2)
    assert episodes.se < 0.75 * people.se
    assert people.n_episodes == ds.n_episodes
