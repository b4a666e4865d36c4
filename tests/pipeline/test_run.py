"""The main job end to end on a tiny config (same code path as `make demo`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.pipeline import RunStore

EXAMPLE = Path(__file__).resolve().parents[2] / "src" / "equicare" / "examples" / "care_demo.toml"

runner = CliRunner()


def tiny_config(tmp_path: Path, **extra_sections: str) -> Path:
    raw = tomllib.loads(EXAMPLE.read_text())
    assert raw["data"]["synthetic"]["members"] >= 1000  # the demo itself is full size
    text = EXAMPLE.read_text()
    text = text.replace("members = 2000, weeks = 52", "members = 240, weeks = 12")
    text = text.replace("n_steps = 3000", "n_steps = 60").replace(
        "eval_every = 500", "eval_every = 30"
    )
    text = text.replace("bootstrap = 1000", "bootstrap = 50").replace(
        "permutations = 1000", "permutations = 50"
    )
    text = text.replace("truth_members = 2000", "truth_members = 200")
    text = text.replace('store = "../runs"', 'store = "runs"')
    for section, body in extra_sections.items():
        text += f"\n[{section}]\n{body}\n"
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_run_writes_report_and_records_the_run(tmp_path):
    cfg = tiny_config(
        tmp_path,
        mediation="enabled = true\nbootstrap = 20",
        plan="enabled = true\nseeds = 2\narms = 20",
        explain="enabled = true\ndepth = 2\nbootstrap = 20",
    )
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    store = RunStore(tmp_path / "runs")
    runs = store.list_runs()
    assert list(runs["status"]) == ["finished"]
    rid = runs["run_id"].iloc[0]
    d = store.run_dir(rid)
    html = (d / "report.html").read_text()
    for needle in (
        "Policy value",
        "Fairness",
        "Sensitivity",
        "Caveats",
        "data:image/png;base64",
        "Mediation",
        "restless bandits",
        "Readable rules (policy card)",
        "Configuration",
        "Q-model (FQE, DR, WDR)",
        "Value by group",
    ):
        assert needle in html, needle
    assert "&quot;share_pct&quot;" not in html  # support is a table, not a JSON dump
    # the mediation section says what a0=0 is (the run's resolved action set) and the scale
    med = json.loads((d / "mediation.json").read_text())
    assert med["action"] == "modality=phone|text|video|home_visit"
    assert "Control a0=0: never modality=phone|text|video|home_visit." in html
    card = json.loads((d / "card" / "policy_card.json").read_text())
    assert card["tree"]["depth"] <= 2 and (d / "card" / "policy_card.html").is_file()
    result = json.loads((d / "result.json").read_text())
    assert set(result["estimates"]) == {"is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"}
    audit = json.loads((d / "audit.json").read_text())
    assert audit["action"] == "modality=home_visit" and "behavior" in audit["policies"]
    m = store.metrics(rid)
    assert {"ope.dr.awr", "truth.behavior", "truth.awr", "audit.parity_gap_pp.behavior"} <= set(
        m["name"]
    )
    assert {"explain.agreement", "ope.dr.rules", "truth.rules"} <= set(m["name"])
    deployed = card["evidence"]["value"]["rules_deployed"]  # only when some rows defer
    assert ("ope.dr.rules_deployed" in set(m["name"])) == (deployed is not None)
    # no cell with fewer than 11 episodes is published in the audit
    for pol in audit["policies"].values():
        for cell in pol["rate"].values():
            assert cell.get("suppressed") or cell["n_episodes"] >= 11
    # the report regenerates from the store; runs list/show/compare work
    again = runner.invoke(app, ["report", rid, "--store", str(tmp_path / "runs")])
    assert again.exit_code == 2 and "pass --force" in again.output  # report.html exists
    assert runner.invoke(app, ["report", rid, "--store", str(tmp_path / "runs"),
                               "--force"]).exit_code == 0
    listed = runner.invoke(app, ["runs", "list", "--store", str(tmp_path / "runs"), "--json"])
    assert [r["run_id"] for r in json.loads(listed.output)] == [rid]
    show = runner.invoke(app, ["runs", "show", rid, "--store", str(tmp_path / "runs"), "--json"])
    assert json.loads(show.output)["run"]["status"] == "finished"
    cmp_ = runner.invoke(app, ["runs", "compare", rid, rid, "--store", str(tmp_path / "runs")])
    assert cmp_.exit_code == 0 and "ope.dr.learned" in cmp_.output


def test_bad_config_exits_2(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[ope]\nbootstap = 5\n")
    res = runner.invoke(app, ["run", str(p)])
    assert res.exit_code == 2
    assert "did you mean 'bootstrap'?" in res.output


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_config_that_does_not_fit_the_data_leaves_no_run(tmp_path, command):
    """A config mismatch found when the data loads (after the run was opened) exits 2 and
    leaves no run row and no partial folder in the store; a later failure is still recorded."""
    cfg = tiny_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[learner]", "[reward]\nno_such = 0.5\n\n[learner]"))
    args = [command, str(cfg), "--no-progress"] + (
        ["--grid", "learner.n_steps=[20]"] if command == "sweep" else [])
    res = runner.invoke(app, args)
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Unknown reward component 'no_such'" in said, said
    # no empty store either (a mediation section on a panel without mediators left an empty
    # runs/equicare.duckdb)
    assert not (tmp_path / "runs").exists()
    store = RunStore(tmp_path / "runs")  # an existing store is kept, with its runs
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert store.db_path.is_file() and store.list_runs().empty
    assert not list((tmp_path / "runs").glob("*.partial"))


def test_user_error_after_the_first_stage_is_recorded_as_failed(tmp_path, monkeypatch):
    from equicare.exceptions import DataValidationError
    from equicare.pipeline import _run

    def train(*args):
        raise DataValidationError("found while training")

    monkeypatch.setattr(_run, "_stage_train", train)
    res = runner.invoke(app, ["run", str(tiny_config(tmp_path)), "--no-progress"])
    assert res.exit_code == 2, res.output
    runs = RunStore(tmp_path / "runs").list_runs()
    assert list(runs["status"]) == ["failed"]


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_sweep_serial_equals_local_pool(tmp_path):
    from equicare.pipeline import get_executor, load_run_config
    from equicare.pipeline._sweep import run_sweep

    cfg = load_run_config(tiny_config(tmp_path))
    grid = {"learner.n_steps": [20, 40]}
    a = run_sweep(cfg, grid, executor=get_executor("serial"), progress=False)
    b = run_sweep(cfg, grid, executor=get_executor("local", jobs=2), progress=False)
    cols = ["learner.n_steps", "dr", "wdr", "true_value"]
    assert a.table[cols].equals(b.table[cols])
    assert (a.run_dir / "report.html").is_file()
    assert "out_of_range" in a.table.columns  # the estimates that are not values, if any
    # every estimator the config names (it was always wis, dr, wdr, fqe silently dropped)
    assert set(cfg["ope"]["estimators"]) <= set(a.table.columns)
    one = run_sweep(cfg.with_overrides({"ope.estimators": ["fqe", "dr"]}),
                    {"learner.n_steps": [20]}, executor=get_executor("serial"), progress=False)
    assert {"fqe", "dr"} <= set(one.table.columns) and "wis" not in one.table.columns


@pytest.mark.browser
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_report_renders_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed; `make test-browser` installs Debian's chromium.")
    cfg = tiny_config(tmp_path)
    assert runner.invoke(app, ["run", str(cfg), "--no-progress"]).exit_code == 0
    store = RunStore(tmp_path / "runs")
    d = store.run_dir(store.list_runs()["run_id"].iloc[0])
    shot = tmp_path / "shot.png"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    out = subprocess.run(
        [
            chromium,
            *flags,
            "--window-size=1280,4000",
            f"--screenshot={shot}",
            (d / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 50_000, out.stderr[-2000:]
    dom = subprocess.run(
        [
            chromium,
            *flags,
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            (d / "report.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.stdout.count("<img") >= 4 and dom.stdout.count("<table") >= 3
    console_errors = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln and "ERROR" in ln]
    assert not console_errors, console_errors


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_a_user_panel_gets_a_default_audit_action_and_a_wrong_one_fails_before_training(
        tmp_path):
    """A panel without the care simulator's `modality` component: an empty [audit] action
    audits "every level of the first component but its first"; a set the panel does not have
    is a config error when the data loads (nothing trained, no run directory finished)."""
    d = tmp_path / "garnet"
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--states", "20", "--actions", "4",
                              "--episodes", "150", "--seed", "2", "--out", str(d)])
    assert res.exit_code == 0, res.output
    base = (f'name = "g"\nseed = 0\n[data]\npath = "{d / "panel.parquet"}"\n'
            f'manifest = "{d / "manifest.toml"}"\n[learner]\nalgo = "bc"\nn_steps = 20\n'
            '[ope]\nbootstrap = 20\nsensitivity = false\n[audit]\npermutations = 0\n'
            f'[output]\nstore = "{tmp_path / "runs"}"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(base.replace("permutations = 0", 'permutations = 0\naction = '
                                '"modality=home_visit"'))
    res = runner.invoke(app, ["run", str(bad), "--no-progress"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "[audit] action 'modality=home_visit' does not fit the panel" in said, said
    assert "known components: ['action']" in said
    assert not list((tmp_path / "runs").glob("*/model"))  # failed before training
    # [audit] group / intersect: checked when the data loads too, naming the file and key
    for key in ("group", "intersect"):
        bad.write_text(base.replace("permutations = 0", f'permutations = 0\n{key} = "race"'))
        res = runner.invoke(app, ["run", str(bad), "--no-progress"])
        said = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert (f"{bad}: [audit] {key} 'race' is not a group attribute of the panel; expected "
                "one of ['") in said, said
        assert not list((tmp_path / "runs").glob("*/model"))
    good = tmp_path / "good.toml"
    good.write_text(base)
    panel = pd.read_parquet(d / "panel.parquet")  # five episodes in a group of their own
    panel["group"] = panel["group"].astype(str)
    panel.loc[panel["episode"] < 5, "group"] = "g9"
    panel.to_parquet(d / "panel.parquet", index=False)
    res = runner.invoke(app, ["run", str(good), "--no-progress"])
    assert res.exit_code == 0, res.output
    store = RunStore(tmp_path / "runs")
    rid = store.list_runs().query("status == 'finished'")["run_id"].iloc[0]
    audit = json.loads((store.run_dir(rid) / "audit.json").read_text())
    assert audit["action"] == "action=1|2|3"
    # the run's data summary suppresses g9 and, so that the total does not give it away, the
    # smallest other group (complementary suppression)
    counts = panel.groupby("group")["episode"].nunique()
    summary = json.loads((store.run_dir(rid) / "data_summary.json").read_text())["groups"]
    smallest = counts.drop("g9").idxmin()
    assert summary["group"]["g9"] is None and summary["group"][smallest] is None
    assert {k: v for k, v in summary["group"].items() if v is not None} == {
        k: int(v) for k, v in counts.items() if k not in ("g9", smallest)}



def test_the_audit_stage_crosses_every_attribute_of_a_list_intersect(tmp_path):
    """`[audit] intersect = ["sex"]` (a list, as the repeatable --intersect) audits race x sex;
    a listed attribute the panel lacks, or the audited one, fails when the data loads."""
    import re
    import warnings

    import numpy as np

    from equicare.pipeline._config import ConfigError, RunConfig
    from equicare.pipeline._run import _check_groups, _stage_audit
    from tests.fairness.conftest import random_panel

    ds = random_panel(300, seed=3)
    cfg = RunConfig.from_dict({"audit": {"group": "race", "intersect": ["sex"],
                                         "permutations": 0}, "ope": {"bootstrap": 0}},
                              source="run.toml")
    _check_groups(cfg, ds)
    state = {"test": ds, "learner_name": "bc", "audit_action": "modality=home_visit",
             "learned_probs_test": np.full((ds.n_steps, ds.n_actions), 1 / ds.n_actions)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _stage_audit(cfg, state, tmp_path, [], 0)
    assert json.loads((tmp_path / "audit.json").read_text())["group"] == "race x sex"
    for bad, msg in ((["sex", "zip"], "run.toml: [audit] intersect 'zip' is not a group "
                                      "attribute of the panel"),
                     (["race"], "run.toml: [audit] intersect ['race'] must differ from the "
                                "audited group attribute 'race'.")):
        c = RunConfig.from_dict({"audit": {"group": "race", "intersect": bad}},
                                source="run.toml")
        with pytest.raises(ConfigError, match=re.escape(msg)):
            _check_groups(c, ds)


def _garnet_config(tmp_path: Path, extra: str = "", *, drop_propensities: bool = False) -> Path:
    """A tiny Garnet panel (logged propensities, unless dropped) and a fast run config."""
    d = tmp_path / "garnet"
    if not d.is_dir():
        res = runner.invoke(app, ["synth", "--sim", "garnet", "--states", "12", "--actions", "3",
                                  "--episodes", "120", "--seed", "2", "--out", str(d)])
        assert res.exit_code == 0, res.output
    manifest = d / "manifest.toml"
    if drop_propensities:
        manifest = d / "manifest_noprop.toml"
        manifest.write_text("\n".join(ln for ln in (d / "manifest.toml").read_text().splitlines()
                                      if not ln.startswith("behavior_prob")) + "\n")
    p = tmp_path / "g.toml"
    p.write_text(f'name = "g"\nseed = 0\n[data]\npath = "{d / "panel.parquet"}"\n'
                 f'manifest = "{manifest}"\n[learner]\nalgo = "bc"\nn_steps = 10\n'
                 '[ope]\nestimators = ["wis", "dr"]\nbootstrap = 10\nsensitivity = false\n'
                 f'[audit]\npermutations = 0\n[output]\nstore = "{tmp_path / "runs"}"\n'
                 + extra)
    return p


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_behavior_model_is_honoured(tmp_path):
    """`[behavior] model`: `logistic`/`lgbm` estimated the propensities only when the panel
    logged none, and `logged` silently estimated them when it had none: four values, two
    behaviours. Now `lgbm` estimates with LightGBM even when the panel logs propensities, and
    `logged` on a panel without them is a config error before training (no run left)."""
    store = tmp_path / "runs"
    for model, source in (("auto", "logged"), ("logged", "logged"), ("lgbm", "estimated"),
                          ("logistic", "estimated")):
        cfg = _garnet_config(tmp_path, f'[behavior]\nmodel = "{model}"\n')
        res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json"])
        assert res.exit_code == 0, res.output
        d = store / json.loads(res.output)["run_id"]
        settings = json.loads((d / "result.json").read_text())["settings"]
        assert settings["propensity_source"] == source, (model, settings)
        if model in ("lgbm", "logistic"):
            assert settings["behavior_model"] == model
        # the data summary describes the panel as loaded (its logged propensities included)
        assert json.loads((d / "data_summary.json").read_text())["behavior_prob"] is not None
    n_runs = len(RunStore(store).list_runs())
    cfg = _garnet_config(tmp_path, '[behavior]\nmodel = "logged"\n', drop_propensities=True)
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert (f"{cfg}: behavior.model = 'logged' needs the panel's logged propensities, but it "
            "has none (manifest dataset.behavior_prob") in said, said
    assert len(RunStore(store).list_runs()) == n_runs and not list(store.glob("*.partial"))


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_sweep_points_evaluate_with_every_ope_and_behavior_setting(tmp_path):
    """A sweep point called evaluate without ope.ci and [behavior] model: percentile and
    studentized sweeps gave byte-identical intervals. A grid over a key no point reads is
    refused instead of giving identical points."""
    from equicare.pipeline import get_executor, load_run_config
    from equicare.pipeline._config import ConfigError
    from equicare.pipeline._sweep import run_sweep

    cfg = load_run_config(_garnet_config(tmp_path))
    grid = {"learner.n_steps": [10]}
    serial = get_executor("serial")

    def point(**overrides: object) -> pd.Series:
        return run_sweep(cfg.with_overrides(overrides), grid, executor=serial,
                         progress=False).table.iloc[0]

    stud, perc = point(), point(**{"ope.ci": "percentile"})
    assert stud["dr"] == perc["dr"]  # the same estimate, other intervals
    assert (stud["dr_ci_low"], stud["dr_ci_high"]) != (perc["dr_ci_low"], perc["dr_ci_high"])
    lgbm = point(**{"behavior.model": "lgbm"})  # estimated, not the logged propensities
    assert lgbm["wis"] != stud["wis"]
    n_runs = len(RunStore(tmp_path / "runs").list_runs())
    for key, why in (("ope.sensitivity", "a sweep point runs no sensitivity stage"),
                     ("audit.permutations", "a sweep point runs no fairness audit")):
        with pytest.raises(ConfigError, match=re.escape(f"--grid {key}: a sweep point only "
                                                        f"loads the data, trains and evaluates "
                                                        f"({why})")):
            run_sweep(cfg, {key: [True, False]}, executor=serial, progress=False)
    assert len(RunStore(tmp_path / "runs").list_runs()) == n_runs


@pytest.mark.parametrize(("extra", "msg"), [
    ("[mediation]\nenabled = true\n",
     "mediation.enabled = true needs a mediator column, but the panel has none (manifest "
     "dataset.mediators)"),
    ('[learner]\nalgo = "bc"\nn_steps = 10\ngroup_attr = "race"\n',
     "learner.group_attr 'race' is not a group attribute of the panel; expected one of"),
])
def test_keys_the_panel_must_fit_fail_when_the_data_loads(tmp_path, extra, msg):
    """Mediation without a mediator column failed after training and evaluation (a failed run
    and its .partial folder left in the store); it is a config error when the data loads."""
    cfg = _garnet_config(tmp_path, extra)
    if "[learner]" in extra:  # replace the base config's table
        text = cfg.read_text()
        cfg.write_text(text.replace('[learner]\nalgo = "bc"\nn_steps = 10\n', "", 1))
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert f"{cfg}: {msg}" in said, said
    store = tmp_path / "runs"
    assert RunStore(store).list_runs().empty and not list(store.glob("*.partial"))


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_behavior_folds_cross_fit_the_behaviour_model(tmp_path):
    """`behavior.folds` was accepted (default 2, even -7) and read by nothing: the behaviour
    model cross-fitted over BehaviorModel's 5 folds whatever it said. It is now the model's
    folds (default "auto", as evaluate's), checked at load."""
    from equicare.pipeline._config import FOLDS_EXPECTED, ConfigError, RunConfig

    assert RunConfig.from_dict({})["behavior"]["folds"] == "auto"
    for bad in (-7, "two", 2.5, True):
        with pytest.raises(ConfigError, match=re.escape(
                f"run.toml: behavior.folds must be {FOLDS_EXPECTED}, got {bad!r}.")):
            RunConfig.from_dict({"behavior": {"folds": bad}}, source="run.toml")
    store = tmp_path / "runs"
    for folds in (3, 1):
        cfg = _garnet_config(tmp_path, f'[behavior]\nmodel = "logistic"\nfolds = {folds}\n')
        res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json"])
        assert res.exit_code == 0, res.output
        result = json.loads((store / json.loads(res.output)["run_id"] / "result.json")
                            .read_text())
        assert result["behavior_model"]["n_folds"] == folds
        assert result["settings"]["behavior_model"] == "logistic"


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_runs_behaviour_model_is_in_sample_on_a_saturated_state_as_evaluates(tmp_path):
    """`[behavior] folds` defaulted to 5 after `evaluate --behavior-folds` became "auto" (in-sample
    on a state that is mostly one-hot categorical levels, whose thin levels cross-fitting
    empties: docs/ope.md). On an ICU-shaped panel without propensities (3,000 stays, a
    400-level diagnosis group) the run's held-out IS was 4e47 and DR -4e46 where evaluate's
    numbers were sane; with "auto" the run fits in-sample there (IS 0.47, WIS 0.85, DR 0.84 for
    behaviour 0.84) and keeps 5 folds on numeric states."""
    d = tmp_path / "wide"
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--states", "200", "--actions", "3",
                              "--episodes", "150", "--seed", "2", "--out", str(d)])
    assert res.exit_code == 0, res.output
    (d / "noprop.toml").write_text("\n".join(
        ln for ln in (d / "manifest.toml").read_text().splitlines()
        if not ln.startswith("behavior_prob")) + "\n")
    cfg = tmp_path / "w.toml"
    cfg.write_text(f'name = "w"\nseed = 0\n[data]\npath = "{d / "panel.parquet"}"\n'
                   f'manifest = "{d / "noprop.toml"}"\n[learner]\nalgo = "bc"\nn_steps = 10\n'
                   '[ope]\nestimators = ["wis", "dr"]\nbootstrap = 10\nsensitivity = false\n'
                   f'[audit]\npermutations = 0\n[output]\nstore = "{tmp_path / "runs"}"\n')
    res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "runs" / json.loads(res.output)["run_id"] / "result.json")
                        .read_text())
    assert result["behavior_model"]["n_folds"] == 1
    assert result["settings"]["propensity_source"] == "estimated"


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_sweep_points_get_their_own_reproducible_seeds_and_a_seed_axis(tmp_path):
    """Every grid point ran with the config's seed (README: "Each task gets its own seed") and
    `--grid 'seed=[0,1]'` was refused. Each point now gets its own seed, derived from the run
    seed and its settings (the same command gives the same seeds; adding grid values leaves the
    other points alone), recorded in its `seed` column; a seed axis runs the seeds it names."""
    from equicare.pipeline import get_executor, load_run_config, parse_grid
    from equicare.pipeline._sweep import run_sweep

    cfg = load_run_config(_garnet_config(tmp_path))
    serial = get_executor("serial")

    def sweep(grid: dict) -> pd.DataFrame:
        return run_sweep(cfg, grid, executor=serial, progress=False).table

    a = sweep({"learner.n_steps": [10, 20]})
    assert a["seed"].nunique() == 2 and not (a["seed"] == cfg["seed"]).all()
    assert a.equals(sweep({"learner.n_steps": [10, 20]}))  # reproducible, numbers included
    b = sweep({"learner.n_steps": [20, 5]})
    assert b.set_index("learner.n_steps").loc[20, "seed"] == a.set_index(
        "learner.n_steps").loc[20, "seed"]
    assert b.set_index("learner.n_steps").loc[20, "dr"] == a.set_index(
        "learner.n_steps").loc[20, "dr"]
    assert parse_grid("seed=[0,3]") == ("seed", [0, 3])
    s = sweep({"seed": [0, 3], "learner.n_steps": [10]})
    assert list(s["seed"]) == [0, 3] and s["behavior"].nunique() == 2  # other splits
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        sweep({"seed": [-1]})


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_sensitivity_baseline_is_the_evaluate_stage_dr(tmp_path):
    """With `ope.truncate` and `ope.ci` set, the Sensitivity table's baseline row is the DR of
    the Policy value section (the stage used to evaluate untruncated weights)."""
    from equicare.pipeline._config import RunConfig
    from equicare.pipeline._run import _stage_evaluate, _stage_sensitivity
    from equicare.policy import TabularPolicy
    from tests.ope._mdp import BEHAVIOR, TARGET, small_mdp

    ds = small_mdp(horizon=4).sample(BEHAVIOR, 300, seed=0, n_groups=3)
    probs = TabularPolicy(TARGET).action_probs(ds)

    class Fixed:
        def action_probs(self, _ds):
            return probs

    cfg = RunConfig.from_dict({"ope": {"bootstrap": 50, "truncate": 2.0, "ci": "percentile",
                                       "estimators": ["dr"]}}, source="run.toml")
    state = {"test": ds, "learner": Fixed(), "learner_name": "bc"}
    _stage_evaluate(cfg, state, tmp_path, [], 0)
    _stage_sensitivity(cfg, state, tmp_path, [], 0)
    dr = json.loads((tmp_path / "result.json").read_text())["estimates"]["dr"]
    base = pd.read_csv(tmp_path / "sensitivity.csv").query("analysis == 'baseline'").iloc[0]
    assert base.value == pytest.approx(dr["value"], rel=1e-9)
    trunc2 = pd.read_csv(tmp_path / "sensitivity.csv").query("parameter == 2.0").iloc[0]
    assert trunc2.value == pytest.approx(base.value, rel=1e-9)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_card_audits_the_groups_of_the_run_report(tmp_path):
    """With `[audit] intersect`, the policy card audits group x intersect as the run's audit
    does (it audited `group` alone, so its parity gaps differed from the report's with no
    note), and the run report's card section says the two audits are the same."""
    import numpy as np

    from equicare.pipeline._config import RunConfig
    from equicare.pipeline._run import _stage_audit, _stage_explain
    from equicare.report._build import build_run_report
    from tests.fairness.conftest import random_panel

    train, test = random_panel(300, seed=3), random_panel(300, seed=4)

    class Home:  # home visits more likely with the state
        window = 1

        def action_probs(self, ds):
            p = np.full((ds.n_steps, ds.n_actions), 0.0)
            home = 0.1 + 0.6 * np.asarray(ds.states)[:, 0]
            p[:, 4:] = (home / 2)[:, None]
            p[:, :4] = ((1 - home) / 4)[:, None]
            return p

    cfg = RunConfig.from_dict({"audit": {"group": "race", "intersect": ["sex"],
                                         "permutations": 0},
                               "explain": {"enabled": True, "depth": 2, "bootstrap": 10},
                               "ope": {"q_model": "linear", "bootstrap": 10}},
                              source="run.toml")
    state = {"train": train, "test": test, "learner": Home(), "learner_name": "bc",
             "audit_action": "modality=home_visit", "progress": False}
    state["learned_probs_test"] = Home().action_probs(test)
    _stage_audit(cfg, state, tmp_path, [], 0)
    _stage_explain(cfg, state, tmp_path, [], 0)
    audit = json.loads((tmp_path / "audit.json").read_text())
    card = json.loads((tmp_path / "card" / "policy_card.json").read_text())
    fair = card["evidence"]["fairness"]
    assert audit["group"] == fair["group"] == "race x sex"
    assert fair["policies"]["source"]["parity_gap_pp"]["value"] == pytest.approx(
        audit["policies"]["bc"]["parity_gap_pp"]["value"], rel=1e-9)
    page = build_run_report(tmp_path, config=cfg.to_dict(), figure_copies=False).render()
    assert ("The card audits race x sex on the same held-out episodes as the Fairness section "
            "above, so its parity gaps are the ones above") in page


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_missing_panel_or_manifest_is_refused_before_the_store_is_created(tmp_path, command):
    """A wrong path in [data] used to create runs/equicare.duckdb before the first stage
    found it."""
    cfg = tiny_config(tmp_path)
    text = cfg.read_text()
    start = text.index("[data]")
    end = text.index("\n[", start + 1)
    for data, said in (('path = "nope.parquet"\nmanifest = "m.toml"', "does not exist"),
                       ('path = "run.toml"\nmanifest = "missing.toml"', "not found")):
        cfg.write_text(text[:start] + "[data]\n" + data + "\n" + text[end:])
        args = [command, str(cfg), "--no-progress"] + (
            ["--grid", "learner.n_steps=[20]"] if command == "sweep" else [])
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert said in " ".join(res.output.split())
        assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_run_records_the_sha256_of_the_files_it_read(tmp_path, command):
    # the run store kept the config's relative data path only: the same config on a panel
    # regenerated in place (or from another folder) looked like the same run
    import hashlib

    d = tmp_path / "garnet"
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--states", "20", "--actions", "4",
                              "--episodes", "150", "--seed", "2", "--out", str(d)])
    assert res.exit_code == 0, res.output
    cfg = tmp_path / "run.toml"
    cfg.write_text('name = "g"\nseed = 0\n[data]\npath = "garnet/panel.parquet"\n'
                   'manifest = "garnet/manifest.toml"\n[learner]\nalgo = "bc"\nn_steps = 10\n'
                   '[ope]\nbootstrap = 0\nsensitivity = false\nestimators = ["wis"]\n'
                   '[audit]\npermutations = 0\n[output]\nstore = "runs"\nexecutor = "serial"\n')
    args = [command, str(cfg), "--no-progress"] + (
        ["--grid", "learner.n_steps=[10]"] if command == "sweep" else [])
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    store = RunStore(tmp_path / "runs")
    rid = store.list_runs()["run_id"].iloc[0]
    got = json.loads((store.run_dir(rid) / "inputs.json").read_text())
    assert got == {role: [{"path": str(d / name), "bytes": (d / name).stat().st_size,
                           "sha256": hashlib.sha256((d / name).read_bytes()).hexdigest()}]
                   for role, name in (("data", "panel.parquet"), ("manifest", "manifest.toml"))}


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_run_builds_one_logged_support_check_for_evaluate_and_audit(tmp_path, monkeypatch):
    from equicare.ope._support import LoggedSupport

    built: list[int] = []
    init = LoggedSupport.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(LoggedSupport, "__init__", counting)
    outputs = []
    for shared in (True, False):
        if not shared:  # what the stages did before: each its own check
            monkeypatch.setattr("equicare.ope._evaluate.logged_support_check",
                                lambda *args, **kwargs: None)
        built.clear()
        (tmp_path / str(shared)).mkdir()
        cfg = tiny_config(tmp_path / str(shared))
        # by sex: no group is suppressed, so the audit checks the evaluated episodes themselves
        res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json",
                                  "--set", 'audit.group="sex"'])
        assert res.exit_code == 0, res.output
        assert len(built) == (1 if shared else 2)
        store = RunStore(tmp_path / str(shared) / "runs")
        d = store.run_dir(store.list_runs()["run_id"].iloc[0])
        result = json.loads((d / "result.json").read_text())
        audit = json.loads((d / "audit.json").read_text())
        outputs.append((result["estimates"], result["support"], result["behavior_model"],
                        audit["policies"]))
    assert outputs[0] == outputs[1]  # sharing the check changes no number


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.SmallCellWarning")
def test_the_run_warns_as_evaluate_does_of_values_resting_on_few_episodes_weight(tmp_path):
    """A daily panel's run printed WIS 9.21 [9.16, 9.26] on a trajectory ESS of 1.0 (one
    member's return, with an interval of a hundredth) and warned only in its audit stage: the
    evaluate stage says what `equicare evaluate` says."""
    import warnings

    cfg = tiny_config(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the command prints them as one-line warnings
        res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    d = tmp_path / "runs" / json.loads(res.stdout)["run_id"]
    ess = json.loads((d / "result.json").read_text())["ess"]
    assert ess["trajectory"] < 11  # the tiny care run's weights rest on a few episodes
    said = " ".join(res.stderr.split())
    assert (f"warning: the overall is, wis, pdis and wpdis values rest on fewer than 11 "
            f"episodes' worth of importance weight (trajectory ESS {ess['trajectory']:.1f} of "
            f"121 episodes for is, wis; per-decision ESS ") in said, said
    assert said.count("the overall is, wis, pdis and wpdis values rest on") == 1, said


@pytest.mark.parametrize("margin", [0.05, "auto"])
def test_the_explain_stage_passes_the_distillation_keys(tmp_path, margin):
    """`[explain] set_splits` and `deviation_margin` (a number or "auto") reach the card's
    distillation, as `explain --no-set-splits --deviation-margin` do."""
    import numpy as np

    from equicare.pipeline._config import RunConfig
    from equicare.pipeline._run import _stage_explain
    from tests.fairness.conftest import random_panel

    train, test = random_panel(200, seed=3), random_panel(200, seed=4)

    class Uniform:
        window = 1

        def action_probs(self, ds):
            return np.full((ds.n_steps, ds.n_actions), 1.0 / ds.n_actions)

    cfg = RunConfig.from_dict({"explain": {"enabled": True, "depth": 1, "bootstrap": 0,
                                           "set_splits": False, "deviation_margin": margin},
                               "ope": {"q_model": "linear", "bootstrap": 0}},
                              source="run.toml")
    state = {"train": train, "test": test, "learner": Uniform(), "learner_name": "bc",
             "audit_action": "modality=home_visit", "progress": False}
    _stage_explain(cfg, state, tmp_path, [], 0)
    card = json.loads((tmp_path / "card" / "policy_card.json").read_text())
    assert card["settings"]["distill"]["set_splits"] is False
    assert card["settings"]["distill"]["deviation_margin"] == margin


def test_a_panel_too_small_for_the_holdout_fails_when_the_data_loads(tmp_path):
    """Two episodes: the run trained on one, then evaluate crashed or refused the other (a
    failed run and its .partial folder left in the store, and a message about "the panel" of
    1 episode). Refused when the data loads now, naming the file and ope.holdout."""
    cfg = _garnet_config(tmp_path)
    panel_path = tmp_path / "garnet" / "panel.parquet"
    panel = pd.read_parquet(panel_path)
    panel[panel["episode"] < 2].to_parquet(panel_path, index=False)
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert (f"{panel_path}: the panel has 2 episodes; run holds out 0.5 of them (1 here) for "
            "the evaluation (ope.holdout) and needs at least 2 there because") in said, said
    store = tmp_path / "runs"
    assert RunStore(store).list_runs().empty and not list(store.glob("*.partial"))
