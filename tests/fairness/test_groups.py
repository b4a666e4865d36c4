"""Group labels of episodes: a missing label is an error, never a group "nan" or "None"."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.data._labels import MSG_MISSING_GROUP
from equicare.exceptions import DataValidationError
from equicare.fairness import allocation_rates, audit, group_index

from .conftest import random_panel

LABELS = ["a"] * 12 + ["b"] * 12


def _with(value, at=(3,)):
    out = np.array(LABELS, dtype=object)
    out[list(at)] = value
    return out


def _msg(column, rows, where="group_index"):
    return MSG_MISSING_GROUP.format(where=where, column=column, rows=rows)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"labels": _with(None)}, _msg("group", "1 episode (first: 3; 0-based episode positions)")),
    ({"labels": list(_with(np.nan, at=(3, 20)))},  # a list: np.nan is not the text "nan"
     _msg("group", "2 episodes (first: 3, 20; 0-based episode positions)")),
    ({"labels": pd.Series(_with(pd.NA), dtype="string"), "name": "race"},
     _msg("race", "1 episode (first: 3; 0-based episode positions)")),
    ({"labels": _with(""), "name": "race"},
     _msg("race", "1 episode (first: 3; 0-based episode positions)")),
    ({"labels": np.array([f"{a} x f" for a in LABELS]), "name": "race x sex",
      "components": [_with(None, at=(0,)), np.array(["f"] * 24)]},
     _msg("race x sex (component 0)", "1 episode (first: 0; 0-based episode positions)")),
])
def test_group_index_refuses_a_missing_label(kwargs, message) -> None:
    with pytest.raises(DataValidationError, match=re.escape(message)):
        group_index(**kwargs)


def test_an_explicit_unknown_label_is_a_group() -> None:
    gi = group_index(np.array(LABELS + ["unknown"] * 11), name="race")
    assert gi.labels == ("a", "b", "unknown") and gi.counts.tolist() == [12, 12, 11]


def test_the_audit_refuses_labels_removed_after_the_dataset_was_built() -> None:
    ds = random_panel(60, seed=0)
    race = ds.groups["race"].astype(object)
    race[[7, 30]] = None
    ds.groups["race"] = race  # the dict of a built dataset, changed in place
    msg = _msg("race", "2 episodes (first: 7, 30; episode ids)", where="fairness audit")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        audit(ds, None, action="modality=home_visit", group="race", n_boot=0,
              n_permutations=0, random_state=0)
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        allocation_rates(ds, action="modality=home_visit", group="sex", intersect=["race"],
                         n_boot=0, n_permutations=0)
