"""Studentized (symmetric bootstrap-t) intervals: delta-method standard errors and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError, LowESSWarning
from equicare.ope import evaluate
from equicare.ope._bootstrap import (
    Shift,
    bootstrap_counts,
    bootstrap_replicates,
    cluster_codes,
    cluster_counts,
    estimates_with_ci,
    influence_coefs,
    percentile_interval,
    ratio_columns,
    ratio_terms,
    resampling_unit,
    squared_influence,
    studentized_intervals,
)
from equicare.ope._core import (
    ESTIMATOR_KEYS,
    EpisodeParts,
    episode_parts,
    jackknife_estimates,
    point_estimates,
)
from equicare.ope._prepare import prepare
from equicare.policy import TabularPolicy

from ._mdp import BEHAVIOR, TARGET, clustered_sample, small_mdp


@pytest.fixture(scope="module")
def parts() -> EpisodeParts:
    ds = small_mdp(horizon=4).sample(BEHAVIOR, 300, seed=1)
    prep = prepare(ds, TabularPolicy(TARGET), keys=ESTIMATOR_KEYS, behavior_prob=None,
                   behavior_model="logistic", q=None, q_model="tabular_stationary",
                   random_state=0)
    return episode_parts(prep.inputs, ESTIMATOR_KEYS)


def _se(parts: EpisodeParts, key: str, weights: np.ndarray) -> np.ndarray:
    a, b = ratio_terms(parts.slices, parts.horizon, key)
    xa, xb = ratio_columns(parts.matrix, a, b)
    u, v = influence_coefs(weights @ xa, weights @ xb)
    return np.sqrt(squared_influence(xa, xb, u, v, weights))


def test_delta_method_se_is_the_jackknife_se(parts):
    """Mean-type: exactly sd/sqrt(n); ratio-type: the jackknife SE to first order (within 10%)."""
    n = parts.matrix.shape[0]
    x = parts.matrix[:, parts.slices["dr"].start]
    np.testing.assert_allclose(_se(parts, "dr", np.ones((1, n)))[0], x.std() / np.sqrt(n),
                               rtol=1e-12)
    jack = jackknife_estimates(parts)
    for k in ESTIMATOR_KEYS:
        j = jack[k]
        se_j = np.sqrt((n - 1) / n * np.sum((j - j.mean()) ** 2))
        assert _se(parts, k, np.ones((1, n)))[0] == pytest.approx(se_j, rel=0.1), k


def test_replicate_se_matches_the_replicate_data(parts):
    """Counts of 2 on the first half and 0 on the rest: the SE of the first half alone."""
    n = parts.matrix.shape[0]
    assert n % 2 == 0
    half = n // 2
    w = np.zeros((1, n))
    w[0, :half] = 2.0
    x = parts.matrix[:half, parts.slices["dr"].start]
    se_half = x.std() / np.sqrt(half)
    # doubling every episode keeps the mean and halves the SE by sqrt(2)
    assert _se(parts, "dr", w)[0] == pytest.approx(se_half / np.sqrt(2), rel=1e-12)


def test_studentized_interval_is_symmetric_and_set_by_estimates_with_ci(parts):
    counts = bootstrap_counts(parts.matrix.shape[0], 300, 0)
    reps = bootstrap_replicates(parts, counts)
    ci = studentized_intervals(parts, counts, reps)
    est = estimates_with_ci(parts, n_boot=300, method="studentized", counts=counts)
    for k in ESTIMATOR_KEYS:
        lo, hi = ci[k]
        assert est[k].ci == (lo, hi)
        assert (lo + hi) / 2 == pytest.approx(est[k].value, abs=1e-12)
        assert hi > lo


def test_studentized_covers_a_skewed_mean_better_than_percentile():
    """Heavy right tail (lognormal sigma 1.5, n 60): exact mean known; 300 datasets."""
    rng = np.random.default_rng(0)
    sigma, n, n_data = 1.5, 60, 300
    truth = float(np.exp(sigma ** 2 / 2))
    hit = {"percentile": 0, "studentized": 0}
    counts = bootstrap_counts(n, 400, 1)
    for _ in range(n_data):
        x = rng.lognormal(0.0, sigma, size=n)
        p = EpisodeParts(matrix=x[:, None], slices={"dr": slice(0, 1)}, keys=("dr",), horizon=1)
        reps = bootstrap_replicates(p, counts)
        lo, hi = percentile_interval(reps["dr"])
        hit["percentile"] += lo <= truth <= hi
        lo, hi = studentized_intervals(p, counts, reps)["dr"]
        hit["studentized"] += lo <= truth <= hi
    cov = {k: v / n_data for k, v in hit.items()}
    assert cov["studentized"] >= cov["percentile"] + 0.03, cov
    assert cov["studentized"] >= 0.85, cov


def test_evaluate_with_studentized_intervals_covers_the_exact_value():
    mdp = small_mdp(horizon=4)
    truth = mdp.value(TARGET)
    data = mdp.sample(BEHAVIOR, 400, seed=7)
    res = evaluate(data, TabularPolicy(TARGET), estimators="is,wis,dr,wdr,fqe",
                   q_model="tabular_stationary", bootstrap=300, ci_method="studentized",
                   groups=[], random_state=0)
    assert res.settings["ci_method"] == "studentized"
    for k in ("dr", "wdr", "fqe"):
        lo, hi = res.estimates[k].ci
        assert lo <= truth <= hi, (k, lo, hi, truth)
    with pytest.raises(InvalidParameterError):
        evaluate(data, TabularPolicy(TARGET), ci_method="t", groups=[])  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["percentile", "studentized", "bca"])
def test_a_shift_moves_the_replicates_and_adds_its_variance(parts, method):
    """An independent replicate term (a subgroup's other episodes' share of the Q-model refit)
    enters every interval method; a zero term changes nothing."""
    counts = bootstrap_counts(parts.matrix.shape[0], 400, 0)
    base = estimates_with_ci(parts, n_boot=400, method=method, counts=counts)
    zero = Shift(replicates={"fqe": np.zeros(400)}, variance={"fqe": 0.0})
    same = estimates_with_ci(parts, n_boot=400, method=method, counts=counts, shift=zero)
    assert same["fqe"].ci == pytest.approx(base["fqe"].ci, abs=1e-15)
    sd = 3 * base["fqe"].se
    term = np.random.default_rng(1).normal(0.0, sd, 400)
    wide = estimates_with_ci(parts, n_boot=400, method=method, counts=counts,
                             shift=Shift(replicates={"fqe": term}, variance={"fqe": sd**2}))
    assert wide["fqe"].value == base["fqe"].value
    width = wide["fqe"].ci[1] - wide["fqe"].ci[0]
    # the combined standard deviation is sqrt(1 + 9) = 3.16 times the parts' own
    assert 2.6 < width / (base["fqe"].ci[1] - base["fqe"].ci[0]) < 3.8
    assert wide["fqe"].se == pytest.approx(np.sqrt(base["fqe"].se ** 2 + term.var()), rel=0.1)
    assert wide["wis"].ci == base["wis"].ci  # estimators without a term are untouched


def test_a_shift_widens_the_jackknife_interval(parts):
    base = estimates_with_ci(parts, n_boot=0)
    se = base["dr"].se
    wide = estimates_with_ci(parts, n_boot=0, shift=Shift(replicates={},
                                                          variance={"dr": (2 * se) ** 2}))
    assert wide["dr"].se == pytest.approx(np.sqrt(5) * se)
    assert wide["fqe"].se == base["fqe"].se


def test_a_degenerate_standard_error_falls_back_to_the_percentile_interval():
    """WIS whose weight sits on one episode (effective sample size about 1): its delta-method
    standard error is about 0 at the full sample and in every replicate that draws that episode,
    which made the bootstrap-t interval a million wide (or zero wide). The interval is then the
    percentile one, inside the range of the returns as WIS is; a healthy WIS keeps the
    symmetric bootstrap-t interval."""
    from equicare.ope._bootstrap import DEGENERATE_SE, studentized_interval

    rng = np.random.default_rng(3)
    n = 30
    g = rng.uniform(0.0, 3.0, n)
    counts = bootstrap_counts(n, 400, 2)
    for w, degenerate in ((np.r_[1e9, 1e4 * rng.uniform(size=4), rng.uniform(size=n - 5)], True),
                          (rng.uniform(0.5, 2.0, n), False)):
        p = EpisodeParts(matrix=np.c_[w * g, w], slices={"wis": slice(0, 2)}, keys=("wis",),
                         horizon=1)
        reps = bootstrap_replicates(p, counts)
        lo, hi = studentized_intervals(p, counts, reps)["wis"]
        if degenerate:
            assert (lo, hi) == percentile_interval(reps["wis"])
            assert g.min() <= lo <= hi <= g.max()
        else:
            point = float((w * g).sum() / w.sum())
            assert hi - point == pytest.approx(point - lo, rel=1e-9)
            assert (lo, hi) != percentile_interval(reps["wis"])
    # the rules: replicates' standard errors numerically zero next to their spread make t
    # infinite; a quantile of t beyond a Cauchy's is no pivot; a degenerate full-sample SE
    reps = rng.normal(0.0, 1.0, 200)
    se_reps = np.full(200, 1.0)
    assert studentized_interval(0.0, reps, se_reps, 1.0) != percentile_interval(reps)
    tiny = se_reps.copy()
    tiny[:20] = 0.5 * DEGENERATE_SE * reps.std(ddof=1)
    assert studentized_interval(0.0, reps, tiny, 1.0) == percentile_interval(reps)
    small = se_reps.copy()
    small[:40] = 0.02  # t about 35 in a fifth: not degenerate, but no pivot
    assert studentized_interval(0.0, reps, small, 1.0) == percentile_interval(reps)
    small[:40] = 0.5  # t about 1.4 in a fifth: a heavy tail the bootstrap-t is made for
    lo, hi = studentized_interval(0.0, reps, small, 1.0)
    assert hi == -lo and (lo, hi) != percentile_interval(reps)
    assert studentized_interval(0.0, reps, np.ones(200), 1e-9) == percentile_interval(reps)
    # a full-sample standard error far under the spread, though not zero (the README tour's WIS
    # at 0.036 of it: a bootstrap-t interval a fifth as wide as the bootstrap's): percentile
    sd = reps.std(ddof=1)
    assert studentized_interval(0.0, reps, se_reps, 0.036 * sd) == percentile_interval(reps)
    assert studentized_interval(0.0, reps, se_reps, 0.5 * sd) != percentile_interval(reps)


@pytest.mark.parametrize("n_boot", [0, 40])
def test_wis_with_every_weight_zero_has_no_estimate(n_boot):
    """Every episode's weight 0: WIS (and WPDIS) are undefined, reported as null with the
    reason, not 0 [0, 0] with SE 0; the other estimators are unchanged."""
    from equicare.data import from_frame
    from equicare.ope._bootstrap import Estimate
    from equicare.ope._core import MSG_ALL_WEIGHTS_ZERO
    from tests.conftest import MANIFEST, make_frame

    ds = from_frame(make_frame(40, seed=2), MANIFEST, emit_warnings=False)
    probs = np.eye(ds.n_actions)[(ds.actions + 1) % ds.n_actions]  # never the logged action
    # IS's 0 rests on no weight at all, and is said to (the undefined WIS and WPDIS are not)
    with pytest.warns(LowESSWarning, match=r"the overall is value rests on .* \(trajectory "
                      r"ESS 0\.0 of 40 episodes"):
        res = evaluate(ds, probs, estimators=["is", "wis", "wpdis"], q_model="linear",
                       bootstrap=n_boot, groups=[], diagnose_support=False, random_state=0)
    for k in ("wis", "wpdis"):
        e = res.estimates[k]
        assert e.reason == MSG_ALL_WEIGHTS_ZERO and np.isnan([e.value, *e.ci, e.se]).all()
        d = res.to_dict()["estimates"][k]
        assert d == {"value": None, "ci": None, "se": None,
                     "reason": MSG_ALL_WEIGHTS_ZERO}
        assert Estimate.from_dict(e.to_dict()).reason == MSG_ALL_WEIGHTS_ZERO
    assert res.estimates["is"].value == 0.0 and res.estimates["is"].reason is None
    assert "reason" not in res.to_dict()["estimates"]["is"]


def test_estimate_from_dict_reads_a_result_jsons_entries():
    import json

    from equicare.data import from_frame
    from equicare.ope import evaluate
    from equicare.ope._bootstrap import Estimate
    from tests.conftest import MANIFEST, make_frame

    ds = from_frame(make_frame(40, seed=2), MANIFEST, emit_warnings=False)
    probs = np.eye(ds.n_actions)[(ds.actions + 1) % ds.n_actions]  # never the logged action
    with pytest.warns(LowESSWarning, match="the overall is value rests on"):
        res = evaluate(ds, probs, estimators=["is", "wis"], q_model="linear", bootstrap=20,
                       groups=[], diagnose_support=False, random_state=0)
    d = json.loads(json.dumps(res.to_dict()))["estimates"]
    is_ = Estimate.from_dict(d["is"])
    assert (is_.value, is_.ci, is_.se) == (res.estimates["is"].value, res.estimates["is"].ci,
                                           res.estimates["is"].se)
    assert Estimate.from_dict({**d["is"], "n_episodes": 40}).n_episodes == 40
    wis = Estimate.from_dict(d["wis"])
    assert np.isnan([wis.value, *wis.ci, wis.se]).all() and wis.reason is not None
    assert Estimate.from_dict(res.estimates["is"].to_dict()) == res.estimates["is"]


# ---------------------------------------------------------------------- people who re-enrol
def _coverage(n_panels: int, n_people: int, per_person: int, frailty_sd: float, n_boot: int,
              keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Coverage of the exact value by 95% intervals, resampling people vs episodes."""
    import dataclasses
    import warnings

    mdp = small_mdp(horizon=4)
    truth = mdp.value(TARGET)
    hit = {u: dict.fromkeys(keys, 0) for u in ("people", "episodes")}
    for r in range(n_panels):
        ds = clustered_sample(mdp, BEHAVIOR, n_people, per_person, frailty_sd, seed=r)
        flat = dataclasses.replace(ds, members=None, _cache={})
        for unit, d in (("people", ds), ("episodes", flat)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # low-ESS notes of small panels
                res = evaluate(d, TabularPolicy(TARGET), estimators=",".join(keys),
                               q_model="tabular_stationary", bootstrap=n_boot, groups=[],
                               random_state=r)
            for k in keys:
                lo, hi = res.estimates[k].ci
                hit[unit][k] += int(lo <= truth <= hi)
    return {u: {k: v / n_panels for k, v in h.items()} for u, h in hit.items()}


def test_cluster_counts_draw_people_with_all_their_episodes():
    members = np.array(["b", "a", "c", "a", "b", "a"])
    w = cluster_counts(members, 50, random_state=3)
    codes = cluster_codes(members)
    assert codes.tolist() == [1, 0, 2, 0, 1, 0]
    assert w.shape == (50, 6)
    people = bootstrap_counts(3, 50, 3)  # the same draws, over people
    np.testing.assert_array_equal(w, people[:, codes])
    assert np.all(people.sum(axis=1) == 3)
    np.testing.assert_array_equal(w, cluster_counts(members, 50, random_state=3))
    assert resampling_unit(None) == "episodes"
    assert resampling_unit(members) == "people (member)"


def test_parts_by_person_keep_the_estimates_and_count_episodes(parts):
    rng = np.random.default_rng(0)
    n = parts.matrix.shape[0]
    codes = rng.permutation(np.repeat(np.arange(n // 3), 3))
    by = parts.by_cluster(codes)
    assert by.matrix.shape == (n // 3, parts.matrix.shape[1])
    assert by.n_episodes == n and parts.n_episodes == n
    assert np.all(by.sizes == 3)
    p0, p1 = point_estimates(parts), point_estimates(by)
    for k in parts.keys:
        assert p1[k] == pytest.approx(p0[k], rel=1e-12, abs=1e-12)
    # a bootstrap of people is a bootstrap of episodes with the person's count on each episode
    w = bootstrap_counts(n // 3, 20, 1)
    r_people, r_eps = bootstrap_replicates(by, w), bootstrap_replicates(parts, w[:, codes])
    for k in parts.keys:
        np.testing.assert_allclose(r_people[k], r_eps[k], rtol=1e-10, atol=1e-12)


def test_the_person_level_se_is_the_leave_one_person_out_jackknife_se(parts):
    """The studentized intervals' delta-method SE sums each person's influence."""
    n = parts.matrix.shape[0]
    codes = np.random.default_rng(4).permutation(np.arange(n) % (n // 4))
    by = parts.by_cluster(codes)
    jack = jackknife_estimates(by)
    g = by.matrix.shape[0]
    for k in ("is", "wis", "wpdis", "dr", "wdr"):
        a, b = ratio_terms(by.slices, by.horizon, k)
        xa, xb = ratio_columns(by.matrix, a, b, by.sizes)
        ones = np.ones((1, g))
        u, v = influence_coefs(ones @ xa, ones @ xb)
        delta = float(np.sqrt(squared_influence(xa, xb, u, v, ones))[0])
        j = jack[k]
        jse = float(np.sqrt((g - 1) / g * np.sum((j - j.mean()) ** 2)))
        assert delta == pytest.approx(jse, rel=0.05), k


def test_one_episode_per_person_gives_the_episode_bootstrap_bit_for_bit():
    """Members in episode order, one episode each: the same numbers as without member."""
    import dataclasses

    ds = small_mdp(horizon=4).sample(BEHAVIOR, 200, seed=2, n_groups=2)
    ids = np.array([f"m{i:04d}" for i in range(ds.n_episodes)])
    with_m = dataclasses.replace(ds, members=ids, _cache={})
    for method, n_boot in (("studentized", 100), ("bca", 100), ("percentile", 50),
                           ("studentized", 0)):
        a = evaluate(ds, TabularPolicy(TARGET), q_model="tabular_stationary", bootstrap=n_boot,
                     ci_method=method, random_state=1)
        b = evaluate(with_m, TabularPolicy(TARGET), q_model="tabular_stationary",
                     bootstrap=n_boot, ci_method=method, random_state=1)
        assert a.settings["resampling"] == "episodes"
        assert b.settings["resampling"] == "people (member)"
        assert a.estimates == b.estimates, method
        assert a.behavior == b.behavior
        for lv, g in a.groups["grp"].items():
            assert g.estimates == b.groups["grp"][lv].estimates, (method, lv)


def test_resampling_people_covers_where_resampling_episodes_does_not():
    """Strongly clustered panels: 8 episodes per person sharing a frailty (sd 2), 40 panels."""
    cov = _coverage(40, 60, 8, 2.0, 200, ("is", "wis", "dr", "wdr"))
    people, episodes = cov["people"], cov["episodes"]
    assert min(people.values()) >= 0.85, cov
    assert np.mean(list(people.values())) >= 0.9, cov
    assert np.mean(list(episodes.values())) <= 0.82, cov  # the episode bootstrap under-covers


@pytest.mark.slow
def test_resampling_people_has_nominal_coverage_on_clustered_panels():
    """300 panels of 100 people x 5 episodes (frailty sd 1): coverage 0.95 within noise.

    Measured with this test's settings: people 0.94-0.95 for IS, WIS, PDIS, DR, WDR; episodes
    0.76-0.86.
    """
    keys = ("is", "wis", "pdis", "dr", "wdr")
    cov = _coverage(300, 100, 5, 1.0, 300, keys)
    for k in keys:
        assert 0.92 <= cov["people"][k] <= 0.98, cov
        assert cov["episodes"][k] <= 0.88, cov


def test_the_refitting_bootstrap_draws_people_when_they_re_enrol():
    """evaluate(refit=True) on 8 correlated episodes a person: its replicates' spread is the
    people's (as the bootstrap with the models held fixed), not the episodes'."""
    import dataclasses
    import warnings

    ds = clustered_sample(small_mdp(horizon=4), BEHAVIOR, 60, 8, 2.0, seed=0)
    flat = dataclasses.replace(ds, members=None, _cache={})
    kw = {"estimators": "is,wis", "q_model": "tabular_stationary", "bootstrap": 200,
          "groups": [], "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-ESS notes of a small panel
        fixed = evaluate(ds, TabularPolicy(TARGET), **kw)
        people = evaluate(ds, TabularPolicy(TARGET), refit=True, **kw)
        episodes = evaluate(flat, TabularPolicy(TARGET), refit=True, **kw)
    for k in ("is", "wis"):
        assert people.estimates[k].se == pytest.approx(fixed.estimates[k].se, rel=0.2), k
        assert episodes.estimates[k].se < 0.75 * people.estimates[k].se, k


def test_subgroup_resampling_never_holds_all_replicates_counts():
    """Each subgroup level resampled the other episodes through a full (n_boot, n) counts
    matrix: on a 60,000-member campaign 21 levels x 480 MB, most of evaluate's 8 minutes.
    Same replicates as that matrix, at a fraction of its memory."""
    import tracemalloc

    from equicare.ope._bootstrap import bootstrap_counts
    from equicare.ope._evaluate import _other_episodes_shift

    rng = np.random.default_rng(0)
    other = rng.normal(size=(20000, 3))
    full = bootstrap_counts(20000, 1000, 5) @ other - other.sum(axis=0, keepdims=True)
    matrix_bytes = 1000 * 20000 * 8
    tracemalloc.start()
    shift = _other_episodes_shift(other, ("is", "wis", "dr"), 1000, 5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert shift is not None
    for j, k in enumerate(("is", "wis", "dr")):
        np.testing.assert_allclose(shift.replicates[k], full[:, j], rtol=1e-10, atol=1e-8)
    assert peak < matrix_bytes / 4, peak
    # bootstrap_counts itself: the same draws, block by block, as one call
    g = np.random.default_rng(7)
    draws = g.integers(0, 50, size=(30, 50))
    one = np.stack([np.bincount(r, minlength=50) for r in draws]).astype(float)
    np.testing.assert_array_equal(bootstrap_counts(50, 30, 7), one)
