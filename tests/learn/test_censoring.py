"""Censored versus terminal episode ends in the offline learners' temporal-difference targets.

A three-state chain with exact values (gamma = 0.9, two actions with the same effect, uniform
behaviour):

    start --(r = 0)--> gate --(r = 1)--> bonus --(r = 10)--> end (terminal)

Half of the episodes stop right after the gate row. The two datasets below hold exactly the
same rows and differ only in the ``terminal`` flag of those gate rows:

* **censored** (flag 0): the observation window closed; the process goes on to the bonus, so
  ``Q(gate) = 1 + 0.9 * 10 = 10``. A learner that reads the censored end as zero future value
  gets ``1 + 0.5 * 0.9 * 10 = 5.5`` (it collapses towards the immediate reward).
* **terminal** (flag 1): half of the members truly leave at the gate, so
  ``Q(gate) = 1 + 0.5 * 0.9 * 10 = 5.5``. A learner that ignores the flag (drops the row as if
  censored) gets 10.

Every learner with a critic must land within ``TOL`` of the right value in both datasets; BC,
which has no critic, must be bit-identical on the two. The terminal dataset is exactly what the
censored one becomes when every episode end is read as terminal (the old default), so a learner
whose TD target crosses a censored end as zero future value gives 5.5 at the gate of the
censored data and fails.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from equicare.data import from_frame
from equicare.learn import AWR, BC, CQL

torch.set_num_threads(1)

GAMMA = 0.9
STATES = ("start", "gate", "bonus")
Q_TRUE = {"censored": {"start": 0.9 * 10.0, "gate": 10.0, "bonus": 10.0},
          "terminal": {"start": 0.9 * 5.5, "gate": 5.5, "bonus": 10.0}}
#: the wrong answers are 4.5 away at the gate; this tolerance separates them with margin
TOL = 1.2


def _manifest() -> dict:
    return {"dataset": {"episode": "ep", "time": "t", "categorical_states": ["s"],
                        "terminal": "end", "gamma": GAMMA},
            "actions": {"a": {"levels": ["x", "y"]}},
            "reward": {"r": {"column": "r", "weight": 1.0}}}


def _frame(ends_at_gate: str, n_episodes: int = 600, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    short = rng.random(n_episodes) < 0.5  # the episode stops after the gate row
    lengths = np.where(short, 2, 3)
    ep = np.repeat(np.arange(n_episodes), lengths)
    t = np.arange(ep.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    r = np.array([0.0, 1.0, 10.0])[t]
    last = np.r_[ep[1:] != ep[:-1], True]
    end = last & ((t == 2) | (ends_at_gate == "terminal"))
    return pd.DataFrame({"ep": ep, "t": t, "s": np.asarray(STATES, dtype=object)[t],
                         "a": np.where(rng.random(ep.size) < 0.5, "x", "y"), "r": r,
                         "end": end.astype(np.int64)})


@pytest.fixture(scope="module")
def datasets():
    return {k: from_frame(_frame(k), _manifest(), emit_warnings=False)
            for k in ("censored", "terminal")}


@pytest.fixture(scope="module")
def probe():
    df = pd.DataFrame({"ep": np.arange(3), "t": 0, "s": list(STATES), "a": "x", "r": 0.0,
                       "end": 0})
    return from_frame(df, _manifest(), emit_warnings=False)


def test_the_two_datasets_differ_only_in_the_terminal_flag(datasets):
    c, t = datasets["censored"], datasets["terminal"]
    np.testing.assert_array_equal(c.rewards, t.rewards)
    np.testing.assert_array_equal(c.actions, t.actions)
    assert c.censored.mean() == pytest.approx(0.5, abs=0.06) and not t.censored.any()
    from equicare.learn._data import TrainData

    for k, ds in datasets.items():
        td = TrainData.build(ds, 1, np.arange(2), np.zeros(ds.n_steps, dtype=np.int64))
        gate_end = ds.is_last & (ds.step == 1)
        # censored gate ends leave every TD loss; terminal ones stay with zero future value
        assert td.td_ok.numpy()[gate_end].all() == (k == "terminal")
        assert (td.done.numpy()[gate_end] == 1).all() == (k == "terminal")


LEARNERS = {
    "cql": lambda: CQL(alpha=0.1, n_steps=600, target_update_interval=50, hidden=(32, 32),
                       valid_fraction=0.0, learning_rate=3e-3),
    "awr_q": lambda: AWR(critic="q", n_steps=600, target_update_interval=50, hidden=(32, 32),
                         valid_fraction=0.0, learning_rate=3e-3),
    "awr_v": lambda: AWR(critic="v", n_steps=600, target_update_interval=50, hidden=(32, 32),
                         valid_fraction=0.0, learning_rate=3e-3),
}


@pytest.mark.parametrize("ends", ["censored", "terminal"])
@pytest.mark.parametrize("name", list(LEARNERS))
def test_critic_values_respect_censored_and_terminal_ends(name, ends, datasets, probe):
    learner = LEARNERS[name]().fit(datasets[ends], progress=False)
    network = "policy" if name == "cql" else "critic"
    q = learner.scores(probe, network=network).mean(axis=1)  # both actions have the same value
    got = dict(zip(STATES, q.tolist(), strict=True))
    print(f"\n{name} {ends}: " + " ".join(f"{s}={v:.2f}" for s, v in got.items()))
    for s in STATES:
        assert abs(got[s] - Q_TRUE[ends][s]) < TOL, (s, got[s], Q_TRUE[ends][s])


def test_bc_ignores_episode_ends(datasets, probe):
    """BC has no critic: the terminal flags change nothing, bit for bit."""
    p = [BC(n_steps=60, hidden=(16,), valid_fraction=0.2).fit(ds, progress=False)
         .action_probs(probe) for ds in datasets.values()]
    np.testing.assert_array_equal(p[0], p[1])


@pytest.mark.parametrize("ends", ["censored", "terminal"])
@pytest.mark.parametrize("klass", ["spibb", "pvi"])
def test_tabular_values_respect_censored_and_terminal_ends(klass, ends, datasets, probe):
    """The tabular learners' model values (no penalty, no shrinkage: the MLE model; the
    terminal share at the gate is sampled, hence TOL)."""
    from equicare.learn import PVI, SPIBB

    learner = (SPIBB(n_wedge=0) if klass == "spibb"
               else PVI(beta=0.0, prior=0.0, min_count=1)).fit(datasets[ends])
    q = learner.q_[learner.policy_.cell_index(probe)].mean(axis=1)
    got = dict(zip(STATES, q.tolist(), strict=True))
    for s in STATES:
        assert abs(got[s] - Q_TRUE[ends][s]) < TOL, (s, got[s], Q_TRUE[ends][s])
