"""CellPolicy: deferral to current practice, checked by hand on a three-action cell."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from equicare.exceptions import PolicyError
from equicare.policy import CellPolicy
from equicare.spaces import FactoredActionSpace

SPACE = FactoredActionSpace.from_levels({"a": ["x", "y", "z"]})


def _policy(**kw: object) -> CellPolicy:
    # one seen cell "c": action 0 logged with propensity 0.6, actions 1 and 2 never logged,
    # the remaining 0.4 left to the clinicians (stand-in 0.2 / 0.2); the unseen row defers all
    table = np.array([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2]])
    deferred = np.array([[False, True, True], [True, True, True]])
    args = dict(table=table, keys=np.array([[0]]), columns=("cell",), levels=(("c",),),
                numeric=(), edges=(), action_space=SPACE, deferred=deferred)
    args.update(kw)
    return CellPolicy(**args)  # type: ignore[arg-type]


def _rows(cells: list[int], actions: list[int], prob: list[float] | None) -> SimpleNamespace:
    n = len(cells)
    return SimpleNamespace(
        action_space=SPACE, categorical_names=["cell"], categorical_levels=[["c", "new"]],
        categorical=np.array(cells)[:, None], state_names=[], states=np.zeros((n, 0)),
        n_steps=n, actions=np.array(actions),
        behavior_prob=None if prob is None else np.array(prob))


def test_a_deferred_logged_action_keeps_the_clinicians_propensity() -> None:
    pol = _policy()
    # row 0: action 1 (deferred) logged at 0.3 -> 0.3 on it, the other 0.1 on action 2;
    # row 1: action 0 (not deferred) -> the table row; row 2: unseen cell, action 2 at 0.25
    ds = _rows([0, 0, 1], [1, 0, 2], [0.3, 0.6, 0.25])
    np.testing.assert_allclose(pol.action_probs(ds), [[0.6, 0.3, 0.1], [0.6, 0.2, 0.2],
                                                      [0.375, 0.375, 0.25]])
    # a mixture keeps only its share of the clinicians' probability: rate 0.5 -> 0.15
    half = _policy(table=np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2]]),
                   deferred_rate=np.array([0.5, 1.0]))
    np.testing.assert_allclose(half.action_probs(_rows([0], [1], [0.3])), [[0.8, 0.15, 0.05]])
    # without logged propensities, or without deferral: the table rows
    np.testing.assert_allclose(pol.action_probs(_rows([0], [1], None)), [[0.6, 0.2, 0.2]])
    assert pol.predict(ds).tolist() == [0, 0, 0]
    assert pol.deferred_share() == pytest.approx(0.4)
    np.testing.assert_array_equal(pol.deferred_mask(ds)[0], [False, True, True])


def test_deferral_arrays_are_checked() -> None:
    with pytest.raises(PolicyError, match="deferred mask of shape"):
        _policy(deferred=np.ones((1, 3), dtype=bool))
    with pytest.raises(PolicyError, match="deferred_rate must hold 2 values in"):
        _policy(deferred_rate=np.array([1.5, 1.0]))


def _labelled(labels: list[object], levels: list[object]) -> SimpleNamespace:
    ds = _rows([levels.index(v) for v in labels], [0] * len(labels), None)
    ds.categorical_levels = [levels]
    return ds


def test_labels_written_as_floats_find_the_policys_cells() -> None:
    """A policy trained on labels 136 reads a panel whose labels are 136.0, and back."""
    import warnings

    pol = _policy(levels=(("136",),), deferred=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pol.cell_index(_labelled([136.0, 136.0], [136.0])).tolist() == [0, 0]
        old = _policy(levels=(("136.0",),), deferred=None)  # saved before the normalisation
        assert old.cell_index(_labelled([136, 136], [136])).tolist() == [0, 0]


def test_mostly_unseen_levels_warn_and_no_known_level_is_refused() -> None:
    from equicare.exceptions import DataWarning

    pol = _policy(levels=(("a", "b"),), keys=np.array([[0], [1]]),
                  table=np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), deferred=None)
    ds = _labelled(["a", "x", "x"], ["a", "x"])
    with pytest.warns(DataWarning, match=r"column 'cell', 2 of 3 rows \(67%\) have levels the "
                      r"model never saw in training: e\.g\. 'x', where the model knows 2 "
                      r"levels \('a', 'b'\)"):
        assert pol.cell_index(ds).tolist() == [0, 2, 2]
    import warnings

    with warnings.catch_warnings():  # half the rows or fewer: no warning
        warnings.simplefilter("error")
        pol.cell_index(_labelled(["a", "x"], ["a", "x"]))
    with pytest.raises(PolicyError, match=r"none of the 2 levels of the categorical state column "
                       r"'cell' in the data \(e\.g\. 's1'\) is among the 2 levels"):
        pol.action_probs(_labelled(["s1", "s2"], ["s1", "s2"]))
