"""Logged propensities that do not fit the logged actions are reported (a warning only)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from equicare.ope._propensity_check import (
    PROPENSITY_LOG_RATIO,
    check_logged_propensities,
    propensity_warning,
)
from equicare.sim import care

from ._garnet import make


@pytest.fixture(scope="module")
def sim():
    return care.CareManagementSim(care.CareConfig())


@pytest.fixture(scope="module")
def care_panel(sim):
    return sim.generate(n_members=300, n_weeks=20, random_state=3).dataset()


def _nonsense(ds, kind: str):
    rng = np.random.default_rng(0)
    p = np.ones(ds.n_steps) if kind == "ones" else rng.uniform(0.001, 1.0, ds.n_steps)
    return ds.with_behavior_prob(p)


@pytest.mark.parametrize("panel", ["care", "garnet"])
def test_true_propensities_pass_and_nonsense_is_reported(care_panel, panel):
    ds = care_panel if panel == "care" else make("s50_a5_g1", 1000, seed=0)[1]
    clean = check_logged_propensities(ds)
    assert clean is not None and not clean.warn and clean.stat < 0.25
    assert clean.message("panel.csv", "propensity") is None
    for kind in ("ones", "random"):  # every propensity 1.0 while many actions are logged
        bad = check_logged_propensities(_nonsense(ds, kind))
        assert bad is not None and bad.stat > PROPENSITY_LOG_RATIO, (kind, bad)
        msg = bad.message("panel.csv", "propensity")
        assert msg is not None and msg.startswith(
            "panel.csv: the logged propensities (column 'propensity') disagree with the logged "
            "actions: a quick behaviour model fitted to the actions")


def test_the_warning_needs_a_manifest_column(care_panel):
    assert propensity_warning(_nonsense(care_panel, "ones"), "p.csv") is not None
    assert propensity_warning(care_panel, "p.csv") is None
    from dataclasses import replace

    assert propensity_warning(replace(care_panel, behavior_prob=None), "p.csv") is None


class _Uniform:
    """Every action alike (the streamed check does not depend on the target)."""

    def action_probs(self, ds):
        return np.full((ds.n_steps, ds.n_actions), 1.0 / ds.n_actions)


def _streamed(ds, n_chunks: int = 3, seed: int = 3):
    """The check of ``evaluate_stream`` on ``ds`` read as ``n_chunks`` chunks."""
    import warnings

    from equicare.data import Chunk
    from equicare.ope import evaluate_stream

    cuts = np.linspace(0, ds.n_episodes, n_chunks + 1).astype(int)
    chunks = [Chunk(index=i, dataset=ds.subset(np.arange(a, b)), first_row=0)
              for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the weights' warnings with nonsense propensities
        res = evaluate_stream(chunks, _Uniform(), estimators=("is",), n_boot=5,
                              random_state=seed)
    return res.propensity_check


def _panel(states: str, n: int, seed: int):
    """A Garnet panel (50 categorical states: per-level frequencies) or a care panel (numeric
    states: the multinomial logistic) with its true propensities, ``n`` episodes."""
    if states == "categorical":
        return make("s50_a5_g1", n, seed=seed)[1]
    return care.CareManagementSim(care.CareConfig()).generate(
        n_members=n, n_weeks=20, random_state=seed).dataset()


@pytest.mark.parametrize("states", ["categorical", "numeric"])
@pytest.mark.parametrize("kind", ["true", "ones", "random"])
def test_streamed_check_is_the_in_memory_one_below_20000_rows(states, kind):
    """Under 20,000 rows the sample is the whole panel: the same statistic, row and text
    (per-level frequencies with 50 categorical states; the numeric model without them)."""
    ds = _panel(states, 700 if states == "categorical" else 400, seed=0)
    ds = ds if kind == "true" else _nonsense(ds, kind)
    assert ds.n_steps < 20_000
    mem, st = check_logged_propensities(ds), _streamed(ds)
    assert mem is not None and st is not None
    assert (st.stat, st.n_rows, st.model, st.example) == (mem.stat, mem.n_rows, mem.model,
                                                          mem.example)
    assert st.panel_rows == ds.n_steps
    assert st.message("p.csv", "propensity") == mem.message("p.csv", "propensity")
    assert mem.warn == (kind != "true")


@pytest.mark.parametrize("states", ["categorical", "numeric"])
def test_streamed_check_on_a_sample_reports_a_larger_panel(states):
    """Over 20,000 rows: about 20,000 rows of whole episodes, the same for any chunking; random
    propensities are reported (the message names the sample), the true ones pass."""
    ds = _panel(states, 2000 if states == "categorical" else 1300, seed=4)
    assert ds.n_steps > 22_000
    bad = _nonsense(ds, "random")
    st = _streamed(bad)
    assert st is not None and st.warn and 18_000 < st.n_rows < 22_000
    assert st == _streamed(bad, n_chunks=5)
    mem = check_logged_propensities(bad)
    assert mem is not None and st.stat == pytest.approx(mem.stat, abs=0.1)
    msg = st.message("p.csv", "propensity")
    assert msg is not None and (f"over {st.n_rows:,} rows, a random sample of whole episodes "
                                f"of the panel's {ds.n_steps:,}; above") in msg
    clean = _streamed(ds)
    assert clean is not None and not clean.warn and clean.stat < 0.25


def test_thin_levels_do_not_make_true_propensities_disagree():
    """1,000 states x 100 actions, 12,500 rows (about 12 a state, fewer than the actions): the
    in-sample frequency of a row's own action is inflated by the row itself, and the true
    propensities were reported (mean |log ratio| 0.81 > 0.7; 0.86 on a 5,000 x 100 Garnet panel
    of 54,418 rows). The levels with at least half as many rows as actions are compared now."""
    from equicare.data import from_frame
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import GarnetConfig, garnet_panel

    cfg = GarnetConfig(n_states=1000, n_actions=100, n_successors=3)
    mdp, pan = garnet_panel(cfg, 1000, 0)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    clean = check_logged_propensities(ds)
    assert clean is not None and not clean.warn and clean.stat < 0.6, clean
    assert 1000 < clean.n_rows < ds.n_steps
    assert clean.model == ("action frequencies per level of 'state', on the rows of its levels "
                           "with 50 or more rows")
    row = clean.example[0]
    assert clean.example[1] == pytest.approx(float(ds.behavior_prob[row]))
    for kind in ("ones", "random"):
        bad = check_logged_propensities(_nonsense(ds, kind))
        assert bad is not None and bad.stat > 2 * PROPENSITY_LOG_RATIO, (kind, bad)
    # no level with enough rows: no per-level test at all (not a false alarm)
    few = ds.subset(np.arange(60))
    assert check_logged_propensities(few) is None


def _hospital_panel():
    """A Garnet panel (700 states, 25 actions) as a hospital would log it: the state split into
    a diagnosis group (state // 17) and an admission type (state % 5), a care site drawn per
    stay (irrelevant), and the numeric severity (a function of the state); the clinicians'
    propensities depend on the state, so on diagnosis x severity together."""
    from equicare.data import Manifest, from_frame
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import garnet_panel, garnet_preset

    cfg = garnet_preset("s700_a25_g1")
    mdp, pan = garnet_panel(cfg, 2500, 0)
    df = garnet_frame(mdp, pan)
    idx = df["state"].astype(str).str[1:].astype(int).to_numpy()
    rng = np.random.default_rng(5)
    df["dx"] = [f"dx{i // 17:03d}" for i in idx]
    df["adm"] = np.array(["elective", "emergency", "urgent", "transfer", "newborn"])[idx % 5]
    df["site"] = [f"site{s:02d}" for s in rng.integers(0, 30, df["episode"].max() + 1)[
        df["episode"].to_numpy()]]
    m = garnet_manifest(cfg).to_dict()
    m["dataset"]["categorical_states"] = ["dx", "site", "adm"]
    return from_frame(df.drop(columns=["state"]), Manifest.from_dict(m), emit_warnings=False)


def test_propensities_that_depend_on_several_columns_together_pass():
    """On a reviewer's hospital-shaped panel the check compared the true propensities with the
    action frequencies of one column at a time and warned (factor 4.2); the frequencies of the
    columns' combinations (with a numeric column's values) now stand for them too."""
    ds = _hospital_panel()
    clean = check_logged_propensities(ds)
    assert clean is not None and not clean.warn, clean
    assert "'dx'" in clean.model and "'severity'" in clean.model and " x " in clean.model
    for kind in ("ones", "random"):
        bad = check_logged_propensities(_nonsense(ds, kind))
        assert bad is not None and bad.warn, (kind, bad)


def test_the_cells_are_chosen_by_the_actions_not_by_the_propensities():
    """Choosing the column whose frequencies agree best with the propensities let a constant
    1/A column pass through the irrelevant site column (0.10, where actions are near uniform
    over sites); the cells are chosen by how well they predict the actions (leave-one-out)."""
    ds = _hospital_panel()
    flat = check_logged_propensities(ds.with_behavior_prob(np.full(ds.n_steps, 1 / 25)))
    assert flat is not None and flat.warn and "site" not in flat.model, flat
    shuffled = check_logged_propensities(
        ds.with_behavior_prob(np.random.default_rng(1).permutation(ds.behavior_prob)))
    assert shuffled is not None and shuffled.warn, shuffled


def test_floored_estimated_propensities_on_logged_rows_are_warned():
    """Estimated propensities: logged rows floored by the behaviour model are said, with counts.

    A thin categorical state (Garnet, 50 states, 300 stays): the cross-fitted model (the default
    before the saturated state got an in-sample flat model) gives some logged actions an
    out-of-fold probability below its floor, in about 3% of the stays; the weighted estimators
    then rest on the floor. With the default model or the true propensities logged, no warning.
    (The states-only model, as before the groups were inputs: its 10 floored rows are a small
    cell.)
    """
    import re
    import warnings
    from dataclasses import replace

    from equicare.exceptions import DataWarning, LowESSWarning
    from equicare.ope import evaluate
    from equicare.ope._propensity_check import FLOORED_EPISODE_SHARE
    from equicare.policy import BehaviorModel

    _, logged, pols = make("s50_a5_g1", 300, seed=3)
    ds = replace(logged, behavior_prob=None, _cache={})
    pi = pols["soft_optimal"][np.asarray(ds.categorical[:, 0])]
    with pytest.warns((DataWarning, LowESSWarning)) as rec:  # floored weights: a low ESS too
        res = evaluate(ds, pi, bootstrap=0, q_model="tabular_stationary", groups=(),
                       behavior_model=BehaviorModel(n_folds=5, groups=False))
    msgs = [str(w.message) for w in rec if "not logged but estimated" in str(w.message)]
    assert len(msgs) == 1
    # 10 rows in 9 episodes: a small cell, whose counts the warning and the JSON do not show
    assert res.behavior_model["n_floored"] is None
    m = re.search(r"below its floor 0\.001 on logged rows of more than 1% of the episodes "
                  r"\(counts not shown: they, or the episodes without such a row, are fewer "
                  r"than 11\), more than 2 times the ([\d.]+) such rows.*\(up to 1,000 per "
                  r"step\).*is, wis, pdis, wpdis, dr, wdr inherit that error", msgs[0])
    assert m is not None, msgs[0]
    assert res.behavior_model["floored_warning"] == msgs[0]  # the result JSON keeps it
    bm = BehaviorModel(n_folds=5, groups=False).fit(ds)
    n_ep = np.unique(ds.episode_index[bm.logged_prob(ds) < bm.floor]).size
    assert (bm.n_floored_, n_ep) == (10, 9) and n_ep > FLOORED_EPISODE_SHARE * ds.n_episodes
    # the advice names the fit that avoids it (in-sample, joint; docs/ope.md)
    assert "--behavior-folds 1 --behavior-form flat" in " ".join(msgs[0].split())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        known = evaluate(logged, pi, bootstrap=0, q_model="tabular_stationary", groups=())
    assert known.settings["propensity_source"] == "logged"
    for data in (logged, ds):  # logged propensities; the default model (in-sample, flat)
        with warnings.catch_warnings(record=True) as rec2:
            warnings.simplefilter("always")
            res = evaluate(data, pi, bootstrap=0, q_model="tabular_stationary", groups=())
        assert not any("not logged but estimated" in str(w.message) for w in rec2)
    assert res.behavior_model["n_floored"] == 0 and res.behavior_model["n_folds"] == 1


def test_floored_message_counts_episodes_and_skips_unweighted_estimators():
    from equicare.ope._propensity_check import floored_counts_message

    msg = floored_counts_message(40, 20, 40, 1e-3, ("wis", "fqe"), 5.0)
    assert msg is not None and "on 40 logged rows, in 20 episodes (50.0% of them), 8.0 times " \
        "the 5.0 such rows it expects itself" in msg
    # 1 to 10 episodes, or all but 1 to 10, or 1 to 10 rows: a small cell, counts not shown
    few = ("on logged rows of more than 1% of the episodes (counts not shown: they, or the "
           "episodes without such a row, are fewer than 11), more than 2 times the 0.2 such "
           "rows it expects itself")
    for rows, episodes, n in [(2, 2, 4), (40, 10, 400), (40, 30, 35), (10, 10, 20)]:
        small = floored_counts_message(rows, episodes, n, 1e-3, ("wis",), 0.25)
        assert small is not None and few in small and f"in {episodes} episodes" not in small
    assert "wis inherits that error, and its interval does not carry it: with estimated " \
        "propensities it is biased" in msg
    several = floored_counts_message(2, 2, 4, 1e-3, ("wis", "fqe", "dr"), 0.25)
    assert several is not None and ("wis, dr inherit that error, and their intervals do not "
                                    "carry it: with estimated propensities they are biased"
                                    ) in several
    assert floored_counts_message(2, 2, 4, 1e-3, ("fqe",), 0.25) is None
    assert floored_counts_message(2, 2, 400, 1e-3, ("wis",), 0.25) is None  # 0.5% of episodes
    # as many as the model expects: practice takes those actions that rarely, not a wrong model
    assert floored_counts_message(2, 2, 4, 1e-3, ("wis",), 1.0) is None


def test_floored_rows_of_truly_rare_actions_are_not_warned():
    """Care simulator without its propensities (300 actions, many truly below 0.001): the model
    floors logged rows in 39% of the episodes, about as many rows as it expects itself (272
    against 206), so no warning; the share of episodes alone would have warned."""
    import warnings
    from dataclasses import replace

    from equicare.ope import evaluate

    sim = care.CareManagementSim(care.CareConfig())
    logged = sim.generate(n_members=500, n_weeks=30, random_state=3).dataset()
    ds = replace(logged, behavior_prob=None, _cache={})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = evaluate(ds, sim.reference_policy(), estimators=("wis",), bootstrap=0, groups=())
    assert not any("not logged but estimated" in str(w.message) for w in rec)
    assert res.behavior_model["floored_warning"] is None
    assert res.behavior_model["n_floored"] > 0.01 * ds.n_steps  # floored, yet as expected


def test_in_sample_propensities_bias_plain_is_low_and_the_result_says_so():
    """Exact truth: the behaviour policy's own value on a Garnet panel (700 states, 25 actions,
    1,000 episodes of about 12 steps). With the true propensities its importance weights are
    all 1 and IS is the on-policy mean. Estimated in-sample (the default model on a saturated
    categorical state), each logged action gets a higher probability than practice gave it, the
    weights average about 0.3 and IS lands near a third of the truth, while WIS and DR stay
    within 6%: the result JSON and a DataWarning say so, with the mean weight (IS = WIS x it).
    """
    import warnings
    from dataclasses import replace

    from equicare.exceptions import DataWarning
    from equicare.ope import evaluate
    from equicare.ope._propensity_check import IN_SAMPLE_MEAN_WEIGHT

    mdp, logged, pols = make("s700_a25_g1", 1000, seed=5)
    truth = mdp.value(pols["behavior"])
    pi = pols["behavior"][np.asarray(logged.categorical[:, 0])]
    kw = {"estimators": ("is", "wis", "pdis", "dr"), "bootstrap": 0,
          "q_model": "tabular_stationary", "groups": (), "random_state": 0}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        known = evaluate(logged, pi, **kw)
    assert abs(known.estimates["is"].value / truth - 1) < 0.06
    assert "in_sample_warning" not in known.behavior_model  # logged: nothing estimated
    assert not any("estimated in-sample" in str(w.message) for w in rec)

    ds = replace(logged, behavior_prob=None, _cache={})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = evaluate(ds, pi, **kw)
    est = {k: e.value for k, e in res.estimates.items()}
    assert est["is"] < 0.5 * truth  # biased low, far outside its sampling error
    for k in ("wis", "dr"):
        assert abs(est[k] / truth - 1) < 0.06, (k, est[k], truth)
    bm = res.behavior_model
    assert bm["n_folds"] == 1
    assert bm["mean_trajectory_weight"] == pytest.approx(est["is"] / est["wis"], rel=1e-9)
    assert bm["mean_trajectory_weight"] < IN_SAMPLE_MEAN_WEIGHT
    msgs = [str(w.message) for w in rec if issubclass(w.category, DataWarning)
            and "estimated in-sample" in str(w.message)]
    assert msgs == [bm["in_sample_warning"]]
    assert msgs[0].startswith("is and pdis use propensities estimated in-sample, and the "
                              f"trajectory importance weights average "
                              f"{bm['mean_trajectory_weight']:.3g} (over 1,000 episodes of")
    # WIS alone: nothing to say (it divides the mean weight out)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        only = evaluate(ds, pi, **{**kw, "estimators": ("wis", "dr")})
    assert only.behavior_model["in_sample_warning"] is None
    assert not any("estimated in-sample" in str(w.message) for w in rec)


def test_in_sample_message_needs_in_sample_estimates_plain_is_and_a_low_mean_weight():
    from equicare.ope._propensity_check import IN_SAMPLE_MEAN_WEIGHT, in_sample_weights_message

    one = {"n_folds": 1}
    low = IN_SAMPLE_MEAN_WEIGHT - 0.01
    msg = in_sample_weights_message(one, ("is", "wis"), 0.5, 10, 45)
    assert msg is not None and msg.startswith(
        "is uses propensities estimated in-sample, and the trajectory importance weights "
        "average 0.5 (over 10 episodes of 4.5 steps on average)")
    assert "a bias that its interval does not carry" in msg
    assert "Read wis, dr or wdr instead of is," in msg
    both = in_sample_weights_message(one, ("is", "pdis"), low, 10, 45)
    assert both is not None and "a bias that their intervals do not carry" in both
    assert in_sample_weights_message(one, ("pdis",), low, 10, 45) is not None
    assert in_sample_weights_message(None, ("is",), 0.1, 10, 45) is None  # logged or given
    assert in_sample_weights_message({"n_folds": 5}, ("is",), 0.1, 10, 45) is None  # cross-fitted
    assert in_sample_weights_message(one, ("wis", "wpdis", "dr", "wdr"), 0.1, 10, 45) is None
    assert in_sample_weights_message(one, ("is",), IN_SAMPLE_MEAN_WEIGHT, 10, 45) is None
    assert in_sample_weights_message(one, ("is",), float("nan"), 0, 0) is None
    # WPDIS: named when the episodes differ in length (45 steps < 10 episodes x 9), not when
    # they have one length (40 = 10 x 4) or the longest is not known
    from equicare.ope._propensity_check import MSG_IN_SAMPLE_WPDIS, in_sample_named

    varied = in_sample_weights_message(one, ("wis", "wpdis"), low, 10, 45, max_length=9)
    assert varied is not None and varied.startswith("wpdis uses propensities estimated")
    assert MSG_IN_SAMPLE_WPDIS in varied and "instead of wpdis," in varied
    every = in_sample_weights_message(one, ("is", "pdis", "wpdis"), low, 10, 45, max_length=9)
    assert every is not None and every.startswith("is, pdis and wpdis use propensities")
    assert in_sample_named(every) == ("is", "pdis", "wpdis")
    assert in_sample_named(in_sample_weights_message(one, ("is", "wpdis"), low, 10, 40,
                                                     max_length=4) or "") == ("is",)
    assert in_sample_weights_message(one, ("wpdis",), low, 10, 40, max_length=4) is None
    assert in_sample_weights_message(one, ("wpdis",), low, 10, 45) is None


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
def test_in_sample_propensities_bias_wpdis_over_episodes_of_different_lengths():
    """WPDIS divides each step's weighted rewards by every episode's weight, the ended ones
    included; in-sample weights shrink with each step (a 700-state Garnet panel's behaviour
    policy: episodes of 1 to 120 steps), so the outcomes ending long episodes were undercounted:
    WPDIS 0.438 for the behaviour policy whose logged-propensity WPDIS is 0.771 (truth 0.800),
    with no word, while the in-sample warning named only IS and PDIS. It names WPDIS now."""
    import warnings
    from dataclasses import replace

    from equicare.exceptions import DataWarning
    from equicare.ope import evaluate

    _, logged, pols = make("s700_a25_g1", 1000, seed=5)
    assert logged.episode_lengths.min() < logged.episode_lengths.max()
    pi = pols["behavior"][np.asarray(logged.categorical[:, 0])]
    kw = {"estimators": ("wis", "wpdis"), "bootstrap": 0, "groups": (), "random_state": 0}
    known = evaluate(logged, pi, **kw).estimates
    ds = replace(logged, behavior_prob=None, _cache={})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = evaluate(ds, pi, **kw)
    assert res.estimates["wpdis"].value < 0.7 * known["wpdis"].value  # far below
    assert res.estimates["wis"].value == pytest.approx(known["wis"].value, rel=0.06)
    msg = res.behavior_model["in_sample_warning"]
    assert msg is not None and msg.startswith("wpdis uses propensities estimated in-sample")
    from equicare.ope._propensity_check import MSG_IN_SAMPLE_WPDIS

    assert MSG_IN_SAMPLE_WPDIS in msg
    assert [str(w.message) for w in rec if issubclass(w.category, DataWarning)
            and "estimated in-sample" in str(w.message)] == [msg]


def test_true_propensities_of_a_choice_on_an_unrecorded_attribute_are_not_called_wrong():
    """A diabetes panel whose outreach provider follows the member's assigned care team (not
    among the states) was warned with its true propensities (factor 2.1), and told to leave
    them out of the manifest. The warning now names that cause and says to keep them; with
    the team among the states the check agrees."""
    from equicare.data import from_frame

    rng = np.random.default_rng(0)
    n_members, weeks = 400, 10
    team = rng.integers(0, 3, size=n_members)
    ids = np.repeat([f"m{i:04d}" for i in range(n_members)], weeks)
    own = np.repeat(team, weeks)
    # 90% the team's own action, 5% each other
    probs = np.where(np.arange(3)[None, :] == own[:, None], 0.9, 0.05)
    action = (rng.random(own.size)[:, None] > probs.cumsum(axis=1)).sum(axis=1)
    frame = pd.DataFrame({
        "member_id": ids, "week": np.tile(np.arange(weeks), n_members),
        # 40 clinics: wide categorical states, checked by the action frequencies per cell
        "clinic": np.array([f"c{j:02d}" for j in range(40)])[rng.integers(0, 40, size=own.size)],
        "team": np.array(["nurse", "pharmacist", "chw"])[own],
        "action": action, "propensity": probs[np.arange(own.size), action],
        "reward": rng.normal(size=own.size),
        "race": np.repeat(np.array(["a", "b"])[rng.integers(0, 2, size=n_members)], weeks)})
    manifest = {"dataset": {"episode": "member_id", "time": "week",
                            "categorical_states": ["clinic"], "groups": ["race"],
                            "behavior_prob": "propensity"},
                "actions": {"action": {"levels": 3}}, "reward": {"r": {"column": "reward"}}}
    msg = propensity_warning(from_frame(frame, manifest, emit_warnings=False), "panel.csv")
    assert msg is not None
    assert ("current practice also decided on something the states do not hold (a member's "
            "assigned care team" in msg)
    assert "the logged propensities are then the right ones" in msg
    manifest["dataset"]["categorical_states"] = ["clinic", "team"]
    assert propensity_warning(from_frame(frame, manifest, emit_warnings=False), "p.csv") is None
