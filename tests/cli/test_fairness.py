from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from equicare.cli._fairness import parse_policy_specs


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> dict[str, Path]:
    from equicare.exceptions import DataWarning
    from equicare.policy import write_policy_file
    from equicare.sim.care import CareManagementSim

    root = tmp_path_factory.mktemp("care")
    sim = CareManagementSim()
    p = sim.generate(n_members=400, n_weeks=12, random_state=11)
    p.write(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = p.dataset()
    probs = sim.behavior_policy(equitable=True).action_probs(ds)
    write_policy_file(ds, probs, root / "equitable.parquet")
    return {"data": root / "panel.parquet", "manifest": root / "manifest.toml",
            "policy": root / "equitable.parquet", "root": root}


@pytest.fixture
def app() -> typer.Typer:
    from equicare.cli import app as main_app

    return main_app  # the real app: its error taxonomy and deprecated spellings


def _run(app: typer.Typer, args: list[str]):
    return CliRunner().invoke(app, args)


def test_audit_writes_contract7(app, panel, tmp_path) -> None:
    out = tmp_path / "audit.json"
    args = ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]), "--policy",
            f"eq={panel['policy']}", "--group", "race_ethnicity", "--action",
            "modality=home_visit", "--bootstrap", "50", "--permutations", "50", "--out", str(out)]
    r = _run(app, args)
    assert r.exit_code == 0, r.output
    assert "modality=home_visit" in r.output and "eq" in r.output
    d = json.loads(out.read_text())
    assert d["group"] == "race_ethnicity" and d["action"] == "modality=home_visit"
    assert list(d["policies"]) == ["behavior", "eq"]
    assert "value_by_group" in d["policies"]["eq"]
    # refuses to overwrite, then --force replaces
    r2 = _run(app, args)
    assert r2.exit_code == 2 and "refusing to overwrite" in r2.output
    assert json.loads(out.read_text()) == d
    r3 = _run(app, [*args, "--force", "--seed", "3"])
    assert r3.exit_code == 0, r3.output


def test_audit_prints_the_proportional_parity_the_json_publishes(app, panel, tmp_path) -> None:
    """The README lists proportional parity among what `equicare audit` reports; it was in the
    JSON only. The terminal now has a table of it, cell for cell the JSON's."""
    from rich.console import Console

    from equicare.cli._fairness import audit_tables
    from equicare.data import load_dataset
    from equicare.exceptions import DataWarning, SmallCellWarning
    from equicare.fairness import audit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        warnings.simplefilter("ignore", SmallCellWarning)  # asian, hispanic, other: pp hidden
        ds = load_dataset(panel["data"], panel["manifest"])
        res = audit(ds, action="modality=home_visit", group="race_ethnicity", n_boot=20,
                    n_permutations=0, estimator=None, random_state=0)
    tables = audit_tables(res)
    assert len(tables) == 3 and "Proportional parity" in str(tables[2].title)
    con = Console(record=True, width=200)
    con.print(tables[2], markup=False)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in con.export_text().splitlines() if line.count("│") >= 3}
    pp = res["behavior"].allocation.to_dict()["proportional_parity"]
    assert set(rows) == set(pp)
    for g, e in pp.items():
        want = ("suppressed" if e.get("suppressed") else
                f"{e['value']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}]")
        assert rows[g] == want
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--bootstrap", "0", "--permutations", "0", "--estimators", "none"])
    assert r.exit_code == 0 and "Proportional parity by" in r.output


def test_audit_intersectional_with_suppression(app, panel, tmp_path) -> None:
    out = tmp_path / "inter.json"
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--intersect", "sex", "--bootstrap", "20", "--permutations", "0",
                   "--estimators", "none", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["group"] == "race_ethnicity x sex"
    rates = d["policies"]["behavior"]["rate"]
    sup = [k for k, v in rates.items() if v == {"suppressed": True}]
    pub = [k for k, v in rates.items() if "value" in v]
    assert sup and pub  # small intersectional cells of 400 members are suppressed
    assert all(rates[k]["n_episodes"] >= 11 for k in pub)
    assert "suppressed" in r.output
    assert d["policies"]["behavior"]["permutation_p"] is None


@pytest.mark.parametrize(("extra", "message"), [
    (["--action", "modality=teleport"], "Unknown level(s) ['teleport']"),
    (["--group", "zip"], "Unknown group attribute(s) ['zip']"),
    (["--policy", "nope/missing.parquet"], "no such policy file or model folder"),
    (["--level", "week"], "Invalid value for '--level'"),
    (["--estimators", "magic"], "Invalid value for '--estimators'"),
])
def test_audit_user_errors_one_line(app, panel, extra, message) -> None:
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--bootstrap", "0", "--permutations", "0", *extra])
    assert r.exit_code == 2
    assert message in r.output.replace("\n", " ")
    assert "Traceback" not in r.output


def test_parse_policy_specs() -> None:
    assert parse_policy_specs(["a=x/y", "models/awr_fair"]) == {
        "a": Path("x/y"), "awr_fair": Path("models/awr_fair")}
    with pytest.raises(ValueError, match="reserved"):
        parse_policy_specs(["behavior=x"])
    with pytest.raises(ValueError, match="given twice"):
        parse_policy_specs(["a=x", "a=y"])


def test_unnamed_rules_are_named_after_their_source(tmp_path) -> None:
    import json

    model = tmp_path / "card" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({
        "kind": "tree", "info": {"distill": {"max_depth": 2}, "source": {"path": "m/awr"}}}))
    assert parse_policy_specs([str(model)]) == {"rules (depth 2) of awr": model}


def test_frontier_command(app, panel, tmp_path) -> None:
    out = tmp_path / "frontier.json"
    r = _run(app, ["frontier", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--algo", "bc", "--lambdas", "0,10", "--steps", "30", "--bootstrap", "20",
                   "--estimators", "wis", "--executor", "serial", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert [p["lambda"] for p in d["points"]] == [0.0, 10.0]
    assert {"value", "gap_pp", "worst_group_value", "pareto"} <= set(d["points"][0])
    assert any(p["pareto"] for p in d["points"])
    # a 30-step BC leaves the clinicians' support: one warning, printed and in the JSON
    assert d["warnings"] and d["warnings"][0].startswith("frontier: the wis values of 2 of 2")
    assert "warning: frontier: the wis values of 2 of 2 weights" in r.output
    r2 = _run(app, ["frontier", str(panel["data"]), "--manifest", str(panel["manifest"]),
                    "--lambdas", "0,x"])
    assert r2.exit_code == 2 and "--lambdas must be comma-separated numbers" in r2.output


def test_a_missing_interval_prints_nothing():
    """A null Gini has a null interval: the table shows '-', not '- [-, -]'."""
    from equicare.cli._fairness import _ci, _fmt

    nan = float("nan")
    assert f"{_fmt(nan, 1, 3)} {_ci((nan, nan), 1, 3)}".strip() == "-"
    assert _ci((0.01, 0.03), 1, 3) == "[0.010, 0.030]"


def test_audit_with_no_publishable_group_names_the_file_and_group_column(app, panel,
                                                                          tmp_path) -> None:
    """Every group under 11 episodes: the one-line error names the panel file and the column."""
    import pandas as pd

    frame = pd.read_parquet(panel["data"])
    frame["site"] = "s" + (frame["member_id"].rank(method="dense").astype(int) % 50).astype(str)
    man = panel["manifest"].read_text().replace('groups = [', 'groups = ["site", ', 1)
    (tmp_path / "m.toml").write_text(man)
    data = tmp_path / "p.parquet"
    frame.to_parquet(data, index=False)
    base = ["audit", str(data), "-m", str(tmp_path / "m.toml"), "--group", "site",
            "--bootstrap", "5", "--permutations", "0"]
    for args in (base, [*base, "--chunk-rows", "1000"]):
        r = _run(app, args)
        assert r.exit_code == 2, r.output
        out = " ".join(r.output.split())
        assert (f"{data}: no group of the group column 'site' (manifest dataset.groups) can be "
                "published") in out, out
        assert "Traceback" not in r.output


def test_audit_and_frontier_with_one_published_group_exit_2(app, panel, tmp_path) -> None:
    """A one-level group attribute: no parity to measure, one line, exit 2."""
    import pandas as pd

    frame = pd.read_parquet(panel["data"])
    frame["one"] = "all"
    man = panel["manifest"].read_text().replace('groups = [', 'groups = ["one", ', 1)
    (tmp_path / "m.toml").write_text(man)
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    base = [str(tmp_path / "p.parquet"), "-m", str(tmp_path / "m.toml"), "--group", "one"]
    msg = "group 'one': only 1 group can be published (all); a parity audit needs at least 2."
    for args in (["audit", *base, "--bootstrap", "5", "--permutations", "0"],
                 ["audit", *base, "--bootstrap", "5", "--permutations", "0",
                  "--chunk-rows", "1000"],
                 ["frontier", *base, "--algo", "bc", "--steps", "5", "--lambdas", "0",
                  "--bootstrap", "0", "--no-progress"]):
        r = _run(app, args)
        assert r.exit_code == 2, r.output
        assert msg in r.output.replace("\n", " ") and "Traceback" not in r.output


def test_audit_prints_bracketed_group_labels_as_written(app, panel, tmp_path) -> None:
    """'Hispanic [/bold]' crashed the table (MarkupError); 'White [non-Hispanic]' lost its tag."""
    import pandas as pd

    frame = pd.read_parquet(panel["data"])
    levels = sorted(frame["race_ethnicity"].astype(str).value_counts().index[:3])
    new = {levels[0]: "Hispanic [/bold]", levels[1]: "White [non-Hispanic]",
           levels[2]: "Other [red]"}
    frame["race_ethnicity"] = frame["race_ethnicity"].astype(str).replace(new)
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    r = _run(app, ["audit", str(tmp_path / "p.parquet"), "-m", str(panel["manifest"]),
                   "--group", "race_ethnicity", "--bootstrap", "5", "--permutations", "0",
                   "--policy", f"eq [v2]={panel['policy']}"])
    assert r.exit_code == 0, r.output
    for label in (*new.values(), "eq [v2]"):
        assert label in r.output


def test_audit_prints_and_writes_the_weight_diagnostics(app, panel, tmp_path) -> None:
    """As evaluate: the ESS of the policy's weights (overall, by group) and its support."""
    out = tmp_path / "diag.json"
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--policy", f"eq={panel['policy']}", "--group", "sex", "--bootstrap", "5",
                   "--permutations", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    diag = d["policies"]["eq"]["diagnostics"]
    e = diag["ess"]
    assert (f"ESS of eq (wis, trajectory weights): {e['trajectory']:.1f} "
            f"({e['trajectory_pct']:.2f}% of episodes") in r.output.replace("\n", " ")
    # and the Pareto tail index of every group's weights (n/a: too few to fit)
    k = diag["ess_by_group"]
    assert all(("trajectory_weight_pareto_k_na" in v) == (v["trajectory_weight_pareto_k"] is None)
               for v in k.values())
    assert re.search(r"by group \w+ [\d.]+ \([\d.]+%, Pareto k (n/a|-?[\d.]+)",
                     " ".join(r.output.split()))
    assert set(diag["ess_by_group"]) == set(d["policies"]["eq"]["rate"])
    assert diag["support"] is not None and isinstance(d["warnings"], list)


def test_complementary_cells_are_not_labelled_under_11() -> None:
    """c (4 episodes) is under 11; b (12) is suppressed only so that c cannot be recovered."""
    import warnings as _w

    import numpy as np
    from rich.console import Console

    from equicare.cli._fairness import audit_tables
    from equicare.exceptions import SmallCellWarning
    from equicare.fairness import audit
    from tests.fairness.conftest import make_dataset

    ds = make_dataset([1] * 44, np.zeros((44, 2), dtype=int),
                      {"g": ["a"] * 14 + ["d"] * 14 + ["b"] * 12 + ["c"] * 4})
    with _w.catch_warnings():
        _w.simplefilter("ignore", SmallCellWarning)
        res = audit(ds, action="modality=home_visit", n_boot=0, n_permutations=0,
                    estimator=None)
    con = Console(record=True, width=200)
    con.print(audit_tables(res)[0], markup=False)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in con.export_text().splitlines() if line.count("│") >= 3}
    assert rows["c"] == "<11" and rows["b"] == "suppressed" and rows["a"] == "14"


def test_audit_summary_line_is_the_librarys_small_cells_message(app, panel) -> None:
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--intersect", "sex", "--bootstrap", "0", "--permutations", "0",
                   "--estimators", "none"])
    assert r.exit_code == 0, r.output
    out = r.output.replace("\n", " ")
    assert "group cells were suppressed:" in out and "(complementary suppression)" in out
    assert "group(s) with fewer than" not in out


def test_audit_prints_na_for_a_value_with_every_weight_zero(app, panel, tmp_path) -> None:
    import numpy as np

    from equicare.data import load_dataset
    from equicare.policy import write_policy_file

    ds = load_dataset(panel["data"], panel["manifest"], emit_warnings=False)
    p = np.zeros((ds.n_steps, ds.n_actions))
    p[np.arange(ds.n_steps), (ds.actions + 1) % ds.n_actions] = 1.0  # never the logged action
    pol = tmp_path / "never.parquet"
    write_policy_file(ds, p, pol)
    out = tmp_path / "audit.json"
    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--policy", f"never={pol}", "--group", "race_ethnicity", "--action",
                   "modality=home_visit", "--bootstrap", "20", "--permutations", "0",
                   "--out", str(out)])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.output.splitlines() if line.strip("│ ").startswith("never"))
    assert "n/a" in row and "0.000" not in row
    assert "never: value n/a, every episode's importance weight is 0" in " ".join(r.output.split())
    d = json.loads(out.read_text())["policies"]["never"]
    assert d["value"]["value"] is None and d["worst_group_value"]["group"] is None


def test_audit_min_cell_below_11_warns_and_the_json_records_it(app, panel, tmp_path) -> None:
    out = tmp_path / "audit.json"
    base = ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]), "--group",
            "race_ethnicity", "--bootstrap", "0", "--permutations", "0", "--estimators", "none"]
    r = _run(app, [*base, "--min-cell", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "min_cell=5 is below 11" in said and "not privacy-safe" in said
    d = json.loads(out.read_text())
    assert d["min_cell"] == 5
    assert any("min_cell=5 is below 11" in w for w in d["warnings"])
    r11 = _run(app, base)  # the default: no such warning
    assert r11.exit_code == 0, r11.output
    assert "privacy-safe" not in r11.output


def test_audit_withholds_proportional_parity_of_a_small_need_cell(app, panel, tmp_path) -> None:
    """The need flag kept on 3 hispanic members: the audit published their proportional parity
    (4.08 [0, 6.2] on a 300-member panel), which gives the 3 back. It is suppressed in the JSON
    and a line under the tables says so (proportional parity is not in the tables)."""
    import pandas as pd

    df = pd.read_parquet(panel["data"])
    his = df["race_ethnicity"] == "hispanic"
    three = df.loc[his, "member_id"].drop_duplicates().iloc[:3]
    df.loc[his, "high_need"] = df.loc[his, "member_id"].isin(three).astype(df["high_need"].dtype)
    data = tmp_path / "panel.parquet"
    df.to_parquet(data, index=False)
    out = tmp_path / "audit.json"
    r = _run(app, ["audit", str(data), "--manifest", str(panel["manifest"]), "--group",
                   "race_ethnicity", "--estimators", "none", "--bootstrap", "20",
                   "--permutations", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    pp = json.loads(out.read_text())["policies"]["behavior"]["proportional_parity"]
    assert pp["hispanic"] == {"suppressed": True}
    assert any("value" in c for c in pp.values())  # the others' need cells are large enough
    line = " ".join(r.output.split())
    assert "Proportional parity is not published for" in line and "hispanic" in line


def test_audit_gives_the_reason_of_an_undefined_proportional_parity(app, panel,
                                                                     tmp_path) -> None:
    """No hispanic member has need: their proportional parity (a share over a need share of 0)
    was null in the JSON with no reason and nothing in the terminal. The JSON entry and a line
    under the tables give the reason, in memory and streamed."""
    import pandas as pd

    df = pd.read_parquet(panel["data"])
    df.loc[df["race_ethnicity"] == "hispanic", "high_need"] = 0
    data = tmp_path / "panel.parquet"
    df.to_parquet(data, index=False)
    why = ("no audited episode of group 'hispanic' has need, so its share of the need is 0 and "
           "its share of the allocation cannot be divided by it")
    for extra in ([], ["--chunk-rows", "1000"]):
        out = tmp_path / f"audit{len(extra)}.json"
        r = _run(app, ["audit", str(data), "--manifest", str(panel["manifest"]), "--group",
                       "race_ethnicity", "--estimators", "none", "--bootstrap", "20",
                       "--permutations", "0", "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        pp = json.loads(out.read_text())["policies"]["behavior"]["proportional_parity"]
        assert pp["hispanic"] == {"value": None, "ci": [None, None], "reason": why}
        assert all("reason" not in c for g, c in pp.items() if g != "hispanic")
        assert any(c.get("value") for c in pp.values())
        assert f"behavior: proportional parity n/a for hispanic: {why}" in " ".join(
            r.output.split())


def test_audit_prints_which_q_model_valued_each_policy(app, panel) -> None:
    """One line per policy valued with a Q-model (the JSON's q_model entry); with auto the
    candidates' scores, and when the window table replaced the stationary one, why."""
    from types import SimpleNamespace

    from equicare.cli._fairness import q_model_line

    r = _run(app, ["audit", str(panel["data"]), "--manifest", str(panel["manifest"]),
                   "--policy", f"eq={panel['policy']}", "--group", "sex", "--estimators", "dr",
                   "--q-model", "linear", "--bootstrap", "0", "--permutations", "0"])
    assert r.exit_code == 0, r.output
    assert "Q-model of eq: linear\n" in r.output
    entry = {"chosen": "tabular_stationary",
             "candidates": {"linear": 0.0143, "tabular_stationary": 0.0121, "gbm": None}}
    assert q_model_line("eq", entry) == (
        "Q-model of eq: tabular_stationary, chosen by auto (scores, lower is better: linear "
        "0.0143, tabular_stationary 0.0121, gbm n/a)")
    check = SimpleNamespace(switched=True, switch_note=lambda: "tabular_stationary replaced "
                            "by tabular_window: 17.8% of the episodes are censored")
    replaced = {**entry, "chosen": "tabular_window", "replaced": "tabular_stationary"}
    assert q_model_line("eq", replaced, check) == (
        "Q-model of eq: tabular_stationary replaced by tabular_window: 17.8% of the episodes "
        "are censored; auto's scores (lower is better): linear 0.0143, tabular_stationary "
        "0.0121, gbm n/a")


def test_the_frontier_table_names_each_worst_group():
    """A daily panel's frontier printed worst-group values (27.4, 26.2, 29.7; behaviour 30.4)
    without saying which group; the JSON named it (Hispanic). The table now does too."""
    from types import SimpleNamespace

    import pandas as pd
    from rich.console import Console

    from equicare.cli._fairness import frontier_table

    table = pd.DataFrame([{"lambda": 0.0, "value": 30.1, "value_lower": 28.0,
                           "value_upper": 32.1, "gap_pp": 0.1, "gap_lower": 0.0,
                           "gap_upper": 0.13, "worst_group_value": 27.359,
                           "worst_lower": 24.6, "worst_upper": 32.1, "worst_group": "Hispanic",
                           "pareto": True}])
    res = SimpleNamespace(learner="BC", weight="fair_lambda", estimator="dr",
                          action="action=coach call", n_eval_episodes=1034, table=table,
                          behavior={"value": 30.9, "gap_pp": 0.44, "worst_group_value": 30.447,
                                    "worst_group": "Black"})
    console = Console(width=300, record=True)
    console.print(frontier_table(res))
    text = console.export_text()
    assert "27.359 [24.600, 32.100] (Hispanic)" in text and "30.447 (Black)" in text


def test_the_note_under_the_audit_table_gives_each_group_its_own_reason():
    """A SPIBB policy on a care panel: 18-34's weights were all 0, the other three age bands'
    had an effective sample size of 1-3; the note read "no value for 18-34, 35-49, 50-64, 65+
    (...), every episode's importance weight is 0 ..." for all four, which the audit JSON's
    reasons contradict."""
    from equicare.cli._fairness import undefined_values_line

    zero = "every episode's importance weight is 0, so the self-normalised estimate is undefined"
    ess = "not published: the group's importance weights have an effective sample size below 11"
    line = undefined_values_line("m_spibb", {"18-34": zero, "35-49": ess, "50-64": ess,
                                             "65+": ess})
    assert line == ("m_spibb: no value for 18-34, 35-49, 50-64, 65+ (left out of the worst "
                    f"group and Gini); 18-34: {zero}; 35-49, 50-64, 65+: {ess}")
    assert undefined_values_line("p", {"a": ess, "b": ess}) == (
        f"p: no value for a, b (left out of the worst group and Gini), {ess}")
