"""PPO and group-robust PPO on CartPole-v1 with groups defined by the cart's position.

The group of a decision is the half of the track the cart is on when it is taken (left: 0,
right: 1), given to GRPO through ``group_fn``. Run from the repository root:

    .venv/bin/python examples/online_cartpole.py

It trains both learners with the same seed and budget, then reports the mean return over 20
evaluation episodes and the share of time steps spent on each half of the track.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from equicare.online._grpo import GRPO, GRPOConfig
from equicare.online._ppo import PPO, PPOConfig


def by_position(obs: np.ndarray, actions: np.ndarray, info: dict) -> np.ndarray:
    """Group of each decision: 0 when the cart is left of the centre, 1 otherwise."""
    return (obs[:, 0] >= 0.0).astype(np.int64)


def evaluate(model: PPO, n: int = 20) -> tuple[float, float]:
    """Mean return over ``n`` greedy episodes and the fraction of steps right of centre."""
    env = gym.make("CartPole-v1")
    returns, right, steps = [], 0, 0
    for ep in range(n):
        obs, _ = env.reset(seed=10_000 + ep)
        total, done = 0.0, False
        while not done:
            right += int(obs[0] >= 0.0)
            steps += 1
            obs, r, term, trunc, _ = env.step(int(model.predict(obs)))
            total += float(r)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns)), right / steps


def main(total_steps: int = 100_000) -> None:
    """Train PPO and GRPO with the same seed and budget and print their evaluation."""
    common = {"total_steps": total_steps, "n_envs": 4, "n_steps": 128}
    ppo = PPO(PPOConfig(**common)).fit("CartPole-v1", random_state=0)
    grpo = GRPO(GRPOConfig(**common, lam=0.5, n_groups=2)).fit(
        "CartPole-v1", random_state=0, group_fn=by_position)
    for name, model in (("ppo", ppo), ("grpo lambda=0.5", grpo)):
        ret, right = evaluate(model)
        print(f"{name:16s} mean return {ret:6.1f}   steps right of centre {right:.0%}   "
              f"train {model.train_seconds_:.1f}s")
    last = grpo.history_[-1]
    print("GRPO last update: group losses", [round(x, 4) for x in last["group_loss"]],
          "samples per group", last["group_count"])


if __name__ == "__main__":
    main()
