from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from equicare.fairness import allocation_rates, permutation_test

from .conftest import random_panel

#: These unit tests lower min_cell on tiny panels on purpose.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*min_cell=.* is below 11:equicare.exceptions.SmallCellWarning")


def _range(num: np.ndarray, den: np.ndarray, codes: np.ndarray) -> float:
    r = [num[codes == g].sum() / den[codes == g].sum() for g in np.unique(codes)]
    return max(r) - min(r)


def test_matches_exhaustive_enumeration() -> None:
    num = np.array([1.0, 2.0, 0.0, 1.0, 3.0, 0.0])
    den = np.array([2.0, 3.0, 1.0, 2.0, 4.0, 2.0])
    codes = np.array([0, 0, 0, 1, 1, 1])
    obs = _range(num, den, codes)
    # every split of the 6 episodes into two groups of 3 is equally likely under the null
    stats_all = []
    for a in itertools.combinations(range(6), 3):
        c = np.ones(6, dtype=int)
        c[list(a)] = 0
        stats_all.append(_range(num, den, c))
    exact = np.mean(np.asarray(stats_all) >= obs - 1e-12)
    p, t = permutation_test(num, den, codes, n_permutations=20_000, random_state=0)
    assert t[0] == pytest.approx(obs)
    assert p[0] == pytest.approx(exact, abs=0.01)  # Monte-Carlo SE < 0.004


def test_several_columns_and_suppressed_codes() -> None:
    rng = np.random.default_rng(1)
    num = rng.random((50, 3))
    den = np.ones(50)
    codes = np.r_[np.zeros(20, int), np.ones(20, int), -np.ones(10, int)]
    p, t = permutation_test(num, den, codes, n_permutations=200, random_state=2)
    assert p.shape == (3,) and t.shape == (3,)
    for k in range(3):
        pk, tk = permutation_test(num[:, k], den, codes, n_permutations=200, random_state=2)
        assert tk[0] == pytest.approx(t[k])
        assert tk[0] == pytest.approx(_range(num[:40, k], den[:40], codes[:40]))
    assert np.all((p >= 1 / 201) & (p <= 1))


def test_strong_effect_gives_smallest_p() -> None:
    ds = random_panel(600, seed=9, rate_by_group=(0.05, 0.30, 0.05))
    f = allocation_rates(ds, action="modality=home_visit", group="race", n_boot=0,
                         n_permutations=199, random_state=0)
    assert f.permutation_p == pytest.approx(1 / 200)
    assert f.to_dict()["permutation_p"] == pytest.approx(1 / 200)


def _null_p_values(n_data: int, n_episodes: int, n_perm: int, seed: int) -> np.ndarray:
    ps = []
    for i in range(n_data):
        ds = random_panel(n_episodes, seed=seed + i, rate_by_group=(0.1, 0.1, 0.1),
                          cluster_sd=1.5)
        f = allocation_rates(ds, action="modality=home_visit", group="race", n_boot=0,
                             n_permutations=n_perm, min_cell=1, random_state=i)
        ps.append(f.permutation_p)
    return np.asarray(ps)


def test_null_false_positive_rate_quick() -> None:
    p = _null_p_values(250, 60, 99, seed=1000)
    fpr = np.mean(p <= 0.05)
    assert abs(fpr - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 250)


@pytest.mark.slow
def test_null_false_positive_rate_uniform() -> None:
    """Episode-level permutation keeps its level under clustered rows (strong random effects)."""
    n = 2000
    p = _null_p_values(n, 120, 199, seed=50_000)
    for level in (0.01, 0.05, 0.10, 0.25, 0.5):
        fpr = np.mean(p <= level)
        assert abs(fpr - level) < 3.5 * np.sqrt(level * (1 - level) / n), (level, fpr)
    # p-values are uniform on the grid k / 200 (KS against the discrete uniform's continuous
    # approximation; the grid step 1/200 is below the KS tolerance at n = 2000)
    assert stats.kstest(p, "uniform").pvalue > 0.001


@pytest.mark.slow
def test_null_false_positive_rate_on_care_simulator() -> None:
    """Care-management panels (no home-visit disparity) with group labels drawn independently."""
    from dataclasses import replace

    from equicare.sim.care import CareConfig, CareManagementSim

    sim = CareManagementSim(CareConfig(home_visit_disparity=0.0))
    n, ps = 300, []
    for i in range(n):
        ds = sim.generate(n_members=150, n_weeks=10, random_state=10_000 + i).dataset()
        rng = np.random.default_rng(i)
        labels = rng.choice(np.array(["a", "b", "c"]), size=ds.n_episodes, p=[0.5, 0.3, 0.2])
        ds = replace(ds, groups={"rand": labels}, _cache={})
        f = allocation_rates(ds, action="modality=home_visit", group="rand", n_boot=0,
                             n_permutations=199, min_cell=1, random_state=i)
        ps.append(f.permutation_p)
    p = np.asarray(ps)
    fpr = np.mean(p <= 0.05)
    assert abs(fpr - 0.05) < 3 * np.sqrt(0.05 * 0.95 / n), fpr


def _null_rejections(clusters: bool, n_sets: int = 200) -> float:
    """Share of p < 0.05 under the null: labels by person, rates by person (strong clustering)."""
    rng = np.random.default_rng(11)
    people, per = 40, 6
    person = np.repeat(np.arange(people), per)
    rejected = 0
    for s in range(n_sets):
        rate = rng.beta(0.5, 0.5, size=people)  # each person's own rate, whatever the group
        num = (rng.random(people * per) < rate[person]).astype(np.float64)
        codes = (rng.permutation(people) % 2)[person]
        p, _ = permutation_test(num, np.ones_like(num), codes, n_permutations=200,
                                random_state=s, clusters=person if clusters else None)
        rejected += int(p[0] < 0.05)
    return rejected / n_sets


def test_permuting_people_holds_the_level_where_permuting_episodes_does_not() -> None:
    """Re-enrolled people's episodes are correlated: shuffle their labels, not episodes'."""
    assert _null_rejections(True) <= 0.09  # 0.035 measured
    assert _null_rejections(False) >= 0.15  # episodes as if independent: 0.235 measured


def test_permutation_by_person_sums_each_persons_episodes_first() -> None:
    num = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    den = np.ones(7)
    codes = np.array([0, 0, 0, 1, 1, 1, -1])
    person = np.array(["a", "a", "b", "c", "c", "d", "e"])
    p, t = permutation_test(num, den, codes, 500, random_state=0, clusters=person)
    # units a (1/2), b (1/1) in group 0; c (1/2), d (0/1) in group 1: rates 2/3 and 1/3
    assert t[0] == pytest.approx(1 / 3)
    # with 4 people, 2 per group: 6 splits, each as likely; T >= 1/3 in 4 of them
    # ({a,b}|{c,d}, {c,d}|{a,b}: 1/3; {a,c}|{b,d}, {b,d}|{a,c}: 1/3; {a,d}, {b,c}: 0)
    assert p[0] == pytest.approx(4 / 6, abs=0.05)
    with pytest.raises(ValueError, match="one entry per episode"):
        permutation_test(num, den, codes, 10, clusters=person[:3])
