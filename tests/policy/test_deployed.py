"""Policies that leave whole rows to current practice, valued as deployed (policy layer)."""

from __future__ import annotations

import dataclasses
import pickle
import re

import numpy as np
import pytest

from equicare.data import from_frame
from equicare.exceptions import InvalidParameterError
from equicare.policy import DeployedPolicy, as_deployed, load_policy
from equicare.policy._deployed import (
    MSG_USUAL_CARE,
    check_usual_care,
    deferred_counts,
    deferred_share,
    deployed_propensities,
    deployed_rows,
    exempt_rows,
)
from tests.conftest import MANIFEST, make_frame
from tests.policy.test_tree import _region_stump


@pytest.fixture(scope="module")
def ds():
    return from_frame(make_frame(60, seed=3, min_len=1, max_len=7), MANIFEST, emit_warnings=False)


@pytest.fixture(scope="module")
def rules(ds):
    """A stump whose leaf "region is not north" follows current practice (stored as cells)."""
    from equicare.explain import fit_usual_care

    return dataclasses.replace(_region_stump(ds), usual=np.array([False, True, False]),
                               usual_policy=fit_usual_care(ds, "cells", random_state=0))


def test_tree_says_which_rows_follow_practice(ds, rules):
    north = ds.categorical[:, 0] == ds.categorical_levels[0].index("north")
    np.testing.assert_array_equal(rules.deferred_rows(ds), ~north)
    assert _region_stump(ds).deferred_rows(ds) is None  # no usual-care leaf
    assert deferred_share(rules, ds) == pytest.approx((~north).mean())
    np.testing.assert_array_equal(deferred_counts(ds, rules), [(~north).sum(), ds.n_steps])
    assert deferred_share(np.ones((ds.n_steps, ds.n_actions)), ds) is None


def test_deployed_rows_keep_the_logged_action(ds, rules):
    """As deployed, a deferred row's target is its logged action (probability 1) and its
    behaviour probability 1; the rules' own rows are untouched; stored, nothing changes."""
    dep = as_deployed(rules, "deployed")
    assert isinstance(dep, DeployedPolicy) and as_deployed(dep) is dep
    assert as_deployed(rules, "stored") is rules
    p = dep.action_probs(ds)
    d = rules.deferred_rows(ds)
    onehot = np.zeros_like(p)
    onehot[np.arange(ds.n_steps), ds.actions] = 1.0
    np.testing.assert_array_equal(p[d], onehot[d])
    np.testing.assert_array_equal(p[~d], rules.action_probs(ds)[~d])
    np.testing.assert_array_equal(deployed_rows(dep, ds), d)
    assert deployed_rows(rules, ds) is None  # the stored valuation: no row exempt
    b = np.full(ds.n_steps, 0.25)
    np.testing.assert_array_equal(deployed_propensities(dep, ds, b), np.where(d, 1.0, 0.25))
    np.testing.assert_array_equal(exempt_rows(p, d)[d], 0.0)
    assert dep.window == rules.window and dep.n_actions == ds.n_actions
    dep.check_compatible(ds)  # the tree's check
    again = pickle.loads(pickle.dumps(dep))  # shards and workers receive it pickled
    np.testing.assert_array_equal(again.action_probs(ds), p)


def test_a_model_folder_of_rules_defers_after_a_round_trip(ds, rules, tmp_path):
    rules.save(tmp_path / "rules")
    back = load_policy(tmp_path / "rules")
    np.testing.assert_array_equal(back.deferred_rows(ds), rules.deferred_rows(ds))


@pytest.mark.parametrize("bad", ["deploy", None, "STORED"])
def test_usual_care_must_be_deployed_or_stored(bad):
    with pytest.raises(InvalidParameterError,
                       match=re.escape(MSG_USUAL_CARE.format(owner="evaluate", got=bad))):
        check_usual_care(bad, "evaluate")
