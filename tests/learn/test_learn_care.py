"""Learners against the care-management simulator's Monte-Carlo ground truth.

Fast tests use small panels; the full-size claims (2,000 members x 52 weeks) are slow-marked
(``pytest -m slow tests/algos/test_learn_care.py -s`` prints the numbers recorded in
docs/learn.md).
"""

import math

import numpy as np
import pytest

from equicare.learn import AWR, CQL
from equicare.sim import care

CareConfig, CareManagementSim = care.CareConfig, care.CareManagementSim


def _improvement(sim, learner, n_members=1000, n_weeks=26, seed=11):
    tb = sim.true_value(sim.behavior_policy(), n_members=n_members, n_weeks=n_weeks,
                        random_state=seed)
    tl = sim.true_value(learner, n_members=n_members, n_weeks=n_weeks, random_state=seed)
    return tl, tb, (tl.value - tb.value) / math.hypot(tl.se, tb.se)


def test_awr_beats_current_practice_on_a_small_panel():
    sim = CareManagementSim()
    ds = sim.generate(300, 26, random_state=0).dataset()
    awr = AWR(n_steps=300, hidden=(64, 64), valid_fraction=0.0).fit(ds, progress=False)
    tl, tb, z = _improvement(sim, awr)
    print(f"\nsmall panel: V(behaviour)={tb.value:.3f}±{tb.se:.3f}, V(awr)={tl.value:.3f}"
          f"±{tl.se:.3f}, z={z:.1f}")
    assert z > 3


def test_history_policy_inside_the_simulator_matches_offline_probabilities():
    """A rollout's logged propensities (computed by the simulator from window datasets of the
    last k rows) equal the learner's probabilities computed from the full episodes."""
    sim = CareManagementSim(CareConfig(history_dependence=True))
    ds = sim.generate(120, 12, random_state=1).dataset()
    lstm = AWR(n_steps=30, hidden=(16,), encoder="lstm", window=3, valid_fraction=0.0)
    lstm.fit(ds, progress=False)
    panel = sim.rollout(lstm, n_members=60, n_weeks=10, random_state=2).dataset()
    p = lstm.action_probs(panel)
    logged = p[np.arange(panel.n_steps), panel.actions]
    np.testing.assert_allclose(logged, panel.behavior_prob, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- full size
N_MEMBERS, N_WEEKS, N_EVAL = 2000, 52, 4000
FULL = dict(n_steps=3000, hidden=(128, 128), valid_fraction=0.0)


@pytest.fixture(scope="module")
def full_panel():
    sim = CareManagementSim()
    return sim, sim.generate(N_MEMBERS, N_WEEKS, random_state=0).dataset()


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["awr", "cql"])
def test_learned_policies_beat_behaviour_by_3_se(full_panel, algo):
    sim, ds = full_panel
    learner = AWR(**FULL) if algo == "awr" else CQL(alpha=0.1, **FULL)
    learner.fit(ds, progress=False)
    tl, tb, z = _improvement(sim, learner, N_EVAL, N_WEEKS, seed=1)
    print(f"\n{algo}: V(behaviour)={tb.value:.3f}±{tb.se:.3f} V({algo})={tl.value:.3f}"
          f"±{tl.se:.3f} z={z:.1f}")
    assert z > 3


@pytest.mark.slow
def test_lstm_at_least_as_good_as_mlp_with_history_dependence():
    sim = CareManagementSim(CareConfig(history_dependence=True))
    ds = sim.generate(N_MEMBERS, N_WEEKS, random_state=0).dataset()
    values = {}
    for enc, extra in (("mlp", {}), ("lstm", {"window": 4})):
        learner = AWR(encoder=enc, **extra, **FULL).fit(ds, progress=False)
        tv = sim.true_value(learner, n_members=N_EVAL, n_weeks=N_WEEKS, random_state=1)
        values[enc] = (tv.value, tv.se)
    print(f"\nhistory dependence: V(mlp)={values['mlp'][0]:.3f}±{values['mlp'][1]:.3f} "
          f"V(lstm, window 4)={values['lstm'][0]:.3f}±{values['lstm'][1]:.3f}")
    assert values["lstm"][0] >= values["mlp"][0]


# ----------------------------------------------------------------------------- fairness
def _race_aware(sim, n_members=N_MEMBERS):
    """Panel whose model inputs also hold race/ethnicity (one-hot), and a policy wrapper that
    adds it to the simulator's window datasets: a learner with access to race imitates the
    behaviour policy's home-visit disparity."""
    from dataclasses import replace

    from equicare.data import from_frame

    panel = sim.generate(n_members, N_WEEKS, random_state=0)
    man = sim.manifest().to_dict()
    man["dataset"]["categorical_states"] = ["race_ethnicity"]
    ds = from_frame(panel.frame, man, emit_warnings=False)
    levels = ds.categorical_levels[0]

    class RaceAware:
        n_actions = 300

        def __init__(self, learner):
            self.learner, self.window = learner, learner.window

        def action_probs(self, d):
            index = {str(lv): i for i, lv in enumerate(levels)}
            lab = d.group_labels("race_ethnicity").astype(str)
            codes = np.array([index[x] for x in lab], dtype=np.int64)[d.episode_index]
            d2 = replace(d, categorical=codes[:, None].astype(np.int64),
                         categorical_names=("race_ethnicity",), categorical_levels=(levels,),
                         _cache={})
            return self.learner.action_probs(d2)

    return ds, RaceAware


#: Twelve training seeds: the cut varies a lot from seed to seed (standard deviation 17 pp), so
#: six seeds' mean is about as likely to fall below 60% as above it for the same code.
PARITY_SEEDS = tuple(range(12))


def _data_gap(ds, policy, mask):
    """Max - min over race/ethnicity of the mean home-visit probability on the logged rows."""
    p = policy.action_probs(ds)[:, mask].sum(axis=1)
    lab = ds.group_labels("race_ethnicity").astype(str)[ds.episode_index]
    means = [p[lab == g].mean() for g in np.unique(lab)]
    return max(means) - min(means)


@pytest.mark.slow
def test_parity_penalty_cuts_home_visit_gap_and_keeps_value():
    """lambda = 1 on twelve training seeds: the true home-visit gap (allocation under the
    simulator, the policy's own state distribution) falls by >= 60% on average (issue 4's
    bar) and >= 50% at the median, falls on every seed, and every seed keeps >= 95% of the
    value improvement (measured: mean 62%, median 65%, 30-85%, >= 95.7% kept; docs/learn.md).
    The gap on the logged states (what the penalty constrains) is printed beside it."""
    sim = CareManagementSim()
    ds, RaceAware = _race_aware(sim)
    mask = ds.action_space.parse_action_set("modality=home_visit")
    tb = sim.true_value(sim.behavior_policy(), n_members=N_EVAL, n_weeks=N_WEEKS,
                        random_state=1)
    cuts, kept, data_cuts = [], [], []
    for seed in PARITY_SEEDS:
        res = {}
        for lam in (0.0, 1.0):
            fair = {"fair_action": "modality=home_visit", "fair_lambda": lam} if lam else {}
            awr = AWR(beta=1.0, seed=seed, **fair, **FULL).fit(ds, progress=False)
            pol = RaceAware(awr)
            tv = sim.true_value(pol, n_members=N_EVAL, n_weeks=N_WEEKS, random_state=1)
            res[lam] = (tv.parity_gap("race_ethnicity"), tv.value, _data_gap(ds, pol, mask))
        cut = 1 - res[1.0][0] / res[0.0][0]
        keep = (res[1.0][1] - tb.value) / (res[0.0][1] - tb.value)
        data_cut = 1 - res[1.0][2] / res[0.0][2]
        cuts.append(cut)
        kept.append(keep)
        data_cuts.append(data_cut)
        print(f"\nseed {seed}: true home-visit gap {100 * res[0.0][0]:.2f}pp -> "
              f"{100 * res[1.0][0]:.2f}pp ({100 * cut:.0f}% cut); on the logged states "
              f"{100 * res[0.0][2]:.2f}pp -> {100 * res[1.0][2]:.2f}pp ({100 * data_cut:.0f}% "
              f"cut); value {res[0.0][1]:.3f} -> {res[1.0][1]:.3f} ({100 * keep:.1f}% of the "
              f"improvement over behaviour {tb.value:.3f} kept)")
    print(f"true gap: mean cut {100 * np.mean(cuts):.0f}%, median {100 * np.median(cuts):.0f}%, "
          f"smallest {100 * min(cuts):.0f}%; logged states: mean cut "
          f"{100 * np.mean(data_cuts):.0f}%; smallest improvement kept {100 * min(kept):.1f}%")
    assert np.mean(cuts) >= 0.6
    assert np.median(cuts) >= 0.5
    assert min(cuts) > 0
    assert min(kept) >= 0.95


@pytest.mark.slow
def test_group_robust_raises_worst_group_value():
    """A real trade-off: home visits work worse for black and hispanic members
    (``underserved_home_visit_bonus=-1.5``) and the state-only policy cannot tell the groups
    apart, so the pooled objective serves the majority. With a group-aware critic and
    group_robust = 1 the worst-off group of the plain policy gains true value on every seed,
    by more than 3 paired standard errors (common random numbers)."""
    sim = CareManagementSim(CareConfig(underserved_home_visit_bonus=-1.5))
    ds = sim.generate(N_MEMBERS, N_WEEKS, random_state=0).dataset()
    n_eval = 8000
    for seed in (0, 1, 2):
        res = {}
        for lam in (0.0, 1.0):
            awr = AWR(critic_groups=True, group_robust=lam, seed=seed, **FULL)
            res[lam] = sim.true_value(awr.fit(ds, progress=False), n_members=n_eval,
                                      n_weeks=N_WEEKS, random_state=1)
        plain = res[0.0].by_group["race_ethnicity"]
        worst = min(plain, key=lambda g: plain[g]["value"])
        diff, se = res[1.0].paired_difference(res[0.0], "race_ethnicity", worst)
        spread = {lam: max(v["value"] for v in r.by_group["race_ethnicity"].values())
                  - min(v["value"] for v in r.by_group["race_ethnicity"].values())
                  for lam, r in res.items()}
        print(f"\nseed {seed}: worst group {worst} {plain[worst]['value']:.3f} -> "
              f"{res[1.0].by_group['race_ethnicity'][worst]['value']:.3f} (paired "
              f"{diff:+.3f} ± {se:.3f}); overall {res[0.0].value:.3f} -> {res[1.0].value:.3f}; "
              f"best-worst spread {spread[0.0]:.3f} -> {spread[1.0]:.3f}")
        assert diff > 3 * se
        assert spread[1.0] < spread[0.0]
