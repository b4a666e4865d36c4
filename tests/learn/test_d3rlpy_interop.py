import importlib.util

import numpy as np
import pytest

from equicare.learn import from_d3rlpy, to_d3rlpy

pytestmark = pytest.mark.skipif(importlib.util.find_spec("d3rlpy") is None,
                                reason="d3rlpy is not installed (pip install equicare[d3rlpy])")


@pytest.fixture(scope="module")
def d3rlpy_quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import d3rlpy  # noqa: F401  (gym prints a deprecation notice on import)
    return True


def test_round_trip_keeps_every_array(d3rlpy_quiet, mdp):
    ds = mdp.dataset(80, random_state=7, max_len=15)  # some episodes are truncated at 15 rows
    assert (ds.is_last & ~ds.terminals).any() and ds.terminals.any()
    mdp_ds = to_d3rlpy(ds)
    assert mdp_ds.dataset_info.action_size == ds.n_actions
    assert len(mdp_ds.episodes) == ds.n_episodes
    back = from_d3rlpy(mdp_ds, action_space=ds.action_space, state_names=tuple(ds.feature_names()),
                       gamma=ds.gamma)
    np.testing.assert_array_equal(back.episode_offsets, ds.episode_offsets)
    np.testing.assert_array_equal(back.states, ds.features())
    np.testing.assert_array_equal(back.actions, ds.actions)
    np.testing.assert_array_equal(back.terminals, ds.terminals)
    np.testing.assert_allclose(back.rewards, ds.rewards.astype(np.float32), rtol=0, atol=0)
    assert back.action_space == ds.action_space
    # and once more: d3rlpy -> equicare -> d3rlpy is stable
    again = to_d3rlpy(back)
    for e1, e2 in zip(mdp_ds.episodes, again.episodes, strict=True):
        np.testing.assert_array_equal(e1.observations, e2.observations)
        np.testing.assert_array_equal(e1.actions, e2.actions)
        assert e1.terminated == e2.terminated


def test_default_action_space_and_errors(d3rlpy_quiet, mdp):
    ds = mdp.dataset(10, random_state=8)
    back = from_d3rlpy(to_d3rlpy(ds))
    assert back.n_actions == ds.n_actions and back.action_space.n_components == 1
    with pytest.raises(ValueError, match="state_names has 1 names"):
        from_d3rlpy(to_d3rlpy(ds), state_names=("a",))
