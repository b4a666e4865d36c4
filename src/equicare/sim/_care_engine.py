"""Vectorised simulation loop of the care-management model (loops over weeks only).

One engine serves :meth:`CareManagementSim.generate` (behaviour policy, fast hierarchical sampler),
:meth:`~CareManagementSim.rollout` and :meth:`~CareManagementSim.true_value` (any Policy object or
callable). Noise is drawn for every member every week in a fixed layout, so two policies simulated
with the same seed share the cohort and the outcome noise (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import Manifest, TrajectoryDataset
from equicare.exceptions import InvalidParameterError, PolicyError
from equicare.sim._care_config import CARE_GROUP_LEVELS, CARE_STATE_NAMES
from equicare.sim._care_model import N_ACTIONS, CareModel, Cohort, Latent, draw_noise
from equicare.utils import PARAM_MESSAGE

__all__ = ["SimOutput", "simulate", "BehaviorActor", "PolicyActor", "PROB_TOL"]

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
PROB_TOL = 1e-6
_GROUP_ATTRS = tuple(CARE_GROUP_LEVELS)


@dataclass
class WeekContext:
    """What an actor sees in one calendar week (arrays over the active members)."""

    week: int
    idx: I64                   # (n_active,) member positions
    states: NDArray[np.float32]  # (n_active, 5)
    u: F64                     # (n_active, N_UNIFORMS)
    engine: _Engine


@dataclass
class SimOutput:
    """Result of a simulation (row arrays are member-major, week-minor)."""

    cohort: Cohort
    n_weeks: int
    returns: F64               # (n_members, 3) discounted component returns
    n_steps: I64               # (n_members,) weeks observed
    mask_sum: F64 | None       # (n_members,) summed P(action in mask) over the member's weeks
    rows: dict[str, NDArray[Any]] | None  # recorded columns, (n_rows, ...) each


class BehaviorActor:
    """The behaviour policy sampled hierarchically (contact, modality, combination)."""

    window = 1

    def __init__(self, model: CareModel, mask: NDArray[np.bool_] | None = None) -> None:
        self.model = model
        self.mask = mask

    def act(self, ctx: WeekContext) -> tuple[I64, F64, F64 | None]:
        race = ctx.engine.cohort.race[ctx.idx]
        a, p = self.model.behavior_sample(ctx.states, race, ctx.u)
        mp = (None if self.mask is None
              else self.model.behavior_mask_prob(ctx.states, race, self.mask))
        return a, p, mp


class PolicyActor:
    """Any Policy object (``action_probs(dataset)``) or callable ``fn(states, groups) -> probs``."""

    def __init__(self, policy: Any, mask: NDArray[np.bool_] | None = None) -> None:
        self.policy = policy
        self.is_policy = hasattr(policy, "action_probs")
        if not self.is_policy and not callable(policy):
            raise InvalidParameterError(PARAM_MESSAGE.format(
                name="policy", owner="simulate",
                expected="a Policy (with action_probs(dataset)) or a callable "
                         "fn(states, groups) -> probs", got=type(policy).__name__))
        window = int(getattr(policy, "window", 1) or 1) if self.is_policy else 1
        if window < 1:
            raise InvalidParameterError(f"policy.window must be a positive integer, got {window}.")
        self.window = window
        self.mask = mask

    def probs(self, ctx: WeekContext) -> F64:
        eng = ctx.engine
        n = ctx.idx.shape[0]
        if self.is_policy:
            ds = eng.window_dataset(ctx, self.window)
            raw = self.policy.action_probs(ds)
            p = np.asarray(raw, dtype=np.float64)
            if p.ndim == 2 and p.shape[0] == ds.n_steps and ds.n_steps != n:
                p = p[ds.episode_offsets[1:] - 1]      # probabilities at each episode's last row
            name = type(self.policy).__name__
        else:
            groups = {a: eng.labels[a][ctx.idx] for a in _GROUP_ATTRS}
            p = np.asarray(self.policy(ctx.states, groups), dtype=np.float64)
            name = getattr(self.policy, "__name__", type(self.policy).__name__)
        return _check_probs(p, n, name)

    def act(self, ctx: WeekContext) -> tuple[I64, F64, F64 | None]:
        p = self.probs(ctx)
        cdf = np.cumsum(p, axis=1)
        a = (cdf < (ctx.u[:, 0] * cdf[:, -1])[:, None]).sum(axis=1)
        a = np.minimum(a, N_ACTIONS - 1).astype(np.int64)
        prob = p[np.arange(a.shape[0]), a]
        mp = None if self.mask is None else p @ self.mask.astype(np.float64)
        return a, prob, mp


def _check_probs(p: F64, n: int, name: str) -> F64:
    if p.shape != (n, N_ACTIONS):
        raise PolicyError(f"{name}: action probabilities must have shape ({n}, {N_ACTIONS}), "
                          f"got {p.shape}.")
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise PolicyError(f"{name}: {rows.size} rows have negative or non-finite probabilities "
                          f"(first rows: {rows[:5].tolist()}).")
    s = p.sum(axis=1)
    off = np.abs(s - 1.0) > PROB_TOL
    if off.any():
        rows = np.flatnonzero(off)
        raise PolicyError(f"{name}: probabilities of {rows.size} rows do not sum to 1 within "
                          f"{PROB_TOL:g} (first rows: {rows[:5].tolist()}).")
    return p


class _Engine:
    """Holds the member arrays while a simulation runs."""

    def __init__(self, model: CareModel, cohort: Cohort, manifest: Manifest, window: int) -> None:
        self.model = model
        self.cohort = cohort
        self.manifest = manifest
        n = cohort.n
        self.labels = {a: np.asarray(CARE_GROUP_LEVELS[a], dtype=object)[c] for a, c in
                       (("race_ethnicity", cohort.race), ("sex", cohort.sex),
                        ("age_band", cohort.age))}
        self.need = cohort.high_need.astype(np.float64)
        self.window = window
        self.space = manifest.action_space
        self.reward_names = tuple(r.name for r in manifest.reward)
        self.reward_weights = np.array([r.weight for r in manifest.reward])
        if window > 1:
            k = window
            self.h_states = np.zeros((n, k, len(CARE_STATE_NAMES)), dtype=np.float32)
            self.h_actions = np.zeros((n, k), dtype=np.int64)
            self.h_rewards = np.zeros((n, k, 3))
            self.h_engaged = np.zeros((n, k))
            self.h_times = np.zeros((n, k), dtype=np.int64)

    # ------------------------------------------------------------------ history
    def push(self, idx: I64, week: int, states: NDArray[np.float32]) -> None:
        """Shift the history of the active members and open the current row."""
        if self.window <= 1:
            return
        for buf in (self.h_states, self.h_actions, self.h_rewards, self.h_engaged, self.h_times):
            buf[idx, :-1] = buf[idx, 1:]
        self.h_states[idx, -1] = states
        self.h_actions[idx, -1] = 0
        self.h_rewards[idx, -1] = 0.0
        self.h_engaged[idx, -1] = 0.0
        self.h_times[idx, -1] = week

    def close(self, idx: I64, actions: I64, rewards: F64, engaged: F64) -> None:
        """Fill in the current row's action and outcomes."""
        if self.window <= 1:
            return
        self.h_actions[idx, -1] = actions
        self.h_rewards[idx, -1] = rewards
        self.h_engaged[idx, -1] = engaged

    def window_dataset(self, ctx: WeekContext, k: int) -> TrajectoryDataset:
        """Build a dataset of the last ``min(k, t + 1)`` rows of each active member.

        The current (last) row of each episode holds the current state; its action, rewards and
        mediator are placeholders (0) because they are not known yet.
        """
        idx = ctx.idx
        n = idx.shape[0]
        if k <= 1:
            lengths = np.ones(n, dtype=np.int64)
            states = ctx.states.copy()        # the policy must not alias the simulator's arrays
            actions = np.zeros(n, dtype=np.int64)
            rewards = np.zeros((n, 3))
            engaged = np.zeros((n, 1))
            times = np.full(n, ctx.week, dtype=np.int64)
        else:
            steps = ctx.week - self.cohort.entry[idx]
            lengths = np.minimum(k, steps + 1)
            sel = np.arange(k)[None, :] >= (k - lengths)[:, None]
            states = self.h_states[idx][sel]
            actions = self.h_actions[idx][sel]
            rewards = self.h_rewards[idx][sel]
            engaged = self.h_engaged[idx][sel][:, None]
            times = self.h_times[idx][sel]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return TrajectoryDataset(
            states=np.ascontiguousarray(states, dtype=np.float32),
            actions=actions,
            reward_components=rewards,
            terminals=np.zeros(offsets[-1], dtype=bool),
            episode_offsets=offsets,
            episode_ids=idx.astype(np.int64),
            times=times,
            action_space=self.space,
            state_names=CARE_STATE_NAMES,
            reward_names=self.reward_names,
            reward_weights=self.reward_weights,
            gamma=self.manifest.gamma,
            groups={a: self.labels[a][idx] for a in _GROUP_ATTRS},
            behavior_prob=None,
            need=self.need[idx],
            mediators=engaged.astype(np.float64),
            mediator_names=tuple(self.manifest.mediators),
            manifest=self.manifest,
        )


def simulate(model: CareModel, cohort: Cohort, n_weeks: int, rng: np.random.Generator,
             actor: BehaviorActor | PolicyActor, manifest: Manifest, *, record: bool,
             gamma: float) -> SimOutput:
    """Run the cohort through ``n_weeks`` calendar weeks under ``actor``.

    Parameters
    ----------
    model : CareModel
    cohort : Cohort
        Members (entry / last week, groups, baseline states).
    n_weeks : int
    rng : numpy.random.Generator
        Source of the weekly noise (drawn for every member every week).
    actor : BehaviorActor or PolicyActor
    manifest : Manifest
    record : bool
        Keep every member-week row (for a panel) or only per-member sums (for values).
    gamma : float
        Discount of the returns, applied by step within each episode.

    Returns
    -------
    SimOutput
    """
    n = cohort.n
    eng = _Engine(model, cohort, manifest, actor.window)
    states = cohort.states0.copy()
    latent = Latent.empty(n)
    returns = np.zeros((n, 3))
    n_steps = np.zeros(n, dtype=np.int64)
    mask_sum = np.zeros(n) if actor.mask is not None else None
    rec: dict[str, NDArray[Any]] = {}
    if record:
        rec = {
            "states": np.zeros((n_weeks, n, 5), dtype=np.float32),
            "action": np.zeros((n_weeks, n), dtype=np.int16),
            "propensity": np.zeros((n_weeks, n)),
            "engaged": np.zeros((n_weeks, n), dtype=np.int8),
            "rewards": np.zeros((n_weeks, n, 3)),
        }
    active_all = np.zeros((n_weeks, n), dtype=bool)
    for w in range(n_weeks):
        u_all, z_all = draw_noise(rng, n)
        active = (cohort.entry <= w) & (w <= cohort.last)
        active_all[w] = active
        idx = np.flatnonzero(active)
        if idx.size == 0:
            continue
        s = states[idx]
        eng.push(idx, w, s)
        ctx = WeekContext(week=w, idx=idx, states=s, u=u_all[idx], engine=eng)
        actions, prob, mprob = actor.act(ctx)
        res = model.step(s, cohort.race[idx], cohort.sex[idx], actions, latent.take(idx),
                         u_all[idx], z_all[idx])
        r = res.reward_components(model.config.event_penalty)
        step = w - cohort.entry[idx]
        returns[idx] += r * (gamma ** step.astype(np.float64))[:, None]
        n_steps[idx] += 1
        if mask_sum is not None and mprob is not None:
            mask_sum[idx] += mprob
        eng.close(idx, actions, r, res.engaged.astype(np.float64))
        if record:
            rec["states"][w, idx] = s
            rec["action"][w, idx] = actions
            rec["propensity"][w, idx] = prob
            rec["engaged"][w, idx] = res.engaged
            rec["rewards"][w, idx] = r
        states[idx] = res.states
        latent.put(idx, res.latent)
    rows = None
    if record:
        sel = active_all.T                                  # (n, n_weeks): member-major order
        member, week = np.nonzero(sel)
        rows = {
            "member": member.astype(np.int64),
            "week": week.astype(np.int64),
            "states": rec["states"].transpose(1, 0, 2)[sel],
            "action": rec["action"].T[sel].astype(np.int64),
            "propensity": rec["propensity"].T[sel],
            "engaged": rec["engaged"].T[sel],
            "rewards": rec["rewards"].transpose(1, 0, 2)[sel],
        }
    return SimOutput(cohort=cohort, n_weeks=n_weeks, returns=returns, n_steps=n_steps,
                     mask_sum=mask_sum, rows=rows)
