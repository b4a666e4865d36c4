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
    msg = ("<DataFrame>: " + FEW_TRANSITION_EPISODES_MESSAGE.format(source="", n=n,
                                                                    total=len(lengths)))
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        from_dataset(ds)


def test_no_rows_is_a_data_error() -> None:
    with pytest.raises(DataValidationError, match=re.escape(FEW_EPISODES_MESSAGE.format(n=0))):
        MediationData.from_arrays(np.zeros((0, 2)), [], np.zeros((0, 1)), [], np.zeros((0, 2)),
                                  [])


def test_rewards_only_on_last_rows_are_a_data_error_and_mostly_there_a_warning() -> None:
    """An outcome on the last row of each stay (survival at discharge, as on the Garnet and
    ICU-shaped panels): the last row has no next state and is left out, and mediate printed
    every effect as 0.000 with a standard error of 0.000. It refuses now; when most of the
    reward is there it warns."""
    import warnings

    from equicare.causal._data import END_REWARD_MESSAGE
    from equicare.exceptions import DataWarning

    lengths = [4] * 30
    df = _panel(lengths)
    last = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    df["r"] = np.where(last, 1.0, 0.0)
    ds = from_frame(df, MANIFEST, emit_warnings=False)
    with pytest.raises(DataValidationError, match=re.escape(
            END_REWARD_MESSAGE.format(source="", k=30))):
        from_dataset(ds)
    df["r"] = np.where(last, 1.0, 0.0)
    df.loc[np.flatnonzero(~last)[:10], "r"] = 0.5          # 5 of 35: 86% at the ends
    with pytest.warns(DataWarning, match=r"^<DataFrame>: 86% of the panel's total \|reward\| "
                                         r"is on episodes' last rows that are not terminal "
                                         r"\(25% of the rows\)"):
        md = from_dataset(from_frame(df, MANIFEST, emit_warnings=False))
    assert md.rewards.sum() == 5.0
    df["r"] = 1.0                                            # a per-step reward: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_dataset(from_frame(df, MANIFEST, emit_warnings=False))
    # the same outcome on stays that truly end there (terminal): transitions, no refusal
    df["r"], df["done"] = np.where(last, 1.0, 0.0), last.astype(int)
    man = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "terminal": "done"}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        md = from_dataset(from_frame(df, man, emit_warnings=False))
    assert md.n_steps == len(df) and md.rewards.sum() == 30.0


@pytest.mark.parametrize("taken", ["never", "only_on_last_rows", "always"])
def test_a_binary_action_every_transition_takes_the_same_way_is_a_data_error(taken) -> None:
    """`mediate --action` naming an action set no row took (a panel logging action 0 only)
    printed every effect of a policy taking it, with intervals and no warning. Refused now,
    also when the action is logged only on episodes' last rows (no transition shows it)."""
    from equicare.causal._data import ONE_ACTION_MESSAGE

    lengths = [4] * 30
    df = _panel(lengths)
    last = np.concatenate([np.arange(k) == k - 1 for k in lengths])
    df["a"] = {"never": 0, "only_on_last_rows": last.astype(int), "always": 1}[taken]
    a = 1 if taken == "always" else 0
    with pytest.raises(DataValidationError, match=re.escape(
            ONE_ACTION_MESSAGE.format(source="", a=a, b=1 - a, n=90))):
        from_dataset(from_frame(df, MANIFEST, emit_warnings=False))


def test_dense_features_that_cannot_fit_are_refused_before_they_are_built(monkeypatch) -> None:
    """Mediation one-hot encodes categorical states densely: a 5,000-level state reached 19 GB
    in 110 s before the basis-size check refused it. The footprint (about DENSE_COPIES dense
    copies of transitions x features) is checked against the memory available first."""
    import equicare.utils as utils
    from equicare.causal._data import DENSE_COPIES

    df = _panel([5] * 40)
    df["code"] = [f"c{i % 37:02d}" for i in range(len(df))]
    man = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "categorical_states": ["code"]}}
    ds = from_frame(df, man, emit_warnings=False)
    need = DENSE_COPIES * 160 * (1 + 37) * 8                     # 160 transitions, 38 features
    monkeypatch.setattr(utils, "available_memory", lambda: need - 1)
    monkeypatch.setattr(type(ds), "features", lambda self, one_hot=True: pytest.fail("built"))
    with pytest.raises(DataValidationError, match=re.escape(
            "dynamic mediation works on dense state features: 160 transitions x 38 features "
            "(the numeric states plus one column per level of 'code' (37 levels)) need about "
            "0.0 GB")):
        from_dataset(ds)
    monkeypatch.undo()
    monkeypatch.setattr(utils, "available_memory", lambda: need)
    assert from_dataset(ds).states.shape == (160, 38)


def test_states_are_built_from_the_codes_of_the_transitions(monkeypatch) -> None:
    """The same states as rows of ``ds.features()``, without the whole one-hot matrix (cached on
    the dataset) or a float64 copy of it: two of the 3.5 dense copies a 700-level panel held."""
    from equicare.causal._data import feature_rows

    df = _panel([5] * 40)
    df["code"] = [f"c{i % 37:02d}" for i in range(len(df))]
    df["site"] = [f"s{i % 3}" for i in range(len(df))]
    man = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "categorical_states": ["code", "site"]}}
    ds = from_frame(df, man, emit_warnings=False)
    rows = np.array([3, 0, 7, 7, 150], dtype=np.int64)
    np.testing.assert_array_equal(feature_rows(ds, rows), ds.features()[rows])
    ds = from_frame(df, man, emit_warnings=False)
    monkeypatch.setattr(type(ds), "features", lambda self, one_hot=True: pytest.fail("built"))
    md = from_dataset(ds)
    assert md.states.shape == (160, 1 + 37 + 3) and md.states.dtype == np.float64


def test_a_panel_whose_states_fit_is_not_refused(monkeypatch) -> None:
    """The footprint counts the dense states only (the basis and designs are sparse): memory
    for 4 copies of transitions x features is enough (it was refused below 20)."""
    import equicare.utils as utils

    df = _panel([5] * 40)
    df["code"] = [f"c{i % 37:02d}" for i in range(len(df))]
    man = {**MANIFEST, "dataset": {**MANIFEST["dataset"], "categorical_states": ["code"]}}
    ds = from_frame(df, man, emit_warnings=False)
    monkeypatch.setattr(utils, "available_memory", lambda: 4 * 160 * 38 * 8)
    assert from_dataset(ds).states.shape == (160, 38)
