"""Training-time fairness terms: the parity penalty, group-DRO weights, and the group-robust
option against the exact values of a tabular MDP whose groups want different actions."""

import numpy as np
import pytest
import torch

from equicare.learn import AWR, BC, CQL
from equicare.learn._fairness import GroupDRO, episode_values, group_means, parity_penalty
from tests.learn.tabular_mdp import TabularMDP


def test_group_means_and_parity_penalty_by_hand():
    p = torch.tensor([0.1, 0.3, 0.5, 0.9])
    g = torch.tensor([0, 0, 2, 2])
    means, present = group_means(p, g, 3)
    np.testing.assert_allclose(means.numpy(), [0.2, 0.0, 0.7], atol=1e-7)
    assert present.tolist() == [True, False, True]
    # overall mean 0.45: (0.2 - 0.45)^2 + (0.7 - 0.45)^2, the absent group adds nothing
    assert float(parity_penalty(p, g, 3)) == pytest.approx(0.125, abs=1e-7)


def test_group_dro_plain_at_lambda_zero_and_weights_follow_the_signal():
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    g = torch.tensor([0, 0, 1, 1])
    dro = GroupDRO(2, step=0.5)
    assert float(dro.objective(loss, g, 0.0)) == pytest.approx(2.0)
    assert torch.equal(dro.q, torch.tensor([0.5, 0.5]))  # untouched at lambda 0
    for _ in range(3):
        j = dro.objective(loss, g, 1.0)
    assert float(dro.q.sum()) == pytest.approx(1.0)
    assert dro.q[1] > 0.9  # the group with the larger loss gets the weight
    assert float(j) == pytest.approx(float(dro.q[0] * 1.0 + dro.q[1] * 3.0), rel=1e-6)
    # an explicit signal overrides the loss: group 0 is "worse off" now
    dro2 = GroupDRO(2, step=0.5)
    dro2.objective(loss, g, 1.0, signal=torch.tensor([2.0, 2.0, -2.0, -2.0]))
    assert dro2.q[0] > dro2.q[1]


# ----------------------------------------------------------------------------- exact truth
@pytest.fixture(scope="module")
def hidden_groups():
    """Group B (25% of episodes) is penalised by 1 for every action of level != l1; the policy
    never sees the group, so a pooled objective serves group A."""
    mdp = TabularMDP(behaviour_bias=0.0, behaviour_noise=0.5, group_effect=1.0, share_b=0.25)
    return mdp, mdp.dataset(1500, random_state=1)


def _worst(mdp, learner):
    pi = mdp.policy_table(learner)
    vals = {g: mdp.value(pi, g) for g in ("A", "B")}
    return min(vals.values()), vals


@pytest.mark.parametrize("algo", ["awr", "cql"])
def test_group_robust_raises_the_worst_groups_exact_value(hidden_groups, algo):
    """Exact values (linear solve) of the learned state-only policies: with group_robust = 0.5
    the worst-off group gains on every seed. AWR's critic reads the group (critic_groups); CQL's
    group-blind Q drives the weights by the group losses (group_robust_signal="auto")."""
    mdp, data = hidden_groups
    gains = []
    for seed in (0, 1):
        res = {}
        for lam in (0.0, 0.5):
            if algo == "awr":
                learner = AWR(n_steps=600, beta=0.1, hidden=(32, 32), valid_fraction=0.0,
                              critic_groups=True, group_robust=lam, seed=seed)
            else:
                learner = CQL(n_steps=600, hidden=(32, 32), valid_fraction=0.0,
                              group_robust=lam, seed=seed)
            learner.fit(data, progress=False)
            res[lam] = _worst(mdp, learner)
            if lam:
                q = dict(zip(learner.group_levels_, learner.group_weights_, strict=True))
                assert q["B"] > q["A"]  # the weights found the worse-off group
        gains.append(res[0.5][0] - res[0.0][0])
        print(f"\n{algo} seed {seed}: worst-group value {res[0.0][0]:.3f} -> {res[0.5][0]:.3f} "
              f"(plain A {res[0.0][1]['A']:.3f} B {res[0.0][1]['B']:.3f}; robust "
              f"A {res[0.5][1]['A']:.3f} B {res[0.5][1]['B']:.3f})")
    assert min(gains) > 0.15


def test_value_signal_survives_a_resume(tmp_path):
    """The value signal is refreshed every 50 steps; a run stopped at step 60 and resumed gives
    the uninterrupted run's weights and group weights (the signal is in the checkpoint).
    Five race/ethnicity groups, so that the standardised signal is not just a sign."""
    from equicare.sim.care import CareManagementSim

    data = CareManagementSim().generate(150, 12, random_state=4).dataset()
    kw = dict(n_steps=90, hidden=(16,), valid_fraction=0.0, critic_groups=True,
              group_robust=0.5, checkpoint_every=30, seed=3)
    full = AWR(**kw).fit(data, progress=False)
    AWR(**{**kw, "n_steps": 60}).fit(data, progress=False, checkpoint_dir=tmp_path / "ck")
    resumed = AWR(**kw).fit(data, progress=False, checkpoint_dir=tmp_path / "ck", resume=True)
    for k, net in full.nets_.items():
        for (n, a), b in zip(net.state_dict().items(), resumed.nets_[k].state_dict().values(),
                             strict=True):
            assert torch.equal(a, b), f"{k}.{n}"
    np.testing.assert_array_equal(full.group_weights_, resumed.group_weights_)
    assert len(full.group_weights_) == 5 and full.group_weights_.max() > 0.21  # they moved


def test_auto_signal_uses_the_value_only_with_a_group_aware_critic(hidden_groups):
    _, data = hidden_groups
    aware = AWR(n_steps=2, hidden=(8,), valid_fraction=0.0, critic_groups=True, group_robust=0.5)
    blind = AWR(n_steps=2, hidden=(8,), valid_fraction=0.0, group_robust=0.5,
                critic_groups=False)
    forced = CQL(n_steps=2, hidden=(8,), valid_fraction=0.0, group_robust=0.5,
                 group_robust_signal="value")
    for m in (aware, blind, forced):
        m.fit(data, progress=False)
    assert aware._uses_value_signal() and forced._uses_value_signal()
    assert not blind._uses_value_signal()
    assert aware._group_signal is not None and aware._group_signal.shape == (2,)
    assert blind._group_signal is None
    # BC has no value estimate: even with "value" its weights follow the group losses
    bc = BC(n_steps=5, hidden=(8,), valid_fraction=0.0, group_robust=1.0,
            group_robust_signal="value", group_robust_step=1.0).fit(data, progress=False)
    assert bc._group_signal is None and not np.allclose(bc.group_weights_, 0.5)


def test_awr_critic_reads_the_group_by_default_only_when_group_robust(hidden_groups):
    _, data = hidden_groups
    from equicare.models._inputs import input_names

    n_feat = len(input_names(data, embedded=True))  # one code column per categorical state
    plain = AWR(n_steps=2, hidden=(8,), valid_fraction=0.0).fit(data, progress=False)
    robust = AWR(n_steps=2, hidden=(8,), valid_fraction=0.0, group_robust=0.3).fit(
        data, progress=False)
    assert plain.nets_["critic"].spec.n_features == n_feat
    assert robust.nets_["critic"].spec.n_features == n_feat + 2  # one-hot of groups A, B
    assert robust._uses_value_signal()


def _chain_episodes(n: int, seed: int, window: int):
    """Behaviour episodes of a 3-state MDP with a terminal exit, censored after ``window``.

    Returns the row arrays of :func:`episode_values` plus the exact ``V^pi``, ``Q^pi`` tables
    and each episode's initial state.
    """
    rng = np.random.default_rng(seed)
    S, A, gamma = 3, 2, 0.9
    R = np.array([[0.0, 1.0], [0.5, -0.2], [2.0, 0.3]])
    P = np.zeros((S, A, S + 1))  # last column: terminal
    P[:, 0] = [[0.6, 0.2, 0.1, 0.1], [0.1, 0.5, 0.3, 0.1], [0.3, 0.3, 0.2, 0.2]]
    P[:, 1] = [[0.1, 0.4, 0.3, 0.2], [0.2, 0.2, 0.5, 0.1], [0.1, 0.6, 0.1, 0.2]]
    b = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    pi = np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]])
    Ppi = np.einsum("sa,sat->st", pi, P[:, :, :S])
    V = np.linalg.solve(np.eye(S) - gamma * Ppi, (pi * R).sum(1))
    Q = R + gamma * P[:, :, :S] @ V
    s = rng.integers(0, S, n)
    s0 = s.copy()
    alive = np.ones(n, dtype=bool)
    rows = []  # (episode, step, state, action, reward, terminal)
    for t in range(window):
        a = (rng.random(n) < b[s, 1]).astype(int)
        cdf = P.cumsum(axis=2)[s, a]
        nxt = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), S)
        ep = np.flatnonzero(alive)
        rows.append(np.c_[ep, np.full(ep.size, t), s[ep], a[ep], R[s[ep], a[ep]],
                          nxt[ep] == S])
        alive &= nxt != S
        s = np.where(nxt == S, 0, nxt)
        if not alive.any():
            break
    x = np.concatenate(rows)
    x = x[np.lexsort((x[:, 1], x[:, 0]))]
    ep, step = x[:, 0].astype(int), x[:, 1].astype(int)
    last = np.r_[ep[1:] != ep[:-1], True]
    st, ac = x[:, 2].astype(int), x[:, 3].astype(int)
    t = {k: torch.as_tensor(v) for k, v in dict(
        v=V[st], q=Q[st, ac], r=x[:, 4], episode=ep, step=step, last=last,
        done=x[:, 5] > 0).items()}
    return t, gamma, n, V, s0


def test_episode_values_are_unbiased_for_the_exact_q_and_the_return_for_a_flat_critic():
    # the performance-difference identity (episodes end at the terminal exit)
    t, gamma, n, V, s0 = _chain_episodes(20_000, 0, window=200)
    assert not (t["last"] & ~t["done"]).any()
    est = episode_values(t["v"], t["q"], t["r"], gamma, t["episode"], t["step"], t["last"],
                         t["done"], n).numpy()
    se = est.std() / np.sqrt(n)
    assert abs(est.mean() - V[s0].mean()) < 3 * se
    # a flat critic gives the observed discounted return (the behaviour's value, not pi's)
    flat = torch.zeros_like(t["v"])
    ret = episode_values(flat, flat, t["r"], gamma, t["episode"], t["step"], t["last"],
                         t["done"], n).numpy()
    disc = gamma ** t["step"].numpy() * t["r"].numpy()
    np.testing.assert_allclose(ret, np.bincount(t["episode"].numpy(), weights=disc), atol=1e-12)
    assert abs(ret.mean() - V[s0].mean()) > 10 * se


def test_episode_values_by_hand_with_a_censored_episode():
    # episode 0: 3 rows, terminal; episode 1: 2 rows, censored (the window closed)
    v = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    q = torch.tensor([0.5, 2.5, 1.0, 3.0, 4.5])
    r = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.6])
    episode = torch.tensor([0, 0, 0, 1, 1])
    step = torch.tensor([0, 1, 2, 0, 1])
    last = torch.tensor([False, False, True, False, True])
    done = torch.tensor([False, False, True, False, False])
    g = 0.9
    full = episode_values(v, q, r, g, episode, step, last, done, 2).numpy()
    e0 = (0.1 + 0.5) + g * (0.2 - 0.5) + g**2 * (0.3 + 2.0)
    e1 = (0.4 + 1.0) + g * (0.6 + 0.5) + g * (4.5 - 0.6)  # + the critic's censored rest
    np.testing.assert_allclose(full, [e0, e1], atol=1e-12)
    one = episode_values(v, q, r, g, episode, step, last, done, 2, n_corrected=1).numpy()
    np.testing.assert_allclose(one, [0.1 + 0.5 + g * 0.2 + g**2 * 0.3,
                                     0.4 + 1.0 + g * 0.6 + g * (4.5 - 0.6)], atol=1e-12)
    # a state-value critic of the behaviour: the return, and V(s) - r at a censored end
    beh = episode_values(v, None, r, g, episode, step, last, done, 2).numpy()
    np.testing.assert_allclose(beh, [0.1 + g * 0.2 + g**2 * 0.3, 0.4 + g * 0.6 + g * (5.0 - 0.6)],
                               atol=1e-12)


def test_value_signal_points_at_the_worst_off_group_on_long_stays():
    """A critic that has not propagated 30-step stays back must not steer DRO.

    On this Garnet panel (gamma 1) the critic alone rated the long-stay group g0 worst after a
    few hundred steps (its exact behaviour value is the highest) and DRO moved all the weight
    there; the signal now follows the observed returns plus the first-step advantage.
    """
    from equicare.data import from_frame
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import GarnetConfig, garnet_panel, garnet_target_policies

    cfg = GarnetConfig(n_states=50, n_actions=5, n_successors=3)
    mdp, pan = garnet_panel(cfg, 1500, 11)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    truth = mdp.group_values(garnet_target_policies(mdp)["behavior"])
    worst = min(truth, key=truth.get)
    lengths = ds.episode_lengths
    model = AWR(n_steps=300, seed=0, group_robust=1.0, eval_every=300).fit(ds, progress=False)
    levels = [str(g) for g in model.group_levels_]
    assert levels[int(np.argmax(model._dro.q.numpy()))] == worst
    # the panel has the long stays that made the critic-only signal fail
    g = np.asarray(ds.group_labels("group")).astype(str)
    g = g[ds.episode_offsets[:-1]] if g.size == ds.n_steps else g
    assert max(lengths[g == lv].mean() for lv in levels) > 25
