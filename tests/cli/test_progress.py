"""--progress/--no-progress on audit, explain, mediate, validate and predict.

Without a terminal (CliRunner) progress is one ``[command] ...`` line per stage on stderr, and
bars print a line when they start and end; stdout (tables, --json) is the same either way.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from equicare.cli import app


@pytest.fixture(scope="module")
def care(tmp_path_factory) -> dict[str, Path]:
    from equicare.exceptions import DataWarning
    from equicare.policy import write_policy_file
    from equicare.sim.care import CareManagementSim

    root = tmp_path_factory.mktemp("care")
    sim = CareManagementSim()
    p = sim.generate(n_members=300, n_weeks=10, random_state=5)
    p.write(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = p.dataset()
    write_policy_file(ds, sim.behavior_policy(equitable=True).action_probs(ds),
                      root / "equitable.parquet")
    res = CliRunner().invoke(app, ["train", str(root / "panel.parquet"), "-m",
                                   str(root / "manifest.toml"), "--algo", "bc", "--steps", "5",
                                   "--out", str(root / "bc"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return {"data": root / "panel.parquet", "manifest": root / "manifest.toml",
            "policy": root / "equitable.parquet", "model": root / "bc", "root": root}


def _cases(c: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    """Each case: the command's arguments and stage lines that --progress must print."""
    d, m, p = str(c["data"]), str(c["manifest"]), str(c["policy"])
    root = c["root"]
    return {
        "audit": (["audit", d, "-m", m, "--policy", f"eq={p}", "--bootstrap", "20",
                   "--permutations", "20"],
                  ["[audit] 300 episodes", "[audit] allocation by group: bootstrap 20 replicates, "
                   "20 permutations", "[audit] eq: wis group values, bootstrap 20 replicates",
                   "audit: wis group values: started (0/1)"]),
        "audit_json": (["audit", d, "-m", m, "--policy", f"eq={p}", "--bootstrap", "20",
                        "--permutations", "20", "--json"], ["[audit] 300 episodes"]),
        "audit_stream": (["audit", d, "-m", m, "--policy", f"eq={p}", "--bootstrap", "20",
                          "--permutations", "20", "--chunk-rows", "1000", "--estimators", "dr"],
                         ["[audit] eq: auto Q-model for dr from chunk sums",
                          "[audit] support check of the policies over the audited episodes",
                          "[audit] allocation and dr values: one pass over the panel, Poisson "
                          "bootstrap 20 replicates", "audit: rows: started (0/"]),
        "explain": (["explain", p, d, "-m", m, "--out", str(root / "card"), "--force",
                     "--bootstrap", "10"],
                    ["[explain] loading ", "[explain] source: wis, dr, wdr",
                     "[explain] depth 3: distil, then value, bootstrap 10 replicates",
                     "explain: depths: started (0/6)", "[explain] fairness audit of source and "
                     "rules", "[explain] allocation by group: bootstrap 10 replicates",
                     "[explain] rules: dr group values, bootstrap 10 replicates",
                     "explain: dr group values: done (2/2)",
                     "explain: practice, deployed rules: done (",
                     "[explain] writing the card to "]),
        "mediate": (["mediate", d, "-m", m, "--policy", p, "--action", "modality=home_visit",
                     "--control", "0", "--bootstrap", "20", "--json"],
                    ["[mediate] loading ", "[mediate] fold 1/2: reward and mediator models",
                     "mediate: fold 1/2: started (0/", "mediate: fold 2/2: done (",
                     "[mediate] intervals: 20 cluster-bootstrap replicates"]),
        "validate": (["validate", d, "-m", m], ["[validate] reading and checking "]),
        "validate_stream": (["validate", d, "-m", m, "--chunk-rows", "1000", "--json"],
                            ["[validate] first pass over ", "validate: rows: started (0/",
                             "validate: rows: done ("]),
        "predict": (["predict", str(c["model"]), d, "-m", m, "--out",
                     str(root / "p.parquet"), "--force"],
                    ["[predict] loading ", "the policy's probabilities, written to "]),
        "predict_stream": (["predict", str(c["model"]), d, "-m", m, "--out",
                            str(root / "p.parquet"), "--force", "--chunk-rows", "1000",
                            "--json"], ["[predict] first pass over ", "predict: rows: started"]),
    }


CASES = ["audit", "audit_json", "audit_stream", "explain", "mediate", "validate",
         "validate_stream", "predict", "predict_stream"]


def _progress_lines(err: str, command: str) -> list[str]:
    return [ln for ln in err.splitlines()
            if ln.startswith(f"[{command}]") or ln.startswith(f"{command}: ")]


@pytest.mark.parametrize("case", CASES)
def test_stage_lines_on_stderr_only_with_progress(care, case) -> None:
    args, expected = _cases(care)[case]
    command = args[0]
    off = CliRunner().invoke(app, [*args, "--no-progress"])
    on = CliRunner().invoke(app, [*args, "--progress"])
    assert off.exit_code == 0, off.output
    assert on.exit_code == 0, on.output
    assert _progress_lines(off.stderr, command) == []
    said = "\n".join(_progress_lines(on.stderr, command))
    for text in expected:
        assert text in said, (text, on.stderr)
    if "--json" in args:  # parseable, and the same document
        assert json.loads(on.stdout) == json.loads(off.stdout)
    else:
        assert on.stdout == off.stdout
    default = CliRunner().invoke(app, args)  # on by default, as evaluate
    assert _progress_lines(default.stderr, command)


def test_library_functions_are_silent_unless_asked(care, capsys) -> None:
    from equicare.cli._causal import mediate_dataset
    from equicare.data import load_dataset
    from equicare.explain import ExplainConfig, explain_policy
    from equicare.fairness import audit
    from equicare.policy import load_policy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = load_dataset(care["data"], care["manifest"])
        pol = load_policy(care["policy"])
        calls = {
            "audit": lambda flag: audit(ds, {"eq": pol}, n_boot=10, n_permutations=10,
                                        random_state=0, progress=flag).to_dict(),
            "mediate": lambda flag: mediate_dataset(
                ds, care["policy"], 0, action="modality=home_visit", n_bootstrap=10,
                random_state=0, progress=flag).to_json(),
            "explain": lambda flag: explain_policy(
                ds, pol, ExplainConfig(depth=2, depths=(1, 2), bootstrap=5,
                                       estimators=("wis",)),
                random_state=0, progress=flag).to_dict()["rules"],
        }
        for name, call in calls.items():
            quiet = call(False)
            assert capsys.readouterr().err == "", name
            loud = call(True)
            err = capsys.readouterr().err
            assert err.startswith(f"[{name}] "), (name, err)
            assert loud == quiet, name
