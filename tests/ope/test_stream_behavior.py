"""Streamed evaluation without logged propensities: a behaviour model fitted on sampled episodes."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from equicare.data import Manifest, load_dataset
from equicare.exceptions import DataValidationError, InvalidParameterError, LowESSWarning
from equicare.ope import evaluate, evaluate_stream
from equicare.ope._stream_behavior import sample_mask
from equicare.pipeline import get_executor
from equicare.policy import BehaviorModel

from ..conftest import MANIFEST, make_frame
from .test_stream import RiskPolicy, TablePolicy, _same

KEYS = ("is", "wis", "pdis", "wpdis", "dr")


def _garnet_parquet(folder, cfg, n_episodes: int, seed: int):
    """A Garnet panel written without its propensity column: path, manifest, dataset, the
    target policies' tables and the MDP."""
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import garnet_panel, garnet_target_policies

    mdp, pan = garnet_panel(cfg, n_episodes, seed)
    frame = garnet_frame(mdp, pan).drop(columns=["propensity"])
    path = folder / "g.parquet"
    frame.to_parquet(path, index=False, row_group_size=500)
    md = garnet_manifest(cfg).to_dict()
    md["dataset"].pop("behavior_prob")
    man = Manifest.from_dict(md)
    return (path, man, load_dataset(path, man, emit_warnings=False),
            garnet_target_policies(mdp), mdp)


def _garnet_table(pi):
    """A policy of a Garnet state table ``pi`` (the panel's state levels are ``s<index>``)."""
    class Table:
        def action_probs(self, d):
            lv = np.asarray([int(str(v)[1:]) for v in d.categorical_levels[0]])
            return pi[lv[d.categorical[:, 0]]]

    return Table


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """150 members, 1-12 weeks, no propensity column in the manifest."""
    folder = tmp_path_factory.mktemp("stream_beh")
    frame = make_frame(n_members=150, seed=11, min_len=1, max_len=12)
    path = folder / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=64)
    md = copy.deepcopy(MANIFEST)
    md["dataset"].pop("behavior_prob", None)
    man = Manifest.from_dict(md)
    ds = load_dataset(path, man, emit_warnings=False)
    assert ds.behavior_prob is None
    return path, man, ds


@pytest.mark.usefixtures("low_ess_warned")
def test_whole_panel_sample_is_the_in_memory_behaviour_model(panel):
    path, man, ds = panel
    bm = BehaviorModel(n_folds=3, random_state=5)
    ref = evaluate(ds, RiskPolicy(), estimators=KEYS, q_model="linear", bootstrap=0,
                   behavior_model=bm, diagnose_support=False)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=KEYS, q_model="linear",
                          behavior_model=bm, n_boot=20, chunk_rows=60,
                          behavior_sample_rows=10**9)
    assert got.behavior_model is not None and got.behavior_model["sample_rate"] == 1.0
    assert got.to_dict()["propensity_source"] == "estimated"
    for k in KEYS:
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9), k


@pytest.mark.usefixtures("low_ess_warned")
@pytest.mark.parametrize("q_model", ["linear", "auto"])
def test_whole_panel_sample_with_a_named_model_takes_the_in_memory_seeds(panel, q_model):
    """``behavior_model="logistic"`` (seeded from ``random_state``) and ``auto``'s folds: the
    streamed route derives the in-memory seeds, so a whole-panel sample gives its numbers."""
    path, man, ds = panel
    keys = (*KEYS, "fqe")
    ref = evaluate(ds, RiskPolicy(), estimators=keys, q_model=q_model, bootstrap=0,
                   random_state=7, diagnose_support=False)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys, q_model=q_model,
                          n_boot=20, random_state=7, chunk_rows=60, behavior_sample_rows=10**9)
    assert got.behavior_model is not None and got.behavior_model["sample_rate"] == 1.0
    for k in keys:
        assert got.estimates[k].value == pytest.approx(ref.estimates[k].value, rel=1e-9), k
    assert got.q_model is not None and ref.q_model is not None
    if q_model == "auto":
        assert got.q_model["chosen"] == ref.q_model["chosen"]
        bias = got.q_model["selection"]["bias"]  # the two candidates that stream
        assert len(bias) == 2 and all(v is not None for v in bias.values())
        assert bias == pytest.approx({n: ref.q_model["bias"][n] for n in bias}, rel=1e-9)


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
def test_a_sample_gives_the_same_numbers_for_any_chunking_and_sharding(panel):
    path, man, ds = panel
    kw = {"estimators": KEYS, "q_model": "linear", "n_boot": 100, "random_state": 2,
          "behavior_model": BehaviorModel(n_folds=2, random_state=1),
          "behavior_sample_rows": 400}
    whole = evaluate_stream(ds, RiskPolicy(), **kw)
    assert whole.behavior_model is not None
    assert 0.2 < whole.behavior_model["sample_episodes"] / ds.n_episodes < 0.7
    _same(whole, evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=25, **kw))
    _same(whole, evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=60,
                                 executor=get_executor("local", jobs=1), n_shards=3, **kw))


def test_sample_mask_is_a_function_of_the_episode_id():
    ids = np.arange(20_000)
    m = sample_mask(ids, 0.25, seed=3)
    assert m.mean() == pytest.approx(0.25, abs=0.015)
    np.testing.assert_array_equal(sample_mask(ids[::-1], 0.25, seed=3), m[::-1])
    assert not np.array_equal(sample_mask(ids, 0.25, seed=4), m)
    assert sample_mask(ids, 1.0, seed=3).all()


def test_estimated_propensities_from_a_sample_recover_the_exact_value(tmp_path):
    """Tabular MDP, propensities not logged: half the episodes fit the behaviour model.

    The default behaviour model (a chain of main-effect logistic regressions over the action's
    components) cannot represent this MDP's arbitrary (state, action) table, so the
    importance-sampling estimators are biased here; DR with the exact-class tabular Q-model is
    not, and must cover the truth.
    """
    from tests.learn.tabular_mdp import TabularMDP, manifest

    mdp = TabularMDP(behaviour_noise=0.5, p_end=0.15)
    frame = mdp.sample_frame(4000, random_state=7)
    man = manifest()
    man["dataset"]["groups"] = []
    target = 0.6 * mdp.behaviour + 0.4 * np.eye(mdp.n_actions)[
        np.argmax(np.where(mdp.behaviour > 0, mdp.q_optimal(mdp.support), -np.inf), axis=1)]
    truth = mdp.value(target, "A") * 0.5 + mdp.value(target, "B") * 0.5
    path = tmp_path / "tab.parquet"
    frame.to_parquet(path, index=False, row_group_size=500)
    n_rows = len(frame)
    with pytest.warns(LowESSWarning, match="The wis value rests on trajectory importance "
                                           "weights with a heavy tail"):  # WIS biased here
        res = evaluate_stream(path, TablePolicy(target), manifest=man,
                              estimators=("wis", "dr"), q_model="tabular_stationary",
                              n_boot=300, random_state=2, chunk_rows=3000,
                              behavior_sample_rows=n_rows // 2)
    assert res.behavior_model is not None and res.behavior_model["sample_rate"] < 0.6
    e = res.estimates["dr"]
    assert abs(e.value - truth) < 3.5 * e.se, (e.value, truth, e.se)
    assert e.ci[0] < truth < e.ci[1]


def test_bad_sample_size_and_empty_sample_are_user_errors(panel, monkeypatch):
    from equicare.ope import _stream_behavior as sb

    path, man, ds = panel
    with pytest.raises(InvalidParameterError,
                       match=r"The 'behavior_sample_rows' parameter of evaluate_stream must be an "
                             r"int >= 1\. Got 0 instead\."):
        evaluate_stream(path, RiskPolicy(), manifest=man, estimators=KEYS, q_model="linear",
                        chunk_rows=60, behavior_sample_rows=0)
    with pytest.raises(DataValidationError, match="The behaviour model's sample .* has no episode"):
        monkeypatch.setattr(sb, "sample_episodes", lambda source, rows, seed: (None, 0.001))
        sb.fit_behavior_stream(object(), sample_rows=10, seed=0)


@pytest.mark.parametrize(("seed", "shown"), [(3, True), (5, False)])
def test_streamed_floored_propensities_give_the_in_memory_warning(tmp_path, seed, shown):
    """Streamed (``--chunk-rows``), estimated propensities floored on logged rows are warned as
    in memory: on the ICU-shaped Garnet panel the in-memory run said it and the streamed one
    (same numbers) did not. A whole-panel sample counts the in-memory rows and episodes.

    With seed 5 they are 8 rows in 8 episodes, a small cell: both paths published it (the
    warning's counts, ``n_floored`` and, streamed, ``floored_episodes``); now neither does."""
    import re
    import warnings

    from equicare.exceptions import DataWarning
    from equicare.sim.garnet import GarnetConfig

    path, man, ds, pols, _ = _garnet_parquet(tmp_path, GarnetConfig(n_states=50, n_actions=5,
                                                                    n_successors=3), 300, seed)
    Table = _garnet_table(pols["soft_optimal"])

    def floored(fn):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            res = fn()
        hits = [str(w.message) for w in rec if issubclass(w.category, DataWarning)
                and "not logged but estimated" in str(w.message)]
        return res, hits

    # cross-fitted (the default fits in-sample), states only (the counts below are of that model)
    bm = BehaviorModel(n_folds=5, random_state=4, groups=False)
    mem, in_memory = floored(lambda: evaluate(ds, Table(), estimators=("wis", "dr"),
                                              q_model="tabular_stationary", bootstrap=0,
                                              groups=(), random_state=4, behavior_model=bm))
    got, streamed = floored(lambda: evaluate_stream(
        path, Table(), manifest=man, estimators=("wis", "dr"), q_model="tabular_stationary",
        n_boot=20, chunk_rows=700, random_state=4, groups=(), behavior_model=bm))
    assert len(in_memory) == 1 and streamed == in_memory
    assert bool(re.search(r"on \d+ logged rows, in \d+ episodes", streamed[0])) is shown
    assert ("counts not shown" not in streamed[0]) is shown
    assert got.behavior_model["floored_warning"] == streamed[0]
    assert mem.behavior_model["floored_warning"] == in_memory[0]
    counts = [mem.behavior_model["n_floored"], got.behavior_model["n_floored"],
              got.behavior_model["floored_episodes"]]
    assert counts == ([16, 16, 16] if shown else [None, None, None])
    assert bm.fit(ds).n_floored_ == (16 if shown else 8)  # kept by the model itself


def test_streamed_in_sample_propensities_give_the_in_memory_warning(tmp_path):
    """Streamed, plain IS on in-sample estimated propensities is warned about as in memory:
    the same mean trajectory weight (the behaviour policy's own, about 0.3 on 700 Garnet states
    with 1,000 episodes, against 1 with the true propensities) and the same message, in the
    result and as a DataWarning (a whole-panel sample: the in-memory model).

    The two fits see the same rows in different buffers, so with several BLAS threads the
    solver's sums differ in the last bits; a product of an episode's step ratios carries that
    to a few parts per million (2.6e-6 with two threads), hence ``rel=1e-5`` rather than exact."""
    import warnings

    from equicare.exceptions import DataWarning
    from equicare.sim.garnet import garnet_preset

    path, man, ds, pols, _ = _garnet_parquet(tmp_path, garnet_preset("s700_a25_g1"), 1000, 5)
    Table = _garnet_table(pols["behavior"])

    def run(fn):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            res = fn()
        return res, [str(w.message) for w in rec if issubclass(w.category, DataWarning)
                     and "estimated in-sample" in str(w.message)]

    kw = {"estimators": ("is", "wis", "wpdis"), "random_state": 4, "groups": ()}
    mem, in_memory = run(lambda: evaluate(ds, Table(), bootstrap=0, **kw))
    got, streamed = run(lambda: evaluate_stream(path, Table(), manifest=man, n_boot=0,
                                                chunk_rows=3000, **kw))
    assert len(in_memory) == 1 and streamed == in_memory
    assert in_memory[0].startswith("is and wpdis use")  # episodes of 1 to 120 steps
    w = got.behavior_model["mean_trajectory_weight"]
    assert w == pytest.approx(mem.behavior_model["mean_trajectory_weight"], rel=1e-5)
    assert w < 0.5
    assert got.behavior_model["in_sample_warning"] == mem.behavior_model["in_sample_warning"]
    assert got.estimates["is"].value == pytest.approx(mem.estimates["is"].value, rel=1e-5)


def test_a_sample_that_leaves_episodes_out_of_a_saturated_state_is_warned(tmp_path):
    """Exact truth, 700 Garnet states: a behaviour model fitted in-sample on half the episodes
    gives the other half out-of-sample probabilities near 0 in thin levels, and the weights
    explode (IS and DR orders of magnitude off, WDR far below the truth). Streamed on such a
    sample, evaluate_stream now says so (DataWarning, ``behavior_model.sample_warning``);
    with the whole panel as the sample it does not, and DR is right."""
    import warnings

    from equicare.exceptions import DataWarning
    from equicare.ope._stream_behavior import thin_sample_message
    from equicare.sim.garnet import garnet_preset

    path, man, ds, pols, mdp = _garnet_parquet(tmp_path, garnet_preset("s700_a25_g1"), 1000, 5)
    truth = mdp.value(pols["behavior"])
    Table = _garnet_table(pols["behavior"])
    kw = {"estimators": ("is", "dr", "wdr"), "q_model": "tabular_stationary", "n_boot": 0,
          "chunk_rows": 3000, "random_state": 4, "groups": ()}
    runs = {}
    for name, rows in (("half", ds.n_steps // 2), ("whole", ds.n_steps)):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            res = evaluate_stream(path, Table(), manifest=man, behavior_sample_rows=rows, **kw)
        runs[name] = res, [str(w.message) for w in rec if issubclass(w.category, DataWarning)
                           and "fitted in-sample on a random sample" in str(w.message)]
    half, said = runs["half"]
    assert half.estimates["is"].value > 10 * truth  # the weights explode
    assert said == [half.behavior_model["sample_warning"]]
    sample = half.behavior_model["sample_episodes"]
    assert said[0].startswith(
        "The propensities were estimated by a behaviour model fitted in-sample on a random "
        f"sample of {sample:,} of the 1,000 episodes ({sample / 10:.1f}%)")
    assert "(is, dr, wdr; measured" in said[0]
    whole, said = runs["whole"]
    assert said == [] and whole.behavior_model["sample_warning"] is None
    assert abs(whole.estimates["dr"].value / truth - 1) < 0.06
    info = {"sample_rate": 0.5, "sample_episodes": 5}
    assert thin_sample_message(BehaviorModel(), info, 10, ("is",)) is None  # not fitted: no flag
    assert thin_sample_message(type("M", (), {"saturated_": True})(), info, 10, ("fqe",)) is None


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_a_deferring_policy_reads_no_estimated_propensities_streamed_as_in_memory():
    """SPIBB with the known baseline leaves the clinicians their own probability of the actions
    never logged in a cell, read from the panel's logged propensities. Valued on a panel without
    them, streamed evaluation attached its estimated propensities to each chunk before asking
    the policy: WIS 0.7576 streamed against 0.8321 in memory here (Garnet s700_a25_g1, 1,000 +
    1,000 episodes; deferred share 0.13)."""
    from equicare.learn import SPIBB

    from ._garnet import make

    _, ds, _ = make("s700_a25_g1", 2000, seed=1)
    fit, test = ds.split(0.5, random_state=5)
    pol = SPIBB(n_wedge=20).fit(fit).policy_
    assert pol.deferred_share() > 0.05
    data = test.with_behavior_prob(None)
    mem = evaluate(data, pol, estimators=("wis",), q_model="tabular_stationary", bootstrap=0,
                   groups=[], random_state=3)
    st = evaluate_stream(data, pol, estimators=("wis",), q_model="tabular_stationary", n_boot=0,
                         groups=(), random_state=3, behavior_sample_rows=10**9)
    assert st.estimates["wis"].value == pytest.approx(mem.estimates["wis"].value, rel=1e-9)
    chunk = data.with_behavior_prob(np.full(data.n_steps, 0.5), estimated=True)
    assert chunk.policy_view().behavior_prob is None
    assert test.policy_view() is test  # logged propensities stay
