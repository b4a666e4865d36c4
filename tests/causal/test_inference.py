"""Published standard errors and intervals of dynamic mediation cover the truth.

DM's, MIS's and the baseline's influence values linearised them with the fitted ratios and
models held fixed (and the cluster bootstrap resampled those values with the fits held fixed
too): over 200 data sets per model their 95 % intervals covered the exact effects in as few as
11-35 % of them (docs/mediation.md 'Inference'). Their intervals now come from a bootstrap
that refits every model (equicare.causal._refit); without it (no replicates, or a
configuration it does not batch) they publish no SE or CI, with a note. MR's (efficient
influence function, valid with fitted nuisances) are kept.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from equicare.causal import DynamicMediation, MediationResult
from equicare.causal._dynamic import NO_BOOTSTRAP_REASON, NO_INTERVAL_NOTE
from equicare.sim.mediation import (
    DiscreteMediationMDP,
    random_mediation_mdp,
    toy1,
    toy2,
    toy_target,
)

KEYS = ("ide", "ime", "dde", "dme", "total")


def rand20() -> tuple[DiscreteMediationMDP, np.ndarray]:
    """``random_mediation_mdp(4, 2, 3, random_state=20)``, rewards x 3; the target acts in 2-3."""
    b = random_mediation_mdp(4, 2, 3, random_state=20)
    mdp = DiscreteMediationMDP(b.init, b.behavior, b.mediator, 3 * b.reward_mean, b.transition)
    target = mdp.behavior.copy()
    target[2:] = (0.2, 0.8)
    return mdp, target


@pytest.mark.parametrize(("kw", "reason"), [
    ({"n_bootstrap": 0}, NO_BOOTSTRAP_REASON),
    ({"n_bootstrap": 20, "behavior_model": "logistic"},
     "a scikit-learn nuisance model is not batched")])
def test_without_the_refitting_bootstrap_only_mr_publishes_intervals(kw, reason):
    from sklearn.linear_model import LogisticRegression

    if kw.get("behavior_model") == "logistic":
        kw = {**kw, "behavior_model": LogisticRegression()}
    mdp = toy1()
    data = mdp.sample(60, 30, random_state=0)
    res = DynamicMediation(**kw).estimate(data, mdp.policy_fn(toy_target()), 0, random_state=0)
    note = NO_INTERVAL_NOTE.format(reason=reason)
    for name in ("dm", "mis", "baseline"):
        est = res[name]
        assert est.note == note
        for k in (("ide", "ime", "total") if name == "baseline" else KEYS):
            assert est.effects[k].value is not None and np.isfinite(est.effects[k].value)
            assert est.effects[k].se is None and est.effects[k].ci is None, (name, k)
        if name != "baseline":   # the effects are the etas' differences, as MR's
            eta = est.eta
            assert est.effects["total"].value == pytest.approx(eta["pi_e"] - eta["a0"])
            assert est.effects["dde"].value == pytest.approx(eta["pi_e_a0star"] - eta["G"])
    base = res["baseline"].effects
    assert base["total"].value == pytest.approx(base["ide"].value + base["ime"].value)
    assert base["dde"].value is None
    assert res["mr"].note is None
    for k in KEYS:
        e = res["mr"].effects[k]
        assert e.se > 0 and e.ci is not None and e.ci[0] < e.ci[1]
    d = res.to_dict()
    assert d["estimators"]["mis"]["note"] == note
    assert d["estimators"]["mis"]["dde"] == {"value": res["mis"].effects["dde"].value,
                                             "se": None, "ci": None}
    assert d["estimators"]["mr"]["note"] is None
    back = MediationResult.from_dict(d)
    assert back["dm"].note == note and back["mr"].note is None
    assert back["mis"].effects["ide"].se is None


def test_every_estimator_publishes_refitted_intervals():
    """With bootstrap replicates every estimator has an SE and a CI around its value, no note;
    the point estimates are those without replicates."""
    mdp = toy1()
    data = mdp.sample(60, 30, random_state=0)
    pol = mdp.policy_fn(toy_target())
    res = DynamicMediation(n_bootstrap=50).estimate(data, pol, 0, random_state=0)
    points = DynamicMediation(n_bootstrap=0).estimate(data, pol, 0, random_state=0)
    for name in ("dm", "mis", "mr", "baseline"):
        assert res[name].note is None
        for k in (("ide", "ime", "total") if name == "baseline" else KEYS):
            e = res[name].effects[k]
            assert e.value == points[name].effects[k].value, (name, k)
            assert e.se > 0 and e.ci[0] < e.ci[1], (name, k)
            assert e.ci[0] - 3 * e.se < e.value < e.ci[1] + 3 * e.se, (name, k)
    d = res.to_dict()
    assert d["estimators"]["mis"]["note"] is None
    assert MediationResult.from_dict(d)["dm"].effects["dde"].se == res["dm"].effects["dde"].se


def baseline_estimand(mdp: DiscreteMediationMDP, target: np.ndarray, horizon: int
                      ) -> dict[str, float]:
    """The baseline's own estimand: one step's natural direct and mediated effects of the
    target against ``a0 = 0``, averaged over the states of ``horizon``-step behaviour panels."""
    pe = mdp.policy_table(target)
    pb, pm, r, P = mdp.behavior, mdp.mediator, mdp.reward_mean, mdp.transition
    step = np.einsum("sa,sam,samt->st", pb, pm, P)
    d, x = np.zeros(mdp.n_states), np.asarray(mdp.init, dtype=float)
    for _ in range(horizon):
        d, x = d + x / horizon, x @ step
    de = float(np.einsum("s,sa,sam->", d, pe, pm * (r - r[:, :1])))
    me = float(np.einsum("s,sa,sam->", d, pe, (pm - pm[:, :1]) * r[:, :1]))
    return {"ide": de, "ime": me, "total": de + me}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["toy1", "toy2", "rand20"])
def test_every_published_interval_covers_the_exact_effects(model):
    """60 data sets (150 episodes x 40 steps, 200 replicates): every published 95 % interval
    (DM, MIS, the baseline: refitting bootstrap; MR: cluster bootstrap of its influence values)
    covers the exact effect in at least 85 % of them; the baseline's against its own estimand
    (:func:`baseline_estimand`; the dynamic effects when states do not shift, toy 2).

    Measured before the refitting bootstrap (200 data sets, the fixed-model intervals): MIS DDE
    0.34 and DME 0.50 on rand20, DM IME 0.35 and MIS DME 0.27 on toy 1, MIS DME 0.12 on toy 2,
    the baseline's IDE 0.15 on toy 2. After (200 data sets, 500 replicates): docs/mediation.md.
    """
    mdp, target = {"toy1": lambda: (toy1(), toy_target()), "toy2": lambda: (toy2(), toy_target()),
                   "rand20": rand20}[model]()
    truth = mdp.exact_effects(target, 0)
    base_truth = baseline_estimand(mdp, target, 40)
    cover: dict[tuple[str, str], list[bool]] = {}
    for rep in range(60):
        data = mdp.sample(150, 40, random_state=1000 + rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # a rare SupportWarning on a data set
            res = DynamicMediation(n_bootstrap=200).estimate(data, mdp.policy_fn(target), 0,
                                                             random_state=rep)
        for name in res.estimators:
            t = base_truth if name == "baseline" else truth
            for k in KEYS:
                e = res[name].effects[k]
                if e.value is None:
                    continue
                cover.setdefault((name, k), []).append(e.ci[0] <= t[k] <= e.ci[1])
    rates = {key: float(np.mean(v)) for key, v in cover.items()}
    print(model, rates)
    assert min(rates.values()) >= 0.85, rates
    assert {name for name, _ in rates} == {"dm", "mis", "mr", "baseline"}
