"""The run's held-out tables cannot give back a small training cell by difference.

`equicare run` publishes every group's episodes in the whole panel (``data_summary.json``) and
the held-out half's group tables (``result.json``, ``audit.json``); a level's training
episodes are their difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli import app
from equicare.data import load_dataset

runner = CliRunner()
MANIFEST = ('[dataset]\nepisode = "member"\ntime = "week"\nstates = ["risk"]\n'
            'groups = ["race", "site"]\ngamma = 0.9\n\n[actions.action]\nlevels = 3\n\n'
            '[reward]\nreward = { column = "reward", weight = 1.0 }\n')


def _panel(tmp_path: Path, site: np.ndarray | None = None) -> tuple[Path, Path]:
    """240 members of 4 weeks; ``race`` (r0/r1) stratifies the split, ``site`` does not."""
    rng = np.random.default_rng(5)
    n, weeks = 240, 4
    race = rng.choice(["r0", "r1"], size=n)
    site = np.full(n, "s_big") if site is None else site
    rows = n * weeks
    frame = pd.DataFrame({
        "member": np.repeat(np.arange(n), weeks), "week": np.tile(np.arange(weeks), n),
        "risk": rng.random(rows), "action": rng.integers(0, 3, size=rows),
        "reward": rng.normal(size=rows), "race": np.repeat(race, weeks),
        "site": np.repeat(site, weeks)})
    frame.to_csv(tmp_path / "panel.csv", index=False)
    (tmp_path / "manifest.toml").write_text(MANIFEST)
    return tmp_path / "panel.csv", tmp_path / "manifest.toml"


def _derivable_training_cells(summary: dict, tables: dict[str, dict[str, int | None]],
                              n_held_out: dict[str, int]) -> dict[str, int]:
    """Training cells an outsider gets: whole-panel count minus held-out count.

    A held-out count is read from its table, or, when it is the only suppressed level of the
    table, as the held-out total minus the published levels.
    """
    out = {}
    for attr, cells in tables.items():
        whole = summary["groups"][attr]
        held = dict(cells)
        hidden = [lv for lv, v in held.items() if v is None]
        if len(hidden) == 1:
            held[hidden[0]] = n_held_out[attr] - sum(v for v in held.values() if v is not None)
        for lv, v in held.items():
            if v is not None and whole.get(lv) is not None:
                out[f"{attr}={lv}"] = int(whole[lv]) - int(v)
    return out


def _leak_config(tmp_path: Path, extra: str = "") -> tuple[Path, np.ndarray]:
    """The panel with site s_rare of 18 members, 12 of them in the run's held-out half (seed
    0, holdout 0.5, stratified by race), and a fast run config; returns the config and which
    of the panel's episodes are held out."""
    panel, manifest = _panel(tmp_path)
    ds = load_dataset(panel, manifest, emit_warnings=False)
    train, test = ds.split(0.5, random_state=0, stratify="race")  # the run's split (seed 0)
    held = np.isin(ds.episode_ids, test.episode_ids)
    site = np.array(["s_a", "s_b", "s_c"])[np.arange(ds.n_episodes) % 3].astype(object)
    site[np.flatnonzero(held)[:12]] = "s_rare"
    site[np.flatnonzero(~held)[:6]] = "s_rare"
    order = np.argsort(ds.episode_ids)  # the panel's members are 0..239
    _panel(tmp_path, site=np.asarray(site[order], dtype=str))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'name = "split"\nseed = 0\n[data]\npath = "{panel}"\n'
                   f'manifest = "{manifest}"\n[behavior]\nmodel = "logistic"\nfolds = 1\n'
                   '[learner]\nalgo = "bc"\nn_steps = 10\n'
                   '[ope]\nestimators = ["wis"]\nbootstrap = 0\nsensitivity = false\n'
                   'holdout = 0.5\n[audit]\ngroup = "site"\npermutations = 0\n'
                   f'[output]\nstore = "{tmp_path / "runs"}"\n' + extra)
    return cfg, held


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_a_group_with_12_held_out_and_6_training_members_is_suppressed(tmp_path):
    """Site s_rare: 18 members, 12 held out and 6 in training. Before the rule, the run
    published 18 (data table) and 12 (evaluate's and the audit's site tables): 6 training
    members by difference, with a whole-panel `evaluate` their mean return too."""
    cfg, held = _leak_config(tmp_path)
    res = runner.invoke(app, ["run", str(cfg), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    d = tmp_path / "runs" / json.loads(res.stdout)["run_id"]
    summary = json.loads((d / "data_summary.json").read_text())
    assert summary["groups"]["site"]["s_rare"] == 18  # the whole panel's count is published
    result = json.loads((d / "result.json").read_text())
    audit = json.loads((d / "audit.json").read_text())
    n_test = int(held.sum())
    assert result["n_episodes"] == n_test
    tables = {a: {lv: g["n_episodes"] for lv, g in levels.items()}
              for a, levels in result["groups"].items()}
    derived = _derivable_training_cells(summary, tables, dict.fromkeys(tables, n_test))
    assert {k: v for k, v in derived.items() if 0 < v < 11} == {}, derived
    assert result["groups"]["site"]["s_rare"] == {"suppressed": True, "n_episodes": None}
    # the audit of the held-out half by site: s_rare and its complement suppressed
    rate = audit["policies"]["behavior"]["rate"]
    hidden = sorted(g for g, c in rate.items() if c.get("suppressed"))
    assert "s_rare" in hidden and len(hidden) == 2, rate  # alone, 12 = total - the others
    audit_table = {"site": {g: c.get("n_episodes") for g, c in rate.items()}}
    derived = _derivable_training_cells(summary, audit_table, {"site": n_test})
    assert {k: v for k, v in derived.items() if 0 < v < 11} == {}, derived


def _published_with_counts(obj: object, level: str) -> list[object]:
    """Entries of a result JSON for ``level`` that are not marked suppressed."""
    found: list[object] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == level and not (isinstance(v, dict) and v.get("suppressed")):
                found.append(v)
            found += _published_with_counts(v, level)
        if level in str(obj.get("group", "")).split(" x ") and not obj.get("suppressed"):
            found.append(obj)
    elif isinstance(obj, list):
        for v in obj:
            found += _published_with_counts(v, level)
    return found


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_frontier_and_the_policy_card_suppress_the_held_out_group_too(tmp_path):
    """The frontier's audits and the policy card (its audit, its subgroup table, site and
    site x race) are tables of the same held-out half: s_rare (6 training members) reads
    suppressed there too."""
    from equicare.pipeline._config import load_run_config
    from equicare.pipeline._run import (
        _stage_data,
        _stage_explain,
        _stage_frontier,
        _stage_train,
    )

    path, _ = _leak_config(tmp_path, '[frontier]\nlambdas = [0.0]\n'
                                     '[explain]\nenabled = true\nbootstrap = 0\ndepth = 2\n')
    cfg = load_run_config(path)
    state: dict = {"progress": False}
    out = tmp_path / "out"
    out.mkdir()
    for stage in (_stage_data, _stage_train, _stage_frontier, _stage_explain):
        stage(cfg, state, out, [], 0)
    assert state["withheld"]["site"] == {"s_rare", "s_a"}
    for res in state["frontier"].audits:
        assert set(res.suppressed) == {"s_rare", "s_a"}
    card = json.loads((out / "card" / "policy_card.json").read_text())
    assert _published_with_counts(card, "s_rare") == []
    fair = card["evidence"]["fairness"]["policies"]["rules"]["value_by_group"]
    assert fair["s_rare"] == fair["s_a"] == {"suppressed": True}
    assert any(r.get("attribute") == "(suppressed)" for r in card["disagreement"])


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_the_held_out_half_streamed_hides_what_the_run_hides(tmp_path):
    """The run's held-out half read in chunks (``evaluate_stream``, ``audit_stream``) with the
    run's withheld levels publishes no cell that the in-memory run's ``result.json`` and
    ``audit.json`` hide. Streamed evaluations had no ``suppress``: they published s_rare (12
    held-out members, 6 in training) with its count, mean return and allocation rate."""
    from equicare.data import scan_panel
    from equicare.fairness import FairnessAudit, audit_stream
    from equicare.fairness._groups import withheld_cells
    from equicare.ope import evaluate_stream
    from equicare.pipeline._config import load_run_config
    from equicare.pipeline._run import _stage_data
    from equicare.policy import load_policy

    path, _ = _leak_config(tmp_path)
    res = runner.invoke(app, ["run", str(path), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    d = tmp_path / "runs" / json.loads(res.stdout)["run_id"]
    state: dict = {"progress": False}
    _stage_data(load_run_config(path), state, tmp_path, [], 0)  # the run's split and withheld
    test, withheld = state["test"], state["withheld"]
    frame = pd.read_csv(tmp_path / "panel.csv")
    half = tmp_path / "held_out.parquet"
    frame[frame["member"].isin(test.episode_ids)].to_parquet(half, row_group_size=40)
    man, model = tmp_path / "manifest.toml", load_policy(d / "model")
    ev = evaluate_stream(half, model, manifest=man, estimators=["wis"], n_boot=0, chunk_rows=100,
                         suppress=withheld).to_dict()
    cells = withheld_cells(scan_panel(half, man).episode_groups, ["site"], withheld)
    au = audit_stream(half, {"bc": model}, manifest=man, chunk_rows=100, random_state=0,
                      config=FairnessAudit(group="site", action=state["audit_action"], n_boot=0,
                                           n_permutations=0, estimator="wis"),
                      suppress=cells).to_dict()
    ran = json.loads((d / "result.json").read_text())
    ran_audit = json.loads((d / "audit.json").read_text())
    for attr, levels in ran["groups"].items():
        assert {lv for lv, g in ev["groups"][attr].items() if g.get("suppressed")} == {
            lv for lv, g in levels.items() if g.get("suppressed")}, attr
    assert ev["groups"]["site"]["s_rare"] == {"suppressed": True, "n_episodes": None}
    for pol in ("behavior", "bc"):
        for table in ("rate", "value_by_group"):
            shown = {g for g, c in au["policies"][pol][table].items() if not c.get("suppressed")}
            assert shown == {g for g, c in ran_audit["policies"][pol][table].items()
                             if not c.get("suppressed")} == {"s_b", "s_c"}, (pol, table)
    assert _published_with_counts(ev, "s_rare") == _published_with_counts(au, "s_rare") == []


@pytest.mark.filterwarnings("ignore::equicare.exceptions.EquicareWarning")
def test_an_audit_grouping_left_with_one_cell_is_refused_before_training(tmp_path):
    """Site s_rare (12 held out, 6 in training) is withheld from the held-out tables, and
    with it the only other site: the audit stage found 'only 1 group can be published'
    after the learner had trained (a diabetes run's race x sex: 57 s), and kept a failed
    partial folder. The same cells are now decided at the data stage: exit 2, no run."""
    cfg, held = _leak_config(tmp_path)
    panel = tmp_path / "panel.csv"
    frame = pd.read_csv(panel)
    frame["site"] = np.where(frame["site"] == "s_rare", "s_rare", "s_big")
    frame.to_csv(panel, index=False)
    res = runner.invoke(app, ["run", str(cfg), "--no-progress"])
    assert res.exit_code == 2, res.output
    said = " ".join(res.output.split())
    assert "'site'" in said and "can be published" in said, said
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.is_dir()], list(
        runs.iterdir())
