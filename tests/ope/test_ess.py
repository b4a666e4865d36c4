"""The importance weights' mean as a check on IS, WIS, PDIS and WPDIS (exact truth)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from equicare.exceptions import LowESSWarning
from equicare.ope import evaluate
from equicare.ope._ess import mean_and_se, weight_mean_off
from equicare.policy import TabularPolicy

from ._mdp import BEHAVIOR, small_mdp

#: A target that takes action 1 80-90% of the time where practice takes it 40-50%.
TILTED = np.array([[0.1, 0.9], [0.2, 0.8]])


def _panel(horizon: int, seed: int, n_groups: int = 0):
    mdp = small_mdp(end=False, gamma=1.0, horizon=horizon)
    return mdp, mdp.sample(BEHAVIOR, 2000, seed=seed, n_groups=n_groups)


def test_mean_and_se_from_sums():
    x = np.random.default_rng(0).exponential(size=57)
    m, se = mean_and_se(x.sum(), (x * x).sum(), x.size)
    assert m == pytest.approx(x.mean(), rel=1e-12)
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(x.size), rel=1e-12)
    assert np.isnan(mean_and_se(0.0, 0.0, 0)[0]) and np.isnan(mean_and_se(2.0, 4.0, 1)[1])


@pytest.mark.parametrize(("mean", "se", "off"), [
    (0.85, 0.01, True),    # 15% low, 15 standard errors
    (0.85, 0.06, False),   # 15% low, 2.5 standard errors: the sample's own noise
    (0.95, 0.001, False),  # 50 standard errors, but within 10% of 1
    (1.30, 0.05, True),    # too much weight sampled
    (float("nan"), 0.1, False), (None, None, False)])
def test_the_rule_needs_a_material_gap_beyond_the_samples_noise(mean, se, off):
    assert weight_mean_off(mean, se) is off


def test_the_behaviour_policys_weights_average_exactly_one_and_draw_no_warning():
    _, ds = _panel(20, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowESSWarning)
        res = evaluate(ds, TabularPolicy(BEHAVIOR), estimators="is,wis", bootstrap=0, groups=[],
                       diagnose_support=False)
    assert res.ess.weight_mean == pytest.approx(1.0, abs=1e-12)
    assert res.to_dict()["ess"]["trajectory_weight_mean"] == pytest.approx(1.0, abs=1e-12)


def test_weights_that_miss_their_tail_are_warned_at_an_ess_above_11():
    """20 steps of a tilted target: the panel's weights average 0.29 +/- 0.05 (ESS 28), so IS's
    interval misses the exact value and WIS's too; the ESS rule alone (below 11) is silent."""
    mdp, ds = _panel(20, 3)
    truth = mdp.value(TILTED)
    with pytest.warns(LowESSWarning, match=r"The is, wis, pdis and wpdis values rest on "
                      r"trajectory importance weights that average 0\.285 \(standard error "
                      r"0\.054\) over 2,000 episodes.*about 71% of the target") as rec:
        res = evaluate(ds, TabularPolicy(TILTED), estimators="is,wis,pdis,wpdis",
                       bootstrap=200, groups=[], diagnose_support=False)
    assert len(rec) == 1 and "episodes' worth" not in str(rec[0].message)  # ESS > 11
    assert res.ess.trajectory > 11
    for k in ("is", "wis"):  # why the warning matters: both intervals miss the exact value
        lo, hi = res.estimates[k].ci
        assert not lo <= truth <= hi, (k, res.estimates[k], truth)


def test_the_audit_warns_on_the_same_rule():
    from equicare.exceptions import SupportWarning
    from equicare.fairness import audit

    _, ds = _panel(20, 3, n_groups=2)
    probs = TILTED[ds.categorical[:, 0]]
    with pytest.warns(SupportWarning) as rec:  # with the audit's own ESS warning (1.4% < 10%)
        res = audit(ds, {"tilted": probs}, action="action=1", estimator="is", n_boot=0,
                    n_permutations=0, random_state=0)
    msgs = [str(w.message) for w in rec]
    assert any(m.startswith("policy 'tilted': The is value rests on trajectory importance "
                            "weights that average 0.285") for m in msgs), msgs
    ess = res.to_dict()["policies"]["tilted"]["diagnostics"]["ess"]
    assert ess["trajectory_weight_mean"] == pytest.approx(0.285, abs=5e-4)
