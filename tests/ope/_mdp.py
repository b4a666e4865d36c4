"""A tiny tabular finite-horizon MDP with exact values (dynamic programming / enumeration).

Episodes last ``horizon`` steps unless they end earlier: after each step the episode ends with
probability ``end_prob[s, a]`` (variable lengths). Rewards are ``R[s, a]`` plus optional Gaussian
noise. Policies are tables of shape (n_states, n_actions) indexed by the categorical state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from equicare.data import TrajectoryDataset
from equicare.spaces import FactoredActionSpace


@dataclass
class TabularMDP:
    P: np.ndarray  # (S, A, S)
    R: np.ndarray  # (S, A)
    init: np.ndarray  # (S,)
    horizon: int
    gamma: float = 1.0
    end_prob: np.ndarray | None = None  # (S, A)
    noise_sd: float = 0.0

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]

    def _end(self) -> np.ndarray:
        return np.zeros_like(self.R) if self.end_prob is None else self.end_prob

    # ------------------------------------------------------------------ exact values
    def q_tables(self, pi: np.ndarray) -> np.ndarray:
        """Exact Q_t(s, a) of policy ``pi``, shape (horizon, S, A)."""
        q = np.zeros((self.horizon, self.n_states, self.n_actions))
        v_next = np.zeros(self.n_states)
        cont = 1.0 - self._end()
        for t in range(self.horizon - 1, -1, -1):
            q[t] = self.R + self.gamma * cont * (self.P @ v_next)
            v_next = (pi * q[t]).sum(axis=1)
        return q

    def value(self, pi: np.ndarray) -> float:
        """Exact value E[sum_t gamma^t r_t] from the initial distribution."""
        q0 = self.q_tables(pi)[0]
        return float(self.init @ (pi * q0).sum(axis=1))

    # ------------------------------------------------------------------ data
    def _dataset(self, s, a, r, alive, beh, groups=None) -> TrajectoryDataset:
        n_ep, h = s.shape
        lengths = alive.sum(axis=1)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        m = alive.ravel()
        ss, aa, rr = s.ravel()[m], a.ravel()[m], r.ravel()[m]
        tt = np.tile(np.arange(h), n_ep)[m]
        term = np.zeros(ss.size, bool)
        term[offsets[1:] - 1] = True
        n_s = self.n_states
        return TrajectoryDataset(
            states=np.eye(n_s, dtype=np.float32)[ss], actions=aa.astype(np.int64),
            reward_components=rr[:, None].astype(np.float64), terminals=term,
            episode_offsets=offsets, episode_ids=np.arange(n_ep), times=tt.astype(np.int64),
            action_space=FactoredActionSpace.single(self.n_actions), gamma=self.gamma,
            groups=groups or {}, categorical=ss[:, None].astype(np.int64),
            categorical_names=("s",), categorical_levels=(tuple(range(n_s)),),
            behavior_prob=beh[ss, aa].astype(np.float64),
            state_names=tuple(f"s{i}" for i in range(n_s)))

    def sample(self, beh: np.ndarray, n_episodes: int, seed: int = 0,
               n_groups: int = 0) -> TrajectoryDataset:
        """Simulate ``n_episodes`` under behaviour table ``beh`` (vectorised over episodes)."""
        rng = np.random.default_rng(seed)
        h = self.horizon
        s = np.zeros((n_episodes, h), np.int64)
        a = np.zeros((n_episodes, h), np.int64)
        r = np.zeros((n_episodes, h))
        alive = np.zeros((n_episodes, h), bool)
        cur = rng.choice(self.n_states, size=n_episodes, p=self.init)
        live = np.ones(n_episodes, bool)
        end = self._end()
        for t in range(h):
            alive[:, t] = live
            s[:, t] = cur
            u = rng.random(n_episodes)[:, None]
            act = (np.cumsum(beh[cur], axis=1) < u).sum(axis=1)
            act = np.minimum(act, self.n_actions - 1)
            a[:, t] = act
            r[:, t] = self.R[cur, act] + self.noise_sd * rng.standard_normal(n_episodes)
            live = live & (rng.random(n_episodes) >= end[cur, act])
            cp = np.cumsum(self.P[cur, act], axis=1)
            cur = np.minimum((cp < rng.random(n_episodes)[:, None]).sum(axis=1),
                             self.n_states - 1)
        groups = ({"grp": np.array([f"g{i % n_groups}" for i in range(n_episodes)])}
                  if n_groups else None)
        return self._dataset(s, a, r, alive, beh, groups)

    def enumerate(self, beh: np.ndarray) -> tuple[TrajectoryDataset, np.ndarray]:
        """Every possible trajectory (noise-free rewards) and its probability under ``beh``."""
        h, n_s, n_a = self.horizon, self.n_states, self.n_actions
        end = self._end()
        trajs: list[tuple[list[int], list[int], float]] = []

        def rec(states: list[int], actions: list[int], p: float) -> None:
            s = states[-1]
            for a in range(n_a):
                pa = p * beh[s, a]
                if pa == 0:
                    continue
                acts = actions + [a]
                t = len(acts)
                if t == h:
                    trajs.append((states, acts, pa))
                    continue
                if end[s, a] > 0:
                    trajs.append((states, acts, pa * end[s, a]))
                for s2 in range(n_s):
                    p2 = pa * (1 - end[s, a]) * self.P[s, a, s2]
                    if p2 > 0:
                        rec(states + [s2], acts, p2)

        for s0 in range(n_s):
            if self.init[s0] > 0:
                rec([s0], [], float(self.init[s0]))
        n_ep = len(trajs)
        s = np.zeros((n_ep, h), np.int64)
        a = np.zeros((n_ep, h), np.int64)
        alive = np.zeros((n_ep, h), bool)
        for i, (st, ac, _) in enumerate(trajs):
            k = len(ac)
            s[i, :k], a[i, :k], alive[i, :k] = st[:k], ac, True
        r = self.R[s, a] * alive
        probs = np.array([p for *_, p in trajs])
        return self._dataset(s, a, r, alive, beh), probs


def small_mdp(end: bool = True, gamma: float = 0.9, horizon: int = 3) -> TabularMDP:
    """Two states, two actions; action 1 moves toward the rewarding state 1."""
    P = np.array([[[0.8, 0.2], [0.3, 0.7]],
                  [[0.6, 0.4], [0.1, 0.9]]])
    R = np.array([[0.0, -0.2], [1.0, 0.7]])
    end_prob = np.array([[0.1, 0.3], [0.2, 0.0]]) if end else None
    return TabularMDP(P=P, R=R, init=np.array([0.7, 0.3]), horizon=horizon, gamma=gamma,
                      end_prob=end_prob)


BEHAVIOR = np.array([[0.6, 0.4], [0.5, 0.5]])
TARGET = np.array([[0.2, 0.8], [0.7, 0.3]])


def all_tables(n_states: int, n_actions: int) -> list[np.ndarray]:
    """Deterministic policies as one-hot tables (for small exhaustive checks)."""
    out = []
    for choice in itertools.product(range(n_actions), repeat=n_states):
        t = np.zeros((n_states, n_actions))
        t[np.arange(n_states), choice] = 1.0
        out.append(t)
    return out


def clustered_sample(mdp: TabularMDP, beh: np.ndarray, n_people: int, per_person: int,
                     frailty_sd: float, seed: int = 0) -> TrajectoryDataset:
    """People with ``per_person`` episodes each, every reward shifted by the person's frailty.

    The frailty ``u_p ~ N(0, frailty_sd^2)`` has mean 0, so every policy's value is still
    :meth:`TabularMDP.value`; a person's episodes are correlated through it. ``members``
    names each episode's person (``"p0"``, ``"p1"``, ...); episodes are not in person order.
    The group ``grp`` (``g0``/``g1``) is the person's, independent of everything else, so each
    group's value is the policy's value too.
    """
    import dataclasses

    rng = np.random.default_rng(seed + 10_000)
    n_ep = n_people * per_person
    ds = mdp.sample(beh, n_ep, seed=seed)
    person = rng.permutation(np.repeat(np.arange(n_people), per_person))
    frailty = frailty_sd * rng.standard_normal(n_people)
    shift = np.repeat(frailty[person], ds.episode_lengths)
    return dataclasses.replace(
        ds, reward_components=ds.reward_components + shift[:, None],
        members=np.array([f"p{i}" for i in person]), _cache={},
        groups={"grp": np.array([f"g{i % 2}" for i in person])})
