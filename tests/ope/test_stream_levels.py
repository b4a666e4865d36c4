"""Streamed values within the levels of a pooled column the target reads (ope/_stream_levels.py).

The panel: a Garnet test bed with ten care sites that change nothing in the dynamics (so the
streamed table pools over ``site``) and ``site`` as a subgroup attribute; the target follows the
soft-optimal policy at five sites and the behaviour at the others, so it reads ``site``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from equicare.data import load_dataset
from equicare.ope import episode_keys, evaluate, evaluate_stream, poisson_weights
from equicare.ope._bootstrap import percentile_interval, studentized_intervals
from equicare.ope._levels import level_prepared, level_target_probs
from equicare.ope._prepare import prepare
from equicare.ope._stream_levels import LevelStreamPolicy
from equicare.policy import load_policy, write_policy_file
from equicare.sim._garnet_cli import synth_garnet
from equicare.sim.garnet import garnet_panel, garnet_preset, garnet_target_policies

from .test_stream_groups import level_reference

# the site targets put 3.55% of their mass off support: streamed evaluate warns as in memory
# does (SupportWarning); these tests are about the per-level values
pytestmark = pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")

Q_KEYS = ("fqe", "dr", "wdr")
KEYS = ("is", "wpdis", *Q_KEYS)


class SitePolicy:
    """Soft-optimal at sites 0-4, the behaviour at sites 5-9 (per Garnet state)."""

    def __init__(self, good: np.ndarray, poor: np.ndarray) -> None:
        self.good, self.poor = good, poor

    def action_probs(self, ds):
        s, site = ds.categorical[:, 0], ds.categorical[:, 1]
        return np.where((site < 5)[:, None], self.good[s], self.poor[s])


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream_levels")
    cfg = garnet_preset("s50_a25_g1")
    paths = synth_garnet(folder, config=cfg, n_episodes=700, seed=4, sites=10)
    man = folder / "manifest.toml"
    man.write_text(man.read_text().replace('groups = ["group"]', 'groups = ["group", "site"]'))
    ds = load_dataset(paths["panel"], man, emit_warnings=False)
    mdp, _ = garnet_panel(cfg, 700, 4)
    pols = garnet_target_policies(mdp)
    policy = SitePolicy(pols["soft_optimal"], pols["behavior"])
    probs = policy.action_probs(ds)
    pfile = write_policy_file(ds, probs, folder / "site_policy.parquet")
    return paths["panel"], man, ds, policy, pfile


def _levels(res):
    return {lv: g for lv, g in res.groups["site"].items() if not g.suppressed}


def _same_site_values(ref, got):
    """Every estimator's value at each of the ten sites, streamed as in memory (1e-9)."""
    levels = _levels(ref)
    assert len(levels) == 10
    for lv, r in levels.items():
        g = got.groups["site"][lv]
        for k in KEYS:
            assert g.estimates[k].value == pytest.approx(r.estimates[k].value, rel=1e-9), (lv, k)


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.parametrize("target", ["object", "file"])
def test_each_sites_values_equal_the_in_memory_per_level_refit(sites, target):
    path, man, ds, policy, pfile = sites
    pol = policy if target == "object" else load_policy(pfile)
    ref = evaluate(ds, pol if target == "object" else policy.action_probs(ds), estimators=KEYS,
                   q_model="tabular_stationary", bootstrap=0, groups=["site"],
                   diagnose_support=False)
    got = evaluate_stream(path, pol, manifest=man, estimators=KEYS, q_model="tabular_stationary",
                          n_boot=20, random_state=1, chunk_rows=1500, groups=["site"])
    assert got.n_chunks > 3
    source = "counterfactual" if target == "object" else "empirical"
    assert ref.q_model is not None and got.q_model is not None
    assert ref.q_model["per_level"]["site"]["policy"] == source
    assert got.q_model["per_level"]["site"]["policy"] == source
    assert got.q_model["per_level"]["site"]["backed_off"] == pytest.approx(
        ref.q_model["per_level"]["site"]["backed_off"], abs=1e-4)
    assert got.q_model["cell_choice"]["target_reads"] == ["site"]
    _same_site_values(ref, got)
    # the pooled table's per-site FQE, which the streamed levels used to report, is off
    pooled = evaluate_stream(path, SitePolicy(policy.good, policy.good), manifest=man,
                             estimators=Q_KEYS, q_model="tabular_stationary", n_boot=1,
                             chunk_rows=1500, groups=["site"])
    assert pooled.q_model is not None and "per_level" not in pooled.q_model
    assert pooled.q_model["cell_choice"]["target_reads"] == []


def test_a_sites_intervals_are_the_in_memory_refit_of_its_own_q_model(sites):
    """The level's parts and refit terms with its own Q-model, the other episodes' share of
    that refit as an independent term, under the same Poisson weights (percentile and
    studentized)."""
    path, man, ds, policy, _ = sites
    keys = ("is", *Q_KEYS)
    lv = "site7"
    ep = np.flatnonzero(ds.group_labels("site").astype(str) == lv)
    prep = prepare(ds, policy, keys=keys, q_model="tabular_stationary")
    assert prep.cell_choice is not None and prep.cell_choice.columns == ("state",)
    lp = level_target_probs(ds, prep.target_probs, "site", ("state",), ep, lv, policy=policy)
    own = level_prepared(prep, ds, lp, 0)
    w = poisson_weights(episode_keys(ds.episode_ids), 200, seed=5)
    parts, wg, reps, extra = level_reference(own, keys, ep, w)
    kw = {"manifest": man, "estimators": keys, "q_model": "tabular_stationary", "n_boot": 200,
          "random_state": 5, "chunk_rows": 2000, "groups": ["site"]}
    pct = evaluate_stream(path, policy, ci_method="percentile", **kw)
    stud = evaluate_stream(path, policy, **kw)
    ref_stud = studentized_intervals(parts, wg, reps, extra_var=extra)
    for k in keys:
        g = pct.groups["site"][lv].estimates[k]
        assert g.se == pytest.approx(float(reps[k].std(ddof=1)), rel=1e-8), k
        np.testing.assert_allclose(g.ci, percentile_interval(reps[k]), rtol=1e-8, err_msg=k)
        np.testing.assert_allclose(stud.groups["site"][lv].estimates[k].ci, ref_stud[k],
                                   rtol=1e-8, err_msg=k)


def test_auto_gives_each_site_its_own_q_models_bias(sites):
    """With ``auto`` on a panel that fits the sample, each site's FQE interval is bias-aware
    with ``level_fqe_bias`` of its own policy, as in memory (the folds' seeds: in memory's
    ``level_seeds`` when ``evaluate_stream`` plans the levels, here the one given)."""
    from equicare.ope._evaluate import level_fqe_bias
    from equicare.ope._stream import ChunkSource
    from equicare.ope._stream_groups import plan_groups
    from equicare.ope._stream_levels import plan_levels
    from equicare.ope._stream_q import choose_q_stream
    from equicare.utils import MIN_CELL

    path, man, ds, policy, _ = sites
    got = evaluate_stream(path, policy, manifest=man, estimators=Q_KEYS, n_boot=50,
                          random_state=2, chunk_rows=2000, groups=["site"])
    assert got.q_model is not None and got.q_model["chosen"].startswith("tabular_stationary")
    assert "per_level" in got.q_model
    src = ChunkSource(path, manifest=man, chunk_rows=2000)
    cfg, sel, _ = choose_q_stream(src, policy, sample_rows=10**6, seed=2, groups=["site"])
    plan = plan_groups(src.episode_groups(), ["site"], MIN_CELL)
    cols = plan_levels(src, policy, cfg, plan, sample_rows=10**6, seed=2, selection=sel)
    assert [c.column for c in cols] == ["site"] and cols[0].source == "counterfactual"
    lv = "site2"
    ep = np.flatnonzero(ds.group_labels("site").astype(str) == lv)
    lp = level_target_probs(ds, policy.action_probs(ds), "site", ("state",), ep, lv,
                            policy=policy)
    bias = level_fqe_bias(sel, ds, lp.probs, ep, 2)
    assert bias is not None and cols[0].bias[lv] == pytest.approx(bias, rel=1e-12)
    plain = evaluate_stream(path, policy, manifest=man, estimators=Q_KEYS, n_boot=50,
                            random_state=2, chunk_rows=2000, groups=["site"],
                            q_model="tabular_stationary")
    wide, narrow = got.groups["site"][lv].estimates["fqe"], plain.groups["site"][lv]
    assert wide.value == pytest.approx(narrow.estimates["fqe"].value, rel=1e-12)
    assert wide.ci[0] <= narrow.estimates["fqe"].ci[0] and wide.ci[1] >= narrow.estimates[
        "fqe"].ci[1]


def test_the_level_policy_keeps_the_levels_own_rows(sites):
    _, _, ds, policy, pfile = sites
    probs = policy.action_probs(ds)
    own = (ds.group_labels("site").astype(str) == "site3")[ds.episode_index]
    cf = LevelStreamPolicy(policy, "site", "site3", ("state",)).action_probs(ds)
    np.testing.assert_array_equal(cf[own], probs[own])
    np.testing.assert_allclose(cf[~own], policy.good[ds.categorical[~own, 0]], atol=1e-15)
    moved = replace(ds, _cache={})
    assert moved.n_steps == ds.n_steps


@pytest.mark.slow
@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.parametrize("q_model", ["tabular_stationary", "tabular_window", "auto"])
def test_jackknife_intervals_of_each_sites_own_q_model_equal_in_memory(sites, q_model):
    """n_boot=0 on Garnet episodes of 1 to 100+ steps: every estimator's jackknife interval,
    overall, per group and per site (each site's own Q-model and its refit), as in memory
    (slow: the Q-model's passes once per site). With auto each site's FQE interval carries its
    own Q-model's estimated bias, its folds drawn from the in-memory level's seed (they were
    drawn from the evaluation's seed: site FQE intervals up to 1.2% off)."""
    from .test_stream import same_as_in_memory

    path, man, ds, policy, _ = sites
    assert ds.episode_lengths.min() == 1 and ds.episode_lengths.max() > 50
    keys = ("is", "wis", "pdis", "wpdis", *Q_KEYS)
    ref = evaluate(ds, policy, estimators=keys, q_model=q_model, bootstrap=0,
                   diagnose_support=False, random_state=3).to_dict()
    got = evaluate_stream(path, policy, manifest=man, estimators=keys, q_model=q_model,
                          n_boot=0, random_state=3, chunk_rows=1500)
    assert got.n_chunks > 3 and got.q_model is not None and "per_level" in got.q_model
    assert same_as_in_memory(got.to_dict(), ref) >= 12  # 10 sites and the groups' levels


class DeferringSitePolicy(SitePolicy):
    """Soft-optimal at sites 0-4; sites 5-9 left to current practice (``deferred_rows``), with
    the behaviour's probabilities as the stored estimate: valued as deployed by default."""

    def deferred_rows(self, ds):
        return ds.categorical[:, 1] >= 5


@pytest.mark.usefixtures("raw_group_values")
def test_each_sites_values_of_a_deferring_policy_equal_in_memory(sites):
    """A policy that reads ``site`` and leaves half the sites to practice: each site gets its
    own Q-model, and its deployed rows keep behaviour probability 1 in the streamed level
    passes as in memory (the level's target wrapped the deployed policy, whose rows the
    streamed propensities did not see: site5's IS was 4.1e92 against 0.726 in memory)."""
    path, man, ds, policy, _ = sites
    pol = DeferringSitePolicy(policy.good, policy.poor)
    ref = evaluate(ds, pol, estimators=KEYS, q_model="tabular_stationary", bootstrap=0,
                   groups=["site"], diagnose_support=False)
    got = evaluate_stream(path, pol, manifest=man, estimators=KEYS, q_model="tabular_stationary",
                          n_boot=20, random_state=1, chunk_rows=1500, groups=["site"])
    assert got.q_model is not None and "per_level" in got.q_model
    assert ref.settings["usual_care"] == got.settings["usual_care"] == "deployed"
    assert got.settings["deferred_share"] == pytest.approx(ref.settings["deferred_share"])
    _same_site_values(ref, got)
