from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli._causal import mediate_dataset, parse_control, parse_estimators
from equicare.sim.mediation import toy1, toy_target

runner = CliRunner()
MANIFEST = """[dataset]
episode = "episode"
time = "time"
states = ["s0"]
{mediators}

[actions]
action = {{ levels = 2 }}

[reward]
column = "reward"
"""


@pytest.fixture
def app():
    from equicare.cli import app as main_app

    return main_app  # the real app: its error taxonomy and deprecated spellings


@pytest.fixture
def panel(tmp_path):
    mdp = toy1()
    s = mdp.sample(80, 20, random_state=0)
    df = s.to_frame()
    df.to_csv(tmp_path / "panel.csv", index=False)
    p = toy_target()[s.state_index]
    pd.DataFrame({"episode": df.episode, "time": df.time, "p_0": p[:, 0], "p_1": p[:, 1]}
                 ).to_csv(tmp_path / "target.csv", index=False)
    (tmp_path / "m.toml").write_text(MANIFEST.format(mediators='mediators = ["m0"]'))
    (tmp_path / "nomed.toml").write_text(MANIFEST.format(mediators=""))
    return tmp_path


def test_mediate_writes_contract6_and_refuses_overwrite(app, panel):
    out = panel / "med.json"
    args = ["mediate", str(panel / "panel.csv"), "--manifest", str(panel / "m.toml"),
            "--policy", str(panel / "target.csv"), "--bootstrap", "50", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "mr" in res.output and "ide" in res.output
    d = json.loads(out.read_text())
    assert d["control"] == "a0=0" and d["target"] == "target"
    assert set(d["estimators"]) == {"dm", "mis", "mr", "baseline"}
    assert d["n_steps"] == 80 * 19
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "refusing to overwrite" in res.output
    res = runner.invoke(app, [*args, "--force", "--estimators", "mr", "--figure",
                              str(panel / "fig.png")])
    assert res.exit_code == 0, res.output
    assert set(json.loads(out.read_text())["estimators"]) == {"mr"}
    assert (panel / "fig.png").stat().st_size > 0
    # an existing figure is refused without --force, before any work
    fig = panel / "fig.png"
    fig.write_bytes(b"mine")
    other = panel / "other.json"
    res = runner.invoke(app, [*args[:-1], str(other), "--figure", str(fig)])
    assert res.exit_code == 2 and f"{fig} exists" in res.output.replace("\n", "")
    assert fig.read_bytes() == b"mine" and not other.exists()


@pytest.mark.parametrize("extra, manifest, msg", [
    (["--estimators", "dm,ipw"], "m.toml", "--estimators must be a comma-separated subset"),
    ([], "nomed.toml", "nomed.toml: the dataset has no mediator columns"),
    (["--action", "action=1"], "nomed.toml", "nomed.toml: the dataset has no mediator columns"),
])
def test_user_errors_exit_2(app, panel, extra, manifest, msg):
    res = runner.invoke(app, ["mediate", str(panel / "panel.csv"), "--manifest",
                              str(panel / manifest), "--policy", str(panel / "target.csv"),
                              "--out", str(panel / "x.json"), *extra])
    assert res.exit_code == 2
    assert msg in " ".join(res.output.split())
    assert not (panel / "x.json").exists()


def test_constant_mediator_exits_2_naming_the_file_and_column(app, panel):
    """A mediator that never varies: one line naming the panel file and the column."""
    df = pd.read_csv(panel / "panel.csv")
    df["m0"] = 1.0
    df.to_csv(panel / "const.csv", index=False)
    res = runner.invoke(app, ["mediate", str(panel / "const.csv"), "--manifest",
                              str(panel / "m.toml"), "--policy", str(panel / "target.csv"),
                              "--bootstrap", "0", "--out", str(panel / "x.json")])
    assert res.exit_code == 2, res.output
    assert (f"{panel / 'const.csv'}: mediator column 'm0' is constant (every transition row is "
            "1.0); a mediator must vary to carry an effect.") in " ".join(res.output.split())
    assert not (panel / "x.json").exists()


def test_help_has_example(app):
    res = runner.invoke(app, ["mediate", "--help"])
    assert res.exit_code == 0 and "Example" in res.output


def test_plain_functions(panel):
    from equicare.data import load_dataset

    ds = load_dataset(panel / "panel.csv", panel / "m.toml")
    res = mediate_dataset(ds, str(panel / "target.csv"), 0, estimators=("mr",), n_bootstrap=0)
    assert res.target == "target" and res.n_episodes == 80
    assert parse_control("0") == 0 and str(parse_control("pol.csv")) == "pol.csv"
    assert parse_estimators("MR, dm") == ("mr", "dm")


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_mediate_care_panel_with_action_set(tmp_path):
    """`equicare mediate` on a care-management panel: 300 flat actions collapsed to home visits."""
    import json as _json

    from typer.testing import CliRunner as _Runner

    from equicare.cli import app as main_app
    from equicare.policy import write_policy_file
    from equicare.sim.care import CareManagementSim

    sim = CareManagementSim()
    panel = sim.generate(n_members=120, n_weeks=20, random_state=3)
    panel.write(tmp_path / "care")
    ds = panel.dataset()
    write_policy_file(ds, sim.reference_policy().action_probs(ds), tmp_path / "ref.parquet")
    out = tmp_path / "med.json"
    res = _Runner().invoke(main_app, [
        "mediate", str(tmp_path / "care" / "panel.parquet"), "--manifest",
        str(tmp_path / "care" / "manifest.toml"), "--policy", str(tmp_path / "ref.parquet"),
        "--action", "modality=home_visit", "--control", "0", "--bootstrap", "20",
        "--out", str(out)])
    assert res.exit_code == 0, res.output
    d = _json.loads(out.read_text())
    mr = d["estimators"]["mr"]
    parts = sum(mr[k]["value"] for k in ("ide", "ime", "dde", "dme"))
    assert abs(parts - mr["total"]["value"]) < 1e-9
    bad = _Runner().invoke(main_app, [
        "mediate", str(tmp_path / "care" / "panel.parquet"), "--manifest",
        str(tmp_path / "care" / "manifest.toml"), "--policy", str(tmp_path / "ref.parquet"),
        "--action", "modality=fax", "--out", str(tmp_path / "m2.json")])
    assert bad.exit_code == 2 and "Unknown level" in bad.output


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def _mediate_300_actions(tmp_path, n_members, n_weeks, *options):
    """``equicare mediate`` on a 300-action care panel: the reference policy against a uniform
    control policy file, no bootstrap. Returns the dataset and the CLI result."""
    from equicare.cli import app as main_app
    from equicare.policy import write_policy_file
    from equicare.sim.care import CareManagementSim

    sim = CareManagementSim()
    panel = sim.generate(n_members=n_members, n_weeks=n_weeks, random_state=3)
    panel.write(tmp_path / "care")
    ds = panel.dataset()
    probs = sim.reference_policy().action_probs(ds)
    write_policy_file(ds, probs, tmp_path / "ref.parquet")
    write_policy_file(ds, np.full_like(probs, 1 / probs.shape[1]), tmp_path / "ctl.parquet")
    return ds, runner.invoke(main_app, [
        "mediate", str(tmp_path / "care" / "panel.parquet"), "--manifest",
        str(tmp_path / "care" / "manifest.toml"), "--policy", str(tmp_path / "ref.parquet"),
        "--control", str(tmp_path / "ctl.parquet"), "--bootstrap", "0", *options])


def test_mediate_many_actions_with_control_policy_fails_fast_with_cli_advice(tmp_path,
                                                                              monkeypatch):
    """300 flat actions and a control policy: exit 2 before any fit, naming CLI options."""
    from equicare.causal import _nuisance

    def boom(*args, **kwargs):
        raise AssertionError("a nuisance model was fitted before the size check")

    monkeypatch.setattr(_nuisance.RewardModel, "fit", boom)
    ds, res = _mediate_300_actions(tmp_path, 40, 8)
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Too few transitions for the basis" in out
    assert f"({ds.n_actions} actions x" in out
    assert "--action modality=" in out and "--basis constant" in out and "--folds 1" in out
    assert "basis='" not in out and "n_folds" not in out


def test_mediate_larger_than_memory_exits_2_with_cli_advice(tmp_path, monkeypatch):
    """Enough rows (--basis constant, 300 actions, 6,000 rows) but not enough memory for the
    LSTD system: exit 2 before any fit, advising fewer actions, not more folds or data."""
    from equicare import utils
    from equicare.causal import _nuisance

    def boom(*args, **kwargs):
        raise AssertionError("a nuisance model was fitted before the memory check")

    monkeypatch.setattr(_nuisance.RewardModel, "fit", boom)
    monkeypatch.setattr(utils, "available_memory", lambda: 2**20)
    _, res = _mediate_300_actions(tmp_path, 150, 40, "--basis", "constant", "--folds", "1")
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "GB of memory" in out and "GB is available" in out
    assert "--action modality=" in out and "--folds" not in out and "more data" not in out


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_missing_mediators_reported_before_the_control(tmp_path):
    """A many-action panel without mediators: the manifest is the problem, not --control 0."""
    import re

    from equicare.cli import app as main_app
    from equicare.policy import write_policy_file
    from equicare.sim.care import CareManagementSim

    sim = CareManagementSim()
    panel = sim.generate(n_members=20, n_weeks=5, random_state=3)
    panel.write(tmp_path / "care")
    ds = panel.dataset()
    write_policy_file(ds, sim.reference_policy().action_probs(ds), tmp_path / "ref.parquet")
    text = (tmp_path / "care" / "manifest.toml").read_text()
    nomed = tmp_path / "nomed.toml"
    nomed.write_text(re.sub(r"(?m)^mediators\s*=.*$", "", text))
    assert "mediators" not in nomed.read_text()
    for extra in ([], ["--action", "modality=home_visit"]):
        res = runner.invoke(main_app, [
            "mediate", str(tmp_path / "care" / "panel.parquet"), "--manifest", str(nomed),
            "--policy", str(tmp_path / "ref.parquet"), "--bootstrap", "0", *extra])
        out = " ".join(res.output.split())
        assert res.exit_code == 2, res.output
        assert "nomed.toml: the dataset has no mediator columns" in out, out
        assert "--control" not in out


def test_single_row_episodes_exit_2_with_the_data_error(app, tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    pd.DataFrame({"episode": np.arange(n), "time": 0, "s0": rng.normal(size=n),
                  "m0": np.arange(n) % 2, "action": rng.integers(0, 2, n),
                  "reward": rng.normal(size=n)}).to_csv(tmp_path / "one.csv", index=False)
    pd.DataFrame({"episode": np.arange(n), "time": 0, "p_0": 0.5, "p_1": 0.5}
                 ).to_csv(tmp_path / "target.csv", index=False)
    (tmp_path / "m.toml").write_text(MANIFEST.format(mediators='mediators = ["m0"]'))
    res = runner.invoke(app, ["mediate", str(tmp_path / "one.csv"), "--manifest",
                              str(tmp_path / "m.toml"), "--policy", str(tmp_path / "target.csv"),
                              "--bootstrap", "0"])
    assert res.exit_code == 2, res.output
    assert (f"{tmp_path / 'one.csv'}: mediation analysis needs at least 2 episodes with a "
            "transition") in " ".join(res.output.split())


def test_mediation_table_prints_small_effects_in_significant_digits():
    """Three decimals printed a per-step effect of 4e-4 (SE 1e-4) as 0.000 (0.000), which hid a
    panel whose effects were all exactly zero behind ones that were merely small."""
    from rich.console import Console

    from equicare.causal._result import (
        EFFECT_KEYS,
        EffectEstimate,
        EstimatorResult,
        MediationResult,
    )
    from equicare.cli._causal import mediation_table

    eff = {k: EffectEstimate(4.2e-4, 1.1e-4, (2.04e-4, 6.36e-4)) for k in EFFECT_KEYS}
    res = MediationResult(n_episodes=100, n_steps=900, control="a0=0",
                          estimators={"mr": EstimatorResult(eff, {})})
    console = Console(width=200, record=True)
    console.print(mediation_table(res))
    text = console.export_text()
    assert "0.00042" in text and "0.00011" in text and "[0.000204, 0.000636]" in text
    assert " 0.000 " not in text


def test_mediate_refuses_a_basis_too_wide_before_building_the_states(app, tmp_path, monkeypatch):
    """A wide categorical state: exit 2 with the CLI's advice before any state is built (a
    5,000-level Garnet state built 4.4 GB of them first)."""
    from equicare.causal import _data

    rng = np.random.default_rng(2)
    n = 40 * 6
    pd.DataFrame({"episode": np.repeat(np.arange(40), 6), "time": np.tile(np.arange(6), 40),
                  "s0": rng.normal(size=n), "code": [f"c{c:02d}" for c in rng.integers(0, 60, n)],
                  "m0": rng.integers(0, 2, n), "action": rng.integers(0, 2, n),
                  "reward": rng.normal(size=n)}).to_csv(tmp_path / "wide.csv", index=False)
    pd.DataFrame({"episode": np.repeat(np.arange(40), 6), "time": np.tile(np.arange(6), 40),
                  "p_0": 0.5, "p_1": 0.5}).to_csv(tmp_path / "target.csv", index=False)
    (tmp_path / "m.toml").write_text(MANIFEST.format(
        mediators='mediators = ["m0"]\ncategorical_states = ["code"]'))
    monkeypatch.setattr(_data, "feature_rows", lambda *a: pytest.fail("states were built"))
    res = runner.invoke(app, ["mediate", str(tmp_path / "wide.csv"), "--manifest",
                              str(tmp_path / "m.toml"), "--policy", str(tmp_path / "target.csv"),
                              "--bootstrap", "0"])
    out = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Too few transitions for the basis" in out and "--basis constant" in out


def test_mediation_table_says_what_the_effects_and_the_fixed_control_are():
    """A daily panel: evaluate reported values near 31 (discounted returns), mediate a total
    effect of 0.118 titled "awr_probs vs a0=0", with no word that these are long-run average
    rewards per step nor that a0=0 meant "never a coach call"."""
    from rich.console import Console

    from equicare.causal._result import (
        EFFECT_KEYS,
        EffectEstimate,
        EstimatorResult,
        MediationResult,
    )
    from equicare.cli._causal import MEDIATION_UNITS, mediation_table

    eff = {k: EffectEstimate(0.1, 0.01, (0.08, 0.12)) for k in EFFECT_KEYS}
    res = MediationResult(n_episodes=100, n_steps=900, control="a0=0",
                          estimators={"mr": EstimatorResult(eff, {})})
    console = Console(width=400, record=True)
    console.print(mediation_table(res, "action=coach call"))
    text = " ".join(console.export_text().split())
    assert MEDIATION_UNITS + " Control a0=0: never action=coach call." in text
    console = Console(width=400, record=True)
    console.print(mediation_table(res))
    text = " ".join(console.export_text().split())
    assert MEDIATION_UNITS in text and "never" not in text


def test_mediate_values_exception_rules_as_deployed_like_evaluate(app, tmp_path):
    """A rules folder and predict's file of it (follows_practice) give the same deployed
    numbers, recorded (usual_care, deferred_share) and said in evaluate's words; --usual-care
    stored values the stored estimate (other numbers). Truth: tests/causal/test_deployed.py."""
    from tests.causal.test_deployed import _dataset, _mdp, _rules

    mdp = _mdp()
    ds = _dataset(mdp, 100)
    mdp.sample(300, 41, random_state=100).to_frame().to_parquet(tmp_path / "panel.parquet")
    (tmp_path / "m.toml").write_text(MANIFEST.format(mediators='mediators = ["m0"]\n'
                                                     'behavior_prob = "propensity"'))
    _rules(ds).save(tmp_path / "rules")
    base = ["--manifest", str(tmp_path / "m.toml")]
    res = runner.invoke(app, ["predict", str(tmp_path / "rules"), str(tmp_path / "panel.parquet"),
                              *base, "--out", str(tmp_path / "rules.parquet")])
    assert res.exit_code == 0, res.output
    out = {}
    for pol, uc in (("rules", "deployed"), ("rules.parquet", "deployed"), ("rules", "stored")):
        o = tmp_path / f"{pol}_{uc}.json"
        args = ["mediate", str(tmp_path / "panel.parquet"), *base, "--policy",
                str(tmp_path / pol), "--estimators", "dm,mr", "--bootstrap", "0",
                "--no-progress", "--out", str(o)]
        if uc == "stored":
            args += ["--usual-care", "stored"]
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert ("Usual care: the policy leaves 55.8% (target) of transitions to current practice, "
                + ("valued as deployed" if uc == "deployed" else
                   "valued with the estimate of practice saved with the policy")) in text
        out[pol, uc] = json.loads(o.read_text())
        assert out[pol, uc]["usual_care"] == uc
        assert out[pol, uc]["deferred_share"] == {"target": pytest.approx(0.5576, abs=1e-4)}
    assert out["rules", "deployed"]["estimators"] == out["rules.parquet", "deployed"]["estimators"]
    dep = out["rules", "deployed"]["estimators"]["mr"]["total"]["value"]
    sto = out["rules", "stored"]["estimators"]["mr"]["total"]["value"]
    truth = mdp.exact_effects(np.vstack([mdp.behavior[:2], [[0.2, 0.8]] * 2]), 0)["total"]
    assert abs(dep - truth) < 0.2 < abs(sto - truth), (dep, sto, truth)


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")
def test_policy_object_with_action_set_is_read_as_its_file(tmp_path):
    """A policy object with ``action=`` gives the numbers of the same policy's file.

    It was asked for ``action_probs`` on the binarised dataset (two actions), where the care
    policy cannot be evaluated: a policy object differed from its file (session-20 medpol
    report)."""
    from equicare.data import load_dataset
    from equicare.policy import load_policy, write_policy_file
    from equicare.sim.care import CareManagementSim

    sim = CareManagementSim()
    panel = sim.generate(n_members=120, n_weeks=20, random_state=3)
    panel.write(tmp_path / "care")
    ds = load_dataset(tmp_path / "care" / "panel.parquet", tmp_path / "care" / "manifest.toml")
    path = tmp_path / "ref.parquet"
    write_policy_file(ds, sim.reference_policy().action_probs(ds), path)
    kw = {"action": "modality=home_visit", "estimators": ("dm", "mr"), "n_bootstrap": 0}
    by_path = mediate_dataset(ds, str(path), 0, **kw).to_dict()
    for pol in (load_policy(path), sim.reference_policy()):
        by_object = mediate_dataset(ds, pol, 0, **kw).to_dict()
        for est in ("dm", "mr"):
            for k in ("ide", "ime", "dde", "dme", "total"):
                assert by_object["estimators"][est][k]["value"] == pytest.approx(
                    by_path["estimators"][est][k]["value"], abs=1e-9), (est, k)


def test_mediate_prints_and_writes_effects_per_stay_for_terminal_outcomes(app, tmp_path):
    """Stays ending in a terminal row with an outcome on it (survival at discharge): besides the
    per-step table, a per-stay table (effects per stay, the target's and control's outcome per
    stay, mean stay lengths in its caption) and the JSON's ``per_stay`` entries."""
    rng = np.random.default_rng(5)
    n_stays = 300
    length = rng.integers(2, 12, n_stays)
    ep = np.repeat(np.arange(n_stays), length)
    t = np.concatenate([np.arange(k) for k in length])
    last = np.r_[ep[1:] != ep[:-1], True]
    n = ep.size
    s0 = rng.integers(0, 2, n).astype(float)
    action = rng.integers(0, 2, n)
    m0 = (rng.random(n) < 0.3 + 0.4 * action).astype(int)
    reward = np.where(last, (rng.random(n) < 0.6 + 0.2 * m0).astype(float), 0.0)
    pd.DataFrame({"episode": ep, "time": t, "s0": s0, "m0": m0, "action": action,
                  "reward": reward, "done": last.astype(int)}).to_csv(tmp_path / "stays.csv",
                                                                     index=False)
    pd.DataFrame({"episode": ep, "time": t, "p_0": 0.2, "p_1": 0.8}).to_csv(
        tmp_path / "target.csv", index=False)
    (tmp_path / "m.toml").write_text(MANIFEST.format(
        mediators='mediators = ["m0"]\nterminal = "done"'))
    res = runner.invoke(app, ["mediate", str(tmp_path / "stays.csv"), "--manifest",
                              str(tmp_path / "m.toml"), "--policy", str(tmp_path / "target.csv"),
                              "--bootstrap", "50", "--estimators", "dm,mr", "--no-progress",
                              "--out", str(tmp_path / "med.json")])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert f"Per stay: target vs a0=0 ({n_stays:,} stays ended)" in out
    assert "Effects per stay: each process's eta divided by the rate at which its stays end" in out
    assert "value of target" in out and "value of control" in out
    d = json.loads((tmp_path / "med.json").read_text())
    ps = d["estimators"]["mr"]["per_stay"]
    # every stay ends: the end rate of the logged process is stays / rows; the target's
    # outcome per stay is a survival probability
    assert 0.5 < ps["value"]["pi_e"] < 1 and ps["note"] is None
    assert ps["stay_length"]["pi_e"] == pytest.approx(n / n_stays, rel=0.1)
    assert ps["total"]["ci"][0] <= ps["total"]["value"] <= ps["total"]["ci"][1]


def test_mediation_caption_says_when_the_mediator_ratio_rests_on_few_rows():
    """On the warfarin-like dosing panel MR's mediator-ratio ESS was 3 % of the transitions: a
    SupportWarning on stderr said so once, above the progress lines, but neither the table nor
    the run report (which shows the same caption) did, and the JSON only had the raw count."""
    from rich.console import Console

    from equicare.causal._result import (
        EFFECT_KEYS,
        LOW_WEIGHT_ESS_NOTE,
        EffectEstimate,
        EstimatorResult,
        MediationResult,
    )
    from equicare.cli._causal import mediation_table

    eff = {k: EffectEstimate(0.1, 0.01, (0.08, 0.12)) for k in EFFECT_KEYS}
    res = MediationResult(n_episodes=1500, n_steps=56_962, control="a0=0",
                          estimators={"mr": EstimatorResult(eff, {})},
                          ess={"pi_e": 30_000.0, "a0": 4_000.0, "G": 20_000.0,
                               "mediator": 1_709.0})
    console = Console(width=400, record=True)
    console.print(mediation_table(res))
    text = " ".join(console.export_text().split())
    assert LOW_WEIGHT_ESS_NOTE.format(which="the mediator ratio 3.0%, the state density ratio "
                                      "of 'a0' 7.0%") in text
    assert "rest on a few rows" in res.caption()
    fine = MediationResult(n_episodes=1500, n_steps=56_962, control="a0=0",
                           estimators={"mr": EstimatorResult(eff, {})},
                           ess={"pi_e": 30_000.0, "a0": 30_000.0, "G": 20_000.0,
                                "mediator": 20_000.0})
    assert "rest on a few rows" not in fine.caption()
