"""Truth on the Garnet test bed (exact values): where shallow rules cannot imitate a policy.

Garnet's optimal and learned policies vary cell by cell with random action effects over hundreds
of states; no shallow tree over (severity, state) reproduces them. Measured on ``s700_a25_g1``
(5,000 episodes, seed 1; 2026-12-05): SPIBB (N_wedge = 20) improves the exact value from 0.8003
to 0.8062, changing 633 of the 700 states.

* Imitation rules (``mode="imitate"``): depth-3 to depth-6 trees put whole populations on one
  action; their exact value is 0.60, far below current practice (about -3,300% of the gain).
* Exception rules (``mode="exceptions"``, the card's default): the tree names three or four
  states where to deviate and leaves every other state to current practice.
  - As stored (``predict``'s output: the clinicians' observed frequencies per state, the overall
    frequencies for the 29 of 700 states seen in fewer than 11 episodes, 0.4% of rows): exact
    0.7959 for the estimate alone (-72% of the gain), and the rules lose a little less (-54% at
    depth 3, -50% at depth 4).
  - As deployed (the clinicians decide where no rule applies): exact 0.8013 and 0.8015, 17% and
    21% of SPIBB's gain kept, never below practice.
  They cannot keep 80%: an oracle that follows SPIBB in the k states whose switch gains most
  (occupancy under practice x advantage) and current practice elsewhere keeps 26% (k = 4), 44%
  (k = 8), 71% (k = 16) and 139% (k = 64; some of SPIBB's changes lose); a depth-4 tree of
  one-hot splits names at most about 8 states.

The issue's 80% target is therefore not met on Garnet (strict xfail below, so the day it passes
the marker must go). What the card must do is not hide it: the card test checks its off-policy
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
                                       "depth-3/4 exception rules keep -54% / -50% as "
                                       "stored, 17% / 21% as deployed (exact), an 8-state "
                                       "oracle 44%")
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


def _deployed_value(mdp, ds, tree):
    """Exact value of exception rules as deployed: the clinicians' own (true) distribution in
    every state the rules leave to current practice, the rules' elsewhere."""
    table = garnet.garnet_policy_table(mdp, ds, tree)[0].copy()
    st = ds.categorical[:, 0]
    defer = np.unique(st[np.asarray(tree.usual, dtype=bool)[tree.apply(ds)]])
    table[defer] = mdp.behavior_policy[defer]
    return mdp.value(table)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_exception_rules_as_deployed_never_fall_below_practice(setup, depth):
    """As deployed (the clinicians decide where no rule applies), the exception rules keep
    current practice's exact value and add what their few named states gain; the stored
    estimate of practice is what costs (above). Measured, depth 3 / 4: exact 0.8013 / 0.8015
    against practice's 0.8003 (SPIBB 0.8062: 17% / 21% of its gain kept)."""
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    v = _deployed_value(mdp, ds, tree)
    print(f"\ngarnet depth {depth}: deployed rules {v:.4f}, practice {vb:.4f}, "
          f"SPIBB {vl:.4f}, {100 * (v - vb) / (vl - vb):.0f}% of the gain kept")
    assert v >= vb - 1e-9
    assert v < vb + 0.8 * (vl - vb)  # and still far from the 80% (strict xfail above)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_card_evidence_reports_the_loss(setup):
    """The card's evidence agrees with the exact truth: the exception rules keep far less than
    80% of SPIBB's gain, and so does the card's DR estimate, with a caveat naming the share; the
    rules' mass on rarely taken actions stays near SPIBB's (every unnamed state keeps practice's
    own distribution), far from the imitation rules' 68%. Measured: exact -220% kept (10%
    before states seen in fewer than 11 episodes got the overall frequencies), DR n/a (the
    source's DR gain within 2 standard errors of none; 42% before that rule: DR of the rules
    0.814 [0.788, 0.839] against 0.808 observed), 10.6% of the rules' mass on rarely taken
    actions (SPIBB 9.3%)."""
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
    kept_dr = card.value["improvement_kept"]["dr"]
    print(f"\ngarnet card: true kept {100 * kept_true:.0f}%, DR of the rules {dr['value']:.3f} "
          f"[{dr['ci'][0]:.3f}, {dr['ci'][1]:.3f}], behaviour {beh:.3f}, DR kept "
          f"{'n/a' if kept_dr is None else f'{100 * kept_dr:.0f}%'}, rules' mass on rarely "
          f"taken actions {card.support['rules_pct']:.1f}% (SPIBB "
          f"{card.support['source_pct']:.1f}%)")
    assert kept_true < 0.8
    # SPIBB's gain (exact +0.006) is within 2 standard errors of its DR value on the held-out
    # 30%: the card reports no share (a ratio to a gain that may be zero) and says why;
    # before that rule it read "keep only 42%"
    assert kept_dr is None or kept_dr < 0.8
    assert any(("keep only" in c) if kept_dr is not None else ("too noisy for a ratio" in c)
               for c in card.caveats), card.caveats
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


@pytest.mark.slow
def test_set_valued_splits_would_not_reach_80_percent(setup):
    """CART splits a categorical column into two *sets* of levels ("state is one of ..."), so 16
    leaves could name any number of states, not the 8 that one-hot splits name. They would still
    not keep 80%: the rules learn from the exception labels (``deviation_targets``), and even a
    lookup that deviates, with SPIBB's most likely action, in every state whose weighted
    majority label is a deviation (35 of 700 states) keeps 58% of SPIBB's exact gain; a depth-3
    or depth-4 tree over the states ordered by their deviation label (rpart's and LightGBM's
    ordering trick for set splits) keeps 23-26% (measured 2026-12-05)."""
    from sklearn.tree import DecisionTreeClassifier

    from equicare.explain import fit_usual_care
    from equicare.explain._distill import DistillConfig, deviation_targets, source_q

    mdp, ds, pol, vb, vl = setup
    probs = pol.action_probs(ds)
    b = fit_usual_care(ds, "cells", random_state=1).action_probs(ds)
    q = source_q(ds, probs, DistillConfig(q_model="tabular", mode="exceptions"), 2)
    y, w = deviation_targets(ds, probs, b, q, 0.1, 0.2)
    A, S, st = ds.n_actions, mdp.n_states, ds.categorical[:, 0]
    W = np.zeros((S, A + 1))
    np.add.at(W, (st, y), w)
    majority = np.argmax(W, axis=1)
    seen = np.zeros(S, dtype=bool)
    seen[np.unique(st)] = True
    named = seen & (majority < A)

    def kept(deviate, acts):
        table = mdp.behavior_policy.copy()
        table[deviate] = np.eye(A)[acts[deviate]]
        return (mdp.value(table) - vb) / (vl - vb)

    lookup = kept(named, np.minimum(majority, A - 1))
    # the set split's ordering: usual-care states first, then the states of each deviation
    # action together (actions by total deviation weight), purest first
    total = np.bincount(majority[named], weights=W[named].max(axis=1), minlength=A)
    rank = np.empty(A, dtype=np.int64)
    rank[np.argsort(-total)] = np.arange(A)
    purity = W.max(axis=1) / np.maximum(W.sum(axis=1), 1e-12)
    key = np.where(majority < A, 1 + rank[np.minimum(majority, A - 1)] + (1 - purity) / 2,
                   purity / 2)
    tree_kept = []
    for depth in (3, 4):
        tree = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=20, random_state=0)
        tree.fit(key[st][:, None], y, sample_weight=w)
        leaf_best = tree.classes_[np.argmax(tree.tree_.value[:, 0, :], axis=1)]
        best = leaf_best[tree.apply(key[:, None])]
        tree_kept.append(kept(seen & (best < A), np.minimum(best, A - 1)))
    print(f"\ngarnet set splits: lookup of {named.sum()} labelled states keeps {100 * lookup:.0f}%"
          f", depth 3/4 trees {100 * tree_kept[0]:.0f}% / {100 * tree_kept[1]:.0f}%")
    assert 20 <= named.sum() <= 60
    assert lookup < 0.8 and max(tree_kept) < lookup
