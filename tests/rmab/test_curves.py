from __future__ import annotations

import functools
import itertools
import re

import numpy as np
import pytest

from equicare.rmab import RMABDomain, allocate_budget, group_value_curves, load_domain


def random_domain(rng, n_per_group=(4, 4), S=2, helpful=True):
    N = sum(n_per_group)
    P = rng.dirichlet(np.ones(S), size=(N, 2, S))
    R = np.sort(rng.random((N, S)), axis=1)
    if helpful:  # acting shifts mass towards the best state: curves are non-decreasing
        P[:, 1] = 0.4 * P[:, 0] + 0.6 * np.eye(S)[-1]
    groups = np.repeat(np.arange(len(n_per_group)), n_per_group)
    return RMABDomain(P=P, R=R, init=np.full(S, 1 / S), groups=groups)


def exact_group_value(P, R, states, b, h):
    """Optimal expected total reward of a few arms that act on exactly b arms at every step.

    Exhaustive dynamic programming over joint states and every size-b subset of arms.
    """
    n, _, S, _ = P.shape
    joint = list(itertools.product(range(S), repeat=n))
    idx = {js: i for i, js in enumerate(joint)}
    rew = np.array([sum(R[i, js[i]] for i in range(n)) for js in joint])
    subsets = list(itertools.combinations(range(n), b))
    trans = []
    for A in subsets:  # joint transition matrix for acting on subset A
        T = np.ones((1, 1))
        for i in range(n):
            T = np.kron(T, P[i, 1 if i in A else 0])
        trans.append(T)
    V = np.zeros(len(joint))
    for _ in range(h):
        V = rew + np.max(np.stack([T @ V for T in trans]), axis=0)
    return V[idx[tuple(int(s) for s in states)]]


@pytest.mark.parametrize("S, sizes, h", [(2, (4, 4), 4), (3, (3, 3), 3), (2, (5, 3), 4)])
def test_curves_upper_bound_exhaustive_optimum(S, sizes, h):
    rng = np.random.default_rng(S * 10 + h)
    for trial in range(3):
        d = random_domain(rng, sizes, S, helpful=trial != 2)
        st = rng.integers(0, S, d.n_arms)
        curves = {m: group_value_curves(d, st, remaining=h, method=m)
                  for m in ("index", "reference", "exact")}
        for g in range(d.n_groups):
            arms = np.flatnonzero(d.groups == g)
            for b in range(len(arms) + 1):
                opt = exact_group_value(d.P[arms], d.R[arms], st[arms], b, h)
                for m, c in curves.items():
                    assert c.curve(g)[b] >= opt - 1e-9, (m, g, b, c.curve(g)[b], opt)
                # the exact Lagrangian bound is the tightest; ours never above the reference's
                assert curves["exact"].curve(g)[b] <= curves["index"].curve(g)[b] + 1e-9
                assert curves["index"].curve(g)[b] <= curves["reference"].curve(g)[b] + 1e-9
            # ends are exact: no budget, and every arm acted on
            for b in (0, len(arms)):
                opt = exact_group_value(d.P[arms], d.R[arms], st[arms], b, h)
                assert curves["index"].curve(g)[b] == pytest.approx(opt, abs=1e-9)


def test_exact_equals_lp_through_highs():
    rng = np.random.default_rng(5)
    d = random_domain(rng, (3, 4), 3, helpful=False)
    st = rng.integers(0, 3, d.n_arms)
    ex = group_value_curves(d, st, remaining=3, method="exact")
    lp = group_value_curves(d, st, remaining=3, method="lp")
    np.testing.assert_allclose(ex.values, lp.values, atol=1e-7, equal_nan=True)


def test_index_curve_is_exact_when_groups_share_one_model():
    d = load_domain("synthetic", n_arms=40)
    st = np.arange(40) % 2
    a = group_value_curves(d, st, remaining=6, method="index")
    b = group_value_curves(d, st, remaining=6, method="exact")
    np.testing.assert_allclose(a.values, b.values, atol=1e-8, equal_nan=True)


def test_index_curves_are_concave():
    rng = np.random.default_rng(8)
    d = random_domain(rng, (8, 8), 3, helpful=False)
    c = group_value_curves(d, rng.integers(0, 3, 16), remaining=5)
    for g in range(2):
        assert (np.diff(c.curve(g), 2) <= 1e-9).all()


def _exhaustive_split(curves, sizes, B, objective):
    best, arg = -np.inf, None
    for split in itertools.product(*[range(n + 1) for n in sizes]):
        if sum(split) != B:
            continue
        v = objective([c[b] for c, b in zip(curves, split, strict=True)], sizes)
        if v > best + 1e-12:
            best, arg = v, split
    return best, arg


def _maximin(vals, sizes):
    return min(v / n for v, n in zip(vals, sizes, strict=True))


def _nash(vals, sizes):
    return float(np.sum(np.log(vals)))


@pytest.mark.parametrize("rule, objective", [("mmr", _maximin), ("mnw", _nash)])
def test_allocations_match_exhaustive_search(rule, objective):
    rng = np.random.default_rng(42)
    for trial in range(8):
        sizes = (int(rng.integers(2, 6)), int(rng.integers(2, 5)))
        d = random_domain(rng, sizes, 2 + trial % 2, helpful=True)
        st = rng.integers(0, d.n_states, d.n_arms)
        c = group_value_curves(d, st, remaining=4)
        curves = [c.curve(g) for g in range(2)]
        for B in range(sum(sizes) + 1):
            b = allocate_budget(c, B, rule)
            assert b.sum() == B and (b <= np.array(sizes)).all()
            best, _ = _exhaustive_split(curves, sizes, B, objective)
            got = objective([curves[g][b[g]] for g in range(2)], sizes)
            assert got == pytest.approx(best, abs=1e-9), (rule, trial, B, b)


def test_allocate_examples_and_mnw_eg():
    assert allocate_budget([[0, 1, 2, 3], [0, 5]], 2, "mmr").tolist() == [1, 1]
    # a small group gains a lot in relative terms: plain MNW favours it, MNW-EG corrects
    big = np.linspace(10, 30, 21)  # 20 arms, +1 per action
    small = np.linspace(1, 3, 3)  # 2 arms, +1 per action
    assert allocate_budget([big, small], 2, "mnw").tolist() == [0, 2]
    eg = allocate_budget([big, small], 10, "mnw-eg")
    assert eg.sum() == 10 and eg[1] <= 2
    assert eg[0] >= 8


@pytest.mark.parametrize("args, msg", [
    (([[0, 1], [0, 1]], 3, "mmr"),
     "The 'budget' parameter of allocate_budget must be an int in [0, 2] (the number of arms). "
     "Got 3 instead."),
    (([[0, 1], [0, 1]], -1, "mmr"),
     "The 'budget' parameter of allocate_budget must be an int in [0, 2] (the number of arms). "
     "Got -1 instead."),
    (([[0, 1], [0, 1]], 1, "utilitarian"),
     "The 'rule' parameter of allocate_budget must be one of 'mmr', 'mnw', 'mnw-eg'. "
     "Got 'utilitarian' instead."),
])
def test_allocate_errors(args, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        allocate_budget(*args)


def test_curve_method_error():
    d = load_domain("synthetic", n_arms=20)
    with pytest.raises(ValueError, match=re.escape("The 'method' parameter of group_value_curves")):
        group_value_curves(d, np.zeros(20, dtype=int), method="magic")  # type: ignore[arg-type]


def _nash_gain(vals, sizes, base):
    gains = [v - b0 for v, b0 in zip(vals, base, strict=True)]
    return float(np.sum(np.log(gains))) if min(gains) > 0 else -np.inf


def test_nash_welfare_of_costs_weighs_each_groups_gain_over_no_action():
    """Negative group values (costs): the log is undefined. Before, every unit went to the
    first group listed (the worst-off second group got none); now the split maximises the sum
    of the log gains over no action, checked against every split."""
    rng = np.random.default_rng(7)
    for trial in range(6):
        sizes = (int(rng.integers(3, 7)), int(rng.integers(3, 7)), int(rng.integers(2, 5)))
        curves = []
        for n in sizes:
            steps = np.sort(rng.uniform(50, 400, n))[::-1]  # concave: diminishing savings
            curves.append(-rng.uniform(5e3, 2e4) * n + np.r_[0.0, np.cumsum(steps)])
        base = [c[0] for c in curves]
        for B in range(len(sizes), sum(sizes) + 1):
            b = allocate_budget(curves, B, "mnw")
            assert b.sum() == B and (b <= np.array(sizes)).all()
            best, _ = _exhaustive_split(curves, sizes, B,
                                        functools.partial(_nash_gain, base=base))
            got = _nash_gain([curves[g][b[g]] for g in range(3)], sizes, base)
            assert got == pytest.approx(best, abs=1e-9), (trial, B, b)
    worst_off_last = [np.array([-900.0, -800.0]), np.array([-9000.0, -8000.0, -7100.0])]
    assert allocate_budget(worst_off_last, 2, "mnw").tolist() == [1, 1]
    assert allocate_budget(worst_off_last, 2, "mnw-eg").tolist() == [1, 1]
