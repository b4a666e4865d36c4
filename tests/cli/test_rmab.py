from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from equicare.cli._rmab import parse_budget
from equicare.rmab import load_domain

from ..rmab.test_estimate import make_panel

runner = CliRunner()


@pytest.fixture
def app():
    from equicare.cli import app as main_app

    return main_app  # the real app: its error taxonomy and deprecated spellings


def test_plan_writes_contract5_atomically_and_refuses_overwrite(app, tmp_path):
    out = tmp_path / "plan.json"
    args = ["plan", "--domain", "synthetic", "--arms", "100", "--budget", "0.2", "--horizon",
            "20", "--policy", "opt,mmr,mnw,mnw-eg,random,noact", "--seeds", "4", "--out",
            str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert (d["domain"], d["n_arms"], d["budget"], d["horizon"], d["seeds"]) == (
        "synthetic", 100, 20, 20, 4)
    assert set(d["policies"]) == {"opt", "mmr", "mnw", "mnw-eg", "random", "noact"}
    assert "gini_reference" not in d["policies"]["mmr"]
    before = out.read_text()
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "exists" in res.output and out.read_text() == before
    res = runner.invoke(app, [*args, "--force", "--reference", "--seeds", "2"])
    assert res.exit_code == 0, res.output
    assert "gini_reference" in json.loads(out.read_text())["policies"]["mmr"]
    assert not list(tmp_path.glob(".plan.json.*"))  # no temporary files left behind


@pytest.mark.parametrize("args, msg", [
    (["--domain", "synthetic", "--budget", "101"], "The 'budget' parameter of plan"),
    (["--domain", "synthetic", "--budget", "-3"], "--budget must be >= 0"),
    (["--domain", "synthetic", "--policy", "opt,best"], "unknown policy 'best'"),
    (["--domain", "nowhere"], "'nowhere' is not one of 'synthetic', 'maternal', 'diabetes'"),
    ([], "Give exactly one of DOMAIN.json, --domain NAME or --from-panel DATA."),
])
def test_plan_user_errors(app, args, msg):
    res = runner.invoke(app, ["plan", *args, "--seeds", "1"])
    assert res.exit_code == 2
    assert msg in " ".join(res.output.split())


def test_plan_bad_domain_file(app, tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"n_states": 2, "types": [
        {"group": "A", "P": [[[0.5, 0.6], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]],
         "R": [0, 1]}]}))
    res = runner.invoke(app, ["plan", str(f), "--seeds", "1"])
    assert res.exit_code == 2
    assert "Rows of P must sum to 1" in " ".join(res.output.split())


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_plan_from_panel_reads_the_duckdb_table_the_manifest_names(app, tmp_path):
    # the manifest's dataset.table was ignored: "name the table to read (manifest
    # dataset.table)" although the manifest named it
    import duckdb
    import pandas as pd

    from equicare.data import read_manifest

    p, mf = _panel_files(tmp_path)
    db = tmp_path / "panel.duckdb"
    con = duckdb.connect(str(db))
    con.register("f", pd.read_csv(p))
    con.execute("CREATE TABLE logged AS SELECT * FROM f")
    con.execute("CREATE TABLE other AS SELECT 1 AS x")
    con.close()
    d = read_manifest(mf).to_dict()
    d["dataset"]["table"] = "logged"
    from equicare.data import Manifest

    mf.write_text(Manifest.from_dict(d).to_toml())
    res = runner.invoke(app, ["plan", "--from-panel", str(db), "-m", str(mf), "--seeds", "1",
                              "--horizon", "3", "--policy", "random", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_arms"] == 200


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_plan_from_panel_with_manifest_suppresses_small_groups(app, tmp_path):
    p, mf = _panel_files(tmp_path)  # members per group A-E: 50, 50, 10, 50, 40
    out = tmp_path / "plan.json"
    fig = tmp_path / "groups.png"
    args = ["plan", "--from-panel", str(p), "--manifest", str(mf), "--budget", "20", "--seeds",
            "2", "--horizon", "8", "--policy", "opt,mnw-eg"]
    res = runner.invoke(app, [*args, "--out", str(out), "--figure", str(fig)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["n_arms"] == 200 and got["budget"] == 20
    # C has 10 members; E (40) is hidden too, else C = total - the others
    assert got["group_sizes"] == {"A": 50, "B": 50, "C": None, "D": 50, "E": None}
    assert got["suppressed_groups"] == ["C", "E"] and got["min_cell"] == 11
    for pol in got["policies"].values():
        for key in ("group_mean", "group_mean_se", "group_budget"):
            assert set(pol[key]) == {"A", "B", "D"}
        assert pol["worst_group_name"] in ("A", "B", "D")
    said = " ".join(res.output.split())
    assert "A (n=50)" in said and "(n=10)" not in said and "C (n=" not in said
    assert "E (n=" not in said and "2 group(s) suppressed" in said
    assert "2 group cells were suppressed: C, E." in said
    assert fig.stat().st_size > 1000
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    js = json.loads(res.stdout)
    assert js["group_sizes"]["C"] is None and "C" not in js["policies"]["opt"]["group_mean"]


def test_capacity_command(app, tmp_path):
    fig = tmp_path / "cap.png"
    out = tmp_path / "cap.json"
    res = runner.invoke(app, ["capacity", "--domain", "diabetes", "--arms", "30", "--alpha", "0",
                              "--seeds", "2", "--horizon", "6", "--target-share", "0.45",
                              "--policy", "opt,hr-rr", "--budgets", "0,0.2,0.5,1.0",
                              "--out", str(out), "--figure", str(fig)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["budgets"] == [0, 6, 15, 30] and set(d["policies"]) == {"opt", "hr-rr"}
    assert fig.stat().st_size > 1000


def _panel_files(tmp_path, n_arms=200, seed=0):
    """A logged synthetic program as panel.csv plus its manifest.toml."""
    from equicare.data import Manifest

    d = load_domain("synthetic", n_arms=n_arms)
    panel = make_panel(d, 12, np.random.default_rng(seed))
    panel["state"] = panel["state"].astype(int)
    panel["reward_noise"] = np.random.default_rng(seed).random(len(panel))  # continuous
    p = tmp_path / "panel.csv"
    panel.to_csv(p, index=False)
    m = Manifest.from_dict({
        "dataset": {"episode": "member", "time": "week", "categorical_states": ["state"],
                    "groups": ["group"]},
        "actions": {"treated": {"levels": 2}},
        "reward": {"r": {"column": "reward"}}})
    mf = tmp_path / "manifest.toml"
    mf.write_text(m.to_toml())
    return p, mf


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_capacity_from_panel_runs_end_to_end(app, tmp_path):
    p, mf = _panel_files(tmp_path)
    out = tmp_path / "cap.json"
    res = runner.invoke(app, ["capacity", "--from-panel", str(p), "-m", str(mf), "--goal", "1",
                              "--budgets", "0,0.1,0.2", "--seeds", "2", "--horizon", "6",
                              "--policy", "opt,random", "--out", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert d["budgets"] == [0, 20, 40] and set(d["policies"]) == {"opt", "random"}
    assert d["goal_states"] == ["1"]
    share = d["policies"]["opt"]["share"]
    assert len(share) == 3 and all(0.0 <= v <= 1.0 for v in share) and share[2] >= share[0]
    said = " ".join(res.output.split())
    assert "Share of arms in 1 after 6 steps" in said and "opt" in said


def test_plan_from_panel_with_a_continuous_state_exits_2_naming_file_and_column(app, tmp_path):
    p, mf = _panel_files(tmp_path, n_arms=100)
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "-m", str(mf), "--state",
                              "reward_noise", "--seeds", "1"])
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert said.startswith(f"error: {p}: Column 'reward_noise' (state) has 1200 distinct "
                           "values; the state must be a discrete column with at most 100 "
                           "levels"), said
    assert "--state" in said and "internal error" not in said


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_from_panel_without_a_manifest_takes_every_column_option(app, tmp_path):
    p, _ = _panel_files(tmp_path)
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "--seeds", "1"])
    assert res.exit_code == 2
    said = " ".join(res.output.split())
    assert said == ("error: --from-panel needs a manifest (--manifest) or the column options "
                    "--episode, --state, --action, --group, --reward."), said
    cols = ["--episode", "member", "--time", "week", "--state", "state", "--action", "treated",
            "--group", "group", "--reward", "reward"]
    out = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "--from-panel", str(p), *cols, "--budget", "20",
                              "--seeds", "1", "--horizon", "4", "--policy", "opt",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["group_sizes"]["A"] == 50
    res = runner.invoke(app, ["capacity", "--from-panel", str(p), *cols, "--goal", "1",
                              "--budgets", "0,0.5", "--seeds", "1", "--horizon", "4",
                              "--policy", "opt"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["capacity", "--from-panel", str(p), "--episode", "member",
                              "--seeds", "1", "--goal", "1"])
    assert res.exit_code == 2 and "column options --state, --action, --group, --reward." in (
        " ".join(res.output.split()))


@pytest.mark.parametrize("args, said", [
    (["plan", "--domain", "synthetic", "--policy", "foo"],
     "error: --policy: unknown policy 'foo'; choose from noact, random, opt, mmr, mnw, mnw-eg, "
     "hr-random, hr-rr."),
    (["capacity", "--domain", "synthetic", "--goal", "good", "--budgets=-1,0.1"],
     "error: --budgets must be >= 0; got '-1'."),
    (["capacity", "--domain", "synthetic", "--goal", "good", "--budgets", "0.1,2.5"],
     "error: --budgets above 1 must be a whole number of actions; got '2.5'."),
    (["plan", "--domain", "maternal", "--alpha", "0.5"],
     "error: --alpha applies only to the diabetes domain (the reward's engagement weight); "
     "domain 'maternal' has no such setting."),
    (["plan", "--domain", "synthetic", "--experiment", "B"],
     "error: --experiment applies only to the maternal domain (which group is 60%); domain "
     "'synthetic' has no such setting."),
    (["capacity", "--domain", "diabetes", "--experiment", "B"],
     "error: --experiment applies only to the maternal domain (which group is 60%); domain "
     "'diabetes' has no such setting."),
])
def test_option_messages_name_the_options_that_exist(app, args, said):
    res = runner.invoke(app, [*args, "--seeds", "1"])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == said


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_from_panel_bad_action_value_is_shown_plainly(app, tmp_path):
    p, mf = _panel_files(tmp_path, n_arms=100)
    import pandas as pd

    df = pd.read_csv(p)
    df["tr2"] = df["treated"]
    df.loc[7, "tr2"] = 2
    df.to_csv(p, index=False)
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "-m", str(mf), "--action", "tr2",
                              "--seeds", "1"])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()) == (
        f"error: {p}: Column 'tr2' must hold 0/1 (treated or not); row 7 (0-based data row) "
        "has 2.")


def test_capacity_without_a_goal_names_the_flag(app):
    res = runner.invoke(app, ["capacity", "--domain", "synthetic", "--target-share", "0.5",
                              "--seeds", "3"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert said.startswith("error: --goal is needed: domain 'synthetic' defines no high-risk "
                           "states"), said
    assert "goal_states" not in said and "or names (bad, good)." in said


def test_capacity_from_panel_without_a_goal_refuses_before_estimating(app, tmp_path,
                                                                      monkeypatch):
    """Arms estimated from a panel have no high-risk states, so --goal is always needed: a
    care panel's user waited 11 s for the estimation before the refusal. Now it comes first."""
    import equicare.cli._rmab as cli_rmab

    p, mf = _panel_files(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("the domain was built before the refusal")

    monkeypatch.setattr(cli_rmab, "build_domain", boom)
    res = runner.invoke(app, ["capacity", "--from-panel", str(p), "-m", str(mf), "--seeds", "2"])
    assert res.exit_code == 2, res.output
    assert " ".join(res.output.split()).startswith(
        "error: --goal is needed with --from-panel: arms estimated from a panel define no "
        "high-risk states"), res.output


def test_parse_budget():
    assert parse_budget("0.2") == 0.2 and parse_budget("20") == 20 and parse_budget("1") == 1
    assert parse_budget("1.0") == 1.0
    with pytest.raises(ValueError, match="whole number"):
        parse_budget("2.5")


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_parse_budget_refuses_non_finite(text):
    with pytest.raises(ValueError, match=r"must be a finite number"):
        parse_budget(text)


@pytest.mark.parametrize("args", [["plan", "--budget", "nan"],
                                  ["capacity", "--goal", "good", "--budgets", "0.1,inf"]])
def test_non_finite_budget_is_a_user_error(app, args):
    res = runner.invoke(app, [args[0], "--domain", "synthetic", "--arms", "20", "--seeds", "1",
                              *args[1:]])
    said = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "must be a finite number" in said and "internal error" not in said, said


def test_import_is_light():
    code = ("import sys, equicare.rmab; "
            "print(any(m in sys.modules for m in ('matplotlib', 'torch', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_group_figure_leaves_out_suppressed_groups():
    from equicare.rmab import RMABDomain, plan, plot_group_outcomes

    b = load_domain("synthetic", n_arms=40)
    d = RMABDomain(P=b.P, R=b.R, init=b.init, groups=b.groups, group_names=b.group_names,
                   suppressed_groups=("C", "E"))
    fig = plot_group_outcomes(plan(d, budget=4, seeds=1, horizon=4, policies=["opt"]))
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B", "D"]


def test_figures(tmp_path):
    from matplotlib.figure import Figure

    from equicare.rmab import plan, plot_group_outcomes, plot_pareto

    d = load_domain("synthetic", n_arms=40)
    rs = [plan(d, budget=b, seeds=2, horizon=6, policies=["opt", "mmr"]) for b in (0.1, 0.3)]
    f1 = plot_group_outcomes(rs[0])
    f2 = plot_pareto(rs)
    assert isinstance(f1, Figure) and isinstance(f2, Figure)
    f2.savefig(tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_every_public_name_imports():
    import equicare.rmab as r

    for name in r.__all__:
        assert getattr(r, name) is not None


@pytest.mark.parametrize("ext", ["svg", "pdf"])
def test_the_same_plan_figure_is_the_same_file(app, tmp_path, ext):
    # an SVG or PDF --figure carried the time it was written (and SVG random element ids): the
    # second analyst's identical figure differed from the first's
    args = ["plan", "--domain", "synthetic", "--arms", "40", "--seeds", "1", "--horizon", "3",
            "--policy", "random"]
    figs = [tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"]
    for f in figs:
        res = runner.invoke(app, [*args, "--figure", str(f)])
        assert res.exit_code == 0, res.output
    assert figs[0].read_bytes() == figs[1].read_bytes()


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_from_panel_names_the_reward_components_and_the_state_it_takes(app, tmp_path):
    """A manifest with two reward components (a health change and an outreach cost) was told
    that it 'does not name' --reward; and the state column taken from the manifest (its first
    categorical state, a 60-level clinic code on a diabetes panel) was never named."""
    from equicare.data import Manifest

    p, mf = _panel_files(tmp_path)
    m = Manifest.from_dict({
        "dataset": {"episode": "member", "time": "week", "categorical_states": ["state"],
                    "groups": ["group"]},
        "actions": {"treated": {"levels": 2}},
        "reward": {"health": {"column": "reward"}, "noise": {"column": "reward_noise"}}})
    two = tmp_path / "two.toml"
    two.write_text(m.to_toml())
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "-m", str(two), "--seeds", "1"])
    assert res.exit_code == 2
    said = " ".join(res.output.split())
    assert said == (f"error: {two}: the manifest's reward has 2 components (reward, "
                    "reward_noise); planning needs one reward column: pass --reward COLUMN "
                    "(e.g. --reward reward)."), said
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "-m", str(two), "--reward",
                              "reward", "--seeds", "1", "--horizon", "4", "--policy", "opt"])
    assert res.exit_code == 0, res.output
    assert ("note: planning on state column 'state' (the manifest's first categorical state); "
            "pass --state COLUMN to choose another.") in " ".join(res.output.split())
    res = runner.invoke(app, ["plan", "--from-panel", str(p), "-m", str(two), "--reward",
                              "reward", "--state", "state", "--seeds", "1", "--horizon", "4",
                              "--policy", "opt"])
    assert res.exit_code == 0 and "note: planning on state" not in res.output


def test_plan_table_shows_a_small_standard_error_instead_of_0_000(app, tmp_path):
    """Per-step rewards of a weekly score: a mean of -0.063 per arm with an SE of 0.0002 read
    '-0.063 ± 0.000' (as if there were no spread)."""
    d = {"name": "tiny", "n_states": 2, "horizon": 6, "gamma": 1.0,
         "types": [{"name": "A", "group": "A", "fraction": 1.0,
                    "P": [[[0.9, 0.1], [0.1, 0.9]], [[0.6, 0.4], [0.1, 0.9]]],
                    "R": [0.0, 0.0001], "init": [0.5, 0.5]}]}
    f = tmp_path / "tiny.json"
    f.write_text(json.dumps(d))
    res = runner.invoke(app, ["plan", str(f), "--arms", "40", "--budget", "0.2", "--seeds",
                              "5", "--policy", "opt,noact"])
    assert res.exit_code == 0, res.output
    assert "0.000 ± 0.000" not in res.output  # what it printed
    row = next(line for line in res.output.splitlines() if "noact" in line)
    import re

    assert re.search(r"0\.000\d\d ± \d\.\de-05", row), row  # 0.00028 ± 1.6e-05


@pytest.mark.filterwarnings("always::equicare.exceptions.EquicareWarning")  # shown, not raised
def test_plan_from_panel_counts_people_when_the_manifest_names_member(app, tmp_path):
    """Eight people with two episodes each (16 episodes) are a group of fewer than 11."""
    import pandas as pd

    from equicare.data import Manifest, read_manifest

    p, mf = _panel_files(tmp_path)
    panel = pd.read_csv(p)
    panel = panel[panel["group"] != "C"].copy()
    panel["person"] = panel["member"]
    moved = panel["member"].isin(panel.loc[panel["group"] == "B", "member"].unique()[:8])
    panel.loc[moved, "group"] = "F"
    panel["member"] = np.where(moved & (panel["week"] >= 6), panel["member"] + 10_000,
                               panel["member"])
    panel["week"] = np.where(moved & (panel["week"] >= 6), panel["week"] - 6, panel["week"])
    panel.to_csv(p, index=False)
    args = ["plan", "--from-panel", str(p), "--budget", "20", "--seeds", "1", "--horizon",
            "3", "--policy", "random", "--json"]
    res = runner.invoke(app, [*args, "-m", str(mf)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["group_sizes"]["F"] == 16  # episodes taken for people
    d = read_manifest(mf).to_dict()
    d["dataset"]["member"] = "person"
    mf.write_text(Manifest.from_dict(d).to_toml())
    res = runner.invoke(app, [*args, "-m", str(mf)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["group_sizes"]["F"] is None and "F" in got["suppressed_groups"]
    res = runner.invoke(app, [*args, "-m", str(mf), "--member", "member"])  # the option wins
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["group_sizes"]["F"] == 16
