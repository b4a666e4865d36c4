"""Evidence of a policy card: fidelity, value against exact truth, fairness, support, frontier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.explain import ExplainConfig, explain_policy, fidelity, support_share
from tests.explain import tree_sim

CFG = ExplainConfig(bootstrap=100, frontier_bootstrap=20)


@pytest.fixture(scope="module")
def card_and_data():
    train, test = tree_sim.generate(400, seed=10), tree_sim.generate(300, seed=11)
    card = explain_policy(train, tree_sim.NoisyExpert(), CFG, test=test, random_state=0)
    return card, train, test


def _true_value(test, p_correct):
    """Exact value on the test episodes' lengths: E[r_t] = P(action is optimal)."""
    disc = test.gamma ** test.step
    return float(np.bincount(test.episode_index, weights=disc * p_correct).mean())


def test_fidelity_is_recomputed_exactly(card_and_data):
    card, _, test = card_and_data
    src = tree_sim.NoisyExpert().action_probs(test)
    agree, tv = fidelity(card.tree.action_probs(test), src)
    assert card.fidelity["agreement"] == pytest.approx(agree.mean())
    assert card.fidelity["tv"] == pytest.approx(tv.mean())
    # the rules take the optimal action; the source is wrong on ~7% of rows
    assert 0.88 < card.fidelity["agreement"] < 0.97
    shares = sum(r["test_share"] for r in card.rules)
    assert shares == pytest.approx(1.0)


def test_value_of_the_rules_matches_the_exact_truth(card_and_data):
    """The rules are the optimal tree, so E[r_t] = 1; DR must be within 3 SE + 2% of truth."""
    card, _, test = card_and_data
    truth = _true_value(test, np.ones(test.n_steps))
    dr = card.value["rules"]["dr"]
    assert abs(dr["value"] - truth) <= 3 * dr["se"] + 0.02 * truth, (dr, truth)
    beh = _true_value(test, np.full(test.n_steps, 1 / 3))
    assert dr["ci"][0] > beh
    assert card.value["improvement_kept"]["dr"] > 1.0  # better than the noisy source


def test_improvement_kept_is_only_a_share_of_a_positive_gain():
    """Both gains negative (source -0.41, rules -1.06 against current practice) used to read
    "257% improvement kept"; a source no better than current practice keeps nothing: n/a."""
    from equicare.explain._evidence import improvement_kept

    kept, gains = improvement_kept(1.11, {"dr": 0.70, "wis": 1.49, "fqe": 1.11},
                                   {"dr": 0.05, "wis": 0.01, "fqe": 2.0})
    assert kept["dr"] is None and kept["fqe"] is None
    assert gains["dr"] == pytest.approx(-0.41)
    assert kept["wis"] == pytest.approx((0.01 - 1.11) / (1.49 - 1.11))  # a loss: negative share


def test_no_share_is_kept_from_an_estimate_far_outside_the_observed_returns():
    """An ICU panel (outcomes in [0, 1], estimated propensities, stays up to 120 days): DR of
    the source 7.7e6 and of the rules -9.8e5 read "-13% improvement kept" on the card and in
    the run report; a ratio of blown-up importance weights is no share: n/a, and a caveat
    says why (the exact values: both below current practice). An estimate in range still
    gives its share."""
    from equicare.explain._evidence import _caveats, improvement_kept

    kept, gains = improvement_kept(0.809, {"dr": 7.72e6, "wdr": 0.755, "fqe": 0.83},
                                   {"dr": -9.79e5, "wdr": 0.78, "fqe": 0.82},
                                   returns_range=(0.0, 1.0))
    assert kept["dr"] is None and gains["dr"] is None
    assert kept["fqe"] == pytest.approx((0.82 - 0.809) / (0.83 - 0.809))
    assert kept["wdr"] is None and gains["wdr"] == pytest.approx(0.755 - 0.809)  # a loss
    val = {"improvement_kept": kept, "source_gain": gains, "source": {"dr": {"value": 7.72e6}},
           "rules": {"dr": {"value": -9.79e5}}}
    out = _caveats({"n_test_episodes": 10}, {"rules_pct": 0.0, "source_pct": 1.0,
                                             "check": "estimated propensities"},
                   val, "dr", ExplainConfig(), [], returns_range=(0.0, 1.0))
    said = " ".join(out)
    assert ("No share of the improvement kept is reported (dr: n/a): the dr estimate of the "
            "source policy and of the rules lies far outside the range of the observed "
            "returns") in said
    assert "keep only" not in said


def test_no_share_is_kept_of_a_gain_within_the_sources_noise():
    """A daily panel's card: the source gained 1.01 by DR (SE 1.40) and the rules, at 17.5
    (SE 15.7) against current practice's 30.66, "keep only -1297%" of it. A gain within two
    standard errors gives no share (n/a) and a caveat says why; a clear gain still does."""
    from equicare.explain._evidence import _caveats, improvement_kept

    kept, gains = improvement_kept(30.66, {"dr": 31.67, "wdr": 40.0}, {"dr": 17.52, "wdr": 35.0},
                                   source_se={"dr": 1.40, "wdr": 2.0})
    assert kept["dr"] is None and gains["dr"] == pytest.approx(1.01)
    assert kept["wdr"] == pytest.approx((35.0 - 30.66) / (40.0 - 30.66))
    val = {"improvement_kept": kept, "source_gain": gains,
           "source": {"dr": {"value": 31.67, "se": 1.40}}, "rules": {"dr": {"value": 17.52}}}
    out = _caveats({"n_test_episodes": 10}, {"rules_pct": 0.0, "source_pct": 1.0,
                                             "check": "estimated propensities"},
                   val, "dr", ExplainConfig(), [])
    said = " ".join(out)
    assert ("No share of the source policy's estimated gain over current practice kept by the "
            "rules is reported (dr: n/a): the gain (+1.01; the source's value has standard "
            "error 1.4) or the rules' value (standard error n/a) is too noisy for a ratio") in said
    assert "keep only" not in said
    # the same card with the window table: a clear gain (3.39, SE 1.55), rules at -9.36 with a
    # standard error of 29.9 read "keep only -1179%": the share's own SE is about 880 points
    kept, _ = improvement_kept(30.66, {"dr": 34.05}, {"dr": -9.36}, source_se={"dr": 1.55},
                               rules_se={"dr": 29.9})
    assert kept["dr"] is None
    kept, _ = improvement_kept(30.66, {"dr": 34.05}, {"dr": 33.0}, source_se={"dr": 1.55},
                               rules_se={"dr": 1.2})
    assert kept["dr"] == pytest.approx((33.0 - 30.66) / (34.05 - 30.66))


def test_the_card_says_why_no_share_is_kept():
    from equicare.explain._evidence import _caveats

    val = {"improvement_kept": {"dr": None}, "source_gain": {"dr": -0.41}}
    fid = {"n_test_episodes": 10}
    sup = {"rules_pct": 0.0, "source_pct": 1.0, "check": "logged propensities"}
    out = _caveats(fid, sup, val, "dr", ExplainConfig(), [])
    assert ("The source policy's estimated value is not above current practice's (dr: a gain "
            "of -0.41), so there is no improvement for the rules to keep and no share kept is "
            "reported (n/a).") in out


def test_the_q_model_of_the_values_is_chosen_once_by_auto(card_and_data):
    """``q_model="auto"`` (the default): one choice for every value on the card, reported
    with its candidates' scores; the rules' weights keep the linear model."""
    from equicare.explain._evidence import weights_q_model

    card, _, _ = card_and_data
    sel = card.value["q_model_selection"]
    named = (sel["chosen"] if "[" in sel["chosen"] or not sel["chosen"].startswith("tabular")
             or not sel["cells"] else f"{sel['chosen']}[{','.join(sel['cells'])}]")
    assert card.value["q_model"] == named and sel["n_folds"] >= 2  # (a table with its cells)
    assert set(sel["candidates"]) >= {"linear"}
    assert card.settings["q_model"] == "auto" and card.settings["distill"]["q_model"] == "linear"
    assert weights_q_model("auto") == "linear" and weights_q_model("gbm") == "gbm"


def test_frontier_support_and_fairness(card_and_data):
    card, _, _ = card_and_data
    fr = card.frontier
    assert [r["depth"] for r in fr] == [1, 2, 3, 4, 5, 6]
    assert all(r["n_rules"] <= 2 ** r["depth"] for r in fr)
    assert fr[1]["agreement"] > fr[0]["agreement"] + 0.1
    assert card.support["rules_pct"] == 0.0  # uniform behaviour: every action is common
    fair = card.fairness
    assert set(fair["policies"]) == {"behavior", "source", "rules"}
    for p in fair["policies"].values():
        assert {"parity_gap_pp", "parity_ratio", "proportional_parity", "worst_group"} <= set(p)
    groups = {r["group"] for r in card.disagreement}
    assert {"g1", "g2"} <= groups


def test_card_json_holds_aggregates_only(card_and_data):
    card, _, test = card_and_data
    d = card.to_dict()
    text = json.dumps(d)
    assert d["format"] == "equicare-policy-card"

    def longest(o):
        if isinstance(o, dict):
            return max([longest(v) for v in o.values()] or [0])
        if isinstance(o, list):
            return max([len(o), *[longest(v) for v in o]])
        return 0

    assert longest(d) < 50 and len(text) < 100_000
    assert "if x1 > 0.6" in text or "x1 > 0.6" in text


def test_small_cells_are_suppressed():
    train, test = tree_sim.generate(120, seed=12), tree_sim.generate(60, seed=13)
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2), min_cell=1000)
    card = explain_policy(train, tree_sim.NoisyExpert(), cfg, test=test, random_state=0)
    assert all(r.get("suppressed") for r in card.disagreement)
    assert card.fairness["suppressed"] and card.fairness["policies"] == {}
    assert any("fewer than 1000 episodes" in c for c in card.caveats)


def test_support_share():
    probs = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    beh = np.array([[0.5, 0.005, 0.495], [0.3, 0.3, 0.4]])
    assert support_share(probs, beh, 0.01) == pytest.approx(25.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"depth": 13}, "The 'depth' parameter of ExplainConfig must be a number in [1, 12]. "
                    "Got 13 instead."),
    ({"holdout": 1.0}, "The 'holdout' parameter of ExplainConfig must be a number in (0, 1). "
                       "Got 1.0 instead."),
    ({"estimators": ("dr", "magic")}, "The 'estimators' parameter of ExplainConfig must be one "
                                      "of 'is', 'wis', 'pdis', 'wpdis', 'fqe', 'dr', 'wdr'. "
                                      "Got 'magic' instead."),
    ({"rare_threshold": 0.0}, "The 'rare_threshold' parameter of ExplainConfig must be a number "
                              "in (0, 1]. Got 0.0 instead."),
    ({"q_model": "forest"}, "The 'q_model' parameter of ExplainConfig must be 'auto', 'linear'"),
    ({"estimators": ()}, "ExplainConfig.estimators needs at least one estimator."),
])
def test_bad_config(kwargs, message):
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        ExplainConfig(**kwargs)


def test_split_rows_map_back_to_the_panel():
    from equicare.explain._evidence import _rows_in

    ds = tree_sim.generate(50, seed=14)
    for part in ds.split(0.3, random_state=1):
        rows = _rows_in(ds, part)
        np.testing.assert_array_equal(ds.states[rows], part.states)
        np.testing.assert_array_equal(ds.actions[rows], part.actions)


class _TablePolicy:
    """A source policy given by a (state, action) table over a categorical state."""

    window = 1

    def __init__(self, table):
        self.table = table

    def action_probs(self, ds):
        return self.table[ds.categorical[:, 0]]


def test_support_with_logged_propensities_is_evaluates_check(monkeypatch):
    """Logged propensities: the card's support is evaluate's check (never logged in the
    state's cell, for a 50-level state), fitted once, and no cross-fitted behaviour model."""
    from equicare.ope._support import LoggedSupport
    from equicare.policy import BehaviorModel
    from tests.ope._garnet import make

    mdp, ds, pols = make("s50_a5_g1", 300, seed=7)
    assert ds.behavior_prob is not None
    real_fit = BehaviorModel.fit

    def no_cross_fit(self, *a, **k):
        assert self.n_folds <= 1, "a cross-fitted behaviour model was fitted"
        return real_fit(self, *a, **k)

    monkeypatch.setattr(BehaviorModel, "fit", no_cross_fit)
    src = _TablePolicy(pols["unsupported"])
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2), depth=2)
    card = explain_policy(ds, src, cfg, random_state=0)
    assert "empirical per categorical cell" in card.support["check"]
    assert any("never took in it" in c and "empirical per categorical cell" in c
               for c in card.caveats)
    _, test = ds.split(cfg.holdout, random_state=int(np.random.default_rng(0).integers(
        0, 2**31 - 1, size=8)[0]), stratify=ds.group_attrs[0] if ds.group_attrs else None)
    expected = 100 * LoggedSupport(test).mass(src.action_probs(test), cfg.rare_threshold).mean()
    assert card.support["source_pct"] == pytest.approx(expected)
    assert card.support["source_pct"] > 1.0  # the family puts mass on never-logged pairs


@pytest.mark.parametrize("logged", [True, False])
def test_the_card_and_its_audit_share_one_support_check(monkeypatch, logged):
    """The card builds its support check once and the fairness audit of source and rules is
    given it: the logged propensities' LoggedSupport (it built a second, at its own seed), or
    without them the card's cross-fitted behaviour model (the audit fitted one per policy)."""
    from equicare.ope._support import LoggedSupport
    from equicare.policy import BehaviorModel

    ds = tree_sim.generate(400, seed=10)  # numeric states too: the check fits a fast model
    if not logged:
        ds = ds.with_behavior_prob(None)
    built: list[str] = []
    real_init, real_fit = LoggedSupport.__init__, BehaviorModel.fit

    def init(self, *a, **k):
        built.append("support check")
        real_init(self, *a, **k)

    def fit(self, *a, **k):
        if self.n_folds > 1:  # not the support check's own fast model
            built.append("behaviour model")
        return real_fit(self, *a, **k)

    monkeypatch.setattr(LoggedSupport, "__init__", init)
    monkeypatch.setattr(BehaviorModel, "fit", fit)
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2), depth=2,
                        estimators=("wis", "dr"))
    card = explain_policy(ds, tree_sim.NoisyExpert(), cfg, random_state=0)
    assert card.fairness["available"], card.fairness
    assert built == ["support check" if logged else "behaviour model"]


def test_a_single_published_group_leaves_the_fairness_evidence_null_with_the_reason():
    """One group left (a one-level attribute): no parity gap of 0 or ratio of 1, a reason."""
    from dataclasses import replace

    train, test = tree_sim.generate(120, seed=12), tree_sim.generate(60, seed=13)
    # read from a file: the audit's error names it, the card (made to be shared) does not
    test = replace(test, groups={"group": np.full(test.n_episodes, "g1")},
                   source="/home/analyst/panel.parquet")
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2))
    card = explain_policy(train, tree_sim.NoisyExpert(), cfg, test=test, random_state=0)
    assert card.fairness["policies"] == {}
    assert card.fairness["reason"] == ("group 'group': only 1 group can be published (g1); a "
                                       "parity audit needs at least 2.")
    assert "parity_gap_pp" not in json.dumps(card.fairness)


def test_a_panel_without_groups_gets_a_card_without_a_fairness_audit():
    """No group attributes: the card is written with the fairness section marked unavailable
    (and a caveat), not refused after the work; naming a group is refused before any work."""
    import dataclasses

    from equicare.report import build_card_report

    train, test = tree_sim.generate(120, seed=14), tree_sim.generate(60, seed=15)
    train, test = dataclasses.replace(train, groups={}), dataclasses.replace(test, groups={})
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1, 2))
    card = explain_policy(train, tree_sim.NoisyExpert(), cfg, test=test, random_state=0)
    fair = card.fairness
    assert fair["available"] is False and fair["suppressed"] is False
    assert fair["policies"] == {} and "no group attributes" in fair["reason"]
    assert any(c.startswith("No fairness audit: the dataset has no group attributes")
               for c in card.caveats)
    assert card.disagreement == []
    html = build_card_report(card.to_dict()).render()
    assert "Fairness audit unavailable: the dataset has no group attributes" in html
    assert "suppressed" not in html.split("Evidence by policy")[1].split("</caption>")[0]
    with pytest.raises(InvalidParameterError, match="no group attributes"):
        explain_policy(train, tree_sim.NoisyExpert(),
                       ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1,),
                                     group="group"), test=test, random_state=0)
    with pytest.raises(InvalidParameterError, match="The 'intersect' parameter of ExplainConfig "
                       "names 'sex', but the dataset has no group attributes"):
        explain_policy(train, tree_sim.NoisyExpert(),
                       ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1,),
                                     intersect=("sex",)), test=test, random_state=0)


def test_no_share_is_kept_when_an_estimate_has_no_value():
    """WIS with every weight 0 is NaN: no share kept and no gain (null), not NaN in the JSON."""
    from equicare.explain._evidence import improvement_kept

    nan = float("nan")
    kept, gains = improvement_kept(1.0, {"wis": nan, "dr": 2.0}, {"wis": nan, "dr": nan})
    assert kept == {"wis": None, "dr": None} and gains == {"wis": None, "dr": 1.0}
    kept, _ = improvement_kept(1.0, {"wis": 2.0}, {"wis": nan})
    assert kept == {"wis": None}


def test_the_rules_speak_of_the_time_unit_only_when_the_time_column_names_one():
    """A Garnet panel's time column is ``t``: "last step's action", not "last t's action"."""
    from equicare.explain._evidence import time_unit_of

    assert time_unit_of("week") == time_unit_of("weeks") == time_unit_of("Week_Index") == "week"
    assert time_unit_of("visit_no") == "visit" and time_unit_of("day") == "day"
    assert time_unit_of("period_id") == "period"
    assert time_unit_of("t") == "step" and time_unit_of(None) == "step"
    assert time_unit_of("timestamp") == "step"


def test_the_card_headlines_the_first_estimator_that_stays_in_range():
    """A reviewer's ICU card headlined DR 7.7e6 for a survival probability (frontier on a 1e6
    scale, group values of -51.9): the card now uses the first of DR, WDR, FQE whose estimate
    of the source is in range, and says why."""
    from equicare.explain._evidence import _caveats, card_estimator

    est = ("wis", "dr", "wdr")
    assert card_estimator(est, ()) == "dr"
    assert card_estimator(est, ("dr",)) == "wdr"
    assert card_estimator(("wis", "dr", "wdr", "fqe"), ("dr", "wdr")) == "fqe"
    assert card_estimator(est, ("dr", "wdr")) == "wis"  # nothing better: the first listed
    assert ExplainConfig().estimators == est
    val = {"improvement_kept": {"wdr": 0.9}, "source_gain": {"wdr": 0.05}}
    out = " ".join(_caveats({"n_test_episodes": 10}, {"rules_pct": 0.0, "source_pct": 1.0,
                                                      "check": "logged propensities"},
                            val, "wdr", ExplainConfig(), []))
    assert ("use wdr: dr's estimate of the source policy lies far outside the range of the "
            "observed returns") in out


def test_rule_counts_agree_on_the_card_the_json_and_the_frontier(card_and_data):
    """One count of rules everywhere: the printed rules, the card JSON's ``n_rules``, the
    frontier rows of the card's tree, the rules stored with the model folder; shares sum to 1."""
    from equicare.explain import rules_text

    card, _, _ = card_and_data
    d = card.to_dict()
    n = len(card.rules)
    assert d["tree"]["n_rules"] == n == len(rules_text(card.rules).splitlines())
    rows = [r for r in card.frontier if r["card_rules"]]
    assert rows and all(r["n_rules"] == n for r in rows)
    assert card.tree.info["rules"] == [r["text"] for r in card.rules]
    assert sum(r["share"] for r in card.rules) == pytest.approx(1.0)
    assert sum(r["test_share"] for r in card.rules) == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_card_says_when_stored_practice_is_worth_less_than_practice():
    """Garnet s700_a25_g1 with 2,000 episodes (1,400 fitting), practice stored as a behaviour
    tree (``usual_care="tree"``; no depth-8 tree of the logged actions describes 700 states):
    that estimate is worth 0.602 exactly against practice's 0.800, and the rules, which leave
    97% of rows to it, 0.607. The card values the estimate beside practice (WIS 0.482 [0.141,
    0.823] against the observed 0.797; DR, whose Q-model extrapolates over the 64% of its mass
    on actions never taken in the state, 0.795, sees no loss) and a caveat says that its mass
    is off practice's support and that the rules inherit any loss. (Practice as cells, the
    default, is worth 0.801 here: the states seen in fewer than 11 episodes are left to the
    clinicians. While they got the overall frequencies it was worth 0.710, this test's case.)"""
    garnet = pytest.importorskip("equicare.sim.garnet")
    from equicare.data import from_frame
    from equicare.explain._distill import DistillConfig
    from equicare.learn import SPIBB
    from equicare.report import build_card_report
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest

    cfg = garnet.garnet_preset("s700_a25_g1")
    mdp, pan = garnet.garnet_panel(cfg, 2000, 1)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    pol = SPIBB(n_wedge=20).fit(ds).policy_
    card = explain_policy(ds, pol, ExplainConfig(depth=3, depths=(3,), bootstrap=50,
                                                 frontier_bootstrap=0, q_model="tabular",
                                                 distill=DistillConfig(usual_care="tree")),
                          random_state=0)

    def exact(p):
        return mdp.value(garnet.garnet_policy_table(mdp, ds, p)[0])

    vb = mdp.value(mdp.behavior_policy)
    assert card.data["usual_care_model"] == "tree"
    assert exact(card.tree.usual_policy) < vb - 0.05  # the truth: a real loss
    assert exact(card.tree) < vb - 0.05
    usual = card.value["usual_care"]
    beh = card.value["behavior"]["value"]
    assert set(usual) == set(card.value["rules"])
    assert card.support["usual_care_pct"] > 10.0
    note = [c for c in card.caveats if c.startswith("Current practice as stored")]
    assert len(note) == 1, card.caveats
    assert "(a tree of the logged actions)" in note[0]
    assert f"puts {card.support['usual_care_pct']:.1f}% of its probability mass" in note[0]
    assert f"against current practice's observed {beh:.3g}" in note[0]
    assert "the rules inherit any such loss" in note[0]
    assert "As deployed, with the clinicians deciding where no rule applies" in note[0]
    html = build_card_report(card.to_dict()).render()
    assert "current practice as stored with the rules" in html
    json.dumps(card.to_dict())
    # As deployed, the clinicians decide where no rule applies: exact 0.8005 against
    # practice's 0.8003 (the stored rules' 0.607). The card's deployed DR, 0.800 [0.769, 0.830]
    # with those rows at their logged actions, covers it; the stored rules' DR (0.798) is 0.191
    # off their own exact value, a loss no interval shows
    st = ds.categorical[:, 0]
    table = garnet.garnet_policy_table(mdp, ds, card.tree)[0].copy()
    defer = np.unique(st[np.asarray(card.tree.usual, dtype=bool)[card.tree.apply(ds)]])
    table[defer] = mdp.behavior_policy[defer]
    v_dep = mdp.value(table)
    dep = card.value["rules_deployed"]
    assert set(dep) == set(card.value["rules"])
    lo, hi = dep["dr"]["ci"]
    stored_err = abs(card.value["rules"]["dr"]["value"] - exact(card.tree))
    assert v_dep > vb - 0.002
    assert lo <= v_dep <= hi
    assert abs(dep["dr"]["value"] - v_dep) < stored_err / 4
    assert "rules as deployed (the clinicians decide where no rule applies)" in html


def test_deferred_rows_keep_their_logged_action_with_ratio_one():
    """Where the rules defer, target = logged action (probability 1) and behaviour = 1, so the
    importance ratio is 1 and FQE's next-state value is the Q of the action taken."""
    from equicare.explain._evidence import deferred_target

    probs = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    props = np.array([0.3, 0.4, 0.9])
    actions = np.array([1, 0, 1])
    pe, b = deferred_target(probs, props, actions, np.array([False, True, True]))
    np.testing.assert_array_equal(pe, [[0.2, 0.8], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(b, [0.3, 1.0, 1.0])
    assert np.all(pe[np.arange(3), actions][1:] / b[1:] == 1.0)
    np.testing.assert_array_equal(probs[1], [0.5, 0.5])  # inputs untouched
    np.testing.assert_array_equal(props, [0.3, 0.4, 0.9])


def test_a_deployed_value_only_where_the_rules_defer(card_and_data):
    """Rules that never leave a row to current practice have one value (no deployed one)."""
    card, _, test = card_and_data
    defers = card.tree.has_usual and bool(
        np.asarray(card.tree.usual, dtype=bool)[card.tree.apply(test)].any())
    assert (card.value["rules_deployed"] is None) == (not defers)
    assert (card.value["improvement_kept_deployed"] is None) == (not defers)


def test_no_stored_practice_caveat_where_it_is_worth_practice():
    """Uniform practice on the tree simulator, stored as a behaviour tree: its value sits at
    practice's (the interval covers it), none of its mass is on rarely taken actions: no
    caveat. A card without usual-care rules values no stored practice."""
    from tests.explain.test_distill import _HalfExpert

    train, test = tree_sim.generate(200, seed=22), tree_sim.generate(150, seed=23)
    card = explain_policy(train, _HalfExpert(), ExplainConfig(
        depth=2, depths=(2,), bootstrap=30, frontier_bootstrap=0, q_model="linear"), test=test,
        random_state=0)
    assert card.tree.has_usual
    usual = card.value["usual_care"]
    beh = card.value["behavior"]["value"]
    assert usual["dr"]["ci"][0] <= beh <= usual["dr"]["ci"][1]
    assert card.support["usual_care_pct"] < 1.0
    assert not any(c.startswith("Current practice as stored") for c in card.caveats)
    imitate = explain_policy(train, _HalfExpert(), ExplainConfig(
        depth=2, depths=(2,), bootstrap=0, frontier_bootstrap=0, mode="imitate",
        q_model="linear"), test=test, random_state=0)
    assert imitate.value["usual_care"] is None and imitate.support["usual_care_pct"] is None


def test_stored_practice_caveat_from_its_support_alone():
    """When no interval is below practice, mass on rarely taken actions still gets the caveat
    (DR cannot see a loss there: its Q-model extrapolates)."""
    from equicare.explain._evidence import usual_care_caveat

    val = {"behavior": {"value": 0.808},
           "usual_care": {"dr": {"value": 0.807, "ci": [0.780, 0.834]},
                          "wis": {"value": 0.778, "ci": [0.701, 0.856]}}}
    note = usual_care_caveat(val, {"usual_care_pct": 10.6}, "dr", None, usual_share=0.99)
    assert note is not None and "10.6% of its probability mass" in note
    assert "0.807 [0.78, 0.834] (dr)" in note and "99% of the held-out rows" in note
    assert usual_care_caveat(val, {"usual_care_pct": 0.5}, "dr", None) is None
    below = {**val, "usual_care": {"dr": {"value": 0.70, "ci": [0.68, 0.72]}},
             "source_gain": {"dr": 0.01}}
    note = usual_care_caveat(below, {"usual_care_pct": 0.0}, "dr", None)
    assert note is not None and "by 0.108, -1,080% of the source" in note


@pytest.mark.parametrize("logged", [True, False])
def test_the_deployed_value_covers_the_truth_with_logged_or_estimated_propensities(logged):
    """Uniform practice on the tree simulator, a source that departs from it only where
    x1 > 0.6: as deployed, the 60% of rows the rules leave to practice are worth 1/3 each
    (practice's chance of the optimal action), the others the rules' probability of it. The
    deployed DR and WDR cover that exact value, with the panel's logged propensities and with
    a behaviour model's (the deferred rows need neither: their ratio is 1)."""
    from tests.explain.test_distill import _HalfExpert

    train, test = tree_sim.generate(400, seed=22), tree_sim.generate(400, seed=23)
    if not logged:
        train, test = train.with_behavior_prob(None), test.with_behavior_prob(None)
    card = explain_policy(train, _HalfExpert(), ExplainConfig(
        depth=2, depths=(2,), bootstrap=50, frontier_bootstrap=0), test=test, random_state=0)
    tree = card.tree
    defer = np.asarray(tree.usual, dtype=bool)[tree.apply(test)]
    assert 0.4 < defer.mean() < 0.8
    probs = tree.action_probs(test)
    p_opt = np.where(defer, 1 / 3, probs[np.arange(test.n_steps), tree_sim.optimal_of(test)])
    truth = float(np.bincount(test.episode_index, weights=test.gamma ** test.step * p_opt).mean())
    assert card.value["propensities"] == ("logged" if logged else "estimated")
    for k in ("dr", "wdr"):
        lo, hi = card.value["rules_deployed"][k]["ci"]
        assert lo <= truth <= hi, (k, lo, truth, hi)


def test_the_cards_auto_q_model_is_the_window_table_when_censoring_biases_the_stationary_one():
    """A daily panel's card valued every policy with auto's ``tabular_stationary[app_version]``
    and carried five caveats that the stationary table was 11-13% off under censoring, adding
    "the default --q-model auto uses [the window table] in such a case": the card chose with
    select_q_model alone, without evaluate's censoring switch. Now it uses the window table."""
    from dataclasses import replace

    from equicare.ope import evaluate
    from equicare.policy import TabularPolicy
    from tests.ope.test_censoring import TGT, panel

    def pooled(ds):
        site = np.repeat(np.arange(ds.n_episodes) % 3, np.diff(ds.episode_offsets))
        return replace(ds, categorical=np.c_[ds.categorical[:, 0], site],
                       categorical_names=("cell", "site"),
                       categorical_levels=((0, 1, 2),) * 2, _cache={})

    train, test = pooled(panel(1500, 10, seed=1)), pooled(panel(3000, 10, seed=2))
    card = explain_policy(train, TabularPolicy(TGT), ExplainConfig(
        bootstrap=20, frontier_bootstrap=0, depths=(1,), depth=1, estimators=("fqe", "dr"),
        n_permutations=0), test=test, random_state=0)
    assert card.value["q_model"] == "tabular_window[cell]"
    assert card.value["q_model_selection"]["replaced"]["criterion_choice"] == (
        "tabular_stationary[cell]")
    assert not [c for c in card.caveats if "Prefer --q-model tabular_window" in c]
    auto = evaluate(test, TGT[test.categorical[:, 0]], estimators=("fqe",), bootstrap=0,
                    groups=[], diagnose_support=False, random_state=0)
    assert auto.q_model["chosen"] == "tabular_window"  # what evaluate's auto uses
    assert card.value["source"]["fqe"]["value"] == pytest.approx(
        auto.estimates["fqe"].value, rel=1e-9)


def test_floored_estimated_propensities_are_a_caveat_of_the_card():
    """Held-out episodes without logged propensities: floored logged rows reach the caveats."""
    from dataclasses import replace

    from tests.ope._garnet import TablePolicy, make

    _, logged, pols = make("s50_a5_g1", 600, seed=3)
    ds = replace(logged, behavior_prob=None, _cache={})
    cfg = ExplainConfig(bootstrap=20, frontier_bootstrap=10, depths=(2,), depth=2)
    card = explain_policy(ds, TablePolicy(pols["soft_optimal"]), cfg, random_state=0)
    # the card's values (its own 2-fold behaviour model on the held-out episodes); the
    # fairness audit's WIS group values say it too, for their own model ("policy 'source': ")
    hits = [c for c in card.caveats
            if "evidence: The propensities were not logged but estimated" in c]
    assert len(hits) == 1 and "wis, dr, wdr inherit that error" in hits[0]


@pytest.mark.parametrize(("n", "held_out"), [(1, 0), (2, 1)])
def test_a_panel_too_small_for_the_holdout_is_a_data_error_naming_it(n, held_out):
    """One episode: the split's own error ("Need at least 2 episodes to split.", no file);
    two: one held-out episode, and auto's cross-fitting crashed on it (IndexError). Both are
    one data error now, naming the panel and the holdout."""
    from equicare.data.validate import HOLDOUT_EPISODES_MESSAGE
    from equicare.exceptions import DataValidationError
    from equicare.ope._evaluate import EVALUATE_EPISODES_WHY

    ds = tree_sim.generate(n, seed=16)
    cfg = ExplainConfig(bootstrap=0, frontier_bootstrap=0, depths=(1,), depth=1)
    msg = HOLDOUT_EPISODES_MESSAGE.format(
        source="panel.csv: ", n=n, s="" if n == 1 else "s", owner="explain", share=0.3,
        purpose="the evidence", k=held_out, why=EVALUATE_EPISODES_WHY)
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        explain_policy(ds, tree_sim.NoisyExpert(), cfg, random_state=0, panel="panel.csv")
