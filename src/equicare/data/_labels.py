"""Labels of categorical columns: one spelling per level, and matching a model's levels.

The same level is often written two ways: ``136`` in one export and ``136.0`` in another (a CSV
written from a float column, or a column with a missing value somewhere). Labels are therefore
normalised when a panel is read (:func:`categorical_labels`): a number with no fractional part is
the integer. A model stores its levels as strings; :func:`match_levels` finds a dataset's levels
among them by their string form, and by their normalised string form
(:func:`label_key`) for levels written before the normalisation (a model saved from a panel
whose labels read ``136.0``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from equicare.exceptions import DataValidationError

__all__ = ["categorical_labels", "text_labels", "label_key", "match_levels",
           "unseen_levels_message", "missing_labels", "check_group_labels", "MSG_MISSING_GROUP"]

#: Episodes without a group label. The file loader (``where`` the file, ``rows`` its data rows),
#: :class:`~equicare.data.TrajectoryDataset` and :func:`~equicare.fairness.group_index`
#: (``rows`` the episodes) all raise it: a missing demographic must not become a group "nan".
MSG_MISSING_GROUP = (
    "{where}: column {column!r} (group attribute) is empty (None, NaN or blank) in {rows}; "
    "expected a label for every episode. A missing label is not a group: to audit these "
    "episodes as one, label them explicitly (for example 'unknown').")

#: Largest integer a float64 holds exactly; whole numbers beyond it keep their float label.
_EXACT = 2.0 ** 53
#: A decimal numeral with no fractional part other than zeros, e.g. ``"136.0"`` or ``"-2."``.
_WHOLE_DECIMAL = re.compile(r"([+-]?\d+)\.0*")


def _whole_number(v: Any) -> Any:
    """``v`` as an int when it is a float with no fractional part, else ``v`` itself."""
    if isinstance(v, (float, np.floating)):
        x = float(v)
        if x.is_integer() and abs(x) < _EXACT:  # is_integer is False for NaN and infinities
            return int(x)
    return v


def categorical_labels(values: pd.Series | NDArray[Any]) -> pd.Series:
    """A categorical column's labels, every whole number written as an integer.

    ``136.0`` becomes ``136`` (so a float column and an integer column of the same levels give
    the same labels, and ``str`` of a label is the same for both); any other value (strings,
    ``1.5``, integers, missing values) is kept. The rule applies to each value, not to the
    column, so a panel read in chunks gets the same labels as when read whole.

    Parameters
    ----------
    values : Series or ndarray of shape (n_rows,)

    Returns
    -------
    Series of shape (n_rows,)
        ``int64`` when every value is a whole number, else the values with whole-number floats
        replaced by ints (object dtype). The index of a Series is kept.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    if isinstance(s.dtype, pd.CategoricalDtype) and not pd.api.types.is_float_dtype(
            s.cat.categories.dtype):
        return s
    if isinstance(s.dtype, pd.CategoricalDtype):  # float categories: their values, normalised
        s = pd.Series(np.asarray(s), index=s.index, name=s.name)
    if pd.api.types.is_float_dtype(s.dtype):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        whole = np.isfinite(x) & (np.abs(x) < _EXACT)
        whole[whole] = x[whole] == np.round(x[whole])
        if whole.all():
            return pd.Series(x.astype(np.int64), index=s.index, name=s.name)
        if not whole.any():
            return s
        out = x.astype(object)
        out[whole] = x[whole].astype(np.int64).astype(object)
        return pd.Series(out, index=s.index, name=s.name, dtype=object)
    if s.dtype != object:
        return s
    # object columns (mixed types): normalise each distinct value once, not each row
    codes, uniques = pd.factorize(s, use_na_sentinel=True)
    fixed = [_whole_number(u) for u in uniques]
    if all(a is b for a, b in zip(fixed, uniques, strict=True)):
        return s
    lut = np.empty(len(fixed) + 1, dtype=object)
    lut[:-1] = fixed
    lut[-1] = np.nan  # code -1: a missing value stays missing
    return pd.Series(lut[codes], index=s.index, name=s.name, dtype=object)


def _text_value(text: Any) -> Any:
    """A CSV cell as a label: a number (or boolean) only when it prints back as written."""
    if not isinstance(text, str):
        return text  # missing
    for kind in (int, float):
        try:
            v = kind(text)
        except ValueError:
            continue
        if str(v) == text and (kind is float or abs(v) < 2 ** 63):
            return v
    if text in ("True", "False"):
        return text == "True"
    return text


def text_labels(values: pd.Series | NDArray[Any]) -> pd.Series:
    """Labels read from CSV text: a cell is a number only when the number prints as written.

    ``"101"`` is ``101`` and ``"101.0"`` is ``101.0`` (which :func:`categorical_labels` then
    reads as ``101``); ``"007"``, ``"01"``, ``"1e3"`` and ``"+5"`` stay text, as written
    (Contract 1: type inference would read ``"007"`` as ``7``). ``"True"``/``"False"`` are
    booleans. The rule applies to each value, so a panel read in chunks gets the labels it gets
    when read whole.

    Parameters
    ----------
    values : Series or ndarray of shape (n_rows,)
        Text cells (``str``), missing cells as ``None``/``NaN``.

    Returns
    -------
    Series of shape (n_rows,)
        ``int64`` when every cell is an integer, ``float64`` when every cell is a number or
        missing, ``bool`` when every cell is a boolean, else object. The index of a Series is
        kept.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values, dtype=object))
    codes, uniques = pd.factorize(s.to_numpy(dtype=object, na_value=None),
                                  use_na_sentinel=True)
    fixed = [_text_value(u) for u in uniques]
    missing = bool((codes < 0).any())
    kinds = {type(v) for v in fixed}
    if not fixed:
        return pd.Series(np.full(len(s), np.nan), index=s.index, name=s.name)
    if kinds <= {int, float} and (float in kinds or missing):
        lut_f = np.array([float(v) for v in fixed] + [np.nan], dtype=np.float64)
        return pd.Series(lut_f[codes], index=s.index, name=s.name)
    if not missing and kinds == {int}:
        return pd.Series(np.array(fixed, dtype=np.int64)[codes], index=s.index, name=s.name)
    if not missing and kinds == {bool}:
        return pd.Series(np.array(fixed, dtype=bool)[codes], index=s.index, name=s.name)
    lut = np.empty(len(fixed) + 1, dtype=object)
    lut[:-1] = fixed
    lut[-1] = np.nan  # code -1: a missing value stays missing
    return pd.Series(lut[codes], index=s.index, name=s.name, dtype=object)


def missing_labels(values: Any) -> NDArray[np.bool_]:
    """Which labels are missing: None, NaN, ``pd.NA``, ``NaT`` or a blank string.

    A blank string (``""``, ``" "``) is what an empty cell of a text column reads as; a CSV reads
    an empty cell as missing, so both ways of writing "no label" are caught alike.

    Parameters
    ----------
    values : array-like of shape (n,)
        Labels of any type (a list, an ndarray, a pandas or polars Series). A list is read as
        objects, so that ``np.nan`` among strings is not turned into the text ``"nan"``.

    Returns
    -------
    ndarray of shape (n,), bool
    """
    if isinstance(values, pd.Series):
        s = values
    else:
        arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
        s = pd.Series(arr.ravel())
    miss: NDArray[np.bool_] = s.isna().to_numpy(dtype=bool)
    if s.dtype == object or pd.api.types.is_string_dtype(s.dtype) or isinstance(
            s.dtype, pd.CategoricalDtype):
        blank = [u for u in pd.unique(s[~miss]) if isinstance(u, str) and not u.strip()]
        if blank:  # one test per distinct label, a pass over the rows only when needed
            miss = miss | s.isin(blank).to_numpy(dtype=bool)
    return miss


def check_group_labels(values: Any, column: str, where: str,
                       episode_ids: NDArray[Any] | None = None) -> None:
    """Raise :class:`DataValidationError` if an episode has no label (:func:`missing_labels`).

    Parameters
    ----------
    values : array-like of shape (n_episodes,)
        One group attribute's label per episode.
    column : str
        The group attribute, named in the message.
    where : str
        What was given the labels (``"TrajectoryDataset"``, ``"group_index"``).
    episode_ids : ndarray of shape (n_episodes,), optional
        Episode identifiers, to name the first offending episodes by id as well as position.
    """
    miss = missing_labels(values)
    if not miss.any():
        return
    idx = np.flatnonzero(miss)
    first = idx[:5]
    if episode_ids is not None and len(episode_ids) != miss.size:
        episode_ids = None
    if episode_ids is None:
        shown = ", ".join(str(int(i)) for i in first)
    else:  # numpy scalars as plain numbers and strings: 30, 'm007'
        ids = np.asarray(episode_ids, dtype=object)[first]
        shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in ids)
    more = ", ..." if idx.size > first.size else ""
    noun = "episode" if idx.size == 1 else "episodes"
    kind = "episode ids" if episode_ids is not None else "0-based episode positions"
    rows = f"{idx.size} {noun} (first: {shown}{more}; {kind})"
    raise DataValidationError(MSG_MISSING_GROUP.format(where=where, column=column, rows=rows))


def label_key(label: Any) -> str:
    """The normalised string of a label: ``136``, ``136.0`` and ``"136.0"`` all give ``"136"``."""
    v = _whole_number(label)
    if isinstance(v, str):
        m = _WHOLE_DECIMAL.fullmatch(v.strip())
        if m is not None:
            return str(int(m.group(1)))
    return str(v)


def match_levels(levels: Sequence[Any], known: Sequence[str]) -> NDArray[np.int64]:
    """Position of each of a dataset's ``levels`` among a model's ``known`` labels, -1 if absent.

    A level matches the known label with the same string; failing that, the known label with
    the same :func:`label_key` (when only one has it).

    Parameters
    ----------
    levels : sequence of shape (n_levels,)
        The dataset's labels of one column (any type).
    known : sequence of str, shape (n_known,)
        The model's labels of that column.

    Returns
    -------
    ndarray of shape (n_levels,), int64
    """
    exact = {lv: i for i, lv in enumerate(known)}
    keyed: dict[str, int] = {}
    for i, lv in enumerate(known):
        k = label_key(lv)
        keyed[k] = -2 if k in keyed else i  # -2: ambiguous, never matched by key
    out = np.empty(len(levels), dtype=np.int64)
    for i, lv in enumerate(levels):  # one lookup per level, not per row
        s = str(lv)
        pos = exact.get(s)
        if pos is None:
            pos = keyed.get(label_key(lv), -1)
        out[i] = max(pos, -1)
    return out


def unseen_levels_message(column: str, unseen_rows: NDArray[np.bool_], levels: Sequence[Any],
                          codes: NDArray[np.int64], lut: NDArray[np.int64],
                          known: Sequence[str], what: str, consequence: str) -> str | None:
    """A warning when most rows of ``column`` carry levels a model never saw, or None.

    Warns when more than half the rows (or every row) are unseen.

    Parameters
    ----------
    column : str
    unseen_rows : ndarray of shape (n_rows,), bool
        Rows whose level the model does not know.
    levels : sequence of shape (n_levels,)
        The dataset's labels of the column.
    codes : ndarray of shape (n_rows,), int64
        Each row's position in ``levels``.
    lut : ndarray of shape (n_levels,), int64
        :func:`match_levels` of ``levels``.
    known : sequence of str
        The model's labels.
    what : str
        The model, as named in the message ("The policy models/spibb").
    consequence : str
        What happens to those rows ("they get the fallback distribution").
    """
    n = unseen_rows.size
    k = int(unseen_rows.sum())
    if n == 0 or 2 * k <= n:
        return None
    present = np.unique(codes[unseen_rows])
    example = levels[int(present[0])]
    shown = ", ".join(repr(v) for v in list(known)[:5]) + (", ..." if len(known) > 5 else "")
    none = "" if (lut >= 0).any() else " (none of the column's levels is among the model's)"
    return (f"{what}: in column {column!r}, {k:,} of {n:,} rows ({100.0 * k / n:.0f}%) have "
            f"levels the model never saw in training{none}: e.g. {str(example)!r}, where the "
            f"model knows {len(known)} levels ({shown}); {consequence}. Check that the column "
            "holds the same labels as the training data.")
