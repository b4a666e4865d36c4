from __future__ import annotations

import numpy as np
import pytest

from equicare.rewards import CARE_DEFAULT_WEIGHTS, RewardSpec, component_returns, shape_reward


def test_shape_reward_hand_computed():
    comps = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])
    w = np.array([CARE_DEFAULT_WEIGHTS[k] for k in ("primary", "engagement", "intermediate")])
    np.testing.assert_allclose(shape_reward(comps, w), [1.0 + 0.6, 0.3 + 0.5])


def test_component_returns_discounted():
    comps = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    out = component_returns(comps, np.array([0, 2, 3]), gamma=0.5)
    np.testing.assert_allclose(out, [[1.5, 0.5], [2.0, 0.0]])


def test_non_finite_weights_rejected():
    with pytest.raises(ValueError, match="finite"):
        RewardSpec(names=("a",), weights=(float("nan"),))
    with pytest.raises(ValueError, match="finite"):
        shape_reward(np.ones((2, 1)), np.array([np.inf]))
    spec = RewardSpec.from_mapping({"a": 1.0, "b": 2.0})
    assert spec.to_dict() == {"a": 1.0, "b": 2.0}
    np.testing.assert_allclose(spec.shape(np.array([[1.0, 1.0]])), [3.0])
