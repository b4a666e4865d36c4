"""evaluate(): result contract, support diagnostics, small cells, refit bootstrap, coverage."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from equicare import utils
from equicare.exceptions import (
    DataValidationError,
    InvalidParameterError,
    LowESSWarning,
    SmallCellWarning,
    SupportWarning,
)
from equicare.ope import (
    ESTIMATOR_KEYS,
    SENSITIVITY_COLUMNS,
    EvaluationResult,
    evaluate,
    evaluate_subgroups,
    sensitivity_analysis,
    support_diagnostics,
)
from equicare.ope._support import (
    PRACTICE_TEXT,
    SUPPORT_HEAD,
    SUPPORT_MESSAGE,
    model_support_diagnostics,
)
from equicare.policy import BehaviorModel, TabularPolicy

from ._mdp import BEHAVIOR, TARGET, small_mdp


@pytest.fixture(scope="module")
def ds():
    return small_mdp(horizon=4).sample(BEHAVIOR, 400, seed=0, n_groups=3)


def test_result_contract(ds):
    res = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=300)
    assert isinstance(res, EvaluationResult)
    d = json.loads(json.dumps(res.to_dict()))
    assert {"n_episodes", "n_steps", "gamma", "behavior", "estimates", "ess", "groups",
            "support"} <= set(d)
    assert d["n_episodes"] == 400 and d["n_steps"] == ds.n_steps and d["gamma"] == 0.9
    assert list(d["estimates"]) == list(ESTIMATOR_KEYS)
    for e in d["estimates"].values():
        assert set(e) == {"value", "ci", "se"} and e["ci"][0] <= e["value"] <= e["ci"][1]
    assert d["behavior"]["value"] == pytest.approx(ds.returns().mean())
    assert {"trajectory", "trajectory_pct"} <= set(d["ess"])
    grp = d["groups"]["grp"]
    assert set(grp) == {"g0", "g1", "g2"}
    assert sum(g["n_episodes"] for g in grp.values()) == 400
    assert list(grp["g0"]["estimates"]) == list(ESTIMATOR_KEYS)
    assert d["support"]["share_pct"] == 0.0 and d["support"]["warning"] is False
    assert d["settings"]["propensity_source"] == "logged"
    frame = res.to_frame()
    assert list(frame.columns) == ["attribute", "level", "estimator", "value", "ci_low",
                                   "ci_high", "se", "n_episodes", "suppressed"]
    assert len(frame) == 4 * (len(ESTIMATOR_KEYS) + 1)
    # same seed, same numbers
    again = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=300).to_dict()
    d2 = res.to_dict()
    again.pop("q_model"), d2.pop("q_model")  # fitting times differ
    assert again == d2


def test_group_values_equal_estimates_on_the_group_alone(ds):
    pol = TabularPolicy(TARGET)
    sub = evaluate_subgroups(ds, pol, q_model="tabular", bootstrap=0, estimators="wis,pdis")
    labels = ds.group_labels("grp")
    for lv, g in sub["grp"].items():
        alone = evaluate(ds.subset(labels == lv), pol, q_model="tabular", bootstrap=0,
                         estimators="wis,pdis", groups=[])
        for k in ("wis", "pdis"):  # weights only: identical to evaluating the group alone
            assert g.estimates[k].value == pytest.approx(alone.estimates[k].value, rel=1e-12)
        assert g.ess.trajectory == pytest.approx(alone.ess.trajectory)


def test_small_cells_are_suppressed(ds):
    groups = dict(ds.groups)
    lab = groups["grp"].astype(object)
    lab[:5] = "tiny"
    small = replace(ds, groups={"grp": lab}, _cache={})
    levels = pd.Series(lab).value_counts()
    smallest = str(levels.drop("tiny").idxmin())  # suppressed with it: total - others = tiny
    with pytest.warns(SmallCellWarning, match=r"2 group cells were suppressed: grp=.*fewer "
                      r"than 11 episodes .*complementary suppression"):
        res = evaluate(small, TabularPolicy(TARGET), q_model="tabular", bootstrap=50)
    for lv in ("tiny", smallest):
        assert res.groups["grp"][lv].suppressed
        assert res.to_dict()["groups"]["grp"][lv] == {"suppressed": True, "n_episodes": None}
    assert sum(not g.suppressed for g in res.groups["grp"].values()) == levels.size - 2
    frame = res.to_frame()
    row = frame[(frame.level == "tiny")]
    assert len(row) == 1 and bool(row.suppressed.iloc[0]) and np.isnan(row.value.iloc[0])


def test_support_warning_names_biased_estimators():
    beh = np.array([[1.0, 0.0], [0.5, 0.5]])  # current practice never takes action 1 in state 0
    mdp = small_mdp(horizon=3)
    data = mdp.sample(beh, 400, seed=1)
    target = np.array([[0.7, 0.3], [0.5, 0.5]])
    with pytest.warns(SupportWarning) as rec:
        res = evaluate(data, TabularPolicy(target), q_model="tabular", bootstrap=50, groups=[])
    share = 100 * 0.3 * np.mean(data.categorical[:, 0] == 0)  # exact expected share
    assert res.support.share_pct == pytest.approx(share, rel=1e-6)
    # two states logged 400 times each: no action logged once, practice's own share is 0
    assert res.support.practice_share_pct == 0.0
    head = SUPPORT_HEAD.format(pct=share, thr=1e-3,
                               cat=", or never logged in that categorical state") + (
        " " + PRACTICE_TEXT.format(base=0.0, excess=share))
    msg = head + SUPPORT_MESSAGE.removeprefix(SUPPORT_HEAD).format(
        biased="is, wis, pdis, wpdis", q_based="fqe, dr, wdr")
    assert str(rec[0].message) == msg
    with pytest.warns(SupportWarning) as rec:  # one estimator: no empty list, a singular verb
        evaluate(data, TabularPolicy(target), estimators="fqe", q_model="tabular", bootstrap=0,
                 groups=[])
    assert str(rec[0].message) == head + " fqe relies on the Q-model's extrapolation for that mass."
    s = res.to_dict()["support"]
    assert s["warning"] and s["biased_estimators"] == ["is", "wis", "pdis", "wpdis"]
    assert s["message"] == msg
    pe = res.support.per_episode_pct
    assert pe.shape == (data.n_episodes,) and pe.max() <= 30 + 1e-9
    # IS-type estimators estimate a different quantity: the value of the target restricted to
    # supported actions, far from the truth; DR with an (extrapolating) tabular Q stays closer
    truth = mdp.value(target)
    assert abs(res.estimates["wis"].value - truth) > 2 * abs(res.estimates["dr"].value - truth)


@pytest.mark.parametrize("new_data", [False, True])
def test_support_in_row_blocks_equals_the_dense_pass(monkeypatch, new_data):
    """The behaviour model's probabilities streamed in blocks give the dense report exactly."""
    beh = np.array([[1.0, 0.0], [0.5, 0.5]])
    data = small_mdp(horizon=3).sample(beh, 300, seed=1)
    bm = BehaviorModel(n_folds=3).fit(data)
    if new_data:  # fold-averaged probabilities instead of out-of-fold ones
        data = data.subset(np.arange(0, 300, 2))
    target = TabularPolicy(np.array([[0.7, 0.3], [0.5, 0.5]])).action_probs(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        dense = support_diagnostics(data, target, bm.action_probs(data),
                                    observed=bm.observed_in_state(data))
        monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 8)
        monkeypatch.setattr("equicare.policy._behavior._CHUNK", 37)
        for rep in (model_support_diagnostics(data, target, bm),
                    support_diagnostics(data, target, bm.action_probs(data),
                                        observed=bm.observed_in_state(data))):
            assert rep.to_dict() == dense.to_dict() and rep.uses_categorical
            np.testing.assert_array_equal(rep.per_episode_pct, dense.per_episode_pct)
    assert dense.share_pct > 1.0


def test_zero_logged_propensity_is_a_data_error(ds):
    bp = ds.behavior_prob.copy()
    bp[[3, 7]] = 0.0
    bad = replace(ds, behavior_prob=bp, _cache={})
    pe = TabularPolicy(TARGET).action_probs(bad)
    n_mass = int((pe[[3, 7], bad.actions[[3, 7]]] > 0).sum())
    msg = (f"2 rows have a logged behaviour probability that is not in (0, 1] (first rows: [3, 7]);"
           f" the target policy puts probability on the logged action in {n_mass} of them, so "
           "importance weights are undefined there and is, wis, pdis, wpdis, dr, wdr would be "
           "biased.")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        evaluate(bad, TabularPolicy(TARGET), q_model="tabular", bootstrap=10)


def test_refit_bootstrap_through_an_executor(ds):
    calls = []

    def executor(fn, items):
        calls.append(len(items))
        return map(fn, items)

    unlogged = replace(ds, behavior_prob=None, _cache={})
    with pytest.warns(LowESSWarning, match="heavy tail: Pareto k"):  # estimated propensities
        res = evaluate(unlogged, TabularPolicy(TARGET), estimators="wis,dr", q_model="tabular",
                       bootstrap=12, refit=True, executor=executor, groups=[])
    assert calls == [12]
    assert res.settings["nuisance"] == "refit per replicate"
    assert res.settings["propensity_source"] == "estimated"
    for e in res.estimates.values():
        assert e.ci[0] < e.ci[1] and e.se > 0


def test_support_diagnostics_can_be_skipped_with_known_propensities(ds):
    res = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=0, groups=[],
                   diagnose_support=False)
    assert res.support is None and res.behavior_model is None
    assert res.to_dict()["support"] is None
    full = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=0, groups=[])
    assert res.estimates == full.estimates


def test_truncation_and_bca(ds):
    res = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=200, truncate=2.0,
                   ci_method="bca", groups=[])
    assert res.ess.truncate == 2.0
    assert res.ess.trajectory_truncated >= res.ess.trajectory * 0.999
    plain = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=0, groups=[])
    assert res.estimates["is"].value != plain.estimates["is"].value


def test_sensitivity_table(ds):
    pol = TabularPolicy(TARGET)
    df = sensitivity_analysis(ds, pol, estimators=("dr", "fqe"), q_model="tabular",
                              noise_scales=(0.1, 0.5), n_draws=3, truncations=(2.0, 1e9),
                              bootstrap=50, q_shifts=(-0.1, 0.1))
    assert tuple(df.columns) == SENSITIVITY_COLUMNS
    counts = df.groupby("analysis").size().to_dict()
    assert counts == {"baseline": 2, "q_shift": 4, "propensity_noise": 12, "truncation": 4}
    shift = df[(df.analysis == "q_shift") & (df.estimator == "fqe")]
    np.testing.assert_allclose(shift.shift_from_baseline, shift.parameter, atol=1e-12)
    dr_shift = df[(df.analysis == "q_shift") & (df.estimator == "dr")]
    assert (dr_shift.shift_from_baseline.abs() < 0.05).all()  # DR absorbs a constant Q bias
    huge = df[(df.analysis == "truncation") & (df.parameter == 1e9)]
    base = df[df.analysis == "baseline"]
    np.testing.assert_allclose(huge.value.to_numpy(), base.value.to_numpy())
    noisy = df[df.analysis == "propensity_noise"]
    assert sorted(noisy.draw.unique()) == [0, 1, 2]
    assert (noisy[noisy.estimator == "fqe"].shift_from_baseline == 0).all()


def test_propensity_noise_is_mean_one_and_stays_in_the_return_range():
    """Log-odds noise shifted by sigma^2 / 2 keeps pi_b / pi_b~ mean-one, so over 40 steps the
    noisy DR values stay near the baseline; the former log-normal factor on pi_b inflated each
    step's weight by exp(sigma^2 / 2) and sent DR to -194 on this panel (returns in [5, 26])."""
    from equicare.ope._sensitivity import noisy_ratio

    rng = np.random.default_rng(0)
    pb = np.repeat([0.05, 0.5, 0.95, 1.0], 50_000)
    r = noisy_ratio(pb, 0.5, rng.standard_normal(pb.size)).reshape(4, -1)
    np.testing.assert_allclose(r.mean(axis=1), 1.0, atol=0.01)
    assert (r >= pb.reshape(4, -1) - 1e-12).all() and (r[3] == 1.0).all()
    mdp = small_mdp(end=False, gamma=1.0, horizon=40)
    long = mdp.sample(BEHAVIOR, 300, seed=0)
    df = sensitivity_analysis(long, TabularPolicy(0.8 * BEHAVIOR + 0.2 * TARGET),
                              q_model="tabular", noise_scales=(0.25, 0.5), n_draws=10,
                              truncations=(), q_shifts=(), bootstrap=20)
    noisy = df[df.analysis == "propensity_noise"]
    ret = long.returns()
    assert noisy.value.between(ret.min(), ret.max()).all()
    assert noisy.shift_from_baseline.abs().max() < 0.6
    assert (noisy.flag == "").sum() >= 19


def test_sensitivity_flags_degenerate_rows(ds):
    """A row outside the range of the logged returns, or whose weights' ESS is below 10
    episodes, says so in ``flag``; the baseline is not flagged."""
    from equicare.ope._sensitivity import MIN_EFFECTIVE_EPISODES

    df = sensitivity_analysis(ds, TabularPolicy(TARGET), estimators=("dr", "fqe"),
                              q_model="tabular", q_shifts=(100.0,), noise_scales=(3.0,),
                              n_draws=4, truncations=(), bootstrap=20)
    ret = ds.returns()
    assert (df[df.analysis == "baseline"].flag == "").all()
    shifted = df[(df.analysis == "q_shift") & (df.estimator == "fqe")].iloc[0]
    assert shifted.value > ret.max()
    # the lowest and highest returns are single episodes' values: the flag (written to
    # sensitivity.csv and the run report) names the range without them
    assert shifted.flag == "outside the range of the logged episode returns"
    noisy = df[(df.analysis == "propensity_noise") & (df.estimator == "dr")]
    low = noisy.ess_pct * ds.n_episodes / 100 < MIN_EFFECTIVE_EPISODES
    assert low.any() and noisy.value.between(ret.min(), ret.max()).all()
    assert (noisy.flag.str.fullmatch(r"ESS \d+\.\d episodes < 10") == low).all()
    fqe = df[(df.analysis == "propensity_noise") & (df.estimator == "fqe")]
    assert (fqe.flag == "").all()  # fqe uses no weights


@pytest.mark.slow
def test_ci_coverage_on_tabular_mdp():
    """95% percentile intervals of DR and WDR cover the exact value in >= 90% of 60 datasets."""
    mdp = small_mdp(horizon=4)
    truth = mdp.value(TARGET)
    hits = {"dr": 0, "wdr": 0, "is": 0}
    n_rep = 60
    for rep in range(n_rep):
        data = mdp.sample(BEHAVIOR, 300, seed=100 + rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallCellWarning)
            res = evaluate(data, TabularPolicy(TARGET), estimators="is,dr,wdr",
                           q_model="tabular", bootstrap=500, groups=[], random_state=rep)
        for k in hits:
            lo, hi = res.estimates[k].ci
            hits[k] += lo <= truth <= hi
    for k, h in hits.items():
        assert h / n_rep >= 0.9, (k, h)


def test_bias_aware_interval_widens_by_the_bias_bound():
    from scipy.stats import norm

    from equicare.ope._bootstrap import Estimate
    from equicare.ope._evaluate import bias_aware

    est = Estimate(value=1.0, ci=(0.99, 1.01), se=0.01, n_episodes=100)
    # no bias: the normal interval (1.96 se), joined with the bootstrap one
    lo, hi = bias_aware(est, 0.0, 0.0).ci
    assert hi - 1.0 == pytest.approx(norm.ppf(0.975) * 0.01, rel=1e-6) and lo == 0.99 - (
        0.01 * norm.ppf(0.975) - 0.01)
    # a bias bound B >> se: half-width -> B + z_{0.95} se, B = |b| + z_{0.95} se_b
    lo, hi = bias_aware(est, -0.2, 0.01).ci
    bound = 0.2 + norm.ppf(0.95) * 0.01
    assert hi - 1.0 == pytest.approx(bound + norm.ppf(0.95) * 0.01, rel=1e-3)
    assert 1.0 - lo == pytest.approx(hi - 1.0)
    # the interval contains v + b, whatever the sign of b
    for b in (-0.05, 0.05):
        lo, hi = bias_aware(est, b, 0.005).ci
        assert lo < 1.0 + b < hi


def test_auto_fqe_interval_carries_the_estimated_bias():
    """Small Garnet with exact truth: FQE's interval under auto is the bias-aware one."""
    from tests.ope._garnet import make

    mdp, data, pols = make("s50_a5_g1", 300, seed=5)
    pe = pols["soft_optimal"][data.categorical[:, 0]]
    res = evaluate(data, pe, estimators="fqe,dr", q_model="auto", bootstrap=200, groups=[],
                   random_state=0)
    q = res.q_model
    assert q is not None and q["bias"][q["chosen"]] is not None
    assert "bias-aware" in res.settings["fqe_interval"]
    fixed = evaluate(data, pe, estimators="fqe", q_model=q["chosen"], bootstrap=200, groups=[],
                     random_state=0)
    lo, hi = res.estimates["fqe"].ci
    assert lo <= fixed.estimates["fqe"].ci[0] and hi >= fixed.estimates["fqe"].ci[1]
    assert lo <= mdp.value(pols["soft_optimal"]) <= hi
    from equicare.ope._evaluate import FQE_VARIANCE_ONLY

    # a Q-model named by the user has no bias estimate: the result says its interval is the
    # bootstrap's alone (a dosing panel's FQE missed its truth by 11 SE without a word)
    assert fixed.settings["fqe_interval"] == FQE_VARIANCE_ONLY
    assert "fqe_interval" not in evaluate(data, pe, estimators="dr", q_model="linear",
                                          bootstrap=20, groups=[], random_state=0).settings


def test_thin_combinations_of_categorical_states_warn_for_the_table():
    """A second categorical column that multiplies the table's cells into thin ones draws a
    DataWarning naming the columns and the rows per cell when the cells are named so; a fixed
    table without named cells pools over the column (it does not drive the dynamics), and one
    column, or a linear Q-model, draws nothing."""
    from equicare.exceptions import DataWarning
    from tests.ope._garnet import make

    _, ds, pols = make("s50_a5_g1", 400, seed=3)
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    site = np.random.default_rng(0).integers(0, 100, ds.n_episodes)[ds.episode_index]
    two = replace(ds, categorical=np.c_[ds.categorical, site],
                  categorical_names=("state", "site"),
                  categorical_levels=(*ds.categorical_levels, tuple(range(100))), _cache={})
    kw = {"estimators": ("dr",), "bootstrap": 0, "random_state": 0}
    with pytest.warns(DataWarning, match=r"Q-model.s cells are the combinations of the "
                      r"categorical states \(state x "
                      r"site: [\d,]+ visited, [\d.]+ rows each, against \d+ rows per level of "
                      r"'site' alone\): .*These are the cells named"):
        evaluate(two, pe, q_model="tabular_stationary[state,site]", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        evaluate(ds, pe, q_model="tabular_stationary", **kw)
        evaluate(two, pe, q_model="linear", **kw)
        pooled = evaluate(two, pe, q_model="tabular_stationary", **kw)
    assert pooled.q_model is not None
    assert pooled.q_model["chosen"] == "tabular_stationary[state]"
    assert pooled.q_model["cell_choice"]["dropped"] == ["site"]
    one = evaluate(ds, pe, q_model="tabular_stationary", **kw)
    assert pooled.estimates["dr"].value == pytest.approx(one.estimates["dr"].value, rel=1e-9)


def test_an_estimate_far_outside_the_observed_returns_is_warned_about(ds):
    """Propensities a million times too small on a few rows (as estimated ones near 0 give):
    IS runs to values far beyond any return in the panel. The warning names it; estimates in
    range draw nothing."""
    from equicare.exceptions import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        evaluate(ds, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0, groups=[],
                 diagnose_support=False)
    bp = ds.behavior_prob.copy()
    bp[:3] *= 1e-6
    bad = replace(ds, behavior_prob=bp, _cache={})
    with (pytest.warns(LowESSWarning, match="rest on fewer than 11 episodes' worth"),
          pytest.warns(DataWarning, match=r"is .* far outside the range of the observed returns")):
        res = evaluate(bad, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0,
                       groups=[], diagnose_support=False)
    g = ds.returns()
    assert res.estimates["is"].value > g.max() + (g.max() - g.min())


def test_the_result_json_names_the_estimates_far_outside_the_observed_returns(ds):
    """The out-of-range estimators are recorded (result JSON "out_of_range"), so that the run
    report can keep them out of its headline; in range the list is empty."""
    bp = ds.behavior_prob.copy()
    bp[:3] *= 1e-6
    bad = replace(ds, behavior_prob=bp, _cache={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(bad, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0,
                       groups=[], diagnose_support=False)
        ok = evaluate(ds, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0,
                      groups=[], diagnose_support=False)
    assert res.out_of_range == ("is",) and res.to_dict()["out_of_range"] == ["is"]
    assert ok.out_of_range == () and ok.to_dict()["out_of_range"] == []


def test_the_out_of_range_warning_does_not_print_the_lowest_or_highest_return(ds):
    """The lowest and the highest episode return are single members' values (the run's
    data_summary publishes no minimum or maximum for that reason); the warning is copied into
    the policy card's published caveats, so it names the range without its ends."""
    from equicare.exceptions import DataWarning

    bp = ds.behavior_prob.copy()
    bp[:3] *= 1e-6
    bad = replace(ds, behavior_prob=bp, _cache={})
    with (pytest.warns(LowESSWarning),
          pytest.warns(DataWarning, match="far outside the range of the observed returns") as rec):
        evaluate(bad, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0, groups=[],
                 diagnose_support=False)
    said = " ".join(str(w.message) for w in rec)
    g = ds.returns()
    for end in (g.min(), g.max()):
        assert f"{end:.4g}" not in said


def test_the_out_of_range_warning_advises_logging_only_estimated_propensities(ds):
    """With logged propensities the warning does not tell the user to log them."""
    from equicare.exceptions import DataWarning

    bp = ds.behavior_prob.copy()
    bp[:3] *= 1e-6
    bad = replace(ds, behavior_prob=bp, _cache={})
    with pytest.warns(LowESSWarning), pytest.warns(DataWarning, match="far outside") as rec:
        evaluate(bad, TabularPolicy(TARGET), estimators=("is",), bootstrap=0, groups=[],
                 diagnose_support=False)
    msg = " ".join(str(w.message) for w in rec if w.category is DataWarning)
    assert "log the propensities" not in msg and "truncate the weights (--truncate)" in msg
    from equicare.ope._bootstrap import Estimate
    from equicare.ope._evaluate import _warn_out_of_range

    far = {"is": Estimate(value=1e6, ci=(0.0, 2e6), se=1.0, n_episodes=3)}
    with pytest.warns(DataWarning, match="log the propensities instead of estimating them"):
        _warn_out_of_range(far, np.array([0.0, 1.0]), None, "estimated")


def test_random_state_takes_numpy_ints_generators_and_none(ds):
    import inspect

    from equicare.ope import evaluate_stream

    kw = {"q_model": "tabular", "bootstrap": 30, "groups": []}
    ref = evaluate(ds, TabularPolicy(TARGET), random_state=4, **kw).to_dict()
    same = evaluate(ds, TabularPolicy(TARGET), random_state=np.int64(4), **kw).to_dict()
    assert same["estimates"] == ref["estimates"] and same["behavior"] == ref["behavior"]
    gen = evaluate(ds, TabularPolicy(TARGET), random_state=np.random.default_rng(1), **kw)
    seed = int(np.random.default_rng(1).integers(2**31 - 1))
    assert gen.settings["random_state"] == seed  # the drawn seed, to reproduce the numbers
    again = evaluate(ds, TabularPolicy(TARGET), random_state=seed, **kw).to_dict()
    assert gen.to_dict()["estimates"] == again["estimates"]
    fresh = evaluate(ds, TabularPolicy(TARGET), random_state=None, **kw)
    assert isinstance(fresh.settings["random_state"], int)
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'random_state' parameter of evaluate must be a non-negative int")):
        evaluate(ds, TabularPolicy(TARGET), random_state=-1, **kw)
    # the streamed evaluation's Python default is evaluate's
    default = inspect.signature(evaluate).parameters["random_state"].default
    assert inspect.signature(evaluate_stream).parameters["random_state"].default == default


def _frame_message(owner: str) -> str:
    from equicare.utils import DATASET_EXPECTED, PARAM_MESSAGE

    return PARAM_MESSAGE.format(name="dataset", owner=owner, expected=DATASET_EXPECTED,
                                got="DataFrame")


@pytest.mark.parametrize(("owner", "call"), [
    ("evaluate", lambda f: evaluate(f, TabularPolicy(TARGET))),
    ("evaluate_subgroups", lambda f: evaluate_subgroups(f, TabularPolicy(TARGET))),
    ("sensitivity_analysis", lambda f: sensitivity_analysis(f, TabularPolicy(TARGET))),
])
def test_a_data_frame_is_refused_with_how_to_build_a_dataset(owner, call):
    with pytest.raises(InvalidParameterError, match=re.escape(_frame_message(owner))):
        call(pd.DataFrame({"x": [1]}))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": 2}, "The 'alpha' parameter of evaluate must be a float in (0, 1). Got 2 instead."),
    ({"alpha": 1.5},
     "The 'alpha' parameter of evaluate must be a float in (0, 1). Got 1.5 instead."),
    ({"alpha": "0.05"},
     "The 'alpha' parameter of evaluate must be a float in (0, 1). Got '0.05' instead."),
    ({"truncate": 0},
     "The 'truncate' parameter of evaluate must be a positive float or None. Got 0 instead."),
    ({"truncate": -1.0},
     "The 'truncate' parameter of evaluate must be a positive float or None. Got -1.0 instead."),
])
def test_alpha_and_truncate_are_checked_on_entry_under_evaluates_name(ds, monkeypatch, kwargs,
                                                                     message):
    from equicare.ope import _evaluate

    def no_fit(*args, **kw):
        raise AssertionError("models fitted before the arguments were checked")

    monkeypatch.setattr(_evaluate, "prepare", no_fit)
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=5, **kwargs)


def test_an_int_alpha_and_truncate_are_numbers(ds):
    kw = {"q_model": "tabular", "bootstrap": 20, "groups": [], "random_state": 1}
    a = evaluate(ds, TabularPolicy(TARGET), truncate=5, **kw).to_dict()["estimates"]
    b = evaluate(ds, TabularPolicy(TARGET), truncate=5.0, **kw).to_dict()["estimates"]
    assert a == b


class OneEpisodePolicy:
    """The logged propensity on the logged action (weight 1), except in one episode, where the
    logged action gets probability 1 (its trajectory weight ``prod 1 / b_t`` dwarfs the rest).

    A WIS value of that episode's group is then that one member's return (picklable, serves any
    rows of the panel).
    """

    def __init__(self, episode_id: object) -> None:
        self.episode_id = episode_id

    def action_probs(self, ds) -> np.ndarray:
        b = np.asarray(ds.behavior_prob, dtype=float)
        p = np.repeat(((1.0 - b) / (ds.n_actions - 1))[:, None], ds.n_actions, axis=1)
        rows = np.arange(ds.n_steps)
        own = ds.episode_rows(np.asarray(ds.episode_ids) == self.episode_id).astype(bool)
        p[rows, ds.actions] = np.where(own, 1.0, b)
        p[own] = np.where(np.arange(ds.n_actions)[None, :] == ds.actions[own, None], 1.0, 0.0)
        return p


@pytest.fixture(scope="module")
def care():
    """300 care members, 6 weeks; race asian has 23 episodes."""
    from equicare.sim.care import CareManagementSim

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        panel = CareManagementSim().generate(n_members=300, n_weeks=6, random_state=0)
    return panel, panel.dataset()


def asian_episode(ds, weight: float) -> tuple[object, float]:
    """The asian episode whose trajectory weight under :class:`OneEpisodePolicy`
    (``prod 1 / b_t``) is closest to ``weight`` (in log), and its discounted return."""
    labels = ds.group_labels("race_ethnicity").astype(str)
    logw = -np.add.reduceat(np.log(ds.behavior_prob), ds.episode_offsets[:-1])
    cand = np.flatnonzero(labels == "asian")
    e = int(cand[np.argmin(np.abs(logw[cand] - np.log(weight)))])
    r = ds.rewards[ds.episode_offsets[e]:ds.episode_offsets[e + 1]]
    return ds.episode_ids[e], float(np.sum(r * ds.gamma ** np.arange(r.size)))


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_a_group_value_resting_on_one_episode_is_not_published(care) -> None:
    from equicare.privacy import MSG_LOW_ESS

    _, data = care
    eid, ret = asian_episode(data, 1e12)  # one weight of ~1e10 among weights 1
    res = evaluate(data, OneEpisodePolicy(eid), estimators=("is", "wis", "pdis", "fqe", "dr"),
                   q_model="linear", bootstrap=20, random_state=0, diagnose_support=False)
    asian = res.groups["race_ethnicity"]["asian"]
    assert asian.n_episodes == 23 and asian.ess.trajectory < 1.01  # one member's weight
    for k in ("is", "wis", "pdis", "dr"):  # every weighted value: null with the reason
        e = asian.estimates[k]
        assert np.isnan(e.value) and e.reason == MSG_LOW_ESS.format(min_cell=11), k
    assert np.isfinite(asian.estimates["fqe"].value)  # no weights: published
    assert np.isfinite(asian.behavior.value)
    d = res.to_dict()["groups"]
    w = d["race_ethnicity"]["asian"]["estimates"]["wis"]
    assert w["value"] is None and w["ci"] is None and "effective sample size" in w["reason"]
    for attr, levels in d.items():  # that member's return is published in no group
        for g in levels.values():
            v = g.get("estimates", {}).get("wis", {}).get("value")
            assert v is None or abs(v - ret) > 1e-3, attr
    # the whole panel's estimate stays (the user's own panel, not a published small cell)
    assert res.estimates["wis"].value == pytest.approx(ret, abs=1e-6)


def test_levels_suppressed_from_outside_are_completed_and_unknown_attributes_refused(ds):
    """``suppress`` withholds a large level (the run: held-out levels whose training half is
    1-10 episodes); alone it would be the total minus the others, so the smallest other level
    goes with it. An attribute that is not evaluated is an error."""
    levels = pd.Series(ds.groups["grp"].astype(str)).value_counts()
    big = str(levels.idxmax())
    smallest = str(levels.drop(big).idxmin())
    with pytest.warns(SmallCellWarning, match="2 group cells were suppressed"):
        res = evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=0,
                       estimators="wis", suppress={"grp": {big}})
    hidden = {lv for lv, g in res.groups["grp"].items() if g.suppressed}
    assert hidden == {big, smallest}
    assert res.to_dict()["groups"]["grp"][big] == {"suppressed": True, "n_episodes": None}
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'suppress' parameter of evaluate must be a mapping whose keys are evaluated "
            "group attributes (grp). Got ['race'] instead.")):
        evaluate(ds, TabularPolicy(TARGET), q_model="tabular", bootstrap=0,
                 suppress={"race": {"a"}})


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_a_low_ess_group_hides_the_smallest_other_one_by_complementary_suppression(
        care) -> None:
    from equicare.privacy import MSG_LOW_ESS, MSG_LOW_ESS_COMPLEMENT

    _, data = care
    eid, _ = asian_episode(data, 30.0)
    res = evaluate(data, OneEpisodePolicy(eid), estimators=("is", "wis", "fqe"),
                   q_model="linear", bootstrap=0, random_state=0, diagnose_support=False)
    race = res.groups["race_ethnicity"]
    assert race["asian"].ess.trajectory < 11
    primary, complement = (m.format(min_cell=11) for m in (MSG_LOW_ESS, MSG_LOW_ESS_COMPLEMENT))
    for k in ("is", "wis"):
        reasons = {lv: g.estimates[k].reason for lv, g in race.items()}
        # IS divides by the episodes: the overall IS minus the other groups' would give the
        # asian one back, so the smallest other group ("other", 25 episodes) goes too
        assert reasons == {"asian": primary, "other": complement, "black": None,
                           "hispanic": None, "white": None}, k
    assert all(np.isfinite(g.estimates["fqe"].value) for g in race.values())
    for attr in ("sex", "age_band"):  # the member's group still has enough weight
        assert all(g.estimates["wis"].reason is None for g in res.groups[attr].values()
                   if not g.suppressed), attr


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_support_publishes_no_single_episodes_share(care) -> None:
    """``per_episode_pct`` has no maximum (one member's share) but ``p_top11``: at least 11
    episodes at or above it."""
    _, data = care
    res = evaluate(data, OneEpisodePolicy(data.episode_ids[0]), estimators=("wis",),
                   bootstrap=0, groups=[])
    pe = res.support.per_episode_pct
    d = res.to_dict()["support"]["per_episode_pct"]
    assert "max" not in d and pe.max() not in d.values()
    assert np.sum(pe >= d["p_top11"]) >= 11
    assert d["p_top11"] == pytest.approx(np.quantile(pe, 1 - 11 / data.n_episodes))


def test_jackknife_intervals_of_the_behaviour_value_use_alpha(ds):
    """--bootstrap 0: the behaviour value's normal interval has the estimators' 1 - alpha
    coverage (it was 95% whatever alpha)."""
    from scipy.special import ndtri

    res = evaluate(ds, TabularPolicy(TARGET), estimators="is,wis", bootstrap=0, groups=[],
                   alpha=0.1, diagnose_support=False)
    z = float(ndtri(0.95))
    ret = ds.returns()
    se = float(ret.std(ddof=1) / np.sqrt(ret.size))
    b = res.behavior
    assert b.se == pytest.approx(se, rel=1e-12)
    assert b.ci == pytest.approx((b.value - z * se, b.value + z * se), rel=1e-12)
    for e in res.estimates.values():  # the estimators' intervals: the same z
        assert e.ci == pytest.approx((e.value - z * e.se, e.value + z * e.se), rel=1e-12)


def test_auto_s_bias_of_a_suppressed_level_is_withheld_in_the_result_json(ds):
    """auto's per-level bias estimate (q_model.group_bias) is computed on the level's own
    episodes: a level suppressed in "groups" (5 episodes; the smallest other one by
    complementary suppression) is suppressed there too, the others keep their numbers."""
    part = ds.subset(np.arange(150))  # auto fits gbm and an mlp too: keep it small
    lab = dict(part.groups)["grp"].astype(object)
    lab[:5] = "tiny"
    small = replace(part, groups={"grp": lab}, _cache={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCellWarning)
        res = evaluate(small, TabularPolicy(TARGET), q_model="auto", bootstrap=0)
    raw = res.q_model["group_bias"]["grp"]
    assert "bias" in raw["tiny"]  # estimated (kept in memory), never published
    out = json.loads(json.dumps(res.to_dict()))
    published = out["q_model"]["group_bias"]["grp"]
    hidden = [lv for lv, g in res.groups["grp"].items() if g.suppressed]
    assert len(hidden) == 2 and "tiny" in hidden
    for lv, v in published.items():
        assert (v == {"suppressed": True}) == (lv in hidden)
        if lv not in hidden:
            assert v["bias"] == raw[lv]["bias"]


@pytest.mark.parametrize("q_model", ["auto", "linear"])
def test_one_episode_is_refused(ds, q_model):
    """One episode: auto's cross-fitting crashed (a fold trained on nothing) and a fixed
    Q-model gave every interval as a point. Refused, saying why."""
    with pytest.raises(DataValidationError, match=re.escape(
            "The panel has 1 episode; evaluate needs at least 2 because its intervals resample "
            "episodes and its Q-model is chosen by cross-fitting over them.")):
        evaluate(ds.subset([0]), TabularPolicy(TARGET), q_model=q_model, bootstrap=20)


class _OneEpisode:
    """The logged action in episode m000, a never-logged one elsewhere (all weight on m000)."""

    def action_probs(self, ds):
        first = np.repeat(np.asarray(ds.episode_ids) == "m000", np.diff(ds.episode_offsets))
        eye = np.eye(ds.n_actions)
        return np.where(first[:, None], eye[ds.actions], eye[(ds.actions + 1) % ds.n_actions])


class _Uniform:
    def action_probs(self, ds):
        return np.full((ds.n_steps, ds.n_actions), 1 / ds.n_actions)


@pytest.mark.parametrize("stream", [False, True])
def test_a_library_caller_is_warned_once_of_overall_values_resting_on_one_episode(stream):
    """`equicare evaluate` and `run` said that an overall IS/WIS value rests on fewer than 11
    episodes' worth of weight; a Python caller of evaluate (or evaluate_stream) got nothing.
    Now the library warns, once per call, pointing at the caller; even weights draw nothing."""
    from equicare.data import from_frame
    from equicare.ope import evaluate_stream
    from tests.conftest import MANIFEST, make_frame

    ds = from_frame(make_frame(60, seed=1).assign(propensity=1 / 6), MANIFEST,
                    emit_warnings=False)

    def run(policy):
        if stream:
            return evaluate_stream(ds, policy, estimators=("is", "wis"), n_boot=20, groups=(),
                                   diagnose_support=False)
        return evaluate(ds, policy, estimators=("is", "wis"), bootstrap=20, groups=[],
                        diagnose_support=False)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run(_OneEpisode())
    low = [w for w in rec if issubclass(w.category, LowESSWarning)]
    assert len(low) == 1, [str(w.message) for w in rec]
    assert str(low[0].message).startswith(
        "the overall is and wis values rest on fewer than 11 episodes' worth of importance "
        "weight (trajectory ESS 1.0 of 60 episodes;")
    assert low[0].filename == __file__  # where the caller called
    assert issubclass(LowESSWarning, SupportWarning)  # filtered with the support warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowESSWarning)
        run(_Uniform())


@pytest.mark.parametrize("logged", [True, False])
def test_the_low_ess_advice_says_to_log_the_propensities_only_when_they_were_estimated(logged):
    """The warning ended "or log the propensities" on panels that had logged them."""
    from equicare.ope._ess import low_ess_message

    msg = low_ess_message(["is", "wis"], 60, 1.0, logged=logged)
    assert msg is not None and "truncate the weights (--truncate)" in msg
    assert ("log the propensities" in msg) is not logged


@pytest.mark.parametrize("logged", [True, False])
def test_the_warnings_never_recommend_an_estimator_they_found_far_out_of_range(logged):
    """On a 150-visit dosing panel DR was 1.3e4, warned as far outside the returns' range ("Do
    not use them ... prefer FQE or WDR"), and the low-ESS warning beside it said "Prefer fqe or
    dr". Each warning now recommends only estimators the other did not reject."""
    from equicare.ope._bootstrap import Estimate
    from equicare.ope._ess import low_ess_message
    from equicare.ope._evaluate import out_of_range_message

    assert "Prefer fqe or dr," in low_ess_message(["is", "wis"], 60, 1.0, logged=logged)
    msg = low_ess_message(["is", "wis"], 60, 1.0, logged=logged, unusable=("is", "dr"))
    assert msg is not None and "Prefer fqe or wdr," in msg and " dr" not in msg
    msg = low_ess_message(["is"], 60, 1.0, logged=logged, unusable=("fqe", "dr", "wdr"))
    assert msg is not None and "Prefer" not in msg
    assert msg.endswith("Truncate the weights (--truncate)"
                        + ("." if logged else " or log the propensities."))

    def est(v):
        return Estimate(v, (v, v), 0.0, 60)

    source = "logged" if logged else "estimated"
    ests = {"is": est(1e5), "fqe": est(0.5), "dr": est(2e4), "wdr": est(0.4)}
    assert "prefer FQE or WDR" in out_of_range_message(ests, (0.0, 1.0), 3.9, source)
    ests["wdr"] = est(-7e3)
    msg = out_of_range_message(ests, (0.0, 1.0), 3.9, source)
    assert msg is not None and "WDR" not in msg and "prefer FQE" in msg
    ests["fqe"] = est(9e3)
    msg = out_of_range_message(ests, (0.0, 1.0), 3.9, source)
    assert msg is not None and "prefer" not in msg


def test_an_estimate_above_0_when_every_reward_is_a_penalty_is_out_of_range():
    """A substance-use panel built outside equicare (rewards -1 per relapse or ED week, -10 per
    overdose or dropout; returns from -16.3 to 0) gave DR +3.2 [-0.8, 11.0] for a policy worth
    -0.91: no policy can be worth more than 0 there, yet nothing flagged it and the low-ESS
    warning said "Prefer fqe or dr". Within the returns' range plus its width, the old check
    passed it. An estimate on the side of 0 no policy reaches is now out of range (a small
    crossing, as noise around a value near 0 gives, is not), and only with one-signed rewards."""
    from equicare.exceptions import DataWarning
    from equicare.ope._bootstrap import Estimate
    from equicare.ope._evaluate import _warn_out_of_range, far_outside, wrong_sign

    def est(v):
        return Estimate(v, (v - 1.0, v + 1.0), 0.5, 12979)

    ests = {"fqe": est(-0.90), "dr": est(3.225), "wdr": est(-0.28)}
    returns = np.array([-16.28, -3.0, 0.0])
    penalties = np.array([-10.0, -1.0, -2.0, 0.0])
    with pytest.warns(DataWarning, match="far outside the range") as rec:
        far = _warn_out_of_range(ests, returns, None, "estimated", penalties)
    assert far == ("dr",)
    msg = str(rec[0].message)
    assert "for dr, on the side of 0 where no policy's value can be" in msg
    assert "every reward of the panel is <= 0" in msg and "prefer FQE or WDR" in msg
    # the same estimates without the rewards' signs: nothing (the check before)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert _warn_out_of_range(ests, returns, None, "estimated") == ()
        # rewards of both signs: a value above 0 is possible
        assert _warn_out_of_range(ests, returns, None, "estimated", np.array([-1.0, 2.0])) == ()
    # a crossing within a tenth of the returns' range is noise around a value near 0
    assert not wrong_sign(1.5, (-16.28, 0.0), (-10.0, 0.0))
    assert wrong_sign(1.7, (-16.28, 0.0), (-10.0, 0.0))
    # rewards never negative (engagement counts): a value below 0 is impossible
    assert far_outside(-0.5, (0.0, 4.0), (0.0, 1.0))
    assert not far_outside(-0.5, (0.0, 4.0), (-1.0, 1.0))


def test_a_group_level_of_fewer_than_11_members_is_suppressed_in_the_subgroups():
    """Re-enrolment: race d has 15 episodes of 5 people. With the manifest's ``member`` its
    subgroup estimates are suppressed (with a complement), as a level of fewer than 11
    episodes; without it they were published."""
    from equicare.data import from_frame
    from equicare.policy import UniformPolicy

    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = from_frame(frame, man)
        uniform = UniformPolicy(ds.action_space.n_actions)
        res = evaluate(ds, uniform, estimators=("wis",), bootstrap=0, groups=["race"],
                       diagnose_support=False)
        # no subgroups (the run's card evaluations): nothing to withhold, no error
        assert evaluate(ds, uniform, estimators=("wis",), bootstrap=0, groups=[],
                        diagnose_support=False).groups == {}
        del man["dataset"]["member"]
        before = evaluate(from_frame(frame, man), uniform,
                          estimators=("wis",), bootstrap=0, groups=["race"],
                          diagnose_support=False)
    race = res.groups["race"]
    assert race["d"].suppressed and sum(g.suppressed for g in race.values()) >= 2
    assert not before.groups["race"]["d"].suppressed


def test_subgroup_estimates_far_outside_the_returns_are_not_published(ds):
    """The overall estimates far outside the returns are named (``out_of_range``), but a
    level's were published as values: on a substance-use panel of penalties (rewards <= 0) the
    result JSON gave DR +17.4 for one race and +3.5 for the non-Spanish speakers. They are now
    n/a with the reason, and one warning names them."""
    from equicare.exceptions import DataWarning
    from equicare.ope._evaluate import MSG_GROUP_OUT_OF_RANGE

    attr = ds.group_attrs[0]
    level = str(ds.group_labels(attr)[0])
    # every propensity of one group 100 times too small: its IS is 1e8 times too large, with
    # an ESS as good as before (every episode's weight grows alike)
    rows = ds.episode_rows(ds.group_labels(attr).astype(str) == level).astype(bool)
    bp = np.where(rows, ds.behavior_prob * 0.01, ds.behavior_prob)
    bad = replace(ds, behavior_prob=bp, _cache={})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = evaluate(bad, TabularPolicy(TARGET), estimators=("is", "wis"), bootstrap=0,
                       diagnose_support=False)
    said = [str(w.message) for w in rec if w.category is DataWarning]
    assert any(f"are not published: {attr}={level} (is)" in m for m in said), said
    g = res.groups[attr][level]
    assert np.isnan(g.estimates["is"].value) and g.estimates["is"].reason == MSG_GROUP_OUT_OF_RANGE
    assert g.to_dict()["estimates"]["is"]["reason"] == MSG_GROUP_OUT_OF_RANGE
    assert np.isfinite(g.estimates["wis"].value)  # a weighted average stays in range
    ok = evaluate(ds, TabularPolicy(TARGET), estimators=("is",), bootstrap=0,
                  diagnose_support=False)
    assert all(e.estimates["is"].reason is None for e in ok.groups[attr].values()
               if not e.suppressed)


def test_sensitivity_resamples_people_when_they_re_enrol():
    """A panel of people with 8 correlated episodes each: the rows' SEs are people's, as
    evaluate's; resampling episodes gives about half of them."""
    from ._mdp import clustered_sample

    ds = clustered_sample(small_mdp(horizon=4), BEHAVIOR, 60, 8, 2.0, seed=0)
    flat = replace(ds, members=None, _cache={})
    kw = {"estimators": ("dr", "wis"), "q_model": "tabular_stationary", "noise_scales": (),
          "truncations": (), "q_shifts": (), "bootstrap": 300, "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-ESS notes of a small panel
        people = sensitivity_analysis(ds, TabularPolicy(TARGET), **kw).set_index("estimator")
        episodes = sensitivity_analysis(flat, TabularPolicy(TARGET), **kw).set_index("estimator")
        res = evaluate(ds, TabularPolicy(TARGET), estimators="dr,wis", bootstrap=300,
                       q_model="tabular_stationary", groups=[], random_state=0)
    for k in ("dr", "wis"):
        assert people.loc[k, "value"] == pytest.approx(episodes.loc[k, "value"])
        assert people.loc[k, "se"] == pytest.approx(res.estimates[k].se, rel=0.2), k
        assert episodes.loc[k, "se"] < 0.75 * people.loc[k, "se"], k
