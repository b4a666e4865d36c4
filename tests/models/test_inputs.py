"""Categorical model inputs: levels matched whatever their spelling, unseen levels reported."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from equicare.exceptions import DataWarning
from equicare.models._inputs import UNKNOWN_CODE, categorical_codes


def _data(labels: list[object], levels: list[object]) -> SimpleNamespace:
    codes = np.array([levels.index(v) for v in labels])[:, None]
    return SimpleNamespace(categorical=codes, categorical_levels=(tuple(levels),),
                           categorical_names=("site",), n_steps=len(labels))


def test_float_labels_find_the_vocabulary() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = categorical_codes(_data([136.0, 7.0, 7.0], [7.0, 136.0]), (("7", "136"),))
    np.testing.assert_array_equal(out[:, 0], [2, 1, 1])


def test_mostly_unseen_levels_warn() -> None:
    ds = _data(["s7", "s7", "7"], ["7", "s7"])
    with pytest.warns(DataWarning, match=r"column 'site', 2 of 3 rows \(67%\) have levels the "
                      r"model never saw in training: e\.g\. 's7', where the model knows 2 levels "
                      r"\('7', '136'\); they are read as an unknown level"):
        out = categorical_codes(ds, (("7", "136"),))
    np.testing.assert_array_equal(out[:, 0], [UNKNOWN_CODE, UNKNOWN_CODE, 1])
