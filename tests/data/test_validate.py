"""Every validation error of the dataset contract, with its message content."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.data import Manifest, from_frame, load_dataset, validate_frame
from equicare.data._labels import MSG_MISSING_GROUP
from equicare.exceptions import DataValidationError, DataWarning

from ..conftest import make_frame


def assert_invalid(frame, manifest_dict, *fragments):
    with pytest.raises(DataValidationError) as info:
        from_frame(frame, manifest_dict, source="panel.csv", emit_warnings=False)
    text = str(info.value)
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"
    return info.value


def test_valid_frame_has_no_errors(frame, manifest_dict):
    rep = validate_frame(frame, Manifest.from_dict(manifest_dict), "panel.csv")
    assert rep.ok, rep.errors


def test_missing_column_suggests(frame, manifest_dict):
    frame = frame.rename(columns={"risk": "riks"})
    assert_invalid(
        frame,
        manifest_dict,
        "panel.csv: column 'risk' (named by dataset.states",
        "is missing",
        "did you mean 'riks'?",
    )


def test_duplicated_column(frame, manifest_dict):
    dup = pd.concat([frame, frame[["risk"]]], axis=1)
    assert_invalid(dup, manifest_dict, "column 'risk' appears 2 times")


def test_empty_table(frame, manifest_dict):
    assert_invalid(frame.iloc[:0], manifest_dict, "the table is empty")


def test_non_numeric_state(frame, manifest_dict):
    frame["risk"] = frame["risk"].astype(object)
    frame.loc[3, "risk"] = "high"
    err = assert_invalid(
        frame, manifest_dict, "column 'risk' (state) must hold numbers", "1 row (first: 3;",
        "(row 3: 'high', object values)")
    assert len(err.problems) == 1


def test_nan_and_inf_states(frame, manifest_dict):
    frame.loc[[4, 9], "engagement"] = np.nan
    frame.loc[2, "engagement"] = np.inf
    assert_invalid(
        frame,
        manifest_dict,
        "column 'engagement' (state) has NaN or infinite values in 3 rows (first: 2, 4, 9;",
        "expected finite numbers",
    )


def test_missing_states_and_rewards_say_what_to_do(frame, manifest_dict):
    """A daily export: HbA1c measured on 2.4% of days and an outcome only on the last row got
    "expected finite numbers" and nothing else. A NaN now says how such columns are filled;
    an infinite value alone does not get the advice."""
    from equicare.data.validate import MSG_MISSING_REWARD, MSG_MISSING_STATE

    f = frame.copy()
    f.loc[[4, 9], "engagement"] = np.nan
    f.loc[[3], "r_primary"] = np.nan
    assert_invalid(f, manifest_dict,
                   "expected finite numbers." + MSG_MISSING_STATE.format(column="engagement",
                                                                         episode="member_id"),
                   "expected finite numbers." + MSG_MISSING_REWARD.format(column="r_primary"))
    assert "df.groupby('member_id')['engagement'].ffill()" in MSG_MISSING_STATE.format(
        column="engagement", episode="member_id")
    g = frame.copy()
    g.loc[2, "engagement"] = np.inf
    err = assert_invalid(g, manifest_dict, "expected finite numbers.")
    assert "does not fill" not in str(err)


def test_unknown_action_label(frame, manifest_dict):
    frame.loc[[5, 7], "modality"] = "telepathy"
    assert_invalid(
        frame,
        manifest_dict,
        "column 'modality' (action component 'modality') has values not "
        "among the declared levels in 2 rows (first: 5, 7;",
        "['telepathy']",
        "expected one of ['none', 'phone', 'home_visit'] or integer codes",
    )


def test_integer_action_codes_accepted(frame, manifest_dict):
    frame["urgency"] = (frame["urgency"] == "urgent").astype(int)
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    urg = ds.action_codes[:, 1]
    assert set(np.unique(urg)) <= {0, 1}


def test_duplicate_keys(frame, manifest_dict):
    dup = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    assert_invalid(
        dup,
        manifest_dict,
        "duplicate (member_id, week) keys in 1 row",
        "expected one row per episode and time step",
    )


def test_time_gaps(frame, manifest_dict):
    # drop the second row of one episode with >= 3 rows
    counts = frame.groupby("member_id").size()
    m = counts[counts >= 3].index[0]
    rows = frame[frame.member_id == m].sort_values("week")
    frame = frame.drop(index=rows.index[1])
    assert_invalid(
        frame,
        manifest_dict,
        "gaps in column 'week' within an episode at 1 row",
        "expected consecutive time steps",
    )


def test_non_integer_time(frame, manifest_dict):
    frame["week"] = frame["week"].astype(float)
    frame.loc[0, "week"] = 1.5
    assert_invalid(
        frame, manifest_dict, "column 'week' (time) must hold integers; 1 row (first: 0; 0-based "
        "data rows) do not (row 0: 1.5, float64 values); expected steps 0, 1, 2, ... within an "
        "episode.")


def test_group_changes_within_episode(frame, manifest_dict):
    m = frame.member_id.value_counts().index[0]
    idx = frame.index[frame.member_id == m][1]
    frame.loc[idx, "race"] = "zzz"
    assert_invalid(
        frame,
        manifest_dict,
        "column 'race' (group attribute) changes within an episode in 1 row",
        "expected one value per episode",
    )


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, "", "  "])
def test_a_missing_group_label_is_an_error_in_from_frame(frame, manifest_dict, missing):
    frame["race"] = frame["race"].astype(object)
    frame.loc[[4, 9], "race"] = missing
    assert_invalid(frame, manifest_dict, MSG_MISSING_GROUP.format(
        where="panel.csv", column="race", rows="2 rows (first: 4, 9; 0-based data rows)"))


def test_a_missing_group_label_is_an_error_in_a_csv(tmp_path, frame, manifest_dict):
    frame["sex"] = frame["sex"].astype(object)
    frame.loc[[3], "sex"] = None  # an empty cell
    p = tmp_path / "panel.csv"
    frame.to_csv(p, index=False)
    msg = MSG_MISSING_GROUP.format(where=str(p), column="sex",
                                   rows="1 row (first: 3; 0-based data rows)")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        load_dataset(p, manifest_dict)


def test_need_changes_within_episode(frame, manifest_dict):
    m = frame.member_id.value_counts().index[0]
    rows = frame.index[frame.member_id == m]
    frame.loc[rows[0], "high_need"] = 1 - frame.loc[rows[1], "high_need"]
    assert_invalid(frame, manifest_dict, "column 'high_need' (need flag) changes within an episode")


@pytest.mark.parametrize("bad", [0.0, 1.2, -0.1])
def test_propensity_range(frame, manifest_dict, bad):
    frame.loc[6, "propensity"] = bad
    assert_invalid(
        frame,
        manifest_dict,
        "column 'propensity' (behaviour propensity) must lie in (0, 1]; 1 row (first: 6;",
    )


def test_non_finite_reward(frame, manifest_dict):
    frame.loc[1, "r_engagement"] = np.nan
    assert_invalid(
        frame, manifest_dict, "column 'r_engagement' (reward component 'engagement') has NaN"
    )


def test_bad_terminal(frame, manifest_dict):
    manifest_dict["dataset"]["terminal"] = "done"
    frame["done"] = 0
    frame.loc[8, "done"] = 2
    assert_invalid(
        frame, manifest_dict, "column 'done' (terminal) must be 0/1 or true/false; 1 row (first: 8;"
    )


def test_many_problems_counted(frame, manifest_dict):
    frame.loc[1, "r_engagement"] = np.nan
    frame.loc[6, "propensity"] = 0.0
    err = assert_invalid(frame, manifest_dict, "2 problems in panel.csv")
    assert len(err.problems) == 2


def test_warnings(manifest_dict):
    frame = make_frame(n_members=30)
    frame["r_primary"] = 0.0
    frame.loc[0, "r_primary"] = -1.0
    frame["modality"] = "none"
    with pytest.warns(DataWarning) as rec:
        from_frame(frame, manifest_dict, source="p.csv")
    text = " | ".join(str(w.message) for w in rec)
    assert "4 of 6 action combinations are never observed (2 observed)" in text
    assert "reward component 'primary' (column 'r_primary') is non-zero in only" in text
    assert "fewer than 11 episodes" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_frame(frame, manifest_dict, emit_warnings=False)


def test_file_not_changed_by_validation(tmp_path, frame, manifest_dict):
    frame.loc[1, "r_engagement"] = np.nan
    p = tmp_path / "panel.csv"
    frame.to_csv(p, index=False)
    before = p.read_bytes()
    with pytest.raises(DataValidationError, match=re.escape(str(p))):
        load_dataset(p, manifest_dict)
    assert p.read_bytes() == before


def test_csv_duplicated_header(tmp_path, frame, manifest_dict):
    p = tmp_path / "dup.csv"
    dup = pd.concat([frame, frame[["risk"]]], axis=1)
    dup.to_csv(p, index=False)
    with pytest.raises(DataValidationError, match="column 'risk' appears 2 times"):
        load_dataset(p, manifest_dict)


def test_unsupported_and_missing_file(tmp_path, manifest_dict):
    with pytest.raises(DataValidationError, match="Data file not found"):
        load_dataset(tmp_path / "x.csv", manifest_dict)
    p = tmp_path / "x.xlsx"
    p.write_text("x")
    with pytest.raises(DataValidationError, match="unsupported file type '.xlsx'"):
        load_dataset(p, manifest_dict)


def test_no_terminal_column_is_noted_once(frame, manifest_dict):
    from equicare.data.validate import NO_TERMINAL_NOTE

    rep = validate_frame(frame, Manifest.from_dict(manifest_dict), "panel.csv")
    assert rep.ok and rep.notes == [NO_TERMINAL_NOTE]
    assert not any("censored" in w for w in rep.warnings)  # a note, not a warning
    assert NO_TERMINAL_NOTE == "no 'terminal' column: every episode end is treated as censored"
    manifest_dict["dataset"]["terminal"] = "done"
    frame["done"] = 0
    rep = validate_frame(frame, Manifest.from_dict(manifest_dict), "panel.csv")
    assert rep.ok and rep.notes == []


def test_terminal_before_the_last_row_of_its_episode(frame, manifest_dict):
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    first = int(np.flatnonzero(ds.is_first & ~ds.is_last)[0])  # an episode with >= 2 rows
    ep, week = ds.episode_ids[ds.episode_index[first]], ds.times[first]
    manifest_dict["dataset"]["terminal"] = "done"
    frame["done"] = 0
    bad = frame.index[(frame["member_id"] == ep) & (frame["week"] == week)][0]
    frame.loc[bad, "done"] = 1
    assert_invalid(frame, manifest_dict, f"column 'done' (terminal) is 1 before the last row of "
                   f"its episode in 1 row (first: {bad};", "must be the episode's last row. If "
                   "the rows after it are a later enrolment of the same person (a dropout who "
                   "comes back), give each enrolment its own episode id and name the person's "
                   "id as the manifest's member.")


def test_terminal_and_censored_episode_ends(frame, manifest_dict):
    """Contract 1: a terminal last row ends the episode; any other last row is censored."""
    manifest_dict["dataset"]["terminal"] = "done"
    order = frame.sort_values(["member_id", "week"]).index
    last = frame.loc[order].groupby("member_id").tail(1).index
    frame["done"] = 0
    ended = last[::2]
    frame.loc[ended, "done"] = 1
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    ids_ended = set(frame.loc[ended, "member_id"])
    np.testing.assert_array_equal(ds.censored, ~np.isin(ds.episode_ids, list(ids_ended)))
    assert ds.terminals.sum() == len(ended) and ds.terminals[ds.is_last].sum() == len(ended)
    assert ds.summary()["episode_ends"] == {"terminal": len(ended),
                                            "censored": ds.n_episodes - len(ended)}
    sub = ds.subset(np.flatnonzero(ds.censored))  # subsets keep the flags
    assert sub.censored.all() and not sub.terminals.any()


@pytest.mark.parametrize("kind", ["date_strings", "datetime", "text"])
def test_dates_as_time_name_the_first_row_and_say_how_to_number_steps(frame, manifest_dict,
                                                                      kind):
    """Dates named as the time got "must hold integers, got object values", no row, no hint."""
    f = frame.copy()
    day = pd.Timestamp("2024-01-01") + pd.to_timedelta(7 * f["week"], unit="D")
    f["week"] = {"date_strings": day.dt.strftime("%Y-%m-%d"), "datetime": day,
                 "text": "w" + f["week"].astype(str)}[kind]
    first = f["week"].iloc[0]
    shown = repr(first) if kind == "text" else str(first)
    err = assert_invalid(f, manifest_dict,
                         f"panel.csv: column 'week' (time) must hold integers; {len(f)} rows "
                         f"(first: 0, 1, 2, 3, 4, ...; 0-based data rows) do not (row 0: {shown},")
    if kind == "text":
        assert "Convert the column to integer steps" in str(err)
    else:
        assert "These look like dates: number each episode's rows in time order" in str(err)
        assert ("df['step'] = pd.to_datetime(df['week']).groupby(df['member_id'])"
                ".rank(method='first').astype(int) - 1") in str(err)
        # the hint's recipe gives a valid panel
        g = f.copy()
        g["week"] = pd.to_datetime(g["week"]).groupby(g["member_id"]).rank(
            method="first").astype(int) - 1
        assert validate_frame(g, Manifest.from_dict(manifest_dict), "panel.csv").ok


def test_an_empty_need_cell_is_one_problem_and_a_bad_one_shows_its_value(frame, manifest_dict):
    """An empty need cell was two problems ('is empty' and 'must be 0/1'); a value other than
    0/1 named its rows but not the value."""
    f = frame.copy()
    f["high_need"] = f["high_need"].astype(float)
    rows = f.index[f["member_id"] == f.loc[5, "member_id"]]
    f.loc[rows, "high_need"] = np.nan
    err = assert_invalid(f, manifest_dict, "column 'high_need' (need flag) is empty in")
    assert len(err.problems) == 1, err.problems
    f.loc[rows, "high_need"] = 2.0
    assert_invalid(f, manifest_dict, "column 'high_need' (need) must be 0/1; ",
                   f"are not (row {min(rows)}: 2.0, float64 values).")


def test_a_decimal_comma_in_the_time_is_not_taken_for_a_date(frame, manifest_dict):
    """pandas reads '1,5' as a date: the time error gave the date hint for a decimal comma."""
    frame["week"] = frame["week"].astype(str)
    frame.loc[4, "week"] = "1,5"
    err = str(assert_invalid(frame, manifest_dict, "panel.csv: column 'week' (time) must hold "
                             "integers; 1 row (first: 4; 0-based data rows) do not (row 4: "
                             "'1,5',"))
    assert "Convert the column to integer steps" in err and "look like dates" not in err


@pytest.mark.parametrize("kind", ["date_strings", "datetime"])
def test_dates_that_skip_days_are_named_before_rows_are_numbered(frame, manifest_dict, kind):
    """A daily panel with a pause: the date hint numbered its rows into one-step transitions.

    Following the hint on member m000's dates (a 9-day pause after its first row) validated
    with no word, the pause read as the next day; now the skipped dates are an error of their
    own, at the row after the pause, with what to decide before numbering.
    """
    f = frame.copy()
    day = pd.Timestamp("2024-01-01") + pd.to_timedelta(f["week"], unit="D")
    first = f.index[f["member_id"] == "m000"]
    after = first[f.loc[first, "week"].to_numpy().argsort()[1:]]  # rows after the first day
    day[after] += pd.Timedelta(days=8)
    f["week"] = day.dt.strftime("%Y-%m-%d") if kind == "date_strings" else day
    rows = after[0]  # the row after the pause
    err = assert_invalid(f, manifest_dict,
                         f"panel.csv: gaps in column 'week' (dates) within an episode at 1 row "
                         f"(first: {rows}; 0-based data rows): each of these rows comes more "
                         "than 1 day (the usual spacing of the panel's dates) after its "
                         "episode's previous row.",
                         "a pause or a leave and re-enrolment read as the next day: first give "
                         "each enrolment its own episode id")
    assert str(err).count("gaps in column") == 1
    g = frame.copy()  # the same dates without the pause: only the "look like dates" error
    g["week"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(g["week"], unit="D")).dt.strftime(
        "%Y-%m-%d")
    err = assert_invalid(g, manifest_dict, "These look like dates")
    assert "gaps in column" not in str(err)


def test_irregular_visit_dates_are_not_called_gaps(frame, manifest_dict):
    """Clinic visits 20-40 days apart: half the intervals exceed their median, none is a
    missing period (a row is a visit), so only the date hint is given."""
    f = frame.sort_values(["member_id", "week"]).copy()
    rng = np.random.default_rng(0)
    days = rng.integers(20, 41, size=len(f))
    first = f["member_id"].ne(f["member_id"].shift())
    days[first.to_numpy()] = 0
    f["week"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(
        pd.Series(days, index=f.index).groupby(f["member_id"]).cumsum(), unit="D")
                 ).dt.strftime("%Y-%m-%d")
    err = assert_invalid(f, manifest_dict, "These look like dates")
    assert "gaps in column" not in str(err)


def test_integer_time_gaps_say_a_gap_becomes_one_step_once_rows_are_numbered(frame,
                                                                           manifest_dict):
    f = frame.copy()
    first = f.index[f["member_id"] == "m000"]
    f.loc[first[f.loc[first, "week"].to_numpy().argsort()[1:]], "week"] += 8
    assert_invalid(f, manifest_dict, "Each gap then becomes one step, so first give each "
                   "enrolment its own episode id (and name the person's id as the manifest's "
                   "member, so that small groups count people, not enrolments) and decide what "
                   "a pause is (add rows for its missing steps, or split the episode there).")


def test_blank_group_labels_are_reported_beside_a_time_column_of_dates(frame, manifest_dict):
    """validate lists every problem: a daily export with dates as the time and blank race cells
    got the date error alone, and the blank race only on the next run, once the dates were
    numbered (the label check sat behind the keys' ordering)."""
    f = frame.copy()
    f["week"] = (pd.Timestamp("2024-01-01") + pd.to_timedelta(f["week"], unit="D")).dt.strftime(
        "%Y-%m-%d")
    f.loc[f.index[:3], "race"] = ""
    err = assert_invalid(f, manifest_dict, "These look like dates",
                         MSG_MISSING_GROUP.format(where="panel.csv", column="race",
                                                  rows="3 rows (first: 0, 1, 2; 0-based data "
                                                       "rows)"))
    assert len(err.problems) == 2


def _warning_with(frame: pd.DataFrame, manifest: dict, needle: str) -> str:
    """The first DataWarning of loading ``frame`` that contains ``needle``."""
    with pytest.warns(DataWarning) as rec:
        from_frame(frame, manifest, source="p.csv")
    return next(str(w.message) for w in rec if needle in str(w.message))


def test_small_group_levels_are_named_without_their_counts(manifest_dict):
    """A level with fewer than 11 episodes is named, its count (a small cell) is not."""
    frame = make_frame(n_members=40, seed=4)
    ids = frame["member_id"].unique()
    frame.loc[frame["member_id"].isin(ids[:7]), "race"] = "Pacific Islander"
    msg = _warning_with(frame, manifest_dict, "fewer than 11 episodes")
    assert "Pacific Islander" in msg and "Pacific Islander (" not in msg
    assert not re.search(r"\(\d+\)", msg), msg


def test_validate_frame_takes_a_dict_manifest_like_from_frame(manifest_dict):
    frame = make_frame(20)
    rep = validate_frame(frame, manifest_dict)
    ref = validate_frame(frame, Manifest.from_dict(manifest_dict))
    assert rep.ok and rep.errors == ref.errors and rep.warnings == ref.warnings
    bad = frame.drop(columns=["risk"])
    assert validate_frame(bad, manifest_dict).errors == validate_frame(
        bad, Manifest.from_dict(manifest_dict)).errors != []


def test_text_among_numbers_counts_and_shows_the_rows_that_are_not_numbers(frame,
                                                                          manifest_dict):
    frame["risk"] = frame["risk"].astype(str).astype(object)
    frame.loc[[3, 7], "risk"] = "high"
    frame.loc[5, "risk"] = None
    assert_invalid(frame, manifest_dict,
                   "panel.csv: column 'risk' (state) must hold numbers (the manifest declares it "
                   "numeric); 2 rows (first: 3, 7; 0-based data rows) are not numbers (row 3: "
                   "'high', object values).",
                   "column 'risk' (state) is empty in 1 row (first: 5; 0-based data rows).")


def test_a_component_left_empty_where_it_does_not_apply_says_how_to_fill_it(frame,
                                                                             manifest_dict):
    """A care export leaves provider, goal and urgency blank on no-contact weeks (80% of rows);
    the error said only 'is empty in 90,094 rows; expected one of [...]'."""
    frame["urgency"] = frame["urgency"].astype(object)
    none = frame["modality"] == "none"
    frame.loc[none, "urgency"] = None
    err = str(assert_invalid(frame, manifest_dict,
                             "column 'urgency' (action component 'urgency') is empty in "))
    assert ("; expected one of ['routine', 'urgent']. These are the rows where 'modality' is "
            "'none'; a component that does not apply there still needs a level: fill those "
            "cells with one fixed level (e.g. df['urgency'] = df['urgency'].fillna('routine')) "
            "or add a level saying so (e.g. 'none') to its levels in the manifest.") in err
    frame.loc[~none, "urgency"] = None  # empty on other rows too: no claim about where
    err = str(assert_invalid(frame, manifest_dict, "; expected one of ['routine', 'urgent']. "
                             "A component that does not apply on some rows still needs a "
                             "level: fill those cells"))
    assert "is 'none'" not in err


def test_a_missing_action_label_is_reported_as_empty_not_nan(frame, manifest_dict):
    frame["modality"] = frame["modality"].astype(object)
    frame.loc[[2, 4], "modality"] = None
    err = str(assert_invalid(frame, manifest_dict,
                             "column 'modality' (action component 'modality') is empty in 2 rows "
                             "(first: 2, 4; 0-based data rows)"))
    assert "'nan'" not in err and "not among the declared levels" not in err


@pytest.mark.parametrize("k, shown", [(3, False), (11, True)])
def test_summary_shares_of_1_to_10_members_or_rows_are_not_published(manifest_dict, k, shown):
    """The summary is published (validate, the run's data_summary.json and report) with the
    panel's episode and step counts, so its shares give counts back: 3 terminal episodes
    (deaths, say) read '3 terminal', a primary outcome in 3 rows a share of the steps (also in
    the sparse-reward warning), need in 3 episodes 1.00% of 300. Such counts of 1 to 10 (or
    all but 1 to 10) are None now; 11 or more are published."""
    frame = make_frame(n_members=300)
    manifest_dict["dataset"]["terminal"] = "done"
    order = frame.sort_values(["member_id", "week"]).index
    last = frame.loc[order].groupby("member_id").tail(1)
    frame["done"] = 0
    frame.loc[last.index[:k], "done"] = 1
    frame["r_primary"] = 0.0
    frame.loc[frame.index[:k], "r_primary"] = -1.0
    frame["high_need"] = frame["member_id"].isin(last["member_id"].iloc[:k]).astype(int)
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    s = ds.summary()
    n_ep, n_rows = ds.n_episodes, ds.n_steps
    if shown:
        assert s["episode_ends"] == {"terminal": k, "censored": n_ep - k}
        assert s["reward_nonzero_pct"]["primary"] == pytest.approx(100 * k / n_rows)
        assert s["need_pct"] == pytest.approx(100 * k / n_ep)
    else:
        assert s["episode_ends"] == {"terminal": None, "censored": None}
        assert s["reward_nonzero_pct"]["primary"] is None and s["need_pct"] is None
    assert s["reward_nonzero_pct"]["engagement"] is not None      # every row: not a small cell
    with pytest.warns(DataWarning) as rec:
        from_frame(frame, manifest_dict, source="p.csv")
    text = " | ".join(str(w.message) for w in rec)
    said = text.split("'primary' (column 'r_primary') is non-zero in only ")[1].split(" (<")[0]
    assert said == (f"{100 * k / n_rows:.2f}% of rows" if shown else "1 to 10 rows")


def test_small_group_level_names_the_levels_hidden_with_it(manifest_dict):
    """Three members of sex X hide M too (with one other level and a published total, the
    total minus F gives M + X): the validate table read 'M suppressed' next to 'F 4,314' with
    no word of why. The warning names M as hidden by complementary suppression."""
    frame = make_frame(n_members=60, seed=5)
    ids = frame["member_id"].unique()
    frame.loc[frame["member_id"].isin(ids[:3]), "sex"] = "x"
    msg = _warning_with(frame, manifest_dict, "group attribute 'sex'")
    hidden = "f" if (frame.groupby("member_id")["sex"].first() == "f").sum() < (
        frame.groupby("member_id")["sex"].first() == "m").sum() else "m"
    assert msg.endswith(f"episodes: x; they are suppressed in published tables, and so is "
                        f"{hidden}, so that they cannot be recovered by difference from the "
                        "total (complementary suppression)."), msg
    assert not re.search(r"\(\d+\)", msg), msg


def test_a_group_of_few_members_with_many_episodes_is_withheld_and_said():
    """A substance-use panel with re-enrolments (same person, 2-4 treatment episodes): sex X had
    12 episodes of 5 people and race middle_eastern 23 of 7, and validate's summary published
    both counts (the rule counted episodes only). With the manifest's ``member`` a level of
    fewer than 11 people is suppressed like a small one, with its complement, and a warning
    says why."""
    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame()
    with pytest.warns(DataWarning) as rec:
        ds = from_frame(frame, man, source="p.csv")
    said = " | ".join(str(w.message) for w in rec)
    assert ("group attribute 'race' has levels with at least 11 episodes but fewer than 11 "
            "members (column 'person': people who re-enrol have several episodes): d;") in said
    assert ds.n_episodes == 80 and len(set(ds.members)) == 70
    assert ds.few_member_levels() == {"race": {"d"}}
    shown = ds.summary()["groups"]["race"]
    assert shown["d"] is None and sum(v is None for v in shown.values()) >= 2  # + complement
    # without the member column the 15 episodes of 5 people were published
    del man["dataset"]["member"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert from_frame(frame, man).summary()["groups"]["race"]["d"] == 15


def test_a_member_id_that_changes_within_an_episode_is_an_error():
    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame()
    frame.loc[frame.index[frame["member_id"] == frame["member_id"].iloc[0]][0], "person"] = "zz"
    rep = validate_frame(frame, man, source="p.csv")
    assert not rep.ok
    assert any("column 'person' (member id) changes within an episode" in e for e in rep.errors)


def test_propensities_logged_on_some_rows_only_say_what_to_do(frame, manifest_dict):
    """A treatment programme whose 5 of 40 sites log no propensities: validate said "must lie
    in (0, 1]; 11625 rows ... (row 212: nan)" and nothing about what to do. An empty cell is now
    reported as empty, with the two ways on: estimate them all, or keep the logging episodes."""
    frame.loc[[6, 9], "propensity"] = np.nan
    frame.loc[3, "propensity"] = 1.5
    err = assert_invalid(
        frame, manifest_dict,
        "column 'propensity' (behaviour propensity) is empty in 2 rows (first: 6, 9;",
        "equicare takes logged propensities on every row or on none",
        "remove dataset.behavior_prob from the manifest",
        "df.groupby('member_id')['propensity'].transform(lambda p: p.notna().all())",
        "must lie in (0, 1]; 1 row (first: 3;")
    assert "(row 6: nan" not in str(err)
