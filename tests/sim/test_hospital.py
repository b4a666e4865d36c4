"""Tests of the hospital patient-flow simulator against its own parameters (ground truth)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy import stats

from equicare.sim.hospital import (
    GROUP_METRICS,
    SCENARIOS,
    HospitalConfig,
    HospitalEnv,
    HospitalVectorEnv,
    arrival_rates,
    hospital_scenario,
    offered_load,
    sample_length_of_stay,
)

# A hospital so large that nobody waits: every arrival is admitted in its first hour, so the
# admission ledger is an unbiased sample of arrivals.
HUGE = {"beds": 400, "staff": 2000, "equipment": 400, "max_queue": 64}


def _run(env: HospitalVectorEnv, steps: int, policy: str = "random", seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    infos = []
    for _ in range(steps):
        if policy == "fcfs":
            a = env.fcfs_actions()
        else:
            a = rng.integers(0, env.config.n_actions, env.num_envs)
        infos.append(env.step(a)[4])
    return infos


# ----------------------------------------------------------------------------- gymnasium API

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_check_env_passes(scenario: str) -> None:
    # no render modes and no registry spec: the render part of check_env does not apply
    check_env(HospitalEnv(scenario), skip_render_check=True)


def test_vector_env_matches_single_env() -> None:
    single = HospitalEnv("rural")
    vec = HospitalVectorEnv("rural", num_envs=1)
    o1, i1 = single.reset(seed=11)
    o2, i2 = vec.reset(seed=11)
    np.testing.assert_array_equal(o1, o2[0])
    np.testing.assert_array_equal(i1["action_mask"], i2["action_mask"][0])
    rng = np.random.default_rng(0)
    for t in range(single.config.horizon):
        a = int(rng.integers(single.action_space.n))
        o1, r1, te1, tr1, i1 = single.step(a)
        o2, r2, te2, tr2, i2 = vec.step(np.array([a]))
        assert r1 == pytest.approx(float(r2[0]), abs=0, rel=0)
        assert (te1, tr1) == (bool(te2[0]), bool(tr2[0]))
        if tr1:
            np.testing.assert_array_equal(o1, i2["final_obs"][0])
            for k in GROUP_METRICS:
                np.testing.assert_array_equal(i1["episode_metrics"][k],
                                              i2["episode_metrics"][k][0])
            assert t == single.config.horizon - 1
        else:
            np.testing.assert_array_equal(o1, o2[0])
    assert tr1


def test_spaces_and_truncation() -> None:
    env = HospitalVectorEnv("urban", num_envs=3)
    obs, info = env.reset(seed=0)
    assert obs.shape == (3, 2 * 9 + 9) and obs.dtype == np.float32
    assert env.single_action_space.n == 10
    assert info["action_mask"].shape == (3, 10)
    for t in range(env.config.horizon):
        obs, r, term, trunc, info = env.step(np.ones(3, dtype=np.int64))
        assert not term.any()
        assert trunc.all() == (t == env.config.horizon - 1)
        assert env.single_observation_space.contains(obs[0])
    assert set(GROUP_METRICS) <= set(info["episode_metrics"])
    assert info["episode_metrics"]["mean_wait"].shape == (3, 3)
    assert info["final_obs"].shape == (3, 27)
    # same-step autoreset: the returned observation starts the next episode (hour 0)
    assert obs[0, -1] == 0.0


def test_same_seed_same_episode_and_common_random_numbers() -> None:
    a = HospitalVectorEnv("urban", num_envs=4)
    b = HospitalVectorEnv("urban", num_envs=4)
    a.reset(seed=3)
    b.reset(seed=3)
    ia = _run(a, 168, "random", seed=1)
    ib = _run(b, 168, "fcfs")
    # the patients (arrival counts and their groups) do not depend on the policy ...
    for x, y in zip(ia, ib, strict=True):
        np.testing.assert_array_equal(x["n_arrived"], y["n_arrived"])
    np.testing.assert_array_equal(ia[-1]["episode_metrics"]["arrived"],
                                  ib[-1]["episode_metrics"]["arrived"])
    # ... while the waits do
    assert not np.array_equal(ia[-1]["episode_metrics"]["mean_wait"],
                              ib[-1]["episode_metrics"]["mean_wait"])
    c = HospitalVectorEnv("urban", num_envs=4)
    c.reset(seed=3)
    ic = _run(c, 168, "random", seed=1)
    np.testing.assert_array_equal(ia[-1]["episode_metrics"]["mean_wait"],
                                  ic[-1]["episode_metrics"]["mean_wait"])


# ----------------------------------------------------------------------------- distributions

def test_arrival_rates_match_parameters() -> None:
    cfg = hospital_scenario("urban", **HUGE)
    rates = arrival_rates(cfg)
    hour = np.arange(cfg.horizon) % 24
    assert np.all(rates[(hour >= 8) & (hour < 18)] == 2.0)
    assert np.all(rates[(hour >= 22) | (hour < 6)] == 1.0)
    assert np.all(rates[((hour >= 6) & (hour < 8)) | ((hour >= 18) & (hour < 22))] == 1.5)
    env = HospitalVectorEnv(cfg, num_envs=200)
    env.reset(seed=0)
    counts = np.stack([i["n_arrived"] for i in _run(env, cfg.horizon)])  # (horizon, envs)
    for rate in (1.0, 1.5, 2.0):
        x = counts[rates == rate].ravel()
        # Poisson: mean = variance = rate; 5 standard errors
        assert abs(x.mean() - rate) < 5 * math.sqrt(rate / x.size)
        assert abs(x.var() - rate) < 5 * rate * math.sqrt(2.0 / x.size) + 0.02


def test_surge_multiplies_rates() -> None:
    cfg = hospital_scenario("surge")
    base = arrival_rates(hospital_scenario("urban"))
    r = arrival_rates(cfg)
    t = np.arange(cfg.horizon)
    inside = (t >= 48) & (t < 96)
    np.testing.assert_allclose(r[inside], 2.0 * base[inside])
    np.testing.assert_allclose(r[~inside], base[~inside])


def _huge_ledger(cfg: HospitalConfig, n_envs: int = 100, seed: int = 0) -> dict:
    env = HospitalVectorEnv(cfg, num_envs=n_envs)
    env.reset(seed=seed)
    _run(env, cfg.horizon - 1, "fcfs")  # stop one hour early: the ledger is still readable
    return env.ledger()


@pytest.mark.parametrize("scenario", ["urban", "rural"])
def test_group_and_severity_mix(scenario: str) -> None:
    cfg = hospital_scenario(scenario, **HUGE)
    led = _huge_ledger(cfg)
    assert np.all(led["wait"] < 1.0)  # nobody waits beyond the hour of arrival
    for key, probs in (("group", cfg.group_probs), ("severity", cfg.severity_probs)):
        obs = np.bincount(led[key], minlength=len(probs))
        chi2 = stats.chisquare(obs, np.asarray(probs) * obs.sum())
        assert chi2.pvalue > 1e-4, (key, obs / obs.sum(), probs)
        np.testing.assert_allclose(obs / obs.sum(), probs, atol=4 * math.sqrt(0.25 / obs.sum()))


def test_length_of_stay_distribution() -> None:
    cfg = hospital_scenario("urban", **HUGE)
    led = _huge_ledger(cfg, n_envs=150)
    for s in range(cfg.n_severities):
        for g in range(cfg.n_groups):
            los = led["los"][(led["severity"] == s) & (led["group"] == g)]
            mean = cfg.los_mean[s] * cfg.group_los_factor[g]
            sigma = math.sqrt(math.log1p(cfg.los_cv**2))
            mu = math.log(mean) - sigma**2 / 2
            ks = stats.kstest(np.log(los), "norm", args=(mu, sigma))
            assert ks.pvalue > 1e-4, (s, g, ks)
            # mean within 5 standard errors of the parameter
            assert abs(los.mean() - mean) < 5 * cfg.los_cv * mean / math.sqrt(los.size)


def test_sample_length_of_stay_function() -> None:
    cfg = hospital_scenario("urban", los_cv=0.5)
    sev = np.full(200_000, 2)
    grp = np.full(200_000, 2)
    x = sample_length_of_stay(cfg, sev, grp, random_state=0)
    assert x.mean() == pytest.approx(36.0 * 1.5, rel=0.01)
    assert x.std() / x.mean() == pytest.approx(0.5, rel=0.02)


def test_offered_load() -> None:
    ol = offered_load(hospital_scenario("urban"))
    assert ol["arrival_rate"] == pytest.approx((10 * 2.0 + 8 * 1.0 + 6 * 1.5) / 24)
    assert 0.8 < ol["rho_beds"] < 1.0
    assert offered_load(hospital_scenario("surge"))["rho_beds"] > 1.0


# ----------------------------------------------------------------------------- mechanics

@pytest.mark.parametrize("scenario", ["urban", "surge", "rural"])
def test_resources_never_over_committed(scenario: str) -> None:
    env = HospitalVectorEnv(scenario, num_envs=32)
    env.reset(seed=5)
    cfg = env.config
    rng = np.random.default_rng(0)
    for _ in range(cfg.horizon + 24):  # crosses an autoreset
        env.step(rng.integers(0, cfg.n_actions, env.num_envs))
        u = env.resource_usage()
        assert u["beds"].max() <= cfg.beds
        assert u["staff"].max() <= cfg.staff
        assert u["equipment"].max() <= cfg.equipment
        assert u["beds"].min() >= 0
        np.testing.assert_array_equal(u["beds"], u["beds_recount"])
        np.testing.assert_array_equal(u["staff"], u["staff_recount"])
        np.testing.assert_array_equal(u["equipment"], u["equipment_recount"])


def test_hold_admits_nobody_and_queue_choice_serves_its_group() -> None:
    env = HospitalVectorEnv("rural", num_envs=32)
    env.reset(seed=1)
    _run(env, 30, "fcfs")
    hold = env.step(np.zeros(32, dtype=np.int64))[4]
    assert np.all(hold["n_admitted"] == 0) and np.all(hold["served_group"] == -1)
    # choose, in every hospital, the first valid queue: the first patient served is its group
    for _ in range(50):
        mask = env.action_masks()
        valid = mask[:, 1:]
        a = np.where(valid.any(axis=1), 1 + np.argmax(valid, axis=1), 0)
        info = env.step(a)[4]
        has = a > 0
        np.testing.assert_array_equal(info["served_group"][has], (a[has] - 1) // 3)
        assert np.all(info["n_admitted"][has] >= 1)


def test_group_rewards_decompose_the_reward() -> None:
    # with unit waiting weights and no occupancy bonus the reward is the sum of the groups'
    # costs; group rewards are per capita (divided by the arrival share), so weighting them by
    # the shares gives it back
    cfg = hospital_scenario("surge", occupancy_weight=0.0, wait_weight=(1.0, 1.0, 1.0))
    env = HospitalVectorEnv(cfg, num_envs=16)
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    for _ in range(cfg.horizon):
        _, r, _, _, info = env.step(rng.integers(0, cfg.n_actions, 16))
        np.testing.assert_allclose(info["group_reward"] @ np.asarray(cfg.group_probs), r,
                                   rtol=1e-9, atol=1e-9)


def test_episode_metrics_match_direct_computation() -> None:
    env = HospitalVectorEnv("urban", num_envs=2)
    env.reset(seed=4)
    _run(env, 100, "fcfs")
    core = env._core
    m = core.episode_metrics()
    led = env.ledger()
    n0 = int(core.l_n[0])
    waits = np.concatenate([core.l_wait[0, :n0], (core.t - core.q_arr[0])[core.q_active[0]]])
    groups = np.concatenate([core.l_group[0, :n0], core.q_group[0][core.q_active[0]]])
    for g in range(3):
        w = waits[groups == g]
        assert m["mean_wait"][0, g] == pytest.approx(w.mean())
        assert m["p90_wait"][0, g] == pytest.approx(np.percentile(w, 90))
    assert led["wait"].size == core.l_n.sum()
    np.testing.assert_allclose(m["treatment_rate"], m["admitted"] / m["arrived"])


def test_observation_counts_queues() -> None:
    env = HospitalVectorEnv("surge", num_envs=8)
    env.reset(seed=2)
    for _ in range(60):
        obs = env.step(np.zeros(8, dtype=np.int64))[0]  # hold: queues only grow
    core = env._core
    counts = np.stack([np.bincount(core.q_qid[i][core.q_active[i]], minlength=9)
                       for i in range(8)])
    np.testing.assert_allclose(obs[:, :9], counts / 10.0, rtol=1e-6)
    assert np.all(obs[:, 9:18] >= 0)


# ----------------------------------------------------------------------------- configs

def test_presets_and_round_trip() -> None:
    for name in SCENARIOS:
        cfg = hospital_scenario(name)
        assert cfg.name == name
        assert HospitalConfig.from_dict(cfg.to_dict()) == cfg
    assert hospital_scenario("rural").beds < hospital_scenario("urban").beds
    assert hospital_scenario("paediatric").group_names == ("infant", "child", "adolescent")


BAD = [
    ({"beds": 0}, "The 'beds' parameter of HospitalConfig must be a number in [1, inf). "
                  "Got 0 instead."),
    ({"group_probs": (0.5, 0.5, 0.5)}, "The 'group_probs' parameter of HospitalConfig must be "
                                       "3 probabilities summing to 1. Got (0.5, 0.5, 0.5) "
                                       "instead."),
    ({"los_mean": (1.0, -2.0, 3.0)}, "The 'los_mean' parameter of HospitalConfig must be 3 "
                                     "positive numbers. Got (1.0, -2.0, 3.0) instead."),
    ({"initial_occupancy": 1.5}, "The 'initial_occupancy' parameter of HospitalConfig must be "
                                 "a number in [0, 1]. Got 1.5 instead."),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD)
def test_bad_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        hospital_scenario("urban", **kwargs)


def test_bad_scenario_and_action() -> None:
    with pytest.raises(ValueError, match=re.escape("The 'name' parameter of hospital_scenario")):
        hospital_scenario("moon")
    env = HospitalVectorEnv("urban", num_envs=2)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, dtype=np.int64))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape("The 'actions' parameter")):
        env.step(np.array([0, 10]))
