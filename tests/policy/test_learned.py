import json

import numpy as np
import pandas as pd
import pytest

from equicare.exceptions import PolicyError
from equicare.policy import LearnedPolicy, Policy, load_policy


def _dataset(n_episodes=30, seed=0):
    from equicare.data import from_frame

    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 6, size=n_episodes)
    ep = np.repeat(np.arange(n_episodes), lengths)
    t = np.concatenate([np.arange(n) for n in lengths])
    df = pd.DataFrame({"ep": ep, "t": t, "x1": rng.normal(size=ep.size),
                       "x2": rng.normal(size=ep.size),
                       "a": rng.choice(["no", "yes"], size=ep.size),
                       "b": rng.choice(["lo", "hi"], size=ep.size, p=[0.7, 0.3]),
                       "r": rng.normal(size=ep.size),
                       "g": np.repeat(rng.choice(["u", "v"], size=n_episodes), lengths)})
    man = {"dataset": {"episode": "ep", "time": "t", "states": ["x1", "x2"], "groups": ["g"]},
           "actions": {"a": {"levels": ["no", "yes"]}, "b": {"levels": ["lo", "hi"]}},
           "reward": {"r": {"column": "r"}}}
    return from_frame(df, man, emit_warnings=False)


@pytest.mark.parametrize("algo", ["bc", "awr", "cql"])
def test_load_policy_matches_learner(tmp_path, algo):
    from equicare.learn import LEARNERS

    ds = _dataset()
    learner = LEARNERS[algo](n_steps=20, hidden=(8,), encoder="lstm", window=2,
                             valid_fraction=0.0).fit(ds, progress=False)
    learner.save(tmp_path / algo)
    pol = load_policy(tmp_path / algo)
    assert isinstance(pol, LearnedPolicy) and isinstance(pol, Policy)
    assert pol.window == 2 and pol.n_actions == 4
    np.testing.assert_array_equal(pol.action_probs(ds), learner.action_probs(ds))


def test_load_policy_never_unpickles_and_checks_format(tmp_path, monkeypatch):
    import pickle

    import torch

    from equicare.learn import BC, load_learner

    ds = _dataset()
    BC(n_steps=5, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format"] == "equicare-model" and cfg["learner"] == "bc"
    assert cfg["action_space"] == {"a": ["no", "yes"], "b": ["lo", "hi"]}
    assert cfg["feature_names"] == ["x1", "x2"]
    # loading never calls torch.load or unpickles anything
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    load_policy(tmp_path / "m").action_probs(ds)
    load_learner(tmp_path / "m").action_probs(ds)
    monkeypatch.undo()
    # foreign format
    cfg["format"] = "something-else"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError, match="not an equicare model"):
        load_policy(tmp_path / "m")
    cfg["format"] = "equicare-model"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(PolicyError, match="model.safetensors: missing"):
        load_policy(tmp_path / "m")
    with pytest.raises(PolicyError, match="no such policy file or model folder"):
        load_policy(tmp_path / "nowhere")


def test_weights_that_do_not_match_the_spec(tmp_path):
    from equicare.learn import BC

    ds = _dataset()
    BC(n_steps=5, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["policy"]["network"]["hidden"] = [16]
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError, match="weights do not match the network"):
        load_policy(tmp_path / "m")


def test_probabilities_are_valid_rows():
    from equicare.learn import AWR
    from equicare.policy import check_probs

    ds = _dataset()
    p = AWR(n_steps=10, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False).action_probs(ds)
    check_probs(p, ds.n_steps, 4)


def test_action_probs_in_row_blocks_equal_one_pass(tmp_path, monkeypatch):
    from dataclasses import replace

    from equicare import utils
    from equicare.learn import AWR

    ds = _dataset(n_episodes=80)
    AWR(n_steps=10, hidden=(8,), encoder="lstm", window=2,
        valid_fraction=0.0).fit(ds, progress=False).save(tmp_path / "m")
    pol = replace(load_policy(tmp_path / "m"), batch_size=16)
    one = pol.action_probs(ds)
    monkeypatch.setattr(utils, "ROW_BLOCK_ELEMENTS", 50)  # blocks of 16 rows (one batch each)
    assert len(list(utils.row_blocks(ds.n_steps, 4, multiple=16))) > 10
    np.testing.assert_array_equal(pol.action_probs(ds), one)
