"""Truth on the Garnet test bed (exact values): where shallow rules cannot imitate a policy.

Garnet's optimal and learned policies vary cell by cell with random action effects over hundreds
of states; no shallow tree over (severity, state) reproduces them. Measured on ``s700_a25_g1``
(5,000 episodes, seed 1; 2026-12-05): SPIBB (N_wedge = 20) improves the exact value from 0.8003
to 0.8062, changing 633 of the 700 states.

* Imitation rules (``mode="imitate"``): depth-3 to depth-6 trees put whole populations on one
  action; their exact value is 0.60, far below current practice (about -3,300% of the gain).
* Exception rules (``mode="exceptions"``, the card's default) with set-valued splits ("state is
  one of ...", issue #18, on by default) and the default ``deviation_margin="auto"`` (every row
  where SPIBB gains is labelled, and each fitted rule must beat practice over its rows together
  by 2 standard errors of the estimate of practice; every rule passes here, so the rules are
  those of margin 0): the tree names the sets of states where to deviate to each of three or
  four actions (about 30 states) and leaves every other state to current practice.
  - As deployed (the clinicians decide where no rule applies): exact 0.8062 and 0.8076, 100%
    and 123% of SPIBB's gain kept at depth 3 and 4 (the margin 0.2, the default before: 23% /
    26%; the row-by-row "auto" before: 68% / 77%; one-hot splits with margin 0.2, before issue
    #18: 17% / 21%).
  - As stored (``predict``'s output: the clinicians' observed frequencies per state; the 29 of
    700 states seen in fewer than 11 episodes, 0.4% of rows, are left to the clinicians): exact
    0.8056 and 0.8070, 89% and 113% (the estimate of practice alone 0.7997, -9% of the gain).
    While those 29 states got the overall frequencies as practice the estimate was worth 0.7959
    (-72%) and the stored rules 26% / 50% (margin 0.2: -48% / -44%). Practice taken from the
    logged propensities instead (exact on every logged (state, action) pair, the rest left to
    the clinicians) keeps less: 57% / 67%, both as stored and as deployed, and so does the true
    practice itself as the estimate: exception rules labelled against the noisy frequencies
    gain more here than against practice's exact distribution.
  This panel is a lucky one: over five panels (``test_set_splits_over_panels``) the deployed
  rules keep 37-123%, and 80% at both depths only here.
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
@pytest.mark.parametrize("depth", [3, 4])
def test_rules_keep_80_percent_on_garnet(setup, depth):
    """As stored, the depth-3/4 exception rules with the defaults keep 89% / 113% of SPIBB's
    exact gain (deployed 100% / 123%): the states seen in fewer than 11 episodes are left to the
    clinicians in the stored estimate of practice too. While they got the overall frequencies
    the stored rules kept 26% / 50% (a strict xfail). Over the five panels of
    :func:`test_set_splits_over_panels`, as stored: 89/113, 48/70, 51/56, 48/49 and 64/85%
    (before: 26/50, -49/-27, 2/8, 48/49 and -44/-23%); 80% at both depths only on this one."""
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    assert vl > vb
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    kept = _kept(mdp, ds, tree, vb, vl)
    print(f"\ngarnet depth {depth}: exact V(behaviour)={vb:.4f} V(spibb)={vl:.4f}, "
          f"{100 * kept:.0f}% of the improvement kept as stored")
    assert kept >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_rules_as_deployed_keep_80_percent_on_garnet(setup, depth):
    """Issue #18's target, as deployed (the clinicians decide where no rule applies), with the
    defaults: set-valued splits and the rule-level noise test (``deviation_margin="auto"``)
    name the ~30 states where SPIBB's deviations pay and keep >= 80% of its exact gain on this
    panel (measured 100% / 123% at depth 3 / 4; one-hot splits 13% / 17%; the margin 0.2, the
    default before, 23% / 26%). Not the rule: see :func:`test_set_splits_over_panels`."""
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    assert tree.info["distill"]["deviation_margin"] == "auto"
    assert any(tree.features[j]["kind"] == "categorical_set" for j in tree.used_features)
    kept = (_deployed_value(mdp, ds, tree) - vb) / (vl - vb)
    print(f"\ngarnet depth {depth}: {100 * kept:.0f}% of the gain kept as deployed")
    assert kept >= 0.8


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_rule_noise_test_keeps_80_percent(setup, depth):
    """``deviation_margin="auto"`` labels every row where SPIBB gains and tests each fitted rule
    on its rows together against the noise of practice's per-state frequencies (about 100
    logged rows a state): every rule the tree names passes (z from 8 to 21), so it keeps what
    margin 0 keeps, exact and as deployed 100% / 123% of SPIBB's gain at depth 3 / 4 (89% /
    113% as stored). The row-by-row test it replaces (2 standard errors per row) kept 68% /
    77%: SPIBB's real gains are mostly below 2 standard errors state by state. The share 0.2:
    23% / 26%."""
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    kept = {}
    for margin in ("auto", 0.2):
        tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                       random_state=0, deviation_margin=margin)
        kept[margin] = (_deployed_value(mdp, ds, tree) - vb) / (vl - vb)
    print(f"\ngarnet depth {depth}: kept as deployed, auto {100 * kept['auto']:.0f}%, "
          f"0.2 {100 * kept[0.2]:.0f}%")
    assert kept["auto"] >= 0.8 and kept["auto"] >= kept[0.2] + 0.5, kept


@pytest.mark.slow
@pytest.mark.parametrize("depth", [3, 4])
def test_exception_rules_stay_near_current_practice(setup, depth):
    """Exact truth: exception rules lose at most 10% of SPIBB's gain beyond what the stored
    estimate of practice itself costs, where imitation rules lose 1,370%. That estimate keeps
    the observed frequencies of the states seen in at least 11 episodes and leaves the 29
    others (0.4% of rows) to the clinicians (no stored frequency describes fewer than 11
    members): exact 0.7997 against practice's 0.8003, -9% of SPIBB's gain (-72% while those
    states got the overall frequencies). Measured with the defaults (set splits,
    ``deviation_margin="auto"``): the rules 89% (depth 3) and 113% (depth 4) as stored (26%
    and 50% with the overall frequencies; with the margin 0.2 then -48% and -44%)."""
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
    current practice's exact value and add what their named states gain; the stored
    estimate of practice is what costs (above). Measured with the defaults, depth 3 / 4: exact
    0.8062 / 0.8076 against practice's 0.8003 (SPIBB 0.8062: 100% / 123% of its gain kept;
    the margin 0.2: 0.8016 / 0.8018, 23% / 26%; one-hot splits 17% / 21%)."""
    from equicare.explain import distill

    mdp, ds, pol, vb, vl = setup
    tree = distill(ds, pol, max_depth=depth, q_model="tabular", mode="exceptions",
                   random_state=0)
    v = _deployed_value(mdp, ds, tree)
    print(f"\ngarnet depth {depth}: deployed rules {v:.4f}, practice {vb:.4f}, "
          f"SPIBB {vl:.4f}, {100 * (v - vb) / (vl - vb):.0f}% of the gain kept")
    assert v >= vb - 1e-9


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_card_evidence_reports_the_loss(setup):
    """The card's evidence agrees with the exact truth: the exception rules keep far less than
    80% of SPIBB's gain, and so does the card's DR estimate, with a caveat naming the share; the
    rules' mass on rarely taken actions stays near SPIBB's (every unnamed state keeps practice's
    own distribution), far from the imitation rules' 68%. Measured with the defaults (set splits,
    ``deviation_margin="auto"``): exact 50% kept as stored, the states seen in fewer than 11
    fitting episodes left to the clinicians (-171% while they got the overall frequencies as
    practice; the margin 0.2 then -208%, one-hot splits -220%), DR n/a (the source's DR gain
    within 2 standard errors of none; DR of the rules 0.833 [0.815, 0.852] against 0.808
    observed; the margin 0.2: 0.814 [0.791, 0.837]), 10.3% of the rules' mass on rarely taken
    actions (SPIBB 9.3%; the margin 0.2: 10.5%)."""
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
    # the stored frequencies put some of their mass on actions rarely taken in the held-out
    # states, where DR cannot see a loss: the card says the rules inherit any (the states left
    # to the clinicians are theirs and not counted)
    assert any(c.startswith("Current practice as stored") and "inherit" in c
               for c in card.caveats)
    # imitation rules put 68% of their mass on actions practice rarely takes in the state
    assert card.support["rules_pct"] < 30.0
    assert card.rules[-1]["text"] == "otherwise: as current practice"
    assert card.rules[-1]["test_share"] > 0.9


def _best_deviating_to(mdp, actions):
    """A policy that in each state follows practice or deviates to one of ``actions``: policy
    iteration over those options on the untruncated process (exact model). Any such policy is
    one a depth-d exception tree with arbitrary sets of states in its splits can express when
    ``actions`` has at most ``2 ** d - 1`` entries (one leaf each, one left to usual care)."""
    S, A = mdp.n_states, mdp.n_actions
    pb, g = mdp.behavior_policy, mdp.config.gamma
    acts = np.asarray(actions, dtype=np.int64)
    choice = np.full(S, acts.size)  # index acts.size: current practice
    for _ in range(100):  # iterations, not states
        pi = pb.copy()
        on = choice < acts.size
        pi[on] = np.eye(A)[acts[choice[on]]]
        v = mdp.state_values(pi, horizon=None)
        q = mdp.reward + g * (mdp._Pt @ v).reshape(S, A)
        q_opt = np.column_stack([q[:, acts], (pb * q).sum(axis=1)])
        keep = q_opt[np.arange(S), choice] >= q_opt.max(axis=1) - 1e-12
        new = np.where(keep, choice, q_opt.argmax(axis=1))
        if np.array_equal(new, choice):
            return pi
        choice = new
    raise AssertionError("policy iteration did not converge")


@pytest.mark.slow
def test_the_selected_policy_spreads_its_gain_too():
    """The policy ``train --select auto`` keeps on this panel (tilted PVI, beta 0.3, min_count 20,
    tau 0.1: exact 0.8003 -> 0.8616) spreads its gain over many states and many actions, and the
    fitted rules keep little of it; the rule format is not what limits them. Measured
    (2026-12-05, exact values, rules as deployed):

    * Following PVI in the k states whose switch gains most (occupancy under practice x
      advantage) keeps 13% (k = 8) and 50% (k = 64). That bounds nothing: with set-valued splits
      one rule names many states.
    * A leaf recommends one action, so a depth-d tree that leaves one leaf to usual care
      imitates PVI in at most ``2 ** d - 1`` of its action groups (the states where PVI's most
      likely action is ``a``). Following PVI in the states of its top 7 / 15 groups (ranked by
      the summed switch gain; 226 / 453 states) keeps 47% / 74% (8 / 16 groups: 51% / 78%).
    * The format itself allows more than PVI: a policy that follows practice or deviates to one
      of the same 7 / 15 actions in each state (policy iteration on the exact model; any such
      policy is a depth-3 / 4 exception tree when its splits may name any set of states) keeps
      116% / 150% of PVI's gain.
    * The fitted rules (defaults) keep 15% / 20% at depth 3 / 4 (as stored: 14% / 20%; 8% / 14%
      while the states seen in fewer than 11 episodes got the overall frequencies as
      practice). Before the merge, the depth-4 tree has 13 leaves but only 5 distinct labels
      (usual care and 4 actions): after four set splits (14-17 states each), CART's impurity
      splits purify those groups (single states, the severity) instead of isolating more of
      them.
    * An ordered encoding of the state column does not help. Levels ordered by their majority
      label, groups ordered by their weighted label mass, and the unions of consecutive groups
      added to the set candidates (in the manner of LightGBM's categorical splits: a threshold
      on the order is such a union): the rules keep 12% / 15% here (the root split becomes
      "any deviation", 357 states), and SPIBB's drop from 100% / 123% to 90% / 100%.
    """
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
    S, A = mdp.n_states, mdp.n_actions
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
    group = np.argmax(table, axis=1)
    ranked = np.argsort(-np.bincount(group, weights=gain, minlength=A))
    groups, best, rules = {}, {}, {}
    for depth in (3, 4):
        top = ranked[:2 ** depth - 1]  # one leaf left to usual care
        named = np.isin(group, top)
        pi = pb.copy()
        pi[named] = table[named]
        groups[depth] = (mdp.value(pi) - vb) / (vl - vb)
        best[depth] = (mdp.value(_best_deviating_to(mdp, top)) - vb) / (vl - vb)
        tree = distill(ds, learner.policy_, max_depth=depth, q_model="tabular",
                       mode="exceptions", random_state=0)
        rules[depth] = (_deployed_value(mdp, ds, tree) - vb) / (vl - vb)
        print(f"\nPVI depth {depth}: its top {top.size} action groups {100 * groups[depth]:.0f}%, "
              f"best policy deviating to those actions {100 * best[depth]:.0f}%, fitted rules as "
              f"deployed {100 * rules[depth]:.0f}%")
    # imitating PVI in 7 action groups cannot keep 80% (47%); the format can (116%)
    assert groups[3] < 0.8 and best[3] > 1.0, (groups, best)
    # the fitted rules keep less than imitating the top groups would (15% / 20%)
    for depth in (3, 4):
        assert -0.1 <= rules[depth] < min(groups[depth], 0.8), (rules, groups)
    assert -0.1 <= _kept(mdp, ds, tree, vb, vl) < 0.8  # as stored, depth 4: 20%


#: Panels of the multi-panel measurement: (preset, seed); SPIBB gains on all of them.
_PANELS = (("s700_a25_g1", 1), ("s700_a25_g1", 2), ("s700_a25_g1", 3), ("s50_a25_g1", 1),
           ("s700_a25_g099", 1))


@pytest.mark.slow
def test_set_splits_over_panels():
    """An honest measurement over panels, so that nobody reads the lucky one as the rule.

    Exception rules as deployed, exact share of SPIBB's gain kept at depth 3 / 4 (5,000
    episodes; measured 2026-12-05), set splits with ``deviation_margin=0`` and ``"auto"``
    against one-hot splits with the default margin 0.2 (the rules before issue #18):

    ==================  ===============  ===========  =============  ============
    panel               sets, margin 0   sets, auto   sets, 0.2      one-hot, 0.2
    ==================  ===============  ===========  =============  ============
    s700_a25_g1 seed 1  100% / 123%      100% / 123%  23% / 26%      17% / 21%
    s700_a25_g1 seed 2  37% / 57%        37% / 57%    5% / 25%       9% / 12%
    s700_a25_g1 seed 3  59% / 65%        59% / 65%    9% / 9%        0% / 5%
    s50_a25_g1 seed 1   48% / 49%        48% / 49%    25% / 30%      27% / 32%
    s700_a25_g099 s. 1  76% / 96%        76% / 96%    25% / 24%      13% / 20%
    ==================  ===============  ===========  =============  ============

    A large gain on every panel, 80% at both depths only on the first. "auto" (each rule tested
    on its rows together against the noise of practice's estimate) keeps every rule margin 0
    fits here; the earlier row-by-row test of "auto" kept 68% / 77%, 30% / 39%, 55% / 62%,
    48% / 49% and 46% / 63%. (On ``s700_a5_g099`` SPIBB is worth less than practice, 0.7040
    against 0.7052; there the set rules are worth 0.7096 / 0.7132 with margin 0 and "auto",
    above both, and 0.7006 / 0.7009 with 0.2.) Asserted: sets (margin 0 and "auto") never
    keep less than one-hot splits minus 2 points, keep at least 30% everywhere, and at least
    one panel stays below 80%.
    """
    from equicare.data import from_frame
    from equicare.explain import distill
    from equicare.learn import SPIBB
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest

    rows = []
    for preset, seed in _PANELS:
        cfg = garnet.garnet_preset(preset)
        mdp, pan = garnet.garnet_panel(cfg, 5000, seed)
        ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
        pol = SPIBB(n_wedge=20).fit(ds).policy_
        vb = mdp.value(mdp.behavior_policy)
        vl = mdp.value(garnet.garnet_policy_table(mdp, ds, pol)[0])
        assert vl > vb
        for depth in (3, 4):
            kept = {}
            for name, kw in (("sets", {"deviation_margin": 0.0}),
                             ("auto", {"deviation_margin": "auto"}),
                             ("one-hot", {"set_splits": False, "deviation_margin": 0.2})):
                tree = distill(ds, pol, max_depth=depth, q_model="tabular",
                               mode="exceptions", random_state=0, **kw)
                kept[name] = (_deployed_value(mdp, ds, tree) - vb) / (vl - vb)
            rows.append((preset, seed, depth, kept["sets"], kept["auto"], kept["one-hot"]))
            print(f"\n{preset} seed {seed} depth {depth}: sets {100 * kept['sets']:.0f}%, "
                  f"auto {100 * kept['auto']:.0f}%, one-hot {100 * kept['one-hot']:.0f}%")
    kept_all = np.array([r[3:] for r in rows])
    sets, auto, hot = kept_all.T
    for k, low in ((sets, 0.3), (auto, 0.3)):  # measured: at least 37% both
        assert np.all(k >= hot - 0.02), rows
        assert k.min() >= low and k.min() < 0.8, rows
