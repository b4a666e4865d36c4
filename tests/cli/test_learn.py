import json

import numpy as np
import pytest
from typer.testing import CliRunner

from equicare.cli._learn import parse_params, train_model
from equicare.data import Manifest, load_dataset
from equicare.learn import BC, load_learner
from equicare.policy import FilePolicy
from tests.learn.tabular_mdp import manifest as tab_manifest

runner = CliRunner()
TINY = ["--steps", "30", "--param", "hidden=[16]", "--param", "valid_fraction=0.2",
        "--no-progress"]


@pytest.fixture(scope="module")
def app():
    from equicare.cli import app as main_app

    return main_app  # the real app: its error taxonomy and deprecated spellings


@pytest.fixture(scope="module")
def files(tmp_path_factory, mdp):
    d = tmp_path_factory.mktemp("cli")
    mdp.sample_frame(60, random_state=5).to_parquet(d / "panel.parquet")
    (d / "manifest.toml").write_text(Manifest.from_dict(tab_manifest()).to_toml())
    # the same panel with another action space (one more level of 'level')
    other = tab_manifest()
    other["actions"]["level"]["levels"] = ["l0", "l1", "l2", "l3", "l4"]
    (d / "other.toml").write_text(Manifest.from_dict(other).to_toml())
    return d


def _err(result) -> str:
    return getattr(result, "stderr", None) or result.output


def test_train_then_predict_round_trip(app, files):
    model = files / "model_bc"
    res = runner.invoke(app, ["train", str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--algo", "bc", "--out", str(model),
                              *TINY, "--json"])
    assert res.exit_code == 0, _err(res)
    info = json.loads(res.stdout)
    assert info["algo"] == "bc" and info["n_steps"] == 30
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    probs = files / "probs.parquet"
    res = runner.invoke(app, ["predict", str(model), str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--out", str(probs)])
    assert res.exit_code == 0, _err(res)
    # one row per panel row, keyed by member ids: the command says it is not shareable
    from equicare.cli._learn import MSG_ROW_LEVEL

    assert MSG_ROW_LEVEL in " ".join(res.stdout.split())
    help_text = " ".join(runner.invoke(app, ["predict", "--help"]).stdout.split())
    assert "The file is row-level data like the panel" in help_text
    ds = load_dataset(files / "panel.parquet", files / "manifest.toml", emit_warnings=False)
    from_file = FilePolicy(probs).action_probs(ds)
    np.testing.assert_allclose(from_file, load_learner(model).action_probs(ds), atol=1e-12)


def test_refuses_to_overwrite_without_force(app, files):
    model = files / "model_force"
    args = ["train", str(files / "panel.parquet"), "--manifest", str(files / "manifest.toml"),
            "--algo", "cql", "--out", str(model), *TINY]
    assert runner.invoke(app, args).exit_code == 0
    before = (model / "model.safetensors").read_bytes()
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert "exists; refusing to overwrite it (pass --force to replace it)" in _err(res)
    assert (model / "model.safetensors").read_bytes() == before
    res = runner.invoke(app, [*args, "--force", "--seed", "1"])
    assert res.exit_code == 0, _err(res)
    assert (model / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("extra, message", [
    (["--algo", "dqn"], "Invalid value for '--algo': Value error, 'dqn' is not one of 'bc', "
                        "'awr', 'cql', 'spibb', 'pvi', 'omg'."),
    (["--encoder", "gru"], "Invalid value for '--encoder': Value error, 'gru' is not one of "
                           "'mlp', 'lstm'."),
    (["--encoder", "lstm", "--window", "0"], "Invalid value for '--window'"),
    (["--window", "3"], "--window does not apply to --encoder mlp"),
    (["--iterations", "3"], "--iterations does not apply to --algo awr."),
    (["--algo", "pvi", "--chunk-rows", "100"], "--chunk-rows does not apply to --algo pvi"),
    (["--algo", "spibb", "--chunk-rows", "100"], "--chunk-rows does not apply to --algo spibb"),
    # the streamed trainer has no validation split: these are refused, never ignored
    (["--chunk-rows", "100", "--param", "early_stopping=loss", "--param", "patience=1"],
     "--param early_stopping, --param valid_fraction, --param patience do not apply with "
     "--chunk-rows: the streamed trainer has no validation split"),  # TINY sets valid_fraction
    (["--chunk-rows", "100", "--param", "valid_fraction=0.3", "--param", "eval_every=50"],
     "--param valid_fraction, --param eval_every do not apply with --chunk-rows"),
    (["--fair-action", "kind=a", "--fair-lambda", "-1"],
     "The 'fair_lambda' parameter of equicare train must be a number >= 0. Got -1.0 instead."),
    (["--fair-lambda", "1"], "The 'fair_action' parameter of equicare train must be an action "
                             "set such as 'modality=home_visit' when --fair-lambda is given."),
    (["--group-robust", "1.5"], "The 'group_robust' parameter of equicare train must be a "
                                "number in [0, 1]. Got 1.5 instead."),
    (["--fair-action", "kind=zz"], "Unknown level(s) ['zz'] of action component 'kind'; "
                                   "expected one of ['a', 'b', 'c']."),
    (["--fair-action", "colour=red"], "Unknown action component 'colour'"),
    (["--param", "betta=0.3"], "Unknown learner setting for awr"),
    (["--param", "beta"], "--param must look like KEY=VALUE"),
    (["--algo", "cql", "--fair-action", "kind=c", "--param", "policy=greedy"],
     "The 'policy' parameter of CQLConfig must be 'softmax' when fair_lambda > 0."),
    # settings with a flag of their own were taken by --param and then overwritten by the flag
    (["--param", "n_steps=50"], "--param n_steps has a flag of its own: use --steps instead."),
    (["--param", "seed=3", "--param", "encoder=lstm"],
     "--param seed, encoder have a flag of their own: use --seed, --encoder instead."),
    (["--select", "auto", "--algo", "cql"], "--algo, --steps do not apply to --select auto"),
])
def test_bad_flags_give_one_line_errors(app, files, extra, message):
    res = runner.invoke(app, ["train", str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--out", str(files / "never"),
                              *TINY, *extra])
    assert res.exit_code == 2
    assert message in _err(res)
    assert "Traceback" not in _err(res)
    assert not (files / "never").exists()


def test_omg_model_free_with_a_learned_reward_names_the_flags(app, files):
    res = runner.invoke(app, ["train", str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--out", str(files / "never"),
                              "--algo", "omg", "--small", "--model-free"])
    said = " ".join(_err(res).split())
    assert res.exit_code == 2, said
    assert "error: --model-free needs --reward dataset" in said
    assert "use_model" not in said
    assert not (files / "never").exists()


def test_predict_with_model_from_another_dataset(app, files):
    model = files / "model_other"
    res = runner.invoke(app, ["train", str(files / "panel.parquet"), "--manifest",
                              str(files / "other.toml"), "--algo", "bc", "--out", str(model),
                              *TINY])
    assert res.exit_code == 0, _err(res)
    res = runner.invoke(app, ["predict", str(model), str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--out", str(files / "x.parquet")])
    assert res.exit_code == 2
    assert "the model was trained on action space" in _err(res)
    assert not (files / "x.parquet").exists()


def test_predict_refuses_existing_output_and_missing_model(app, files):
    (files / "exists.csv").write_text("x\n")
    res = runner.invoke(app, ["predict", str(files / "model_bc"), str(files / "panel.parquet"),
                              "--manifest", str(files / "manifest.toml"), "--out",
                              str(files / "exists.csv")])
    assert res.exit_code == 2 and "exists; refusing to overwrite it (pass --force" in _err(res)
    res = runner.invoke(app, ["predict", str(files / "nope"), str(files / "panel.parquet"),
                              "--manifest", str(files / "manifest.toml"), "--out",
                              str(files / "new.csv")])
    assert res.exit_code == 2 and "no such policy file or model folder" in _err(res)


def test_feature_mismatch_is_reported(tmp_path, mdp, small_data):
    bc = BC(n_steps=5, hidden=(8,), valid_fraction=0.0).fit(small_data, progress=False)
    df = mdp.sample_frame(20, random_state=9)
    df["extra_state"] = 1.0
    man = tab_manifest()
    man["dataset"]["states"] = ["extra_state"]
    from equicare.data import from_frame

    other = from_frame(df, man, emit_warnings=False)
    with pytest.raises(Exception, match="the model was trained on state columns"):
        bc.action_probs(other)


def test_train_model_function_and_params():
    assert parse_params(["beta=0.3", "hidden=[8, 8]", "critic=v"]) == {
        "beta": 0.3, "hidden": (8, 8), "critic": "v"}
    with pytest.raises(ValueError, match="The 'steps' parameter of equicare train"):
        train_model("x", "y", out="z", steps=0)


@pytest.mark.parametrize("algo", ["bc", "spibb"])
def test_force_into_a_folder_that_holds_no_model_is_refused_before_training(app, files, algo,
                                                                            monkeypatch):
    # --force replaces an earlier model folder only; the refusal came after the whole training
    import equicare.learn._registry as registry

    out = files / f"notes_{algo}"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setitem(registry.LEARNERS, algo, None)  # training would fail loudly
    res = runner.invoke(app, ["train", str(files / "panel.parquet"), "--manifest",
                              str(files / "manifest.toml"), "--algo", algo, "--out", str(out),
                              "--force", "--no-progress"])
    assert res.exit_code == 2, _err(res)
    assert "holds no model folder (config.json missing)" in " ".join(_err(res).split())
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("algo", ["spibb", "pvi"])
def test_a_tabular_policy_says_which_numeric_states_it_ignores(app, files, mdp, algo):
    """A daily panel with HbA1c, steps and age as numeric states and two categorical columns:
    `train --algo spibb` printed "39 cells" and nothing else, for a policy that acts on the app
    version alone. The line names the cells' columns and a note the numeric columns ignored."""
    frame = mdp.sample_frame(60, random_state=5)
    frame["lab"] = np.random.default_rng(0).normal(size=len(frame))
    frame.to_parquet(files / "lab.parquet")
    man = tab_manifest()
    man["dataset"]["states"] = ["lab"]
    (files / "lab.toml").write_text(Manifest.from_dict(man).to_toml())
    args = ["train", str(files / "lab.parquet"), "--manifest", str(files / "lab.toml"),
            "--algo", algo, "--force", "--out"]
    res = runner.invoke(app, [*args, str(files / f"lab_{algo}")])
    assert res.exit_code == 0, _err(res)
    text = " ".join(res.stdout.split())
    assert " cells of state, " in text
    assert (f"note: the {algo} policy ignores the numeric state columns lab (numeric='auto', "
            "the default: their quantile bins did not predict the logged actions beyond the "
            "cells)") in text
    res = runner.invoke(app, [*args, str(files / f"lab_{algo}_ign"), "--param", "numeric=ignore"])
    assert res.exit_code == 0, _err(res)
    assert (f"note: the {algo} policy ignores the numeric state columns lab "
            "(numeric='ignore')") in " ".join(res.stdout.split())
    res = runner.invoke(app, [*args, str(files / f"lab_{algo}_bin"), "--param", "numeric=bin"])
    assert res.exit_code == 0 and "ignores the numeric" not in res.stdout, _err(res)


def test_window_help_speaks_of_steps_not_weeks(app):
    """A daily panel's user read "--window: history weeks read" and could not tell whether 4
    meant 4 days or 28: the window counts rows (steps), whatever the time unit."""
    res = runner.invoke(app, ["train", "--help"], terminal_width=200)
    text = " ".join(res.output.split())
    assert ("rows of history read, the current row included (steps, whatever the time unit)"
            in text)
    assert "history weeks" not in text
