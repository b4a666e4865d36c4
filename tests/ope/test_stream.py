"""Streamed and sharded OPE: the same numbers as in memory, for any chunking or sharding."""

from __future__ import annotations

import copy
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

from equicare.data import Manifest, load_dataset
from equicare.exceptions import LowESSWarning
from equicare.ope import episode_keys, evaluate, evaluate_stream, poisson_weights
from equicare.pipeline import get_executor

from ..conftest import MANIFEST, make_frame


@dataclass(frozen=True)
class RiskPolicy:
    """Home visits for high risk, phone otherwise (picklable, state-dependent, stochastic)."""

    def action_probs(self, ds):
        p = np.full((ds.n_steps, ds.n_actions), 0.02)
        hi = ds.states[:, 0] > 0
        p[hi, 4] += 0.6   # home_visit x routine
        p[~hi, 2] += 0.6  # phone x routine
        return p / p.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    frame = make_frame(n_members=150, seed=11, min_len=1, max_len=12)
    path = folder / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=64)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    return path, man, load_dataset(path, man, emit_warnings=False)


def _same(a, b, rtol=1e-9):
    da, db = a.to_dict(), b.to_dict()
    np.testing.assert_allclose(da["behavior"]["value"], db["behavior"]["value"], rtol=rtol)
    np.testing.assert_allclose(da["behavior"]["ci"], db["behavior"]["ci"], rtol=rtol)
    for k in da["estimates"]:
        for f in ("value", "se"):
            np.testing.assert_allclose(da["estimates"][k][f], db["estimates"][k][f], rtol=rtol)
        np.testing.assert_allclose(da["estimates"][k]["ci"], db["estimates"][k]["ci"], rtol=rtol)
    np.testing.assert_allclose(da["ess"]["trajectory"], db["ess"]["trajectory"], rtol=rtol)
    assert da["groups"].keys() == db["groups"].keys()
    for attr, levels in da["groups"].items():  # every subgroup level too
        assert levels.keys() == db["groups"][attr].keys()
        for lv, g in levels.items():
            h = db["groups"][attr][lv]
            assert g["n_episodes"] == h["n_episodes"], (attr, lv)
            for k, e in g.get("estimates", {}).items():
                for f in ("value", "se", "ci"):
                    x, y = e[f], h["estimates"][k][f]
                    if x is None or y is None:  # a withheld value is withheld on both sides
                        assert x is None and y is None, (attr, lv, k, f, x, y)
                        assert e.get("reason") == h["estimates"][k].get("reason")
                        continue
                    np.testing.assert_allclose(x, y, rtol=rtol, err_msg=f"{attr}={lv} {k} {f}")


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_streamed_equals_in_memory_for_any_chunking(panel):
    path, man, ds = panel
    whole = evaluate_stream(ds, RiskPolicy(), n_boot=200, random_state=3)
    for rows in (5, 170, 10**6):
        streamed = evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=200,
                                   random_state=3, chunk_rows=rows)
        _same(whole, streamed)
    assert streamed.n_chunks == 1


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_sharded_equals_in_memory(panel):
    path, man, ds = panel
    whole = evaluate_stream(ds, RiskPolicy(), n_boot=200, random_state=3)
    for ex, shards in ((get_executor("local", jobs=1), 5), (get_executor("local", jobs=2), 3)):
        sharded = evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=200, random_state=3,
                                  chunk_rows=40, executor=ex, n_shards=shards)
        assert sharded.n_episodes == whole.n_episodes and sharded.n_chunks >= shards
        _same(whole, sharded)


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_studentized_streamed_and_sharded_equal_in_memory(panel):
    """Studentized intervals (an extra pass for the replicates' standard errors): the in-memory
    bootstrap-t under the same Poisson weights, for any chunking and sharding."""
    from equicare.ope import episode_parts
    from equicare.ope._bootstrap import studentized_intervals
    from equicare.ope._core import OPEInputs, combine

    path, man, ds = panel
    keys = ("is", "wis", "pdis", "wpdis")
    kw = {"n_boot": 200, "random_state": 3, "ci_method": "studentized"}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    assert whole.to_dict()["bootstrap"]["ci"] == "studentized"
    pe = RiskPolicy().action_probs(ds)[np.arange(ds.n_steps), ds.actions]
    inputs = OPEInputs(rewards=ds.rewards, episode_offsets=ds.episode_offsets, gamma=ds.gamma,
                       rho=pe / ds.behavior_prob)
    parts = episode_parts(inputs, keys)
    w = poisson_weights(episode_keys(ds.episode_ids), 200, seed=3)
    ref = studentized_intervals(parts, w, combine(parts, w @ parts.matrix, w.sum(axis=1)))
    for k in keys:
        np.testing.assert_allclose(whole.estimates[k].ci, ref[k], rtol=1e-9, err_msg=k)
    streamed = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=15, **kw)
    assert streamed.n_chunks > 50
    _same(whole, streamed)
    # (test_sharded_equals_in_memory runs the default, studentized, on 2 worker processes)
    sharded = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=40,
                              executor=get_executor("local", jobs=1), n_shards=3, **kw)
    assert sharded.n_chunks >= 3
    _same(whole, sharded)
    pct = evaluate_stream(ds, RiskPolicy(), n_boot=200, random_state=3, ci_method="percentile")
    assert pct.estimates["wis"].ci != whole.estimates["wis"].ci


def test_bca_and_bad_parameters_are_refused(panel):
    from equicare.exceptions import InvalidParameterError
    from equicare.ope._stream import BCA_STREAM_MESSAGE

    _, _, ds = panel
    with pytest.raises(InvalidParameterError, match=re.escape(BCA_STREAM_MESSAGE)):
        evaluate_stream(ds, RiskPolicy(), n_boot=10, ci_method="bca")
    with pytest.raises(InvalidParameterError, match="ci_method"):
        evaluate_stream(ds, RiskPolicy(), n_boot=10, ci_method="basic")
    for bad in (-1, 2.0, True):  # 0 is jackknife intervals
        with pytest.raises(InvalidParameterError,
                           match="'n_boot' parameter of evaluate_stream must be an int >= 0"):
            evaluate_stream(ds, RiskPolicy(), n_boot=bad)
    path, man, _ = panel
    for bad in (0, -1.0):  # checked before the panel is read, not by an internal function
        with pytest.raises(InvalidParameterError, match=re.escape(
                f"The 'truncate' parameter of evaluate_stream must be a positive float or None. "
                f"Got {bad} instead.")):
            evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=10, truncate=bad)


@pytest.mark.usefixtures("low_ess_warned")
def test_point_estimates_match_the_in_memory_engine(panel):
    _, _, ds = panel
    ref = evaluate(ds, RiskPolicy(), estimators=["is", "wis", "pdis", "wpdis"], bootstrap=0)
    got = evaluate_stream(ds, RiskPolicy(), n_boot=10, random_state=0)
    for k in ("is", "wis", "pdis", "wpdis"):
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-12)
    assert got.behavior.value == pytest.approx(ref.behavior.value, rel=1e-12)


def data_warnings(run, says):
    """The messages of the DataWarnings that ``run()`` raises and that contain ``says``."""
    import warnings

    from equicare.exceptions import DataWarning

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in rec if w.category is DataWarning and says in str(w.message)]


@pytest.mark.parametrize("q_model", [None, "linear"])
def test_estimates_far_outside_the_returns_are_warned_about_as_in_memory(tmp_path, q_model):
    """Propensities a million times too small on a few rows: the streamed evaluation (the
    returns' range summed over several chunks) warns with the in-memory text, word for word."""
    frame = make_frame(n_members=150, seed=11, min_len=1, max_len=12).sort_values(
        ["member_id", "week"])
    frame.loc[frame.index[:3], "propensity"] *= 1e-6
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path, index=False)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    ds = load_dataset(path, man, emit_warnings=False)
    keys = ["is", "wis"] + ([] if q_model is None else ["dr"])
    kw = {"q_model": q_model} if q_model else {}

    ref = data_warnings(lambda: evaluate(ds, RiskPolicy(), estimators=keys, bootstrap=0,
                                         groups=[], diagnose_support=False, **kw), "far outside")
    got = data_warnings(lambda: evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys,
                                                n_boot=10, groups=(), chunk_rows=40,
                                                diagnose_support=False, **kw), "far outside")
    assert len(ref) == 1 and got == ref


@pytest.mark.usefixtures("low_ess_warned")
def test_the_behaviour_value_has_its_se_at_top_level_as_in_memory(panel):
    """The top-level ``behavior`` has the in-memory keys, ``se`` too (the table prints it)."""
    _, _, ds = panel
    kw = {"estimators": ["wis"], "diagnose_support": False}
    ref = evaluate(ds, RiskPolicy(), bootstrap=20, **kw).to_dict()
    got = evaluate_stream(ds, RiskPolicy(), n_boot=20, **kw)
    d = got.to_dict()
    assert d["behavior"].keys() == ref["behavior"].keys() == {"value", "ci", "se"}
    assert d["behavior"]["se"] == got.behavior.se > 0
    for levels in d["groups"].values():  # as each level's
        for g in levels.values():
            assert g.get("suppressed") or g["behavior"].keys() == d["behavior"].keys()


@pytest.mark.usefixtures("low_ess_warned")
@pytest.mark.parametrize("q_model", [None, "linear"])
def test_truncated_ess_has_the_in_memory_keys_and_the_cap_is_recorded(panel, q_model):
    """With ``truncate``, ``ess.trajectory`` is the untruncated ESS in both modes and
    ``ess.trajectory_truncated`` the truncated one; the streamed JSON records the cap."""
    path, man, ds = panel
    keys = ["is", "wis"] + ([] if q_model is None else ["dr"])
    kw = {"q_model": q_model} if q_model else {}
    ref = evaluate(ds, RiskPolicy(), estimators=keys, bootstrap=0, truncate=2.0,
                   diagnose_support=False, **kw).to_dict()
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys, n_boot=10,
                          truncate=2.0, chunk_rows=40, **kw).to_dict()
    assert ref["ess"]["trajectory_truncated"] > ref["ess"]["trajectory"] * 1.01  # it bites
    for f in ("trajectory", "trajectory_pct", "trajectory_truncated",
              "trajectory_truncated_pct"):
        assert got["ess"][f] == pytest.approx(ref["ess"][f], rel=1e-9), f
        for attr, levels in ref["groups"].items():
            for lv, g in levels.items():
                if not g.get("suppressed"):
                    assert got["groups"][attr][lv]["ess"][f] == pytest.approx(
                        g["ess"][f], rel=1e-9), (attr, lv, f)
    assert got["ess"]["truncate"] == 2.0 and got["settings"]["truncate"] == 2.0
    plain = evaluate_stream(ds, RiskPolicy(), estimators=keys, n_boot=10, **kw).to_dict()
    assert plain["ess"]["trajectory"] == pytest.approx(got["ess"]["trajectory"], rel=1e-9)
    assert plain["ess"]["trajectory_truncated"] is None and plain["settings"]["truncate"] is None


def test_uncovered_policy_file_rows_are_a_lower_bound_per_chunk(panel, tmp_path):
    """A policy file missing rows: in memory the panel's count; streamed, the first failing
    chunk's count said as "at least N (in the first chunk that has any)"."""
    from equicare.exceptions import PolicyError
    from equicare.policy import FilePolicy, write_policy_file

    path, man, ds = panel
    part = ds.subset(np.arange(20))
    f = write_policy_file(part, RiskPolicy().action_probs(part), tmp_path / "part.parquet")
    missing = ds.n_steps - part.n_steps
    with pytest.raises(PolicyError, match=f": {missing} dataset rows have no probabilities"):
        evaluate(ds, FilePolicy(f), estimators=["wis"], bootstrap=0)
    with pytest.raises(PolicyError) as err:
        evaluate_stream(path, FilePolicy(f), manifest=man, estimators=["wis"], n_boot=5,
                        chunk_rows=40)
    m = re.search(r"at least (\d+) dataset rows \(in the first chunk that has any\) have no "
                  r"probabilities", str(err.value))
    assert m is not None, str(err.value)
    assert 0 < int(m.group(1)) < missing


def test_poisson_weights_are_a_function_of_the_episode_id():
    keys = episode_keys(np.array(["a", "b", "c", "d"], dtype=object))
    w = poisson_weights(keys, 300, seed=5)
    w_sub = poisson_weights(keys[[2, 0]], 300, seed=5)
    np.testing.assert_array_equal(w[:, [2, 0]], w_sub)
    assert not np.array_equal(w, poisson_weights(keys, 300, seed=6))
    np.testing.assert_array_equal(episode_keys(np.array([7, 8])),
                                  episode_keys(np.array([7, 8], dtype=np.int32)))
    big = poisson_weights(episode_keys(np.arange(2000)), 500, seed=1)
    assert big.mean() == pytest.approx(1.0, abs=0.01)
    assert big.var() == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ValueError, match="n_boot"):
        poisson_weights(keys, 0, seed=1)


@dataclass(frozen=True)
class TablePolicy:
    """A (state, action) probability table (picklable)."""

    table: np.ndarray

    def action_probs(self, ds):
        return self.table[ds.categorical[:, 0]]


def tabular_panel():
    """4,000 episodes of the tabular MDP with logged propensities, a supported target (60%
    behaviour, 40% the best logged action) and its exact value:
    ``(mdp, frame, manifest dict, target table, truth)``."""
    from tests.learn.tabular_mdp import KINDS, LEVELS, TabularMDP, manifest

    mdp = TabularMDP(behaviour_noise=0.5, p_end=0.15)
    frame = mdp.sample_frame(4000, random_state=7)
    kind = frame["kind"].map({k: i for i, k in enumerate(KINDS)}).to_numpy()
    level = frame["level"].map({k: i for i, k in enumerate(LEVELS)}).to_numpy()
    frame["prop"] = mdp.behaviour[frame["state"].to_numpy(), kind * len(LEVELS) + level]
    man = manifest()
    man["dataset"]["behavior_prob"] = "prop"
    man["dataset"]["groups"] = []
    target = 0.6 * mdp.behaviour + 0.4 * np.eye(mdp.n_actions)[
        np.argmax(np.where(mdp.behaviour > 0, mdp.q_optimal(mdp.support), -np.inf), axis=1)]
    truth = mdp.value(target, "A") * 0.5 + mdp.value(target, "B") * 0.5
    return mdp, frame, man, target, truth


def test_streamed_estimates_and_intervals_against_the_exact_value(tmp_path):
    """Tabular MDP with exact values: streamed IS-type estimates land on the truth."""
    from equicare.data import from_frame

    mdp, frame, man, target, truth = tabular_panel()
    path = tmp_path / "tab.parquet"
    frame.to_parquet(path, index=False, row_group_size=500)
    ds = from_frame(frame, man, emit_warnings=False)
    with pytest.warns(LowESSWarning, match="heavy tail: Pareto k"):  # long stays' weights
        res = evaluate_stream(path, TablePolicy(target), manifest=man, n_boot=500,
                              random_state=2, chunk_rows=3000)
    for k in ("wis", "wpdis", "pdis"):
        e = res.estimates[k]
        assert abs(e.value - truth) < 3.5 * e.se, (k, e.value, truth, e.se)
        assert e.ci[0] < truth < e.ci[1], (k, e.ci, truth)
    beh = mdp.value(mdp.behaviour, "A") * 0.5 + mdp.value(mdp.behaviour, "B") * 0.5
    assert abs(res.behavior.value - beh) < 3.5 * res.behavior.se
    with pytest.warns(LowESSWarning, match="heavy tail: Pareto k"):
        _same(res, evaluate_stream(ds, TablePolicy(target), n_boot=500, random_state=2))
    with pytest.raises(ValueError, match="does not stream"):
        evaluate_stream(ds, TablePolicy(target), estimators=["dr"], q_model="gbm")


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_policy_is_called_in_blocks_of_whole_episodes(panel, monkeypatch):
    """Tiny probability blocks: same numbers, and every block holds whole episodes."""
    import equicare.ope._stream as stream

    _, _, ds = panel
    ref = evaluate_stream(ds, RiskPolicy(), n_boot=50, random_state=4)
    seen = []

    @dataclass(frozen=True)
    class Spy(RiskPolicy):
        def action_probs(self, part):
            seen.append(part.n_episodes)
            assert part.episode_lengths.sum() == part.n_steps
            return RiskPolicy.action_probs(self, part)

    monkeypatch.setattr(stream, "ROW_BLOCK_ELEMENTS", 12 * 30)  # ~30 rows of 12 actions
    got = evaluate_stream(ds, Spy(), n_boot=50, random_state=4)
    assert len(seen) > 10
    _same(ref, got)


@pytest.mark.slow
@pytest.mark.usefixtures("low_ess_warned")
def test_ray_shards_equal_in_memory(panel, ray):
    """Two local Ray workers, one task per shard: the in-memory numbers."""
    path, man, ds = panel
    whole = evaluate_stream(ds, RiskPolicy(), n_boot=200, random_state=3)
    with get_executor("ray", address="local", jobs=2) as ex:
        sharded = evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=200, random_state=3,
                                  chunk_rows=40, executor=ex, n_shards=4)
    assert sharded.n_episodes == whole.n_episodes and sharded.n_chunks >= 4
    _same(whole, sharded)


@dataclass(frozen=True)
class NeverLogged:
    """Always an action other than the logged one: every importance weight is 0."""

    def action_probs(self, ds):
        return np.eye(ds.n_actions)[(ds.actions + 1) % ds.n_actions]


@pytest.mark.usefixtures("low_ess_warned")
def test_streamed_wis_with_every_weight_zero_is_null(panel):
    from equicare.ope._core import MSG_ALL_WEIGHTS_ZERO

    path, man, ds = panel
    res = evaluate_stream(path, NeverLogged(), manifest=man, estimators=["is", "wis"],
                          n_boot=50, chunk_rows=200, random_state=0)
    e = res.estimates["wis"]
    assert e.reason == MSG_ALL_WEIGHTS_ZERO and np.isnan([e.value, *e.ci, e.se]).all()
    assert e.to_dict() == {"value": None, "ci": None, "se": None,
                           "reason": MSG_ALL_WEIGHTS_ZERO}
    assert res.estimates["is"].reason is None and res.estimates["is"].value == 0.0


def same_as_in_memory(got, ref, rtol=1e-9):
    """A streamed result JSON (``got``) against the in-memory one (``ref``), ``--bootstrap 0``.

    The same estimators, levels and keys of every estimate; every value, standard error and
    interval (the behaviour value's too, every published level's) to ``rtol``; a withheld
    value withheld on both sides with the same reason. Returns the published levels compared.
    """
    def entry(a, b, where):
        assert set(a) == set(b), where
        for f in ("value", "se", "ci"):
            x, y = a[f], b[f]
            if x is None or y is None:
                assert x is None and y is None and a.get("reason") == b.get("reason"), where
                continue
            np.testing.assert_allclose(x, y, rtol=rtol, atol=0, err_msg=f"{where} {f}")

    assert (got["n_episodes"], got["n_steps"]) == (ref["n_episodes"], ref["n_steps"])
    entry(got["behavior"], ref["behavior"], "behavior")
    assert list(got["estimates"]) == list(ref["estimates"])
    for k, e in ref["estimates"].items():
        entry(got["estimates"][k], e, k)
    np.testing.assert_allclose(got["ess"]["trajectory"], ref["ess"]["trajectory"], rtol=rtol)
    assert got["groups"].keys() == ref["groups"].keys()
    n = 0
    for attr, levels in ref["groups"].items():
        assert got["groups"][attr].keys() == levels.keys(), attr
        for lv, g in levels.items():
            h = got["groups"][attr][lv]
            if g.get("suppressed"):
                assert h == g, (attr, lv)
                continue
            n += 1
            assert h["n_episodes"] == g["n_episodes"], (attr, lv)
            entry(h["behavior"], g["behavior"], f"{attr}={lv} behavior")
            assert list(h["estimates"]) == list(g["estimates"])
            for k, e in g["estimates"].items():
                entry(h["estimates"][k], e, f"{attr}={lv} {k}")
    return n


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_jackknife_intervals_equal_in_memory_for_any_chunking_and_sharding(panel):
    """n_boot=0: in memory's bootstrap=0 (jackknife normal intervals, the behaviour value's from
    its returns' standard error), every level included, for any chunking and sharding."""
    path, man, ds = panel
    keys = ("is", "wis", "pdis", "wpdis")
    ref = evaluate(ds, RiskPolicy(), estimators=keys, bootstrap=0, truncate=20.0, alpha=0.1,
                   diagnose_support=False).to_dict()
    kw = {"estimators": keys, "n_boot": 0, "truncate": 20.0, "alpha": 0.1}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    assert whole.to_dict()["bootstrap"] == {"n_boot": 0, "weights": None, "ci": "jackknife"}
    assert same_as_in_memory(whole.to_dict(), ref) == 5
    for rows in (15, 170):
        streamed = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=rows, **kw)
        assert streamed.n_chunks > 1
        same_as_in_memory(streamed.to_dict(), ref)
    sharded = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=40,
                              executor=get_executor("local", jobs=1), n_shards=3, **kw)
    assert sharded.n_chunks >= 3
    same_as_in_memory(sharded.to_dict(), ref)
    # the intervals are the jackknife's, not a bootstrap's: symmetric, z_0.95 standard errors
    e = whole.estimates["wis"]
    assert e.ci == pytest.approx((e.value - 1.6448536 * e.se, e.value + 1.6448536 * e.se))


@pytest.mark.slow
@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_jackknife_intervals_on_worker_processes_equal_in_memory(panel):
    """2 shards on 2 spawned worker processes (the jackknife pass's task pickled)."""
    path, man, ds = panel
    ref = evaluate(ds, RiskPolicy(), estimators=("is", "wis", "wpdis"), bootstrap=0,
                   diagnose_support=False).to_dict()
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("is", "wis", "wpdis"),
                          n_boot=0, chunk_rows=40, executor=get_executor("local", jobs=2),
                          n_shards=2)
    assert got.n_chunks >= 2
    same_as_in_memory(got.to_dict(), ref)


def test_the_streamed_sums_carry_the_rewards_range_across_chunks():
    """The streamed check of estimates on the side of 0 no policy reaches needs the smallest and
    largest reward of the whole panel: each chunk's sums carry them and adding sums keeps the
    extremes (as the returns' range)."""
    from equicare.ope._stream_sums import episode_sums

    def sums(rewards):
        mat = np.zeros((2, 2))
        return episode_sums(mat, np.ones((3, 2)), np.ones(2), n_steps=len(rewards), gamma=0.9,
                            layout=((), {}, 0), rewards=np.asarray(rewards, dtype=float))

    both = sums([-1.0, 0.0]) + sums([-10.0, -2.0])
    assert (both.rewards_min, both.rewards_max) == (-10.0, 0.0)
    none = episode_sums(np.zeros((0, 2)), np.ones((3, 0)), np.ones(0), n_steps=0, gamma=0.9,
                        layout=((), {}, 0))
    assert (none + both).rewards_min == -10.0 and (none + both).rewards_max == 0.0


def test_subgroup_estimates_far_outside_the_returns_are_withheld_as_in_memory():
    """A level's estimate far outside the returns is n/a with the reason, streamed as in
    memory (against the whole panel's returns and rewards): one group's propensities 100 times
    too small make its IS 1e8 times too large at an unchanged ESS."""
    from dataclasses import replace

    from equicare.ope._evaluate import MSG_GROUP_OUT_OF_RANGE
    from equicare.policy import TabularPolicy

    from ._mdp import BEHAVIOR, TARGET, small_mdp

    ds = small_mdp(horizon=4).sample(BEHAVIOR, 400, seed=0, n_groups=3)
    attr = ds.group_attrs[0]
    level = str(ds.group_labels(attr)[0])
    rows = ds.episode_rows(ds.group_labels(attr).astype(str) == level).astype(bool)
    bad = replace(ds, behavior_prob=np.where(rows, ds.behavior_prob * 0.01, ds.behavior_prob),
                  _cache={})

    def withheld(res):
        return {(lv, k) for lv, g in res.groups[attr].items() if not g.suppressed
                for k, e in g.estimates.items() if e.reason == MSG_GROUP_OUT_OF_RANGE}

    kw = {"estimators": ["is", "wis"], "diagnose_support": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = evaluate(bad, TabularPolicy(TARGET), bootstrap=0, **kw)
        got = evaluate_stream(bad, TabularPolicy(TARGET), n_boot=10, chunk_rows=100, **kw)
    assert withheld(ref) == withheld(got) == {(level, "is")}


def test_a_streamed_evaluation_of_re_enrolled_people_resamples_people(tmp_path):
    """With the manifest's member, every streamed replicate weight is keyed by the person (a
    person's episodes share it in every chunk): no warning, and the settings say people."""
    from equicare.exceptions import DataWarning
    from equicare.ope._resample import resampling_ids
    from equicare.ope._stream_sums import replicate_weights
    from equicare.policy import UniformPolicy

    from ..conftest import make_reenrolled_frame

    frame, man_dict = make_reenrolled_frame()
    path = tmp_path / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False)
    man = Manifest.from_dict(man_dict)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = evaluate_stream(path, UniformPolicy(6), manifest=man, estimators=["wis"],
                              n_boot=20, chunk_rows=60, groups=[], diagnose_support=False)
    assert not [w for w in caught if issubclass(w.category, DataWarning)
                and "member" in str(w.message)]
    assert res.settings["resampling"] == "people (member)"
    ds = load_dataset(path, man, emit_warnings=False)
    w = replicate_weights(resampling_ids(ds), 50, 7)
    people = np.asarray(ds.members).astype(str)
    for p in np.unique(people[:15]):  # p0 .. p4: three episodes each
        own = np.flatnonzero(people == p)
        assert own.size == 3 and np.all(w[:, own] == w[:, own[:1]])
    assert not np.all(w[:, 0] == w[:, -1])  # different people, different weights


# ---- people who re-enrol: streamed replicates resample people (Poisson weights keyed by person)
_PEOPLE_MANIFEST = {
    "dataset": {"episode": "episode_id", "time": "t", "member": "person", "states": ["x"],
                "groups": ["grp"], "behavior_prob": "propensity", "gamma": 1.0},
    "actions": {"a": {"levels": 2}},
    "reward": {"r": {"column": "r", "weight": 1.0}},
}
#: Steps per episode and the target's probability of action 1 (behaviour: 0.5, logged).
_T, _P1 = 3, 0.65
#: The target's value: the person effects have mean 0, action 1 adds 0.5 at each step.
_TRUTH = _T * _P1 * 0.5


def _people_frame(n_people: int, seed: int):
    """People enrol 2-4 times; a person effect u ~ N(0, 1) in every reward of theirs.

    Episode ids are a random permutation, so in storage order (by episode id) a person's
    episodes are scattered over the panel and land in different chunks.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5, size=n_people)
    person = np.repeat(np.arange(n_people), k)
    u = rng.normal(size=n_people)
    rows = np.repeat(person, _T)
    a = (rng.random(rows.size) < 0.5).astype(np.int64)
    frame = pd.DataFrame({
        "episode_id": np.repeat(rng.permutation(person.size), _T),
        "t": np.tile(np.arange(_T), person.size), "person": rows,
        "x": rng.normal(size=rows.size), "grp": np.where(rows % 3 == 0, "g0", "g1"), "a": a,
        "r": u[rows] + 0.5 * a + rng.normal(0.0, 0.5, size=rows.size), "propensity": 0.5})
    return frame.sort_values(["episode_id", "t"]).reset_index(drop=True)


@dataclass(frozen=True)
class _Tilted:
    """Action 1 with probability ``_P1`` at every row."""

    def action_probs(self, ds):
        return np.tile([1.0 - _P1, _P1], (ds.n_steps, 1))


def _width(e) -> float:
    return float(e.ci[1] - e.ci[0])


def test_streamed_intervals_of_re_enrolled_people_resample_people(tmp_path):
    """A person's episodes share every Poisson weight whatever chunk or shard they are read in:
    the streamed and sharded intervals equal those of the panel as one chunk (1e-9), as wide as the
    in-memory bootstrap of people (overall, per subgroup, with a Q-model too), and wider than
    the same panel's episode bootstrap (member not named) by the design effect."""
    from equicare.data import from_frame

    frame = _people_frame(500, seed=5)
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path, index=False)
    man = Manifest.from_dict(copy.deepcopy(_PEOPLE_MANIFEST))
    no_member = copy.deepcopy(_PEOPLE_MANIFEST)
    del no_member["dataset"]["member"]
    keys = ["is", "wis", "pdis", "wpdis", "dr"]
    kw = {"estimators": keys, "q_model": "linear", "diagnose_support": False,
          "random_state": 3}
    chunked = evaluate_stream(path, _Tilted(), manifest=man, n_boot=400, chunk_rows=300, **kw)
    ds = load_dataset(path, man)
    whole = evaluate_stream(ds, _Tilted(), n_boot=400, **kw)
    sharded = evaluate_stream(path, _Tilted(), manifest=man, n_boot=400, chunk_rows=300,
                              executor=get_executor("local", jobs=1), n_shards=3, **kw)
    mem = evaluate(ds, _Tilted(), bootstrap=400, **kw)
    episodes = evaluate_stream(from_frame(frame, no_member), _Tilted(), n_boot=400, **kw)
    assert chunked.settings["resampling"] == mem.settings["resampling"] == "people (member)"
    assert episodes.settings["resampling"] == "episodes"
    for k in keys:
        np.testing.assert_allclose(chunked.estimates[k].ci, whole.estimates[k].ci, rtol=1e-9)
        np.testing.assert_allclose(sharded.estimates[k].ci, whole.estimates[k].ci, rtol=1e-9)
        ratio = _width(chunked.estimates[k]) / _width(mem.estimates[k])
        assert 0.85 < ratio < 1.15, (k, ratio)
        # the design effect of 2-4 correlated episodes per person: about 2.5
        assert _width(episodes.estimates[k]) / _width(chunked.estimates[k]) < 0.75, k
    for lv, g in chunked.groups["grp"].items():
        ratio = _width(g.estimates["wis"]) / _width(mem.groups["grp"][lv].estimates["wis"])
        assert 0.85 < ratio < 1.15, (lv, ratio)


def test_a_streamed_jackknife_of_re_enrolled_people_warns_it_leaves_episodes_out():
    """Without replicates the streamed intervals are the leave-one-episode-out jackknife's:
    the evaluation warns (pointing to the bootstrap of people) and its settings say so."""
    from equicare.data import from_frame
    from equicare.exceptions import DataWarning
    from equicare.ope._stream import MEMBER_STREAM_MESSAGE

    ds = from_frame(_people_frame(60, seed=1), copy.deepcopy(_PEOPLE_MANIFEST))
    with pytest.warns(DataWarning, match=re.escape(MEMBER_STREAM_MESSAGE)):
        res = evaluate_stream(ds, _Tilted(), estimators=["wis"], n_boot=0, groups=[],
                              diagnose_support=False)
    assert res.settings["resampling"] == "episodes"


@pytest.mark.slow
def test_streamed_intervals_of_re_enrolled_people_cover_the_truth():
    """Over 150 panels of 300 people (2-4 episodes each, a person effect in every reward), the
    streamed 95% studentized intervals that resample people cover the known value about 95% of
    the time; those that resample episodes (member not named) under-cover."""
    from equicare.data import from_frame

    no_member = copy.deepcopy(_PEOPLE_MANIFEST)
    del no_member["dataset"]["member"]
    kw = {"estimators": ["wis", "pdis"], "n_boot": 300, "groups": [],
          "diagnose_support": False}
    hits = {"people": np.zeros(2), "episodes": np.zeros(2)}
    reps = 150
    for r in range(reps):
        frame = _people_frame(300, seed=1000 + r)
        for name, m in (("people", _PEOPLE_MANIFEST), ("episodes", no_member)):
            res = evaluate_stream(from_frame(frame, copy.deepcopy(m)), _Tilted(),
                                  random_state=r, **kw)
            hits[name] += [res.estimates[k].ci[0] <= _TRUTH <= res.estimates[k].ci[1]
                           for k in kw["estimators"]]
    people, episodes = hits["people"] / reps, hits["episodes"] / reps
    assert np.all((people > 0.89) & (people < 0.99)), people  # binomial sd 1.8 points
    assert np.all(episodes < 0.85), episodes
