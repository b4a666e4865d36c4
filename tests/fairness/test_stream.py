"""Streamed fairness audit: the in-memory audit's numbers, chunk by chunk."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from equicare.data import Manifest, load_dataset
from equicare.fairness import FairnessAudit
from equicare.fairness._stream import audit_stream
from equicare.ope import episode_keys, poisson_weights

from ..conftest import MANIFEST, make_frame
from ..ope.test_stream import RiskPolicy

# the in-memory audits of RiskPolicy warn about their weights' low ESS; not compared here
pytestmark = pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit_stream")
    frame = make_frame(n_members=160, seed=5, min_len=1, max_len=10)
    path = folder / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=50)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    return path, man, load_dataset(path, man, emit_warnings=False)


def _numbers(res) -> str:
    return json.dumps(res.to_dict(), sort_keys=True, default=str)


@pytest.mark.parametrize(("estimator", "chunk_rows"), [
    ("wis", 7), ("wis", 10**6), ("wpdis", 7), ("wpdis", 10**6), ("dr", 40), ("fqe", 10**6)])
def test_streamed_audit_equals_in_memory(panel, estimator, chunk_rows):
    _assert_same(*_both(*panel, estimator, chunk_rows))


def _both(path, man, ds, estimator, chunk_rows):
    """The in-memory and the streamed audit's result dicts (RiskPolicy, seed 8)."""
    cfg = FairnessAudit(action="modality=home_visit", n_boot=150, n_permutations=200,
                        estimator=estimator, min_cell=11)
    w = poisson_weights(episode_keys(ds.episode_ids), 150, seed=8)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=8)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg,
                       chunk_rows=chunk_rows, random_state=8)
    return ref.to_dict(), got.to_dict()


def _assert_same(a, b):
    """Two result dicts hold the same keys and numbers (floats to 1e-9 relative).

    The weight diagnostics (ESS overall and by group) and the support check included: exact
    sums, except the per-episode support shares' median and p90, which the streamed audit takes
    from a histogram (within half a bin). Each policy's ``q_model``: the same ``chosen`` and
    ``replaced``, and the same score for every candidate both consider (streamed ``auto``
    considers those that stream; an in-memory audit given ``auto``'s choice by name has none,
    nor its ``numeric_bins``).
    """
    from equicare.ope._stream_support import HIST_WIDTH

    ref, got = _flatten(a), _flatten(b)
    q_keys = {k for k in (*ref, *got) if "/q_model/" in k}
    for k in q_keys:
        if "/q_model/candidates/" in k or "/q_model/numeric_bins/" in k:  # auto's own
            if k in ref and k in got:
                assert got[k] == pytest.approx(ref[k], rel=1e-9), k
        elif "/q_model/skipped/" not in k:
            assert got.get(k) == ref.get(k), k
        ref.pop(k, None)
        got.pop(k, None)
    assert ref.keys() == got.keys()
    for k, v in ref.items():
        if k.endswith(("per_episode_pct/median", "per_episode_pct/p90",
                       "per_episode_pct/p_top11")):
            assert abs(got[k] - v) <= HIST_WIDTH / 2 + 1e-12, k
        elif isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        else:
            assert got[k] == v, k


def _flatten(d, prefix=""):
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = d
    return out


@pytest.mark.parametrize("estimator", ["fqe", "dr", "wdr"])
def test_streamed_audit_with_the_stationary_table_equals_in_memory(panel, estimator):
    """Group values by the stationary tabular Q-model (the usual choice on categorical states)
    from chunk sums, its refit in every replicate: the in-memory audit's numbers."""
    path, man, ds = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=120, n_permutations=50,
                        estimator=estimator, q_model="tabular_stationary")
    w = poisson_weights(episode_keys(ds.episode_ids), 120, seed=9)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=9)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg,
                       chunk_rows=45, random_state=9)
    _assert_same(ref.to_dict(), got.to_dict())
    fixed = FairnessAudit(action="modality=home_visit", n_boot=120, n_permutations=50,
                          estimator=estimator, q_model="linear")
    other = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=fixed,
                         chunk_rows=45, random_state=9)
    assert other.to_dict() != got.to_dict()  # the table is not the linear model


def test_streamed_audit_with_auto_is_the_in_memory_audit_with_its_choice(panel):
    """``q_model="auto"`` streamed: each policy's Q-model chosen between the stationary table
    and the linear model on a sample of whole episodes (here the whole panel), then fitted
    from chunk sums: the in-memory audit with that Q-model."""
    from equicare.ope._stream import ChunkSource
    from equicare.ope._stream_q import choose_q_stream

    path, man, ds = panel
    _, sel, _ = choose_q_stream(ChunkSource(path, manifest=man, chunk_rows=45), RiskPolicy(),
                                sample_rows=10**6, seed=9)
    kw = {"action": "modality=home_visit", "n_boot": 80, "n_permutations": 30,
          "estimator": "dr"}
    w = poisson_weights(episode_keys(ds.episode_ids), 80, seed=9)
    ref = FairnessAudit(q_model=sel.chosen, **kw).run(ds, {"risk": RiskPolicy()}, weights=w,
                                                      random_state=9)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man,
                       config=FairnessAudit(q_model="auto", **kw), chunk_rows=45,
                       random_state=9)
    _assert_same(ref.to_dict()["policies"], got.to_dict()["policies"])  # settings name auto


def test_streamed_audit_refuses_q_models_that_do_not_stream(panel):
    path, man, _ = panel
    for q_model in ("tabular", "tabular_backward", "gbm"):
        with pytest.raises(ValueError, match="'auto', 'linear', 'tabular_stationary' or "
                                             "'tabular_window'"):
            audit_stream(path, {}, manifest=man, config=FairnessAudit(estimator="dr",
                                                                       q_model=q_model))


def test_sharded_audit_with_dr_equals_in_memory(panel):
    """Group values by DR (linear Q-model from chunk sums) on 2 shards: the in-memory audit."""
    from equicare.pipeline import get_executor

    path, man, ds = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=100, n_permutations=50,
                        estimator="wdr")
    w = poisson_weights(episode_keys(ds.episode_ids), 100, seed=4)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=4)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, random_state=4,
                       chunk_rows=80, executor=get_executor("local", jobs=1), n_shards=2)
    _assert_same(ref.to_dict(), got.to_dict())


def test_sharded_audit_equals_streamed(panel):
    from equicare.pipeline import get_executor

    path, man, _ = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=100, n_permutations=100)
    ref = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, random_state=3)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, random_state=3,
                       chunk_rows=20, executor=get_executor("local", jobs=1), n_shards=4)
    _assert_same(ref.to_dict(), got.to_dict())


class _Counting:
    """An executor that records how many shard tasks each ``map`` sent (and forwards sessions)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    @property
    def n_workers(self):
        return self.inner.n_workers

    def session(self):
        import contextlib

        return getattr(self.inner, "session", contextlib.nullcontext)()

    def map(self, fn, items):
        items = list(items)
        self.calls.append(len(items))
        return self.inner.map(fn, items)


def _assert_dr_audit_equals_in_memory(executor, panel, n_shards):
    path, man, ds = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=60, n_permutations=40,
                        estimator="dr")
    w = poisson_weights(episode_keys(ds.episode_ids), 60, seed=6)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=6)
    counting = _Counting(executor)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, random_state=6,
                       chunk_rows=60, executor=counting, n_shards=n_shards)
    # the Q-model's passes (statistics, fit, stability check) and the audit's: each on >1 shard
    assert len(counting.calls) >= 3 and min(counting.calls) >= 2, counting.calls
    _assert_same(ref.to_dict(), got.to_dict())


@pytest.mark.slow
def test_dr_audit_on_two_worker_processes_equals_in_memory(panel):
    """Group values by DR with every pass's shards on a pool of 2 spawned processes."""
    from equicare.pipeline import LocalExecutor

    _assert_dr_audit_equals_in_memory(LocalExecutor(jobs=2), panel, n_shards=3)


@pytest.mark.slow
def test_dr_audit_on_two_ray_workers_equals_in_memory(panel, ray):
    from equicare.pipeline import get_executor

    with get_executor("ray", address="local", jobs=2) as ex:
        _assert_dr_audit_equals_in_memory(ex, panel, n_shards=4)


def test_streamed_audit_fits_the_q_model_with_the_in_memory_audits_seed(panel, monkeypatch):
    """``q_model="auto"``: the streamed audit chooses with the seed the in-memory audit and
    ``evaluate`` use (``nuisance_seed``), so on a sample that is the whole panel its choice,
    scores and numbers are the in-memory audit's under the same seed."""
    from equicare.ope import _prepare, _select
    from equicare.ope._evaluate import nuisance_seed

    path, man, ds = panel
    calls: list[tuple[int, dict]] = []
    real = _select.select_q_model

    def spy(*args, **kwargs):
        sel = real(*args, **kwargs)
        calls.append((kwargs["random_state"], dict(sel.candidates)))
        return sel

    monkeypatch.setattr(_prepare, "select_q_model", spy)  # the in-memory audit's prepare
    monkeypatch.setattr(_select, "select_q_model", spy)  # the streamed choice
    kw = {"action": "modality=home_visit", "n_boot": 60, "n_permutations": 30,
          "estimator": "dr", "q_model": "auto"}
    w = poisson_weights(episode_keys(ds.episode_ids), 60, seed=11)
    ref = FairnessAudit(**kw).run(ds, {"risk": RiskPolicy()}, weights=w, random_state=11)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=FairnessAudit(**kw),
                       chunk_rows=45, random_state=11)
    (mem_seed, mem_scores), (st_seed, st_scores) = calls
    assert mem_seed == st_seed == nuisance_seed(11)
    # the candidates both consider (streamed auto: those that stream) score the same; risk
    # varies within the cells, and streamed as in memory the table keeps its tercile bins
    table = "tabular_stationary[risk@-0.3377/0.458]"
    assert set(st_scores) == {"linear", table} <= set(mem_scores)
    assert st_scores == pytest.approx({k: mem_scores[k] for k in st_scores}, rel=1e-7)
    # and the audits say so: each policy's q_model, auto's choice and the candidates' scores
    mem_q, st_q = (r.to_dict()["policies"]["risk"]["q_model"] for r in (ref, got))
    assert mem_q["chosen"] == st_q["chosen"] == table
    assert st_q["candidates"] == pytest.approx(st_scores, rel=1e-12)
    assert mem_q["candidates"] == pytest.approx(mem_scores, rel=1e-12)
    assert "replaced" not in mem_q and "replaced" not in st_q
    # here the in-memory auto also keeps the stationary table: the same audit
    _assert_same(ref.to_dict(), got.to_dict())


def test_streamed_audit_with_a_single_published_group_is_an_error(panel, tmp_path):
    from equicare.exceptions import DataValidationError

    path, man, _ = panel
    frame = pd.read_parquet(path)
    frame["sex"] = "f"  # one level
    one = tmp_path / "one.parquet"
    frame.to_parquet(one, index=False)
    with pytest.raises(DataValidationError, match=re.escape(
            "group 'sex': only 1 group can be published (f); a parity audit needs at least 2.")):
        audit_stream(one, manifest=man, config=FairnessAudit(group="sex", n_boot=0,
                                                             n_permutations=0),
                     chunk_rows=50, random_state=0)


def test_streamed_audit_leaves_out_a_group_whose_weights_are_all_zero(panel):
    from .test_audit import ZeroWeightPolicy

    path, man, ds = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=40, n_permutations=0,
                        estimator="wis", min_cell=11)
    pols = {"p": ZeroWeightPolicy("race", ("a",)), "never": ZeroWeightPolicy("race")}
    w = poisson_weights(episode_keys(ds.episode_ids), 40, seed=2)
    ref = cfg.run(ds, pols, weights=w, random_state=2)
    got = audit_stream(path, pols, manifest=man, config=cfg, chunk_rows=9, random_state=2)
    _assert_same(ref.to_dict(), got.to_dict())
    p = got.to_dict()["policies"]
    assert p["p"]["value_by_group"]["a"]["value"] is None
    assert p["p"]["worst_group_value"]["excluded_groups"] == ["a"]
    assert p["never"]["value"]["value"] is None and "reason" in p["never"]["value"]


def test_streamed_audit_seed_default_is_the_in_memory_audits(panel):
    """``audit_stream``'s ``random_state`` default is ``audit``'s and ``FairnessAudit.run``'s
    (None: fresh entropy); an int, a Generator or None are accepted; the CLI's default is 42
    with and without --chunk-rows (one --seed option)."""
    import inspect

    import numpy as np

    from equicare.exceptions import InvalidParameterError
    from equicare.fairness import audit
    from equicare.fairness._audit import FairnessAudit as FA

    default = inspect.signature(audit_stream).parameters["random_state"].default
    assert default is inspect.signature(audit).parameters["random_state"].default
    assert default is inspect.signature(FA.run).parameters["random_state"].default
    path, man, _ = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=20, n_permutations=10,
                        estimator="wis")
    for rs in (None, np.random.default_rng(1)):
        res = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg,
                           random_state=rs)
        assert set(res.policies) == {"behavior", "risk"}
    for bad in (True, -1, "x"):
        with pytest.raises(InvalidParameterError, match="random_state"):
            audit_stream(path, {}, manifest=man, config=cfg, random_state=bad)


@pytest.mark.parametrize("missing", [None, ""])
def test_streamed_audit_refuses_a_missing_group_label_before_any_pass(panel, tmp_path, missing):
    from equicare.data._labels import MSG_MISSING_GROUP
    from equicare.exceptions import DataValidationError

    path, man, _ = panel
    frame = pd.read_parquet(path)
    frame["race"] = frame["race"].astype(object)
    frame.loc[frame["member_id"] == "m007", "race"] = missing
    bad = tmp_path / "missing.parquet"
    frame.to_parquet(bad, index=False, row_group_size=50)
    msg = MSG_MISSING_GROUP.format(where=str(bad), column="race",
                                   rows="1 episode (first: 'm007'; episode ids)")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        audit_stream(bad, manifest=man, config=FairnessAudit(group="race", n_boot=0,
                                                             n_permutations=0),
                     chunk_rows=50, random_state=0)


@pytest.mark.parametrize(("estimator", "chunk_rows"), [("wis", 7), ("wis", 10**6), ("dr", 40)])
def test_streamed_audit_estimates_missing_propensities_as_in_memory(panel, estimator,
                                                                    chunk_rows):
    """No logged propensities: a behaviour model fitted on sampled whole episodes (here the
    whole panel, as in memory), not an error."""
    path, man, _ = panel
    md = copy.deepcopy(MANIFEST)
    md["dataset"].pop("behavior_prob")
    man = Manifest.from_dict(md)
    ds = load_dataset(path, man, emit_warnings=False)
    assert ds.behavior_prob is None
    # values, ESS and the support check against the behaviour model
    _assert_same(*_both(path, man, ds, estimator, chunk_rows))


class _Cells:
    """tests/ope/test_censoring.py's target policy, by each row's cell (its level)."""

    def action_probs(self, ds):
        from ..ope.test_censoring import TGT

        return TGT[np.asarray(ds.categorical_levels[0])[ds.categorical[:, 0]]]


@pytest.fixture(scope="module")
def censored(tmp_path_factory):
    """tests/ope/test_censoring.py's panel (2,000 stays cut at 10 steps, about 18% censored,
    outcomes at the end of a stay) as a Parquet panel with its manifest, and loaded."""
    from ..cli.test_stream import _censored_panel_files

    path, man, _ = _censored_panel_files(tmp_path_factory.mktemp("audit_censored"))
    ds = load_dataset(path, man, emit_warnings=False)
    assert 0.12 < ds.censored.mean() < 0.25
    return path, man, ds


def _censored_both(censored, estimator, q_model, n_boot=100):
    """The in-memory and the streamed audit (3 chunks) of the cut panel: result dicts and the
    DataWarnings each emitted."""
    import warnings

    from equicare.exceptions import DataWarning

    path, man, ds = censored
    cfg = FairnessAudit(action="action=1", n_boot=n_boot, n_permutations=20,
                        estimator=estimator, q_model=q_model)
    w = poisson_weights(episode_keys(ds.episode_ids), n_boot, seed=8)
    out = []
    for stream in (False, True):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            res = (audit_stream(path, {"tgt": _Cells()}, manifest=man, config=cfg,
                                chunk_rows=3000, random_state=8) if stream
                   else cfg.run(ds, {"tgt": _Cells()}, weights=w, random_state=8))
        out.append((res.to_dict(), [str(x.message) for x in got
                                    if issubclass(x.category, DataWarning)]))
    return out


@pytest.mark.parametrize("estimator", ["fqe", "dr", "wdr"])
def test_streamed_audit_with_the_window_table_equals_in_memory(censored, estimator):
    """``q_model="tabular_window"`` streams (it was refused): the in-memory group values and
    intervals, the window table's refit in every replicate, to 1e-9."""
    (ref, ref_w), (got, got_w) = _censored_both(censored, estimator, "tabular_window")
    _assert_same(ref, got)
    assert "censoring" not in got["policies"]["tgt"]["diagnostics"]  # only a stationary table
    assert not ref_w and not got_w


def test_streamed_audit_with_auto_replaces_the_stationary_table_as_in_memory(censored):
    """``q_model="auto"`` on censored stays: auto's criterion picks the stationary table, whose
    value is about 6% low; the censoring check replaces it by the window table streamed as in
    memory (before, the streamed audit kept the stationary table: DR 0.4900 against 0.5253 on
    the 5,000-stay panel). The same numbers, the check in the diagnostics, no warning."""
    from ..ope.test_censoring import window_value

    (ref, ref_w), (got, got_w) = _censored_both(censored, "dr", "auto")
    _assert_same(ref, got)
    c = got["policies"]["tgt"]["diagnostics"]["censoring"]
    assert c["switched_to_window"] and c["warning"] and c["difference_pct"] < -4
    for res in (ref, got):  # the q_model entry says which table valued the policy, and why
        q = res["policies"]["tgt"]["q_model"]
        assert (q["chosen"], q["replaced"]) == ("tabular_window", "tabular_stationary")
        assert q["candidates"]["tabular_stationary"] is not None
    assert not ref_w and not got_w and not [m for m in got["warnings"] if "censored" in m]
    (win, _), _ = _censored_both(censored, "dr", "tabular_window")
    for k in ("value", "value_by_group"):
        a, b = (_flatten(r["policies"]["tgt"][k]) for r in (got, win))
        assert a.keys() == b.keys() and all(a[p] == b[p] for p in a if isinstance(a[p], str))
        assert {p: v for p, v in a.items() if not isinstance(v, str)} == pytest.approx(
            {p: v for p, v in b.items() if not isinstance(v, str)}, rel=1e-9, nan_ok=True), k
    assert got["policies"]["tgt"]["value"]["value"] == pytest.approx(window_value(10), rel=0.03)


def test_streamed_audit_warns_about_censored_stays_as_in_memory(censored):
    """A stationary table the user named stays, and the audit says what ``evaluate`` says
    (it said nothing, streamed or not): the warning naming the policy and the window table, in
    ``warnings`` and the diagnostics' ``censoring``, the same numbers streamed."""
    (ref, ref_w), (got, got_w) = _censored_both(censored, "fqe", "tabular_stationary")
    _assert_same(ref, got)
    c = got["policies"]["tgt"]["diagnostics"]["censoring"]
    assert c["warning"] and not c["switched_to_window"]
    assert got_w == ref_w and got["warnings"] == ref["warnings"]
    cens = [m for m in got_w if "censored" in m]  # besides it: the table's FQE biased in a
    assert len(cens) == 1 and len(got_w) <= 2  # group (its check, as evaluate's subgroups)
    assert cens[0].startswith("policy 'tgt': ") and "tabular_window" in cens[0]
    assert cens[0] in got["warnings"]


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.parametrize("q_model", ["tabular_window", "tabular_stationary"])
def test_streamed_audit_on_a_cut_garnet_panel_equals_in_memory(tmp_path, q_model):
    """Garnet s50_a25_g1 (600 stays of 1 to 100+ steps, 25 actions) cut at windows uniform on
    2-30 steps (33% censored): DR group values with the window table, or with the stationary
    table and its check (1.3% apart: no warning), streamed in 3 chunks as in memory."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ope._garnet import censor_windows, make

    _, ds0, pols = make("s50_a25_g1", 600, 11)
    cut, _ = censor_windows(ds0, 2, 30, 3)
    grp = np.where(np.arange(cut.n_episodes) % 3 == 0, "a", "b")
    pd.DataFrame({"episode": cut.episode_ids[cut.episode_index], "t": cut.step,
                  "state": cut.categorical[:, 0], "severity": cut.states[:, 0].astype(float),
                  "action": cut.actions, "reward": cut.rewards,
                  "terminal": cut.terminals.astype(int), "propensity": cut.behavior_prob,
                  "g": grp[cut.episode_index]}).to_parquet(tmp_path / "p.parquet", index=False)
    man = Manifest.from_dict({
        "dataset": {"episode": "episode", "time": "t", "states": ["severity"],
                    "categorical_states": ["state"], "groups": ["g"], "terminal": "terminal",
                    "behavior_prob": "propensity", "gamma": cut.gamma},
        "actions": {"action": {"levels": cut.n_actions}},
        "reward": {"reward": {"column": "reward", "weight": 1.0}}})
    ds = load_dataset(tmp_path / "p.parquet", man, emit_warnings=False)
    table = pols["soft_optimal"]

    class Soft:
        def action_probs(self, d):
            return table[np.asarray(d.categorical_levels[0])[d.categorical[:, 0]]]

    cfg = FairnessAudit(action="action=1", n_boot=100, n_permutations=0, estimator="dr",
                        q_model=q_model)
    w = poisson_weights(episode_keys(ds.episode_ids), 100, seed=3)
    ref = cfg.run(ds, {"soft": Soft()}, weights=w, random_state=3).to_dict()
    got = audit_stream(tmp_path / "p.parquet", {"soft": Soft()}, manifest=man, config=cfg,
                       chunk_rows=3000, random_state=3).to_dict()
    _assert_same(ref, got)
    c = got["policies"]["soft"]["diagnostics"].get("censoring")
    assert (c is None) == (q_model == "tabular_window")
    assert c is None or (not c["warning"] and c["censored_episodes_pct"] > 30)

def _home_visit_audit(frame, small, man):
    """``frame`` written to ``small`` in 50-row groups, loaded, and the home-visit race audit
    with its 40 Poisson bootstrap weights (seed 3)."""
    frame.to_parquet(small, index=False, row_group_size=50)
    ds = load_dataset(small, man, emit_warnings=False)
    cfg = FairnessAudit(group="race", action="modality=home_visit", n_boot=40,
                        n_permutations=0, estimator=None)
    return small, ds, cfg, poisson_weights(episode_keys(ds.episode_ids), 40, seed=3)



def test_streamed_audit_hides_proportional_parity_of_small_need_cells_as_in_memory(
        panel, tmp_path):
    """The streamed sums carry each group's count of episodes with need: a group with 3 of
    them has no proportional parity, and the smallest other need cell's group neither, as in
    memory (the care panel published 4.08 [0, 6.2] for 3 Hispanic members with need)."""
    from equicare.exceptions import SmallCellWarning

    path, man, _ = panel
    frame = pd.read_parquet(path)
    first = frame[frame["race"] == "a"].groupby("member_id").size().index[:3]
    frame["high_need"] = np.where(frame["race"] == "a", frame["member_id"].isin(first), 1)
    frame.loc[(frame["race"] == "b") & (frame["member_id"].str[-1] < "5"), "high_need"] = 0
    small, ds, cfg, w = _home_visit_audit(frame, tmp_path / "small_need.parquet", man)
    msg = "Proportional parity is not published for 2 group(s) (a, b)"
    with pytest.warns(SmallCellWarning, match=re.escape(msg)):
        ref = cfg.run(ds, weights=w, random_state=3)
    with pytest.warns(SmallCellWarning, match=re.escape(msg)):
        got = audit_stream(small, manifest=man, config=cfg, chunk_rows=7, random_state=3)
    assert got["behavior"].allocation.pp_suppressed == ("a", "b")
    pp = got.to_dict()["policies"]["behavior"]["proportional_parity"]
    assert pp["a"] == pp["b"] == {"suppressed": True} and pp["c"]["value"] > 0
    _assert_same(ref.to_dict(), got.to_dict())


def test_streamed_audit_hides_rates_of_an_action_few_members_got_as_in_memory(panel, tmp_path):
    """The streamed audit passes the same episode numerators: home visits kept for 3 members
    of group a only hide the behaviour's rates of a and of the smallest other group with such
    a member, its overall rate (3 members in all), gap and ratio, as in memory."""
    path, man, _ = panel
    frame = _few_home_visits(pd.read_parquet(path))
    small, ds, cfg, w = _home_visit_audit(frame, tmp_path / "few_visits.parquet", man)
    ref = cfg.run(ds, weights=w, random_state=3)
    got = audit_stream(small, manifest=man, config=cfg, chunk_rows=7, random_state=3)
    a = got["behavior"].allocation
    assert "a" in a.rate_suppressed and a.overall_suppressed
    b = got.to_dict()["policies"]["behavior"]
    assert b["overall_rate"] == b["parity_gap_pp"] == {"suppressed": True}
    assert b["rate"]["a"] == {"suppressed": True, "n_episodes": int(a.n_episodes["a"])}
    _assert_same(ref.to_dict(), got.to_dict())


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")
def test_streamed_audit_suppresses_cells_withheld_by_the_caller_as_in_memory(panel):
    """``suppress`` (the run's held-out cells whose training half is small) streams too: race
    b withheld from race x sex hides its row, and complementary cells, as in memory. Without it
    the streamed audit of a held-out half published b's rates, values and episode counts."""
    from equicare.data import scan_panel
    from equicare.fairness._groups import withheld_cells

    path, man, ds = panel
    cfg = FairnessAudit(group="race", intersect=("sex",), action="modality=home_visit",
                        n_boot=20, n_permutations=0, estimator="wis")
    cells = withheld_cells(scan_panel(path, man).episode_groups, ["race", "sex"],
                           {"race": {"b"}})  # from the panel's scan, as a streamed run would
    assert cells == withheld_cells(ds, ["race", "sex"], {"race": {"b"}}) == {"b x f", "b x m"}
    w = poisson_weights(episode_keys(ds.episode_ids), 20, seed=4)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=4, suppress=cells)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, chunk_rows=7,
                       random_state=4, suppress=cells)
    assert cells <= set(got.suppressed) and set(got.suppressed) == set(ref.suppressed)
    d = got.to_dict()["policies"]
    for pol in ("behavior", "risk"):
        for table in ("rate", "value_by_group"):
            assert d[pol][table]["b x f"] == d[pol][table]["b x m"] == {"suppressed": True}
    _assert_same(ref.to_dict(), got.to_dict())


def test_a_need_rule_that_selects_no_row_is_refused_streamed_too(panel):
    """As in memory (tests/fairness/test_allocation.py): refused after the pass, not per chunk;
    a rule that selects rows of some chunks only streams the in-memory numbers."""
    from equicare.exceptions import DataValidationError
    from equicare.fairness._rows import NEED_RULE_NO_ROW_MESSAGE

    path, man, ds = panel
    cfg = FairnessAudit(action="modality=home_visit", n_boot=20, n_permutations=0,
                        estimator=None, need="risk > 99")
    with pytest.raises(DataValidationError, match=re.escape(NEED_RULE_NO_ROW_MESSAGE.format(
            rule="risk > 99", ranges=""))):
        audit_stream(path, {}, manifest=man, config=cfg, chunk_rows=7, random_state=8)
    rare = float(np.quantile(ds.states[:, 0], 0.8))  # none in some 7-row chunks
    cfg = FairnessAudit(action="modality=home_visit", n_boot=20, n_permutations=0,
                        estimator=None, need=f"risk > {rare}")
    w = poisson_weights(episode_keys(ds.episode_ids), 20, seed=8)
    ref = cfg.run(ds, {}, weights=w, random_state=8)
    got = audit_stream(path, {}, manifest=man, config=cfg, chunk_rows=7, random_state=8)
    assert _numbers(ref) == _numbers(got)


class _StateTable:
    """A Garnet ``(S, A)`` policy table read at each row's ``state`` level."""

    def __init__(self, table):
        self.table = table

    def action_probs(self, d):
        from equicare.sim.garnet import garnet_state_index

        return self.table[garnet_state_index(d)]


@pytest.fixture(scope="module")
def garnet_sites(tmp_path_factory):
    """A Garnet panel (40 states, 5 actions, 800 stays, seed 3) with a group ``site`` of
    three levels and one of 6 stays: the site x group audit publishes 536 of the 800 stays.
    Returns the folder, the MDP and the raw frame."""
    from equicare.sim._garnet_cli import garnet_frame
    from equicare.sim.garnet import GarnetConfig, garnet_panel

    mdp, pan = garnet_panel(GarnetConfig(n_states=40, n_actions=5), 800, seed=3)
    frame = garnet_frame(mdp, pan)
    rng = np.random.default_rng(0)
    site = rng.choice(np.array(["s_a", "s_b", "s_c"], dtype=object), size=pan.n_episodes)
    site[rng.choice(pan.n_episodes, 6, replace=False)] = "s_tiny"
    frame["site"] = site[frame["episode"].to_numpy()]
    return tmp_path_factory.mktemp("garnet_sites"), mdp, frame


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")
@pytest.mark.parametrize("propensities", ["logged", "estimated"])
def test_audit_support_checks_every_row_against_the_whole_panel(garnet_sites, propensities):
    """The support share of an audit whose small sites are suppressed: the same in memory and
    streamed, and the mass on actions never logged in the state anywhere in the panel (40
    states: the empirical cells are the whole check), on the audited rows; at least the true
    share (behaviour probability below 1e-3). Both audits with logged propensities, and the
    streamed one without, counted the logged (state, action) cells of the published stays
    only (536 of 800): 15.98% for the ``unsupported`` family, 15.93% now, true 15.85%."""
    from equicare.sim._garnet_cli import garnet_manifest
    from equicare.sim.garnet import GarnetConfig, garnet_state_index, garnet_target_policies

    folder, mdp, frame = garnet_sites
    md = garnet_manifest(GarnetConfig(n_states=40, n_actions=5)).to_dict()
    md["dataset"]["groups"] = ["site", "group"]
    if propensities == "estimated":
        md["dataset"].pop("behavior_prob")
    man = Manifest.from_dict(md)
    path = folder / f"{propensities}.parquet"
    frame.to_parquet(path, index=False)
    ds = load_dataset(path, man, emit_warnings=False)
    fams = garnet_target_policies(mdp)
    pols = {k: _StateTable(fams[k]) for k in ("unsupported", "optimal")}
    cfg = FairnessAudit(group="site", intersect=("group",), action="action=0", n_boot=20,
                        n_permutations=0, estimator="wis")
    w = poisson_weights(episode_keys(ds.episode_ids), 20, seed=2)
    ref = cfg.run(ds, pols, weights=w, random_state=2)
    got = audit_stream(path, pols, manifest=man, config=cfg, chunk_rows=3000, random_state=2)
    _assert_same(ref.to_dict(), got.to_dict())
    s = garnet_state_index(ds)
    kept = _published(ds, ("site", "group"), ref)
    rows = np.repeat(kept, ds.episode_lengths)
    never = np.bincount(s * 5 + ds.actions, minlength=200).reshape(40, 5) == 0
    for name in pols:
        share = got.to_dict()["policies"][name]["diagnostics"]["support"]["share_pct"]
        logged_anywhere = 100 * (fams[name][s] * never[s]).sum(axis=1)[rows].mean()
        true = 100 * (fams[name][s] * (mdp.behavior_policy[s] < 1e-3)).sum(axis=1)[rows].mean()
        assert share == pytest.approx(logged_anywhere, rel=1e-9), name
        assert true <= share


def _published(ds, attrs, res):
    """The stays of the cells an audit ``res`` by ``attrs`` published (some are suppressed)."""
    cell = np.asarray(ds.groups[attrs[0]], dtype=str)
    for a in attrs[1:]:
        cell = np.char.add(np.char.add(cell, " x "), np.asarray(ds.groups[a], dtype=str))
    kept = ~np.isin(cell, list(res.suppressed))
    assert kept.sum() == res.n_episodes < ds.n_episodes
    return kept


class _Uniform:
    """Every action with the same probability."""

    def action_probs(self, d):
        return np.full((d.n_steps, d.n_actions), 1.0 / d.n_actions)


def _few_home_visits(frame):
    """``frame`` with home visits kept for the first 3 members of race a only."""
    first = frame[frame["race"] == "a"].groupby("member_id").size().index[:3]
    home = frame["modality"] == "home_visit"
    frame.loc[home & ~frame["member_id"].isin(first), "modality"] = "none"
    assert frame.loc[frame["modality"] == "home_visit", "member_id"].nunique() == 3
    return frame


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning",
                            "ignore::equicare.exceptions.DataWarning")  # 3 members' visits
def test_audit_support_without_propensities_is_out_of_fold_when_cells_are_suppressed(
        panel, tmp_path):
    """No logged propensities, home visits for 3 members, race b withheld from race x sex: a
    row's support check does not depend on which groups are published. The in-memory audit
    checked the published stays against the behaviour model's fold average (a new dataset to
    it): 5.69% of a uniform policy's mass unsupported, where the model's out-of-fold
    probabilities (the weights', ``evaluate``'s, the streamed audit's) give 7.35%."""
    from equicare.ope._evaluate import evaluate_seeds
    from equicare.ope._prepare import prepare
    from equicare.ope._support import support_diagnostics

    path, _, _ = panel
    md = copy.deepcopy(MANIFEST)
    md["dataset"].pop("behavior_prob")
    man = Manifest.from_dict(md)
    few = tmp_path / "few_visits.parquet"
    _few_home_visits(pd.read_parquet(path)).to_parquet(few, index=False, row_group_size=50)
    ds = load_dataset(few, man, emit_warnings=False)
    cfg = FairnessAudit(group="race", intersect=("sex",), action="modality=home_visit",
                        n_boot=20, n_permutations=0, estimator="wis")
    w = poisson_weights(episode_keys(ds.episode_ids), 20, seed=4)
    pols = {"uniform": _Uniform()}
    ref = cfg.run(ds, pols, weights=w, random_state=4, suppress={"b x f", "b x m"})
    got = audit_stream(few, pols, manifest=man, config=cfg, chunk_rows=7, random_state=4,
                       suppress={"b x f", "b x m"})
    _assert_same(ref.to_dict(), got.to_dict())
    # every row's check on the whole panel (out-of-fold), then the published stays' rows
    bm = prepare(ds, _Uniform(), keys=("wis",), behavior_model="logistic",
                 random_state=int(evaluate_seeds(4)[0])).behavior_model
    whole = support_diagnostics(ds, _Uniform().action_probs(ds), bm.action_probs(ds),
                                observed=bm.observed_in_state(ds), warn=False)
    kept = _published(ds, ("race", "sex"), ref)
    share = np.average(whole.per_episode_pct[kept], weights=ds.episode_lengths[kept])
    assert ref["uniform"].diagnostics.support.share_pct == pytest.approx(share, rel=1e-12)


def test_streamed_audit_warns_about_values_far_outside_the_returns_as_in_memory(panel, tmp_path):
    """Twenty rows logged at propensity 1e-7 blow the IS weights up (overall value about 2,600
    where the returns lie within [-1.9, 2.2]): the streamed audit says so with the in-memory
    audit's words (the returns' range summed over the chunks)."""
    path, man, _ = panel
    frame = pd.read_parquet(path)
    first = frame.groupby("member_id").head(1).index[:20]
    frame.loc[first, "propensity"] = 1e-7
    bad = tmp_path / "bad.parquet"
    frame.to_parquet(bad, index=False, row_group_size=50)
    cfg = FairnessAudit(action="modality=home_visit", n_boot=0, n_permutations=0,
                        estimator="is")
    ref = cfg.run(load_dataset(bad, man, emit_warnings=False), {"risk": RiskPolicy()},
                  random_state=8).to_dict()["warnings"]
    got = audit_stream(bad, {"risk": RiskPolicy()}, manifest=man, config=cfg, chunk_rows=100,
                       random_state=8).to_dict()["warnings"]
    far = [m for m in ref if "far outside the range of the observed returns" in m]
    assert len(far) == 1 and far[0].startswith("policy 'risk': its is overall value ")
    assert "it is not a value" in far[0]
    assert [m for m in got if "far outside" in m] == far


def test_streamed_audit_warns_about_in_sample_propensities_as_in_memory(tmp_path):
    """Without logged propensities both audits fit the behaviour model in-sample on a saturated
    state (700 Garnet states, 1,000 episodes, the whole panel as the streamed model's sample):
    evaluate's in-sample warning, naming the policy, from the audited episodes' summed weights,
    with the in-memory audit's words."""
    import warnings

    from equicare.sim.garnet import garnet_preset

    from ..ope.test_stream_behavior import _garnet_parquet, _garnet_table

    path, man, ds, pols, _ = _garnet_parquet(tmp_path, garnet_preset("s700_a25_g1"), 1000, 5)
    Table = _garnet_table(pols["behavior"])
    cfg = FairnessAudit(action="action=1", n_boot=0, n_permutations=0, estimator="wpdis")

    def in_sample(res) -> list[str]:
        return [m for m in res.to_dict()["warnings"] if "estimated in-sample" in m]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = in_sample(cfg.run(ds, {"practice": Table()}, random_state=8))
        got = in_sample(audit_stream(path, {"practice": Table()}, manifest=man, config=cfg,
                                     chunk_rows=3000, random_state=8))
    assert len(ref) == 1 and ref[0].startswith("policy 'practice': wpdis uses propensities")
    assert got == ref


def test_the_streamed_audit_and_evaluation_withhold_groups_of_few_members(tmp_path):
    """With the manifest's member, race d (15 episodes of 5 people) is suppressed in memory;
    the streamed audit and evaluation read the people from the panel's scan and suppress the
    same cells (before, they published d)."""
    import warnings

    from equicare.ope import evaluate, evaluate_stream
    from equicare.policy import UniformPolicy

    from ..conftest import make_reenrolled_frame

    frame, man_dict = make_reenrolled_frame()
    path = tmp_path / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False)
    man = Manifest.from_dict(man_dict)
    cfg = FairnessAudit(action="modality=home_visit", group="race", n_boot=0, n_permutations=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(path, man)
        ref = cfg.run(ds)
        got = audit_stream(path, manifest=man, config=cfg, chunk_rows=60)
        uni = UniformPolicy(ds.action_space.n_actions)
        kw = {"estimators": ["wis"], "groups": ["race"], "diagnose_support": False}
        ev_ref = evaluate(ds, uni, bootstrap=0, **kw)
        ev_got = evaluate_stream(path, uni, manifest=man, n_boot=0, chunk_rows=60, **kw)
    assert "d" in ref.suppressed and set(got.suppressed) == set(ref.suppressed)
    hidden = {lv for lv, g in ev_ref.groups["race"].items() if g.suppressed}
    assert "d" in hidden and {lv for lv, g in ev_got.groups["race"].items()
                              if g.suppressed} == hidden


def test_the_streamed_audit_resamples_people_as_in_memory(tmp_path):
    """With the manifest's member (two enrolments a person), the streamed Poisson weights are
    keyed by the person and the permutations shuffle people: the in-memory audit given the
    same weights gives the same numbers (before, the streamed audit resampled episodes)."""
    frame = make_frame(n_members=160, seed=5, min_len=1, max_len=10)
    episodes = np.sort(frame["member_id"].unique())
    person = pd.Series([f"p{i // 2}" for i in range(episodes.size)], index=episodes)
    frame["person"] = frame["member_id"].map(person)
    first = frame.groupby("person")["race"].transform("first")  # one label a person
    frame["race"] = first
    path = tmp_path / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=50)
    md = copy.deepcopy(MANIFEST)
    md["dataset"]["member"] = "person"
    man = Manifest.from_dict(md)
    ds = load_dataset(path, man, emit_warnings=False)
    assert ds.members is not None
    cfg = FairnessAudit(action="modality=home_visit", n_boot=150, n_permutations=200,
                        estimator="wis", min_cell=11)
    w = poisson_weights(episode_keys(ds.members), 150, seed=8)
    ref = cfg.run(ds, {"risk": RiskPolicy()}, weights=w, random_state=8)
    got = audit_stream(path, {"risk": RiskPolicy()}, manifest=man, config=cfg, chunk_rows=60,
                       random_state=8)
    assert got.settings["resampling"] == ref.settings["resampling"] == "people (member)"
    _assert_same(ref.to_dict(), got.to_dict())
