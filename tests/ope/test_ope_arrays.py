"""``ope_arrays``: the array-level API, with people who re-enrol (``members=``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.ope import ope_arrays


def _people_arrays(n_people: int, seed: int) -> dict:
    """People with 2-4 episodes of 3 steps; a person effect u ~ N(0, 1) in every reward.

    Behaviour picks action 1 with probability 0.5, the target with 0.65; action 1 adds 0.5.
    """
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 5, size=n_people)
    person = rng.permutation(np.repeat(np.arange(n_people), k))  # not in person order
    t, n_ep = 3, person.size
    rows = np.repeat(person, t)
    actions = (rng.random(rows.size) < 0.5).astype(np.int64)
    rewards = rng.normal(size=n_people)[rows] + 0.5 * actions + rng.normal(0, 0.5, rows.size)
    return {"rewards": rewards, "episode_offsets": np.arange(n_ep + 1) * t, "gamma": 1.0,
            "actions": actions, "target_probs": np.tile([0.35, 0.65], (rows.size, 1)),
            "behavior_prob": np.full(rows.size, 0.5), "members": person}


def test_ope_arrays_with_members_resamples_people():
    """IS is a mean of per-episode terms x_e: with members its bootstrap standard error is the
    cluster one, sqrt(sum_p (X_p - n_p IS)^2) / n (within 8% at 2,000 replicates, the
    Monte-Carlo error about 2%), without members the episodes' sd / sqrt(n), here much less."""
    arr = _people_arrays(400, seed=2)
    members = arr.pop("members")
    people = ope_arrays(**arr, members=members, estimators=["is", "wis"], bootstrap=2000,
                        random_state=1)
    episodes = ope_arrays(**arr, estimators=["is", "wis"], bootstrap=2000, random_state=1)
    off = arr["episode_offsets"]
    w = np.add.reduceat(np.log(arr["target_probs"][np.arange(arr["actions"].size),
                                                   arr["actions"]] / arr["behavior_prob"]),
                        off[:-1])
    x = np.exp(w) * np.add.reduceat(arr["rewards"], off[:-1])  # gamma 1
    n, value = x.size, x.mean()
    dev = np.bincount(members, weights=x - value)
    cluster_se = float(np.sqrt(np.sum(dev * dev)) / n)
    assert people.estimates["is"].value == pytest.approx(value)
    assert people.estimates["is"].se == pytest.approx(cluster_se, rel=0.08)
    assert episodes.estimates["is"].se == pytest.approx(x.std(ddof=1) / np.sqrt(n), rel=0.08)
    assert episodes.estimates["is"].se < 0.75 * people.estimates["is"].se
    assert people.estimates["is"].n_episodes == n  # still counted in episodes
    for k in ("is", "wis"):
        lo, hi = people.estimates[k].ci
        assert hi - lo > 1.3 * (episodes.estimates[k].ci[1] - episodes.estimates[k].ci[0])
    jack = ope_arrays(**arr, members=members, estimators=["is"], bootstrap=0)
    # leave one person out: (G - 1) / G * sum_p (IS_(p) - mean)^2 (no bootstrap)
    g = dev.size
    m = np.bincount(members).astype(float)
    loo = (x.sum() - np.bincount(members, weights=x)) / (n - m)
    jack_se = np.sqrt((g - 1) / g * np.sum((loo - loo.mean()) ** 2))
    assert jack.estimates["is"].se == pytest.approx(jack_se, rel=1e-9)


def test_ope_arrays_members_of_the_wrong_length():
    arr = _people_arrays(20, seed=0)
    members = arr.pop("members")
    msg = ("The 'members' parameter of ope_arrays must be an array of one person per episode, "
           f"shape ({members.size},). Got (3,) instead.")
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        ope_arrays(**arr, members=members[:3], estimators=["is"], bootstrap=10)
