"""Truth on the Garnet test bed (exact values): where shallow rules cannot imitate a policy.

Garnet's optimal and learned policies vary cell by cell with random action effects over hundreds
of states; no shallow tree over (severity, state) reproduces them. Measured on ``s700_a25_g1``
(5,000 episodes, seed 1): SPIBB (N_wedge = 20) improves the exact value from 0.800 to 0.815;
depth-3 to depth-8 distillations agree with it on 9-15% of rows and have exact values of
0.60: far below current practice. The issue's 80% target is therefore not met on Garnet (strict
xfail below, so the day it passes the marker must go). What the card must do is not hide it:
its off-policy evidence must not claim the improvement is kept (the DR estimate, optimistic
where the rules leave the clinicians' support, finds no gain; exact: a large loss).
"""

from __future__ import annotations

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
@pytest.mark.xfail(strict=True, reason="shallow rules cannot imitate Garnet's cell-by-cell "
                                       "policies (exact: the rules fall below behaviour)")
@pytest.mark.parametrize("depth", [3, 4])
def test_rules_keep_80_percent_on_garnet(setup, depth):
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    assert vl > vb
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", random_state=0)
    kept = _kept(mdp, ds, tree, vb, vl)
    print(f"\ngarnet depth {depth}: exact V(behaviour)={vb:.4f} V(spibb)={vl:.4f}, "
          f"{100 * kept:.0f}% of the improvement kept")
    assert kept >= 0.8


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_card_evidence_reports_the_loss(setup):
    """When the exact truth says the rules lose the improvement, the card says so too: the
    rules' OPE value is below behaviour's and a caveat names the kept share."""
    from equicare.explain import ExplainConfig, explain_policy

    mdp, ds, pol, vb, vl = setup
    # the tabular Q-model: Garnet's state is one categorical column with 700 levels
    card = explain_policy(ds, pol, ExplainConfig(depth=3, depths=(3,), bootstrap=50,
                                                 frontier_bootstrap=0, q_model="tabular"),
                          random_state=0)
    kept_true = _kept(mdp, ds, card.tree, vb, vl)
    dr = card.value["rules"]["dr"]
    beh = card.value["behavior"]["value"]
    print(f"\ngarnet card: true kept {100 * kept_true:.0f}%, DR of the rules {dr['value']:.3f} "
          f"[{dr['ci'][0]:.3f}, {dr['ci'][1]:.3f}], behaviour {beh:.3f}, rules' mass on rarely "
          f"taken actions {card.support['rules_pct']:.1f}%")
    assert kept_true < 0.8
    # the DR estimate is optimistic (the Q-model extrapolates to never-given actions: see the
    # support line) but it still finds no improvement, and the card says so
    assert card.value["improvement_kept"]["dr"] < 0.8
    assert any("keep only" in c for c in card.caveats)
