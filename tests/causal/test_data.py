from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.causal._data import (
    FEW_EPISODES_MESSAGE,
    FEW_TRANSITION_EPISODES_MESSAGE,
    MediationData,
    from_dataset,
)
from equicare.data import from_frame
from equicare.exceptions import DataValidationError

MANIFEST = {"dataset": {"episode": "pid", "time": "t", "states": ["x"], "mediators": ["m"]},
            "actions": {"a": {"levels": 2}}, "reward": {"column": "r"}}


def _panel(lengths: list[int]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = int(np.sum(lengths))
    return pd.DataFrame({"pid": np.repeat(np.arange(len(lengths)), lengths),
                         "t": np.concatenate([np.arange(k) for k in lengths]),
                         "x": rng.normal(size=n), "m": np.arange(n) % 2,
                         "a": rng.integers(0, 2, n), "r": rng.normal(size=n)})


@pytest.mark.parametrize(("lengths", "n"), [([1] * 30, 0), ([1] * 29 + [3], 1)])
def test_episodes_without_a_transition_are_a_data_error(lengths, n) -> None:
    ds = from_frame(_panel(lengths), MANIFEST, emit_warnings=False)
    msg = FEW_TRANSITION_EPISODES_MESSAGE.format(n=n, total=len(lengths))
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        from_dataset(ds)


def test_no_rows_is_a_data_error() -> None:
    with pytest.raises(DataValidationError, match=re.escape(FEW_EPISODES_MESSAGE.format(n=0))):
        MediationData.from_arrays(np.zeros((0, 2)), [], np.zeros((0, 1)), [], np.zeros((0, 2)),
                                  [])
