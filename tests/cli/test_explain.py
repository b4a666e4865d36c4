"""``equicare explain`` on models from every learner (tiny budgets), exit codes, round trips."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.data import load_dataset
from equicare.policy import TreePolicy, load_policy

runner = CliRunner()
FAST = ["--bootstrap", "20"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from equicare.learn import AWR, BC, CQL
    from equicare.sim._care_cli import synth_care

    d = tmp_path_factory.mktemp("explain")
    synth_care(d, n_members=160, n_weeks=12, seed=3)
    ds = load_dataset(d / "panel.parquet", d / "manifest.toml", emit_warnings=False)
    for name, cls in (("bc", BC), ("awr", AWR), ("cql", CQL)):
        cls(n_steps=30, hidden=(16,), valid_fraction=0.0, seed=0).fit(
            ds, progress=False).save(d / name)
    return d


def _args(files, model, out, *extra):
    return ["explain", str(files / model), str(files / "panel.parquet"), "--manifest",
            str(files / "manifest.toml"), "--out", str(out), *FAST, *extra]


def _err(res) -> str:
    return getattr(res, "stderr", None) or res.output


def _model_card(files, algo, out):
    """The card JSON of ``explain`` on the model folder of ``algo`` (checked to succeed)."""
    res = runner.invoke(app, _args(files, algo, out, "--json"))
    assert res.exit_code == 0, _err(res)
    card = json.loads(res.stdout)
    assert card["source"]["algo"] == algo and card["source"]["kind"] == "model folder"
    return card


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
@pytest.mark.parametrize("algo", ["bc", "awr", "cql"])
def test_explain_every_learner_and_predict_the_rules(files, tmp_path, algo):
    out = tmp_path / "card"
    card = _model_card(files, algo, out)
    assert 1 <= len(card["rules"]) <= 8
    assert card["data"]["mode"] == "exceptions"  # the default: where to deviate from practice
    assert all(r["text"].startswith(("if ", "always", "otherwise: as current practice"))
               for r in card["rules"])
    assert all(not r["usual"] for r in card["rules"][:-1])
    for name in ("policy_card.html", "policy_card.json", "rules.txt"):
        assert (out / name).is_file()
    html = (out / "policy_card.html").read_text()
    assert card["rules"][0]["then"] in html and "data:image/png;base64" in html
    # the rules as a model folder: predict writes the tree's probabilities
    pred = tmp_path / "rules.parquet"
    res = runner.invoke(app, ["predict", str(out / "model"), str(files / "panel.parquet"),
                              "--manifest", str(files / "manifest.toml"), "--out", str(pred)])
    assert res.exit_code == 0, _err(res)
    tree = load_policy(out / "model")
    assert isinstance(tree, TreePolicy)
    ds = load_dataset(files / "panel.parquet", files / "manifest.toml", emit_warnings=False)
    wide = pd.read_parquet(pred)
    probs = wide[[f"p_{a}" for a in range(ds.n_actions)]].to_numpy()
    np.testing.assert_allclose(probs, tree.action_probs(ds), atol=1e-12)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_refuses_to_overwrite_without_force(files, tmp_path):
    out = tmp_path / "card"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    res = runner.invoke(app, _args(files, "bc", out))
    assert res.exit_code == 2
    assert "refusing to overwrite it (pass --force to replace it)" in _err(res)
    assert (out / "mine.txt").read_text() == "keep"
    # --force replaces an earlier card, never a folder holding anything else
    res = runner.invoke(app, _args(files, "bc", out, "--force", "--depth", "2"))
    assert res.exit_code == 2 and "is not a policy card folder" in _err(res)
    assert len(_err(res).strip().splitlines()) == 1
    assert (out / "mine.txt").read_text() == "keep"
    (out / "mine.txt").unlink()
    res = runner.invoke(app, _args(files, "bc", out, "--depth", "3"))
    assert res.exit_code == 0, _err(res)
    res = runner.invoke(app, _args(files, "bc", out, "--force", "--depth", "2"))
    assert res.exit_code == 0, _err(res)
    assert json.loads((out / "policy_card.json").read_text())["tree"]["depth"] <= 2
    assert not list(tmp_path.glob(".card.*"))  # no temporary folders left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card"]


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_force_never_replaces_the_input_folder(files, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("panel.parquet", "manifest.toml"):
        (data / name).write_bytes((files / name).read_bytes())
    args = ["explain", str(files / "bc"), str(data / "panel.parquet"), "--manifest",
            str(data / "manifest.toml"), *FAST, "--force", "--out"]
    res = runner.invoke(app, [*args, str(data)])
    assert res.exit_code == 2 and "holding it" in _err(res), _err(res)
    assert sorted(p.name for p in data.iterdir()) == ["manifest.toml", "panel.parquet"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    res = runner.invoke(app, [*args, "."])
    assert res.exit_code == 2 and "is the current directory" in _err(res), _err(res)
    assert len(_err(res).strip().splitlines()) == 1 and list(empty.iterdir()) == []


@pytest.mark.parametrize(("extra", "message"), [
    (["--labels", "soft"], "Invalid value for '--labels'"),
    (["--estimators", "dr,magic"], "The 'estimators' parameter of ExplainConfig"),
    (["--deviation-margin", "1"], "The 'deviation_margin' parameter of DistillConfig must be "
                                  "'auto' or a number in [0, 1). Got 1.0 instead."),
    (["--deviation-margin", "noise"], "expected auto or a number, got 'noise'"),
])
def test_bad_options_exit_2(files, tmp_path, extra, message):
    res = runner.invoke(app, _args(files, "bc", tmp_path / "c", *extra))
    assert res.exit_code == 2 and message in _err(res)


def test_bad_inputs_exit_2(files, tmp_path):
    res = runner.invoke(app, _args(files, "no_such_model", tmp_path / "c"))
    assert res.exit_code == 2 and "no such model folder or policy file" in _err(res)
    bad = tmp_path / "bad.toml"
    bad.write_text((files / "manifest.toml").read_text().replace('"home_visit"', '"visit"'))
    res = runner.invoke(app, ["explain", str(files / "bc"), str(files / "panel.parquet"),
                              "--manifest", str(bad), "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_help_has_an_example():
    res = runner.invoke(app, ["explain", "--help"])
    assert res.exit_code == 0 and "Example: equicare explain" in res.output


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_explain_a_policy_file(files, tmp_path):
    """A Contract-2 policy file is explained like a model folder (here AWR's predictions)."""
    pfile = tmp_path / "awr.parquet"
    res = runner.invoke(app, ["predict", str(files / "awr"), str(files / "panel.parquet"),
                              "--manifest", str(files / "manifest.toml"), "--out", str(pfile)])
    assert res.exit_code == 0, _err(res)
    res = runner.invoke(app, _args(files, pfile, tmp_path / "card", "--depth", "2", "--json"))
    assert res.exit_code == 0, _err(res)
    card = json.loads(res.stdout)
    assert card["source"]["kind"] == "policy file" and card["tree"]["depth"] <= 2
    folder = json.loads(runner.invoke(app, _args(files, "awr", tmp_path / "c2", "--depth", "2",
                                                 "--json")).stdout)
    assert card["rules"] == folder["rules"]  # same probabilities, same rules


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_evaluate_audit_and_mediate_accept_the_rules(files, tmp_path):
    """Both kinds of rules load through the one policy loader in evaluate, audit and mediate."""
    for mode in ("exceptions", "imitate"):
        out = tmp_path / mode
        res = runner.invoke(app, _args(files, "bc", out, "--mode", mode, "--depth", "2"))
        assert res.exit_code == 0, _err(res)
        card = json.loads((out / "policy_card.json").read_text())
        assert card["data"]["mode"] == mode
        common = [str(files / "panel.parquet"), "--manifest", str(files / "manifest.toml")]
        res = runner.invoke(app, ["evaluate", *common, "--policy", str(out / "model"),
                                  "--estimators", "wis,dr", "--bootstrap", "20",
                                  "--out", str(tmp_path / f"{mode}_ope.json")])
        assert res.exit_code == 0, _err(res)
        res = runner.invoke(app, ["audit", *common, "--policy", f"rules={out / 'model'}",
                                  "--action", "modality=home_visit", "--bootstrap", "20",
                                  "--permutations", "0", "--out", str(tmp_path / f"{mode}.json")])
        assert res.exit_code == 0, _err(res)
        assert "rules" in json.loads((tmp_path / f"{mode}.json").read_text())["policies"]
        res = runner.invoke(app, ["mediate", *common, "--policy", str(out / "model"),
                                  "--action", "modality=home_visit", "--control", "0",
                                  "--bootstrap", "10", "--out", str(tmp_path / f"{mode}_med.json")])
        assert res.exit_code == 0, _err(res)
        med = json.loads((tmp_path / f"{mode}_med.json").read_text())
        assert med["target"] == "rules (depth 2) of bc"  # not the folder name "model"


@pytest.fixture(scope="module")
def garnet_files(tmp_path_factory):
    """A small Garnet panel (one categorical state) and SPIBB / PVI model folders on it."""
    from equicare.learn import PVI, SPIBB
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import GarnetConfig

    d = tmp_path_factory.mktemp("explain_garnet") / "g"
    synth_garnet(d, config=GarnetConfig(n_states=50, n_actions=5), n_episodes=400, seed=1)
    ds = load_dataset(d / "panel.parquet", d / "manifest.toml", emit_warnings=False)
    SPIBB(n_wedge=10).fit(ds).save(d / "spibb")
    PVI().fit(ds).save(d / "pvi")
    return d


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
@pytest.mark.parametrize("algo", ["spibb", "pvi"])
def test_explain_the_cell_learners(garnet_files, tmp_path, algo):
    """The safe learners of issue 15 (per-cell policies over the categorical state)."""
    out = tmp_path / "card"
    card = _model_card(garnet_files, algo, out)
    assert card["rules"][-1]["text"] == "otherwise: as current practice"
    assert any(r["text"].startswith("if state is ") for r in card["rules"][:-1])
    assert 0.5 <= card["evidence"]["fidelity"]["agreement"] <= 1.0  # measured 84-88%
    rules = load_policy(out / "model")
    assert isinstance(rules, TreePolicy)
    ds = load_dataset(garnet_files / "panel.parquet", garnet_files / "manifest.toml",
                      emit_warnings=False)
    probs = rules.action_probs(ds)
    assert probs.shape == (ds.n_steps, ds.n_actions)
    assert np.allclose(probs.sum(axis=1), 1.0)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_set_splits_option(garnet_files, tmp_path):
    """Set-valued splits are on by default; --no-set-splits leaves one level per test (the card
    JSON's config and the rules' candidate features say which); --deviation-margin (a number
    or auto) reaches the distillation."""
    res = runner.invoke(app, [*_args(garnet_files, "spibb", tmp_path / "off", "--json"),
                              "--no-set-splits", "--deviation-margin", "0.2"])
    assert res.exit_code == 0, _err(res)
    card = json.loads(res.stdout)
    assert card["settings"]["distill"]["set_splits"] is False
    assert card["settings"]["distill"]["deviation_margin"] == 0.2
    kinds = {f["kind"] for f in load_policy(tmp_path / "off" / "model").features}
    assert "categorical_set" not in kinds
    on = _model_card(garnet_files, "spibb", tmp_path / "on")
    assert on["settings"]["distill"]["set_splits"] is True
    assert on["settings"]["distill"]["deviation_margin"] == "auto"  # the default
    assert "--set-splits" in runner.invoke(app, ["explain", "--help"]).output
