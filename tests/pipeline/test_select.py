"""Selection by held-out OPE: safety against exact values, fallback, CLI, the study (slow)."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.pipeline._select import SELECTION_FILE, SelectConfig, select_policy
from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
from equicare.sim.garnet import (
    GarnetConfig,
    garnet_panel,
    garnet_policy_table,
    garnet_preset,
    garnet_target_policies,
)

SMALL = GarnetConfig(n_states=50, n_actions=5, n_successors=3)
FAST = SelectConfig(n_wedges=(50.0, 200.0), pvi=(), neural=(), bootstrap=50, multiplicity="none")


def _panel(seed: int, n: int, cfg: GarnetConfig = SMALL):
    mdp, pan = garnet_panel(cfg, n, seed)
    return mdp, from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)


def test_selected_policy_is_not_worse_than_behaviour() -> None:
    # exact value of the kept policy >= behaviour - 0.005 (about one Monte-Carlo SE)
    mdp, ds = _panel(0, 5000)
    res = select_policy(ds, FAST)
    vb = mdp.value(mdp.behavior_policy)
    table, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
    assert mdp.value(table) > vb - 0.005
    assert len(res.candidates) == len(FAST.n_wedges)
    assert all(np.isfinite(c.lcb) for c in res.candidates)
    # on a panel of categorical states: the stationary tabular Q-model, WDR decides who
    # passes and FQE's paired bound orders them
    assert res.settings["q_model"] == "tabular_stationary"
    assert res.settings["config"]["rank_by"] == "fqe"
    passed = [c for c in res.candidates if c.lcb_gain > 0]
    assert res.fallback == (not passed)
    if passed:
        assert res.chosen == max(passed, key=lambda c: c.estimates["fqe"]["gain_lcb"]).name


def test_fallback_reproduces_the_behaviour() -> None:
    # the only candidate copies the behaviour: its lower bound cannot beat the behaviour's value
    _, ds = _panel(1, 1000)
    res = select_policy(ds, SelectConfig(n_wedges=(1e9,), pvi=(), neural=(), bootstrap=50,
                                         multiplicity="none"))
    assert res.fallback and res.chosen == "behavior"
    # the paired bound of the true behaviour policy: WIS reweights nothing, every replicate's
    # gain is 0, so its bound is exactly 0 (not above: no false improvement)
    from equicare.pipeline._select import _held_out
    from equicare.sim.garnet import garnet_state_index

    mdp, _ = _panel(1, 10)
    ho = _held_out(ds, mdp.behavior_policy[garnet_state_index(ds)],
                   SelectConfig(bootstrap=50, multiplicity="none", pvi=(),
                                estimators=("wis", "wdr")),
                   "tabular")
    assert ho.estimates["wis"]["gain_lcb"] == pytest.approx(0.0, abs=1e-12)
    # saved: one rule, "as current practice", over SPIBB's estimate of practice
    est = res.learner.estimate_
    np.testing.assert_allclose(est.policy_.table[:-1], est.behavior_,
                               rtol=1e-3, atol=1e-12)  # the table keeps 4 significant digits
    assert res.learner.policy_.deferred_rows(ds).all()
    np.testing.assert_array_equal(res.learner.policy_.action_probs(ds),
                                  est.policy_.action_probs(ds))
    deployed, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
    np.testing.assert_array_equal(deployed, mdp.behavior_policy)  # exactly practice
    assert res.to_dict()["fallback"] is True


def test_held_out_values_match_evaluate_and_the_paired_bound_is_tighter() -> None:
    """Same seeds as ``evaluate``: same values and (percentile) intervals. The paired bound of the
    gain is computed on the same replicates as the behaviour's mean return, so for policies
    near the behaviour (a PVI mixture, SPIBB) it is tighter than the candidate's own lower
    bound minus the behaviour's point value; measured here -0.009 against -0.023 (PVI, mix
    0.3) and -0.061 against -0.072 (SPIBB, N_wedge 50). For the deterministic PVI it is not
    (-0.047 against -0.041): its estimate hardly moves with the behaviour's."""
    from equicare.learn import PVI
    from equicare.ope import evaluate
    from equicare.pipeline._select import _held_out

    _, ds = _panel(3, 1500)
    cfg = SelectConfig(bootstrap=100, multiplicity="none", interval="percentile", seed=3,
                       estimators=("wis", "wdr"))
    train, valid = ds.split(0.3, random_state=3, stratify="group")
    pol = PVI(mix=0.3).fit(train).policy_
    ho = _held_out(valid, pol, cfg, "tabular")
    res = evaluate(valid, pol, estimators=("wis", "wdr"), q_model="tabular", bootstrap=100,
                   ci_method="percentile", alpha=0.1, groups=(), diagnose_support=False,
                   random_state=3)
    for k in ("wis", "wdr"):
        assert ho.estimates[k]["value"] == pytest.approx(res.estimates[k].value, abs=1e-12)
        np.testing.assert_allclose(ho.estimates[k]["ci"], res.estimates[k].ci, atol=1e-12)
    assert ho.behavior_value == pytest.approx(res.behavior.value, abs=1e-12)
    assert ho.lcb_gain > ho.lcb - ho.behavior_value + 0.01
    sep = _held_out(valid, pol, replace(cfg, bound="separate"), "tabular")
    assert sep.lcb_gain == pytest.approx(ho.lcb - ho.behavior_value)
    from equicare.learn import SPIBB

    spibb = _held_out(valid, SPIBB(n_wedge=50).fit(train).policy_, cfg, "tabular")
    assert spibb.lcb_gain > spibb.lcb - spibb.behavior_value + 0.005
    # the default studentized intervals are evaluate's default (bootstrap-t) ones
    stud = _held_out(valid, pol, replace(cfg, interval="studentized"), "tabular")
    res = evaluate(valid, pol, estimators=("wis", "wdr"), q_model="tabular", bootstrap=100,
                   alpha=0.1, groups=(), diagnose_support=False, random_state=3)
    for k in ("wis", "wdr"):
        np.testing.assert_allclose(stud.estimates[k]["ci"], res.estimates[k].ci, atol=1e-10)


def test_pvi_candidates_are_safe_and_improve() -> None:
    # default candidates (SPIBB and PVI, no neural), 3,000 episodes of the 50 x 5 Garnet: the
    # kept policy's exact value is never below the behaviour by more than 0.005, and on these
    # seeds it improves by more than 0.01 on average (measured: see docs/learn.md)
    gains = []
    for seed in (2, 4):
        mdp, ds = _panel(seed, 3000)
        res = select_policy(ds, SelectConfig(neural=(), bootstrap=100, multiplicity="none",
                                             seed=seed))
        table, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
        gains.append(mdp.value(table) - mdp.value(mdp.behavior_policy))
    assert min(gains) > -0.005, gains
    assert np.mean(gains) > 0.01, gains


def test_cross_fitting_pools_both_halves_and_refits_on_all() -> None:
    """folds = 2: each half is held out once; the pooled estimate is the episode-weighted mean
    of the halves' estimates (values and bootstrap replicates), and the kept candidate is
    retrained on every episode. Safety against exact values as in the single split."""
    from equicare.learn import PVI
    from equicare.pipeline._select import _cross_fitted, _held_out

    mdp, ds = _panel(5, 2000)
    cfg = SelectConfig(bootstrap=60, multiplicity="none", interval="percentile", seed=5,
                       pvi=(), n_wedges=(20.0,), neural=(), estimators=("wis", "wdr"))
    a, b = ds.split(0.5, random_state=5, stratify="group")
    parts = [_held_out(b, PVI(mix=0.5).fit(a).policy_, cfg, "tabular"),
             _held_out(a, PVI(mix=0.5).fit(b).policy_, cfg, "tabular")]
    pooled = _cross_fitted(parts, cfg)
    w = np.array([b.n_episodes, a.n_episodes], dtype=float) / ds.n_episodes
    for k in ("wis", "wdr"):
        assert pooled.point[k] == pytest.approx(w[0] * parts[0].point[k]
                                                + w[1] * parts[1].point[k])
        diff = w[0] * (parts[0].reps[k] - parts[0].behavior_reps) + w[1] * (
            parts[1].reps[k] - parts[1].behavior_reps)
        assert pooled.estimates[k]["gain_lcb"] == pytest.approx(np.quantile(diff, 0.05))
    # the behaviour's pooled value is the mean return of all episodes
    returns = np.add.reduceat(ds.rewards, ds.episode_offsets[:-1])  # gamma = 1 here
    assert ds.gamma == 1.0
    assert pooled.behavior_value == pytest.approx(float(returns.mean()))
    # measured: the pooled gain bound of the tilted PVI mixture is +0.029 (exact gain +0.023)
    res = select_policy(ds, SelectConfig(bootstrap=60, multiplicity="none", seed=5, neural=(),
                                         folds=2, n_wedges=(), pvi=((0.3, 20.0, 0.5, 0.1),)))
    assert res.settings["rule"].startswith("cross-fitted")
    assert res.chosen == "pvi_b0.3_k20_t0.1_m0.5" and res.candidates[0].lcb_gain > 0.01
    vb = mdp.value(mdp.behavior_policy)
    table, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
    assert mdp.value(table) > vb + 0.01
    # retrained on all episodes: its counts are the whole panel's
    full = PVI(prior=20.0, mix=0.5, tau=0.1).fit(ds)
    np.testing.assert_array_equal(res.learner.counts_, full.counts_)
    np.testing.assert_array_equal(res.learner.policy_.table, full.policy_.table)
    for bad in (0, 21, 2.5):
        with pytest.raises(ValueError, match="folds"):
            SelectConfig(folds=bad)  # type: ignore[arg-type]


def test_pvi_candidates_take_an_optional_min_count() -> None:
    from equicare.pipeline._select import _candidate_specs

    _, ds = _panel(0, 200)
    cfg = SelectConfig(n_wedges=(), neural=(), pvi=[[0.3, 20, 1, 0.1, 10], [0.3, 20, 1, 0.1, 3],
                                                    [0.3, 5]])
    specs = _candidate_specs(ds, cfg)
    assert [name for name, _, _ in specs] == ["pvi_b0.3_k20_t0.1_n10", "pvi_b0.3_k20_t0.1",
                                              "pvi_b0.3_k5"]
    assert specs[0][2]["min_count"] == 10 and "min_count" not in specs[1][2]
    for bad in ([0.3, 20, 1, 0.1, 0], [0.3, 20, 1, 0.1, 2.5], [0.3, 20, 1, 0.1, 3, 1]):
        with pytest.raises(InvalidParameterError, match="min_count an int >= 1"):
            SelectConfig(pvi=[bad])


def test_bonferroni_puts_every_bound_at_alpha_over_the_number_of_candidates() -> None:
    """``multiplicity="bonferroni"`` is the plain rule at level ``alpha / K``: the same
    replicates, each candidate's bound the ``alpha / (2K)`` quantile (lower than the plain one),
    so fewer pass; too few replicates for that quantile is refused with the number needed."""
    _, ds = _panel(3, 600)
    base = dict(n_wedges=(20.0,), pvi=((0.3, 5.0), (0.3, 20.0, 0.5, 0.1)), neural=(), seed=3)
    k = 3
    plain = select_policy(ds, SelectConfig(bootstrap=400, multiplicity="none", **base))
    bonf = select_policy(ds, SelectConfig(bootstrap=400, multiplicity="bonferroni", **base))
    by_hand = select_policy(ds, SelectConfig(bootstrap=400, alpha=0.1 / k,
                                             multiplicity="none", **base))
    assert bonf.chosen == by_hand.chosen
    assert bonf.settings["alpha_per_candidate"] == pytest.approx(0.1 / k)
    assert "Bonferroni over 3 candidates" in bonf.settings["rule"]
    for p_, b_, h_ in zip(plain.candidates, bonf.candidates, by_hand.candidates, strict=True):
        assert b_.lcb_gain == pytest.approx(h_.lcb_gain, abs=1e-12)
        assert b_.estimates["wdr"]["value"] == pytest.approx(p_.estimates["wdr"]["value"])
        assert b_.lcb_gain < p_.lcb_gain
    passed = {c.name for c in plain.candidates if c.lcb_gain > 0}
    assert {c.name for c in bonf.candidates if c.lcb_gain > 0} <= passed
    with pytest.raises(InvalidParameterError, match="bootstrap >= 300"):  # before any work
        SelectConfig(bootstrap=200, multiplicity="bonferroni", **base)
    with pytest.raises(ValueError, match="multiplicity"):
        SelectConfig(multiplicity="holm")


def test_k_fold_cross_fitting_holds_every_episode_out_once() -> None:
    """folds = K > 2: the K held-out evaluations (each fold's policy trained on the other
    K - 1 folds) are pooled with weights = held-out episodes, so the behaviour's pooled value
    is the mean return of every episode; the kept candidate is retrained on all episodes and
    is not below the clinicians in exact value."""
    from dataclasses import replace

    from equicare.learn import PVI
    from equicare.pipeline._select import _Completed, _cross_fitted, _fit, _held_out

    mdp, ds = _panel(5, 2000)
    cfg = SelectConfig(bootstrap=60, multiplicity="none", seed=5, pvi=((0.3, 20.0, 0.5, 0.1),),
                       n_wedges=(),
                       neural=(), folds=4)
    res = select_policy(ds, cfg)
    assert res.settings["rule"].startswith("cross-fitted on 4 folds")
    assert res.settings["n_valid_episodes"] == ds.n_episodes
    # the same pooling by hand: folds from kfold, evaluation seeds seed + k
    beh = _fit("spibb", {"n_wedge": float("inf"), "numeric": "ignore"}, ds).policy_
    pairs = ds.kfold(4, random_state=5, stratify="group")
    parts = [_held_out(va, _Completed(PVI(prior=20.0, mix=0.5, tau=0.1).fit(tr).policy_, beh),
                       replace(cfg, seed=5 + k), res.settings["q_model"])
             for k, (tr, va) in enumerate(pairs)]
    pooled = _cross_fitted(parts, cfg)
    returns = np.add.reduceat(ds.rewards, ds.episode_offsets[:-1])
    assert pooled.behavior_value == pytest.approx(float(returns.mean()))
    w = np.array([va.n_episodes for _, va in pairs], dtype=float) / ds.n_episodes
    assert pooled.point["wdr"] == pytest.approx(sum(wi * p.point["wdr"]
                                                    for wi, p in zip(w, parts, strict=True)))
    cand = res.candidates[0]
    assert cand.estimates["wdr"]["value"] == pytest.approx(pooled.point["wdr"])
    assert cand.lcb_gain == pytest.approx(pooled.lcb_gain)
    assert not res.fallback
    full = PVI(prior=20.0, mix=0.5, tau=0.1).fit(ds)
    np.testing.assert_array_equal(res.learner.policy_.table, full.policy_.table)
    table, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
    assert mdp.value(table) > mdp.value(mdp.behavior_policy) + 0.01


def test_policies_off_the_support_are_not_eligible() -> None:
    """A candidate that puts mass on pairs never logged is refused, whatever its OPE bound."""
    from equicare.pipeline._select import _off_support_pct
    from equicare.policy import TabularPolicy

    mdp, ds = _panel(2, 1500)
    valid = ds.subset(np.arange(ds.n_episodes // 2, ds.n_episodes))
    cells = ds.categorical[:, 0]
    logged = np.zeros((int(cells.max()) + 1, ds.n_actions), dtype=bool)
    logged[cells, ds.actions] = True
    on = np.where(logged, 1.0, 0.0)
    off = np.where(logged, 0.0, 1.0)
    has_off = off.sum(axis=1) > 0
    off[~has_off] = on[~has_off]  # states where every action was logged
    as_policy = lambda tab: TabularPolicy(tab / tab.sum(axis=1, keepdims=True))  # noqa: E731
    assert _off_support_pct(ds, valid, as_policy(on)) == pytest.approx(0.0)
    share = _off_support_pct(ds, valid, as_policy(off))
    assert share > 50.0
    # the neural candidates of the 700-state test bed go off the support: select never keeps one
    res = select_policy(ds, SelectConfig(n_wedges=(50.0,), pvi=(), neural=("bc",),
                                         neural_steps=200, bootstrap=50, multiplicity="none"))
    bc = next(c for c in res.candidates if c.name == "bc")
    if bc.error is not None:
        assert "not eligible" in bc.error and not np.isfinite(bc.lcb)
    assert res.chosen != "bc" or _off_support_pct(ds, ds, res.learner.policy_) <= 1.0


def test_the_note_of_a_candidate_off_thin_levels_gives_practices_own_share() -> None:
    """700 states of 25 actions, 1,000 episodes: practice itself puts 13-17% of its held-out
    mass on pairs it happened not to log. The limit stays absolute (docs/ope.md, "What the
    baseline cannot see"), and the note says what practice itself would show, with the
    behaviour's own held-out share measured against it."""
    from equicare.pipeline._select import _off_support_pct, _practice_pct
    from equicare.policy import TabularPolicy
    from equicare.sim.garnet import garnet_state_index

    mdp, ds = _panel(8, 1000, garnet_preset("s700_a25_g1"))
    valid = ds.subset(np.arange(ds.n_episodes // 2, ds.n_episodes))
    state_of = np.zeros(len(ds.categorical_levels[0]), np.int64)
    state_of[ds.categorical[:, 0]] = garnet_state_index(ds)
    beh = _off_support_pct(ds, valid, TabularPolicy(mdp.behavior_policy[state_of]))
    base = _practice_pct(ds, valid)
    assert base > 10.0 and beh == pytest.approx(base, abs=2.0)  # 15.8% against 16.9%
    res = select_policy(ds, SelectConfig(n_wedges=(), pvi=(), neural=("bc",), neural_steps=50,
                                         bootstrap=20, multiplicity="none"))
    bc = res.candidates[0]
    assert bc.error is not None and bc.error.startswith("not eligible")
    shown = float(re.search(r"practice itself would show ([0-9.]+)%", bc.error).group(1))
    assert shown == pytest.approx(base, abs=3.0)  # the selection's halves, not these


def test_a_second_categorical_column_does_not_put_the_support_out_of_reach() -> None:
    """With a 30-level site column the (state, site) combinations are thin; an action counts
    as never logged only when the state or the site never saw it, so a policy on logged
    (state, action) pairs stays on the support, and one on pairs the state never saw stays
    off it; the selection's default Q-table pools over the site."""
    from dataclasses import replace

    from equicare.pipeline._select import _off_support_pct, default_q_model
    from equicare.policy import TabularPolicy

    mdp, ds = _panel(2, 1500)
    site = np.random.default_rng(0).integers(0, 30, ds.n_episodes)[ds.episode_index]
    two = replace(ds, categorical=np.c_[ds.categorical, site],
                  categorical_names=(*ds.categorical_names, "site"),
                  categorical_levels=(*ds.categorical_levels, tuple(range(30))), _cache={})
    valid = two.subset(np.arange(two.n_episodes // 2, two.n_episodes))
    cells = ds.categorical[:, 0]
    logged = np.zeros((int(cells.max()) + 1, ds.n_actions), dtype=bool)
    logged[cells, ds.actions] = True
    on = np.where(logged, 1.0, 0.0)
    pol = TabularPolicy(on / on.sum(axis=1, keepdims=True))
    combos = {(c, s, a) for c, s, a in zip(cells, site, ds.actions, strict=True)}
    thin = np.mean([(c, s, a) not in combos for c, s in zip(cells, site, strict=True)
                    for a in np.flatnonzero(logged[c])])
    assert thin > 0.2  # the product check would call these never logged
    assert _off_support_pct(two, valid, pol) == pytest.approx(0.0)
    off = np.where(logged, 0.0, 1.0)
    off[off.sum(axis=1) == 0] = 1.0
    assert _off_support_pct(two, valid, TabularPolicy(off / off.sum(axis=1, keepdims=True))) > 50
    assert default_q_model(two) == "tabular_stationary[state]"
    assert default_q_model(ds) == "tabular_stationary"


def test_the_clinicians_unlogged_remainder_is_theirs_not_off_the_support() -> None:
    """With the known baseline a candidate leaves the clinicians' unlogged mass to them: the
    support check counts only what a candidate adds beyond its own training baseline."""
    from dataclasses import replace

    from equicare.learn import SPIBB
    from equicare.pipeline._select import _Completed, _off_support_pct, _own_baseline

    cfg = GarnetConfig(n_states=400, n_actions=10, n_successors=3)
    _, ds = _panel(3, 600, cfg)
    train, valid = ds.split(0.5, random_state=0)
    beh = SPIBB(n_wedge=float("inf")).fit(ds).policy_
    cand = SPIBB(n_wedge=10).fit(train)
    pol, own = _Completed(cand.policy_, beh), _Completed(_own_baseline(cand), beh)
    raw = _off_support_pct(ds, valid, pol)
    assert raw > 1.0  # the clinicians' own remainder sits on actions never logged in a cell
    # (to the tables' 4-significant-digit rounding: 6e-6 % measured)
    assert _off_support_pct(ds, valid, pol, own) == pytest.approx(0.0, abs=1e-4)
    # against the full panel's baseline instead, the halves' different remainders would count
    # (0.31% measured: most of the 400 cells of a 300-episode half hold fewer than 11 episodes
    # and are left to the clinicians whole in both policies)
    assert _off_support_pct(ds, valid, pol, beh) > 0.2
    # a candidate that moves its logged mass onto never-logged actions is still caught
    t = cand.policy_.table.copy()
    un = ~cand.policy_.deferred  # entries the clinicians do not own: logged pairs
    moved = t * un
    t = t * ~un
    t[:, 0] += moved.sum(axis=1)  # all of it on action 0, logged or not
    bad = replace(cand.policy_, table=t)
    assert _off_support_pct(ds, valid, _Completed(bad, beh), own) > 5.0


def test_cli_select_auto_writes_the_table(tmp_path) -> None:
    from typer.testing import CliRunner

    from equicare.cli import app
    from equicare.policy import load_policy

    runner = CliRunner()
    data = tmp_path / "g"
    assert runner.invoke(app, ["synth", "--sim", "garnet", "--states", "50", "--actions", "5",
                               "--episodes", "600", "--seed", "2", "--out",
                               str(data)]).exit_code == 0
    out = tmp_path / "m"
    args = ["train", str(data / "panel.parquet"), "-m", str(data / "manifest.toml"),
            "--select", "auto", "--param", "neural=[]", "--param", "n_wedges=[10,50]",
            "--param", "pvi=[[0.3,5]]",
            "--param", "bootstrap=300", "--out", str(out), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Candidates" in res.output and "spibb_n10" in res.output
    doc = json.loads((out / SELECTION_FILE).read_text())
    assert [c["name"] for c in doc["candidates"]] == ["spibb_n10", "spibb_n50", "pvi_b0.3_k5"]
    assert doc["chosen"] in ("spibb_n10", "spibb_n50", "pvi_b0.3_k5", "behavior")
    assert all("lcb_gain" in c for c in doc["candidates"])
    from equicare.data import load_dataset

    ds = load_dataset(data / "panel.parquet", data / "manifest.toml", emit_warnings=False)
    probs = load_policy(out).action_probs(ds)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # an existing folder needs --force; a bad setting exits 2 with one line
    assert runner.invoke(app, args).exit_code == 2
    bad = runner.invoke(app, [*args[:-3], "--param", "nope=1", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "Unknown selection setting" in bad.output


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Selection on censored stays:equicare.exceptions.DataWarning")
@pytest.mark.parametrize("name", ["s50_a5_g1", "s50_a5_g099", "s50_a25_g1", "s700_a5_g099",
                                  "s700_a25_g1", "s700_a25_g099", "s700_a100_g1", "s5000_a5_g1",
                                  "s5000_a25_g099"])
def test_selection_study(name: str) -> None:
    """Five seeds, 5,000 episodes, default candidates without the neural ones (the computation
    of ``benchmarks/bench_select.py``; cross-fitted, tilted PVI candidates): never below
    behaviour beyond noise; gap closed.

    Measured with these seeds (2026-12-05, the studentized Bonferroni bound that is the default
    since the safety review; docs/learn.md, "How safe is the bound"): 80% / 63% / 68% on the
    50-state configurations, 42% / 44% / 55% / 54% on the 700-state ones, 16% / 5% on the
    5000-state ones (the earlier percentile bound at each candidate's 95%: 82 / 72 / 66,
    66 / 57 / 50 / 56, 54 / 37); worst (kept - behaviour) -5e-7. The tenth, ``s5000_a100_g1``,
    is left out for run time (about 7 minutes per seed). Asserted: no seed more than 0.01
    below the behaviour; mean gap closed above 50% (50 states), 15% (700), 3% (5000: three of
    five seeds now keep current practice on ``s5000_a25_g099``).
    """
    cfg = garnet_preset(name)
    gaps, drops = [], []
    for seed in range(1, 6):
        mdp, ds = _panel(seed, 5000, cfg)
        vb = mdp.value(mdp.behavior_policy)
        vo = mdp.value(garnet_target_policies(mdp)["optimal"])
        res = select_policy(ds, SelectConfig(neural=(), seed=seed))
        table, _ = garnet_policy_table(mdp, ds, res.learner.policy_, usual_care="deployed")
        v = mdp.value(table)
        gaps.append((v - vb) / (vo - vb))
        drops.append(v - vb)
    assert min(drops) > -0.01, drops
    floor = {50: 0.5, 700: 0.15, 5000: 0.03}[cfg.n_states]
    assert np.mean(gaps) > floor, gaps


def test_rules_rescored_from_a_superset_run_match_a_run_with_that_rule() -> None:
    """One run with more estimators records every candidate's paired bound per estimator; the
    rule over a subset (``choose_by_bounds``) keeps exactly what a run with that subset keeps,
    and its choice retrained on all episodes is not below the behaviour (exact values). The
    rules: the default (WDR, largest bound), the earlier default (WIS and WDR, largest
    estimate), WDR with the largest estimate."""
    from equicare.pipeline import choose_by_bounds

    mdp, ds = _panel(4, 1500)  # the rules keep different policies here
    base = dict(n_wedges=(20.0,), pvi=((0.3, 20.0, 1.0, 0.1), (0.3, 20.0, 0.5, 0.1)),
                neural=(), bootstrap=50, multiplicity="none", interval="percentile", seed=4)
    wide = select_policy(ds, SelectConfig(estimators=("wis", "fqe", "dr", "wdr"), **base))
    vb = mdp.value(mdp.behavior_policy)
    table = [c.to_dict() for c in wide.candidates]
    kept = {}
    assert SelectConfig().estimators == ("wdr",) and SelectConfig().rank == "bound"
    for rule, rank, by in ((("wdr",), "bound", None), (("wis", "wdr"), "estimate", None),
                           (("wdr",), "estimate", None), (("wdr",), "bound", "fqe")):
        run = select_policy(ds, SelectConfig(estimators=rule, rank=rank, rank_by=by, **base))
        kept[rule, rank, by] = choose_by_bounds(table, wide.behavior_value, rule, rank, by)
        assert kept[rule, rank, by] == run.chosen, (rule, rank, by)
        for c, w in zip(run.candidates, wide.candidates, strict=True):
            assert set(c.estimates) == set(rule) | ({by} if by else set())
            for k in c.estimates:
                assert c.estimates[k]["gain_lcb"] == pytest.approx(
                    w.estimates[k]["gain_lcb"], abs=1e-12)
        assert not run.fallback
        t, _ = garnet_policy_table(mdp, ds, run.learner.policy_, usual_care="deployed")
        assert mdp.value(t) > vb - 0.005
    # the default (WDR passes, FQE's bound orders) and the rule before it (WDR's bound orders)
    # disagree on this panel, and every choice is safe in exact value (above)
    assert SelectConfig().rank_by == "auto"
    assert kept[("wdr",), "bound", "fqe"] != kept[("wdr",), "bound", None], kept
    # rank_by: WDR decides who passes, FQE's paired bound orders them (by hand)
    passing = [c for c in table if c["error"] is None and c["estimates"]["wdr"]["gain_lcb"] > 0]
    assert passing
    assert kept[("wdr",), "bound", "fqe"] == max(
        passing, key=lambda c: c["estimates"]["fqe"]["gain_lcb"])["name"]
    assert choose_by_bounds(table, wide.behavior_value, ("wdr",), "estimate", "fqe") == max(
        passing, key=lambda c: c["estimates"]["fqe"]["value"])["name"]
    # the rule is the conjunction: a candidate passes only if every estimator's bound is > 0
    both = {c["name"] for c in table
            if min(c["estimates"][k]["gain_lcb"] for k in ("wis", "wdr")) > 0}
    assert (kept[("wis", "wdr"), "estimate", None] == "behavior") == (not both)
    assert choose_by_bounds(table, wide.behavior_value, ("wis", "wdr"), rank="bound") in (
        both | {"behavior"})
    with pytest.raises(DataValidationError, match="no held-out estimate"):
        choose_by_bounds(table, wide.behavior_value, ("pdis",))
    with pytest.raises(InvalidParameterError,
                       match=r"The 'estimators' parameter of choose_by_bounds must be a non-empty"):
        choose_by_bounds(table, wide.behavior_value, ())
    with pytest.raises(ValueError, match="no held-out estimate"):
        choose_by_bounds(table, wide.behavior_value, ("wdr",), "bound", "pdis")
    with pytest.raises(ValueError, match="rank_by"):
        SelectConfig(rank_by="best")


def test_estimated_propensities_are_fitted_once_per_held_out_part(monkeypatch) -> None:
    """Without logged propensities the candidates share one behaviour model per held-out part.

    The model depends on the held-out episodes and the seed, not on the candidate: fitting it
    for each candidate made ``train --select auto`` 6.6 times slower on an ICU-shaped panel
    (493 s against 75 s with the propensities logged). Same numbers as one fit each.
    """
    from equicare.policy import BehaviorModel

    _, logged = _panel(2, 600)
    ds = replace(logged, behavior_prob=None, _cache={})
    fits: list[int] = []
    real_fit = BehaviorModel.fit

    def counting_fit(self, dataset, y=None):
        fits.append(dataset.n_episodes)
        return real_fit(self, dataset, y)

    monkeypatch.setattr(BehaviorModel, "fit", counting_fit)
    cfg = SelectConfig(n_wedges=(50.0, 200.0, 1e9), pvi=(), neural=(), bootstrap=30,
                       multiplicity="none")
    res = select_policy(ds, cfg)
    assert len(res.candidates) == 3 and all(c.error is None for c in res.candidates)
    assert fits == [300, 300], fits  # one per held-out half (cross-fitting on two halves)
    monkeypatch.setattr(BehaviorModel, "fit", real_fit)
    from equicare.pipeline import _select as sel

    monkeypatch.setattr(sel, "_held_out_behavior", lambda valid, cfg: None)
    again = select_policy(ds, cfg)  # one fit per candidate, as before: the same numbers

    def numbers(r):
        return [{k: v for k, v in c.to_dict().items() if not k.endswith("_seconds")}
                for c in r.candidates]

    assert numbers(again) == numbers(res)


@pytest.mark.parametrize(("n", "folds", "message"), [
    (2, 2, "the panel has 2 episodes; select holds out 0.5 of them (1 here) for the candidates' "
           "evaluation (each half in turn) and needs at least 2 there because"),
    (3, 2, "the panel has 3 episodes; select holds out 0.5 of them (1 here)"),
    (2, 1, "the panel has 2 episodes; select holds out 0.3 of them (1 here) for the candidates' "
           "evaluation and needs at least 2 there"),
    (5, 3, "the panel has 5 episodes; select needs at least 6 because each of its 3 folds holds "
           "out 2 or more")])
def test_too_few_episodes_for_the_held_out_parts_is_a_data_error(n, folds, message) -> None:
    """`train --select auto` on 2 episodes cross-fitted on halves of 1: every candidate's
    held-out value was one episode's, printed with an interval of width 0 (lower = upper =
    1.0000). Now refused, naming the panel; a one-episode panel got the split's own error."""
    _, ds = _panel(1, 40)
    ds = ds.subset(np.arange(n))
    cfg = replace(FAST, folds=folds, valid_fraction=0.3)
    with pytest.raises(DataValidationError, match=re.escape(f"p.csv: {message}")):
        select_policy(ds, cfg, panel="p.csv")


def test_held_out_bounds_resample_people_when_they_re_enrol():
    """8 correlated episodes a person: the held-out intervals and bootstrap-t standard errors
    are the people's (as evaluate's), not the episodes' (about half as wide)."""
    import dataclasses
    import warnings

    from equicare.ope import evaluate
    from equicare.pipeline._select import SelectConfig, _held_out
    from equicare.policy import TabularPolicy

    from ..ope._mdp import BEHAVIOR, TARGET, clustered_sample, small_mdp

    ds = clustered_sample(small_mdp(horizon=4), BEHAVIOR, 60, 8, 2.0, seed=0)
    flat = dataclasses.replace(ds, members=None, _cache={})
    cfg = SelectConfig(estimators=("wis", "dr"), bootstrap=1200, seed=0)
    pol = TabularPolicy(TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-ESS notes of a small panel
        people = _held_out(ds, pol, cfg, "tabular_stationary")
        episodes = _held_out(flat, pol, cfg, "tabular_stationary")
        ref = evaluate(ds, pol, estimators="wis,dr", q_model="tabular_stationary",
                       bootstrap=1200, groups=[], random_state=0)
    for k in ("wis", "dr"):
        sd_p, sd_e = float(np.std(people.reps[k])), float(np.std(episodes.reps[k]))
        assert sd_p == pytest.approx(ref.estimates[k].se, rel=0.2), k
        assert sd_e < 0.75 * sd_p, k
        assert float(people.se[k][0]) == pytest.approx(ref.estimates[k].se, rel=0.25), k
        assert float(episodes.se[k][0]) < 0.75 * float(people.se[k][0]), k
    assert people.n_episodes == episodes.n_episodes == ds.n_episodes


def test_the_default_table_keeps_a_numeric_wave_that_drives_the_dynamics() -> None:
    """A one-step campaign whose members not enrolled by the first message get a second wave
    (numeric ``wave`` 0/1, one categorical ``language``), where the message that works first
    works badly: a table of the language alone mixes the waves' rows and loops at gamma 1
    (FQE 0.51 against the exact 0.618); the selection's default table keeps the wave's bins,
    as ``auto`` does (and pools the language, which drives nothing)."""
    from equicare.ope import evaluate
    from equicare.pipeline._select import default_q_model
    from equicare.policy import TabularPolicy

    rng = np.random.default_rng(4)
    n = 4000
    lang, a0 = rng.integers(0, 3, n), rng.integers(0, 2, n)
    r0 = (rng.random(n) < 0.1 + 0.5 * a0).astype(float)
    m = np.flatnonzero((r0 == 0) & (rng.random(n) < 0.9))  # a second wave if not enrolled
    a1 = rng.integers(0, 2, m.size)
    r1 = (rng.random(m.size) < 0.5 - 0.45 * a1).astype(float)
    wave = np.r_[np.zeros(n), np.ones(m.size)]
    frame = pd.DataFrame({"member": np.r_[np.arange(n), m], "week": wave.astype(int),
                          "wave": wave, "language": np.r_[lang, lang[m]],
                          "channel": np.r_[a0, a1], "enrolled": np.r_[r0, r1],
                          "propensity": 0.5})
    frame["done"] = ~frame["member"].duplicated(keep="last")  # the campaign ends
    manifest = {"dataset": {"episode": "member", "time": "week", "states": ["wave"],
                            "categorical_states": ["language"], "behavior_prob": "propensity",
                            "terminal": "done", "gamma": 1.0},
                "actions": {"channel": {"levels": [0, 1]}},
                "reward": {"enrolled": {"column": "enrolled", "weight": 1.0}}}
    ds = from_frame(frame, manifest)
    name = default_q_model(ds)
    assert name == "tabular_stationary[wave@0.5]"  # the language drives nothing here
    always = TabularPolicy(np.tile([0.0, 1.0], (3, 1)))
    truth = 0.6 + 0.4 * 0.9 * 0.05  # enrolled first, or a second wave that enrols
    fqe = evaluate(ds, always, estimators=["fqe"], n_boot=0, q_model=name).estimates["fqe"]
    assert fqe.value == pytest.approx(truth, abs=0.02)
    pooled = evaluate(ds, always, estimators=["fqe"], n_boot=0,
                      q_model="tabular_stationary").estimates["fqe"]
    assert pooled.value < truth - 0.08  # the loop the default no longer takes
