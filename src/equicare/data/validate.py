"""Validation of a panel table against its manifest, with errors that say where and what.

Every problem names the source (file), the column, the first offending rows (0-based data rows,
header excluded, in the file's original order), how many rows are affected and what was expected.
Validation never modifies anything on disk.
"""

from __future__ import annotations

import datetime
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.data._labels import MSG_MISSING_GROUP, missing_labels
from equicare.data._manifest import ActionColumn, Manifest
from equicare.data._stream_summary import SummaryParts
from equicare.exceptions import DataValidationError, DataWarning
from equicare.privacy import small_count, suppress_counts
from equicare.utils import MIN_CELL

__all__ = ["ValidationReport", "validate_frame", "encode_actions", "SPARSE_REWARD_PCT",
           "NO_TERMINAL_NOTE", "PanelCounts", "panel_warnings", "EXAMPLE_ROW_RE",
           "FEW_EPISODES_MESSAGE", "check_episodes", "HOLDOUT_EPISODES_MESSAGE",
           "split_holdout", "MSG_NUMBERS_AS_TEXT", "MSG_TEXT_NOT_NUMBERS", "text_numbers",
           "CSV_NULLS"]

#: Note of a manifest without ``dataset.terminal`` (Contract 1: every episode end is censored).
NO_TERMINAL_NOTE = "no 'terminal' column: every episode end is treated as censored"

#: Too few episodes for a computation that resamples, splits or cross-fits them (tests match it).
FEW_EPISODES_MESSAGE = ("{source}the panel has {n} episode{s}; {owner} needs at least {minimum} "
                        "because {why}.")

#: Too few episodes held out for an evaluation (tests match it).
HOLDOUT_EPISODES_MESSAGE = (
    "{source}the panel has {n} episode{s}; {owner} holds out {share:g} of them ({k} here) for "
    "{purpose} and needs at least 2 there because {why}. Give it a panel with more episodes.")

#: Reward components non-zero in fewer than this % of rows raise a sparsity warning.
SPARSE_REWARD_PCT = 1.0
_SHOW = 5


@dataclass
class PanelCounts:
    """Additive counts behind the panel-level warnings (one chunk of whole episodes, or a panel).

    Attributes
    ----------
    n_rows : int
    action_counts : ndarray of shape (n_actions,)
        Rows per flat action.
    reward_nonzero : dict of str to int
        Rows where each reward component (by name) is non-zero.
    group_counts : dict of str to dict of str to int
        Episodes per level of each group attribute (the level of the episode's first row).
    group_members : dict of str to dict of str to set of str
        With the manifest's ``member``: the members of each level of each group attribute
        (people who re-enrol have several episodes; a level of fewer than 11 people is small).
    summary : SummaryParts, optional
        The rest of the panel summary (set by :func:`~equicare.data.validate_stream`).
    """

    n_rows: int
    action_counts: NDArray[np.int64]
    reward_nonzero: dict[str, int] = field(default_factory=dict)
    group_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    group_members: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    summary: SummaryParts | None = None

    def __add__(self, other: PanelCounts) -> PanelCounts:
        def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}

        return PanelCounts(
            n_rows=self.n_rows + other.n_rows,
            action_counts=self.action_counts + other.action_counts,
            reward_nonzero=merge(self.reward_nonzero, other.reward_nonzero),
            group_counts={g: merge(self.group_counts.get(g, {}), other.group_counts.get(g, {}))
                          for g in dict.fromkeys([*self.group_counts, *other.group_counts])},
            group_members={g: {k: self.group_members.get(g, {}).get(k, set())
                               | other.group_members.get(g, {}).get(k, set())
                               for k in dict.fromkeys([*self.group_members.get(g, {}),
                                                       *other.group_members.get(g, {})])}
                           for g in dict.fromkeys([*self.group_members, *other.group_members])},
            summary=(self.summary if other.summary is None else other.summary
                     if self.summary is None else self.summary + other.summary))


def panel_warnings(counts: PanelCounts, manifest: Manifest, source: str) -> list[str]:
    """The panel-level warnings (unobserved actions, sparse rewards, small group levels).

    From counts that add up over chunks, so a streamed validation warns as the in-memory one.
    """
    out = []
    space = manifest.action_space
    n_obs = int((counts.action_counts > 0).sum())
    if n_obs < space.n_actions:
        out.append(
            f"{source}: {space.n_actions - n_obs} of {space.n_actions} action combinations are "
            f"never observed ({n_obs} observed); policies putting mass on them cannot be "
            "evaluated by importance sampling."
        )
    for r in manifest.reward:
        nz = counts.reward_nonzero.get(r.name, 0)
        pct = 100.0 * nz / max(counts.n_rows, 1)
        if pct < SPARSE_REWARD_PCT:  # a share of 1-10 rows gives them back: not shown
            shown = (f"{pct:.2f}% of rows" if small_count(nz, counts.n_rows) is not None
                     else f"1 to {MIN_CELL - 1} rows")
            out.append(
                f"{source}: reward component {r.name!r} (column {r.column!r}) "
                f"is non-zero in only {shown} (< {SPARSE_REWARD_PCT:g}%); estimates will be "
                "noisy."
            )
    for g in manifest.groups:
        levels = counts.group_counts.get(g)
        if levels is None:
            continue
        # the levels only: a count below MIN_CELL is itself a small cell, never printed
        small = [str(lv) for lv, c in sorted(levels.items()) if c < MIN_CELL]
        if small:
            # and the levels hidden with them (a sex with 3 members of X hides M's 3,683 too:
            # the validate table read "M suppressed" with no word of why)
            published = suppress_counts({str(k): int(v) for k, v in levels.items()})
            more = [lv for lv, v in sorted(published.items()) if v is None and lv not in small]
            also = ("" if not more else
                    f", and so {'is' if len(more) == 1 else 'are'} {', '.join(more)}, so that "
                    "they cannot be recovered by difference from the total (complementary "
                    "suppression)")
            out.append(
                f"{source}: group attribute {g!r} has levels with fewer than {MIN_CELL} "
                f"episodes: {', '.join(small)}; they are suppressed in published tables{also}."
            )
        people = counts.group_members.get(g, {})
        few = sorted(lv for lv, who in people.items()
                     if 0 < len(who) < MIN_CELL and levels.get(lv, 0) >= MIN_CELL)
        if few:
            out.append(MSG_FEW_MEMBERS.format(source=source, group=g, min_cell=MIN_CELL,
                                              levels=", ".join(few), member=manifest.member))
    return out


#: A group level with enough episodes but fewer than 11 people (members who re-enrol).
MSG_FEW_MEMBERS = (
    "{source}: group attribute {group!r} has levels with at least {min_cell} episodes but fewer "
    "than {min_cell} members (column {member!r}: people who re-enrol have several episodes): "
    "{levels}; they are suppressed in published tables like levels of fewer than {min_cell} "
    "episodes, with the levels that would give them back by difference.")


@dataclass
class ValidationReport:
    """What validation found.

    Attributes
    ----------
    source : str
        File or table the rows came from.
    errors : list of str
        Problems that make the table unusable.
    warnings : list of str
        Valid but suspicious findings.
    notes : list of str
        How the data will be read, one line each (e.g. :data:`NO_TERMINAL_NOTE`); never raised
        or emitted as warnings.
    order : ndarray of shape (n_rows,), optional
        Row order that sorts the table by (episode, time); set when the keys are usable.
    episode_codes, action_codes : arrays, optional
        Encodings computed during validation, reused by the loader.
    counts : PanelCounts, optional
        The counts behind the panel-level warnings (set when the rows are usable).
    numbers : dict of str to Series
        Columns the manifest declares numeric that were stored as text, read as numbers
        (:data:`MSG_NUMBERS_AS_TEXT`); the loader builds the dataset from these.
    """

    source: str
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    order: NDArray[np.int64] | None = None
    episode_codes: NDArray[np.int64] | None = None
    episode_uniques: NDArray[Any] | None = None
    action_codes: NDArray[np.int64] | None = None
    counts: PanelCounts | None = None
    numbers: dict[str, pd.Series] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when there are no errors."""
        return not self.errors

    def raise_if_errors(self) -> None:
        """Raise :class:`DataValidationError` listing every error."""
        if self.errors:
            head = (
                self.errors[0]
                if len(self.errors) == 1
                else f"{len(self.errors)} problems in {self.source}:\n  " + "\n  ".join(self.errors)
            )
            raise DataValidationError(head, self.errors)

    def emit_warnings(self) -> None:
        """Emit every finding as a :class:`DataWarning`."""
        for w in self.warnings:
            warnings.warn(w, DataWarning, stacklevel=3)


def _rows_global(mask: NDArray[np.bool_], original_row: NDArray[np.int64] | None = None,
                 row_numbers: NDArray[np.int64] | None = None) -> str:
    idx = np.flatnonzero(mask)
    if original_row is not None:
        idx = original_row[idx]
    if row_numbers is not None:  # a chunk of a larger panel: report the panel's own rows
        idx = row_numbers[idx]
    idx = np.sort(idx)
    shown = ", ".join(str(int(i)) for i in idx[:_SHOW])
    more = "" if idx.size <= _SHOW else ", ..."
    noun = "row" if idx.size == 1 else "rows"
    return f"{idx.size} {noun} (first: {shown}{more}; 0-based data rows)"


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


#: Text that may be a date: a separator of dates or times, or a month's name (pandas also reads
#: "1,5", a decimal comma, as a date).
_DATE_TEXT = re.compile(r"[-/:.\s]|[A-Za-z]")

#: A column the manifest declares numeric, stored as text whose every value is a number: the
#: manifest wins, and the text is read as numbers, as a CSV file's is (a warning, not an error).
MSG_NUMBERS_AS_TEXT = (
    "{source}: column {column!r} ({what}) is stored as text ({dtype}); the manifest declares it "
    "numeric, so its values are read as numbers, as from a CSV file. Store it as numbers to "
    "avoid this warning, e.g. df[{column!r}] = pd.to_numeric(df[{column!r}]).")
#: A column the manifest declares numeric, stored as text with values that are not numbers.
MSG_TEXT_NOT_NUMBERS = (
    "{source}: column {column!r} ({what}) must hold numbers (the manifest declares it numeric); "
    "{rows} are not numbers (row {row}: {value!r}, {dtype} values).")
#: Text read as 0/1 in the flag columns (terminal, need), as a CSV reader reads booleans.
_FLAG_TEXT = {"true": "1", "false": "0"}
# pandas.read_csv's default na_values: every CSV reader of equicare treats these cells as
# missing (pyarrow's own defaults lack '<NA>', 'None' and 'n/a', and keep empty text cells as
# ""), and so does :func:`text_numbers` in a numeric column stored as text
CSV_NULLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def _is_text(s: pd.Series) -> bool:
    """True for a column of text (object, string or categorical), not numbers, booleans or dates."""
    return not (_is_numeric(s) or pd.api.types.is_bool_dtype(s.dtype)
                or pd.api.types.is_datetime64_any_dtype(s.dtype))


def _numeric_roles(manifest: Manifest) -> list[tuple[str, str, bool]]:
    """The columns the manifest declares numeric: ``(column, what, flag)`` (flag: 0/1 column)."""
    out = [(manifest.time, "time", False)]
    out += [(c, "state", False) for c in manifest.states]
    out += [(c, "mediator", False) for c in manifest.mediators]
    out += [(r.column, f"reward component {r.name!r}", False) for r in manifest.reward]
    out += [(c, what, flag) for c, what, flag in (
        (manifest.terminal, "terminal", True), (manifest.behavior_prob, "behaviour propensity",
                                                 False), (manifest.need, "need flag", True)) if c]
    first: dict[str, tuple[str, str, bool]] = {}
    for role in out:  # a column named twice (a state that is also the reward): its first role
        first.setdefault(role[0], role)
    return list(first.values())


def _first_bad(mask: NDArray[np.bool_], row_numbers: NDArray[np.int64] | None
               ) -> tuple[int, int]:
    """The first flagged row: its position in the frame and its row in the panel."""
    pos = np.flatnonzero(mask)
    first = int(pos[0] if row_numbers is None else pos[np.argmin(row_numbers[pos])])
    return first, first if row_numbers is None else int(row_numbers[first])


def text_numbers(s: pd.Series, flag: bool = False) -> tuple[pd.Series, NDArray[np.bool_]]:
    """A text column read as numbers, as a CSV reader reads it; and where a value is not one.

    Blank cells, missing values and the missing-value markers of a CSV file (:data:`CSV_NULLS`:
    ``n/a``, ``NA``, ``NULL``, ...) become NaN (missing, not "not a number"), as a CSV reader
    reads them; surrounding spaces are ignored; ``flag`` also reads ``true``/``false`` (any
    case) as 1/0.

    Parameters
    ----------
    s : Series of shape (n_rows,)
        Object, string or categorical values.
    flag : bool
        The column is a 0/1 flag (terminal, need).

    Returns
    -------
    values : Series of shape (n_rows,), float64
        NaN where the cell is missing or not a number.
    not_number : ndarray of shape (n_rows,), bool
        Cells that hold something other than a number (or blank).
    """
    txt = s.astype("string").str.strip()
    if flag:
        low = txt.str.lower()
        txt = txt.mask(low.isin(list(_FLAG_TEXT)), low.map(_FLAG_TEXT))
    blank = (txt.isna() | txt.isin(CSV_NULLS)).to_numpy(dtype=bool)
    num = pd.to_numeric(txt.mask(blank), errors="coerce")
    values = num.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.Series(values, index=s.index, name=s.name), np.isnan(values) & ~blank

#: How to turn dates into the time column (the error of a time column of dates).
MSG_DATE_HINT = (
    "These look like dates: number each episode's rows in time order and name that column as "
    "the manifest's time, e.g. in pandas df['step'] = pd.to_datetime(df[{time!r}])"
    ".groupby(df[{episode!r}]).rank(method='first').astype(int) - 1 (a decision step is a row; "
    "for a regular grid such as weeks, (date - the episode's first date).days // 7 keeps "
    "missing weeks visible, and they are then refused as gaps).")

#: What to do about a state column with missing values (a lab measured on some rows only).
MSG_MISSING_STATE = (
    " equicare does not fill missing states: for a measurement taken on some rows only (a lab "
    "test), carry the last value forward within the episode, e.g. df[{column!r}] = "
    "df.groupby({episode!r})[{column!r}].ffill(), fill the rows before the first measurement "
    "(the median, say) and add a 0/1 state column saying which rows had no measurement yet; "
    "or impute it otherwise.")
#: What to do about propensities logged on some rows only (sites or periods that do not log them).
MSG_EMPTY_PROPENSITY = (
    "{source}: column {column!r} (behaviour propensity) is empty in {rows}; equicare takes "
    "logged propensities on every row or on none. To use every row, remove dataset.behavior_prob "
    "from the manifest: evaluate, audit, train and mediate then estimate every propensity with a "
    "behaviour model (--behavior-model). Or keep the episodes that log them, e.g. "
    "df = df[df.groupby({episode!r})[{column!r}].transform(lambda p: p.notna().all())], whose "
    "values then describe those episodes only.")
#: What to do about a reward column with missing values (an outcome on the last row only).
MSG_MISSING_REWARD = (
    " A reward recorded on some rows only (an outcome on the episode's last row) is 0 on the "
    "others: fill them, e.g. df[{column!r}] = df[{column!r}].fillna(0).")

#: What to do about an action component left empty where it does not apply (no contact has no
#: provider): every row needs a level of every component.
MSG_EMPTY_COMPONENT = (
    " {where} still needs a level: fill those cells with one fixed level (e.g. "
    "df[{column!r}] = df[{column!r}].fillna({level!r})) or add a level saying so (e.g. "
    "'none') to its levels in the manifest.")

#: Dates of an episode further apart than the panel's usual spacing (a pause, a re-enrolment).
MSG_DATE_GAPS = (
    "{source}: gaps in column {time!r} (dates) within an episode at {rows}: each of these rows "
    "comes more than {spacing} (the usual spacing of the panel's dates) after its episode's "
    "previous row. Numbering the rows as above would make each gap one step, a pause or a "
    "leave and re-enrolment read as the next {unit}: {advice}")

#: What to do about gaps before numbering rows (a pause is not the next step).
GAP_ADVICE = ("first give each enrolment its own episode id (and name the person's id as the "
              "manifest's member, so that small groups count people, not enrolments) and decide "
              "what a pause is (add rows for its missing {unit}s, or split the episode there).")


def _empty_component_hint(manifest: Manifest, a: ActionColumn, empty: NDArray[np.bool_],
                          earlier: Sequence[NDArray[np.int64]]) -> str:
    """:data:`MSG_EMPTY_COMPONENT` for an action component empty on some rows.

    When every empty row has the first component at its first level (``modality = 'none'``:
    no contact, hence no provider), the message names that level, as where the component does
    not apply.
    """
    first = manifest.actions[0]
    where = "A component that does not apply on some rows"
    if a is not first and earlier and (earlier[0][empty] == 0).all():
        where = (f"These are the rows where {first.column!r} is {first.levels[0]!r}; a "
                 "component that does not apply there")
    return MSG_EMPTY_COMPONENT.format(where=where, column=a.column, level=str(a.levels[0]))


#: The example row a message shows after its rows (``(row 5: 2024-01-01, object values)``):
#: each chunk of a streamed panel shows its own, so chunks' messages merge without it.
EXAMPLE_ROW_RE = re.compile(r"\(row (\d+): .*?, [^()]*? values\)")


def _time_not_integer(t: pd.Series, manifest: Manifest, source: str,
                      row_numbers: NDArray[np.int64] | None) -> tuple[str, bool]:
    """The error for a time column that is not numeric: first bad row and value, and a hint.

    Parameters
    ----------
    t : Series of shape (n_rows,)
        The time column (dates, strings or booleans).

    Returns
    -------
    message : str
    dates : bool
        The column looks like dates (:func:`_date_gaps` then looks for skipped dates).
    """
    if pd.api.types.is_bool_dtype(t.dtype):
        bad = np.ones(len(t), dtype=bool)
    else:
        num = pd.to_numeric(t, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(num) | (np.floor(num) != num)
    if not bad.any():  # pragma: no cover - a non-numeric dtype always has a non-number
        bad = np.ones(len(t), dtype=bool)
    first, row = _first_bad(bad, row_numbers)
    value = t.iloc[first]
    dates = (pd.api.types.is_datetime64_any_dtype(t.dtype)
             or isinstance(value, (datetime.date, np.datetime64)))  # Arrow CSV reads date32
    if not dates and isinstance(value, str) and _DATE_TEXT.search(value):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas warns when it guesses a date format
            dates = not pd.isna(pd.to_datetime(pd.Series([value]), errors="coerce").iloc[0])
    hint = (MSG_DATE_HINT.format(time=manifest.time, episode=manifest.episode) if dates else
            "Convert the column to integer steps (0, 1, 2, ... within an episode).")
    shown = str(value) if dates else repr(value)
    return (f"{source}: column {manifest.time!r} (time) must hold integers; "
            f"{_rows_global(bad, None, row_numbers)} do not (row {row}: {shown}, "
            f"{t.dtype} values). {hint}"), dates


#: Share of an episode's consecutive dates at the usual spacing that makes the dates a grid.
REGULAR_SHARE = 0.8


def _date_gaps(t: pd.Series, codes: NDArray[np.int64], manifest: Manifest, source: str,
               row_numbers: NDArray[np.int64] | None) -> str | None:
    """The error for dates that skip the panel's usual spacing within an episode, if any.

    The date hint numbers each episode's rows, which turns a pause of two weeks (or a leave and
    a re-enrolment under the same id) into a one-step transition without a word; this says
    where that would happen. The spacing is the median gap between consecutive dates of an
    episode (one day for a daily panel); a gap longer than it is reported at its later row.
    Only dates on a regular grid are checked (at least :data:`REGULAR_SHARE` of the gaps equal
    the spacing): irregular visits have no missing period, and a row is their step.

    Parameters
    ----------
    t : Series of shape (n_rows,)
        The time column, dates (text or datetime).
    codes : ndarray of shape (n_rows,)
        Episode codes of the rows.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it guesses a date format
        when = pd.to_datetime(t, errors="coerce")
    ns = when.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ok = when.notna().to_numpy()
    order = np.lexsort((ns, codes))
    order = order[ok[order]]  # unreadable dates (NaT) are left out
    same = codes[order][1:] == codes[order][:-1]
    step = np.diff(ns[order])[same]
    if step.size == 0 or np.median(step) <= 0:
        return None
    spacing = pd.Timedelta(int(np.median(step)), unit="ns")
    if np.mean(step == spacing.value) < REGULAR_SHARE:
        return None
    gap = np.zeros(len(t), dtype=bool)
    gap[order[1:][same][step > spacing.value]] = True
    if not gap.any():
        return None
    days = spacing / pd.Timedelta(days=1)
    unit = "day" if days < 7 else "week" if days < 28 else "period"
    said = (f"{days:g} day" + ("" if days == 1 else "s") if days == round(days)
            else str(spacing))
    return MSG_DATE_GAPS.format(source=source, time=manifest.time, spacing=said, unit=unit,
                                rows=_rows_global(gap, None, row_numbers),
                                advice=GAP_ADVICE.format(unit=unit))


def encode_actions(col: pd.Series, spec: ActionColumn) -> NDArray[np.int64]:
    """Map an action column (labels or integer codes) to codes, -1 where the value is not a level.

    Parameters
    ----------
    col : pandas.Series of shape (n_rows,)
    spec : ActionColumn

    Returns
    -------
    ndarray of shape (n_rows,), int64
    """
    uniq = pd.unique(col)
    labels = {lv: i for i, lv in enumerate(spec.levels)}
    numeric_labels = all(_looks_int(lv) for lv in spec.levels)
    table = np.full(len(uniq), -1, dtype=np.int64)
    for i, u in enumerate(uniq):
        if u is None or (isinstance(u, float) and np.isnan(u)):
            continue
        key = _label_of(u)
        if key in labels and (not spec.integer_levels or numeric_labels):
            table[i] = labels[key]
        elif (not numeric_labels) and _is_integral(u) and 0 <= int(u) < len(spec.levels):
            table[i] = int(u)  # integer codes into a label list
    pos = pd.Index(uniq).get_indexer(col)
    return table[pos]


def _looks_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def _is_integral(u: Any) -> bool:
    if isinstance(u, bool | np.bool_):
        return False
    if isinstance(u, int | np.integer):
        return True
    return isinstance(u, float | np.floating) and float(u).is_integer()


def _label_of(u: Any) -> str:
    if isinstance(u, float | np.floating) and float(u).is_integer():
        return str(int(u))
    return str(u)


def validate_frame(
    df: pd.DataFrame,
    manifest: Manifest | Mapping[str, Any] | str | os.PathLike[str],
    source: str = "<table>",
    raw_columns: list[str] | None = None,
    row_numbers: NDArray[np.int64] | None = None,
    panel_level: bool = True,
) -> ValidationReport:
    """Check a table against a manifest.

    Parameters
    ----------
    df : pandas.DataFrame of shape (n_rows, n_columns)
    manifest : Manifest, dict or path to a TOML manifest
        As :func:`~equicare.data.from_frame` takes it.
    source : str
        Name used in messages (the file path).
    raw_columns : list of str, optional
        Column names as they appear in the file (to detect duplicates that readers rename).
    row_numbers : ndarray of shape (n_rows,), optional
        The rows' numbers in the whole panel when ``df`` is one chunk of it (messages then name
        the panel's rows, not the chunk's).
    panel_level : bool
        Add the panel-level warnings (unobserved actions, sparse rewards, small group levels).
        False for a chunk: its ``counts`` are summed over the chunks and warned on once
        (:func:`panel_warnings`).

    Returns
    -------
    ValidationReport
        Errors and warnings; nothing is raised here.
    """
    from equicare.data._manifest import manifest_of

    manifest = manifest_of(manifest)
    rep = ValidationReport(source=source)

    def _rows(mask: NDArray[np.bool_], original_row: NDArray[np.int64] | None = None) -> str:
        return _rows_global(mask, original_row, row_numbers)

    err = rep.errors.append
    cols = list(raw_columns) if raw_columns is not None else [str(c) for c in df.columns]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    for c in dup:
        err(f"{source}: column {c!r} appears {cols.count(c)} times; column names must be unique.")
    if len(df) == 0:
        err(f"{source}: the table is empty (no rows); expected one row per member and time step.")
        return rep
    roles: list[tuple[str, str]] = [
        (manifest.episode, "dataset.episode"),
        (manifest.time, "dataset.time"),
    ]
    roles += [(c, "dataset.states") for c in manifest.states]
    roles += [(c, "dataset.categorical_states") for c in manifest.categorical_states]
    roles += [(c, "dataset.mediators") for c in manifest.mediators]
    roles += [(c, "dataset.groups") for c in manifest.groups]
    roles += [(a.column, f"actions.{a.name}") for a in manifest.actions]
    roles += [(r.column, f"reward.{r.name}") for r in manifest.reward]
    roles += [
        (c, f"dataset.{k}")
        for k in ("terminal", "behavior_prob", "need", "member")
        if (c := getattr(manifest, k))
    ]
    present = set(df.columns)
    missing = [(c, k) for c, k in roles if c not in present]
    for c, k in missing:
        import difflib

        close = difflib.get_close_matches(c, [str(x) for x in df.columns], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        err(f"{source}: column {c!r} (named by {k} in {manifest.source}) is missing{hint}")
    if missing or dup:
        return rep
    n = len(df)

    # ---- text in columns the manifest declares numeric: read as numbers, as from a CSV file
    # (the manifest wins); a value that is not a number is an error naming its first row
    not_numbers: set[str] = set()
    for c, what, flag in _numeric_roles(manifest):
        s = df[c]
        if not _is_text(s):
            continue
        values, bad_text = text_numbers(s, flag)
        if bad_text.any() and c == manifest.time:
            continue  # dates or other text: the time checks below say which, with a hint
        if bad_text.any():
            first, row = _first_bad(bad_text, row_numbers)
            err(MSG_TEXT_NOT_NUMBERS.format(source=source, column=c, what=what, dtype=s.dtype,
                                            rows=_rows(bad_text), row=row,
                                            value=str(s.iloc[first])))
            empty = values.isna().to_numpy() & ~bad_text
            if empty.any():
                err(f"{source}: column {c!r} ({what}) is empty in {_rows(empty)}.")
            not_numbers.add(c)
        else:
            rep.numbers[c] = values
            rep.warnings.append(MSG_NUMBERS_AS_TEXT.format(source=source, column=c, what=what,
                                                           dtype=s.dtype))
    if rep.numbers:  # a shallow copy: the caller's frame keeps its columns
        df = df.copy(deep=False)
        for c, values in rep.numbers.items():
            df[c] = values

    # ---- keys: episode and time
    ep = df[manifest.episode]
    bad = ep.isna().to_numpy()
    if bad.any():
        err(f"{source}: column {manifest.episode!r} (episode id) is empty in {_rows(bad)}.")
    t = df[manifest.time]
    t_ok = False
    if not _is_numeric(t):
        message, dates = _time_not_integer(t, manifest, source, row_numbers)
        err(message)
        if dates and not bad.any():
            gaps = _date_gaps(t, pd.factorize(ep)[0].astype(np.int64), manifest, source,
                              row_numbers)
            if gaps is not None:
                err(gaps)
    else:
        tv = t.to_numpy(dtype=np.float64, na_value=np.nan)
        bad_t = ~np.isfinite(tv) | (np.floor(tv) != tv)
        if bad_t.any():
            first, row = _first_bad(bad_t, row_numbers)
            err(
                f"{source}: column {manifest.time!r} (time) must hold integers; "
                f"{_rows(bad_t)} do not (row {row}: {tv[first]:g}, {t.dtype} values); expected "
                "steps 0, 1, 2, ... within an episode."
            )
        else:
            t_ok = True
    # groups and need need a label on every row: found whether or not the keys can be ordered
    # (a time column of dates hid the blank race cells until it was fixed)
    keyed = [(g, "group attribute") for g in manifest.groups] + (
        [(manifest.need, "need flag")] if manifest.need else []) + (
        [(manifest.member, "member id")] if manifest.member else [])
    unlabelled: dict[str, str] = {}
    for c, what in keyed:
        if c in manifest.groups:  # the check TrajectoryDataset and group_index make too
            blank = missing_labels(df[c])
            if blank.any():
                unlabelled[c] = MSG_MISSING_GROUP.format(where=source, column=c,
                                                         rows=_rows(blank))
                continue
        isna = df[c].isna().to_numpy()
        if isna.any():
            unlabelled[c] = f"{source}: column {c!r} ({what}) is empty in {_rows(isna)}."
    if not (t_ok and not bad.any()):
        rep.errors.extend(unlabelled.values())
    else:
        codes, uniques = pd.factorize(ep, sort=True)
        times = t.to_numpy(dtype=np.int64)
        order = np.lexsort((times, codes))
        c_s, t_s = codes[order], times[order]
        same = c_s[1:] == c_s[:-1]
        dt = np.diff(t_s)
        dupkey = np.r_[False, same & (dt == 0)]
        gap = np.r_[False, same & (dt > 1)]
        if dupkey.any():
            err(
                f"{source}: duplicate ({manifest.episode}, {manifest.time}) keys in "
                f"{_rows(dupkey, order)}; expected one row per episode and time step."
            )
        if gap.any():
            err(
                f"{source}: gaps in column {manifest.time!r} within an episode at "
                f"{_rows(gap, order)}; expected consecutive time steps (t, t+1, ...). If the "
                "times are dates or irregular visits, add a column numbering each episode's rows "
                "0, 1, 2, ... in time order and name it as the manifest's time (a decision step "
                "is a row; missing periods are not imputed). Each gap then becomes one step, so "
                + GAP_ADVICE.format(unit="step")
            )
        rep.order = order.astype(np.int64)
        rep.episode_codes = codes.astype(np.int64)
        rep.episode_uniques = np.asarray(uniques)
        starts = np.r_[True, ~same]
        first_row_of = order[np.maximum.accumulate(np.where(starts, np.arange(n), 0))]
        # per-episode constancy of groups and need
        for c, what in keyed:
            if c in unlabelled:
                err(unlabelled[c])
                continue
            if c in not_numbers:  # reported above
                continue
            v = pd.factorize(df[c])[0]
            changed = v[order] != v[first_row_of]
            if changed.any():
                err(
                    f"{source}: column {c!r} ({what}) changes within an episode in "
                    f"{_rows(changed, order)}; expected one value per episode."
                )

    # ---- numeric columns
    def numeric_check(c: str, what: str) -> None:
        s = df[c]
        if c in not_numbers:  # reported above
            return
        if not _is_numeric(s) and not pd.api.types.is_bool_dtype(s.dtype):  # dates
            err(f"{source}: column {c!r} ({what}) must hold numbers, got {s.dtype} values "
                f"(row 0: {s.iloc[0]}).")
            return
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        nonfinite = ~np.isfinite(v)
        if nonfinite.any():
            hint = ("" if not np.isnan(v).any() else
                    MSG_MISSING_STATE.format(column=c, episode=manifest.episode)
                    if what == "state" else MSG_MISSING_REWARD.format(column=c)
                    if what.startswith("reward") else "")
            err(
                f"{source}: column {c!r} ({what}) has NaN or infinite values in "
                f"{_rows(nonfinite)}; "
                f"expected finite numbers.{hint}"
            )

    for c in manifest.states:
        numeric_check(c, "state")
    for c in manifest.mediators:
        numeric_check(c, "mediator")
    for r in manifest.reward:
        numeric_check(r.column, f"reward component {r.name!r}")
    for c in manifest.categorical_states:
        isna = df[c].isna().to_numpy()
        if isna.any():
            err(f"{source}: column {c!r} (categorical state) is empty in {_rows(isna)}.")
    if manifest.terminal and manifest.terminal not in not_numbers:
        s = df[manifest.terminal]
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad_term = ~np.isin(v, [0.0, 1.0])
        if bad_term.any():
            err(
                f"{source}: column {manifest.terminal!r} (terminal) must be 0/1 or true/false; "
                f"{_rows(bad_term)} are not."
            )
        elif rep.order is not None and rep.episode_codes is not None:
            # a terminal row ends its episode: no row of the same episode may follow it
            c_s = rep.episode_codes[rep.order]
            not_last = np.r_[c_s[1:] == c_s[:-1], False]
            early = not_last & (v[rep.order] == 1.0)
            if early.any():
                err(
                    f"{source}: column {manifest.terminal!r} (terminal) is 1 before the last row "
                    f"of its episode in {_rows(early, rep.order)}; a terminal row ends the "
                    "episode, so it must be the episode's last row. If the rows after it are "
                    "a later enrolment of the same person (a dropout who comes back), give each "
                    "enrolment its own episode id and name the person's id as the manifest's "
                    "member."
                )
    elif not manifest.terminal:
        rep.notes.append(NO_TERMINAL_NOTE)
    if manifest.need and manifest.need not in not_numbers:
        v = pd.to_numeric(df[manifest.need], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        # an empty cell is reported once, as empty (the per-episode labels' check above)
        bad_need = ~np.isin(v, [0.0, 1.0]) & ~df[manifest.need].isna().to_numpy()
        if bad_need.any():
            first, row = _first_bad(bad_need, row_numbers)
            err(
                f"{source}: column {manifest.need!r} (need) must be 0/1; {_rows(bad_need)} are not "
                f"(row {row}: {df[manifest.need].iloc[first]}, {df[manifest.need].dtype} values)."
            )
    if manifest.behavior_prob and manifest.behavior_prob not in not_numbers:
        s = df[manifest.behavior_prob]
        v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        empty_p = s.isna().to_numpy()
        if empty_p.any():  # propensities logged on some rows only (sites that do not log them)
            err(MSG_EMPTY_PROPENSITY.format(source=source, column=manifest.behavior_prob,
                                            rows=_rows(empty_p), episode=manifest.episode))
        bad_p = ~((v > 0) & (v <= 1)) & ~empty_p
        if bad_p.any():
            first, row = _first_bad(bad_p, row_numbers)
            err(
                f"{source}: column {manifest.behavior_prob!r} (behaviour propensity) must lie in "
                f"(0, 1]; {_rows(bad_p)} do not (row {row}: {v[first]:g}, {s.dtype} values)."
            )

    # ---- actions
    acodes: list[NDArray[np.int64]] = []
    for a in manifest.actions:
        codes = encode_actions(df[a.column], a)
        empty_a = df[a.column].isna().to_numpy()
        if empty_a.any():
            err(f"{source}: column {a.column!r} (action component {a.name!r}) is empty in "
                f"{_rows(empty_a)}; expected one of {list(a.levels)}."
                + _empty_component_hint(manifest, a, empty_a, acodes))
        bad_a = (codes < 0) & ~empty_a
        if bad_a.any():
            seen = pd.unique(df[a.column][bad_a])[:_SHOW]
            err(
                f"{source}: column {a.column!r} (action component {a.name!r}) has values not among "
                f"the declared levels in {_rows(bad_a)}: {[str(x) for x in seen]}; expected one of "
                f"{list(a.levels)}" + (" or integer codes" if not a.integer_levels else "") + "."
            )
        acodes.append(codes)
    if rep.ok:
        rep.action_codes = np.stack(acodes, axis=1)
        space = manifest.action_space
        counts = PanelCounts(
            n_rows=len(df),
            action_counts=np.asarray(space.counts(space.to_flat(rep.action_codes)),
                                     dtype=np.int64),
            reward_nonzero={r.name: int(np.count_nonzero(df[r.column].to_numpy() != 0))
                            for r in manifest.reward})
        if rep.episode_codes is not None and rep.order is not None:
            first = np.r_[
                True, rep.episode_codes[rep.order][1:] != rep.episode_codes[rep.order][:-1]
            ]
            first_rows = rep.order[first]
            for g in manifest.groups:
                lab, cnt = np.unique(
                    df[g].take(first_rows).to_numpy().astype(str), return_counts=True
                )
                counts.group_counts[g] = dict(zip(lab.tolist(), cnt.tolist(), strict=True))
                if manifest.member:
                    who = pd.DataFrame({"level": df[g].take(first_rows).to_numpy().astype(str),
                                        "member": df[manifest.member].take(first_rows)
                                        .to_numpy().astype(str)})
                    counts.group_members[g] = {str(k): set(v) for k, v in who.groupby(
                        "level", sort=True)["member"]}
        rep.counts = counts
        if panel_level:
            rep.warnings.extend(panel_warnings(counts, manifest, source))
    return rep


def _lead(source: str | os.PathLike[str] | None) -> str:
    """``"{source}: "`` to start a message with, or ``""``."""
    return "" if source is None else f"{source}: "


def _led_by(source: str | os.PathLike[str] | None, msg: str) -> str:
    """The message as a sentence: capitalised when no file name leads it."""
    return msg if source is not None else msg[:1].upper() + msg[1:]


def check_episodes(dataset: Any, minimum: int, owner: str, why: str,
                   source: str | os.PathLike[str] | None = None) -> None:
    """Refuse a dataset with fewer than ``minimum`` episodes, saying why they are needed.

    Episode-level bootstraps, cross-fitting and holdouts need several episodes: with one, an
    interval would be a point (``[v, v]``, standard error 0) and a cross-fitting fold would
    train on nothing.

    Parameters
    ----------
    dataset : TrajectoryDataset
        Anything with ``n_episodes``.
    minimum : int
        Episodes needed.
    owner : str
        Who needs them (a command or function name), e.g. ``"evaluate"``.
    why : str
        Why, completing "needs at least {minimum} because ...".
    source : str or path, optional
        The panel file, named first in the message.

    Raises
    ------
    DataValidationError
        :data:`FEW_EPISODES_MESSAGE`.
    """
    n = int(dataset.n_episodes)
    if n < minimum:
        raise DataValidationError(_led_by(source, FEW_EPISODES_MESSAGE.format(
            source=_lead(source), n=n, s="" if n == 1 else "s", owner=owner, minimum=minimum,
            why=why)))


def split_holdout(dataset: Any, share: float, owner: str, purpose: str, why: str, *,
                  random_state: Any = None, stratify: str | None = None,
                  source: str | os.PathLike[str] | None = None,
                  both: bool = False) -> tuple[Any, Any]:
    """Split episodes into (fit, held out) by ``dataset.split``, refusing a held-out part of < 2.

    A one-episode panel cannot be split, and a held-out part of one episode cannot be
    evaluated (:func:`check_episodes`): both are one data error naming the panel and the
    holdout, instead of the split's or the evaluation's own.

    Parameters
    ----------
    dataset : TrajectoryDataset
    share : float in (0, 1)
        Share of the episodes held out.
    owner, purpose, why : str
        Who holds out, for what, and why 2 episodes are needed there (the message).
    random_state, stratify
        As in :meth:`~equicare.data.TrajectoryDataset.split`.
    source : str or path, optional
        The panel file, named first in the message.
    both : bool, default=False
        Both parts are held out in turn (cross-fitting on two halves): the smaller needs 2.

    Returns
    -------
    fit, held_out : TrajectoryDataset

    Raises
    ------
    DataValidationError
        :data:`HOLDOUT_EPISODES_MESSAGE`.
    """
    n = int(dataset.n_episodes)
    parts: tuple[Any, Any] = (None, None) if n < 2 else dataset.split(
        share, random_state=random_state, stratify=stratify)
    k = 0 if n < 2 else min(int(p.n_episodes) for p in (parts if both else parts[1:]))
    if k < 2:
        raise DataValidationError(_led_by(source, HOLDOUT_EPISODES_MESSAGE.format(
            source=_lead(source), n=n, s="" if n == 1 else "s", owner=owner, share=share,
            purpose=purpose, k=k, why=why)))
    return parts
