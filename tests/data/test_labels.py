"""Categorical labels: one spelling per level (136.0 is 136), and matching a model's levels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.data._labels import (
    MSG_MISSING_GROUP,
    categorical_labels,
    check_group_labels,
    label_key,
    match_levels,
    missing_labels,
)
from equicare.exceptions import DataValidationError


def test_whole_number_floats_are_integers() -> None:
    out = categorical_labels(pd.Series([136.0, 2.0, -3.0], name="s"))
    assert out.dtype == np.int64 and out.tolist() == [136, 2, -3] and out.name == "s"
    # per value, not per column: a chunk holding 1.5 labels 2.0 as a chunk without it does
    mixed = categorical_labels(pd.Series([2.0, 1.5, np.nan]))
    assert mixed.iloc[0] == 2 and isinstance(mixed.iloc[0], int)
    assert mixed.iloc[1] == 1.5 and np.isnan(mixed.iloc[2])
    obj = categorical_labels(pd.Series([7.0, "a", 7], dtype=object))
    assert [type(v) for v in obj] == [int, str, int]
    ints, strs = pd.Series([1, 2]), pd.Series(["1.0", "x"])
    assert categorical_labels(ints) is ints and categorical_labels(strs) is strs
    cat = categorical_labels(pd.Series(pd.Categorical([3.0, 4.0])))
    assert cat.tolist() == [3, 4]


def test_labels_match_by_their_normalised_form() -> None:
    assert label_key(136.0) == label_key("136.0") == label_key(136) == "136"
    assert label_key("1.5") == "1.5" and label_key("s1") == "s1"
    # a model saved with float labels ("136.0") finds integer data labels and back
    np.testing.assert_array_equal(match_levels([136, 2, 9], ["2.0", "136.0"]), [1, 0, -1])
    np.testing.assert_array_equal(match_levels([136.0, "x"], ["136", "x"]), [0, 1])
    # an exact match wins; two model labels with one key are never matched by key
    np.testing.assert_array_equal(match_levels(["1.0", 1.0], ["1", "1.0"]), [1, 1])
    np.testing.assert_array_equal(match_levels(["1.00"], ["1", "1.0"]), [-1])


def test_text_labels_are_numbers_only_when_they_print_as_written():
    from equicare.data._labels import text_labels

    got = text_labels(pd.Series(["007", "7", "101.0", "1e3", "+5", "01", None, "x"]))
    assert got.tolist()[:6] == ["007", 7, 101.0, "1e3", "+5", "01"]
    assert pd.isna(got.iloc[6]) and got.iloc[7] == "x"
    assert text_labels(pd.Series(["3", "12"])).dtype == np.int64
    assert text_labels(pd.Series(["3", None, "1.5"])).dtype == np.float64
    assert text_labels(pd.Series(["True", "False"])).dtype == bool
    assert text_labels(pd.Series(["007", "010"])).tolist() == ["007", "010"]


@pytest.mark.parametrize(("values", "expected"), [
    (np.array(["a", None, "b"], dtype=object), [False, True, False]),
    (["a", np.nan, "b"], [False, True, False]),  # a list: np.nan is not read as the text "nan"
    (pd.Series(["a", pd.NA, "b"], dtype="string"), [False, True, False]),
    (pd.Series(["a", "b", None], dtype="category"), [False, False, True]),
    (np.array([1.0, np.nan, 2.0]), [False, True, False]),
    (np.array(["a", "", " \t"]), [False, True, True]),  # blank text is an empty cell
    (pd.Series([pd.Timestamp("2020-01-01"), pd.NaT]), [False, True]),
    (np.array([0, 1, 2]), [False, False, False]),
    (np.array(["None", "nan", "unknown"]), [False, False, False]),  # labels someone wrote
])
def test_missing_labels_are_none_nan_na_and_blank_text(values, expected) -> None:
    np.testing.assert_array_equal(missing_labels(values), np.array(expected))


def test_missing_group_labels_raise_naming_the_attribute_and_the_first_episodes() -> None:
    labels = np.array(["a", None, "b", np.nan, "", "c", None, None, None], dtype=object)
    msg = MSG_MISSING_GROUP.format(
        where="TrajectoryDataset", column="race",
        rows="6 episodes (first: 'p1', 'p3', 'p4', 'p6', 'p7', ...; episode ids)")
    ids = np.array([f"p{i}" for i in range(labels.size)])
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        check_group_labels(labels, "race", "TrajectoryDataset", ids)
    check_group_labels(np.array(["a", "unknown"]), "race", "TrajectoryDataset")  # no error
