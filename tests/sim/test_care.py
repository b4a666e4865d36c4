"""Care-management simulator: statistics of the panel, exact propensities, true values, Env."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from equicare.data import load_dataset
from equicare.exceptions import PolicyError
from equicare.rewards import CARE_DEFAULT_WEIGHTS
from equicare.sim.care import (
    CARE_ACTION_LEVELS,
    CARE_GROUP_LEVELS,
    CareConfig,
    CareManagementEnv,
    CareManagementSim,
    CareValue,
)

N_MEMBERS = 4000
N_VALUE = 2000


@pytest.fixture(scope="module")
def sim() -> CareManagementSim:
    return CareManagementSim()


@pytest.fixture(scope="module")
def panel(sim):
    return sim.generate(n_members=N_MEMBERS, n_weeks=52, random_state=0)


@pytest.fixture(scope="module")
def ds(panel):
    return panel.dataset()


@pytest.fixture(scope="module")
def behavior_value(sim):
    return sim.true_value(sim.behavior_policy(), n_members=N_VALUE, n_weeks=52, random_state=1)


# ----------------------------------------------------------------------------- config
def test_config_round_trip():
    cfg = CareConfig(history_dependence=True, churn=False, race_shares=(0.2, 0.2, 0.2, 0.2, 0.2))
    d = json.loads(json.dumps(cfg.to_dict()))
    assert CareConfig.from_dict(d) == cfg
    assert CareManagementSim(CareConfig.from_dict(d)).config == cfg


@pytest.mark.parametrize("kwargs, error, message", [
    ({"disenroll_rate": 1.0}, ValueError,
     "The 'disenroll_rate' parameter of CareConfig must be a number in [0, 1). Got 1.0 instead."),
    ({"history_dependence": 1}, TypeError,
     "The 'history_dependence' parameter of CareConfig must be of type bool. Got 1 instead."),
    ({"race_shares": (0.5, 0.5)}, ValueError,
     "The 'race_shares' parameter of CareConfig must be 5 positive numbers summing to 1 (white, "
     "black, hispanic, asian, other). Got (0.5, 0.5) instead."),
    ({"gamma": 0.0}, ValueError,
     "The 'gamma' parameter of CareConfig must be a number in (0, 1]. Got 0.0 instead."),
    ({"trust_max": 0}, ValueError,
     "The 'trust_max' parameter of CareConfig must be a number in [1, 52]. Got 0 instead."),
    ({"effect_scale": -1.0}, ValueError,
     "The 'effect_scale' parameter of CareConfig must be a number in [0, 50]. Got -1.0 instead."),
])
def test_config_errors(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        CareConfig(**kwargs)


def test_from_dict_unknown_key():
    with pytest.raises(ValueError, match="Unknown CareConfig key"):
        CareConfig.from_dict({"histroy_dependence": True})


def test_sizes_checked(sim):
    msg = "The 'n_members' parameter of CareManagementSim must be a number in [1, 5e+07]. Got 0"
    with pytest.raises(ValueError, match=re.escape(msg)):
        sim.generate(n_members=0)


# ----------------------------------------------------------------------------- manifest / frame
def test_manifest(sim, panel):
    man = sim.manifest()
    assert man == panel.manifest
    assert man.states == ("risk", "ed_90d", "engagement", "sdoh_need", "chronic")
    assert man.groups[0] == "race_ethnicity" and set(man.groups) == {"race_ethnicity", "sex",
                                                                     "age_band"}
    assert {a.name: a.levels for a in man.actions} == CARE_ACTION_LEVELS
    assert man.action_space.n_actions == 300
    assert {r.name: r.weight for r in man.reward} == CARE_DEFAULT_WEIGHTS
    assert (man.gamma, man.behavior_prob, man.need, man.terminal, man.mediators) == (
        0.99, "propensity", "high_need", "disenrolled", ("engaged",))
    assert set(man.named_columns) <= set(panel.frame.columns)
    groups = panel.frame.groupby("race_ethnicity", observed=True)["member_id"].nunique()
    assert len(groups) == 5 and groups.max() > 3 * groups.min()   # unequal sizes


def test_sparsity(panel):
    f = panel.frame
    nz = {c: float(np.mean(f[c].to_numpy() != 0)) for c in
          ("r_primary", "r_engagement", "r_intermediate")}
    assert 0.001 < nz["r_primary"] < 0.01
    assert nz["r_engagement"] > 10 * nz["r_primary"]
    assert nz["r_intermediate"] > 3 * nz["r_primary"]
    assert set(np.unique(f["r_primary"])) == {0.0, -panel.config.event_penalty}
    # the mediator is the engagement reward's indicator (after the action, before the outcome)
    assert np.array_equal(f["engaged"].to_numpy(), f["r_engagement"].to_numpy().astype(np.int8))


def test_confounding_by_indication(panel):
    f = panel.frame
    q = pd.qcut(f["risk"], 5, labels=False)
    contact = (f["modality"] != "none").groupby(q).mean().to_numpy()
    intense = f["modality"].isin(["home_visit"]).to_numpy() | (f["urgency"] == "urgent").to_numpy()
    intense_rate = pd.Series(intense).groupby(q.to_numpy()).mean().to_numpy()
    events = (f["r_primary"] != 0).groupby(q).mean().to_numpy()
    assert np.all(np.diff(contact) > 0) and contact[-1] > 2 * contact[0]
    assert intense_rate[-1] > 2 * intense_rate[0]
    assert events[-1] > 2 * events[0]   # sicker members also have more events


def test_home_visit_disparity(panel):
    s = panel.summary()
    std = s["home_visit_pct_by_race_need_standardised"]
    assert 3.0 <= s["home_visit_gap_pp"] <= 4.0
    assert std["white"] - std["black"] > 2.5 and std["white"] - std["hispanic"] > 2.5
    assert 5.0 < s["home_visit_pct"] < 12.0


def test_exact_home_visit_gap_at_equal_state(sim, ds):
    """Counterfactual: the same member-weeks with the race label swapped."""
    pol = sim.behavior_policy()
    eq = sim.behavior_policy(equitable=True)
    mask = ds.action_space.level_mask("modality", "home_visit")
    sub = ds.subset(np.arange(1000))
    rates, rates_eq = {}, {}
    for label in ("white", "black", "hispanic", "asian"):
        groups = dict(sub.groups, race_ethnicity=np.full(sub.n_episodes, label, dtype=object))
        swapped = replace(sub, groups=groups, _cache={})
        rates[label] = float((pol.action_probs(swapped) @ mask).mean())
        rates_eq[label] = float((eq.action_probs(swapped) @ mask).mean())
    assert 0.03 <= rates["white"] - rates["black"] <= 0.045
    assert rates["black"] == rates["hispanic"] and rates["white"] == rates["asian"]
    assert len(set(rates_eq.values())) == 1 and rates_eq["black"] == rates["white"]


def test_logged_propensities_exact(sim, ds):
    pol = sim.behavior_policy()
    sub = ds.subset(np.arange(0, ds.n_episodes, 4))
    probs = pol.action_probs(sub)
    assert probs.shape == (sub.n_steps, 300)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert (probs >= 0).all()
    logged = probs[np.arange(sub.n_steps), sub.actions]
    np.testing.assert_allclose(logged, sub.behavior_prob, rtol=1e-12, atol=0)
    np.testing.assert_allclose(pol.action_prob(ds), ds.behavior_prob, rtol=1e-12, atol=0)
    assert (ds.behavior_prob > 0).all() and (ds.behavior_prob <= 1).all()


def test_observed_combinations(sim, ds):
    support = sim.behavior_policy().support
    counts = ds.action_space.counts(ds.actions)
    observed = counts > 0
    assert 95 <= observed.sum() <= 110
    assert not (observed & ~support).any()
    assert support.sum() == 103 and support[0]
    none = ds.action_space.level_mask("modality", "none")
    assert counts[none].sum() == counts[0]   # "no contact" is none/rn/chronic/routine only


def test_variable_episode_lengths(panel, ds):
    lengths = ds.episode_lengths
    assert lengths.max() == 52 and lengths.min() < 26 and len(np.unique(lengths)) > 20
    f = panel.frame
    first = f[f["tenure"] == 0]
    late = (first["week"] > 0).mean()
    assert 0.1 < late < 0.3
    last = f.groupby("member_id", sort=False).tail(1)
    assert len(last) == ds.n_episodes
    left = last["disenrolled"].mean()
    assert 0.1 < left < 0.35
    assert (last.loc[last["disenrolled"] == 0, "week"] == 51).all()
    assert f["disenrolled"].sum() == last["disenrolled"].sum()  # only on last rows


def test_no_churn(sim):
    p = CareManagementSim(CareConfig(churn=False)).generate(n_members=50, n_weeks=10,
                                                            random_state=3)
    assert (p.dataset().episode_lengths == 10).all()


def test_reproducible(sim):
    a = sim.generate(n_members=200, n_weeks=20, random_state=7).frame
    b = sim.generate(n_members=200, n_weeks=20, random_state=7).frame
    c = sim.generate(n_members=200, n_weeks=20, random_state=8).frame
    pd.testing.assert_frame_equal(a, b)
    assert not a["risk"].equals(c["risk"])


# ----------------------------------------------------------------------------- true values
def test_behavior_value_matches_logged_data(panel, behavior_value):
    logged = panel.dataset().returns()
    se_logged = logged.std(ddof=1) / np.sqrt(logged.size)
    diff = behavior_value.value - logged.mean()
    assert abs(diff) < 3 * np.hypot(behavior_value.se, se_logged)
    comps = panel.dataset().component_returns()
    for j, name in enumerate(("primary", "engagement", "intermediate")):
        c = behavior_value.components[name]
        assert abs(c["value"] - comps[:, j].mean()) < 3 * np.hypot(
            c["se"], comps[:, j].std(ddof=1) / np.sqrt(len(comps)))


def test_value_result_structure(behavior_value):
    r = behavior_value
    assert isinstance(r, CareValue) and r.n_episodes == N_VALUE
    w = np.array(list(CARE_DEFAULT_WEIGHTS.values()))
    comp = np.array([r.components[k]["value"] for k in ("primary", "engagement", "intermediate")])
    assert r.value == pytest.approx(comp @ w)
    assert r.episode_values.shape == (N_VALUE,)
    for attr in ("race_ethnicity", "sex", "age_band"):
        groups = r.by_group[attr]
        n = np.array([g["n_episodes"] for g in groups.values()])
        v = np.array([g["value"] for g in groups.values()])
        assert n.sum() == N_VALUE
        assert np.sum(n * v) / n.sum() == pytest.approx(r.value)
    # allocation: true home-visit rates of the behaviour policy show its disparity
    a = r.allocation["race_ethnicity"]
    assert 0.03 < a["white"] - min(a["black"], a["hispanic"]) < 0.045
    assert r.parity_gap() >= a["white"] - a["black"]
    json.dumps(r.to_dict())


def test_reference_policy_is_better(sim, behavior_value):
    ref = sim.true_value(sim.reference_policy(), n_members=N_VALUE, n_weeks=52, random_state=2)
    diff = ref.value - behavior_value.value
    assert diff > 3 * np.hypot(ref.se, behavior_value.se)
    assert ref.components["primary"]["value"] > behavior_value.components["primary"]["value"]


def test_equitable_policy_is_fairer_and_better_for_underserved(sim, behavior_value):
    eq = sim.true_value(sim.behavior_policy(equitable=True), n_members=N_VALUE, n_weeks=52,
                        random_state=1)
    assert eq.parity_gap() < 0.02 < behavior_value.parity_gap()
    for g in ("black", "hispanic"):
        d = eq.by_group["race_ethnicity"][g]["value"] - behavior_value.by_group[
            "race_ethnicity"][g]["value"]
        assert d > 0.1
    # same cohort and noise (common random numbers): white members are treated identically
    assert eq.by_group["race_ethnicity"]["white"]["value"] == pytest.approx(
        behavior_value.by_group["race_ethnicity"]["white"]["value"])


def test_paired_difference_within_a_group(sim, behavior_value):
    """Equitable practice differs only in black and hispanic members' home visits: the paired
    difference is exactly 0 for white members and positive and precise for black members."""
    eq = sim.true_value(sim.behavior_policy(equitable=True), n_members=N_VALUE, n_weeks=52,
                        random_state=1)
    labels = eq.episode_groups["race_ethnicity"]
    assert labels.shape == (N_VALUE,) and set(labels) <= set(CARE_GROUP_LEVELS["race_ethnicity"])
    assert eq.paired_difference(behavior_value, "race_ethnicity", "white") == (0.0, 0.0)
    d, se = eq.paired_difference(behavior_value, "race_ethnicity", "black")
    unpaired = np.hypot(eq.by_group["race_ethnicity"]["black"]["se"],
                        behavior_value.by_group["race_ethnicity"]["black"]["se"])
    assert d == pytest.approx(eq.by_group["race_ethnicity"]["black"]["value"]
                              - behavior_value.by_group["race_ethnicity"]["black"]["value"])
    assert d > 3 * se and se < unpaired
    other = sim.true_value(sim.behavior_policy(), n_members=N_VALUE, n_weeks=52, random_state=7)
    with pytest.raises(ValueError, match="same cohort"):
        eq.paired_difference(other)
    with pytest.raises(ValueError, match="Unknown group attribute 'zip'"):
        eq.paired_difference(behavior_value, "zip", "x")
    assert "episode_groups" not in eq.to_dict()


def test_callable_and_policy_give_same_value(sim):
    pol = sim.behavior_policy()
    a = sim.true_value(pol, n_members=300, n_weeks=12, random_state=5)
    b = sim.true_value(lambda s, g: pol(s, g), n_members=300, n_weeks=12, random_state=5)
    assert a.value == b.value and a.allocation == b.allocation


def test_window_datasets_passed_to_history_policies(sim):
    seen = []

    class Spy:
        n_actions = 300
        window = 3

        def action_probs(self, dataset):
            seen.append(dataset)
            p = np.zeros((dataset.n_steps, 300))
            p[:, 0] = 1.0
            return p

    sim.true_value(Spy(), n_members=40, n_weeks=6, random_state=0)
    assert len(seen) == 6
    assert seen[0].episode_lengths.max() == 1
    assert seen[-1].episode_lengths.max() == 3
    last = seen[-1]
    assert (last.times[last.episode_offsets[1:] - 1] == 5).all()
    assert np.all(np.diff(last.times)[~last.is_last[:-1]] == 1)
    assert last.manifest == sim.manifest() and set(last.groups) == {"race_ethnicity", "sex",
                                                                    "age_band"}


def test_history_dependence_rewards_memory():
    sim_h = CareManagementSim(CareConfig(history_dependence=True))
    r1 = sim_h.true_value(sim_h.reference_policy(window=1), n_members=600, random_state=4)
    r7 = sim_h.true_value(sim_h.reference_policy(window=7), n_members=600, random_state=4)
    d = r7.episode_values - r1.episode_values          # paired (common random numbers)
    assert d.mean() > 3 * d.std(ddof=1) / np.sqrt(d.size)


def test_effect_scale_zero_makes_primary_outcome_action_free():
    sim0 = CareManagementSim(CareConfig(effect_scale=0.0))
    a = sim0.true_value(sim0.behavior_policy(), n_members=300, n_weeks=20, random_state=3)
    b = sim0.true_value(sim0.reference_policy(), n_members=300, n_weeks=20, random_state=3)
    assert a.components["primary"]["value"] == b.components["primary"]["value"]
    assert a.components["engagement"]["value"] != b.components["engagement"]["value"]


@pytest.mark.parametrize("bad, message", [
    (lambda s, g: np.ones((len(s), 299)) / 299, "must have shape"),
    (lambda s, g: np.full((len(s), 300), -1.0), "negative or non-finite"),
    (lambda s, g: np.ones((len(s), 300)), "do not sum to 1"),
])
def test_bad_policy_probabilities(sim, bad, message):
    with pytest.raises(PolicyError, match=message):
        sim.true_value(bad, n_members=10, n_weeks=2)


def test_action_mask_argument(sim):
    r = sim.true_value(sim.reference_policy(), n_members=200, n_weeks=8, random_state=0,
                       action_mask="modality=none", by_group=False)
    r2 = sim.true_value(sim.reference_policy(), n_members=200, n_weeks=8, random_state=0,
                        action_mask=~sim.action_space.level_mask("modality", "none"))
    assert r.by_group == {}
    assert r.allocation_overall + r2.allocation_overall == pytest.approx(1.0)
    with pytest.raises(ValueError, match="action_mask"):
        sim.true_value(sim.reference_policy(), n_members=10, n_weeks=2, action_mask=np.ones(3))


# ----------------------------------------------------------------------------- rollout / io
def test_rollout_logs_the_policy_probabilities(sim):
    p = sim.rollout(sim.reference_policy(), n_members=100, n_weeks=10, random_state=0)
    assert (p.frame["propensity"] == 1.0).all()
    ds = p.dataset()
    ref = sim.reference_policy().action_probs(ds)
    assert (ref[np.arange(ds.n_steps), ds.actions] == 1.0).all()
    q = sim.rollout(sim.behavior_policy(), n_members=100, n_weeks=10, random_state=0).dataset()
    np.testing.assert_allclose(q.behavior_prob, sim.behavior_policy().action_prob(q), rtol=1e-12)


def test_write_and_load(tmp_path, sim):
    p = sim.generate(n_members=60, n_weeks=8, random_state=1)
    out = p.write(tmp_path / "care")
    ds = load_dataset(out / "panel.parquet", out / "manifest.toml", emit_warnings=False)
    ref = p.dataset()
    np.testing.assert_array_equal(ds.states, ref.states)
    np.testing.assert_array_equal(ds.actions, ref.actions)
    np.testing.assert_array_equal(ds.behavior_prob, ref.behavior_prob)
    np.testing.assert_array_equal(ds.reward_components, ref.reward_components)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        p.write(tmp_path / "care")
    p.write(tmp_path / "care", overwrite=True)


# ----------------------------------------------------------------------------- gymnasium Env
@pytest.mark.parametrize("kwargs", [{}, {"include_groups": True}, {"render_mode": "ansi"},
                                    {"config": CareConfig(history_dependence=True)}])
def test_check_env(kwargs):
    import gymnasium as gym
    from gymnasium.utils.env_checker import check_env

    from equicare.sim._care_env import CARE_ENV_ID

    env = gym.make(CARE_ENV_ID, **kwargs).unwrapped
    check_env(env)
    obs, _ = env.reset(seed=0)
    assert obs.shape == ((16,) if kwargs.get("include_groups") else (5,))


def test_env_uses_the_same_dynamics(sim):
    """With churn off the Env consumes noise like a one-member panel: identical trajectories."""
    cfg = CareConfig(churn=False)
    s = CareManagementSim(cfg)
    panel = s.rollout(s.reference_policy(), n_members=1, n_weeks=30, random_state=11)
    ds = panel.dataset()
    env = CareManagementEnv(config=cfg, n_weeks=30)
    obs, info = env.reset(seed=11)
    assert info["race_ethnicity"] == ds.groups["race_ethnicity"][0]
    rewards = []
    for t in range(30):
        np.testing.assert_array_equal(obs, ds.states[t])
        obs, r, term, trunc, info = env.step(int(ds.actions[t]))
        rewards.append(r)
        assert not term and trunc == (t == 29)
    np.testing.assert_allclose(rewards, ds.rewards, rtol=1e-12)


def test_env_terminates_on_disenrolment():
    env = CareManagementEnv(config=CareConfig(disenroll_rate=0.5), n_weeks=52)
    env.reset(seed=0)
    for _ in range(52):
        _, _, term, trunc, _ = env.step(0)
        if term or trunc:
            break
    assert term and not trunc


def test_env_errors():
    env = CareManagementEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("The action must be an integer in [0, 300)")):
        env.step(300)
    with pytest.raises(ValueError, match="Unknown race_ethnicity label"):
        env.reset(options={"race_ethnicity": "martian"})
    probs = env.behavior_action_probs()
    assert probs.shape == (300,) and probs.sum() == pytest.approx(1.0)


# ----------------------------------------------------------------------------- CLI
def test_cli_synth(tmp_path):
    from typer.testing import CliRunner

    from equicare.cli import app

    runner = CliRunner()
    out = tmp_path / "care"
    r = runner.invoke(app, ["synth", "--out", str(out), "--members", "30", "--weeks", "6"])
    assert r.exit_code == 0, r.output
    assert "observed action combinations" in r.output
    assert (out / "panel.parquet").is_file() and (out / "manifest.toml").is_file()
    r = runner.invoke(app, ["synth", "--out", str(out), "--members", "30"])
    assert r.exit_code == 2 and "refusing to overwrite" in r.output
    r = runner.invoke(app, ["synth", "--out", str(out), "--members", "0", "--force"])
    assert r.exit_code == 2 and "members" in r.output
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"gamma": 2}')
    r = runner.invoke(app, ["synth", "--out", str(out), "--sim-config", str(cfg), "--force"])
    assert r.exit_code == 2 and "gamma" in r.output
    r = runner.invoke(app, ["synth", "--out", str(out), "--members", "30", "--weeks", "6",
                            "--force", "--json"])
    assert r.exit_code == 0 and '"n_episodes": 30' in r.output


def test_rollout_with_history_policy():
    sim_h = CareManagementSim(CareConfig(history_dependence=True))
    p = sim_h.rollout(sim_h.reference_policy(window=7), n_members=80, n_weeks=12, random_state=0)
    ds = p.dataset()
    assert (ds.behavior_prob == 1.0).all()
    # replaying the window policy on the logged panel picks the logged actions
    probs = sim_h.reference_policy(window=7).action_probs(ds)
    assert (probs[np.arange(ds.n_steps), ds.actions] == 1.0).all()


@pytest.mark.slow
@pytest.mark.parametrize("config", [CareConfig(), CareConfig(history_dependence=True),
                                    CareConfig(churn=False, confounding=0.0)])
def test_behavior_value_matches_logged_data_large(config):
    s = CareManagementSim(config)
    for seed in range(3):
        logged = s.generate(n_members=10_000, random_state=100 + seed).dataset().returns()
        mc = s.true_value(s.behavior_policy(), n_members=10_000, random_state=200 + seed,
                          by_group=False)
        se = np.hypot(mc.se, logged.std(ddof=1) / np.sqrt(logged.size))
        assert abs(mc.value - logged.mean()) < 3.5 * se


def test_parts_folder_streams_like_one_panel(tmp_path):
    """The partitioned writer: bounded by one part, clustered, reproducible, streamable."""
    from equicare.data import iter_chunks, load_dataset, plan_shards, scan_panel
    from equicare.sim._care_parts import write_care_parts
    from equicare.sim.care import CareManagementSim

    sim = CareManagementSim()
    res = write_care_parts(sim, tmp_path / "a", n_members=250, n_weeks=12,
                           members_per_part=100, seed=4)
    assert res["n_parts"] == 3
    whole = load_dataset(res["panel"], res["manifest"], emit_warnings=False)
    assert whole.n_episodes == 250 and whole.n_steps == res["n_rows"]
    scan = scan_panel(res["panel"], res["manifest"])
    assert scan.clustered and scan.n_rows == res["n_rows"]
    chunks = list(iter_chunks(res["panel"], res["manifest"], chunk_rows=500))
    assert sum(c.dataset.n_steps for c in chunks) == whole.n_steps
    assert len(plan_shards(res["panel"], res["manifest"], 3)) == 3
    again = write_care_parts(sim, tmp_path / "b", n_members=250, n_weeks=12,
                             members_per_part=100, seed=4)
    other = load_dataset(again["panel"], again["manifest"], emit_warnings=False)
    np.testing.assert_array_equal(whole.rewards, other.rewards)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_care_parts(sim, tmp_path / "a", n_members=10, n_weeks=3, seed=4)
    # the parts have the simulator's distribution: logged return vs Monte-Carlo behaviour value
    big = write_care_parts(sim, tmp_path / "c", n_members=1500, n_weeks=12,
                           members_per_part=400, seed=9)
    ret = load_dataset(big["panel"], big["manifest"], emit_warnings=False).returns()
    truth = sim.true_value(sim.behavior_policy(), n_members=6000, n_weeks=12, random_state=2)
    se = np.hypot(ret.std(ddof=1) / np.sqrt(ret.size), truth.se)
    assert abs(ret.mean() - truth.value) < 3.5 * se


def test_terminal_column_is_disenrolment_not_the_window_end(panel, ds):
    """Contract 1: ``disenrolled`` ends an episode; the close of the calendar window censors it."""
    assert panel.manifest.terminal == "disenrolled"
    assert not ds.terminals[~ds.is_last].any()  # terminal only on an episode's last row
    f = panel.frame
    last = f.groupby("member_id", sort=True).tail(1)
    np.testing.assert_array_equal(ds.terminals[ds.is_last],
                                  last.sort_values("member_id")["disenrolled"].to_numpy() == 1)
    # censored = still enrolled in the last calendar week (51); everyone else disenrolled
    censored_week = last.sort_values("member_id")["week"].to_numpy()[ds.censored]
    assert (censored_week == 51).all()
    assert 0.6 < ds.censored.mean() < 0.9
    assert ds.summary()["episode_ends"] == {"terminal": int((~ds.censored).sum()),
                                            "censored": int(ds.censored.sum())}


def test_summary_has_no_extreme_episode_length(panel):
    el = panel.summary()["episode_length"]
    assert set(el) == {"mean", "p_bottom11", "p_top11"}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_panel_written_in_parts_gets_the_usual_permissions(tmp_path):
    # the panel/ folder came from mkdtemp (0o700): no other analyst could read the panel
    from equicare.sim._care_parts import write_care_parts

    old = os.umask(0o022)
    try:
        res = write_care_parts(CareManagementSim(), tmp_path, n_members=6, n_weeks=2,
                               members_per_part=3, seed=1)
    finally:
        os.umask(old)
    panel = Path(res["panel"])
    assert panel.stat().st_mode & 0o777 == 0o755
    assert {f.stat().st_mode & 0o777 for f in panel.iterdir()} == {0o644}
