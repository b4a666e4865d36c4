"""Truth on the Garnet test bed (exact values): where shallow rules cannot imitate a policy.

Garnet's optimal and learned policies vary cell by cell with random action effects over hundreds
of states; no shallow tree over (severity, state) reproduces them. Measured on ``s700_a25_g1``
(5,000 episodes, seed 1): SPIBB (N_wedge = 20) improves the exact value from 0.8003 to 0.8149.

* Imitation rules (``mode="imitate"``): depth-3 to depth-8 trees agree with SPIBB on 9-15% of rows
  and put whole populations on one action; their exact value is 0.60, far below current practice
  (about -1,370% of the improvement kept).
* Exception rules (``mode="exceptions"``, the card's default): the tree names a few states where
  to deviate and leaves every other state with the clinicians' observed frequencies. Exact value
  at depth 3: 0.8009 (4% of the improvement kept; the rules: three states, then "otherwise: as
  current practice"), depth 4: 0.8011 (6%), depth 6: 0.8013 (7%). The per-cell frequency
  estimate of practice itself is worth 0.7998 (-3% of the gain); since a state seen in fewer
  than 11 episodes gets the overall frequencies (29 of 700 states, 0.4% of rows), 0.7959, and
  the rules lose no more than that estimate does. They cannot keep 80%: SPIBB's gain is spread
  thinly over many states. Even an
  oracle that follows SPIBB in the k states that matter most and current practice elsewhere
  keeps 10% (k = 4), 18% (k = 8), 29% (k = 16) and 63% (k = 64); a depth-4 tree names at most
  about 8 states.

The issue's 80% target is therefore not met on Garnet (strict xfail below, so the day it passes
the marker must go). What the card must do is not hide it: the second test checks its off-policy
evidence against the exact truth.
"""

from __future__ import annotations

import numpy as np
import pytest

garnet = pytest.importorskip("equicare.sim.garnet")


@pytest.fixture(scope="module")
def setup():
    from equicare.data import from_frame
    from equicare.learn import SPIBB
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest

    cfg = garnet.garnet_preset("s700_a25_g1")
    mdp, pan = garnet.garnet_panel(cfg, 5000, 1)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    learner = SPIBB(n_wedge=20).fit(ds)
    vb = mdp.value(mdp.behavior_policy)
    table, _ = garnet.garnet_policy_table(mdp, ds, learner.policy_)
    return mdp, ds, learner.policy_, vb, mdp.value(table)


def _kept(mdp, ds, tree, vb, vl):
    table, _ = garnet.garnet_policy_table(mdp, ds, tree)
    return (mdp.value(table) - vb) / (vl - vb)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="SPIBB's gain on Garnet is spread over many states: "
                                       "depth-3/4 exception rules keep 4% / 6% (exact), an "
                                       "8-state oracle 18%")
@pytest.mark.parametrize("depth", [3, 4])
def test_rules_keep_80_percent_on_garnet(setup, depth):
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    assert vl > vb
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    kept = _kept(mdp, ds, tree, vb, vl)
    print(f"\ngarnet depth {depth}: exact V(behaviour)={vb:.4f} V(spibb)={vl:.4f}, "
          f"{100 * kept:.0f}% of the improvement kept")
    assert kept >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_exception_rules_stay_near_current_practice(setup, depth):
    """Exact truth: exception rules lose at most 10% of SPIBB's gain beyond what the stored
    estimate of practice itself costs, where imitation rules lose 1,370%. That estimate keeps
    the observed frequencies of the states seen in at least 11 episodes and gives the 29 others
    (0.4% of rows) the overall frequencies (no stored frequency describes fewer than 11
    members): exact 0.7959 against practice's 0.8003, -75% of SPIBB's gain (-8% with every
    state's own frequencies). Measured: the rules -54% (depth 3) and -50% (depth 4); before the
    small states were pooled +11% and +14%."""
    from equicare.explain import distill, fit_usual_care

    mdp, ds, pol, vb, vl = setup
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    assert tree.has_usual and tree.leaves.size <= 2 ** depth
    kept = _kept(mdp, ds, tree, vb, vl)
    kept_usual = _kept(mdp, ds, fit_usual_care(ds, "cells"), vb, vl)
    assert kept >= kept_usual - 0.1, (kept, kept_usual)
    if depth == 4:
        assert kept > kept_usual, (kept, kept_usual)
    plain = distill(ds, pol, max_depth=depth, q_model="tabular", mode="imitate", random_state=0)
    assert _kept(mdp, ds, plain, vb, vl) < -1.0


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_card_evidence_reports_the_loss(setup):
    """The card's evidence agrees with the exact truth: the exception rules keep far less than
    80% of SPIBB's gain, and so does the card's DR estimate, with a caveat naming the share; the
    rules' mass on rarely taken actions stays near SPIBB's (every unnamed state keeps practice's
    own distribution), far from the imitation rules' 68%. Measured: exact -220% kept (10%
    before states seen in fewer than 11 episodes got the overall frequencies), DR 42% (DR of
    the rules 0.814 [0.788, 0.839] against 0.808 observed), 10.6% of the rules' mass on rarely
    taken actions (SPIBB 9.3%)."""
    from equicare.explain import ExplainConfig, explain_policy

    mdp, ds, pol, vb, vl = setup
    # the tabular Q-model: Garnet's state is one categorical column with 700 levels
    card = explain_policy(ds, pol, ExplainConfig(depth=3, depths=(3,), bootstrap=50,
                                                 frontier_bootstrap=0, q_model="tabular"),
                          random_state=0)
    assert card.data["mode"] == "exceptions" and card.data["usual_care_model"] == "cells"
    kept_true = _kept(mdp, ds, card.tree, vb, vl)
    dr = card.value["rules"]["dr"]
    beh = card.value["behavior"]["value"]
    print(f"\ngarnet card: true kept {100 * kept_true:.0f}%, DR of the rules {dr['value']:.3f} "
          f"[{dr['ci'][0]:.3f}, {dr['ci'][1]:.3f}], behaviour {beh:.3f}, DR kept "
          f"{100 * card.value['improvement_kept']['dr']:.0f}%, rules' mass on rarely taken "
          f"actions {card.support['rules_pct']:.1f}% (SPIBB {card.support['source_pct']:.1f}%)")
    assert kept_true < 0.8
    assert card.value["improvement_kept"]["dr"] < 0.8
    assert any("keep only" in c for c in card.caveats)
    # the stored estimate of practice (exact: below practice) puts 10.6% of its mass on rarely
    # taken actions, where DR cannot see the loss: the card says the rules inherit it
    assert any(c.startswith("Current practice as stored") and "inherit" in c
               for c in card.caveats)
    # imitation rules put 68% of their mass on actions practice rarely takes in the state
    assert card.support["rules_pct"] < 30.0
    assert card.rules[-1]["text"] == "otherwise: as current practice"
    assert card.rules[-1]["test_share"] > 0.9


@pytest.mark.slow
def test_the_selected_policy_spreads_its_gain_too():
    """The policy ``train --select auto`` keeps on this panel (tilted PVI, beta 0.3, min_count 20,
    tau 0.1: exact 0.8003 -> 0.8621) spreads its gain like SPIBB: following it in the k states
    whose switch gains most (occupancy under practice x advantage) and practice elsewhere keeps
    7% (k = 4), 13% (k = 8), 21% (k = 16) and 50% (k = 64) of its improvement, so no depth-3/4
    rule set can keep 80% (measured: exception rules keep about 0%, never below practice)."""
    from equicare.data import from_frame
    from equicare.explain import distill
    from equicare.learn import PVI
    from equicare.learn._pvi import PVIConfig
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest

    cfg = garnet.garnet_preset("s700_a25_g1")
    mdp, pan = garnet.garnet_panel(cfg, 5000, 1)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    learner = PVI(PVIConfig(beta=0.3, min_count=20, tau=0.1)).fit(ds)
    pb = mdp.behavior_policy
    vb = mdp.value(pb)
    table, _ = garnet.garnet_policy_table(mdp, ds, learner.policy_)
    vl = mdp.value(table)
    assert vl - vb > 0.05
    S = mdp.n_states
    v_b = mdp.state_values(pb, horizon=None)
    q_b = mdp.reward + mdp.config.gamma * (mdp._Pt @ v_b).reshape(S, -1)
    gain = mdp.occupancy(pb) * ((table - pb) * q_b).sum(axis=1)
    order = np.argsort(-gain)
    kept = {}
    for k in (8, 64):
        pi = pb.copy()
        pi[order[:k]] = table[order[:k]]
        kept[k] = (mdp.value(pi) - vb) / (vl - vb)
    assert kept[8] < 0.3 and kept[64] < 0.8, kept
    tree = distill(ds, learner.policy_, max_depth=4, q_model="tabular", mode="exceptions",
                   random_state=0)
    assert -0.1 <= _kept(mdp, ds, tree, vb, vl) < 0.8
