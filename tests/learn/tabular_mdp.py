"""A small tabular MDP with an exactly solvable optimum, for learner tests.

States 0..S-1 (one categorical state column), factored actions kind x level (3 x 4 = 12 flat
actions), after every step the episode terminates with probability ``p_end`` (the terminal row
carries ``done = 1``). The value of a stationary policy is exact:

    V = (I - gamma (1 - p_end) P_pi)^{-1} R_pi,   value = mu @ V.

Groups "A" and "B" start from different state distributions (so that allocations differ by group)
and, optionally, respond differently to actions (``group_effect``): group B's reward is lowered by
``group_effect`` for every action whose level is not ``l1``, so that with the group hidden from
the policy the two groups want different actions in the same state (a real trade-off for a
group-robust learner). ``share_b`` is group B's share of the episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

SIZES = (3, 4)
KINDS = ("a", "b", "c")
LEVELS = ("l0", "l1", "l2", "l3")


def manifest(group_feature: bool = False) -> dict[str, Any]:
    cats = ["state", "grp"] if group_feature else ["state"]
    return {
        "dataset": {"episode": "ep", "time": "t", "categorical_states": cats,
                    "groups": ["grp"], "terminal": "done", "gamma": 0.95},
        "actions": {"kind": {"levels": list(KINDS)}, "level": {"levels": list(LEVELS)}},
        "reward": {"outcome": {"column": "r", "weight": 1.0}},
    }


@dataclass
class TabularMDP:
    n_states: int = 6
    p_end: float = 0.1
    gamma: float = 0.95
    seed: int = 0
    behaviour_bias: float = 0.3
    behaviour_noise: float = 1.0
    group_disparity: float = 0.0  # group B: log-odds of kind=c actions lowered by this much
    group_feature: bool = False  # the group label is also a (categorical) state column
    group_effect: float = 0.0  # group B: reward of actions of level != l1 lowered by this much
    share_b: float = 0.5  # share of group-B episodes
    P: np.ndarray = field(init=False)
    R: np.ndarray = field(init=False)
    mu: dict[str, np.ndarray] = field(init=False)
    behaviour: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        S, A = self.n_states, int(np.prod(SIZES))
        self.P = rng.dirichlet(np.full(S, 0.5), size=(S, A))
        self.R = rng.normal(0.0, 1.0, size=(S, A))
        unobserved = np.array([2, 7, 11])  # never logged: make them clearly bad
        self.R[:, unobserved] -= 3.0
        level_l1 = np.arange(A) % SIZES[1] == LEVELS.index("l1")
        self.R_by_group = {"A": self.R, "B": self.R - self.group_effect * ~level_l1[None, :]}
        mu_a = np.r_[np.full(S // 2, 2.0), np.full(S - S // 2, 0.5)]
        self.mu = {"A": mu_a / mu_a.sum(), "B": mu_a[::-1] / mu_a.sum()}
        # behaviour: mediocre, state-dependent, full support on the observed actions
        logits = rng.normal(0.0, self.behaviour_noise, size=(S, A)) - self.behaviour_bias * self.R
        logits[:, unobserved] = -np.inf
        b = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.behaviour = b / b.sum(axis=1, keepdims=True)
        self.support = np.flatnonzero(self.behaviour.sum(axis=0) > 0)
        # group-specific behaviour: group B gets actions of kind c less often
        b_b = self.behaviour * np.where(np.arange(A) // SIZES[1] == 2,
                                        np.exp(-self.group_disparity), 1.0)
        self.behaviour_by_group = {"A": self.behaviour,
                                   "B": b_b / b_b.sum(axis=1, keepdims=True)}

    @property
    def n_actions(self) -> int:
        return int(np.prod(SIZES))

    @property
    def mu_all(self) -> np.ndarray:
        return (1.0 - self.share_b) * self.mu["A"] + self.share_b * self.mu["B"]

    # ------------------------------------------------------------------ exact solutions
    def q_optimal(self, support: np.ndarray | None = None, tol: float = 1e-12) -> np.ndarray:
        """Q* by value iteration (optionally restricted to ``support`` actions)."""
        allowed = np.zeros(self.n_actions, dtype=bool)
        allowed[self.support if support is None else support] = True
        disc = self.gamma * (1.0 - self.p_end)
        v = np.zeros(self.n_states)
        for _ in range(10_000):
            q = self.R + disc * self.P @ v
            v_new = np.where(allowed, q, -np.inf).max(axis=1)
            if np.max(np.abs(v_new - v)) < tol:
                v = v_new
                break
            v = v_new
        return self.R + disc * self.P @ v

    def optimal_policy(self) -> np.ndarray:
        q = np.where(np.isin(np.arange(self.n_actions), self.support), self.q_optimal(), -np.inf)
        pi = np.zeros_like(self.R)
        pi[np.arange(self.n_states), q.argmax(axis=1)] = 1.0
        return pi

    def state_values(self, pi: np.ndarray, group: str = "A") -> np.ndarray:
        disc = self.gamma * (1.0 - self.p_end)
        P_pi = np.einsum("sa,sat->st", pi, self.P)
        R_pi = (pi * self.R_by_group[group]).sum(axis=1)
        return np.linalg.solve(np.eye(self.n_states) - disc * P_pi, R_pi)

    def value(self, pi: np.ndarray, group: str | None = None) -> float:
        """Exact value; over both groups (weighted by ``share_b``) when ``group`` is None."""
        if group is not None:
            return float(self.mu[group] @ self.state_values(pi, group))
        return float((1.0 - self.share_b) * self.value(pi, "A")
                     + self.share_b * self.value(pi, "B"))

    def occupancy(self, pi: np.ndarray, group: str) -> np.ndarray:
        """Expected (undiscounted) share of an episode's steps spent in each state."""
        P_pi = np.einsum("sa,sat->st", pi, self.P)
        d = np.linalg.solve(np.eye(self.n_states) - (1.0 - self.p_end) * P_pi.T, self.mu[group])
        return d / d.sum()

    def allocation(self, pi: np.ndarray, action_mask: np.ndarray, group: str) -> float:
        """Expected share of a group's steps on which an action of ``action_mask`` is taken."""
        return float(self.occupancy(pi, group) @ pi[:, action_mask].sum(axis=1))

    # ------------------------------------------------------------------ data
    def sample_frame(self, n_episodes: int, random_state: int, max_len: int = 60) -> pd.DataFrame:
        """Episodes under the behaviour policy as a panel table (vectorised over episodes)."""
        rng = np.random.default_rng(random_state)
        grp = np.where(rng.random(n_episodes) < 1.0 - self.share_b, "A", "B")
        mu = np.stack([self.mu[g] for g in grp])
        s = (rng.random(n_episodes)[:, None] > np.cumsum(mu, axis=1)).sum(axis=1)
        s = np.minimum(s, self.n_states - 1)
        alive = np.ones(n_episodes, dtype=bool)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("ep", "t", "state", "a", "r", "done")}
        cdf = {g: np.cumsum(b, axis=1) for g, b in self.behaviour_by_group.items()}
        for t in range(max_len):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            st = s[idx]
            cdf_b = np.where((grp[idx] == "A")[:, None], cdf["A"][st], cdf["B"][st])
            a = (rng.random(idx.size)[:, None] > cdf_b).sum(axis=1)
            a = np.minimum(a, self.n_actions - 1)
            r = np.where(grp[idx] == "A", self.R[st, a], self.R_by_group["B"][st, a])
            end = rng.random(idx.size) < self.p_end
            nxt_cdf = np.cumsum(self.P[st, a], axis=1)
            s_next = np.minimum((rng.random(idx.size)[:, None] > nxt_cdf).sum(axis=1),
                                self.n_states - 1)
            for k, v in (("ep", idx), ("t", np.full(idx.size, t)), ("state", st), ("a", a),
                         ("r", r), ("done", end.astype(np.int64))):
                cols[k].append(v)
            s[idx] = s_next
            alive[idx[end]] = False
        arr = {k: np.concatenate(v) for k, v in cols.items()}
        codes = np.stack([arr["a"] // SIZES[1], arr["a"] % SIZES[1]], axis=1)
        return pd.DataFrame({
            "ep": arr["ep"], "t": arr["t"], "state": arr["state"],
            "kind": np.asarray(KINDS, dtype=object)[codes[:, 0]],
            "level": np.asarray(LEVELS, dtype=object)[codes[:, 1]],
            "r": arr["r"], "done": arr["done"], "grp": grp[arr["ep"]],
        })

    def dataset(self, n_episodes: int, random_state: int, max_len: int = 60) -> Any:
        from equicare.data import from_frame

        return from_frame(self.sample_frame(n_episodes, random_state, max_len),
                          manifest(self.group_feature), emit_warnings=False)

    def probe(self, group: str = "A") -> Any:
        """One row per state (a dataset whose rows are the states 0..S-1), to read a policy.

        With ``group_feature`` the other group is present too (so that both group levels exist)
        and only the rows of ``group`` are returned by :meth:`policy_table`.
        """
        from equicare.data import from_frame

        groups = ["A", "B"] if self.group_feature else [group]
        n = self.n_states
        df = pd.DataFrame({"ep": np.arange(n * len(groups)), "t": 0,
                           "state": np.tile(np.arange(n), len(groups)), "kind": "a",
                           "level": "l0", "r": 0.0, "done": 1, "grp": np.repeat(groups, n)})
        return from_frame(df, manifest(self.group_feature), emit_warnings=False)

    def policy_table(self, learner: Any, group: str = "A") -> np.ndarray:
        """The learner's policy as an (n_states, n_actions) table (for ``group``'s members)."""
        p = np.asarray(learner.action_probs(self.probe(group)))
        if self.group_feature:
            k = ["A", "B"].index(group)
            p = p[k * self.n_states:(k + 1) * self.n_states]
        return p
