from __future__ import annotations

import numpy as np
import pytest

from equicare.sim.mediation import (
    EFFECT_KEYS,
    ETA_KEYS,
    DiscreteMediationMDP,
    effects_from_etas,
    random_mediation_mdp,
    toy1,
    toy2,
    toy_target,
)

TOY1 = {"ide": -1.27668596, "ime": -1.22246477, "dde": -2.98224644, "dme": -0.08468489}
TOY2 = {"ide": -1.13541377, "ime": -1.16694206, "dde": 0.0, "dme": 0.0}


@pytest.mark.parametrize("make, truth", [(toy1, TOY1), (toy2, TOY2)])
def test_exact_toy_effects_match_paper(make, truth):
    eff = make().exact_effects(toy_target(), 0)
    for k, v in truth.items():
        assert eff[k] == pytest.approx(v, abs=1e-6), k
    assert eff["total"] == pytest.approx(sum(eff[k] for k in ("ide", "ime", "dde", "dme")))


def test_toy1_etas_and_stationary_distributions():
    mdp = toy1()
    eta = mdp.exact_etas(toy_target(), 0)
    # values of the reference implementation of Ge et al. (2023)
    ref = [2.39701065, 3.67369661, 4.89616138, 7.87840782, 7.96309271]
    assert [eta[k] for k in ETA_KEYS] == pytest.approx(ref, abs=1e-7)
    d = mdp.stationary_distributions(toy_target(), 0)
    # the reference implementation's state ratios were computed by simulation (3 decimals)
    assert d["pi_e"][1] == pytest.approx(0.3207, abs=1e-3)
    assert d["a0"][1] == pytest.approx(0.9361, abs=1e-3)
    assert d["G"][1] == pytest.approx(0.9191, abs=1e-3)
    for k, dist in d.items():
        P = {"pi_e": np.einsum("sa,sam,samt->st", toy_target(), mdp.mediator, mdp.transition),
             "a0": np.einsum("sm,smt->st", mdp.mediator[:, 0], mdp.transition[:, 0])}.get(k)
        if P is not None:
            np.testing.assert_allclose(dist @ P, dist, atol=1e-12)


def test_exact_etas_agree_with_monte_carlo_on_random_model():
    # eta(pi_e) and eta(a0) are ordinary long-run averages: check them by simulation
    mdp = random_mediation_mdp(4, 2, 3, random_state=3)
    target = np.tile([0.3, 0.7], (4, 1))
    eta = mdp.exact_etas(target, 0)
    for pol, key in ((target, "pi_e"), (0, "a0")):
        s = mdp.sample(400, 300, random_state=1, policy=pol)
        mc = s.rewards[s.time >= 50].mean()
        se = s.rewards[s.time >= 50].std() / np.sqrt(400 * 250 / 5)   # conservative (autocorr.)
        assert abs(mc - eta[key]) < 4 * se, (key, mc, eta[key])
    eff = effects_from_etas(eta)
    assert set(eff) == set(EFFECT_KEYS)


def test_g_process_equals_target_when_mediator_does_not_depend_on_action():
    mdp = random_mediation_mdp(3, 2, 2, random_state=0)
    pm = mdp.mediator.copy()
    pm[:, 1] = pm[:, 0]
    m2 = DiscreteMediationMDP(init=mdp.init, behavior=mdp.behavior, mediator=pm,
                              reward_mean=mdp.reward_mean, transition=mdp.transition)
    eff = m2.exact_effects(np.tile([0.5, 0.5], (3, 1)), 0)
    assert eff["ime"] == pytest.approx(0, abs=1e-12)
    assert eff["dme"] == pytest.approx(0, abs=1e-12)


def test_sample_shapes_seed_and_frame():
    mdp = toy1()
    a = mdp.sample(7, 5, random_state=11)
    b = mdp.sample(7, 5, random_state=11)
    assert a.n_steps == 35 and a.n_episodes == 7
    assert a.states.shape == (35, 1) and a.mediators.shape == (35, 1)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    np.testing.assert_array_equal(a.next_states[:-1][a.time[:-1] < 4], a.states[1:][a.time[1:] > 0])
    assert set(np.unique(a.rewards)) <= {0.0, 10.0}
    assert np.allclose(a.behavior_prob, mdp.behavior[a.state_index, a.actions])
    df = a.to_frame()
    assert list(df.columns) == ["episode", "time", "s0", "action", "m0", "reward", "propensity"]
    fn = mdp.policy_fn(toy_target())
    assert np.allclose(fn(np.array([[1.0], [0.0]])), toy_target()[[1, 0]])


def test_sampled_mediator_and_behaviour_frequencies():
    mdp = toy1()
    s = mdp.sample(500, 40, random_state=2)
    for st in (0, 1):
        for ac in (0, 1):
            sel = (s.state_index == st) & (s.actions == ac)
            assert abs(s.mediators[sel, 0].mean() - mdp.mediator[st, ac, 1]) < 0.03


BAD = [
    (dict(init=np.array([0.5, 0.6])), ValueError,
     "The 'init' parameter of DiscreteMediationMDP must be non-negative probabilities"),
    (dict(reward_scale=-1.0), ValueError,
     "The 'reward_scale' parameter of DiscreteMediationMDP must be a positive float. Got -1.0"),
    (dict(mediator=np.ones((2, 2, 3)) / 3), ValueError,
     "The 'reward_mean' parameter of DiscreteMediationMDP must be an array of shape (2, 2, 3)"),
]


@pytest.mark.parametrize("change, err, msg", BAD)
def test_bad_models(change, err, msg):
    m = toy1()
    kw = dict(init=m.init, behavior=m.behavior, mediator=m.mediator, reward_mean=m.reward_mean,
              transition=m.transition, reward_dist="bernoulli", reward_scale=10.0)
    kw.update(change)
    with pytest.raises(err, match=msg.replace("(", r"\(").replace(")", r"\)")):
        DiscreteMediationMDP(**kw)


def test_bad_sample_and_policy_arguments():
    m = toy1()
    with pytest.raises(ValueError, match="The 'n_episodes' parameter"):
        m.sample(0, 5)
    with pytest.raises(ValueError, match="must be an action in"):
        m.exact_etas(toy_target(), 2)
    with pytest.raises(ValueError, match="is not a state of toy1"):
        m.state_index(np.array([[0.5]]))
