"""A small simulator whose optimal policy is a depth-2 tree (tests only).

States ``x1, x2, x3`` are uniform on [0, 1] and a site is ``a`` or ``b``, drawn afresh every step
(independent of the action), so the optimal policy is the myopic one. The reward is 1 when the
action equals

    if x1 > 0.6: 2  elif site == "b": 1  else: 0

and 0 otherwise (plus Gaussian noise), so that rule is the optimal policy for any discount.
Episodes have 3 to 7 steps; the behaviour policy is uniform (logged propensity 1/3).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from equicare.data import from_frame

MANIFEST = {
    "dataset": {"episode": "id", "time": "t", "states": ["x1", "x2", "x3"],
                "categorical_states": ["site"], "groups": ["group"],
                "behavior_prob": "propensity", "gamma": 0.9},
    "actions": {"action": {"levels": ["a0", "a1", "a2"]}},
    "reward": {"r": {"column": "r", "weight": 1.0}},
}


def optimal_action(x1, site_is_b):
    return np.where(x1 > 0.6, 2, np.where(site_is_b, 1, 0))


def generate(n_episodes: int, seed: int = 0, actions=None):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 8, size=n_episodes)
    n = int(lengths.sum())
    x = rng.random((n, 3))
    site = rng.integers(0, 2, size=n)
    a = rng.integers(0, 3, size=n) if actions is None else actions
    opt = optimal_action(x[:, 0], site == 1)
    frame = pd.DataFrame({
        "id": np.repeat(np.arange(n_episodes), lengths),
        "t": np.concatenate([np.arange(k) for k in lengths]),
        "x1": x[:, 0], "x2": x[:, 1], "x3": x[:, 2],
        "site": np.array(["a", "b"])[site],
        "group": np.repeat(np.array(["g1", "g2"])[rng.integers(0, 2, size=n_episodes)], lengths),
        "action": np.array(["a0", "a1", "a2"])[a],
        "propensity": np.full(n, 1 / 3),
        "r": (a == opt).astype(float) + 0.1 * rng.normal(size=n),
    })
    return from_frame(frame, MANIFEST, emit_warnings=False)


def optimal_of(ds):
    site_b = ds.categorical[:, 0] == list(ds.categorical_levels[0]).index("b")
    return optimal_action(ds.states[:, 0], site_b)


class NoisyExpert:
    """The optimal action with probability 0.8, except on ~8% of rows scattered by a hash of x2
    (no shallow tree can follow them), where it prefers the next action instead."""

    n_actions = 3
    window = 1

    def action_probs(self, ds):
        best = optimal_of(ds)
        noisy = (np.floor(ds.states[:, 1] * 1e4) % 13) == 0
        best = np.where(noisy, (best + 1) % 3, best)
        p = np.full((ds.n_steps, 3), 0.1)
        p[np.arange(ds.n_steps), best] = 0.8
        return p
