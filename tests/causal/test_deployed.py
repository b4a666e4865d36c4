"""Exception rules in mediation, valued as deployed (``usual_care``) against the exact effects.

The rules act in states 2-3 and leave states 0-1 to current practice; their stored estimate of
practice there, (0.4, 0.6), is not practice's per-state distribution (0.60 / 0.14 for action 1).
Deployed, the target is practice in states 0-1: its exact effects come from the DP of
:class:`~equicare.sim.mediation.DiscreteMediationMDP` with that table.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from equicare.causal import DynamicMediation, PolicyProbs
from equicare.causal._data import FLAGS_MESSAGE
from equicare.causal._dynamic import DEPLOYED_NEEDS_DATASET
from equicare.data import from_frame
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.policy import CallablePolicy, TreePolicy
from equicare.sim.mediation import DiscreteMediationMDP, random_mediation_mdp

KEYS = ("ide", "ime", "dde", "dme", "total")
STORED = (0.4, 0.6)      # the rules' stored estimate of practice in states 0-1
ACT = (0.2, 0.8)         # the rules' own distribution in states 2-3


def _mdp() -> DiscreteMediationMDP:
    """rand seed 20 with rewards x3: the one of 40 seeds where stored and deployed differ most."""
    b = random_mediation_mdp(4, 2, 3, random_state=20)
    return DiscreteMediationMDP(b.init, b.behavior, b.mediator, 3 * b.reward_mean, b.transition)


def _tables(mdp):
    deployed = mdp.behavior.copy()
    deployed[2:] = ACT
    stored = deployed.copy()
    stored[:2] = STORED
    return deployed, stored


def _dataset(mdp, seed, propensity=True):
    man = {"dataset": {"episode": "episode", "time": "time", "states": ["s0"],
                       "mediators": ["m0"]},
           "actions": {"action": {"levels": 2}}, "reward": {"column": "reward"}}
    if propensity:
        man["dataset"]["behavior_prob"] = "propensity"
    return from_frame(mdp.sample(300, 41, random_state=seed).to_frame(), man)


def _rules(ds) -> TreePolicy:
    """s0 <= 1.5: as current practice (stored estimate STORED); else ACT."""
    feats = [{"kind": "state", "name": "s0"}]
    practice = TreePolicy(children_left=np.array([-1]), children_right=np.array([-1]),
                          feature=np.array([-2]), threshold=np.array([-2.0]),
                          probs=np.array([STORED]), features=feats,
                          action_space=ds.action_space, source="practice")
    return TreePolicy(children_left=np.array([1, -1, -1]), children_right=np.array([2, -1, -1]),
                      feature=np.array([0, -2, -2]), threshold=np.array([1.5, -2.0, -2.0]),
                      probs=np.array([[0.5, 0.5], STORED, ACT]), features=feats,
                      action_space=ds.action_space, source="rules",
                      usual=np.array([False, True, False]), usual_policy=practice)


def _errors(runs):
    """Mean error per (name, estimator) over panels, shape (5,)."""
    return {k: np.mean(v, axis=0) for k, v in runs.items()}


@pytest.fixture(scope="module")
def panels():
    """Six panels: DM and MR of the rules by default (deployed) and stored, errors vs truth.

    Measured over 30 panels (seeds 100-129): deployed MR mean error <= 0.015 in absolute value,
    SD 0.04-0.09; stored MR against the deployed truth +0.26 (IME), +0.16 (DME), +0.52 (total).
    """
    mdp = _mdp()
    deployed, stored = _tables(mdp)
    truth = {"deployed": mdp.exact_effects(deployed, 0), "stored": mdp.exact_effects(stored, 0)}
    runs: dict[tuple[str, str, str], list[list[float]]] = {}
    shares = []
    for rep in range(6):
        ds = _dataset(mdp, 100 + rep)
        rules = _rules(ds)
        for uc, cfg in (("deployed", DynamicMediation(n_bootstrap=0, estimators=("dm", "mr"))),
                        ("stored", DynamicMediation(n_bootstrap=0, estimators=("dm", "mr"),
                                                    usual_care="stored"))):
            res = cfg.estimate(ds, rules, 0, random_state=rep)
            shares.append((res.usual_care, res.deferred_share))
            for est in ("dm", "mr"):
                e = res[est].effects
                for against in ("deployed", "stored"):
                    runs.setdefault((uc, est, against), []).append(
                        [e[k].value - truth[against][k] for k in KEYS])
    return _errors(runs), shares, truth


def test_rules_are_valued_as_deployed_by_default(panels):
    """Deployed (the default), DM and MR match the exact effects of practice-where-deferred;
    0.1 is about 3 standard deviations of a 6-panel mean (SD of one panel <= 0.09)."""
    err, _, truth = panels
    for est in ("dm", "mr"):
        bad = {k: round(float(v), 3) for k, v in zip(KEYS, err[("deployed", est, "deployed")],
                                                      strict=True) if abs(v) > 0.1}
        assert not bad, (est, bad, truth["deployed"])


def test_the_stored_estimate_is_another_policy(panels):
    """Stored, mediate values the rules with (0.4, 0.6) in states 0-1: right for that policy,
    and 0.5 off the deployed rules' total effect (0.26 on IME)."""
    err, _, _ = panels
    for est in ("dm", "mr"):
        assert np.abs(err[("stored", est, "stored")]).max() < 0.1, est
        off = dict(zip(KEYS, err[("stored", est, "deployed")], strict=True))
        assert off["total"] > 0.4 and off["ime"] > 0.2, (est, off)


def test_result_records_how_and_how_much(panels):
    _, shares, _ = panels
    for i, (uc, share) in enumerate(shares):
        assert uc == ("deployed", "stored")[i % 2]
        assert set(share) == {"target"} and 0.5 < share["target"] < 0.6  # states 0-1


@pytest.mark.slow
def test_deployed_mr_over_30_panels_is_unbiased_like_the_true_table():
    """docs/mediation.md's numbers: 30 panels (seeds 100-129), deployed MR mean error +0.003,
    +0.001, -0.008, -0.011, -0.015 (SD 0.04-0.09), as MR given the deployed policy's true table
    (+0.004, +0.003, -0.007, -0.011, -0.012); stored, +0.52 off the deployed total (~30 s)."""
    mdp = _mdp()
    deployed, _ = _tables(mdp)
    truth = mdp.exact_effects(deployed, 0)
    table = CallablePolicy(lambda x: mdp.policy_fn(deployed)(x), n_actions=2)
    errs: dict[str, list[list[float]]] = {"deployed": [], "table": [], "stored": []}
    for rep in range(30):
        ds = _dataset(mdp, 100 + rep)
        rules = _rules(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, pol, uc in (("deployed", rules, "deployed"), ("table", table, "deployed"),
                                  ("stored", rules, "stored")):
                cfg = DynamicMediation(n_bootstrap=0, estimators=("mr",), usual_care=uc)
                e = cfg.estimate(ds, pol, 0, random_state=rep)["mr"].effects
                errs[name].append([e[k].value - truth[k] for k in KEYS])
    dep, tab, sto = (np.asarray(errs[k]) for k in ("deployed", "table", "stored"))
    sem = dep.std(axis=0, ddof=1) / np.sqrt(len(dep))
    assert (np.abs(dep.mean(axis=0)) < 3 * sem + 0.01).all(), dep.mean(axis=0)
    assert (np.abs(dep.mean(axis=0) - tab.mean(axis=0)) < 0.01).all()
    assert sto.mean(axis=0)[KEYS.index("total")] > 0.4


def test_without_logged_propensities_and_with_rules_as_the_control():
    """The fitted behaviour model alone (no behavior_prob), and a control that defers: both
    against the exact effects (2 panels; MR SD per panel <= 0.08, tolerance 0.15)."""
    mdp = _mdp()
    deployed, _ = _tables(mdp)
    tgt = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5], [0.7, 0.3]])
    truth_t = mdp.exact_effects(deployed, 0)
    truth_c = mdp.exact_effects(tgt, deployed)
    errs_t, errs_c = [], []
    for rep in range(2):
        ds = _dataset(mdp, 200 + rep, propensity=False)
        cfg = DynamicMediation(n_bootstrap=0, estimators=("mr",))
        e = cfg.estimate(ds, _rules(ds), 0, random_state=rep)["mr"].effects
        errs_t.append([e[k].value - truth_t[k] for k in KEYS])
        target = CallablePolicy(lambda x: mdp.policy_fn(tgt)(x), n_actions=2)
        res = cfg.estimate(ds, target, _rules(ds), random_state=rep)
        assert set(res.deferred_share) == {"control"}
        errs_c.append([res["mr"].effects[k].value - truth_c[k] for k in KEYS])
    assert np.abs(np.mean(errs_t, axis=0)).max() < 0.15, np.mean(errs_t, axis=0)
    assert np.abs(np.mean(errs_c, axis=0)).max() < 0.15, np.mean(errs_c, axis=0)


def test_stored_ignores_the_flags_and_a_policy_that_never_defers_is_unchanged():
    """Stored numbers are those of the stored probabilities without flags; a policy that can
    defer but leaves no transition to practice gives them deployed too."""
    mdp = _mdp()
    ds = _dataset(mdp, 7)
    rules = _rules(ds)
    full = rules.action_probs(ds)
    md_rows = np.flatnonzero(np.asarray(ds.next_index) >= 0)
    nxt = np.asarray(ds.next_index)[md_rows]
    flags = rules.deferred_rows(ds)
    plain = PolicyProbs(full[md_rows], full[nxt], name="rules")
    flagged = PolicyProbs(full[md_rows], full[nxt], name="rules", deferred=flags[md_rows],
                          next_deferred=flags[nxt])
    none = PolicyProbs(full[md_rows], full[nxt], name="rules",
                       deferred=np.zeros(md_rows.size, bool),
                       next_deferred=np.zeros(md_rows.size, bool))
    kw = {"n_bootstrap": 0, "estimators": ("dm", "mis", "mr", "baseline")}
    a = DynamicMediation(**kw).estimate(ds, plain, 0, random_state=1)
    b = DynamicMediation(**kw, usual_care="stored").estimate(ds, flagged, 0, random_state=1)
    c = DynamicMediation(**kw).estimate(ds, none, 0, random_state=1)
    assert a.to_dict()["estimators"] == b.to_dict()["estimators"] == c.to_dict()["estimators"]
    assert (a.usual_care, a.deferred_share) == (None, None)
    assert (b.usual_care, b.deferred_share) == ("stored", {"target": pytest.approx(
        flags[md_rows].mean())})
    assert (c.usual_care, c.deferred_share) == ("deployed", {"target": 0.0})
    d = DynamicMediation(**kw).estimate(ds, flagged, 0, random_state=1)
    assert d.to_dict()["estimators"] != a.to_dict()["estimators"]
    assert d.to_dict()["usual_care"] == "deployed"


def test_deployed_next_states_need_the_dataset():
    """On plain arrays the logged next action is unknown: a clear error, not a guess."""
    mdp = _mdp()
    data = mdp.sample(40, 10, random_state=0)
    n = data.n_steps
    p = np.tile([0.5, 0.5], (n, 1))
    nd = np.zeros(n, bool)
    nd[:3] = True
    pp = PolicyProbs(p, p, name="rules", deferred=nd, next_deferred=nd)
    with pytest.raises(PolicyError, match=re.escape(DEPLOYED_NEEDS_DATASET.format(
            what="target", k=3))):
        DynamicMediation(n_bootstrap=0).estimate(data, pp, 0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = DynamicMediation(n_bootstrap=0, usual_care="stored").estimate(data, pp, 0,
                                                                           random_state=0)
    assert res.usual_care == "stored"
    bad = PolicyProbs(p, p, deferred=np.zeros(n - 1, bool))
    with pytest.raises(PolicyError, match=re.escape(FLAGS_MESSAGE.format(
            what="target", name="deferred", n=n, dtype="bool", shape=(n - 1,)))):
        DynamicMediation(n_bootstrap=0).estimate(data, bad, 0, random_state=0)


def test_usual_care_must_be_deployed_or_stored():
    with pytest.raises(InvalidParameterError, match="'usual_care' parameter of "
                                                    "DynamicMediation"):
        DynamicMediation(usual_care="as deployed")
    cfg = DynamicMediation(usual_care="stored")
    assert DynamicMediation.from_dict(cfg.to_dict()) == cfg
