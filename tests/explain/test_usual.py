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


def test_small_and_unseen_cells_are_left_to_the_clinicians(tmp_path):
    """Practice as cells keeps no row for a cell of fewer than 11 episodes (privacy): its rows,
    and an unseen cell's, are left to the clinicians (``deferred``), not given the overall
    frequencies as practice. The rules report those rows through ``deferred_mask`` (at their
    usual-care leaves only), a model folder keeps the mask, and on a panel with logged
    propensities the logged action keeps its own propensity there (importance ratio 1)."""
    from equicare.data import from_frame
    from equicare.data._io import to_frame
    from equicare.explain import distill
    from equicare.explain._usual import usual_care_probs
    from equicare.policy import load_policy

    frame = to_frame(tree_sim.generate(400, seed=3))
    frame.loc[~frame["id"].isin(range(5)), "site"] = "a"  # site "b" in 5 episodes only
    ds = from_frame(frame, tree_sim.MANIFEST, emit_warnings=False)
    small = ds.categorical[:, 0] == list(ds.categorical_levels[0]).index("b")
    assert small.sum() > 0
    cells = fit_usual_care(ds, "cells")
    assert cells.n_cells == 1
    mask = cells.deferred_mask(ds)
    assert mask[small].all() and not mask[~small].any()
    marginal = np.bincount(ds.actions, minlength=3) / ds.n_steps
    np.testing.assert_allclose(usual_care_probs(cells, ds)[small], marginal[None, :].repeat(
        int(small.sum()), axis=0))
    p = cells.action_probs(ds)  # the logged propensity 1/3 on the logged action
    np.testing.assert_allclose(p[small, ds.actions[small]], 1 / 3)
    tree = distill(ds, tree_sim.NoisyExpert(), max_depth=2, mode="exceptions", random_state=0,
                   usual_care="cells", q_model="tabular")
    assert tree.has_usual
    d = tree.deferred_mask(ds)
    at_usual = tree.deferred_rows(ds)
    np.testing.assert_array_equal(d.any(axis=1), at_usual & small)
    tree.save(tmp_path / "rules")
    back = load_policy(tmp_path / "rules")
    np.testing.assert_array_equal(back.deferred_mask(ds), d)
    np.testing.assert_allclose(back.action_probs(ds), tree.action_probs(ds))
    # the rules give those rows the stored stand-in, with or without propensities
    rows = at_usual & small
    assert rows.any()
    np.testing.assert_allclose(tree.action_probs(ds)[rows], marginal[None, :].repeat(
        int(rows.sum()), axis=0))
    np.testing.assert_allclose(tree.action_probs(ds.with_behavior_prob(None)),
                               tree.action_probs(ds))

