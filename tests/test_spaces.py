from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from equicare.spaces import FactoredActionSpace


def space_of(sizes):
    return FactoredActionSpace.from_levels(
        {f"c{j}": [f"l{i}" for i in range(k)] for j, k in enumerate(sizes)}
    )


def test_mixed_radix_last_fastest():
    s = space_of([5, 5, 4, 3])
    assert s.n_actions == 300
    assert s.to_flat([[0, 0, 0, 1]])[0] == 1
    assert s.to_flat([[0, 0, 1, 0]])[0] == 3
    assert s.to_flat([[0, 1, 0, 0]])[0] == 12
    assert s.to_flat([[1, 0, 0, 0]])[0] == 60
    assert s.to_flat([[4, 4, 3, 2]])[0] == 299


@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.data())
def test_round_trip(sizes, data):
    s = space_of(sizes)
    flat = np.array(data.draw(st.lists(st.integers(0, s.n_actions - 1), min_size=1, max_size=50)))
    codes = s.from_flat(flat)
    assert codes.shape == (flat.size, len(sizes))
    assert (codes < np.array(sizes)).all() and (codes >= 0).all()
    np.testing.assert_array_equal(s.to_flat(codes), flat)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_all_codes_is_bijection(sizes):
    s = space_of(sizes)
    codes = s.all_codes()
    assert len({tuple(c) for c in codes}) == s.n_actions
    np.testing.assert_array_equal(s.to_flat(codes), np.arange(s.n_actions))


def test_labels_and_masks():
    s = FactoredActionSpace.from_levels(
        {"modality": ["none", "phone", "home_visit"], "urgency": ["routine", "urgent"]}
    )
    assert s.label(5) == "home_visit/urgent"
    assert s.labels()[:2] == ["none/routine", "none/urgent"]
    np.testing.assert_array_equal(
        s.level_mask("modality", "home_visit"), [False, False, False, False, True, True]
    )
    np.testing.assert_array_equal(s.parse_action_set("urgency=urgent"), [0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="Unknown level"):
        s.level_mask("modality", "video")
    with pytest.raises(KeyError, match="Unknown action component"):
        s.level_mask("provider", "rn")
    with pytest.raises(ValueError, match="component=level"):
        s.parse_action_set("home_visit")


def test_observed_mask_counts():
    s = space_of([2, 3])
    flat = np.array([0, 0, 5, 3])
    np.testing.assert_array_equal(s.counts(flat), [2, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(s.observed_mask(flat, min_count=2), [1, 0, 0, 0, 0, 0])


def test_bad_codes():
    s = space_of([2, 3])
    with pytest.raises(ValueError, match="out of range"):
        s.to_flat([[2, 0]])
    with pytest.raises(ValueError, match="2 columns"):
        s.to_flat([[0, 0, 0]])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        s.from_flat([6])


def test_dict_round_trip():
    s = space_of([2, 3])
    assert FactoredActionSpace.from_dict(s.to_dict()) == s
