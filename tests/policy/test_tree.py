"""TreePolicy: features from a dataset, NumPy evaluation equal to scikit-learn, model folders."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from equicare.data import from_frame
from equicare.exceptions import PolicyError
from equicare.policy import TreePolicy, load_policy, tree_features
from equicare.spaces import FactoredActionSpace
from tests.conftest import MANIFEST, make_frame


@pytest.fixture(scope="module")
def ds():
    return from_frame(make_frame(60, seed=3, min_len=1, max_len=7), MANIFEST, emit_warnings=False)


def _brute(ds, comp, level, rows):
    """Loop reference of the history features (tests only)."""
    j = ds.action_space.names.index(comp)
    code = ds.action_space.components[j].levels.index(level)
    prev, recent = np.zeros(ds.n_steps), np.zeros(ds.n_steps)
    for e in range(ds.n_episodes):
        lo, hi = ds.episode_offsets[e], ds.episode_offsets[e + 1]
        for i in range(lo, hi):
            if i > lo:
                prev[i] = ds.action_codes[i - 1, j] == code
            recent[i] = sum(ds.action_codes[k, j] == code for k in range(max(lo, i - rows), i))
    return prev, recent


def test_features_match_a_loop_reference(ds):
    feats = [{"kind": "state", "name": "risk"},
             {"kind": "categorical", "name": "region", "level": "south"},
             {"kind": "prev_action", "component": "modality", "level": "phone"},
             {"kind": "recent_action", "component": "modality", "level": "phone", "rows": 3},
             {"kind": "prev_reward"}, {"kind": "prev_state", "name": "risk"}]
    x = tree_features(ds, feats)
    prev, recent = _brute(ds, "modality", "phone", 3)
    np.testing.assert_allclose(x[:, 0], ds.states[:, 0])
    south = ds.categorical_levels[0].index("south")
    np.testing.assert_array_equal(x[:, 1], ds.categorical[:, 0] == south)
    np.testing.assert_array_equal(x[:, 2], prev)
    np.testing.assert_array_equal(x[:, 3], recent)
    first = ds.step == 0
    assert np.all(x[first, 4] == 0) and np.all(x[first, 5] == ds.states[first, 0])
    np.testing.assert_allclose(x[~first, 4], ds.rewards[np.flatnonzero(~first) - 1])



def test_sparse_features_equal_dense(ds):
    """sparse=True gives the dense matrix as CSC; "auto" is sparse only above the cell limit;
    an unknown level is an all-zero column either way."""
    import scipy.sparse as sp

    import equicare.policy._tree as tree_mod

    feats = [{"kind": "state", "name": "risk"},
             {"kind": "categorical", "name": "region", "level": "south"},
             {"kind": "categorical", "name": "region", "level": "atlantis"},
             {"kind": "prev_action", "component": "modality", "level": "phone"},
             {"kind": "recent_action", "component": "modality", "level": "phone", "rows": 3},
             {"kind": "prev_reward"}, {"kind": "prev_state", "name": "risk"}]
    dense = tree_features(ds, feats)
    xs = tree_features(ds, feats, sparse=True)
    assert sp.issparse(xs) and xs.format == "csc"
    np.testing.assert_array_equal(xs.toarray(), dense)
    assert not dense[:, 2].any()
    assert not sp.issparse(tree_features(ds, feats, sparse="auto"))
    old = tree_mod.SPARSE_FEATURE_CELLS
    try:
        tree_mod.SPARSE_FEATURE_CELLS = ds.n_steps * len(feats) - 1
        assert sp.issparse(tree_features(ds, feats, sparse="auto"))
    finally:
        tree_mod.SPARSE_FEATURE_CELLS = old


def test_apply_reads_only_the_features_the_splits_test(ds, monkeypatch):
    """apply computes the tested features only (a wide one-hot state is not materialised),
    with the same leaves as on the whole feature matrix."""
    import equicare.policy._tree as tree_mod

    pol, clf, x = _fit_sklearn(ds, depth=4)
    # 50 more one-hot candidates that no split tests, like a wide categorical state's levels
    pol = dataclasses.replace(pol, features=(*pol.features, *(
        {"kind": "categorical", "name": "region", "level": f"code{i}"} for i in range(50))))
    used = pol.used_features
    assert 0 < used.size <= x.shape[1] < len(pol.features)
    seen = []
    real = tree_mod.tree_features

    def spy(dataset, features, source="<tree>", **kw):
        seen.append(len(features))
        return real(dataset, features, source, **kw)

    monkeypatch.setattr(tree_mod, "tree_features", spy)
    np.testing.assert_array_equal(pol.apply(ds), pol.apply_features(x))
    assert seen == [used.size]
    np.testing.assert_array_equal(pol.apply(ds), clf.apply(x))

def _fit_sklearn(ds, depth=3, seed=0):
    from sklearn.tree import DecisionTreeClassifier

    feats = [{"kind": "state", "name": n} for n in ds.state_names]
    feats.append({"kind": "categorical", "name": "region", "level": "north"})
    x = tree_features(ds, feats)
    y = np.random.default_rng(seed).integers(0, ds.n_actions, size=ds.n_steps)
    clf = DecisionTreeClassifier(max_depth=depth, random_state=seed).fit(x, y)
    t = clf.tree_
    value = t.value[:, 0, :] / t.value[:, 0, :].sum(axis=1, keepdims=True)
    probs = np.zeros((t.node_count, ds.n_actions))
    probs[:, clf.classes_] = value
    pol = TreePolicy(children_left=t.children_left, children_right=t.children_right,
                     feature=t.feature, threshold=t.threshold, probs=probs, features=feats,
                     action_space=ds.action_space)
    return pol, clf, x


def test_numpy_evaluation_equals_sklearn(ds):
    pol, clf, x = _fit_sklearn(ds, depth=4)
    np.testing.assert_array_equal(pol.apply(ds), clf.apply(x))
    p = pol.action_probs(ds)
    np.testing.assert_allclose(p[:, clf.classes_], clf.predict_proba(x))
    assert pol.window == 1 and pol.depth == 4 and pol.n_actions == ds.n_actions


def test_model_folder_round_trip(ds, tmp_path):
    pol, _, _ = _fit_sklearn(ds)
    pol.save(tmp_path / "tree")
    back = load_policy(tmp_path / "tree")
    assert isinstance(back, TreePolicy)
    np.testing.assert_array_equal(back.action_probs(ds), pol.action_probs(ds))
    with pytest.raises(FileExistsError):
        pol.save(tmp_path / "tree")
    pol.save(tmp_path / "tree", overwrite=True)


def test_errors(ds):
    space = ds.action_space
    ok = dict(children_left=np.array([-1]), children_right=np.array([-1]),
              feature=np.array([-2]), threshold=np.array([-2.0]),
              probs=np.full((1, space.n_actions), 1 / space.n_actions),
              features=({"kind": "state", "name": "risk"},), action_space=space)
    TreePolicy(**ok)
    with pytest.raises(PolicyError, match="sum to 1"):
        TreePolicy(**{**ok, "probs": np.ones((1, space.n_actions))})
    with pytest.raises(PolicyError, match=re.escape("has shape (2,); expected (1,)")):
        TreePolicy(**{**ok, "feature": np.array([0, 1])})
    with pytest.raises(PolicyError, match="unknown tree feature kind 'bogus'"):
        TreePolicy(**{**ok, "features": ({"kind": "bogus"},)})
    pol = TreePolicy(**{**ok, "features": ({"kind": "state", "name": "weight"},),
                        "children_left": np.array([1, -1, -1]),
                        "children_right": np.array([2, -1, -1]),
                        "feature": np.array([0, -2, -2]), "threshold": np.array([0.5, -2, -2]),
                        "probs": np.full((3, space.n_actions), 1 / space.n_actions)})
    with pytest.raises(PolicyError, match="reads state column 'weight'"):
        pol.action_probs(ds)
    other = TreePolicy(**{**ok, "action_space": FactoredActionSpace.single(3),
                          "probs": np.full((1, 3), 1 / 3)})
    with pytest.raises(PolicyError, match="distilled on action space"):
        other.action_probs(ds)


def test_usual_care_leaves_follow_the_stored_behaviour_model(ds, tmp_path):
    """Leaves marked usual care return the behaviour model's rows, also after a round trip
    (a behaviour tree or a per-region cell table stored in the same model folder)."""
    import json

    from equicare.explain import fit_usual_care

    pol, _, _ = _fit_sklearn(ds, depth=2)
    usual = np.zeros(pol.n_nodes, dtype=bool)
    usual[pol.leaves[::2]] = True
    leaf = pol.apply(ds)
    for kind in ("tree", "cells"):
        beh = fit_usual_care(ds, kind, min_samples_leaf=5, random_state=0)
        rules = dataclasses.replace(pol, usual=usual, usual_policy=beh)
        p = rules.action_probs(ds)
        rows = usual[leaf]
        np.testing.assert_array_equal(p[rows], beh.action_probs(ds)[rows])
        np.testing.assert_array_equal(p[~rows], pol.action_probs(ds)[~rows])
        rules.save(tmp_path / kind)
        cfg = json.loads((tmp_path / kind / "config.json").read_text())
        assert cfg["format_version"] == 2 and cfg["learner"] == "tree"
        assert cfg["tree"]["usual_care"]["kind"] == kind
        np.testing.assert_array_equal(load_policy(tmp_path / kind).action_probs(ds), p)
    with pytest.raises(PolicyError, match="has no behaviour model"):
        dataclasses.replace(pol, usual=usual)
    with pytest.raises(PolicyError, match=re.escape("tree array 'usual' has shape (2,)")):
        dataclasses.replace(pol, usual=np.zeros(2, dtype=bool))


def _region_stump(ds, levels=("north", "south")):
    """One split: region == levels[0] goes right (action 1), else left (action 0)."""
    probs = np.zeros((3, ds.n_actions))
    probs[1, 0] = probs[2, 1] = 1.0
    feats = [{"kind": "categorical", "name": "region", "level": lv} for lv in levels]
    return TreePolicy(children_left=np.array([1, -1, -1]), children_right=np.array([2, -1, -1]),
                      feature=np.array([0, -2, -2]), threshold=np.array([0.5, -2.0, -2.0]),
                      probs=probs, features=feats, action_space=ds.action_space,
                      source="rules")


def test_unseen_levels_warn_like_the_network_models(ds):
    """Relabelled levels (upper case) match no rule's test: a DataWarning says so, in the
    network models' words; the known levels give no warning."""
    import warnings

    from equicare.exceptions import DataWarning

    pol = _region_stump(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        pol.action_probs(ds)
    frame = make_frame(60, seed=3, min_len=1, max_len=7)
    frame["region"] = frame["region"].str.upper()
    up = from_frame(frame, MANIFEST, emit_warnings=False)
    with pytest.warns(DataWarning, match=r"rules: in column 'region', .* \(100%\) have levels "
                      r"the model never saw in training .*'NORTH'.*the rules read them as "
                      r"none of the levels they test"):
        pol.action_probs(up)


def test_levels_match_by_their_normalised_label(ds):
    """A tree saved with labels ``1.0``/``2.0`` reads a panel whose labels are ``1``/``2``, as
    the network models do."""
    frame = make_frame(60, seed=3, min_len=1, max_len=7)
    frame["region"] = np.where(frame["region"] == "north", 1, 2)
    num = from_frame(frame, MANIFEST, emit_warnings=False)
    pol = _region_stump(num, levels=("1.0", "2.0"))
    x = tree_features(num, pol.features)
    one = num.categorical_levels[0].index(1)
    np.testing.assert_array_equal(x[:, 0], num.categorical[:, 0] == one)
    np.testing.assert_array_equal(pol.predict(num), (num.categorical[:, 0] == one).astype(int))


def _ward_data(levels, seed=0, n_episodes=40):
    """A panel whose one categorical state, ``ward``, has the given levels."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = n_episodes * 4
    df = pd.DataFrame({"id": np.repeat(np.arange(n_episodes), 4), "t": np.tile(np.arange(4),
                                                                              n_episodes),
                       "ward": np.asarray(levels)[rng.integers(0, len(levels), size=n)],
                       "action": rng.integers(0, 2, size=n), "r": 0.0})
    manifest = {"dataset": {"episode": "id", "time": "t", "categorical_states": ["ward"]},
                "actions": {"action": {"levels": [0, 1]}},
                "reward": {"r": {"column": "r", "weight": 1.0}}}
    return from_frame(df, manifest, emit_warnings=False)


def _set_stump(ds, members, levels=("w0", "w1", "w2")):
    """One set split: ward in ``members`` goes right (action 1), else left (action 0); the
    candidates also hold one indicator per level, as a distilled tree's do."""
    probs = np.zeros((3, ds.n_actions))
    probs[1, 0] = probs[2, 1] = 1.0
    feats = [{"kind": "categorical_set", "name": "ward", "levels": members},
             *({"kind": "categorical", "name": "ward", "level": lv} for lv in levels)]
    return TreePolicy(children_left=np.array([1, -1, -1]), children_right=np.array([2, -1, -1]),
                      feature=np.array([0, -2, -2]), threshold=np.array([0.5, -2.0, -2.0]),
                      probs=probs, features=feats, action_space=ds.action_space,
                      source="rules")


def test_set_features_read_membership_and_unseen_levels(tmp_path):
    """A categorical_set feature is 1 exactly where the row's level is listed (dense and
    sparse alike); a level the list does not name, also one the rules never saw, reads 0, and
    the rules route such rows as "not one of" (with the unseen-levels warning when most rows
    have them). The set survives a model-folder round trip."""
    import json
    import warnings

    import scipy.sparse as sp

    from equicare.exceptions import DataWarning

    levels = [f"w{i}" for i in range(8)]
    ds = _ward_data(levels)
    members = ["w1", "w4", "w6"]
    feats = [{"kind": "categorical_set", "name": "ward", "levels": members}]
    labels = np.asarray(ds.categorical_levels[0])[ds.categorical[:, 0]]
    inside = np.isin(labels, members)
    assert 0 < inside.sum() < ds.n_steps
    np.testing.assert_array_equal(tree_features(ds, feats)[:, 0], inside)
    x_sp = tree_features(ds, feats, sparse=True)
    assert sp.issparse(x_sp)
    np.testing.assert_array_equal(x_sp.toarray()[:, 0], inside)
    pol = _set_stump(ds, members, levels)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        np.testing.assert_array_equal(pol.predict(ds), inside.astype(int))
    # a panel whose ward w4 is now w9 (never seen): its rows are in no set
    other = _ward_data([*levels[:4], "w9", *levels[5:]])
    lab2 = np.asarray(other.categorical_levels[0])[other.categorical[:, 0]]
    np.testing.assert_array_equal(pol.predict(other), np.isin(lab2, ["w1", "w6"]).astype(int))
    assert (lab2 == "w9").any()
    upper = _ward_data([lv.upper() for lv in levels])
    with pytest.warns(DataWarning, match="the rules read them as none of the levels they test"):
        assert not pol.predict(upper).any()
    pol.save(tmp_path / "sets")
    cfg = json.loads((tmp_path / "sets" / "config.json").read_text())
    assert cfg["tree"]["features"][0] == {"kind": "categorical_set", "name": "ward",
                                          "levels": members}
    back = load_policy(tmp_path / "sets")
    np.testing.assert_array_equal(back.predict(other), pol.predict(other))
    assert back.features == pol.features


def test_set_feature_needs_a_list_of_levels():
    ds = _ward_data(["w0", "w1", "w2"])
    with pytest.raises(PolicyError, match="a categorical_set feature needs a 'name' and a list "
                                          "of 'levels'"):
        _set_stump(ds, "w1")  # a string, not a list
    with pytest.raises(PolicyError, match="reads categorical state 'site'"):
        tree_features(ds, [{"kind": "categorical_set", "name": "site", "levels": ["a"]}])
