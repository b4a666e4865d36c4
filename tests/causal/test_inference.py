"""Published standard errors and intervals of dynamic mediation cover the truth.

DM's, MIS's and the baseline's influence values linearised them with the fitted ratios and
models held fixed (and the cluster bootstrap resampled those values with the fits held fixed
too): over 200 data sets per model their 95 % intervals covered the exact effects in as few as
11-35 % of them (docs/mediation.md 'Inference'). They now publish no SE or CI, with a note;
MR's (efficient influence function, valid with fitted nuisances) are kept.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from equicare.causal import DynamicMediation, MediationResult
from equicare.causal._dynamic import NO_INTERVAL_NOTE
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


@pytest.mark.parametrize("n_bootstrap", [0, 50])
def test_only_mr_publishes_intervals_the_others_say_why(n_bootstrap):
    mdp = toy1()
    data = mdp.sample(60, 30, random_state=0)
    res = DynamicMediation(n_bootstrap=n_bootstrap).estimate(
        data, mdp.policy_fn(toy_target()), 0, random_state=0)
    for name in ("dm", "mis", "baseline"):
        est = res[name]
        assert est.note == NO_INTERVAL_NOTE
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
    assert d["estimators"]["mis"]["note"] == NO_INTERVAL_NOTE
    assert d["estimators"]["mis"]["dde"] == {"value": res["mis"].effects["dde"].value,
                                             "se": None, "ci": None}
    assert d["estimators"]["mr"]["note"] is None
    back = MediationResult.from_dict(d)
    assert back["dm"].note == NO_INTERVAL_NOTE and back["mr"].note is None
    assert back["mis"].effects["ide"].se is None


@pytest.mark.slow
@pytest.mark.parametrize("model", ["toy1", "toy2", "rand20"])
def test_every_published_interval_covers_the_exact_effects(model):
    """60 data sets (150 episodes x 40 steps): every published 95 % interval, normal
    (``value +- 1.96 se``) and bootstrap, covers the exact effect in at least 85 % of them.

    Measured before the change (200 data sets, normal / bootstrap): MIS DDE 0.35 / 0.34 and
    DME 0.53 / 0.50 on rand20, DM IME 0.34 / 0.35 and MIS DME 0.28 / 0.27 on toy 1, the
    baseline's IDE 0.16 / 0.16 and MIS DME 0.11 / 0.12 on toy 2 (states i.i.d.: the baseline
    is unbiased there). MR: 0.88-0.97 over the four models of docs/mediation.md.
    """
    mdp, target = {"toy1": lambda: (toy1(), toy_target()), "toy2": lambda: (toy2(), toy_target()),
                   "rand20": rand20}[model]()
    truth = mdp.exact_effects(target, 0)
    cover: dict[tuple[str, str, str], list[bool]] = {}
    for rep in range(60):
        data = mdp.sample(150, 40, random_state=1000 + rep)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # a rare SupportWarning on a data set
            res = DynamicMediation(n_bootstrap=100).estimate(data, mdp.policy_fn(target), 0,
                                                             random_state=rep)
        for name in res.estimators:
            for k in KEYS:
                e = res[name].effects[k]
                if e.se is None:
                    continue
                cover.setdefault((name, k, "normal"), []).append(
                    abs(e.value - truth[k]) <= 1.959964 * e.se)
                cover.setdefault((name, k, "bootstrap"), []).append(
                    e.ci[0] <= truth[k] <= e.ci[1])
    rates = {key: float(np.mean(v)) for key, v in cover.items()}
    print(model, rates)
    assert min(rates.values()) >= 0.85, rates
    assert {name for name, _, _ in rates} == {"mr"}
