from __future__ import annotations

import json
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
    r2 = _run(app, ["frontier", str(panel["data"]), "--manifest", str(panel["manifest"]),
                    "--lambdas", "0,x"])
    assert r2.exit_code == 2 and "--lambdas must be comma-separated numbers" in r2.output


def test_a_missing_interval_prints_nothing():
    """A null Gini has a null interval: the table shows '-', not '- [-, -]'."""
    from equicare.cli._fairness import _ci, _fmt

    nan = float("nan")
    assert f"{_fmt(nan, 1, 3)} {_ci((nan, nan), 1, 3)}".strip() == "-"
    assert _ci((0.01, 0.03), 1, 3) == "[0.010, 0.030]"
