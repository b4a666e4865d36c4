"""Subgroups of a streamed evaluation against the in-memory engine and across chunkings."""

from __future__ import annotations

import copy
import re
import warnings

import numpy as np
import pytest

from equicare.data import Manifest, load_dataset
from equicare.exceptions import (
    DataValidationError,
    InvalidParameterError,
    LowESSWarning,
    SmallCellWarning,
)
from equicare.ope import FQEConfig, episode_keys, evaluate, evaluate_stream, poisson_weights
from equicare.ope._bootstrap import percentile_interval, studentized_intervals
from equicare.ope._core import combine, episode_parts
from equicare.ope._evaluate import _subgroup_q_refit
from equicare.ope._prepare import prepare
from equicare.pipeline import get_executor

from ..conftest import MANIFEST, make_frame
from .test_stream import RiskPolicy

ALL = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")
Q_KEYS = ("fqe", "dr", "wdr")


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    """300 members, 1-12 weeks each, Parquet row groups of 64 rows; groups race and sex."""
    folder = tmp_path_factory.mktemp("stream_groups")
    frame = make_frame(n_members=300, seed=11, min_len=1, max_len=12)
    path = folder / "panel.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(path, index=False, row_group_size=64)
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    return path, man, load_dataset(path, man, emit_warnings=False)


def _cfg(q_model: str) -> FQEConfig:
    return (FQEConfig(model="linear") if q_model == "linear"
            else FQEConfig(model="tabular", horizon=q_model.split("_")[1]))  # type: ignore[arg-type]


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
@pytest.mark.parametrize("q_model", [None, "linear", "tabular_stationary"])
def test_every_levels_estimates_equal_in_memory_evaluate(panel, q_model):
    path, man, ds = panel
    keys = ALL if q_model else ALL[:4]
    ref = evaluate(ds, RiskPolicy(), estimators=keys, q_model=q_model or "linear", bootstrap=0,
                   diagnose_support=False)
    got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=keys,
                          q_model=q_model or "auto", n_boot=20, random_state=1, chunk_rows=60)
    assert got.n_chunks > 10
    assert got.weight_mean == pytest.approx(ref.ess.weight_mean, rel=1e-9)
    assert got.weight_mean_se == pytest.approx(ref.ess.weight_mean_se, rel=1e-9)
    assert got.to_dict()["ess"]["trajectory_weight_mean"] == pytest.approx(got.weight_mean)
    assert set(got.groups) == set(ds.group_attrs) == {"race", "sex"}
    n_levels = 0
    for attr, levels in ref.groups.items():
        assert set(got.groups[attr]) == set(levels)
        for lv, r in levels.items():
            g = got.groups[attr][lv]
            assert g.suppressed == r.suppressed
            if r.suppressed:
                continue
            n_levels += 1
            assert g.n_episodes == r.n_episodes
            assert g.behavior.value == pytest.approx(r.behavior.value, rel=1e-12)
            assert g.ess == pytest.approx(r.ess.trajectory, rel=1e-9)
            for k in keys:
                assert g.estimates[k].value == pytest.approx(r.estimates[k].value, rel=1e-9,
                                                             abs=1e-12), (attr, lv, k)
    assert n_levels == 5
    d = got.to_dict()["groups"]
    assert d["sex"]["f"]["n_episodes"] == got.groups["sex"]["f"].n_episodes
    assert set(d["race"]["a"]["estimates"]) == set(keys)


def _reference(ds, q_model, level_episodes, w):
    prep = prepare(ds, RiskPolicy(), keys=ALL, q_model=_cfg(q_model))
    assert prep.q_linearised
    return level_reference(prep, ALL, level_episodes, w)


def level_reference(prep, keys, level_episodes, w):
    """The in-memory subgroup bootstrap under Poisson weights ``w``: the level's parts with
    its own refit terms, plus the other episodes' centred effects (their variance in
    ``extra``). Returns ``parts, wg, reps, extra``."""
    ds_episodes = prep.inputs.n_episodes
    sub = prep.inputs.subset(level_episodes)
    parts, other = _subgroup_q_refit(prep, episode_parts(sub, keys), level_episodes, None,
                                     "absorbing")
    wg = w[:, level_episodes]
    reps = combine(parts, wg @ parts.matrix, wg.sum(axis=1))
    mask = np.ones(ds_episodes, dtype=bool)
    mask[level_episodes] = False
    centred = other - other.mean(axis=0, keepdims=True)
    term = (w[:, mask] - 1.0) @ centred
    extra = {}
    for j, k in enumerate(Q_KEYS):
        reps[k] = reps[k] + term[:, j]
        extra[k] = float(np.sum(centred[:, j] ** 2))
    return parts, wg, reps, extra


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
@pytest.mark.parametrize("q_model", ["linear", "tabular_stationary", "tabular_window"])
def test_a_levels_intervals_are_the_in_memory_subgroup_refit_under_poisson_weights(panel,
                                                                                    q_model):
    """Percentile and studentized: the level's own refit terms in its parts, the other
    episodes' share of the refit as an independent term whose variance studentises too."""
    path, man, ds = panel
    labels = ds.group_labels("race").astype(str)
    ep = np.flatnonzero(labels == "b")
    w = poisson_weights(episode_keys(ds.episode_ids), 300, seed=5)
    parts, wg, reps, extra = _reference(ds, q_model, ep, w)
    pct = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=ALL, q_model=q_model,
                          n_boot=300, random_state=5, chunk_rows=70, ci_method="percentile")
    stud = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=ALL, q_model=q_model,
                           n_boot=300, random_state=5, chunk_rows=70)
    ref_stud = studentized_intervals(parts, wg, reps, extra_var=extra)
    for k in ALL:
        g = pct.groups["race"]["b"].estimates[k]
        assert g.se == pytest.approx(float(reps[k].std(ddof=1)), rel=1e-8), k
        np.testing.assert_allclose(g.ci, percentile_interval(reps[k]), rtol=1e-8, err_msg=k)
        np.testing.assert_allclose(stud.groups["race"]["b"].estimates[k].ci, ref_stud[k],
                                   rtol=1e-8, err_msg=k)
    # the other episodes' share matters: without it FQE's spread is far smaller
    own_only = combine(parts, wg @ parts.matrix, wg.sum(axis=1))["fqe"]
    assert pct.groups["race"]["b"].estimates["fqe"].se > 1.5 * float(own_only.std(ddof=1))
    assert stud.q_model is not None and stud.q_model["passes"] == 4  # pieces in the fit pass
    bare = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=ALL, q_model=q_model,
                           n_boot=300, random_state=5, chunk_rows=70, groups=())
    assert bare.q_model is not None and bare.q_model["passes"] == 4 and bare.groups == {}
    for k in ALL:  # the levels leave the whole panel's intervals as they were
        assert bare.estimates[k].ci == stud.estimates[k].ci, k


@pytest.mark.usefixtures("low_ess_warned", "raw_group_values")
@pytest.mark.parametrize("q_model", [None, "linear"])
def test_levels_are_the_same_for_any_chunking_and_sharding(panel, q_model):
    path, man, ds = panel
    kw = {"estimators": ALL if q_model else ALL[:4], "q_model": q_model or "auto",
          "n_boot": 200, "random_state": 3, "truncate": 20.0}
    whole = evaluate_stream(ds, RiskPolicy(), **kw).to_dict()["groups"]
    runs = [evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=25, **kw),
            evaluate_stream(path, RiskPolicy(), manifest=man, chunk_rows=100,
                            executor=get_executor("local", jobs=1), n_shards=2, **kw)]
    for run in runs:
        got = run.to_dict()["groups"]
        for attr, levels in whole.items():
            for lv, g in levels.items():
                h = got[attr][lv]
                assert h["n_episodes"] == g["n_episodes"]
                np.testing.assert_allclose(h["behavior"]["ci"], g["behavior"]["ci"], rtol=1e-9)
                for k, e in g["estimates"].items():
                    for f in ("value", "se", "ci"):
                        np.testing.assert_allclose(h["estimates"][k][f], e[f], rtol=1e-9,
                                                   err_msg=f"{attr}={lv} {k} {f}")


@pytest.mark.usefixtures("low_ess_warned")
def test_small_levels_are_suppressed_and_unknown_attributes_named(panel, tmp_path):
    path, man, ds = panel
    frame = make_frame(n_members=120, seed=4, min_len=2, max_len=6)
    first = frame["member_id"].isin(frame["member_id"].unique()[:6])
    frame.loc[first, "race"] = "z"  # 6 members: under the 11-episode cell
    small = tmp_path / "small.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(small, index=False)
    with pytest.warns(SmallCellWarning, match="race=z"):
        res = evaluate_stream(small, RiskPolicy(), manifest=man, n_boot=50, chunk_rows=100)
    # a (32 episodes), the smallest other level, is suppressed with z (complementary)
    for lv in ("z", "a"):
        assert res.groups["race"][lv].suppressed
        assert res.to_dict()["groups"]["race"][lv] == {"suppressed": True, "n_episodes": None}
    assert not res.groups["race"]["b"].suppressed and not res.groups["race"]["c"].suppressed
    with pytest.warns(SmallCellWarning, match="race=a, race=z"):  # the same cells in memory
        ref = evaluate(load_dataset(small, man, emit_warnings=False), RiskPolicy(),
                       estimators=("is",), bootstrap=0, groups=["race"], diagnose_support=False)
    assert {lv for lv, g in ref.groups["race"].items() if g.suppressed} == {"z", "a"}
    with warnings.catch_warnings():  # no groups, no small cells (the overall value's thin
        warnings.simplefilter("error")  # weight is said as above: low_ess_warned)
        warnings.simplefilter("ignore", LowESSWarning)
        none = evaluate_stream(small, RiskPolicy(), manifest=man, n_boot=50, chunk_rows=100,
                               groups=())
    assert none.groups == {} and none.to_dict()["groups"] == {}
    only = evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=20, groups=["sex"])
    assert set(only.groups) == {"sex"}
    with pytest.raises(DataValidationError, match=r"'site'.*\['race', 'sex'\]"):
        evaluate_stream(path, RiskPolicy(), manifest=man, n_boot=20, groups=["site"])


@pytest.mark.filterwarnings("ignore::equicare.exceptions.LowESSWarning")
def test_levels_withheld_by_the_caller_are_suppressed_streamed_as_in_memory(panel):
    """``suppress`` (the run's held-out levels whose training half is small) streams too.

    Without it a streamed evaluation of a held-out half published the level that the in-memory
    one withholds, and with it the training half's count by difference from the panel's.
    """
    path, man, ds = panel
    counts = {lv: int((ds.group_labels("race") == lv).sum()) for lv in ("a", "b", "c")}
    assert min(counts.values()) >= 11  # nothing small: only the caller's level is hidden
    hold = {"race": {"b"}}
    with pytest.warns(SmallCellWarning, match="race=b"):
        ref = evaluate(ds, RiskPolicy(), estimators=("is",), bootstrap=0, groups=["race"],
                       diagnose_support=False, suppress=hold)
    with pytest.warns(SmallCellWarning, match="race=b"):
        got = evaluate_stream(path, RiskPolicy(), manifest=man, estimators=("is",), n_boot=20,
                              groups=["race"], chunk_rows=60, suppress=hold)
    # b alone would be the total minus a and c: the smallest other level goes with it
    other = min((lv for lv in counts if lv != "b"), key=lambda lv: counts[lv])
    hidden = {lv for lv, g in got.groups["race"].items() if g.suppressed}
    assert hidden == {lv for lv, g in ref.groups["race"].items() if g.suppressed} == {"b", other}
    assert got.to_dict()["groups"]["race"]["b"] == {"suppressed": True, "n_episodes": None}
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'suppress' parameter of evaluate_stream must be a mapping whose keys are "
            "evaluated group attributes (race). Got ['sex'] instead.")):
        evaluate_stream(path, RiskPolicy(), manifest=man, groups=["race"],
                        suppress={"sex": {"f"}})


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
@pytest.mark.filterwarnings(
    "ignore:Proportional parity is not published:equicare.exceptions.SmallCellWarning")
def test_streamed_levels_hide_the_same_low_ess_values_as_in_memory(tmp_path):
    from equicare.fairness import FairnessAudit, audit_stream
    from equicare.sim.care import CareManagementSim

    from .test_evaluate import OneEpisodePolicy, asian_episode

    panel = CareManagementSim().generate(n_members=300, n_weeks=6, random_state=0)
    panel.write(tmp_path)
    ds = panel.dataset()
    man = tmp_path / "manifest.toml"
    pol = OneEpisodePolicy(asian_episode(ds, 30.0)[0])
    keys = ("is", "wis", "pdis", "wpdis")
    ref = evaluate(ds, pol, estimators=keys, bootstrap=0, diagnose_support=False).to_dict()
    got = evaluate_stream(tmp_path / "panel.parquet", pol, manifest=man, estimators=keys,
                          n_boot=20, random_state=1, chunk_rows=250).to_dict()
    n_hidden = 0
    for attr, levels in ref["groups"].items():
        for lv, g in levels.items():
            for k in keys:
                why = g.get("estimates", {}).get(k, {}).get("reason")
                assert got["groups"][attr][lv].get("estimates", {}).get(k, {}).get(
                    "reason") == why, (attr, lv, k)
                n_hidden += why is not None
    assert n_hidden >= 4  # asian and its complement, for is and wis at least
    cfg = FairnessAudit(action="modality=home_visit", group="race_ethnicity", n_boot=20,
                        n_permutations=0, estimator="wis")
    a_ref = cfg.run(ds, {"p": pol}, random_state=2).to_dict()["policies"]["p"]
    a_got = audit_stream(tmp_path / "panel.parquet", {"p": pol}, manifest=man, config=cfg,
                         chunk_rows=250, random_state=2).to_dict()["policies"]["p"]
    for lv, v in a_ref["value_by_group"].items():
        assert a_got["value_by_group"][lv].get("reason") == v.get("reason"), lv
    assert a_ref["value_by_group"]["asian"]["value"] is None


def test_subgroups_refuse_a_missing_label() -> None:
    from equicare.data._labels import MSG_MISSING_GROUP
    from equicare.ope._stream_groups import plan_groups

    site = np.array(["s0"] * 12 + [None] + ["s1"] * 12, dtype=object)
    msg = MSG_MISSING_GROUP.format(where="subgroups", column="site",
                                   rows="1 episode (first: 12; 0-based episode positions)")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        plan_groups({"site": site}, ["site"], 11)


def test_a_missing_label_in_a_streamed_panel_names_the_file_and_the_episode(tmp_path):
    """As streamed audit says it: the panel's file and the episode's id (not its position)."""
    from equicare.data._labels import MSG_MISSING_GROUP

    frame = make_frame(n_members=40, seed=2).sort_values(["member_id", "week"])
    frame["race"] = frame["race"].astype(object)
    frame.loc[frame["member_id"] == "m017", "race"] = None
    path = tmp_path / "panel.parquet"
    frame.to_parquet(path, index=False)
    msg = MSG_MISSING_GROUP.format(where=str(path), column="race",
                                   rows="1 episode (first: 'm017'; episode ids)")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        evaluate_stream(path, RiskPolicy(), manifest=Manifest.from_dict(copy.deepcopy(MANIFEST)),
                        estimators=("wis",), n_boot=10, chunk_rows=50)


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.parametrize("q_model", ["linear", "tabular_stationary", "tabular_window",
                                     pytest.param("auto", marks=pytest.mark.slow)])
@pytest.mark.usefixtures("low_ess_warned")
def test_jackknife_intervals_of_every_level_equal_in_memory(panel, q_model):
    """n_boot=0 with a Q-model: in memory's bootstrap=0 (the jackknife of the parts with the
    linearised refit, a level's other episodes' share of it in its variance; with auto, FQE's
    bias-aware interval), overall and in every level, chunked (and sharded)."""
    from equicare.ope._bootstrap import estimates_with_ci

    from .test_stream import same_as_in_memory

    path, man, ds = panel
    ref = evaluate(ds, RiskPolicy(), estimators=ALL, q_model=q_model, bootstrap=0,
                   diagnose_support=False, random_state=4).to_dict()
    kw = {"manifest": man, "estimators": ALL, "q_model": q_model, "n_boot": 0,
          "random_state": 4}
    got = evaluate_stream(path, RiskPolicy(), chunk_rows=70, **kw)
    assert got.n_chunks > 10 and got.q_model is not None and got.q_model["passes"] == 4
    assert same_as_in_memory(got.to_dict(), ref) == 5
    if q_model.startswith("tabular_"):
        sharded = evaluate_stream(path, RiskPolicy(), chunk_rows=150, n_shards=3,
                                  executor=get_executor("local", jobs=1), **kw)
        same_as_in_memory(sharded.to_dict(), ref)
    if q_model == "linear":  # the refit and a level's other episodes' share are in the SEs
        prep = prepare(ds, RiskPolicy(), keys=ALL, q_model=_cfg(q_model))
        fixed = estimates_with_ci(episode_parts(prep.inputs, ALL), n_boot=0)
        assert got.estimates["fqe"].se > 1.2 * fixed["fqe"].se
        ep = np.flatnonzero(ds.group_labels("race").astype(str) == "b")
        _, other = _subgroup_q_refit(prep, episode_parts(prep.inputs.subset(ep), ALL), ep,
                                     None, "absorbing")
        var = float(np.sum((other[:, 0] - other[:, 0].mean()) ** 2))
        assert var > 0.1 * got.groups["race"]["b"].estimates["fqe"].se ** 2


def test_auto_s_bias_of_a_suppressed_level_is_withheld_in_the_streamed_result_json(tmp_path):
    """Streamed, auto's per-level bias sits under q_model.selection.group_bias: a level
    suppressed in "groups" (6 members, and the smallest other by complementary suppression)
    is {"suppressed": true} there, as in memory; the others keep their numbers."""
    man = Manifest.from_dict(copy.deepcopy(MANIFEST))
    frame = make_frame(n_members=120, seed=4, min_len=2, max_len=6)
    first = frame["member_id"].isin(frame["member_id"].unique()[:6])
    frame.loc[first, "race"] = "z"
    small = tmp_path / "small.parquet"
    frame.sort_values(["member_id", "week"]).to_parquet(small, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallCellWarning)
        res = evaluate_stream(small, RiskPolicy(), manifest=man, estimators=("fqe",),
                              q_model="auto", n_boot=0, chunk_rows=100, groups=["race"])
    raw = res.q_model["selection"]["group_bias"]["race"]
    assert "bias" in raw["z"]
    published = res.to_dict()["q_model"]["selection"]["group_bias"]["race"]
    hidden = {lv for lv, g in res.groups["race"].items() if g.suppressed}
    assert hidden == {"z", "a"}
    for lv, v in published.items():
        assert (v == {"suppressed": True}) == (lv in hidden), lv
