"""Every result says how to reproduce it: the ``provenance`` block (cli/_utils.provenance).

For each command that writes a result: the block is there with every key, its inputs are the
SHA-256 of the files read, re-running its recorded command gives the same numbers, and an
input that changed gets another hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from equicare import __version__
from equicare.cli import app

runner = CliRunner()

#: Wall-clock timings: every key so named, at any depth (docs/contracts.md, "Comparing two
#: runs"); with the block's ``created`` and ``command`` (it holds --out) and a sidecar's output
#: paths, the only things that differ between two runs.
TIMING = re.compile(r"^(seconds|sps)$|_seconds?$")
KEYS = {"equicare", "git_revision", "command", "seed", "settings", "inputs", "created"}
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _numbers(doc: Any) -> Any:
    """The documented recipe: ``doc`` without the fields that differ between two runs."""
    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items() if not TIMING.search(k)}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    doc = copy.deepcopy(doc)
    for key in ("created", "command"):
        doc.get("provenance", {}).pop(key, None)
    for f in doc.get("outputs", []):
        f.pop("path", None)
    return walk(doc)


@pytest.fixture(autouse=True)
def _logs(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUICARE_LOG_DIR", str(tmp_path / "logs"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A Garnet panel with target policies, a care panel (mediators) and a BC model on it."""
    from equicare.cli._learn import train_model
    from equicare.sim._care_cli import synth_care
    from equicare.sim._garnet_cli import synth_garnet_cli

    d = tmp_path_factory.mktemp("prov")
    synth_garnet_cli(d / "g", episodes=300, states=20, actions=3, gamma=None, preset=None,
                     seed=3, force=False)
    synth_garnet_cli(d / "g2", episodes=200, states=10, actions=2, gamma=None, preset=None,
                     seed=4, force=False)
    synth_care(d / "care", n_members=200, n_weeks=12, seed=1)
    train_model(d / "care" / "panel.parquet", d / "care" / "manifest.toml", out=d / "m_bc",
                algo="bc", steps=5, seed=0)
    return d


#: The provenance of a policy file: ``<file>.provenance.json`` beside it.
SIDECAR = "+.provenance.json"
G = ["g/panel.parquet", "-m", "g/manifest.toml"]
C = ["care/panel.parquet", "-m", "care/manifest.toml"]
SOFT = "g/policies/soft_optimal.parquet"

#: name -> (arguments before --out, output, the file holding the block in the output).
COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "evaluate": (["evaluate", *G, "--policy", SOFT, "--bootstrap", "20", "--seed", "7",
                  "--no-progress"], "r.json", ""),
    "evaluate_streamed": (["evaluate", *G, "--policy", SOFT, "--bootstrap", "20",
                           "--chunk-rows", "1500", "--no-progress"], "r.json", ""),
    "audit": (["audit", *G, "--policy", f"soft={SOFT}", "--bootstrap", "20",
               "--permutations", "20", "--seed", "5"], "a.json", ""),
    "audit_streamed": (["audit", *G, "--policy", SOFT, "--bootstrap", "20", "--permutations",
                        "20", "--chunk-rows", "1500"], "a.json", ""),
    "plan": (["plan", "--domain", "synthetic", "--arms", "20", "--seeds", "2", "--horizon", "3",
              "--seed", "9"], "p.json", ""),
    "plan_from_panel": (["plan", "--from-panel", "g2/panel.parquet", "-m", "g2/manifest.toml",
                         "--seeds", "2", "--horizon", "3"], "p.json", ""),
    "capacity": (["capacity", "--domain", "synthetic", "--arms", "20", "--seeds", "2",
                  "--horizon", "3", "--budgets", "0.1,0.3", "--goal", "1"], "c.json", ""),
    "mediate": (["mediate", *C, "--policy", "m_bc", "--action", "modality=home_visit",
                 "--bootstrap", "10", "--estimators", "dm,mis"], "m.json", ""),
    "train": (["train", *C, "--algo", "bc", "--steps", "5", "--seed", "4", "--no-progress"],
              "model", "config.json"),
    "train_spibb": (["train", *G, "--algo", "spibb", "--no-progress"], "model", "config.json"),
    "synth_garnet": (["synth", "--sim", "garnet", "--states", "10", "--actions", "2",
                      "--episodes", "50", "--seed", "2"], "gsyn", "truth.json"),
    # no result file: the block is in a provenance JSON beside the outputs, with their SHA-256
    "synth_care": (["synth", "--members", "30", "--weeks", "5", "--seed", "2"], "csyn",
                   "provenance.json"),
    "synth_heparin": (["synth", "--sim", "heparin", "--members", "20", "--seed", "2"], "hsyn",
                      "provenance.json"),
    "predict": (["predict", "m_bc", *C], "p.parquet", SIDECAR),
    "predict_streamed": (["predict", "m_bc", *C, "--chunk-rows", "700", "--form", "long"],
                         "p.csv", SIDECAR),
    "frontier": (["frontier", *C, "--algo", "bc", "--lambdas", "0,1", "--steps", "5",
                  "--bootstrap", "10", "--executor", "serial", "--action",
                  "modality=home_visit", "--no-progress"], "f.json", ""),
    "online": (["online", "--steps", "168", "--seeds", "1", "--n-envs", "1",
                "--eval-episodes", "2", "--no-figures", "--no-progress"], "onl",
               "results.json"),
}


def _invoke(args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output


def _block(out: Path, inner: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path = (out.with_name(out.name + inner[1:]) if inner.startswith("+") else
            out / inner if inner else out)
    doc = json.loads(path.read_text())
    for f in doc.get("outputs", []):  # a sidecar's outputs: the files it describes
        assert f["sha256"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
        assert Path(f["path"]).parent == path.parent
        f["path"] = Path(f["path"]).name.removeprefix(out.name)  # --out differs between runs
    return doc["provenance"], doc


def _rerun(command: list[str], new_out: str) -> None:
    """Run a recorded command again, only its output (the value after --out) replaced."""
    assert command[0] == "equicare"
    args = list(command[1:])
    args[args.index("--out") + 1] = new_out
    _invoke(args)


def _check(work: Path, monkeypatch: pytest.MonkeyPatch, spec: tuple[list[str], str, str],
           name: str) -> None:
    args, out, inner = spec
    out = f"{name}_{out}"
    monkeypatch.chdir(work)
    for p in ("1_" + out, "2_" + out, "3_" + out):
        assert not Path(p).exists()
    _invoke([*args, "--out", "1_" + out])
    prov, doc = _block(work / ("1_" + out), inner)
    # the block: every key, the typed command, the seed, absolute input paths with their hash
    assert set(prov) == KEYS
    assert prov["equicare"] == __version__
    assert prov["command"] == ["equicare", *args, "--out", "1_" + out]
    tabular = "spibb" in args  # SPIBB takes no seed: none is recorded
    assert prov["seed"] == (None if tabular else prov["settings"].get("seed"))
    assert not set(prov["settings"]) & {"out", "force", "json_out", "threads", "progress"}
    for f in prov["inputs"]:
        p = Path(f["path"])
        assert p.is_absolute() and p.exists()
        if p.is_file():
            assert f["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
            assert f["bytes"] == p.stat().st_size
    for k, v in prov["settings"].items():  # every path the user typed is absolute
        # (synth's --sim care names a simulator, not the folder care/ of this test)
        if isinstance(v, str) and Path(work / v).exists() and v and k != "sim":
            assert Path(v).is_absolute(), (k, v)
    # re-running the recorded command gives the same numbers (and the same model weights)
    _rerun(prov["command"], "2_" + out)
    prov2, doc2 = _block(work / ("2_" + out), inner)
    assert _numbers(doc2) == _numbers(doc)
    assert [f["sha256"] for f in prov2["inputs"]] == [f["sha256"] for f in prov["inputs"]]
    weights = work / ("1_" + out) / "model.safetensors"
    if weights.is_file() and inner == "config.json":
        assert weights.read_bytes() == (work / ("2_" + out) / "model.safetensors").read_bytes()
    # an input that changed has another hash (a comment in the manifest: same numbers)
    manifests = [f for f in prov["inputs"] if f["role"] == "manifest"]
    if not manifests:
        assert prov["inputs"] == []  # a bundled domain or a simulator: the seed is all
        return
    man = Path(manifests[0]["path"])
    before = man.read_bytes()
    try:
        man.write_bytes(before + b"# edited\n")
        _rerun(prov["command"], "3_" + out)
        prov3, _ = _block(work / ("3_" + out), inner)
    finally:
        man.write_bytes(before)
    by_role = {f["role"]: f["sha256"] for f in prov3["inputs"]}
    assert by_role["manifest"] != manifests[0]["sha256"]
    assert by_role["manifest"] == hashlib.sha256(before + b"# edited\n").hexdigest()
    assert by_role["data"] == next(f["sha256"] for f in prov["inputs"] if f["role"] == "data")


@pytest.mark.filterwarnings("ignore::equicare.exceptions.DataWarning")  # thin plan cells
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_result_records_how_to_reproduce_it(work, monkeypatch, name):
    _check(work, monkeypatch, COMMANDS[name], name)


@pytest.mark.slow
def test_a_policy_card_records_how_to_reproduce_it(work, monkeypatch):
    """The card JSON and the rules' model folder carry the same block (about a minute)."""
    _check(work, monkeypatch, (["explain", "m_bc", *C, "--depth", "2", "--bootstrap", "10"],
                               "card", "policy_card.json"), "explain")
    card, _ = _block(work / "1_explain_card", "policy_card.json")
    model, _ = _block(work / "1_explain_card", "model/config.json")
    assert model == card


def test_the_recorded_inputs_are_the_files_each_command_read(work, monkeypatch):
    monkeypatch.chdir(work)
    _invoke(["audit", *G, "--policy", f"soft={SOFT}", "--policy", "g/policies/tilted.parquet",
             "--bootstrap", "0", "--permutations", "0", "--out", "roles.json"])
    prov, _ = _block(work / "roles.json", "")
    assert [(f["role"], Path(f["path"]).relative_to(work).as_posix())
            for f in prov["inputs"]] == [
        ("data", "g/panel.parquet"), ("manifest", "g/manifest.toml"),
        ("policy", SOFT), ("policy", "g/policies/tilted.parquet")]
    assert prov["settings"]["policy"] == [f"soft={SOFT}", "g/policies/tilted.parquet"]
    # a model folder as the policy: hashed over its files, so a retrained model differs
    _invoke(["mediate", *C, "--policy", "m_bc", "--action", "modality=home_visit",
             "--bootstrap", "0", "--estimators", "dm", "--out", "med.json"])
    prov, _ = _block(work / "med.json", "")
    pol = next(f for f in prov["inputs"] if f["role"] == "policy")
    assert pol["path"] == str(work / "m_bc")
    assert pol["bytes"] == sum(f.stat().st_size for f in (work / "m_bc").iterdir())


def test_no_block_and_no_hashing_without_an_output_file(work, monkeypatch):
    """--json alone writes nothing: no input is read for a fingerprint."""
    import equicare._provenance as prov_mod

    def boom(path: Any) -> dict[str, Any]:
        raise AssertionError(f"hashed {path}")

    monkeypatch.setattr(prov_mod, "file_fingerprint", boom)
    monkeypatch.chdir(work)
    res = runner.invoke(app, ["evaluate", *G, "--policy", SOFT, "--bootstrap", "0",
                              "--estimators", "wis", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert "provenance" not in json.loads(res.stdout)


@pytest.mark.skipif(shutil.which("jq") is None, reason="the recipe is a jq program")
def test_the_documented_jq_recipe_leaves_only_the_numbers(work, monkeypatch, tmp_path):
    """docs/contracts.md's jq program: two same-seed runs equal, another seed not; and it
    removes what this module's comparisons remove."""
    program = re.search(r"same\(\) \{ jq -S '(.*?)' \"\$1\"; \}", CONTRACTS.read_text(),
                        re.DOTALL)
    assert program is not None
    monkeypatch.chdir(work)
    docs = []
    for i, seed in enumerate(("7", "7", "8")):
        out = tmp_path / f"r{i}.json"
        _invoke(["evaluate", *G, "--policy", SOFT, "--bootstrap", "20", "--seed", seed,
                 "--no-progress", "--out", str(out)])
        jq = subprocess.run(["jq", "-S", program.group(1), str(out)], capture_output=True,
                            text=True, check=True)
        docs.append(json.loads(jq.stdout))
        assert docs[-1] == _numbers(json.loads(out.read_text()))
    assert docs[0] == docs[1] and docs[0] != docs[2]
    assert docs[0]["provenance"]["inputs"] and "q_model" in docs[0]
