"""Every command that takes a policy serves it block by block (issue 17, item 6).

The per-row audit quantities are computed in blocks of whole episodes, so a policy file is asked
about subsets of the panel it was written for. These tests force tiny blocks (a few episodes
each) so that a panel of a few hundred members takes the code path of a 2,000-member panel.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import equicare.fairness._rows as rows_mod
import equicare.utils as utils_mod
from equicare.cli import app
from equicare.exceptions import DataWarning
from equicare.policy import FilePolicy, write_policy_file
from equicare.sim.care import CareManagementSim

runner = CliRunner()


@pytest.fixture(autouse=True)
def tiny_blocks(monkeypatch):
    """About two episodes of the care panel (300 actions) per block."""
    monkeypatch.setattr(rows_mod, "MAX_BLOCK", 300 * 20)
    monkeypatch.setattr(utils_mod, "ROW_BLOCK_ELEMENTS", 300 * 20)


@pytest.fixture(scope="module")
def care(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("care_blocks")
    sim = CareManagementSim()
    panel = sim.generate(n_members=150, n_weeks=8, random_state=3)
    panel.write(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        ds = panel.dataset()
    probs = sim.behavior_policy(equitable=True).action_probs(ds)
    write_policy_file(ds, probs, root / "policy.parquet")
    write_policy_file(ds, probs, root / "policy_long.csv", form="long")
    return {"data": root / "panel.parquet", "manifest": root / "manifest.toml",
            "policy": root / "policy.parquet", "long": root / "policy_long.csv", "root": root}


def test_audit_policy_file_in_tiny_blocks(care, tmp_path) -> None:
    # the README flow that failed with "... rows name episodes not in the dataset"
    for pol in (care["policy"], care["long"]):
        out = tmp_path / f"audit_{pol.suffix}.json"
        r = runner.invoke(app, ["audit", str(care["data"]), "--manifest", str(care["manifest"]),
                                "--policy", f"eq={pol}", "--action", "modality=home_visit",
                                "--n-boot", "10", "--permutations", "0", "--out", str(out)])
        assert r.exit_code == 0, r.output
        d = json.loads(out.read_text())
        assert list(d["policies"]) == ["behavior", "eq"]


def test_audit_block_results_equal_one_block(care, monkeypatch) -> None:
    from equicare.data import load_dataset
    from equicare.fairness._rows import row_pass

    ds = load_dataset(care["data"], care["manifest"], emit_warnings=False)
    cols = np.eye(ds.n_actions)[:, :3]
    pol = FilePolicy(care["policy"])
    small = row_pass(ds, pol, cols)
    monkeypatch.setattr(rows_mod, "MAX_BLOCK", 10**9)
    whole = row_pass(ds, pol, cols)
    np.testing.assert_array_equal(small[0], whole[0])
    np.testing.assert_array_equal(small[1], whole[1])


def test_evaluate_policy_file_in_tiny_blocks(care, tmp_path) -> None:
    out = tmp_path / "result.json"
    r = runner.invoke(app, ["evaluate", str(care["data"]), "--manifest", str(care["manifest"]),
                            "--policy", str(care["policy"]), "--estimators", "wis,dr",
                            "--q-model", "linear", "--bootstrap", "10", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert set(json.loads(out.read_text())["estimates"]) == {"wis", "dr"}


def test_frontier_in_tiny_blocks(care, tmp_path) -> None:
    out = tmp_path / "frontier.json"
    r = runner.invoke(app, ["frontier", str(care["data"]), "--manifest", str(care["manifest"]),
                            "--learner", "bc", "--lambdas", "0", "--n-steps", "5", "--n-boot",
                            "5", "--estimator", "wis", "--executor", "serial", "--out",
                            str(out)])
    assert r.exit_code == 0, r.output
    assert len(json.loads(out.read_text())["points"]) == 1


def test_mediate_policy_file_in_tiny_blocks(tmp_path) -> None:
    from equicare.sim.mediation import toy1, toy_target

    s = toy1().sample(60, 10, random_state=0)
    df = s.to_frame()
    df.to_csv(tmp_path / "panel.csv", index=False)
    p = toy_target()[s.state_index]
    pd.DataFrame({"episode": df.episode, "time": df.time, "p_0": p[:, 0], "p_1": p[:, 1]}
                 ).to_csv(tmp_path / "target.csv", index=False)
    (tmp_path / "m.toml").write_text(
        '[dataset]\nepisode = "episode"\ntime = "time"\nstates = ["s0"]\nmediators = ["m0"]\n\n'
        '[actions]\naction = { levels = 2 }\n\n[reward]\ncolumn = "reward"\n')
    out = tmp_path / "med.json"
    r = runner.invoke(app, ["mediate", str(tmp_path / "panel.csv"), "--manifest",
                            str(tmp_path / "m.toml"), "--target", str(tmp_path / "target.csv"),
                            "--bootstrap", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "mr" in json.loads(out.read_text())["estimators"]


def test_file_policy_serves_any_subset_but_not_missing_rows(care) -> None:
    from equicare.data import load_dataset
    from equicare.exceptions import PolicyError

    ds = load_dataset(care["data"], care["manifest"], emit_warnings=False)
    for path in (care["policy"], care["long"]):
        pol = FilePolicy(path)
        full = pol.action_probs(ds)
        sub_ep = np.arange(ds.n_episodes)[::7][::-1]
        sub = ds.subset(sub_ep)
        rows = np.concatenate([np.arange(ds.episode_offsets[e], ds.episode_offsets[e + 1])
                               for e in sub_ep])
        np.testing.assert_array_equal(pol.action_probs(sub), full[rows])
    # a file that lacks rows of the subset still fails, naming the first missing row
    df = pd.read_parquet(care["policy"])
    short = FilePolicy(frame=df.iloc[1:])
    first = ds.episode_ids[0].item()
    with pytest.raises(PolicyError, match=r"1 dataset rows have no probabilities \(first: "
                       rf"member_id={first!r}, week=0\)"):
        short.action_probs(ds.subset(np.arange(3)))


@pytest.mark.slow  # the whole job (about 45 s on the shared 2-core machine)
@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_pipeline_run_in_tiny_blocks_and_its_model_folder(tmp_path) -> None:
    from equicare.pipeline import RunStore

    from ..pipeline.test_run import tiny_config

    cfg = tiny_config(tmp_path)
    r = runner.invoke(app, ["run", str(cfg), "--quiet"])
    assert r.exit_code == 0, r.output
    store = RunStore(tmp_path / "runs")
    run_dir = store.run_dir(store.list_runs()["run_id"].iloc[0])
    audit = json.loads((run_dir / "audit.json").read_text())
    assert "behavior" in audit["policies"] and len(audit["policies"]) == 2
    # the run's model folder follows the contract and is audited block by block too
    cfg_json = json.loads((run_dir / "model" / "config.json").read_text())
    assert cfg_json["format"] == "equicare-model" and cfg_json["learner"] == "awr"
