import json
import os

import numpy as np
import pandas as pd
import pytest

from equicare.exceptions import InvalidParameterError, PolicyError
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


# ---------------------------------------------------------------------- the folder contract
def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _heparin_omg(**overrides):
    from equicare.dosing import OMG, OMGConfig
    from equicare.sim.heparin import heparin_dataset

    ds = heparin_dataset(20, random_state=0)
    return ds, OMG(OMGConfig.small(**overrides), random_state=0).fit(ds)


def test_every_learner_writes_the_contract_and_loads_bit_identically(tmp_path):
    import torch

    from equicare.dosing import OMG
    from equicare.learn import LEARNERS, load_learner
    from equicare.online import GRPO, PPO, GRPOConfig, PPOConfig
    from equicare.policy import SimulatorPolicy, StatePolicy, manifest_fingerprint
    from equicare.sim.hospital import HospitalVectorEnv

    ds = _dataset()
    for algo, klass in LEARNERS.items():
        if algo in ("spibb", "pvi"):  # tabular: the per-cell table (checked below, test_pvi)
            continue
        learner = klass(n_steps=5, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False)
        folder = learner.save(tmp_path / algo)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["format"] == "equicare-model" and cfg["format_version"] == 2
        assert cfg["learner"] == algo and cfg["action_space"] == ds.action_space.to_dict()
        assert cfg["manifest_fingerprint"] == manifest_fingerprint(ds.manifest) is not None
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        back = load_learner(folder)
        for k, net in learner.nets_.items():
            for name, t in net.state_dict().items():
                assert torch.equal(t, back.nets_[k].state_dict()[name]), (algo, k, name)
        np.testing.assert_array_equal(back.action_probs(ds), learner.action_probs(ds))
    # SPIBB: the per-cell probability table, numeric states binned into cells
    from equicare.learn import SPIBB
    from equicare.policy import load_policy

    spibb = SPIBB(numeric="bin", n_wedge=2).fit(ds)
    folder = spibb.save(tmp_path / "spibb")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["learner"] == "spibb" and cfg["format_version"] == 2
    assert cfg["manifest_fingerprint"] == manifest_fingerprint(ds.manifest) is not None
    np.testing.assert_array_equal(load_policy(folder).action_probs(ds), spibb.action_probs(ds))
    np.testing.assert_array_equal(load_learner(folder).action_probs(ds), spibb.action_probs(ds))
    # OMG: actor, critics, reward and dynamics in one file, prefixed per part
    hds, omg = _heparin_omg()
    folder = omg.save(tmp_path / "omg")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["learner"] == "omg" and cfg["format_version"] == 2
    assert cfg["manifest_fingerprint"] == manifest_fingerprint(hds.manifest)
    prefixes = {k.split(".")[0] for k in _tensors(folder)}
    assert prefixes == {"sac", "reward_net", "dynamics"}
    back = OMG.load(folder)
    for a, b in ((omg.agent_, back.agent_), (omg.reward_net_, back.reward_net_),
                 (omg.dynamics_.net_, back.dynamics_.net_)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(back.action_probs(hds), omg.action_probs(hds))
    np.testing.assert_array_equal(back.dataset_reward(hds), omg.dataset_reward(hds))
    pol = load_policy(folder)
    assert isinstance(pol, StatePolicy) and isinstance(pol, Policy)
    np.testing.assert_array_equal(pol.action_probs(hds), omg.action_probs(hds))
    # PPO / GRPO (simulator observations; no panel, so no manifest fingerprint)
    small = {"total_steps": 4 * 32, "n_envs": 4, "n_steps": 32, "n_epochs": 1}
    env = HospitalVectorEnv("urban", num_envs=4)
    obs, info = env.reset(seed=0)
    for name, m in (("ppo", PPO(PPOConfig(**small))), ("grpo", GRPO(GRPOConfig(**small)))):
        m.fit(env, random_state=0)
        folder = m.save(tmp_path / name)
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["learner"] == name and cfg["manifest_fingerprint"] is None
        assert cfg["action_space"] == {"action": [str(a) for a in range(m.n_actions_)]}
        back = type(m).load(folder)
        sa, sb = m.policy_.state_dict(), back.policy_.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        pol = load_policy(folder)
        assert isinstance(pol, SimulatorPolicy)
        np.testing.assert_array_equal(pol.observation_probs(obs, info["action_mask"]),
                                      m.action_probs(obs, info["action_mask"]))
        with pytest.raises(PolicyError, match="not on the rows of a panel"):
            pol.action_probs(ds)


def test_forced_save_replaces_the_whole_folder(tmp_path):
    from equicare.dosing import OMG

    folder = tmp_path / "omg"
    hds, learned = _heparin_omg()
    learned.save(folder)
    # stale parts of an older layout / another model
    (folder / "reward_net.safetensors").write_bytes(b"old")
    (folder / "dynamics").mkdir()
    (folder / "dynamics" / "dynamics.json").write_text("{}")
    _, known = _heparin_omg(reward="dataset", use_model=False)
    with pytest.raises(FileExistsError, match="exists and is not empty; refusing to overwrite"):
        known.save(folder)
    assert (folder / "reward_net.safetensors").read_bytes() == b"old"
    known.save(folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert not any(p.name.startswith(".omg.") for p in tmp_path.iterdir())  # no temp left
    back = OMG.load(folder)
    assert back.reward_net_ is None and back.dynamics_ is None  # nothing stale picked up
    np.testing.assert_array_equal(back.action_probs(hds), known.action_probs(hds))


def test_force_never_replaces_a_folder_that_holds_no_model(tmp_path):
    from equicare.learn import BC

    ds = _dataset()
    bc = BC(n_steps=3, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no model folder"):
        bc.save(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        bc.save(tmp_path / "file", overwrite=True)


def test_version_1_folders_still_load(tmp_path):
    from equicare.learn import AWR

    ds = _dataset()
    awr = AWR(n_steps=3, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False)
    folder = awr.save(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = 1
    cfg["algo"] = cfg.pop("learner")
    (folder / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(load_policy(folder).action_probs(ds), awr.action_probs(ds))


@pytest.mark.parametrize(("version", "message"), [
    (3, "model format version 3 is newer than this equicare reads (up to 2); upgrade"),
    (0, "unknown model format version 0"),
    (True, "unknown model format version True"),
    (None, "unknown model format version None"),
])
def test_bad_versions_name_the_file(tmp_path, version, message):
    from equicare.learn import BC

    ds = _dataset()
    folder = BC(n_steps=3, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False).save(
        tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = version
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError) as err:
        load_policy(folder)
    assert str(err.value).startswith(str(folder / "config.json")) and message in str(err.value)


def test_truncated_weights_and_unknown_learner(tmp_path):
    from equicare.learn import BC

    ds = _dataset()
    folder = BC(n_steps=3, hidden=(8,), valid_fraction=0.0).fit(ds, progress=False).save(
        tmp_path / "m")
    w = folder / "model.safetensors"
    good = w.read_bytes()
    w.write_bytes(good[:-10])
    with pytest.raises(PolicyError, match="truncated or corrupt") as err:
        load_policy(folder)
    assert str(err.value).startswith(str(w))
    w.write_bytes(good)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["learner"] = "alphago"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PolicyError, match="learner 'alphago' has no policy loader; known"):
        load_policy(folder)


def test_legacy_omg_folder_gets_a_clear_message(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"reward": "learned"}))
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "policy.safetensors").write_bytes(b"")
    with pytest.raises(PolicyError, match="written by an earlier equicare"):
        load_policy(tmp_path)


def test_write_model_folder_names_a_bad_config(tmp_path):
    from equicare.policy._learned import write_model_folder

    with pytest.raises(InvalidParameterError,
                       match=r"The 'config' parameter of write_model_folder must be a mapping "
                             r"with a 'action_space' entry"):
        write_model_folder(tmp_path / "m", {"learner": "bc"}, {})


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_model_folder_files_get_the_usual_permissions(tmp_path):
    # safetensors writes its file 0o600: a second analyst could read config.json but not the
    # weights of a model folder in a shared project
    import torch

    from equicare.policy._learned import write_model_folder

    old = os.umask(0o022)
    try:
        p = write_model_folder(tmp_path / "m", {"learner": "bc", "action_space": {}},
                               {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in p.iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
