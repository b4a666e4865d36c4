from __future__ import annotations

import json
import pickle
import re
import warnings

import numpy as np
import pytest

from equicare.exceptions import EquicareError, SupportWarning
from equicare.fairness import pareto_mask

from ..fairness.conftest import random_panel


@pytest.mark.parametrize(("value", "gap", "worst", "expected"), [
    ([1.0, 0.9, 0.8], [5.0, 2.0, 3.0], [0.5, 0.5, 0.4], [True, True, False]),
    ([1.0, 1.0], [2.0, 2.0], [0.3, 0.3], [True, True]),          # ties: nobody dominates
    ([1.0, 2.0], [1.0, 1.0], [0.1, 0.1], [False, True]),          # same gap, higher value
    ([1.0, np.nan], [1.0, 0.0], [0.1, 0.2], [True, False]),       # NaN never efficient
    ([3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 0.0, 0.0], [True, True, True]),
    # no point has a worst-group value (every group value withheld, ESS < 11): left out
    ([1.0, 0.9, 0.8], [5.0, 2.0, 3.0], [np.nan] * 3, [True, True, False]),
])
def test_pareto_mask(value, gap, worst, expected) -> None:
    assert pareto_mask(value, gap, worst).tolist() == expected


@pytest.fixture(scope="module")
def panel():
    """A clustered panel with a home-visit disparity and rewards that favour home visits."""
    from equicare.data import TrajectoryDataset

    ds = random_panel(240, seed=21, rate_by_group=(0.2, 0.08, 0.2))
    home = ds.action_space.level_mask("modality", "home_visit")[ds.actions]
    rewards = home * 1.0 + 0.1 * np.asarray(ds.states[:, 0], float)
    # a fixed logged propensity (not the generator's) is enough for the mechanics tested here
    return TrajectoryDataset(**{**{f: getattr(ds, f) for f in (
        "states", "actions", "terminals", "episode_offsets", "episode_ids", "times",
        "action_space", "state_names", "groups", "need")},
        "reward_components": rewards, "behavior_prob": np.full(ds.n_steps, 1 / 6), "gamma": 1.0})


def test_frontier_grid_and_pareto(panel) -> None:
    import torch

    from equicare.fairness import frontier

    torch.set_num_threads(1)
    cfg = {"n_steps": 60, "hidden": [16], "batch_size": 128, "valid_fraction": 0.0,
           "eval_every": 30}
    # the panel's fixed propensity (1/6, not the generator's) makes the weights average 1.76
    # (SE 0.21) at lambda 0, not 1: the audits' weight-mean check says so, and the frontier too
    with pytest.warns(SupportWarning, match=r"frontier: the wis values .* thin evidence.*"
                                            r"weights that average 1\.76"):
        res = frontier(panel, "bc", lambdas=[0.0, 50.0], group="race", config=cfg,
                       action="modality=home_visit", estimator="wis", n_boot=100,
                       random_state=0)
    t = res.table
    assert list(t["lambda"]) == [0.0, 50.0]
    assert {"value", "value_lower", "value_upper", "gap_pp", "gap_lower", "gap_upper",
            "worst_group_value", "pareto"} <= set(t.columns)
    assert np.all(t.value_lower <= t.value) and np.all(t.value <= t.value_upper)
    assert np.all(t.gap_lower <= t.gap_pp) and np.all(t.gap_pp <= t.gap_upper)
    assert res.pareto.any()
    np.testing.assert_array_equal(res.pareto, pareto_mask(t.value, t.gap_pp,
                                                          t.worst_group_value))
    assert res.n_train_episodes + res.n_eval_episodes == panel.n_episodes
    # every point is audited on the same held-out episodes with the same replicates
    w0 = res.audits[0]["behavior"].allocation.rate_reps
    w1 = res.audits[1]["behavior"].allocation.rate_reps
    np.testing.assert_array_equal(w0, w1)
    # 10 of r2's 14 held-out members had a home visit (r1's 12 of 21 are suppressed with them,
    # complementary): the logged behaviour's rates, so its gap, are not published (NaN here,
    # null in the JSON)
    beh = res.audits[0]["behavior"].allocation
    assert beh.rate_suppressed == ("r1", "r2") and np.isnan(beh.difference())
    assert np.isnan(res.behavior["gap_pp"])
    d = json.loads(json.dumps(res.to_dict()))
    assert d["behavior"]["gap_pp"] is None
    assert len(d["points"]) == 2 and d["weight"] == "fair_lambda"
    fig = res.plot()
    assert fig.axes[0].get_xlabel().startswith("parity gap")
    # the executor gets picklable tasks
    from equicare.pipeline import SerialExecutor

    calls = []

    class Recorder(SerialExecutor):
        def map(self, fn, items):
            items = list(items)
            calls.append(len(pickle.dumps(items[0])))
            return super().map(fn, items)

        def imap(self, fn, items):  # what the frontier uses (results one by one)
            items = list(items)
            calls.append(len(pickle.dumps(items[0])))
            return super().imap(fn, items)

    with pytest.warns(SupportWarning, match="frontier: the wis values .* thin evidence"):
        res2 = frontier(panel, "bc", lambdas=[0.0, 50.0], group="race", config=cfg,
                        action="modality=home_visit", estimator="wis", n_boot=100,
                        random_state=0, executor=Recorder())
    assert calls and calls[0] > 0
    assert res2.table.drop(columns="worst_group").equals(t.drop(columns="worst_group"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"learner": "xgb"}, "The 'learner' parameter of frontier must be one of 'bc', 'awr', 'cql'."),
    ({"weight": "group_robust", "lambdas": [0.0, 2.0]},
     "The 'lambdas' parameter of frontier must be numbers in [0, 1]. Got 2.0 instead."),
    ({"lambdas": []}, "The 'lambdas' parameter of frontier must be a non-empty sequence"),
    ({"lambdas": ["a"]}, "The 'lambdas' parameter of frontier must be a non-empty sequence of "
                         "numbers. Got ['a'] instead."),
    ({"lambdas": [0.0, "0.5"]}, "The 'lambdas' parameter of frontier must be a non-empty "
                                "sequence of numbers."),
    ({"weight": "dp"}, "The 'weight' parameter of frontier must be one of"),
    ({"action": "modality=teleport"}, "Unknown level(s) ['teleport'] of action component"),
])
def test_frontier_bad_inputs(panel, kwargs, message) -> None:
    from equicare.fairness import frontier

    with pytest.raises(EquicareError, match=re.escape(message)):  # a user mistake: exit 2
        frontier(panel, **{"learner": "bc", **kwargs})


def test_frontier_default_action_is_the_panels_any_outreach(panel) -> None:
    from equicare.fairness import frontier
    from equicare.fairness._rows import default_action

    res = frontier(panel, "bc", lambdas=[0.0], group="race", estimator="wis", n_boot=0,
                   config={"n_steps": 5, "hidden": [8], "valid_fraction": 0.0},
                   random_state=0)
    assert res.action == default_action(panel.action_space)
    assert res.action.startswith("modality=") and "|" in res.action


def test_frontier_with_a_single_published_group_fails_before_training(panel) -> None:
    from equicare.data import TrajectoryDataset
    from equicare.fairness import frontier

    one = TrajectoryDataset(**{**{f: getattr(panel, f) for f in (
        "states", "actions", "terminals", "episode_offsets", "episode_ids", "times",
        "action_space", "state_names", "need", "reward_components", "behavior_prob",
        "gamma")}, "groups": {"sex": np.full(panel.n_episodes, "f")}})
    with pytest.raises(EquicareError, match=re.escape(
            "group 'sex': only 1 group can be published (f); a parity audit needs at least 2.")):
        frontier(one, "bc", lambdas=[0.0], group="sex", config={"n_steps": 5}, n_boot=0)


def test_frontier_warns_once_about_censored_stays() -> None:
    """A stationary table named on a censored panel (tests/ope/test_censoring.py's, about 18% of
    the stays cut at 10 steps): each point's audit made the censoring check and warned, so the
    frontier printed the same warning once per weight. Now the caller warns once, naming the
    weights, and every point's audit keeps the check in its diagnostics."""
    import warnings

    from equicare.exceptions import DataWarning
    from equicare.fairness import frontier

    from ..ope.test_censoring import panel as censored_panel

    ds = censored_panel(600, 10, seed=4)
    kw = {"action": "action=1", "group": "g", "config": {"n_steps": 20}, "estimator": "fqe",
          "n_boot": 0, "random_state": 0}
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = frontier(ds, "bc", lambdas=[0, 5], q_model="tabular_stationary", **kw)
    said = [str(w.message) for w in got
            if issubclass(w.category, DataWarning) and "censored" in str(w.message)]
    assert len(said) == 1, said
    assert said[0].startswith("frontier: the stationary tabular Q-model's censoring check fired "
                              "at 2 of 2 weights (lambda = 0, 5;")
    assert "Prefer --q-model tabular_window" in said[0]
    for a in res.audits:
        c = a["policy"].diagnostics.censoring
        assert c is not None and c.warn and not c.switched
        assert any("censored" in m for m in a.warnings)


def test_frontier_warns_once_when_its_values_leave_the_support() -> None:
    """A 25-action Garnet panel and a BC barely trained: the points' policies put most of their
    mass on actions the clinicians never take. Each point's audit found it and was silenced
    (it would print once per weight), and nothing else said it: the table and JSON showed the
    DR values without a word (a 5,000-state, 100-action panel: 0.805 [0.779, 0.830] for a
    BC like one worth 0.632). Now the frontier warns once, naming the weights."""
    import warnings

    from equicare.data import from_frame
    from equicare.exceptions import SupportWarning
    from equicare.fairness import frontier
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import GarnetConfig, garnet_panel

    cfg = GarnetConfig(n_states=30, n_actions=25, n_successors=3)
    mdp, pan = garnet_panel(cfg, 600, 0)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = frontier(ds, "bc", lambdas=[0, 5], action="action=0", group="group",
                       config={"n_steps": 2, "hidden": [8]}, estimator="dr", n_boot=0,
                       random_state=0)
    said = [str(w.message) for w in got if issubclass(w.category, SupportWarning)]
    assert len(said) == 1, said
    assert said[0].startswith("frontier: the dr values of 2 of 2 weights (lambda = 0, 5) rest on "
                              "thin evidence"), said[0]
    assert "of its probability mass on actions that current practice" in said[0]
    assert "policy 'policy'" not in said[0]
    assert res.warnings == said and res.to_dict()["warnings"] == said
    for a in res.audits:
        sup = a["policy"].diagnostics.support
        assert sup is not None and sup.warn


def test_frontier_names_the_groups_left_out_of_a_points_worst_group(panel) -> None:
    """A group whose value is not published (weights too thin) is left out of the policy's
    worst group, while the behaviour's covers every group: on a diabetes panel BC at lambda
    0 (imitating practice) read worst group 'Black -0.207' against the behaviour's 'NHPI
    -0.673', with nothing saying that NHPI, AIAN and Asian had no value. Each point now names
    them (worst_excluded), and the table's caption too."""
    import warnings

    import torch
    from rich.console import Console

    from equicare.cli._fairness import frontier_table
    from equicare.fairness import frontier

    torch.set_num_threads(1)
    cfg = {"n_steps": 60, "hidden": [16], "batch_size": 128, "valid_fraction": 0.0,
           "eval_every": 30}
    # WIS weights of some group with an ESS below 11 episodes: that group is left out (the
    # thin-evidence warnings of such weights are not what this test is about)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = frontier(panel, "bc", lambdas=[50.0], group="race", config=cfg,
                       action="modality=home_visit", estimator="wis", n_boot=20,
                       random_state=0)
    o = res.audits[0]["policy"].outcome
    left = [g for g in o.groups if g in o.undefined]
    assert left, o.undefined  # the case this is about
    assert res.table["worst_excluded"].tolist() == [", ".join(left)]
    assert res.table["worst_group"].iloc[0] not in left
    d = json.loads(json.dumps(res.to_dict()))
    assert d["points"][0]["worst_excluded"] == ", ".join(left)
    assert d["behavior"]["worst_excluded"] == ""
    console = Console(width=200, record=True)
    console.print(frontier_table(res))
    said = " ".join(console.export_text().split())
    assert (f"lambda = 50 leaves out {', '.join(left)} (importance weights too thin to publish"
            in said), said


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning",
                            "ignore::equicare.exceptions.SupportWarning")
def test_frontier_resamples_people_when_they_re_enrol(monkeypatch) -> None:
    """The held-out audit's replicates draw people (all their episodes) when members re-enrol."""
    import dataclasses

    from equicare.fairness import frontier
    from equicare.pipeline import _frontier

    panel = random_panel(900, seed=21)
    race = np.asarray(panel.groups["race"])
    # two episodes a person, within a race (a person's label does not change)
    order = np.argsort(race, kind="stable")
    members = np.empty(panel.n_episodes, dtype=object)
    members[order] = [f"p{i // 2}" for i in range(panel.n_episodes)]
    ds = dataclasses.replace(panel, members=members, _cache={})
    seen: list[np.ndarray] = []
    real = _frontier.bootstrap_weights

    def spy(*args, **kwargs):
        w = real(*args, **kwargs)
        seen.append(w)
        assert kwargs.get("members") is not None
        return w

    monkeypatch.setattr(_frontier, "bootstrap_weights", spy)
    frontier(ds, "bc", lambdas=[0.0], group="race", estimator="wis", n_boot=20,
             config={"n_steps": 5, "hidden": [8], "valid_fraction": 0.0}, random_state=0)
    assert len(seen) == 1
    # one count per person: the held-out half's people, each with both episodes (or one)
    w = seen[0]
    held = [m for m in members if m is not None]
    assert w.shape[0] == 20 and w.shape[1] < len(held)


def test_the_q_models_group_check_is_said_once_not_per_point() -> None:
    """On a panel whose groups differ in a way the state does not carry (tests/fairness/
    test_group_q.py), every point's audit refits the groups' Q-models; the frontier says so in
    its one warning on the points' values, not in a warning per point."""
    import torch

    from equicare.data import from_frame
    from equicare.fairness import frontier

    from ..fairness.test_group_q import MANIFEST, simulate

    torch.set_num_threads(1)
    ds = from_frame(simulate(800, np.random.default_rng(1)), MANIFEST, emit_warnings=False)
    cfg = {"n_steps": 30, "hidden": [8], "batch_size": 128, "valid_fraction": 0.0,
           "eval_every": 30}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = frontier(ds, "bc", lambdas=[0.0, 5.0], group="grp", config=cfg,
                       action="outreach=call", estimator="dr", q_model="tabular_window",
                       n_boot=20, random_state=0)
    said = [w for w in rec if "fitted on all episodes is biased within" in str(w.message)]
    assert len(said) == 1 and issubclass(said[0].category, SupportWarning), [
        str(w.message)[:80] for w in said]
    assert said[0].message.args[0] in res.warnings
    for a in res.audits:
        assert any(c.refitted for c in a["policy"].outcome.q_checks.values())
