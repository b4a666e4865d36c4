"""Every learner's model folder through ``predict``, ``evaluate``, ``audit`` and ``mediate``.

One loader (``equicare.policy.load_policy``) serves every command. BC, AWR and CQL are trained on
a care-management panel, OMG on the dosing panel of ``synth --sim heparin``; PPO and GRPO act on
the hospital simulator's observations, so the panel commands refuse them with one line (exit 2).
Bad folders (truncated weights, future or unknown version, missing files) give exit code 2 and a
message naming the file.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.exceptions import DataWarning
from equicare.policy import FilePolicy, load_policy

runner = CliRunner()
OFFLINE = ("bc", "awr", "cql")


def _one_line_error(res: Any) -> str:
    out = res.output
    assert res.exit_code == 2, out
    assert "Traceback" not in out
    return " ".join(out.split())


@pytest.fixture(scope="module")
def care(tmp_path_factory) -> dict[str, Any]:
    from equicare.data import load_dataset
    from equicare.learn import LEARNERS
    from equicare.sim.care import CareManagementSim

    root = tmp_path_factory.mktemp("care_models")
    CareManagementSim().generate(n_members=80, n_weeks=6, random_state=5).write(root)
    data, man = root / "panel.parquet", root / "manifest.toml"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(data, man, emit_warnings=False)
    models = {}
    for algo in OFFLINE:
        learner = LEARNERS[algo](n_steps=5, hidden=(8,), valid_fraction=0.0, seed=0)
        learner.fit(ds, progress=False).save(root / algo)
        models[algo] = learner
    return {"data": data, "manifest": man, "ds": ds, "root": root, "models": models}


@pytest.fixture(scope="module")
def heparin(tmp_path_factory) -> dict[str, Any]:
    from equicare.data import load_dataset
    from equicare.dosing import OMG, OMGConfig

    root = tmp_path_factory.mktemp("heparin_models")
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--members", "30", "--seed", "1",
                              "--out", str(root)])
    assert res.exit_code == 0, res.output
    data, man = root / "panel.parquet", root / "manifest.toml"
    ds = load_dataset(data, man, emit_warnings=False)
    omg = OMG(OMGConfig.small(), random_state=0).fit(ds)
    omg.save(root / "omg")
    return {"data": data, "manifest": man, "ds": ds, "root": root, "models": {"omg": omg}}


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> dict[str, Any]:
    from equicare.online import GRPO, PPO, GRPOConfig, PPOConfig
    from equicare.sim.hospital import HospitalVectorEnv

    root = tmp_path_factory.mktemp("online_models")
    small = {"total_steps": 4 * 32, "n_envs": 4, "n_steps": 32, "n_epochs": 1}
    models = {"ppo": PPO(PPOConfig(**small)), "grpo": GRPO(GRPOConfig(**small, lam=0.5))}
    for name, m in models.items():
        m.fit(HospitalVectorEnv("urban", num_envs=4), random_state=0).save(root / name)
    return {"root": root, "models": models}


def _panel(care, heparin, algo):
    return heparin if algo == "omg" else care


@pytest.mark.parametrize("algo", [*OFFLINE, "omg"])
def test_predict_evaluate_audit_any_model_folder(care, heparin, algo, tmp_path) -> None:
    p = _panel(care, heparin, algo)
    folder, data, man = p["root"] / algo, str(p["data"]), str(p["manifest"])
    # predict: the file holds exactly the learner's probabilities (loaded bit-identically)
    probs_file = tmp_path / "probs.parquet"
    res = runner.invoke(app, ["predict", str(folder), data, "--manifest", man, "--out",
                              str(probs_file)])
    assert res.exit_code == 0, res.output
    expected = p["models"][algo].action_probs(p["ds"])
    np.testing.assert_array_equal(load_policy(folder).action_probs(p["ds"]), expected)
    np.testing.assert_array_equal(FilePolicy(probs_file).action_probs(p["ds"]), expected)
    # evaluate --policy FOLDER and --policy FILE give the same numbers
    outs = []
    for pol in (folder, probs_file):
        out = tmp_path / f"result_{pol.name}.json"
        res = runner.invoke(app, ["evaluate", data, "--manifest", man, "--policy", str(pol),
                                  "--estimators", "wis,dr", "--q-model", "linear",
                                  "--bootstrap", "5", "--seed", "0", "--out", str(out)])
        assert res.exit_code == 0, res.output
        outs.append(json.loads(out.read_text())["estimates"])
    assert outs[0] == outs[1]
    # audit --policy NAME=FOLDER (--min-cell 1: the small heparin panel publishes one race
    # group otherwise, and a parity audit needs two)
    out = tmp_path / "audit.json"
    res = runner.invoke(app, ["audit", data, "--manifest", man, "--policy", f"m={folder}",
                              "--n-boot", "5", "--permutations", "0", "--min-cell", "1",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert list(json.loads(out.read_text())["policies"]) == ["behavior", "m"]


def test_mediate_takes_a_model_folder(care, tmp_path) -> None:
    out = tmp_path / "med.json"
    with warnings.catch_warnings():  # the panel's unobserved action combinations
        warnings.simplefilter("ignore", DataWarning)
        res = runner.invoke(app, ["mediate", str(care["data"]), "--manifest",
                                  str(care["manifest"]), "--policy", str(care["root"] / "awr"),
                                  "--action", "modality=home_visit", "--estimators", "dm",
                                  "--basis", "constant", "--bootstrap", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "dm" in json.loads(out.read_text())["estimators"]


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_simulator_policies_refused_on_panels_with_one_line(care, online, algo, tmp_path) -> None:
    folder, data, man = online["root"] / algo, str(care["data"]), str(care["manifest"])
    why = "acts on the observation vector of the simulator it was trained in"
    for args in (["predict", str(folder), data, "--manifest", man, "--out",
                  str(tmp_path / "p.parquet")],
                 ["evaluate", data, "--manifest", man, "--policy", str(folder), "--out",
                  str(tmp_path / "r.json")],
                 ["audit", data, "--manifest", man, "--policy", str(folder), "--n-boot", "0",
                  "--permutations", "0"]):
        msg = _one_line_error(runner.invoke(app, args))
        assert why in msg and algo.upper() in msg, msg
    # in its simulator the loaded policy is the learner's, bit for bit
    from equicare.sim.hospital import HospitalVectorEnv

    obs, info = HospitalVectorEnv("urban", num_envs=4).reset(seed=3)
    pol = load_policy(folder)
    learner = online["models"][algo]
    np.testing.assert_array_equal(pol.observation_probs(obs, info["action_mask"]),
                                  learner.action_probs(obs, info["action_mask"]))


def _broken(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    w, c = dst / "model.safetensors", dst / "config.json"
    if how == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif how == "garbage":
        w.write_bytes(b"\x00" * 64)
    elif how in ("future", "unknown"):
        cfg = json.loads(c.read_text())
        cfg["format_version"] = 99 if how == "future" else "two"
        c.write_text(json.dumps(cfg))
    elif how == "no_weights":
        w.unlink()
    elif how == "no_config":
        c.unlink()
    return dst


@pytest.mark.parametrize(("how", "file", "message"), [
    ("truncated", "model.safetensors", "cannot read the weights"),
    ("garbage", "model.safetensors", "the file is truncated or corrupt"),
    ("future", "config.json", "model format version 99 is newer than this equicare reads"),
    ("unknown", "config.json", "unknown model format version 'two'"),
    ("no_weights", "model.safetensors", "model.safetensors: missing"),
    ("no_config", "config.json", "config.json: missing"),
])
def test_bad_model_folder_exit_2_naming_the_file(care, tmp_path, how, file, message) -> None:
    folder = _broken(care["root"] / "bc", tmp_path / "bad", how)
    data, man = str(care["data"]), str(care["manifest"])
    for args in (["predict", str(folder), data, "--manifest", man, "--out",
                  str(tmp_path / "p.parquet")],
                 ["evaluate", data, "--manifest", man, "--policy", str(folder), "--out",
                  str(tmp_path / "r.json")],
                 ["audit", data, "--manifest", man, "--policy", str(folder), "--n-boot", "0",
                  "--permutations", "0"]):
        msg = _one_line_error(runner.invoke(app, args))
        assert message in msg and str(folder / file) in msg, msg
