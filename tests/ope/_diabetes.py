"""A diabetes-program panel built with pandas/numpy (not ``equicare.sim``), with its group truth.

Members of race groups whose latent HbA1c differs are followed weekly (26 weeks at most). The
logged state is a clinic code (categorical), the last HbA1c lab carried forward (8.0 before the
first lab) with a 0/1 ``a1c_known`` flag, and engagement in [0, 1]. The latent HbA1c reverts to
the group's own mean and drives the (negative) reward and the disenrolment hazard, so a Q-model
fitted on every member pools groups whose futures differ at the same logged state. Practice's
propensities are logged; the group values of any policy of the logged state come from a large
Monte Carlo (:func:`truth`). The generator of the session-25 study (8,000 members, six groups)
shrunk: :func:`panel` takes the groups and sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from equicare.data import TrajectoryDataset, from_frame

#: Group: (share of members, mean latent HbA1c).
GROUPS = {"White": (0.50, 7.5), "Black": (0.22, 8.4), "Hispanic": (0.16, 8.2),
          "Asian": (0.07, 7.8), "AIAN": (0.035, 9.0), "NHPI": (0.015, 8.7)}
#: Three groups for the fast tests.
SMALL = {"low": (0.6, 7.5), "mid": (0.3, 8.4), "high": (0.1, 9.0)}
WEEKS = 26
GAMMA = 0.99
ACTIONS = ("none", "text", "phone", "visit")
_EFFECT = np.array([0.0, 0.01, 0.025, 0.05])
_COST = np.array([0.0, 0.0005, 0.002, 0.006])
N_CLINIC = 8

MANIFEST = {
    "dataset": {"episode": "member_id", "time": "week",
                "states": ["hba1c", "a1c_known", "engagement"], "categorical_states": ["clinic"],
                "groups": ["race"], "terminal": "disenrolled", "behavior_prob": "propensity",
                "gamma": GAMMA},
    "actions": {"outreach": {"levels": list(ACTIONS)}},
    "reward": {"column": "reward"},
}

Policy = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def practice(a1c: np.ndarray, known: np.ndarray, eng: np.ndarray, clinic: np.ndarray
             ) -> np.ndarray:
    """Current practice, shape ``(n, 4)``: more phone calls and visits the higher the last lab."""
    hi = np.where(known > 0, a1c - 8.0, 0.0)
    cl = (clinic % 3 - 1) * 0.3
    z = np.stack([np.full_like(eng, 1.2), 0.2 + 0.8 * eng + cl, -0.6 + 0.5 * hi,
                  -1.6 + 0.7 * hi - cl], axis=1)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def nudge(a1c: np.ndarray, known: np.ndarray, eng: np.ndarray, clinic: np.ndarray
          ) -> np.ndarray:
    """30% a rule (visit from 9, phone from 8 or unknown, else text) and 70% practice."""
    rule = np.where(known > 0, np.where(a1c >= 9, 3, np.where(a1c >= 8, 2, 1)), 2)
    return np.asarray(0.3 * np.eye(4)[rule] + 0.7 * practice(a1c, known, eng, clinic))


def _simulate(n: int, rng: np.random.Generator, groups: dict[str, tuple[float, float]],
              policy: Policy, group: int | None = None, log: bool = True
              ) -> pd.DataFrame | np.ndarray:
    names = list(groups)
    share = np.array([groups[g][0] for g in names])
    share = share / share.sum()
    mean = np.array([groups[g][1] for g in names])
    g = rng.choice(len(names), size=n, p=share) if group is None else np.full(n, group)
    clinic_p = np.ones((len(names), N_CLINIC))
    clinic_p[-1, N_CLINIC - 1] += 6.0  # the last group mostly at one clinic
    clinic_p /= clinic_p.sum(axis=1, keepdims=True)
    clinic = np.minimum((rng.random(n)[:, None] > np.cumsum(clinic_p[g], axis=1)).sum(axis=1),
                        N_CLINIC - 1)
    a1c = mean[g] + rng.normal(0.0, 1.0, n)
    known = (rng.random(n) < 0.7).astype(float)
    obs = np.where(known > 0, np.round(a1c + rng.normal(0.0, 0.15, n), 1), 8.0)
    eng = np.round(np.clip(rng.beta(2, 3, n), 0, 1), 3)
    alive = np.ones(n, dtype=bool)
    ret = np.zeros(n)
    rows = []
    for t in range(WEEKS):
        idx = np.flatnonzero(alive)
        if idx.size == 0:
            break
        p = policy(obs[idx], known[idx], eng[idx], clinic[idx])
        a = np.minimum((rng.random(idx.size)[:, None] > np.cumsum(p, axis=1)).sum(axis=1), 3)
        x = a1c[idx]
        event = rng.random(idx.size) < 1.0 / (1.0 + np.exp(5.0 - 0.6 * (x - 8.0)))
        r = -(0.003 * np.maximum(x - 6.5, 0.0) + 0.05 * event + _COST[a])
        ret[idx] += GAMMA ** t * r
        term = rng.random(idx.size) < (0.006 + 0.004 * np.maximum(x - 8.0, 0.0)
                                       + 0.01 * (eng[idx] < 0.15))
        if log:
            prop = practice(obs[idx], known[idx], eng[idx], clinic[idx])[np.arange(idx.size), a]
            rows.append(pd.DataFrame({
                "member_id": idx, "week": t, "clinic": clinic[idx], "hba1c": obs[idx],
                "a1c_known": known[idx], "engagement": eng[idx],
                "outreach": np.array(ACTIONS)[a], "propensity": prop, "reward": r,
                "disenrolled": term.astype(int), "race": np.array(names)[g[idx]]}))
        e = eng[idx]
        a1c[idx] = (x + 0.04 * (mean[g[idx]] - x) - _EFFECT[a] * (0.5 + e)
                    + rng.normal(0.0, 0.08, idx.size))
        eng[idx] = np.round(np.clip(0.85 * e + 0.06 + 0.08 * (a > 0)
                                    + rng.normal(0.0, 0.05, idx.size), 0, 1), 3)
        lab = rng.random(idx.size) < (0.06 + 0.25 * (a == 3))
        obs[idx[lab]] = np.round(a1c[idx[lab]] + rng.normal(0.0, 0.15, int(lab.sum())), 1)
        known[idx[lab]] = 1.0
        alive[idx[term]] = False
    if log:
        return pd.concat(rows, ignore_index=True).sort_values(["member_id", "week"],
                                                              ignore_index=True)
    return ret


def frame(n_members: int, seed: int, groups: dict[str, tuple[float, float]] = SMALL
          ) -> pd.DataFrame:
    """The panel under practice, one row per member-week."""
    out = _simulate(n_members, np.random.default_rng(seed), groups, practice)
    assert isinstance(out, pd.DataFrame)
    return out


def panel(n_members: int, seed: int, groups: dict[str, tuple[float, float]] = SMALL
          ) -> TrajectoryDataset:
    """:func:`frame` as a dataset (the manifest :data:`MANIFEST`)."""
    return from_frame(frame(n_members, seed, groups), MANIFEST, emit_warnings=False)


def probs(dataset: TrajectoryDataset, policy: Policy) -> np.ndarray:
    """``policy`` at every row of a panel, shape ``(n_steps, 4)``."""
    names = list(dataset.state_names)
    s = dataset.states.astype(np.float64)
    clinic = np.asarray(dataset.categorical_levels[0])[dataset.categorical[:, 0]]
    return policy(np.round(s[:, names.index("hba1c")], 1), s[:, names.index("a1c_known")],
                  np.round(s[:, names.index("engagement")], 3), clinic.astype(np.int64))


def truth(policy: Policy, groups: dict[str, tuple[float, float]] = SMALL,
          n_per_group: int = 40_000, seed: int = 12345) -> dict[str, tuple[float, float]]:
    """Each group's value (Monte Carlo mean of discounted returns) and its standard error."""
    out = {}
    for j, name in enumerate(groups):
        ret = _simulate(n_per_group, np.random.default_rng(seed + j), groups, policy, group=j,
                        log=False)
        assert isinstance(ret, np.ndarray)
        out[name] = (float(ret.mean()), float(ret.std(ddof=1) / np.sqrt(ret.size)))
    return out
