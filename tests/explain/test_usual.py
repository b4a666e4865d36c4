"""Current practice stored with exception rules: per-cell frequencies or a behaviour tree."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError
from equicare.explain import fit_usual_care
from equicare.explain._usual import usual_care_kind
from tests.explain import tree_sim


def test_usual_care_cells_are_the_observed_frequencies():
    train = tree_sim.generate(400, seed=0)
    cells = fit_usual_care(train, "cells")
    site = train.categorical[:, 0]
    for k in (0, 1):
        freq = np.bincount(train.actions[site == k], minlength=3) / (site == k).sum()
        np.testing.assert_allclose(cells.action_probs(train)[site == k][0], freq)
    assert usual_care_kind(train) == "tree"
    # a numeric state that is a function of the cell adds nothing: cells
    ds = tree_sim.generate(50, seed=5)
    ds.states[:, :] = ds.categorical[:, :1].astype(float)
    assert usual_care_kind(ds) == "cells"
    with pytest.raises(InvalidParameterError, match="usual_care='cells' needs categorical states"):
        usual_care_kind(replace(ds, categorical=None, categorical_names=(),
                                categorical_levels=()), "cells")


def test_usual_care_tree_estimates_the_logged_actions():
    """Uniform logged actions: the behaviour tree's distribution is uniform up to sampling."""
    train = tree_sim.generate(400, seed=0)
    tree = fit_usual_care(train, "tree", random_state=0)
    p = tree.action_probs(train)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p.mean(axis=0), np.bincount(train.actions) / train.n_steps,
                               atol=1e-9)
    assert tree.depth <= 8 and not tree.has_usual
