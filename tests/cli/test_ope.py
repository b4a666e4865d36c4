"""`equicare evaluate` through a local Typer app (register(app)) and CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from equicare.cli._ope import OUT_EXISTS
from equicare.data import Manifest, from_frame
from equicare.policy import write_policy_file

from ..conftest import MANIFEST, make_frame


@pytest.fixture
def files(tmp_path):
    df = make_frame(60, seed=1)
    data = tmp_path / "panel.csv"
    df.to_csv(data, index=False)
    man = tmp_path / "manifest.toml"
    man.write_text(Manifest.from_dict(MANIFEST).to_toml())
    ds = from_frame(df, MANIFEST, emit_warnings=False)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(ds.n_actions), size=ds.n_steps)
    pol = write_policy_file(ds, probs, tmp_path / "policy.parquet")
    return {"data": data, "manifest": man, "policy": pol, "df": df, "ds": ds, "probs": probs,
            "dir": tmp_path}


def _app() -> typer.Typer:
    from equicare.cli import app as main_app

    return main_app  # the real app: its error taxonomy and deprecated spellings


def _run(files, *extra, out=None):
    out = out or files["dir"] / "result.json"
    args = ["evaluate", str(files["data"]), "--manifest", str(files["manifest"]),
            "--policy", str(files["policy"]), "--out", str(out), "--bootstrap", "50",
            "--q-model", "linear", *extra]
    return CliRunner().invoke(_app(), args), out


def test_evaluate_writes_contract_3(files):
    res, out = _run(files, "--truncate", "50", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "Off-policy evaluation" in res.stdout and "wdr" in res.stdout
    d = json.loads(out.read_text())
    assert d["n_episodes"] == 60 and d["n_steps"] == files["ds"].n_steps
    assert list(d["estimates"]) == ["is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"]
    assert d["ess"]["truncate"] == 50.0 and "support" in d
    assert d["settings"]["random_state"] == 3 and d["settings"]["bootstrap"] == 50
    assert set(d["groups"]) == {"race", "sex"}
    assert not list(files["dir"].glob(".result.json*"))  # atomic write leaves no temp file


def test_the_result_file_is_strict_json(files, monkeypatch):
    """A value that cannot be computed is null in the result file, never NaN (not JSON)."""
    from equicare.ope._evaluate import EvaluationResult

    real = EvaluationResult.to_dict

    def with_nan(self):
        d = real(self)
        d["ess"]["kish"] = float("nan")
        return d

    monkeypatch.setattr(EvaluationResult, "to_dict", with_nan)
    res, out = _run(files, "--estimators", "wis")
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "NaN" not in text
    assert json.loads(text)["ess"]["kish"] is None


def test_refuses_to_overwrite_without_force(files):
    out = files["dir"] / "result.json"
    out.write_text("keep me")
    res, _ = _run(files, out=out)
    assert res.exit_code == 2
    assert OUT_EXISTS.format(path=out) in " ".join(res.output.split())
    assert out.read_text() == "keep me"
    res, _ = _run(files, "--force", out=out)
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["n_episodes"] == 60


def test_policy_rows_missing(files):
    ds = files["ds"]
    keep = ds.subset(np.arange(30))
    pol = write_policy_file(keep, files["probs"][: keep.n_steps], files["dir"] / "short.csv")
    files["policy"] = pol
    res, out = _run(files)
    assert res.exit_code == 2 and not out.exists()
    assert "dataset rows have no probabilities" in " ".join(res.output.split())


def test_probabilities_not_summing_to_one(files):
    df = pd.read_parquet(files["policy"])
    df["p_0"] += 0.1
    bad = files["dir"] / "bad.parquet"
    df.to_parquet(bad)
    files["policy"] = bad
    res, _ = _run(files)
    assert res.exit_code == 2
    assert "do not sum to 1 within 1e-06" in " ".join(res.output.split())


def test_zero_logged_propensities(files):
    df = files["df"].copy()
    df.loc[df.index[:4], "propensity"] = 0.0
    df.to_csv(files["data"], index=False)
    res, _ = _run(files)
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "4 rows have a logged behaviour probability that is not in (0, 1]" in text
    assert "is, wis, pdis, wpdis, dr, wdr would be biased" in text


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--q-model", "forest", "Invalid value for '--q-model'"),
    ("--behavior-model", "svm", "Invalid value for '--behavior-model'"),
    ("--estimators", "is,foo", "The 'estimators' parameter of evaluate must be"),
])
def test_bad_options(files, option, value, message):
    res, _ = _run(files, option, value)
    assert res.exit_code == 2
    assert message in " ".join(res.output.split())


def test_q_model_line_says_when_the_reference_is_kept():
    from types import SimpleNamespace

    from equicare.cli._ope import q_model_line

    q = {"chosen": "tabular_stationary", "reference": "tabular_stationary", "n_folds": 2,
         "candidates": {"tabular_stationary": 4e-3, "tabular_backward": 2e-2, "linear": 1e-3,
                        "gbm": None}}
    line = q_model_line(SimpleNamespace(q_model=q))
    assert line is not None and line.startswith("Q-model: tabular_stationary (auto;")
    assert "gbm skipped" in line and "linear's estimated bias is not smaller" in line
    q["chosen"] = "linear"
    line = q_model_line(SimpleNamespace(q_model=q))
    assert line is not None and "reference" not in line


def test_q_cells_name_the_tables_columns(files):
    """--q-cells fixes the Q-table's cells (reported in the result JSON); a column that is not
    a categorical state, or a Q-model that is not a table, is a usage error (exit 2)."""
    res, out = _run(files, "--q-model", "tabular_stationary", "--q-cells", "region", "--force")
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["q_model"]["chosen"] == "tabular_stationary[region]"
    assert "Q-model: tabular_stationary[region]" in res.output  # not eaten as Rich markup
    res, _ = _run(files, "--q-model", "tabular_stationary", "--q-cells", "site", "--force")
    assert res.exit_code == 2
    assert ("name ['site'], which is not a categorical state column; the dataset's "
            "categorical states are ['region']") in " ".join(res.output.split())
    res, _ = _run(files, "--q-cells", "region", "--force")  # _run passes --q-model linear
    assert res.exit_code == 2
    assert "--q-cells applies to the tabular Q-models and auto" in " ".join(res.output.split())


def test_q_model_line_says_which_columns_the_tables_pool_over():
    from types import SimpleNamespace

    from equicare.cli._ope import q_model_line

    q = {"chosen": "tabular_stationary[state]", "reference": "tabular_stationary[state]",
         "n_folds": 2, "candidates": {"tabular_stationary[state]": 1e-4, "linear": 2e-3},
         "cell_choice": {"columns": ["state"], "dropped": ["site"],
                         "tests": {"state": {"gain": 0.18, "se": 0.01, "kept": True},
                                   "site": {"gain": -0.31, "se": 0.012, "kept": False}}}}
    line = q_model_line(SimpleNamespace(q_model=q))
    assert line is not None
    assert ("The tables pool over site: given state and the action it does not improve the "
            "held-out log-likelihood of the next state, end and reward (per episode: site "
            "-0.31 (SE 0.012))") in line
    q["per_level"] = {"site": {"policy": "empirical", "backed_off": {"0": 0.08}}}
    line = q_model_line(SimpleNamespace(q_model=q))
    assert line is not None and line.endswith(
        "The target policy reads site: the subgroups by site refit the Q-model per level with "
        "that level's policy (the level's own target probabilities per cell, the pooled ones "
        "where the level never goes)")


def test_subgroups_by_a_pooled_site_that_the_policy_reads(tmp_path):
    """End to end from files: a Garnet panel with an irrelevant site that is also a subgroup
    (manifest groups), and a policy file that follows the soft optimum at half the sites and
    current practice at the others. The tables pool over the site; each site's estimates refit
    the Q-model with that site's policy (empirical: a policy file), said in the JSON and under
    the table; no DataWarning."""
    from equicare.cli import app
    from equicare.data import read_manifest

    runner = CliRunner()
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--states", "50", "--actions", "5",
                              "--episodes", "600", "--sites", "4", "--seed", "1", "--out",
                              str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    g = tmp_path / "g"
    man = read_manifest(g / "manifest.toml").to_dict()
    man["dataset"]["groups"] = ["group", "site"]
    (g / "manifest2.toml").write_text(Manifest.from_dict(man).to_toml())
    panel = pd.read_parquet(g / "panel.parquet")
    site = panel.drop_duplicates("episode").set_index("episode")["site"]
    soft = pd.read_parquet(g / "policies" / "soft_optimal.parquet")
    beh = pd.read_parquet(g / "policies" / "behavior.parquet")
    good = site.index[site.isin(["site0", "site1"])]
    mixed = pd.concat([soft[soft.episode.isin(good)], beh[~beh.episode.isin(good)]])
    mixed.sort_values(["episode", "t", "action"]).to_parquet(tmp_path / "reads_site.parquet")
    out = tmp_path / "res.json"
    res = runner.invoke(app, ["evaluate", str(g / "panel.parquet"), "--manifest",
                              str(g / "manifest2.toml"), "--policy",
                              str(tmp_path / "reads_site.parquet"), "--estimators", "fqe,dr",
                              "--bootstrap", "50", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "DataWarning" not in res.output
    q = json.loads(out.read_text())["q_model"]
    assert q["cell_choice"]["dropped"] == ["site"] and q["cell_choice"]["target_reads"] == ["site"]
    assert q["per_level"]["site"]["policy"] == "empirical"
    assert set(q["per_level"]["site"]["backed_off"]) == {"site0", "site1", "site2", "site3"}
    assert "the subgroups by site refit the Q-model per level" in " ".join(res.output.split())


def test_evaluate_warns_when_logged_propensities_do_not_fit_the_actions(files):
    """make_frame draws actions uniformly over 6 combinations and propensities at random: the
    importance weights rest on numbers that mean nothing, and evaluate says so."""
    res, _ = _run(files)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert (f"{files['data']}: the logged propensities (column 'propensity') disagree with the "
            "logged actions") in text
    files["df"].assign(propensity=1 / 6).to_csv(files["data"], index=False)  # the truth
    res, _ = _run(files, "--force")
    assert res.exit_code == 0 and "logged propensities" not in res.output


@pytest.mark.parametrize("stream", [False, True])
def test_wis_with_every_weight_zero_prints_n_a_and_writes_null(files, stream):
    """A policy that never takes the logged action: WIS has no value (null with a reason in the
    result, "n/a" in the table), in memory and streamed."""
    ds = files["ds"]
    probs = np.eye(ds.n_actions)[(ds.actions + 1) % ds.n_actions]
    write_policy_file(ds, probs, files["dir"] / "never.parquet")
    files = {**files, "policy": files["dir"] / "never.parquet"}
    extra = ["--estimators", "is,wis"] + (["--chunk-rows", "100"] if stream else [])
    res, out = _run(files, *extra)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    wis = d["estimates"]["wis"]
    assert wis["value"] is None and wis["ci"] is None and wis["se"] is None
    assert "every episode's importance weight is 0" in wis["reason"]
    row = next(ln for ln in res.stdout.splitlines() if ln.strip("│ ").startswith("wis"))
    assert row.count("n/a") == 3 and " 0 " not in row, row
    assert "wis: n/a, every episode's importance weight is 0" in " ".join(res.stdout.split())


def test_estimates_far_outside_the_returns_get_the_same_warning_streamed(files):
    """Propensities a million times too small on a few rows: in memory and with --chunk-rows
    the same one-line warning that the estimates lie far outside the observed returns."""
    df = files["df"].copy()
    df.loc[df.index[:3], "propensity"] *= 1e-6
    df.to_csv(files["data"], index=False)
    said = []
    for extra in ([], ["--chunk-rows", "100"]):
        res, _ = _run(files, "--estimators", "is,wis", "--force", *extra)
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        line = text[text.index("warning: is "):]
        said.append(line[:line.index("WDR.") + 4])
    assert "far outside the range of the observed returns" in said[0] and said[1] == said[0]


@pytest.mark.parametrize("q_model", ["gbm", "mlp"])
@pytest.mark.parametrize("stream", [False, True])
def test_q_cells_with_a_q_model_without_tables_is_refused_streamed_too(files, stream, q_model):
    """--q-cells names the tables' cells: with gbm or mlp it is a user error (exit 2), in memory
    and with --chunk-rows (where those Q-models do not stream and only IS-type estimates run)."""
    extra = ["--chunk-rows", "100"] if stream else []
    res, _ = _run(files, "--q-model", q_model, "--q-cells", "region", "--estimators", "wis",
                  *extra)
    assert res.exit_code == 2, res.output
    assert (f"--q-cells applies to the tabular Q-models and auto; got --q-model {q_model}."
            in " ".join(res.output.split()))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--truncate", "0", "--truncate must be a number > 0; got 0.0."),
    ("--truncate", "-1", "--truncate must be a number > 0; got -1.0."),
    ("--estimators", "WIS", "The 'estimators' parameter of evaluate must be 'all' or a list of "
                            "'is', 'wis', 'pdis', 'wpdis', 'fqe', 'dr', 'wdr', 'bandit_dr'. "
                            "Got 'WIS' instead."),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_truncate_and_unknown_estimators_say_the_same_streamed(files, stream, option, value,
                                                                   message):
    """The same option errors with --chunk-rows as in memory: no internal function named, and
    an unknown estimator is not called one that "cannot stream"."""
    res, _ = _run(files, option, value, *(["--chunk-rows", "100"] if stream else []))
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert message in text and "episode_parts" not in text and "cannot stream" not in text


@pytest.mark.usefixtures("raw_group_values")
def test_bootstrap_0_streams_the_in_memory_jackknife_intervals_and_the_help_says_so(files):
    """--bootstrap 0 (jackknife normal intervals) with --chunk-rows: the in-memory result
    JSON's numbers, overall and per level (it was refused); --ci is unused then, as in
    memory; --help says so."""
    from ..ope.test_stream import same_as_in_memory

    res, out = _run(files, "--bootstrap", "0")
    assert res.exit_code == 0, res.output
    ref = json.loads(out.read_text())
    assert ref["estimates"]["wis"]["se"] > 0
    res, streamed = _run(files, "--bootstrap", "0", "--chunk-rows", "100", "--ci", "bca",
                         out=files["dir"] / "streamed.json")
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "normal intervals from the jackknife standard errors" in said
    got = json.loads(streamed.read_text())
    assert got["bootstrap"] == {"n_boot": 0, "weights": None, "ci": "jackknife"}
    assert got["streaming"]["n_chunks"] > 1
    assert same_as_in_memory(got, ref) >= 2
    helped = CliRunner().invoke(_app(), ["evaluate", "--help"], terminal_width=200)
    text = " ".join(helped.output.split())
    assert "in memory only; with --chunk-rows at least 1" not in text
    assert "jackknife standard error, --ci unused; with --chunk-rows too" in text


@pytest.mark.parametrize("stream", [False, True])
def test_overall_is_values_resting_on_one_episodes_weight_are_warned_about(files, stream):
    """A daily 3,447-episode panel printed WIS 14.7 (behaviour 30.8) on a trajectory ESS of
    1.05 with no warning: the support check saw nothing (the policy reweights logged actions
    only) and the ESS line gives a number. Now the overall is/wis values resting on fewer than
    11 episodes' worth of weight are named, in memory and streamed; the behaviour itself draws
    nothing."""
    ds = files["ds"]
    files["df"].assign(propensity=1 / 6).to_csv(files["data"], index=False)
    one = np.repeat(np.arange(ds.n_episodes) == 0, np.diff(ds.episode_offsets))
    probs = np.where(one[:, None], np.eye(ds.n_actions)[ds.actions],
                     np.eye(ds.n_actions)[(ds.actions + 1) % ds.n_actions])
    write_policy_file(ds, probs, files["dir"] / "one.parquet")
    extra = ["--estimators", "is,wis,fqe"] + (["--chunk-rows", "100"] if stream else [])
    res, out = _run({**files, "policy": files["dir"] / "one.parquet"}, *extra)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert ("warning: the overall is and wis values rest on fewer than 11 episodes' worth of "
            "importance weight (trajectory ESS 1.0 of 60 episodes; a group's value would not be "
            "published below 11)") in text
    assert text.count("episodes' worth") == 1  # the library's warning, printed once
    assert json.loads(out.read_text())["estimates"]["wis"]["value"] is not None  # published
    write_policy_file(ds, np.full((ds.n_steps, ds.n_actions), 1 / 6),
                      files["dir"] / "same.parquet")
    res, _ = _run({**files, "policy": files["dir"] / "same.parquet"}, *extra, "--force")
    assert res.exit_code == 0 and "episodes' worth" not in res.output, res.output


@pytest.mark.parametrize("stream", [False, True])
def test_a_single_episode_panel_is_refused_naming_the_file(files, stream):
    """A one-episode panel crashed evaluate's Q-model choice (IndexError in the tabular design:
    one cross-fitting fold trained on nothing), in memory and streamed, and with a fixed Q-model
    it published every interval as a point ([v, v], se 0). Now it is refused, file named."""
    ds = files["ds"].subset([0])
    df = files["df"]
    df[df["member_id"] == ds.episode_ids[0]].to_csv(files["data"], index=False)
    write_policy_file(ds, np.full((ds.n_steps, ds.n_actions), 1 / 6), files["policy"],
                      overwrite=True)
    for q_model in ("auto", "linear"):
        extra = ["--q-model", q_model] + (["--chunk-rows", "100"] if stream else [])
        res, out = _run(files, *extra)
        assert res.exit_code == 2, res.output
        assert (f"{files['data']}: the panel has 1 episode; evaluate needs at least 2 because "
                "its intervals resample episodes and its Q-model is chosen by cross-fitting "
                "over them.") in " ".join(res.output.split())
        assert not out.exists()


@pytest.mark.parametrize("stream", [False, True])
def test_behavior_folds_and_form_reach_the_estimated_propensity_model(files, stream):
    """--behavior-folds/--behavior-form fit the model they name (result JSON's behavior_model
    block) and change the estimates; the defaults keep the cross-fitted chain (5 folds)."""
    import copy

    from equicare.cli._ope import behavior_spec

    spec = copy.deepcopy(MANIFEST)
    del spec["dataset"]["behavior_prob"]
    files["manifest"].write_text(Manifest.from_dict(spec).to_toml())
    extra = ["--chunk-rows", "100"] if stream else []
    blocks, values = [], []
    for name, opts in (("default", []),
                       ("flat1", ["--behavior-folds", "1", "--behavior-form", "flat"])):
        res, out = _run(files, "--estimators", "is,wis", *opts, *extra,
                        out=files["dir"] / f"{name}.json")
        assert res.exit_code == 0, res.output
        d = json.loads(out.read_text())
        assert d["settings"]["propensity_source"] == "estimated"
        blocks.append(d["behavior_model"])
        values.append(d["estimates"]["is"]["value"])
    assert (blocks[0]["factored"], blocks[0]["n_folds"]) == (True, 5)
    assert (blocks[1]["factored"], blocks[1]["n_folds"]) == (False, 1)
    assert values[0] != values[1]
    assert behavior_spec("logistic") == "logistic"  # defaults: evaluate's own model, same seed
    with pytest.raises(ValueError, match="--behavior-form must be one of auto, chain, flat"):
        behavior_spec("logistic", 5, "joint")


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_behavior_folds_exit_2(files, value):
    res, _ = _run(files, "--behavior-folds", value)
    assert res.exit_code == 2
    assert f"--behavior-folds must be 'auto' or an int >= 1; got '{value}'" in " ".join(
        res.output.split())


@pytest.mark.parametrize("stream", [False, True])
def test_plain_is_on_in_sample_propensities_is_flagged_under_the_table(tmp_path, stream):
    """A Garnet panel (700 states, 25 actions) evaluated without its propensity column: the
    behaviour model fits in-sample, the behaviour policy's own weights average well below 1 and
    plain IS is biased low, and so is WPDIS over its episodes of different lengths. The warning
    is printed, the table says it under is and wpdis, and the result JSON keeps the mean weight
    and the message (in memory and streamed)."""
    from equicare.cli import app

    runner = CliRunner()
    g = tmp_path / "g"
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s700_a25_g1",
                              "--episodes", "1000", "--seed", "5", "--out", str(g)])
    assert res.exit_code == 0, res.output
    text = (g / "manifest.toml").read_text()
    (g / "noprop.toml").write_text("\n".join(ln for ln in text.splitlines()
                                             if not ln.startswith("behavior_prob")))
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["evaluate", str(g / "panel.parquet"), "--manifest",
                              str(g / "noprop.toml"), "--policy",
                              str(g / "policies" / "behavior.parquet"), "--estimators",
                              "is,wis,wpdis",
                              "--bootstrap", "20", "--out", str(out),
                              *(["--chunk-rows", "4000"] if stream else [])])
    assert res.exit_code == 0, res.output
    bm = json.loads(out.read_text())["behavior_model"]
    w = bm["mean_trajectory_weight"]
    assert w < 0.5 and bm["in_sample_warning"].startswith("is and wpdis use propensities")
    flat = " ".join(res.output.split())
    assert "warning: is and wpdis use propensities estimated in-sample" in flat
    assert (f"is: biased low, in-sample estimated propensities (weights average {w:.3g}, 1 "
            "expected); read wis, dr or wdr") in flat
    # its episodes last 1 to 120 steps: WPDIS is flagged too, on a line of its own
    assert ("wpdis: biased, in-sample estimated propensities over episodes of different "
            "lengths; read wis, dr or wdr") in flat
