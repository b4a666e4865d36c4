"""Tests of PPO: configuration, determinism, GAE, truncation bootstrap, masks, and learning."""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from equicare.exceptions import NotFittedError
from equicare.online._ppo import PPO, PPOConfig, _gae, _sample, make_vector_env
from equicare.sim.hospital import HospitalVectorEnv


def _state(ppo: PPO) -> dict[str, Any]:
    return {k: v.clone() for k, v in ppo.policy_.state_dict().items()}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SMALL = {"total_steps": 2 * 4 * 64, "n_envs": 4, "n_steps": 64, "n_epochs": 2}


# ----------------------------------------------------------------------------- config

def test_config_round_trip_and_defaults() -> None:
    cfg = PPOConfig(hidden_sizes=(32, 16), target_kl=0.02)
    assert PPOConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.batch_size == cfg.n_envs * cfg.n_steps
    with pytest.raises(ValueError, match="Unknown PPOConfig keys: nope"):
        PPOConfig.from_dict({"nope": 1})
    with pytest.raises(TypeError):
        PPOConfig(0.1)  # type: ignore[misc]  # keyword-only


BAD = [
    ({"total_steps": 0}, ValueError,
     "The 'total_steps' parameter of PPOConfig must be a number in [1, inf). Got 0 instead."),
    ({"gamma": 1.5}, ValueError,
     "The 'gamma' parameter of PPOConfig must be a number in [0, 1]. Got 1.5 instead."),
    ({"clip_coef": 0.0}, ValueError,
     "The 'clip_coef' parameter of PPOConfig must be a number in (0, inf). Got 0.0 instead."),
    ({"activation": "gelu"}, ValueError,
     "The 'activation' parameter of PPOConfig must be one of 'tanh', 'relu'. Got 'gelu' "
     "instead."),
    ({"hidden_sizes": ()}, ValueError,
     "The 'hidden_sizes' parameter of PPOConfig must be a non-empty tuple of positive ints. "
     "Got () instead."),
    ({"n_envs": 2.0}, TypeError,
     "The 'n_envs' parameter of PPOConfig must be of type int. Got 2.0 instead."),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD)
def test_bad_config(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        PPOConfig(**kwargs)


# ----------------------------------------------------------------------------- pieces

def test_gae_matches_direct_sum() -> None:
    rng = np.random.default_rng(0)
    T, n, gamma, lam = 12, 3, 0.9, 0.8
    r = rng.normal(size=(T, n)).astype(np.float32)
    v = rng.normal(size=(T, n)).astype(np.float32)
    d = (rng.random((T, n)) < 0.2).astype(np.float32)
    nv = rng.normal(size=n).astype(np.float32)
    adv, ret = _gae(r, v, d, nv, gamma, lam)
    vals = np.vstack([v, nv[None]])
    for e in range(n):
        for t in range(T):
            total, k, w = 0.0, t, 1.0
            while True:  # A_t = sum_k (gamma lam)^k delta_{t+k}, stopping at an episode end
                nonterm = 1.0 - d[k, e]
                delta = r[k, e] + gamma * vals[k + 1, e] * nonterm - v[k, e]
                total += w * delta
                if nonterm == 0.0 or k == T - 1:
                    break
                w *= gamma * lam
                k += 1
            assert adv[t, e] == pytest.approx(total, abs=1e-5)
    np.testing.assert_allclose(ret, adv + v)


def test_sample_frequencies() -> None:
    p = np.tile([0.1, 0.0, 0.6, 0.3], (200_000, 1))
    a = _sample(p, np.random.default_rng(0))
    freq = np.bincount(a, minlength=4) / a.size
    np.testing.assert_allclose(freq, p[0], atol=4 * np.sqrt(0.25 / a.size))
    assert freq[1] == 0.0


class _ConstantEnv(gym.Env[np.ndarray, np.int64]):
    """Reward 1 every step, uninformative observation, truncated after 10 steps."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.zeros(1, dtype=np.float32), 1.0, False, self.t >= 10, {}


def test_truncation_is_bootstrapped() -> None:
    # The task never terminates, so the value of the (only) state is 1 / (1 - gamma) = 10; a
    # learner that treated truncation as termination would learn about 6.5 (the average of
    # the finite sums 1 + ... + 0.9^(k-1) over the 10 positions in an episode).
    cfg = PPOConfig(total_steps=6400, n_envs=16, n_steps=20, gamma=0.9, learning_rate=1e-2,
                    clip_vloss=False, anneal_lr=False)
    ppo = PPO(cfg).fit(_ConstantEnv, random_state=0)
    v = float(ppo.policy_.value(torch.zeros(1, 1)).detach())
    assert v == pytest.approx(10.0, rel=0.1)


# ----------------------------------------------------------------------------- API

def test_same_seed_same_weights_and_different_seed_differs() -> None:
    runs = [PPO(PPOConfig(**SMALL)).fit(HospitalVectorEnv("urban", num_envs=4), random_state=s)
            for s in (3, 3, 4)]
    assert _same(_state(runs[0]), _state(runs[1]))
    assert not _same(_state(runs[0]), _state(runs[2]))
    assert runs[0].history_ == [{**h, "sps": runs[0].history_[i]["sps"]}
                                for i, h in enumerate(runs[1].history_)]


def test_fit_restores_torch_threads() -> None:
    before = torch.get_num_threads()
    PPO(PPOConfig(**SMALL)).fit(HospitalVectorEnv("urban", num_envs=4), random_state=0)
    assert torch.get_num_threads() == before


def test_predict_probs_masks_save_load(tmp_path: Any) -> None:
    with pytest.raises(NotFittedError, match="This PPO instance is not fitted yet"):
        PPO().predict(np.zeros((1, 27)))
    env = HospitalVectorEnv("urban", num_envs=4)
    ppo = PPO(PPOConfig(**SMALL)).fit(env, random_state=0)
    obs, info = env.reset(seed=1)
    p = ppo.action_probs(obs)
    assert p.shape == (4, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    mask = np.zeros((4, 10), dtype=bool)
    mask[:, [0, 4]] = True
    pm = ppo.action_probs(obs, mask)
    assert np.all(pm[:, ~mask[0]] == 0.0)
    assert set(np.unique(ppo.predict(obs, action_mask=mask))) <= {0, 4}
    assert ppo.predict(obs[0]).shape == ()
    a = ppo.predict(obs, deterministic=False, random_state=0)
    assert a.shape == (4,) and a.dtype == np.int64
    folder = ppo.save(tmp_path / "ppo")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    back = PPO.load(folder)
    np.testing.assert_array_equal(back.action_probs(obs), p)
    assert back.config == ppo.config
    with pytest.raises(ValueError, match="Got"):
        ppo.action_probs(np.zeros((2, 3)))


def test_history_entries() -> None:
    ppo = PPO(PPOConfig(**SMALL)).fit(HospitalVectorEnv("urban", num_envs=4), random_state=0)
    assert len(ppo.history_) == 2
    h = ppo.history_[-1]
    for key in ("env_steps", "episodes", "mean_return", "policy_loss", "value_loss", "entropy",
                "approx_kl", "clip_frac", "sps"):
        assert key in h
    assert ppo.n_env_steps_ == 2 * 4 * 64
    assert ppo.history_[-1]["env_steps"] == ppo.n_env_steps_


def test_env_forms_and_next_step_autoreset_rejected() -> None:
    cfg = PPOConfig(total_steps=256, n_envs=2, n_steps=64, n_epochs=1)
    PPO(cfg).fit("CartPole-v1", random_state=0)
    ppo = PPO(cfg).fit(lambda: gym.make("CartPole-v1"), random_state=0)
    assert ppo.n_actions_ == 2 and ppo.obs_dim_ == 4
    nxt = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    with pytest.raises(ValueError, match="same-step autoreset"):
        make_vector_env(nxt, 2)
    with pytest.raises(TypeError, match="The 'env' parameter of PPO.fit"):
        make_vector_env(3, 2)


# ----------------------------------------------------------------------------- learning

def _eval_cartpole(ppo: PPO, n: int = 20) -> float:
    env = gym.make("CartPole-v1")
    total = []
    for ep in range(n):
        obs, _ = env.reset(seed=10_000 + ep)
        ret, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(int(ppo.predict(obs)))
            ret += float(r)
            done = term or trunc
        total.append(ret)
    return float(np.mean(total))


@pytest.mark.slow
def test_ppo_solves_cartpole() -> None:
    # fixed budget: 100k environment steps, 4 environments, CPU, one thread, seed 0 (the run
    # is deterministic; seeds 1 and 2 scored 500.0 and 481.0 with this budget, see docs)
    ppo = PPO(PPOConfig(total_steps=100_000, n_envs=4, n_steps=128)).fit(
        "CartPole-v1", random_state=0)
    score = _eval_cartpole(ppo)
    print(f"\nCartPole-v1 mean return over 20 episodes after 100k steps: {score:.1f}")
    assert score >= 475.0


def test_ppo_improves_hospital_reward_over_random_and_fcfs() -> None:
    from equicare.pipeline._online import OnlineExperimentConfig

    cfg = OnlineExperimentConfig(steps=60_000, eval_episodes=256)
    ppo = PPO(cfg.learner_config()).fit(HospitalVectorEnv("urban", num_envs=16), random_state=0)
    # paired evaluation: the same 256 episodes (common random numbers) for every policy
    returns = {}
    rng = np.random.default_rng(0)
    for name in ("ppo", "fcfs", "random"):
        env = HospitalVectorEnv("urban", num_envs=256)
        obs, info = env.reset(seed=99)
        while True:
            if name == "ppo":
                a = ppo.predict(obs, action_mask=info["action_mask"], deterministic=False,
                                random_state=rng)
            elif name == "fcfs":
                a = env.fcfs_actions()
            else:
                a = rng.integers(0, 10, 256)
            obs, _, _, trunc, info = env.step(a)
            if trunc.any():
                returns[name] = info["episode_metrics"]["return"]
                break
    for base in ("fcfs", "random"):
        d = returns["ppo"] - returns[base]
        se = d.std(ddof=1) / np.sqrt(d.size)
        print(f"\nPPO - {base}: {d.mean():.1f} (se {se:.1f}) per episode")
        assert d.mean() > 3 * se
