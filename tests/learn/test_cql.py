import numpy as np
import pytest

from equicare.learn import CQL


def test_cql_reaches_90pct_of_optimal_improvement(mdp, tab_data):
    """Tabular MDP, exact values: (V(cql) - V(b)) / (V* - V(b)) >= 0.9."""
    cql = CQL(n_steps=1000, alpha=0.3, hidden=(32, 32), valid_fraction=0.0).fit(
        tab_data, progress=False)
    v_b, v_star = mdp.value(mdp.behaviour), mdp.value(mdp.optimal_policy())
    v = mdp.value(mdp.policy_table(cql))
    ratio = (v - v_b) / (v_star - v_b)
    print(f"\nCQL tabular: V(b)={v_b:.3f} V*={v_star:.3f} V(cql)={v:.3f} "
          f"improvement ratio={ratio:.3f}")
    assert ratio >= 0.9


def test_fitted_q_without_penalty_matches_q_star(mdp, tab_data):
    """alpha = 0 is fitted-Q iteration: Q close to the exact Q* on the support."""
    cql = CQL(n_steps=1500, alpha=0.0, hidden=(32, 32), valid_fraction=0.0,
              target_update_interval=50).fit(tab_data, progress=False)
    q = cql.scores(mdp.probe())
    q_star = mdp.q_optimal()[:, mdp.support]
    err = np.abs(q - q_star)
    print(f"\nfitted-Q: mean |Q - Q*| = {err.mean():.3f} (Q* spread {q_star.std():.3f})")
    assert err.mean() < 0.6


def test_conservative_penalty_moves_towards_behaviour(mdp, tab_data):
    """Larger alpha -> Q ordering closer to behaviour frequencies (CQL's conservatism)."""
    kl = {}
    for alpha in (0.0, 5.0):
        cql = CQL(n_steps=300, alpha=alpha, temperature=1.0, hidden=(32, 32),
                  valid_fraction=0.0).fit(tab_data, progress=False)
        p = mdp.policy_table(cql)[:, mdp.support]
        b = mdp.behaviour[:, mdp.support]
        kl[alpha] = float((b * np.log(b / np.maximum(p, 1e-12))).sum(axis=1).mean())
    assert kl[5.0] < kl[0.0]


def test_factored_q_and_greedy_policy(mdp, small_data):
    cql = CQL(n_steps=40, factored_q=True, policy="greedy", hidden=(16,),
              valid_fraction=0.0).fit(small_data, progress=False)
    p = cql.action_probs(small_data)
    assert set(np.unique(p)) <= {0.0, 1.0}
    np.testing.assert_array_equal(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(cql.predict(small_data), p.argmax(axis=1))
    # additive Q: Q(s, a) - Q(s, a') for two actions differing only in 'level' is the same
    # for every 'kind' (where both combinations are in the support)
    q = cql.scores(small_data)
    sup = list(cql.support_)
    pairs = [(k * 4 + 0, k * 4 + 1) for k in range(3) if k * 4 in sup and k * 4 + 1 in sup]
    diffs = [q[:, sup.index(a)] - q[:, sup.index(b)] for a, b in pairs]
    for d in diffs[1:]:
        np.testing.assert_allclose(d, diffs[0], rtol=1e-5, atol=1e-5)


def test_cql_save_load_round_trip(tmp_path, small_data):
    cql = CQL(n_steps=30, hidden=(16,), valid_fraction=0.0).fit(small_data, progress=False)
    cql.save(tmp_path / "cql")
    back = CQL.load(tmp_path / "cql")
    np.testing.assert_array_equal(cql.action_probs(small_data), back.action_probs(small_data))


def test_parity_penalty_refuses_a_greedy_deployment():
    import re

    from equicare.exceptions import InvalidParameterError
    from equicare.learn import CQLConfig
    from equicare.learn._cql import MSG_GREEDY_FAIR

    # a user mistake (the CLI's exit 2), not a plain ValueError (an "internal error")
    with pytest.raises(InvalidParameterError, match=re.escape(MSG_GREEDY_FAIR)):
        CQLConfig(policy="greedy", fair_action="kind=c", fair_lambda=1.0)
    with pytest.raises(InvalidParameterError, match=re.escape(MSG_GREEDY_FAIR)):
        CQL(policy="greedy", fair_action="kind=c", fair_lambda=0.5)
    CQLConfig(policy="greedy", fair_action="kind=c", fair_lambda=0.0)  # no penalty: fine
    CQLConfig(policy="softmax", fair_action="kind=c", fair_lambda=1.0)


@pytest.mark.slow
def test_parity_penalty_constrains_the_deployed_softmax_policy():
    """Biased practice (group B gets kind=c 2.7x less often): the penalty shrinks the exact
    allocation gap of the deployed (softmax) CQL policy, computed on the tabular MDP; the
    greedy policy of the same Q-network is not what the penalty constrained."""
    from dataclasses import replace

    from tests.learn.tabular_mdp import TabularMDP

    mdp = TabularMDP(behaviour_bias=0.0, behaviour_noise=0.5, group_disparity=1.0,
                     group_feature=True)
    data = mdp.dataset(600, random_state=3)
    mask = data.action_space.parse_action_set("kind=c")
    gaps = {}
    for lam in (0.0, 10.0):
        extra = {"fair_action": "kind=c", "fair_lambda": lam} if lam else {}
        cql = CQL(n_steps=300, alpha=1.0, temperature=1.0, hidden=(32, 32), valid_fraction=0.0,
                  **extra).fit(data, progress=False)
        alloc = {g: mdp.allocation(mdp.policy_table(cql, g), mask, g) for g in ("A", "B")}
        gaps[lam] = abs(alloc["A"] - alloc["B"])
    greedy = replace(cql.policy_, mode="greedy")
    alloc = {g: mdp.allocation(mdp.policy_table(greedy, g), mask, g) for g in ("A", "B")}
    gap_greedy = abs(alloc["A"] - alloc["B"])
    print(f"\nCQL softmax kind=c parity gap: lambda=0 {gaps[0.0]:.4f}, lambda=10 "
          f"{gaps[10.0]:.4f}; greedy of the lambda=10 Q: {gap_greedy:.4f}")
    assert gaps[0.0] > 0.05
    assert gaps[10.0] < 0.5 * gaps[0.0]
    assert gap_greedy > gaps[10.0]  # (0.036 against 0.020 at these seeds)


def test_rewards_in_dollars_are_warned_and_a_reward_weight_silences_it(mdp, tab_data):
    """Temperature and alpha are in reward units. The tabular MDP's rewards times 1,000
    (costs in dollars, as a Medicaid panel's) made the default softmax greedy: the learned
    policy put at least 99% on one action in every state, silently; at the unit scale it
    does not, and no warning is given."""
    import warnings

    from equicare.exceptions import DataWarning
    from equicare.learn._cql import MSG_REWARD_SCALE

    name = tab_data.reward_names[0]
    dollars = tab_data.with_reward_weights({name: 1000.0})
    msg = MSG_REWARD_SCALE.split("{sd}")[0]
    with pytest.warns(DataWarning, match=msg.replace("(", r"\(").replace("'", ".")):
        big = CQL(n_steps=300, hidden=(32, 32), valid_fraction=0.0).fit(dollars,
                                                                         progress=False)
    assert (mdp.policy_table(big)[:, mdp.support].max(axis=1) > 0.99).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        unit = CQL(n_steps=300, hidden=(32, 32), valid_fraction=0.0).fit(tab_data,
                                                                         progress=False)
    assert not (mdp.policy_table(unit)[:, mdp.support].max(axis=1) > 0.99).all()
