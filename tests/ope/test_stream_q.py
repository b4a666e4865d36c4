"""Streamed FQE, DR and WDR: the in-memory Q-model fit and estimates, for any chunking/sharding."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from equicare.data import Manifest, load_dataset
from equicare.exceptions import InvalidParameterError
from equicare.ope import FQEConfig, episode_keys, evaluate, evaluate_stream, poisson_weights
from equicare.ope._bootstrap import percentile_interval, studentized_intervals
from equicare.ope._core import combine, episode_parts
from equicare.ope._evaluate import _with_q_refit
from equicare.ope._prepare import prepare
from equicare.pipeline import get_executor

from ..conftest import MANIFEST, make_frame
from .test_stream import RiskPolicy, TablePolicy, _same, data_warnings, tabular_panel

ALL = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")
Q_MODELS = ("linear", "tabular_stationary", "tabular_window")


def _cfg(q_model: str) -> FQEConfig:
    return (FQEConfig(model="linear") if q_model == "linear"
            else FQEConfig(model="tabular", horizon=q_model.split("_")[1]))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """150 members, 1-12 weeks each (968 rows), Parquet row groups of 64 rows."""
    folder = tmp_path_factory.mktemp("stream_q")
    frame = make_frame(n_members=150, seed=11, min_len=1, max_len=12)
    path = folder / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=64)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    return path, man, load_dataset(path, man, emit_warnings=False)


@pytest.mark.usefixtures("low_ess_warned")
@pytest.mark.parametrize("q_model", Q_MODELS)
def test_point_estimates_equal_in_memory_evaluate(panel, q_model):
    path, man, ds = panel
    ref = evaluate(ds, RiskPolicy(), estimators=ALL, q_model=q_model, bootstrap=0,
                   diagnose_support=False)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=ALL, q_model=q_model,
                          n_boot=20, random_state=1, chunk_rows=40)  # 22 chunks
    assert got.n_chunks > 10
    for k in ALL:
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9), k
    assert got.q_model is not None and got.q_model["chosen"] == q_model
    assert got.q_model["bootstrap"] == "Q-model refit linearised in every replicate"


@pytest.mark.parametrize("q_model", Q_MODELS)
def test_replicates_are_the_in_memory_linearised_refit_under_poisson_weights(panel, q_model):
    """The streamed intervals: in-memory parts with the linearised Q refit, Poisson-weighted."""
    path, man, ds = panel
    keys = ("fqe", "dr", "wdr")
    cfg = _cfg(q_model)
    prep = prepare(ds, RiskPolicy(), keys=keys, q_model=cfg)
    assert prep.q_linearised
    parts = _with_q_refit(prep, episode_parts(prep.inputs, keys), None, "absorbing")
    w = poisson_weights(episode_keys(ds.episode_ids), 300, seed=5)
    reps = combine(parts, w @ parts.matrix, w.sum(axis=1))
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys, q_model=q_model,
                          n_boot=300, random_state=5, chunk_rows=70, ci_method="percentile")
    assert got.to_dict()["bootstrap"]["ci"] == "percentile"
    for k in keys:
        assert got.estimates[k].se == pytest.approx(float(reps[k].std(ddof=1)), rel=1e-9), k
        np.testing.assert_allclose(got.estimates[k].ci, percentile_interval(reps[k]), rtol=1e-9)
    # the refit matters: holding Q fixed gives other intervals
    fixed = combine(parts, w @ episode_parts(prep.inputs, keys).matrix, w.sum(axis=1))
    assert abs(float(fixed["fqe"].std(ddof=1)) - got.estimates["fqe"].se) > 1e-3


@pytest.mark.usefixtures("low_ess_warned")
@pytest.mark.parametrize("q_model", Q_MODELS)
def test_studentized_intervals_are_the_in_memory_bootstrap_t_under_poisson_weights(panel,
                                                                                  q_model):
    """The streamed studentized intervals (the default; one more pass over 14 chunks): the
    in-memory bootstrap-t of the parts with the linearised Q refit, Poisson-weighted."""
    path, man, ds = panel
    cfg = _cfg(q_model)
    prep = prepare(ds, RiskPolicy(), keys=ALL, q_model=cfg)
    parts = _with_q_refit(prep, episode_parts(prep.inputs, ALL), None, "absorbing")
    w = poisson_weights(episode_keys(ds.episode_ids), 300, seed=5)
    reps = combine(parts, w @ parts.matrix, w.sum(axis=1))
    ref = studentized_intervals(parts, w, reps)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=ALL, q_model=q_model,
                          n_boot=300, random_state=5, chunk_rows=70)
    # fit (2; the levels' refit pieces with it), estimates, squares
    assert got.n_chunks > 10 and got.q_model is not None and got.q_model["passes"] == 4
    assert got.to_dict()["bootstrap"]["ci"] == "studentized"
    for k in ALL:
        np.testing.assert_allclose(got.estimates[k].ci, ref[k], rtol=1e-9, err_msg=k)
        assert got.estimates[k].se == pytest.approx(float(reps[k].std(ddof=1)), rel=1e-9), k
    # studentized, not percentile: symmetric about the estimate, wider for DR/WDR here
    pct = {k: percentile_interval(reps[k]) for k in ALL}
    for k in ("dr", "wdr"):
        lo, hi = got.estimates[k].ci
        assert (lo + hi) / 2 == pytest.approx(got.estimates[k].value, abs=1e-12)
        assert hi - lo > pct[k][1] - pct[k][0], k


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
@pytest.mark.parametrize("q_model", Q_MODELS)
def test_streamed_and_sharded_equal_in_memory(panel, q_model):
    path, man, ds = panel
    kw = {"estimators": ALL, "q_model": q_model, "n_boot": 200, "random_state": 3,
          "truncate": 20.0}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    for rows in (25, 10**6):
        _same(whole, evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=rows, **kw))
    sharded = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=100,
                              executor=get_executor("local", jobs=1), n_shards=2, **kw)
    assert sharded.n_chunks >= 2
    _same(whole, sharded)


@pytest.mark.slow
@pytest.mark.usefixtures("low_ess_warned")
@pytest.mark.parametrize("q_model", Q_MODELS)
def test_two_worker_processes_equal_in_memory(panel, q_model):
    """2 shards on 2 spawned worker processes (every pass's task pickled; the stationary
    table's censoring check on this panel without terminal rows too)."""
    path, man, ds = panel
    kw = {"estimators": ALL, "q_model": q_model, "n_boot": 100, "random_state": 3}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    sharded = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=100,
                              executor=get_executor("local", jobs=2), n_shards=2, **kw)
    assert sharded.n_chunks >= 2
    _same(whole, sharded)  # every value, SE and interval to 1e-9 (np.testing)
    assert whole.q_model is not None and sharded.q_model is not None
    if q_model == "tabular_stationary":
        a, b = whole.q_model["censoring"], sharded.q_model["censoring"]
        assert a["difference_se"] is not None
        for k, v in a.items():
            assert b[k] == pytest.approx(v, rel=1e-9), k


def test_shard_tasks_pickle(panel):
    """What every pass sends to a worker survives pickling (a process pool, Ray)."""
    import functools
    import pickle

    from equicare.ope._stream import ChunkSource
    from equicare.ope._stream_q import _by_blocks, _Fit, _pass2_chunk, fit_q_stream

    path, man, ds = panel
    src = ChunkSource(path, manifest=man, chunk_rows=100)
    qfit = fit_q_stream(src, RiskPolicy(), cfg=FQEConfig(model="linear"), keys=("dr",))
    q = pickle.loads(pickle.dumps(qfit.applier()))
    np.testing.assert_array_equal(q.values(ds, RiskPolicy())[0],
                                  qfit.applier().values(ds, RiskPolicy())[0])
    z = qfit.solution.solve_t(np.ones((qfit.theta.size, 1)))
    fn = functools.partial(_by_blocks, _pass2_chunk, policy=RiskPolicy(), design=qfit.design,
                           fit=_Fit(theta=qfit.theta, z=z, infl_keys=("dr",), check_limit=1e9),
                           n_boot=5, seed=1)
    a, b = fn(ds), pickle.loads(pickle.dumps(fn))(ds)
    np.testing.assert_array_equal(a.sums.boot, b.sums.boot)


def test_streamed_dr_and_fqe_land_on_the_exact_value(tmp_path):
    """Tabular MDP with an exact value: streamed FQE/DR/WDR (stationary tabular Q) cover it."""
    from equicare.data import from_frame

    _, frame, man, target, truth = tabular_panel()
    path = tmp_path / "tab.parquet"
    frame.to_parquet(path, index=False, row_group_size=500)
    res = evaluate_stream(path, TablePolicy(target), manifest=man, estimators=("fqe", "dr", "wdr"),
                          q_model="tabular_stationary", n_boot=400, random_state=2,
                          chunk_rows=3000)
    for k in ("fqe", "dr", "wdr"):
        e = res.estimates[k]
        assert abs(e.value - truth) < 3.5 * e.se, (k, e.value, truth, e.se)
        assert e.ci[0] < truth < e.ci[1], (k, e.ci, truth)
    ds = from_frame(frame, man, emit_warnings=False)
    ref = evaluate(ds, TablePolicy(target), estimators=("fqe", "dr"),
                   q_model="tabular_stationary", bootstrap=0, diagnose_support=False)
    assert res.estimates["dr"].value == pytest.approx(ref.estimates["dr"].value, rel=1e-9)


@pytest.mark.usefixtures("low_ess_warned")
def test_q_models_that_do_not_stream_are_refused(panel):
    path, man, ds = panel
    for bad in ("gbm", "tabular_backward", FQEConfig(model="linear", state_design="quadratic")):
        with pytest.raises(InvalidParameterError, match="does not stream"):
            evaluate_stream(ds, RiskPolicy(), estimators=("fqe",), q_model=bad)
    # the importance-sampling estimators need no Q-model
    assert set(evaluate_stream(ds, RiskPolicy(), n_boot=5).estimates) == {
        "is", "wis", "pdis", "wpdis"}


@pytest.mark.parametrize("sample_rows", [10**7, 400])
def test_auto_is_the_in_memory_choice_on_a_sample_and_widens_fqe_by_its_bias(sample_rows):
    """``q_model="auto"`` streamed: ``select_q_model`` among the stationary table and the
    linear model on a sample of whole episodes (the whole panel when it is small enough: then
    exactly the in-memory choice), the chosen model fitted on every chunk, and FQE's intervals,
    overall and per level, joined with the bias-aware ones of the estimated bias."""
    from equicare.ope import select_q_model
    from equicare.ope._bootstrap import Estimate
    from equicare.ope._evaluate import bias_aware
    from equicare.ope._select import candidate_config
    from equicare.ope._stream_behavior import sample_mask
    from tests.ope._garnet import TablePolicy as GarnetTable
    from tests.ope._garnet import make

    _, ds, pols = make("s50_a5_g1", 600, seed=3)
    pol = GarnetTable(pols["soft_optimal"])
    kw = {"estimators": ("fqe", "dr", "wdr"), "n_boot": 100, "random_state": 5,
          "behavior_sample_rows": sample_rows}
    got = evaluate_stream(ds, pol, q_model="auto", **kw)
    sample = ds if sample_rows >= ds.n_steps else ds.subset(
        sample_mask(ds.episode_ids, sample_rows / ds.n_steps, 5))
    assert got.q_model["selection"]["sample_rows"] == sample.n_steps
    from equicare.ope._evaluate import nuisance_seed

    ref = select_q_model(sample, pol.action_probs(sample),  # the in-memory evaluate's folds
                         candidates=("linear", "tabular_stationary"),
                         random_state=nuisance_seed(5), groups=["group"])
    sel = got.q_model["selection"]
    assert sel["chosen"] == got.q_model["chosen"] == ref.chosen
    assert sel["candidates"] == pytest.approx(ref.candidates, rel=1e-12)
    # the chosen model fitted on every chunk: the explicit streamed model's estimates ...
    fixed = evaluate_stream(ds, pol, q_model=candidate_config(ref.chosen), **kw)
    for k in ("dr", "wdr"):
        assert got.estimates[k] == fixed.estimates[k]
    # ... with FQE's intervals widened by the estimated bias, overall and per level
    e = fixed.estimates["fqe"]
    widened = bias_aware(Estimate(value=e.value, ci=e.ci, se=e.se, n_episodes=0),
                         ref.bias[ref.chosen], ref.bias_se[ref.chosen])
    assert got.estimates["fqe"].ci == pytest.approx(widened.ci, rel=1e-12)
    assert got.estimates["fqe"].ci[1] - got.estimates["fqe"].ci[0] >= e.ci[1] - e.ci[0]
    assert "bias-aware" in got.q_model["fqe_interval"]
    for lv, g in got.groups["group"].items():
        f = fixed.groups["group"][lv].estimates["fqe"]
        b, se = ref.group_bias["group"][lv]
        w = bias_aware(Estimate(value=f.value, ci=f.ci, se=f.se, n_episodes=0), b, se)
        assert g.estimates["fqe"].ci == pytest.approx(w.ci, rel=1e-12), lv


class _AlwaysAct:
    def action_probs(self, d):
        return np.tile([0.0, 1.0], (d.n_steps, 1))


def _episode_chunks(ds, n: int) -> list:
    from equicare.data import Chunk

    cuts = np.linspace(0, ds.n_episodes, n + 1).astype(int)
    return [Chunk(index=i, dataset=ds.subset(np.arange(a, b)), first_row=0)
            for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]


def test_streamed_auto_bins_numeric_states_as_in_memory():
    """A 0/1/2 need drives outcomes and actions within 3 sites that do not matter
    (``test_select``'s count panel): streamed ``auto`` offers the need's tercile bins to the
    cells' choice as in memory (before: the site table only, FQE +16%), keeps them over the
    site, and on a sample that is the whole panel chooses the in-memory table with the
    in-memory estimates, whatever the chunking; on a smaller sample the edges are the
    sample's, and ``numeric_bins["why"]`` says so."""
    from .test_select import _count_state_panel

    ds, truth = _count_state_panel(1000, seed=0)
    kw = {"estimators": ("fqe", "dr"), "groups": [], "random_state": 0}
    ref = evaluate(ds, _AlwaysAct(), bootstrap=0, **kw)
    assert ref.q_model is not None and ref.q_model["chosen"] == "tabular_stationary[x@0.5/1.5]"
    for n_chunks in (1, 4):
        got = evaluate_stream(_episode_chunks(ds, n_chunks), _AlwaysAct(), n_boot=0, **kw)
        assert got.q_model is not None and got.q_model["chosen"] == ref.q_model["chosen"]
        assert got.q_model["selection"]["numeric_bins"] == ref.q_model["numeric_bins"] == {
            "offered": ["x@0.5/1.5"]}
        assert got.q_model["selection"]["cell_choice"]["dropped"] == ["site"]
        assert "ignored_numeric" not in got.q_model  # the table uses x's bins
        for k in ("fqe", "dr"):
            assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-7)
    assert abs(got.estimates["fqe"].value - truth) / truth < 0.06
    small = evaluate_stream(_episode_chunks(ds, 4), _AlwaysAct(), n_boot=0,
                            behavior_sample_rows=3000, **kw)
    assert small.q_model is not None
    bins = small.q_model["selection"]["numeric_bins"]
    assert bins["offered"] == ["x@0.5/1.5"]  # x's masses keep the terciles' sides here
    sample_rows = small.q_model["selection"]["sample_rows"]
    assert bins["why"] == (f"the bins' edges are the terciles of auto's sample ({sample_rows} "
                           f"rows of whole episodes, {3000 / ds.n_steps:.1%} of the panel's), "
                           "not the whole panel's (in memory)")


def test_unstable_linear_fixed_point_falls_back_to_iteration_like_in_memory(panel, monkeypatch):
    """Force the stability check to fail: both engines iterate, Q held fixed in the bootstrap."""
    import equicare.ope._fqe as fqe
    import equicare.ope._stream_q as stream_q

    path, man, ds = panel
    monkeypatch.setattr(fqe._QFunction, "bounded", lambda self, limit: False)
    monkeypatch.setattr(stream_q, "_bounded", lambda lm, theta, limit: False)
    ref = evaluate(ds, RiskPolicy(), estimators=("fqe", "dr"), q_model="linear", bootstrap=0,
                   diagnose_support=False)
    assert ref.q_model is not None and ref.q_model["solver"] == "iterate"
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("fqe", "dr"),
                          q_model="linear", n_boot=20, random_state=1, chunk_rows=100)
    assert got.q_model is not None and got.q_model["solver"] == "iterate"
    assert got.q_model["bootstrap"] == "Q-model fitted once on all episodes"
    for k in ("fqe", "dr"):
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9)


@pytest.mark.slow
@pytest.mark.usefixtures("low_ess_warned")
def test_ray_shards_equal_in_memory_with_a_q_model(panel, ray):
    """Two local Ray workers: FQE, DR and WDR equal the in-memory streamed numbers."""
    path, man, ds = panel
    kw = {"estimators": ALL, "q_model": "linear", "n_boot": 200, "random_state": 3}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    with get_executor("ray", address="local", jobs=2) as ex:
        sharded = evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=40, executor=ex,
                                  n_shards=4, **kw)
    assert sharded.n_chunks >= 4
    _same(whole, sharded)


def test_streamed_table_takes_its_cells(tmp_path):
    """With a second categorical column, the streamed table over the cells named equals the
    in-memory one (``q_model="tabular_stationary[region]"``), and is named so; without cells
    they are chosen on a sample of episodes, as ``auto`` chooses them in memory."""
    frame = make_frame(n_members=120, seed=5, min_len=1, max_len=10)
    frame["site"] = np.random.default_rng(0).integers(0, 6, frame["member_id"].nunique())[
        frame["member_id"].astype("category").cat.codes.to_numpy()]
    path = tmp_path / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=50)
    d = copy.deepcopy(MANIFEST)
    d["dataset"]["categorical_states"] = ["region", "site"]
    man = Manifest.from_dict(d)
    ds = load_dataset(path, man, emit_warnings=False)
    ref = evaluate(ds, RiskPolicy(), estimators=("fqe", "dr", "wdr"),
                   q_model="tabular_stationary[region]", bootstrap=0, diagnose_support=False)
    full = evaluate(ds, RiskPolicy(), estimators=("fqe",),
                    q_model="tabular_stationary[region,site]", bootstrap=0,
                    diagnose_support=False)
    assert full.estimates["fqe"].value != pytest.approx(ref.estimates["fqe"].value, rel=1e-6)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("fqe", "dr", "wdr"),
                          q_model=FQEConfig(model="tabular", horizon="stationary",
                                            cells=("region",)),
                          n_boot=20, random_state=1, chunk_rows=60)
    for k in ("fqe", "dr", "wdr"):
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9), k
    assert got.q_model is not None and got.q_model["chosen"] == "tabular_stationary[region]"
    # without cells: chosen on a sample of episodes (here the whole panel), as in memory
    from equicare.data import choose_cells

    assert choose_cells(ds, random_state=1).columns == ("region",)
    auto = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("fqe", "dr", "wdr"),
                           q_model="tabular_stationary", n_boot=20, random_state=1,
                           chunk_rows=60)
    assert auto.q_model is not None and auto.q_model["chosen"] == "tabular_stationary[region]"
    assert auto.q_model["cell_choice"]["dropped"] == ["site"]
    assert auto.q_model["cell_choice"]["sample_rows"] == ds.n_steps
    for k in ("fqe", "dr", "wdr"):
        assert auto.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9), k


def test_auto_without_categorical_states_takes_linear_without_a_sample(panel, monkeypatch):
    """No categorical states: linear is the only applicable candidate, chosen as in memory
    without cross-fitting, and no sampling pass is read."""
    import equicare.ope._stream_behavior as sb
    from equicare.ope import select_q_model

    path, _, _ = panel
    d = copy.deepcopy(MANIFEST)
    del d["dataset"]["categorical_states"]
    man = Manifest.from_dict(d)
    ds = load_dataset(path, man, emit_warnings=False)
    ref = select_q_model(ds, RiskPolicy().action_probs(ds),
                         candidates=("linear", "tabular_stationary"), random_state=1)
    assert ref.chosen == "linear" and ref.n_folds == 0

    def no_sample(*args, **kwargs):
        raise AssertionError("sampled episodes to choose between one candidate")

    monkeypatch.setattr(sb, "sample_episodes", no_sample)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("fqe", "dr"),
                          q_model="auto", n_boot=10, random_state=1, chunk_rows=100)
    fixed = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("fqe", "dr"),
                            q_model="linear", n_boot=10, random_state=1, chunk_rows=100)
    sel = got.q_model["selection"]
    assert got.q_model["chosen"] == "linear" and sel["n_folds"] == 0
    assert sel["candidates"] == ref.candidates and sel["skipped"] == ref.skipped
    assert got.estimates == fixed.estimates


def test_thin_cells_are_warned_about_as_in_memory(tmp_path):
    """Two 20-level categorical columns over 968 rows: the table's cells hold under 3 rows
    each. Streamed over 17 chunks, the warning counts the visited cells and levels from pass 0
    and says, word for word, what the in-memory evaluation says."""
    frame = make_frame(n_members=150, seed=11, min_len=1, max_len=12).sort_values(
        ["member_id", "week"])
    rng = np.random.default_rng(0)
    frame["a"], frame["b"] = (rng.integers(0, 20, len(frame)) for _ in range(2))
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path, index=False)
    d = copy.deepcopy(MANIFEST)
    d["dataset"]["categorical_states"] = ["a", "b"]
    man = Manifest.from_dict(d)
    ds = load_dataset(path, man, emit_warnings=False)
    q = FQEConfig(model="tabular", horizon="stationary", cells=("a", "b"))
    keys = ("fqe", "dr")
    ref = data_warnings(lambda: evaluate(ds, RiskPolicy(), estimators=keys, q_model=q,
                                         bootstrap=0, groups=[], diagnose_support=False),
                        "cells this thin")
    got = data_warnings(lambda: evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys,
                                                q_model=q, n_boot=10, groups=(), chunk_rows=60,
                                                diagnose_support=False), "cells this thin")
    assert len(ref) == 1 and "(a x b: " in ref[0] and got == ref


@pytest.fixture(scope="module")
def garnet(tmp_path_factory):
    """A Garnet panel (s50_a25_g1, 600 episodes of 1 to 100+ steps, logged propensities) with
    its soft-optimal target as a policy file; groups ``group``."""
    from equicare.policy import load_policy
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import garnet_preset

    folder = tmp_path_factory.mktemp("stream_q_garnet")
    paths = synth_garnet(folder, config=garnet_preset("s50_a25_g1"), n_episodes=600, seed=7)
    ds = load_dataset(paths["panel"], paths["manifest"], emit_warnings=False)
    return paths, ds, load_policy(paths["policies"]["soft_optimal"])


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
def test_jackknife_intervals_equal_in_memory_on_a_garnet_panel(garnet):
    """n_boot=0 on episodes of 1 to 100+ steps (WPDIS and WDR over 100+ per-step columns):
    every estimator's jackknife interval, overall and per group, as in memory."""
    from .test_stream import same_as_in_memory

    paths, ds, policy = garnet
    assert ds.episode_lengths.min() == 1 and ds.episode_lengths.max() > 50
    ref = evaluate(ds, policy, estimators=ALL, q_model="tabular_stationary", bootstrap=0,
                   truncate=50.0, diagnose_support=False, random_state=3).to_dict()
    got = evaluate_stream(paths["panel"], policy, manifest=paths["manifest"], estimators=ALL,
                          q_model="tabular_stationary", n_boot=0, truncate=50.0,
                          random_state=3, chunk_rows=1000)
    assert got.n_chunks > 3
    assert same_as_in_memory(got.to_dict(), ref) >= 2


def test_a_tables_per_step_gradient_pieces_grow_with_rows_not_pairs_x_steps(garnet):
    """Pass 1 keeps WDR's per-step pieces (overall and per group) sparse for a table: their
    entries are bounded by the rows (times a cell's visited actions), not by pairs x steps x
    groups (dense, they took 1 GB on a 5,000-state panel of 66k rows; streamed evaluate peaked
    at 1.19 GB against 0.76 GB now). Same gradients as the dense pieces."""
    import scipy.sparse as sp

    from equicare.ope._stream import ChunkSource
    from equicare.ope._stream_q import GroupCodes, _gradients, _steps_dense, fit_q_stream

    paths, ds, policy = garnet
    codes = np.unique(ds.groups["group"], return_inverse=True)[1].reshape(-1, 1)
    starts = {e: i for i, e in enumerate(ds.episode_ids)}
    groups = GroupCodes(codes=lambda c: codes[[starts[e] for e in c.episode_ids]],
                        n_groups=int(codes.max()) + 1, keys=("dr", "wdr"))
    src = ChunkSource(paths["panel"], manifest=paths["manifest"], chunk_rows=2000)
    p1 = fit_q_stream(src, policy, cfg=FQEConfig(model="tabular", horizon="stationary"),
                      keys=("dr", "wdr"), groups=groups).pass1
    n_pairs, h = p1.a.shape
    assert h == src.horizon > 50
    for m in (p1.a, p1.b, p1.groups.a, p1.groups.b):
        assert sp.issparse(m)
        assert m.nnz <= ds.n_steps * ds.n_actions
    assert p1.b.nnz <= ds.n_steps < n_pairs * h / 5  # one (pair, step) entry per row
    # the dense pieces' gradient: sum over steps of a / s_prev_t - b / s_t
    a, b = p1.a.toarray(), p1.b.toarray()
    s_prev, s = np.where(p1.s_prev > 0, p1.s_prev, 1.0), np.where(p1.s > 0, p1.s, 1.0)
    dense = np.column_stack([(a - b).sum(axis=1) / p1.n_episodes,
                             (a / s_prev - b / s).sum(axis=1)])
    np.testing.assert_allclose(_gradients(p1, ("dr", "wdr")), dense, rtol=1e-12, atol=1e-15)
    g = p1.groups
    ga = _steps_dense(g.a, groups.n_groups)  # (H, n_pairs, C)
    assert ga.shape == (h, n_pairs, groups.n_groups)
    np.testing.assert_allclose(ga.sum(axis=(0, 2)), np.asarray(g.a.sum(axis=1)).ravel())
