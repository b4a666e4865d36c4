"""Online RL throughput: hospital simulator steps/s and PPO training steps/s vs Stable-Baselines3.

Entries (``run()``):

* ``hospital_vector_env`` - environment steps/s of :class:`HospitalVectorEnv` (256 copies, random
  valid actions), beside the same simulator stepped by gymnasium's ``SyncVectorEnv`` over 256
  single :class:`HospitalEnv` (the usual way to vectorise a Python env);
* ``hospital_single_env`` - steps/s of one :class:`HospitalEnv`;
* ``ppo_hospital`` - PPO training steps/s (rollouts + updates) on the urban hospital with 16
  environments, beside Stable-Baselines3's PPO with the same rollout size, epochs, minibatch
  size, network (64-64 tanh, separate actor and critic) and one torch thread. Like-for-like:
  both learners step the same 16 single :class:`HospitalEnv` objects built by one factory, each
  through its library's standard Python-loop vectoriser (gymnasium ``SyncVectorEnv`` for
  equicare, ``DummyVecEnv`` for SB3);
* ``ppo_hospital_numpy_vector_env`` - equicare on the NumPy-vectorised
  :class:`HospitalVectorEnv` (16 hospitals in one array step) against the same SB3 run: labelled
  not like-for-like (the environment differs; SB3 cannot step a gymnasium VectorEnv);
* ``ppo_cartpole`` - the same comparison on CartPole-v1 (4 environments; both learners step
  gymnasium's single CartPole-v1 envs, ours through ``SyncVectorEnv``, SB3 through
  ``DummyVecEnv``): like-for-like.

Stable-Baselines3 is optional: without it the peer columns are None (reason printed).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _entry(value: float, unit: str, peer: str | None = None,
           peer_value: float | None = None, note: str | None = None) -> dict[str, Any]:
    ratio = value / peer_value if peer_value else None
    out = {"value": float(value), "unit": unit, "peer": peer if peer_value else None,
           "peer_value": None if peer_value is None else float(peer_value), "ratio": ratio}
    if note:
        out["note"] = note
    return out


def _vector_env_sps(n_envs: int = 256, hours: int = 3 * 168) -> float:
    from equicare.sim.hospital import HospitalVectorEnv

    env = HospitalVectorEnv("urban", num_envs=n_envs)
    _, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(hours):
        mask = info["action_mask"]
        # a random valid action per hospital (vectorised: argmax of masked uniforms)
        a = np.argmax(np.where(mask, rng.random(mask.shape), -1.0), axis=1)
        _, _, _, _, info = env.step(a)
    return n_envs * hours / (time.perf_counter() - t0)


def _sync_vector_env_sps(n_envs: int = 256, hours: int = 168) -> float:
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from equicare.sim.hospital import HospitalEnv

    env = SyncVectorEnv([lambda: HospitalEnv("urban")] * n_envs,
                        autoreset_mode=AutoresetMode.SAME_STEP)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(hours):
        env.step(rng.integers(1, 10, n_envs))
    return n_envs * hours / (time.perf_counter() - t0)


def _single_env_sps(hours: int = 2 * 168) -> float:
    from equicare.sim.hospital import HospitalEnv

    env = HospitalEnv("urban")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(hours):
        _, _, _, trunc, _ = env.step(int(rng.integers(1, 10)))
        if trunc:
            env.reset()
    return hours / (time.perf_counter() - t0)


def _ours_ppo_sps(env_name: str, n_envs: int, n_steps: int, steps: int) -> float:
    """equicare PPO: ``hospital`` and ``cartpole`` step single envs through SyncVectorEnv,
    ``hospital_numpy`` the NumPy-vectorised HospitalVectorEnv."""
    from equicare.online._ppo import PPO, PPOConfig
    from equicare.sim.hospital import HospitalEnv, HospitalVectorEnv

    cfg = PPOConfig(total_steps=steps, n_envs=n_envs, n_steps=n_steps, n_epochs=4,
                    n_minibatches=4, torch_threads=1)
    env: Any = {"hospital": lambda: HospitalEnv("urban"),
                "hospital_numpy": HospitalVectorEnv("urban", num_envs=n_envs),
                "cartpole": "CartPole-v1"}[env_name]
    t0 = time.perf_counter()
    ppo = PPO(cfg).fit(env, random_state=0)
    return ppo.n_env_steps_ / (time.perf_counter() - t0)


def _sb3_ppo_sps(env_name: str, n_envs: int, n_steps: int, steps: int) -> float:
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from equicare.sim.hospital import HospitalEnv

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        make = (lambda: HospitalEnv("urban")) if env_name == "hospital" \
            else (lambda: gym.make("CartPole-v1"))
        venv = DummyVecEnv([make] * n_envs)
        batch = n_envs * n_steps
        model = SB3PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=batch // 4, n_epochs=4,
                       learning_rate=2.5e-4, ent_coef=0.01, seed=0, device="cpu", verbose=0,
                       policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]},
                                      "activation_fn": torch.nn.Tanh})
        t0 = time.perf_counter()
        model.learn(total_timesteps=steps)
        return model.num_timesteps / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)


def run(quick: bool = False) -> dict[str, dict[str, Any]]:
    """Measure every entry (a few seconds each on an idle 2-core machine).

    ``quick``: a few hundred steps each, a smoke run (its numbers mean nothing).
    """
    out: dict[str, dict[str, Any]] = {}
    n_vec, hours = (16, 24) if quick else (256, 168)
    out["hospital_vector_env"] = _entry(
        _vector_env_sps(n_vec, 3 * hours), "env steps/s",
        f"gymnasium SyncVectorEnv(HospitalEnv x {n_vec})", _sync_vector_env_sps(n_vec, hours),
        "like-for-like: the same simulator and number of steps, NumPy-vectorised against "
        "gymnasium's loop over single envs")
    out["hospital_single_env"] = _entry(_single_env_sps(2 * hours), "env steps/s")
    try:
        import stable_baselines3  # noqa: F401

        have_sb3 = True
    except ImportError as exc:  # optional peer
        print(f"stable-baselines3 not importable ({exc}); PPO peer skipped")
        have_sb3 = False
    rounds_h, rounds_c = (2, 2) if quick else (20, 80)
    n_h, t_h = 16, (24 if quick else 168)
    peer_h = _sb3_ppo_sps("hospital", n_h, t_h, n_h * t_h * rounds_h) if have_sb3 else None
    sb3_h = f"stable-baselines3 PPO, DummyVecEnv(HospitalEnv x {n_h})"
    out["ppo_hospital"] = _entry(
        _ours_ppo_sps("hospital", n_h, t_h, n_h * t_h * rounds_h), "train steps/s", sb3_h, peer_h,
        f"like-for-like: both step the same {n_h} single HospitalEnv objects through a "
        "Python-loop vectoriser")
    out["ppo_hospital_numpy_vector_env"] = _entry(
        _ours_ppo_sps("hospital_numpy", n_h, t_h, n_h * t_h * rounds_h), "train steps/s", sb3_h,
        peer_h, f"not like-for-like: equicare steps the NumPy-vectorised HospitalVectorEnv "
        f"({n_h} hospitals per array step), SB3 {n_h} single HospitalEnv objects")
    n_c, t_c = 4, (32 if quick else 128)
    peer_c = _sb3_ppo_sps("cartpole", n_c, t_c, n_c * t_c * rounds_c) if have_sb3 else None
    out["ppo_cartpole"] = _entry(
        _ours_ppo_sps("cartpole", n_c, t_c, n_c * t_c * rounds_c), "train steps/s",
        f"stable-baselines3 PPO, DummyVecEnv(CartPole-v1 x {n_c})", peer_c,
        f"like-for-like: both step {n_c} single gymnasium CartPole-v1 envs through a "
        "Python-loop vectoriser")
    return out


if __name__ == "__main__":
    import sys

    for key, val in run(quick="--quick" in sys.argv).items():
        peer = f"  peer {val['peer']}: {val['peer_value']:.0f}  ratio {val['ratio']:.2f}x" \
            if val["peer_value"] is not None else ""
        print(f"{key:22s} {val['value']:10.0f} {val['unit']}{peer}")
