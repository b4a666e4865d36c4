from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

MANIFEST = {
    "dataset": {
        "episode": "member_id",
        "time": "week",
        "states": ["risk", "engagement"],
        "categorical_states": ["region"],
        "groups": ["race", "sex"],
        "behavior_prob": "propensity",
        "need": "high_need",
        "gamma": 0.9,
    },
    "actions": {
        "modality": {"levels": ["none", "phone", "home_visit"]},
        "urgency": {"levels": ["routine", "urgent"]},
    },
    "reward": {
        "primary": {"column": "r_primary", "weight": 1.0},
        "engagement": {"column": "r_engagement", "weight": 0.5},
    },
}


def make_frame(
    n_members: int = 30, seed: int = 0, min_len: int = 2, max_len: int = 6
) -> pd.DataFrame:
    """A small valid panel with variable episode lengths, rows shuffled."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=n_members)
    ids = np.repeat([f"m{i:03d}" for i in range(n_members)], lengths)
    start = np.repeat(rng.integers(0, 5, size=n_members), lengths)
    week = start + np.concatenate([np.arange(k) for k in lengths])
    n = ids.size
    races = np.array(["a", "b", "c"])[rng.integers(0, 3, size=n_members)]
    sexes = np.array(["f", "m"])[rng.integers(0, 2, size=n_members)]
    need = rng.integers(0, 2, size=n_members)
    df = pd.DataFrame(
        {
            "member_id": ids,
            "week": week,
            "risk": rng.normal(size=n),
            "engagement": rng.random(n),
            "region": np.array(["north", "south"])[rng.integers(0, 2, size=n)],
            "race": np.repeat(races, lengths),
            "sex": np.repeat(sexes, lengths),
            "high_need": np.repeat(need, lengths),
            "modality": np.array(["none", "phone", "home_visit"])[rng.integers(0, 3, size=n)],
            "urgency": np.array(["routine", "urgent"])[rng.integers(0, 2, size=n)],
            "r_primary": (rng.random(n) < 0.2) * -1.0,
            "r_engagement": rng.random(n),
            "propensity": rng.uniform(0.05, 1.0, size=n),
            "note": rng.integers(0, 100, size=n),  # not in the manifest: carried along
        }
    )
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def make_reenrolled_frame(n_members: int = 80, seed: int = 3) -> tuple[pd.DataFrame, dict]:
    """:func:`make_frame` whose episodes belong to people (column ``person``), and its manifest.

    Race ``d`` holds 15 episodes of 5 people (3 enrolments each): a cell of at least 11
    episodes but fewer than 11 members. Every other episode is its own person.
    """
    import copy

    frame = make_frame(n_members=n_members, seed=seed)
    episodes = np.sort(frame["member_id"].unique())
    person = pd.Series(episodes, index=episodes)
    person[episodes[:15]] = [f"p{i // 3}" for i in range(15)]
    frame["person"] = frame["member_id"].map(person)
    frame.loc[frame["member_id"].isin(episodes[:15]), "race"] = "d"
    manifest = copy.deepcopy(MANIFEST)
    manifest["dataset"]["member"] = "person"
    return frame, manifest


@pytest.fixture
def manifest_dict() -> dict:
    import copy

    return copy.deepcopy(MANIFEST)


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()


# ---- the tabular MDP of the learner tests (tests/learn, tests/cli)
@pytest.fixture(scope="session")
def mdp():
    """Near-uniform behaviour over 9 of 12 actions; the 3 unobserved actions are bad."""
    from tests.learn.tabular_mdp import TabularMDP

    return TabularMDP(behaviour_bias=0.0, behaviour_noise=0.5)


@pytest.fixture(scope="session")
def tab_data(mdp):
    return mdp.dataset(1000, random_state=1)


@pytest.fixture(scope="session")
def small_data(mdp):
    return mdp.dataset(120, random_state=2)


# ---- Ray (optional extra): the Ray tests of tests/pipeline and tests/ope
@pytest.fixture(scope="session")
def ray() -> Iterator[Any]:
    """Ray, imported under a test-only environment; any session is shut down afterwards."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is an optional extra: pip install 'equicare[ray]'")
    with pytest.MonkeyPatch.context() as mp:
        # set before Ray is imported: its config reads the auth mode once
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_AUTH_MODE", "token")
        mp.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        mp.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
        mp.delenv("RAY_ADDRESS", raising=False)
        import ray as ray_module

        yield ray_module
        ray_module.shutdown()


@pytest.fixture
def raw_group_values(monkeypatch):
    """Publish every subgroup value whatever its weights' effective sample size.

    For tests of the engines' arithmetic (streamed equals in memory, any chunking): their small
    panels have group ESS below 11, whose weighted values are otherwise NaN with a reason
    (:func:`equicare.ope._ess.low_ess_groups`, tested on its own).
    """
    import equicare.ope._ess as ess

    monkeypatch.setattr(ess, "low_ess_groups", lambda *a, **k: {})


@pytest.fixture
def low_ess_warned() -> Iterator[None]:
    """The test's evaluations warn that an overall IS-type value rests on a low ESS, and must.

    For tests of the engines' arithmetic (streamed equals in memory) on small panels of
    :func:`make_frame`, whose logged propensities are unrelated to the uniform actions: with
    150 episodes their overall trajectory ESS is about 2 (300: per-decision ESS about 10), so
    ``evaluate`` and ``evaluate_stream`` give a :class:`~equicare.exceptions.LowESSWarning`
    (their trajectory weights also average about 0.04, far below the 1 they average in
    expectation: the same warning says so, :func:`equicare.ope._ess.weight_mean_off`);
    the test fails if none is given. Their small groups' heavy-tail warning
    (:func:`equicare.ope._ess.heavy_tail_groups`) is not this fixture's concern.
    """
    import warnings

    from equicare.exceptions import LowESSWarning

    with pytest.warns(LowESSWarning, match="episodes' worth of importance weight|"
                                           "average exactly 1 in expectation"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"The .* of subgroups? .* heavy tail within",
                                    LowESSWarning)
            yield
