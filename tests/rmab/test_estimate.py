from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.exceptions import DataValidationError, DataWarning
from equicare.rmab import capacity_plan, estimate_arms, load_domain, plan


def make_panel(domain, n_steps, rng, p_treat=0.3):
    """Simulate a logged program: random treatment, one row per member-week."""
    N, S = domain.n_arms, domain.n_states
    s = np.minimum((rng.random((N, 1)) > np.cumsum(domain.init, 1)).sum(1), S - 1)
    rows = []
    for t in range(n_steps):
        a = (rng.random(N) < p_treat).astype(int)
        rows.append(pd.DataFrame({"member": np.arange(N), "week": t, "state": s, "treated": a,
                                  "group": np.asarray(domain.group_names)[domain.groups],
                                  "reward": domain.R[np.arange(N), s]}))
        cdf = np.cumsum(domain.P[np.arange(N), a, s], axis=1)
        s = np.minimum((rng.random((N, 1)) > cdf).sum(1), S - 1)
    return pd.concat(rows, ignore_index=True).sample(frac=1.0, random_state=0)  # shuffled


def test_recovers_transition_matrices_within_posterior_sd():
    d = load_domain("synthetic", n_arms=400)
    panel = make_panel(d, 30, np.random.default_rng(0))
    est = estimate_arms(panel, episode="member", time="week", state="state", action="treated",
                        group="group", reward="reward")
    assert est.group_names == ("A", "B", "C", "D", "E")
    truth = np.stack([d.P[np.flatnonzero(d.groups == g)[0]] for g in range(5)])
    z = np.abs(est.P - truth) / est.P_sd
    assert z.max() < 5 and np.median(z) < 1.5
    np.testing.assert_allclose(est.R, [0.0, 1.0])
    assert est.n_episodes.tolist() == [100, 100, 20, 100, 80]
    # arms to plan with: one per episode, same groups; planning runs on them
    dom = est.to_domain(horizon=10)
    assert dom.n_arms == 400 and dom.group_sizes.tolist() == [100, 100, 20, 100, 80]
    res = plan(dom, budget=0.2, seeds=3, policies=["opt", "mmr"])
    assert set(res.policies) == {"opt", "mmr"}
    sampled = est.to_domain(n_arms=50, sample=True, random_state=1)
    assert sampled.n_arms == 50 and not np.allclose(sampled.redraw(2).P, sampled.P)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")  # tiny panels
def test_array_inputs_and_next_state_column():
    ep = np.array([0, 0, 1, 1])
    st = np.array(["lo", "hi", "lo", "lo"])
    nx = np.array(["hi", "hi", "lo", "hi"])
    with pytest.warns(DataWarning, match=re.escape("cells have fewer than 11 observed")):
        est = estimate_arms(episode=ep, state=st, action=[1, 0, 0, 1], group=["g"] * 4,
                            next_state=nx, state_rewards=[1.0, 0.0])
    assert est.state_names == ("hi", "lo")
    # lo --(a=1)--> hi observed twice: posterior mean (2 + 1) / (2 + 2)
    assert est.P[0, 1, 1, 0] == pytest.approx(0.75)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")  # tiny panels
def test_small_cells_warn_and_bad_actions_raise():
    d = load_domain("synthetic", n_arms=20)
    panel = make_panel(d, 3, np.random.default_rng(1))
    with pytest.warns(DataWarning, match="lean on the Dirichlet prior"):
        estimate_arms(panel, episode="member", time="week", state="state", action="treated",
                      group="group", reward="reward")
    bad = panel.copy()
    bad["treated"] = bad["treated"].astype(object)
    bad.iloc[4, bad.columns.get_loc("treated")] = 2
    with pytest.raises(DataValidationError, match=re.escape(
            "Column 'treated' must hold 0/1 (treated or not); row 4 (0-based data row) has 2.")):
        estimate_arms(bad, episode="member", state="state", action="treated", group="group",
                      reward="reward", min_count=0)
    with pytest.raises(DataValidationError, match=re.escape("Column 'nope' (group)")):
        estimate_arms(panel, episode="member", state="state", action="treated", group="nope",
                      reward="reward")
    with pytest.raises(ValueError, match="needs the rewards of the states"):
        estimate_arms(panel, episode="member", state="state", action="treated", group="group",
                      min_count=0)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")  # tiny panels
@pytest.mark.parametrize("column, role", [("state", "state"), ("group", "group"),
                                          ("member", "episode"), ("week", "time"),
                                          ("reward", "reward")])
@pytest.mark.parametrize("missing", [np.nan, None, " "])
def test_a_missing_value_is_refused_naming_column_and_row(column, role, missing):
    """A missing state, group or id used to become a level "nan" of its own (a state "nan" with
    its own transition rows, one pooled member "nan", or an error about a group 'nan' with no
    arms); a missing reward made R(s) NaN."""
    d = load_domain("synthetic", n_arms=20)
    panel = make_panel(d, 3, np.random.default_rng(1)).reset_index(drop=True)
    panel[column] = panel[column].astype(object)
    panel.loc[7, column] = missing
    with pytest.raises(DataValidationError, match=re.escape(
            f"Column {column!r} ({role}) has 1 missing value(s) (first: row 7, 0-based data "
            "row); every row needs")):
        estimate_arms(panel, episode="member", time="week", state="state", action="treated",
                      group="group", reward="reward", min_count=0)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")  # tiny panels
@pytest.mark.parametrize("labels", [False, True])
def test_next_state_column_missing_means_no_transition_and_bad_codes_are_refused(labels):
    """A next_state column is missing on the last row of a member who leaves: that used to crash
    ("'list' argument must have no negative elements"); a code outside 0..S-1 was counted in a
    neighbouring cell (code S went to the next state's row, -1 to the previous one)."""
    d = load_domain("synthetic", n_arms=40)
    panel = make_panel(d, 6, np.random.default_rng(2)).sort_values(["member", "week"])
    panel["next"] = panel.groupby("member")["state"].shift(-1)  # NaN on every last row
    if labels:
        names = np.array(["bad", "good"], dtype=object)
        panel["state"] = names[panel["state"].to_numpy()]
        panel["next"] = [None if pd.isna(v) else names[int(v)] for v in panel["next"]]
    kw = dict(episode="member", time="week", state="state", action="treated", group="group",
              reward="reward", min_count=0)
    default = estimate_arms(panel, **kw)
    given = estimate_arms(panel, next_state="next", **kw)
    np.testing.assert_array_equal(given.counts, default.counts)
    assert given.counts.sum() == 40 * 5
    bad = panel.reset_index(drop=True)
    bad["next"] = bad["next"].astype(object)
    bad.loc[3, "next"] = "worse" if labels else 2
    with pytest.raises(DataValidationError, match=re.escape(
            "Column 'next' (next_state): row 3 (0-based data row) has ")):
        estimate_arms(bad, next_state="next", **kw)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")
def test_an_infinite_reward_is_refused_naming_column_and_row():
    d = load_domain("synthetic", n_arms=20)
    bad = make_panel(d, 3, np.random.default_rng(1)).reset_index(drop=True)
    bad.loc[4, "reward"] = np.inf
    with pytest.raises(DataValidationError, match=re.escape(
            "Column 'reward' (reward) has NaN or infinite values in 1 row(s) (first: row 4; "
            "0-based data rows); expected finite numbers.")):
        estimate_arms(bad, episode="member", time="week", state="state", action="treated",
                      group="group", reward="reward", min_count=0)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")
@pytest.mark.filterwarnings("ignore:.*cells have fewer than:equicare.exceptions.DataWarning")
def test_text_in_reward_and_time_is_read_as_numbers_or_refused_naming_the_row():
    """A reward or time stored as text: 'abc' was an internal ValueError (plan/capacity
    --from-panel exited 1); text numbers are read as numbers, with a warning, as the loader
    reads them."""
    d = load_domain("synthetic", n_arms=20)
    panel = make_panel(d, 3, np.random.default_rng(1)).reset_index(drop=True)
    kw = dict(episode="member", time="week", state="state", action="treated", group="group",
              reward="reward", min_count=0)
    ref = estimate_arms(panel, **kw)
    text = panel.astype({"reward": str, "week": str})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = estimate_arms(text, **kw)
    said = [str(w.message) for w in rec if issubclass(w.category, DataWarning)]
    for col, role in (("week", "time"), ("reward", "reward")):
        assert (f"Column {col!r} ({role}) is stored as text; its values are read as numbers "
                "(store it as numbers to avoid this warning).") in said, said
    np.testing.assert_array_equal(got.P, ref.P)
    np.testing.assert_array_equal(got.R, ref.R)
    for col, role in (("reward", "reward"), ("week", "time")):
        bad = text.copy()
        bad.loc[4, col] = "abc"
        with warnings.catch_warnings(), pytest.raises(DataValidationError, match=re.escape(
                f"Column {col!r} ({role}) must hold numbers; 1 row(s) do not (first: row 4, "
                "0-based data row: 'abc').")):
            warnings.simplefilter("ignore", DataWarning)  # the other column: text numbers
            estimate_arms(bad, **kw)


def test_capacity_plan_finds_the_smallest_budget():
    d = load_domain("synthetic", n_arms=60)
    res = capacity_plan(d, target_share=0.5, goal_states=["good"], policies=["opt", "random"],
                        seeds=8, horizon=10)
    assert res.goal_states == ("good",)
    for p in ("opt", "random"):
        b = res.min_budget[p]
        assert b is not None
        # the found budget reaches the target and one less does not (same seeds)
        from equicare.rmab import simulate

        def share(k, p=p):
            return (simulate(d, p, k, seeds=8, horizon=10, random_state=0).final_states == 1
                    ).mean()

        assert share(b) >= 0.5 and share(b - 1) < 0.5
    assert res.share["opt"].shape == res.budgets.shape
    with pytest.raises(ValueError, match="needs goal_states"):
        capacity_plan(d, target_share=0.5)


def test_small_groups_are_suppressed_and_never_named_in_the_sparse_cell_warning():
    import warnings

    from equicare.exceptions import SmallCellWarning
    from equicare.rmab._estimate import SMALL_CELLS_HIDDEN

    d = load_domain("synthetic", n_arms=200)  # groups A-E: 50, 50, 10, 50, 40 members
    panel = make_panel(d, 12, np.random.default_rng(0))
    panel["group"] = panel["group"].replace({"C": "Aa"})  # the small group sorts second
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        est = estimate_arms(panel, episode="member", time="week", state="state",
                            action="treated", group="group", reward="reward", min_count=60)
    # Aa (10 < 11) and, complementary, the smallest other group E (40): Aa is not the total
    # minus the published groups
    assert est.suppressed == ("Aa", "E")
    small = [str(w.message) for w in got if issubclass(w.category, SmallCellWarning)]
    assert len(small) == 1 and small[0].startswith("2 group cells were suppressed: Aa, E.")
    sparse = [str(w.message) for w in got if issubclass(w.category, DataWarning)]
    # Aa's cells are the first sparse ones; the warning names the first of a published group
    assert len(sparse) == 1 and "first: group 'B', action 1, state '1')" in sparse[0], sparse
    assert " with " not in sparse[0]  # the count of a small cell is not named
    dom = est.to_domain(horizon=5)
    assert dom.suppressed_groups == ("Aa", "E")
    assert dom.published.tolist() == [True, False, True, True, False]
    # A and Aa only: A is hidden to protect Aa, so every sparse cell is in a suppressed group
    with (pytest.warns(SmallCellWarning, match="2 group cells were suppressed: A, Aa."),
          pytest.warns(DataWarning, match=re.escape(f"({SMALL_CELLS_HIDDEN})"))):
        est = estimate_arms(panel[panel["group"].isin(["A", "Aa"])], episode="member",
                            time="week", state="state", action="treated", group="group",
                            reward="reward", min_count=100)
    assert est.suppressed == ("A", "Aa")


def test_a_continuous_state_column_is_refused_before_counting():
    rng = np.random.default_rng(0)
    n = 5000
    df = pd.DataFrame({"id": np.repeat(np.arange(500), 10), "risk": rng.random(n),
                       "treated": rng.integers(0, 2, n), "g": np.repeat(["a", "b"], n // 2),
                       "r": rng.random(n)})
    with pytest.raises(DataValidationError) as err:  # would need 2 * 2 * 5000^2 counts
        estimate_arms(df, episode="id", state="risk", action="treated", group="g", reward="r")
    assert str(err.value) == (
        "Column 'risk' (state) has 5000 distinct values; the state must be a discrete column "
        "with at most 100 levels (state codes 0..4999 would need 0.745 GiB of transition counts "
        "alone): pass a categorical state column (a manifest's categorical_states, or --state).")
    # integer codes: the number of states is the largest code + 1
    df["code"] = np.where(np.arange(n) % 2, 0, 150)
    with pytest.raises(DataValidationError, match=re.escape(
            "Column 'code' (state) has 2 distinct values; the state must be a discrete column "
            "with at most 100 levels (state codes 0..150")):
        estimate_arms(df, episode="id", state="code", action="treated", group="g", reward="r")
    with pytest.warns(DataWarning):  # a higher cap is the caller's choice
        est = estimate_arms(df, episode="id", state="code", action="treated", group="g",
                            state_rewards=np.zeros(151), max_states=151)
    assert est.n_states == 151


def test_to_dict_publishes_no_small_group_and_pools_the_suppressed_ones():
    """EstimatedArms.to_dict: no entry (counts, size, model) of a group under 11 members nor of
    the group hidden to protect it; they are pooled, so the file stays a Contract-4 domain."""
    import json
    import warnings

    from equicare.rmab._estimate import SUPPRESSED_TYPE
    from equicare.utils import MIN_CELL

    d = load_domain("synthetic", n_arms=200)  # groups A-E: 50, 50, 10, 50, 40 members
    panel = make_panel(d, 12, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_arms(panel, episode="member", time="week", state="state",
                            action="treated", group="group", reward="reward")
    assert est.suppressed == ("C", "E") == est.hidden_groups()
    out = est.to_dict()
    json.dumps(out)
    names = [t["name"] for t in out["types"]]
    assert names == ["A", "B", "D", SUPPRESSED_TYPE]
    assert out["suppressed_groups"] == ["C", "E"] and out["min_cell"] == MIN_CELL
    assert all(t["n_episodes"] >= MIN_CELL for t in out["types"])
    pooled = out["types"][-1]
    assert pooled["n_episodes"] == 50  # C (10) and E (40) together, never apart
    c, e = est.group_names.index("C"), est.group_names.index("E")
    np.testing.assert_array_equal(pooled["counts"], est.counts[c] + est.counts[e])
    assert abs(sum(t["fraction"] for t in out["types"]) - 1.0) < 1e-12
    a = out["types"][0]  # a published group keeps its own estimates
    np.testing.assert_array_equal(a["P"], est.P[0])
    np.testing.assert_array_equal(a["init"], est.init[0])
    # the pooled model is the one estimate_arms gives a group of those members
    pool_panel = panel.assign(group=panel["group"].replace({"C": "CE", "E": "CE"}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joint = estimate_arms(pool_panel, episode="member", time="week", state="state",
                              action="treated", group="group", reward="reward")
    k = joint.group_names.index("CE")
    np.testing.assert_allclose(pooled["P"], joint.P[k], rtol=1e-12)
    np.testing.assert_allclose(pooled["P_sd"], joint.P_sd[k], rtol=1e-12)
    np.testing.assert_allclose(pooled["init"], joint.init[k], rtol=1e-12)
    dom = load_domain(out, n_arms=100)  # still a valid Contract-4 domain
    assert dom.group_names == ("A", "B", "D", SUPPRESSED_TYPE)


def test_duplicate_rows_and_a_changing_group_are_refused_and_gaps_are_not_transitions():
    """Panel shapes that were accepted silently: a duplicated (member, week) row, a member whose
    group changes, and a missing week (counted as a one-step transition: 1,377 transitions
    instead of 1,636 on a reviewer's panel, with no warning)."""
    d = load_domain("synthetic", n_arms=400)
    panel = make_panel(d, 12, np.random.default_rng(3)).sort_values(["member", "week"])
    kw = dict(episode="member", time="week", state="state", action="treated", group="group",
              reward="reward")
    full = estimate_arms(panel, **kw)
    assert full.counts.sum() == 400 * 11
    dup = pd.concat([panel, panel.iloc[[5]]], ignore_index=True)
    with pytest.raises(DataValidationError, match=r"Episode 0 has two rows at week = 5: "
                                                  r"rows 5 and 4800"):
        estimate_arms(dup, **kw)
    moved = panel.reset_index(drop=True)
    moved.loc[(moved.member == 1) & (moved.week >= 6), "group"] = "Z"
    with pytest.raises(DataValidationError, match=r"Episode 1 changes group from 'A' to 'Z' at "
                                                  r"row 18 .*constant within an episode"):
        estimate_arms(moved, **kw)
    holes = panel[~((panel.week == 4) & (panel.member < 10))]  # 10 members miss week 4
    with pytest.warns(DataWarning, match=r"10 of 4390 consecutive rows .* more than one step "
                                         r"\(week \+ 1\) apart"):
        est = estimate_arms(holes, **kw)
    assert est.counts.sum() == 400 * 11 - 20  # 3->4 and 4->5 lost, 3->5 not counted
    days = panel.assign(week=panel.week * 7)  # days 0, 7, 14: a step of 7, no gap
    np.testing.assert_array_equal(estimate_arms(days, **kw).counts, full.counts)


def test_a_group_too_small_for_its_share_of_arms_still_gets_one():
    """Planning 200 arms from a panel whose smallest group holds 1 of 600 members: the floor of
    its share is 0 arms, which RMABDomain refuses ("Group 'g1' has no arms", naming a group
    whose numbers are suppressed); it gets one arm, taken from the largest group."""
    from equicare.exceptions import InvalidParameterError
    from equicare.rmab._estimate import _split_arms

    n = np.array([531, 30, 12, 11, 10, 5, 1])
    names = tuple(f"g{k}" for k in range(7))
    sizes = _split_arms(200, n, names)
    assert sizes.sum() == 200 and sizes.min() == 1
    assert sizes.tolist() == [178, 10, 4, 3, 3, 1, 1]  # floors 177, 10, 4, 3, 3, 1, 0 + 2
    assert _split_arms(600, n, names).tolist() == n.tolist()  # one arm per member
    with pytest.raises(InvalidParameterError, match="fewer than the panel's 7 groups"):
        _split_arms(5, n, names)


def test_a_group_of_few_people_with_many_episodes_is_suppressed_with_member():
    """People who re-enrol: 8 people with 16 episodes are 8 people, fewer than 11."""
    from equicare.exceptions import SmallCellWarning

    d = load_domain("synthetic", n_arms=200)  # groups A-E: 50, 50, 10, 50, 40 members
    panel = make_panel(d, 12, np.random.default_rng(0))
    panel = panel[panel["group"] != "C"].copy()
    panel["person"] = panel["member"]
    eight = panel.loc[panel["group"] == "B", "member"].unique()[:8]
    moved = panel["member"].isin(eight)
    panel.loc[moved, "group"] = "F"
    # each of the eight re-enrols: weeks 6-11 are a second episode of the same person
    panel["member"] = np.where(moved & (panel["week"] >= 6),
                               panel["member"].astype(str) + "_2", panel["member"].astype(str))
    kw = dict(episode="member", time="week", state="state", action="treated", group="group",
              reward="reward", min_count=0)
    est = estimate_arms(panel, **kw)  # 16 episodes: published when episodes are people
    sizes = dict(zip(est.group_names, est.n_episodes, strict=True))
    assert est.suppressed == () and sizes["F"] == 16
    with pytest.warns(SmallCellWarning, match="suppressed: "):
        est = estimate_arms(panel, **kw, member="person")
    # F (8 people) and, complementary, the smallest other group (E, 40)
    assert est.suppressed == ("E", "F")
    assert est.to_domain(horizon=5).suppressed_groups == ("E", "F")
    panel.loc[panel.index[3], "person"] = None
    with pytest.raises(DataValidationError, match="'person'.*person id"):
        estimate_arms(panel, **kw, member="person")
