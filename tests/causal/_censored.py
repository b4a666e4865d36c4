"""A renewed panel with administrative censoring, and its exact per-step and per-stay truth.

The model is the one of ``tests/causal/test_terminal.py`` (:func:`_stays`): a discrete mediated
MDP whose stays end with probability ``p_end(s, a, m)`` and pay their outcome on the ending row.
The panel is built with pandas/numpy, not by the simulator: members enrol at different calendar
weeks, each stay that ends is followed the next week by a new stay (a new episode) whose first
state is drawn from ``init``, and each member's window closes at a member-specific calendar
week, so the last stay of most members is censored (its last row is not terminal).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from equicare.sim.mediation import ETA_KEYS, DiscreteMediationMDP
from tests.causal.test_terminal import _stays

#: The chain whose stays (and end rate) each process uses.
CHAIN = dict(zip(ETA_KEYS, ("pi_e", "pi_e", "pi_e", "G", "a0"), strict=True))


def weekly_reward() -> np.ndarray:
    """A reward paid on every row of a stay (days at home in a week, say), shape (S, A, M)."""
    base = _stays()[0]
    return np.random.default_rng(5).uniform(0.0, 0.5, size=base.reward_mean.shape)


def renewed_model(weekly: bool = False) -> DiscreteMediationMDP:
    """The renewed (reset) process of :func:`_stays`, with :func:`weekly_reward` added."""
    _, _, _, reset, _ = _stays()
    if not weekly:
        return reset
    return DiscreteMediationMDP(init=reset.init, behavior=reset.behavior,
                                mediator=reset.mediator,
                                reward_mean=reset.reward_mean + weekly_reward(),
                                transition=reset.transition, name="reset-weekly")


def censored_panel(n_members: int, seed: int, *, weeks: int = 80,
                   window: tuple[int, int] = (4, 40), censor: bool = True,
                   weekly: bool = False) -> pd.DataFrame:
    """Members enrolled for ``window`` weeks (uniform) starting at a uniform calendar week.

    Columns ``pid`` (one per stay), ``t`` (step within the stay), ``x`` (state), ``a``, ``m``,
    ``r`` (the outcome on the ending row, else 0), ``done`` (1 on a stay's terminal row),
    ``week`` (calendar week) and ``member`` (the member whose stay it is). A stay still going
    when its member's window closes is censored; with ``censor=False`` it is followed to its
    end instead (the same stays, none censored).
    ``weekly``: every row also pays :func:`weekly_reward` (an outcome that accrues over a stay).
    """
    base, p_end, outcome, _, _ = _stays()
    pay = weekly_reward() if weekly else np.zeros_like(outcome)
    rng = np.random.default_rng(seed)
    S = base.init.size

    def draw(p: np.ndarray) -> np.ndarray:
        return (p.cumsum(1) < rng.random(p.shape[0])[:, None]).sum(1)

    start = rng.integers(0, weeks - window[0], size=n_members)
    stop = np.minimum(start + rng.integers(window[0], window[1] + 1, size=n_members), weeks)
    s = draw(np.broadcast_to(base.init, (n_members, S)))
    stay = np.arange(n_members, dtype=np.int64)          # current stay id of each member
    t = np.zeros(n_members, dtype=np.int64)
    next_id = n_members
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("pid", "t", "x", "a", "m", "r",
                                                          "done", "week", "member")}
    going = np.ones(n_members, dtype=bool)   # a stay begun in the window, not yet ended
    for week in range(weeks if censor else weeks + 10_000):
        idx = np.flatnonzero((start <= week) & ((week < stop) | (going & (not censor))))
        if not idx.size:
            if week >= weeks:
                break
            continue
        st = s[idx]
        a = draw(base.behavior[st])
        m = draw(base.mediator[st, a])
        end = rng.random(idx.size) < p_end[st, a, m]
        for k, v in zip(cols, (stay[idx], t[idx], st, a, m,
                               pay[st, a, m] + np.where(end, outcome[st, a, m], 0.0),
                               end.astype(int),
                               np.full(idx.size, week), idx), strict=True):
            cols[k].append(v)
        s[idx] = draw(base.transition[st, a, m])
        t[idx] += 1
        ended = idx[end]                                   # renew: a new stay next week
        going[ended] = week + 1 < stop[ended]
        s[ended] = draw(np.broadcast_to(base.init, (ended.size, S)))
        t[ended] = 0
        stay[ended] = next_id + np.arange(ended.size)
        next_id += ended.size
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    return df.sort_values(["pid", "t"]).reset_index(drop=True)


def stay_truth(weekly: bool = False) -> dict[str, dict[str, float]]:
    """Exact etas, end rates of the three chains and per-stay values of the five processes."""
    _, p_end, _, _, tgt = _stays()
    reset = renewed_model(weekly)
    pie, pi0, pm = reset.policy_table(tgt), reset.policy_table(0), reset.mediator
    pe_m = np.einsum("sa,sam->sm", pie, pm)
    law = {"pi_e": np.einsum("sa,sam->sam", pie, pm),
           "G": np.einsum("sm,sa->sam", pe_m, pi0), "a0": np.einsum("sa,sam->sam", pi0, pm)}
    dist = reset.stationary_distributions(tgt, 0)
    rate = {k: float(dist[k] @ np.einsum("sam,sam->s", w, p_end)) for k, w in law.items()}
    eta = reset.exact_etas(tgt, 0)
    value = {k: eta[k] / rate[CHAIN[k]] for k in ETA_KEYS}
    return {"eta": dict(eta), "end_rate": rate, "value": value}
