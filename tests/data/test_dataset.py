from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame
from equicare.data._labels import MSG_MISSING_GROUP
from equicare.exceptions import DataValidationError

from ..conftest import make_frame


@pytest.fixture
def ds(manifest_dict):
    return from_frame(make_frame(40, seed=3), manifest_dict, emit_warnings=False)


def test_derived_arrays(ds):
    e = ds.episode(2)
    s, t = ds.episode_offsets[2], ds.episode_offsets[3]
    assert np.shares_memory(e.states, ds.states)
    np.testing.assert_array_equal(e.actions, ds.actions[s:t])
    assert ds.step[s] == 0 and ds.step[t - 1] == t - s - 1
    assert ds.next_index[t - 1] == -1 and ds.next_index[s] == s + 1
    np.testing.assert_allclose(ds.discounts[s:t], 0.9 ** np.arange(t - s))
    manual = np.array(
        [np.sum(0.9 ** np.arange(len(ep.rewards)) * ep.rewards) for ep in ds.iter_episodes()]
    )
    np.testing.assert_allclose(ds.returns(), manual)
    np.testing.assert_allclose(ds.rewards, ds.reward_components @ np.array([1.0, 0.5]))


def test_features_one_hot(ds):
    f = ds.features()
    assert f.shape == (ds.n_steps, 2 + 2) and f.dtype == np.float32
    np.testing.assert_array_equal(f[:, 2:].sum(axis=1), 1)
    assert ds.feature_names() == ["risk", "engagement", "region=north", "region=south"]


def test_subset_and_groups(ds):
    sub = ds.subset([3, 0])
    assert sub.n_episodes == 2
    np.testing.assert_array_equal(sub.episode(0).actions, ds.episode(3).actions)
    np.testing.assert_array_equal(sub.episode(1).states, ds.episode(0).states)
    parts = ds.by_group("race")
    assert sum(p.n_episodes for p in parts.values()) == ds.n_episodes
    for label, part in parts.items():
        assert (part.groups["race"] == label).all()
    inter = ds.intersect_groups(["race", "sex"])
    assert inter[0] == f"{ds.groups['race'][0]} x {ds.groups['sex'][0]}"


def test_split_is_reproducible_and_disjoint(ds):
    tr, va = ds.split(0.25, random_state=1, stratify="race")
    tr2, va2 = ds.split(0.25, random_state=1, stratify="race")
    np.testing.assert_array_equal(va.episode_ids, va2.episode_ids)
    assert set(tr.episode_ids).isdisjoint(va.episode_ids)
    assert tr.n_episodes + va.n_episodes == ds.n_episodes
    assert va.n_episodes == pytest.approx(0.25 * ds.n_episodes, abs=3)


def test_kfold_holds_every_episode_out_once_keeping_strata(ds):
    pairs = ds.kfold(4, random_state=3, stratify="race")
    assert len(pairs) == 4
    held = np.concatenate([va.episode_ids for _, va in pairs])
    np.testing.assert_array_equal(np.sort(held), np.sort(ds.episode_ids))  # a partition
    labels = np.asarray(ds.group_labels("race"))
    for tr, va in pairs:
        assert set(tr.episode_ids).isdisjoint(va.episode_ids)
        assert tr.n_episodes + va.n_episodes == ds.n_episodes
        assert tr.n_steps + va.n_steps == ds.n_steps
        # every stratum is dealt evenly: per fold within one episode of n / 4
        va_labels = np.asarray(va.group_labels("race"))
        for g in np.unique(labels):
            assert abs((va_labels == g).sum() - (labels == g).sum() / 4) <= 1
    again = ds.kfold(4, random_state=3, stratify="race")
    for (_, a), (_, b) in zip(pairs, again, strict=True):
        np.testing.assert_array_equal(a.episode_ids, b.episode_ids)
    other = ds.kfold(4, random_state=4, stratify="race")
    assert not np.array_equal(pairs[0][1].episode_ids, other[0][1].episode_ids)
    for bad in (1, 2.0, True):
        with pytest.raises(ValueError, match="n_folds"):
            ds.kfold(bad)  # type: ignore[arg-type]


def test_reweighting(ds):
    ds2 = ds.with_reward_weights({"engagement": 0.0})
    np.testing.assert_allclose(ds2.rewards, ds.reward_components[:, 0])
    with pytest.raises(KeyError, match="Unknown reward component"):
        ds.with_reward_weights({"nope": 1.0})


def test_summary_has_no_rows(ds):
    s = ds.summary()
    assert s["n_episodes"] == ds.n_episodes and s["n_actions"] == 6
    assert set(s["groups"]) == {"race", "sex"}


def test_summary_suppresses_small_group_counts_and_their_complements(manifest_dict):
    frame = make_frame(60, seed=1)
    ids = frame.member_id.unique()
    level = {m: ("tiny" if i < 5 else "a" if i < 30 else "b") for i, m in enumerate(ids)}
    frame["race"] = frame.member_id.map(level)
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    counts = ds.summary()["groups"]["race"]
    assert counts["tiny"] is None and sum(v is None for v in counts.values()) == 2
    assert 5 not in counts.values()
    # the exact sizes stay available to internal code only
    assert ds._group_counts()["race"] == {"a": 25, "b": 30, "tiny": 5}


def test_summary_publishes_no_rows_extreme_length_or_propensity(manifest_dict):
    """Episode lengths and logged propensities: ``p_bottom11``/``p_top11`` (at least 11 values
    beyond each), not the minimum and maximum (one member's follow-up, one row's propensity)."""
    frame = make_frame(80, seed=2, min_len=2, max_len=12)
    ds = from_frame(frame, manifest_dict, emit_warnings=False)
    s = ds.summary()
    lengths, b = ds.episode_lengths, ds.behavior_prob
    assert set(s["episode_length"]) == {"median", "p_bottom11", "p_top11"}
    el = s["episode_length"]
    assert np.sum(lengths <= el["p_bottom11"]) >= 11 and np.sum(lengths >= el["p_top11"]) >= 11
    assert b is not None
    bp = s["behavior_prob"]
    assert set(bp) == {"p_bottom11", "p_top11"}
    assert b.min() not in bp.values() and b.max() not in bp.values()
    assert np.sum(b <= bp["p_bottom11"] * 1.001) >= 11
    assert np.sum(b >= bp["p_top11"] * 0.999) >= 11


@pytest.mark.parametrize("missing", [None, np.nan, pd.NA, "", " "])
def test_an_episode_without_a_group_label_is_an_error_not_a_group(ds, missing):
    race = ds.groups["race"].astype(object)
    race[[2, 5]] = missing
    msg = MSG_MISSING_GROUP.format(
        where="TrajectoryDataset", column="race",
        rows=f"2 episodes (first: '{ds.episode_ids[2]}', '{ds.episode_ids[5]}'; episode ids)")
    with pytest.raises(DataValidationError, match=re.escape(msg)):
        replace(ds, groups={**ds.groups, "race": race})
    race[[2, 5]] = "unknown"  # labelled explicitly: audited as a group of its own
    assert "unknown" in set(replace(ds, groups={**ds.groups, "race": race}).groups["race"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_splits_keep_each_members_episodes_together(seed):
    """Members who re-enrol (the manifest's ``member``): a person's episodes went to both parts
    of a split (the run's hold-out, explain's evidence, the selection's halves), so the
    held-out evaluation saw people the policy was trained on. Splits and folds now deal
    people; the shares stay near the asked ones."""
    from equicare.data import from_frame

    from ..conftest import make_reenrolled_frame

    frame, man = make_reenrolled_frame(n_members=120, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = from_frame(frame, man)
    train, test = ds.split(0.5, random_state=seed, stratify="race")
    assert not set(train.members) & set(test.members)
    assert train.n_episodes + test.n_episodes == ds.n_episodes
    assert 0.3 < test.n_episodes / ds.n_episodes < 0.7
    folds = ds.kfold(3, random_state=seed)
    held = [set(v.members) for _, v in folds]
    assert sum(len(h) for h in held) == len(set(ds.members))  # each person in one fold
    assert sum(v.n_episodes for _, v in folds) == ds.n_episodes
    for tr, va in folds:
        assert not set(tr.members) & set(va.members)
