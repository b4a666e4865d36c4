"""A small Garnet-style clinical MDP with exact values (test helper until ``equicare.sim.garnet``).

S transient states, A actions, ``b`` successor states per (state, action), and per-(state, action)
probabilities of absorbing into "good" (reward 1, terminal) or "bad" (reward 0, terminal), so
episode lengths vary from 1 to over 100 steps (``gamma`` 1 or below). A numeric severity is a
function of the state. Behaviour: ``softmax(Q*/tau_s)`` with ``tau_s`` log-uniform, so many states
are near-deterministic and many (state, action) pairs are never logged. Values of any tabular
policy come from one linear solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from equicare.data import TrajectoryDataset
from equicare.spaces import FactoredActionSpace


@dataclass
class Garnet:
    P: np.ndarray  # (S, A, S) transitions among transient states (rows sum to 1 - absorb)
    good: np.ndarray  # (S, A) probability of absorbing into "good" (reward 1)
    bad: np.ndarray  # (S, A)
    init: np.ndarray  # (S,)
    gamma: float
    behavior: np.ndarray  # (S, A)
    severity: np.ndarray  # (S,)
    max_len: int = 400

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]

    def q_values(self, pi: np.ndarray) -> np.ndarray:
        """Exact ``Q^pi`` of a tabular policy, shape (S, A)."""
        s, a = self.n_states, self.n_actions
        p_pi = np.einsum("xay,xa->xy", self.P, pi)  # (S, S): state-to-state under pi
        r_pi = (pi * self.good).sum(axis=1)
        v = np.linalg.solve(np.eye(s) - self.gamma * p_pi, r_pi)
        del a
        return self.good + self.gamma * self.P @ v

    def value(self, pi: np.ndarray, init: np.ndarray | None = None) -> float:
        q = self.q_values(pi)
        return float((self.init if init is None else init) @ (pi * q).sum(axis=1))

    def optimal_q(self) -> np.ndarray:
        q = np.zeros((self.n_states, self.n_actions))
        for _ in range(5000):
            q_new = self.good + self.gamma * self.P @ q.max(axis=1)
            if np.abs(q_new - q).max() < 1e-12:
                return q_new
            q = q_new
        return q

    def sample(self, n_episodes: int, seed: int = 0) -> TrajectoryDataset:
        """Episodes under the behaviour policy (vectorised over episodes)."""
        rng = np.random.default_rng(seed)
        s_n, a_n = self.n_states, self.n_actions
        cur = rng.choice(s_n, size=n_episodes, p=self.init)
        live = np.ones(n_episodes, bool)
        rows_s, rows_a, rows_r, rows_e, rows_t, rows_term = [], [], [], [], [], []
        cum_b = np.cumsum(self.behavior, axis=1)
        # next-state distribution: transient states, then good, then bad
        full = np.concatenate([self.P, self.good[..., None], self.bad[..., None]], axis=2)
        cum_p = np.cumsum(full, axis=2)
        ep = np.arange(n_episodes)
        for t in range(self.max_len):
            idx = np.flatnonzero(live)
            if idx.size == 0:
                break
            s = cur[idx]
            a = np.minimum((cum_b[s] < rng.random(idx.size)[:, None]).sum(axis=1), a_n - 1)
            nxt = np.minimum((cum_p[s, a] < rng.random(idx.size)[:, None]).sum(axis=1), s_n + 1)
            term = nxt >= s_n
            rows_s.append(s)
            rows_a.append(a)
            rows_r.append((nxt == s_n).astype(float))
            rows_e.append(ep[idx])
            rows_t.append(np.full(idx.size, t))
            rows_term.append(term)
            cur[idx] = np.where(term, 0, nxt)
            live[idx[term]] = False
        s = np.concatenate(rows_s)
        a = np.concatenate(rows_a)
        r = np.concatenate(rows_r)
        e = np.concatenate(rows_e)
        t = np.concatenate(rows_t)
        term = np.concatenate(rows_term)
        order = np.lexsort((t, e))
        s, a, r, e, t, term = s[order], a[order], r[order], e[order], t[order], term[order]
        lengths = np.bincount(e, minlength=n_episodes)
        offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
        first = s[offsets[:-1]]
        stratum = np.where(self.severity[first] > np.median(self.severity), "high", "low")
        return TrajectoryDataset(
            states=self.severity[s][:, None].astype(np.float32), actions=a.astype(np.int64),
            reward_components=r[:, None], terminals=term, episode_offsets=offsets,
            episode_ids=np.arange(n_episodes), times=t.astype(np.int64),
            action_space=FactoredActionSpace.single(a_n), gamma=self.gamma,
            groups={"stratum": stratum}, categorical=s[:, None].astype(np.int64),
            categorical_names=("state",), categorical_levels=(tuple(range(s_n)),),
            behavior_prob=self.behavior[s, a].astype(np.float64), state_names=("severity",))

    # ------------------------------------------------------------------ policies
    def policies(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Target-policy families as (S, A) tables."""
        rng = np.random.default_rng(seed)
        qs = self.optimal_q()
        opt = np.zeros_like(qs)
        opt[np.arange(self.n_states), qs.argmax(axis=1)] = 1.0
        soft = _softmax(_scaled_advantage(qs) / 0.3)
        tilt = self.behavior * np.exp(_scaled_advantage(qs) / 0.5)
        tilt /= tilt.sum(axis=1, keepdims=True)
        never = self.behavior < 1e-3
        off = 0.8 * self.behavior + 0.2 * np.where(never, 1.0, 0.0) / np.maximum(
            never.sum(axis=1, keepdims=True), 1)
        off /= off.sum(axis=1, keepdims=True)
        del rng
        return {"behavior": self.behavior, "optimal": opt, "soft_optimal": soft,
                "mixture": 0.5 * self.behavior + 0.5 * opt, "tilted": tilt, "unsupported": off}


def _scaled_advantage(q: np.ndarray) -> np.ndarray:
    """``(Q - max_a Q) / (max_a Q - min_a Q)`` per state, in [-1, 0]."""
    top = q.max(axis=1, keepdims=True)
    return (q - top) / np.maximum(top - q.min(axis=1, keepdims=True), 1e-12)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_garnet(n_states: int = 50, n_actions: int = 5, branching: int = 3, gamma: float = 1.0,
                hazard: tuple[float, float] = (0.01, 0.08), seed: int = 0,
                tau: tuple[float, float] = (0.03, 3.0)) -> Garnet:
    """Random sparse clinical-shaped MDP (see module docstring)."""
    rng = np.random.default_rng(seed)
    s_n, a_n = n_states, n_actions
    P = np.zeros((s_n, a_n, s_n))
    succ = np.argsort(rng.random((s_n, a_n, s_n)), axis=2)[:, :, :branching]
    w = rng.dirichlet(np.ones(branching), size=(s_n, a_n))
    np.put_along_axis(P, succ, w, axis=2)
    quality = rng.random(s_n)
    h = rng.uniform(*hazard, size=(s_n, a_n))
    p_good = np.clip(quality[:, None] * 0.6 + 0.4 * rng.random((s_n, a_n)), 0.0, 1.0)
    good, bad = h * p_good, h * (1 - p_good)
    P *= (1 - h)[..., None]
    g = Garnet(P=P, good=good, bad=bad, init=rng.dirichlet(np.ones(s_n)), gamma=gamma,
               behavior=np.full((s_n, a_n), 1.0 / a_n), severity=(1 - quality) * 10.0)
    qs = g.optimal_q()
    taus = np.exp(rng.uniform(np.log(tau[0]), np.log(tau[1]), size=s_n))
    beh = _softmax(_scaled_advantage(qs) / taus[:, None])
    beh = np.where(beh < 1e-4, 0.0, beh)  # never-logged pairs
    g.behavior = beh / beh.sum(axis=1, keepdims=True)
    return g
