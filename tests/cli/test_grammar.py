"""One grammar over every command: help with an example, one spelling per concept, the same
meaning of --out/--force/--json everywhere, choices listed, --version."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

import equicare
from equicare.cli import app
from equicare.cli._docs import command_paths
from equicare.cli._utils import DEPRECATED_OPTIONS, REMOVED_COMMANDS

runner = CliRunner()
COMMANDS = command_paths()
IDS = [" ".join(p) for p, _ in COMMANDS]

#: The old spellings of each concept: none may be a visible option of any command.
OLD_SPELLINGS = {"--n-boot", "--n-steps", "--learner", "--estimator", "--target", "--n-patients",
                 "--policies", "--quiet", "--data"}
#: Commands whose job is to write: --out is required.
WRITERS = {"synth", "train", "predict", "online"}
#: Commands that print a result they can also write: --out optional.
OPTIONAL_OUT = {"evaluate", "audit", "frontier", "plan", "capacity", "mediate", "report"}
#: Long computations: progress bars on a terminal, one line per stage otherwise.
LONG = {"train", "evaluate", "frontier", "run", "sweep", "audit", "explain", "mediate", "validate",
        "predict"}


def _options(cmd) -> dict[str, object]:
    out = {}
    for p in cmd.params:
        for name in [*getattr(p, "opts", []), *getattr(p, "secondary_opts", [])]:
            out[name] = p
    return out


def test_every_command_is_covered():
    assert set(IDS) >= {"synth", "validate", "train", "predict", "evaluate", "audit", "frontier",
                        "plan", "capacity", "mediate", "online", "run", "sweep", "report",
                        "runs list", "runs show", "runs compare"}


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_help_has_example_and_no_undefined_contract_names(path, cmd):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example:" in res.output
    assert not re.search(r"Contract[- ]\d", res.output)


@pytest.mark.parametrize(("path", "cmd"), COMMANDS, ids=IDS)
def test_concept_options_have_one_spelling_and_default(path, cmd):
    opts = _options(cmd)
    assert not OLD_SPELLINGS & set(opts), sorted(OLD_SPELLINGS & set(opts))
    assert "--json" in opts and "--threads" in opts
    # run --seed overrides the config's seed; online --seed is the first of --seeds seeds,
    # 0 so that the documented runs (seeds 0..n-1) stay the default
    if "--seed" in opts and path not in (["run"], ["online"]):
        assert opts["--seed"].default == 42
    if path == ["online"]:
        assert opts["--seed"].default == 0 and opts["--seeds"].default == 5
    if "--out" in opts or "--figure" in opts:
        assert "--force" in opts
        assert "--no-force" not in opts  # a plain flag, the same everywhere
    name = path[0]
    if name in WRITERS:
        assert opts["--out"].required
    if name in OPTIONAL_OUT:
        assert not opts["--out"].required
    if name in LONG:
        assert "--progress" in opts and "--no-progress" in opts
    for concept in ("--bootstrap", "--steps", "--algo", "--members", "--estimators"):
        if concept in opts:  # where the concept exists it has this spelling only
            assert concept in getattr(opts[concept], "opts", [])


def test_a_panel_argument_says_a_folder_of_parquet_files_works():
    """Every command reads a folder of Parquet files, but validate, evaluate, explain, train,
    predict, audit, frontier and mediate said "Panel file: .csv, .parquet or a DuckDB file" (in
    four wordings): a user with a 60,000-user panel in 8 Parquet files had to find docs/scale.md
    to learn the folder works."""
    helps = {" ".join(path): p.help for path, cmd in COMMANDS for p in cmd.params
             if p.name == "data" and p.param_type_name == "argument"}
    assert len(helps) >= 8, helps
    assert {h for h in helps.values() if "folder of Parquet files" not in (h or "")} == set()
    assert len(set(helps.values())) == 1, helps


@pytest.mark.parametrize(("command", "choices"), [
    (["synth"], "care|heparin"),
    (["train"], "bc|awr|cql|spibb|pvi|omg"),
    (["train"], "mlp|lstm"),
    (["frontier"], "bc|awr|cql"),
    (["evaluate"], "logistic|lgbm"),
    (["audit"], "basic|percentile"),
    (["audit"], "step|episode"),
    (["plan"], "synthetic|maternal|diabetes"),
    (["mediate"], "auto|onehot|spline|rff|poly"),
    (["online"], "ppo|grpo"),
    (["run"], "care"),
])
def test_choices_are_listed_in_help(command, choices):
    res = runner.invoke(app, [*command, "--help"])
    assert choices in res.output


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"equicare {equicare.__version__}"


@pytest.mark.parametrize(("command", "old", "new"), [
    (cmd, old, new) for cmd, table in DEPRECATED_OPTIONS.items() for old, new in table.items()])
def test_old_spellings_still_parse_with_one_warning(command, old, new):
    value = {"--quiet": [], "--policies": ["opt"], "--target": ["x.csv"], "--learner": ["bc"],
             "--estimator": ["dr"]}.get(old, ["5"])
    if command == "capacity" and old == "--target":
        value = ["0.5"]
    res = runner.invoke(app, [command, old, *value, "--help"])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.output.splitlines() if "deprecated" in line]
    assert warning == [f"warning: {old} is deprecated and will be removed in the next release; "
                       f"use {new}."]


@pytest.mark.parametrize("old", sorted(REMOVED_COMMANDS))
def test_removed_commands_name_their_replacement(old):
    res = runner.invoke(app, [old, "--out", "x"])
    assert res.exit_code == 2
    assert res.output.startswith(f"error: 'equicare {old}' was removed; use equicare ")
