"""Streamed commands (--chunk-rows, --executor): the same answers as in memory, bounded memory."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from equicare.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A care panel written as a folder of Parquet parts, plus a BC model trained on it."""
    d = tmp_path_factory.mktemp("stream_cli")
    res = runner.invoke(app, ["synth", "--members", "120", "--weeks", "8", "--part-members",
                              "50", "--seed", "3", "--out", str(d), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["n_parts"] == 3
    res = runner.invoke(app, ["train", info["panel"], "--manifest", str(d / "manifest.toml"),
                              "--algo", "bc", "--steps", "30", "--out", str(d / "bc"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    return d, info


@pytest.mark.parametrize("extra", [["--chunk-rows", "100"],
                                   ["--chunk-rows", "100", "--executor", "local", "--jobs", "1"]])
def test_validate_streamed_summary_is_the_in_memory_one(parts, extra):
    """Every in-memory summary key, small-cell suppression included, also with --chunk-rows."""
    d, info = parts
    args = ["validate", info["panel"], "--manifest", str(d / "manifest.toml")]
    mem = runner.invoke(app, [*args, "--json"])
    res = runner.invoke(app, [*args, *extra, "--json"])
    assert mem.exit_code == 0 and res.exit_code == 0, res.output
    a, b = json.loads(mem.stdout), json.loads(res.stdout)
    assert set(b) - set(a) == {"clustered"} and set(a) <= set(b)
    assert any(v is None for g in a["groups"].values() for v in g.values())  # suppression
    for key in a:
        assert b[key] == pytest.approx(a[key]) if key == "need_pct" else b[key] == a[key], key
    rows_mem = runner.invoke(app, args).stdout.count("│")
    table = runner.invoke(app, [*args, *extra]).stdout
    assert table.count("│") == rows_mem + 3 and "episodes stored together" in table  # 1 row


def test_synth_parts_refuses_options_of_other_simulators(tmp_path):
    res = runner.invoke(app, ["synth", "--sim", "heparin", "--part-members", "10", "--out",
                              str(tmp_path)])
    assert res.exit_code == 2 and "--part-members does not apply to --sim heparin" in res.output


def test_validate_streams_and_names_panel_rows(parts, tmp_path):
    d, info = parts
    res = runner.invoke(app, ["validate", info["panel"], "--manifest", str(d / "manifest.toml"),
                              "--chunk-rows", "100", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["valid"] and out["n_steps"] == info["n_rows"] and out["n_episodes"] == 120
    frame = pd.read_parquet(info["panel"]).sort_values(["member_id", "week"])
    frame.iloc[[7, 400], frame.columns.get_loc("propensity")] = 1.7
    bad = tmp_path / "bad.parquet"
    frame.to_parquet(bad, index=False)
    res = runner.invoke(app, ["validate", str(bad), "--manifest", str(d / "manifest.toml"),
                              "--chunk-rows", "60"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    # one message, the rows counted over the panel (the chunks' findings merged)
    assert "propensity" in text and "2 rows (first: 7, 400;" in text
    res = runner.invoke(app, ["validate", str(bad), "--manifest", str(d / "manifest.toml"),
                              "--executor", "local"])
    assert res.exit_code == 2 and "--executor needs --chunk-rows" in res.output


def test_predict_streams_the_same_file(parts):
    d, info = parts
    man = str(d / "manifest.toml")
    for rows, name in ((None, "whole.parquet"), ("70", "streamed.parquet")):
        args = ["predict", str(d / "bc"), info["panel"], "--manifest", man, "--out",
                str(d / name)]
        res = runner.invoke(app, args + (["--chunk-rows", rows] if rows else []))
        assert res.exit_code == 0, res.output
    a = pd.read_parquet(d / "whole.parquet").sort_values(["member_id", "week"])
    b = pd.read_parquet(d / "streamed.parquet").sort_values(["member_id", "week"])
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-12)


def test_audit_streams_and_shards_identically(parts):
    d, info = parts
    man = str(d / "manifest.toml")
    base = ["audit", info["panel"], "--manifest", man, "--policy", f"bc={d / 'bc'}",
            "--action", "modality=home_visit", "--bootstrap", "50", "--permutations", "50",
            "--json"]
    whole = json.loads(runner.invoke(app, base).stdout)  # warnings go to stderr
    streamed = runner.invoke(app, base + ["--chunk-rows", "150"])
    assert streamed.exit_code == 0, streamed.output
    sharded = runner.invoke(app, base + ["--chunk-rows", "150", "--executor", "local",
                                         "--jobs", "1"])
    assert sharded.exit_code == 0, sharded.output
    s, h = json.loads(streamed.stdout), json.loads(sharded.stdout)
    assert s == h  # same Poisson weights keyed by episode id, whatever the sharding
    # point estimates equal the in-memory audit's (the bootstrap schemes differ)
    for pol in ("behavior", "bc"):
        for g, cell in whole["policies"][pol]["rate"].items():
            if "value" in cell:
                assert s["policies"][pol]["rate"][g]["value"] == pytest.approx(cell["value"],
                                                                             rel=1e-9)


def test_evaluate_streams_shards_and_refuses_q_model_estimators(parts):
    d, info = parts
    man = str(d / "manifest.toml")
    base = ["evaluate", info["panel"], "--manifest", man, "--policy", str(d / "bc"),
            "--bootstrap", "100", "--json"]
    whole = json.loads(runner.invoke(app, base + ["--estimators", "is,wis,pdis,wpdis"]).stdout)
    res = runner.invoke(app, base + ["--chunk-rows", "120", "--out", str(d / "stream.json")])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    written = (d / "stream.json").read_text()
    saved = json.loads(written)  # as in memory: the inputs named, strict JSON, one last newline
    assert saved.pop("inputs") == {"data": info["panel"], "manifest": man,
                                   "policy": str(d / "bc")}
    assert saved.pop("provenance")["settings"]["chunk_rows"] == 120  # the file says how
    assert saved == s and written.endswith("}\n")
    again = runner.invoke(app, base + ["--chunk-rows", "120", "--out", str(d / "stream.json")])
    assert again.exit_code == 2 and "--force" in again.output
    assert (d / "stream.json").read_text() == written
    sharded = runner.invoke(app, base + ["--chunk-rows", "120", "--executor", "local",
                                         "--jobs", "1"])
    assert sharded.exit_code == 0, sharded.output
    h = json.loads(sharded.stdout)
    for k in ("is", "wis", "pdis", "wpdis"):
        # point estimates: the in-memory engine's; intervals: same for any sharding
        assert s["estimates"][k]["value"] == pytest.approx(whole["estimates"][k]["value"],
                                                           rel=1e-9)
        assert h["estimates"][k]["ci"] == pytest.approx(s["estimates"][k]["ci"], rel=1e-9)
    assert s["bootstrap"]["ci"] == h["bootstrap"]["ci"] == "studentized"  # the default
    pct = runner.invoke(app, base + ["--chunk-rows", "120", "--ci", "percentile"])
    assert pct.exit_code == 0, pct.output
    assert json.loads(pct.stdout)["bootstrap"]["ci"] == "percentile"
    # the default --q-model auto streams: all seven, the choice said in the table's footer
    assert set(s["estimates"]) == {"is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"}
    # no categorical states: linear is the only applicable candidate (nothing sampled)
    assert s["q_model"]["chosen"] == "linear" and s["q_model"]["selection"]["n_folds"] == 0
    assert s["q_model"]["selection"]["sample_rows"] == 0
    res = runner.invoke(app, [a for a in base if a != "--json"] + ["--chunk-rows", "120"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "auto: the only applicable candidate" in text, text
    assert "bias )" not in text
    # no bias estimate for the lone linear model: FQE's interval says it is the bootstrap's
    # alone (in memory this small panel also cross-fits gbm and mlp, so it has one)
    assert "FQE's interval is the bootstrap's alone" in text
    assert s["q_model"]["fqe_interval"].startswith("the bootstrap's alone")
    mem = runner.invoke(app, [a for a in base if a != "--json"] + ["--q-model", "linear"])
    assert "FQE's interval is the bootstrap's alone" in " ".join(mem.output.split())
    res = runner.invoke(app, base + ["--chunk-rows", "120", "--estimators", "dr",
                                     "--q-model", "gbm"])
    assert res.exit_code == 2 and "cannot stream" in res.output
    # "all" with a Q-model that does not stream: the IS family, and the table says what is not
    text_base = [a for a in base if a != "--json"]
    res = runner.invoke(app, text_base + ["--chunk-rows", "120", "--q-model", "gbm"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "Not estimated: fqe, dr, wdr (--q-model gbm does not stream" in said, said
    res = runner.invoke(app, base + ["--chunk-rows", "120", "--q-model", "gbm", "--estimators",
                                     "wdr"])
    assert res.exit_code == 2
    assert "its fit needs the whole panel in memory" in " ".join(res.output.split())
    # --truncate: the untruncated ESS first, as in memory, then the truncated one; JSON records it
    res = runner.invoke(app, text_base + ["--chunk-rows", "120", "--estimators", "wis",
                                          "--truncate", "2"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0 and f"ESS: trajectory {s['ess']['trajectory']:.1f}" in said, said
    assert "truncated at 2:" in said
    res = runner.invoke(app, base + ["--chunk-rows", "120", "--ci", "bca"])
    assert res.exit_code == 2 and "--ci bca is in memory only" in " ".join(res.output.split())


@pytest.mark.usefixtures("raw_group_values")
def test_evaluate_streams_fqe_dr_wdr_with_an_explicit_q_model(parts):
    d, info = parts
    man = str(d / "manifest.toml")
    base = ["evaluate", info["panel"], "--manifest", man, "--policy", str(d / "bc"),
            "--bootstrap", "50", "--q-model", "linear", "--json"]
    whole = json.loads(runner.invoke(app, base).stdout)
    res = runner.invoke(app, base + ["--chunk-rows", "150"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert set(s["estimates"]) == {"is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr"}
    assert s["q_model"]["chosen"] == "linear"
    for k in ("fqe", "dr", "wdr"):
        assert s["estimates"][k]["value"] == pytest.approx(whole["estimates"][k]["value"],
                                                           rel=1e-9)
    # every manifest group attribute's levels, as in memory (small ones suppressed)
    assert set(s["groups"]) == set(whole["groups"]) and s["groups"]
    n_published = 0
    for attr, levels in whole["groups"].items():
        assert set(s["groups"][attr]) == set(levels)
        for lv, g in levels.items():
            h = s["groups"][attr][lv]
            assert h["n_episodes"] == g["n_episodes"]
            if g.get("suppressed"):
                assert h == {"suppressed": True, "n_episodes": None}
                continue
            n_published += 1
            for k in ("is", "fqe", "dr", "wdr"):
                assert h["estimates"][k]["value"] == pytest.approx(
                    g["estimates"][k]["value"], rel=1e-9), (attr, lv, k)
    assert n_published >= 2
    res = runner.invoke(app, base[:-1] + ["--chunk-rows", "150"])
    assert res.exit_code == 0, res.output
    assert "Subgroups, every estimator within each level" in " ".join(res.output.split())
    res = runner.invoke(app, ["evaluate", info["panel"], "--manifest", man, "--policy",
                              str(d / "bc"), "--chunk-rows", "150", "--estimators", "fqe,dr",
                              "--q-model", "tabular_backward"])
    assert res.exit_code == 2
    assert "--q-model tabular_backward does not stream" in " ".join(res.output.split())


def test_train_streams_bc_and_refuses_learners_that_do_not(parts, tmp_path):
    d, info = parts
    man = str(d / "manifest.toml")
    res = runner.invoke(app, ["train", info["panel"], "--manifest", man, "--algo", "bc",
                              "--steps", "40", "--chunk-rows", "150", "--out",
                              str(tmp_path / "bc"), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_steps"] == 40 and out["streaming"]["chunks_read"] >= 2
    res = runner.invoke(app, ["train", info["panel"], "--manifest", man, "--algo", "bc",
                              "--steps", "5", "--out", str(tmp_path / "bc_mem"), "--no-progress",
                              "--json"])
    assert res.exit_code == 0, res.output
    mem = json.loads(res.stdout)
    assert set(mem) - set(out) == set()  # the in-memory keys, plus "streaming"
    assert out["n_episodes"] == mem["n_episodes"] and out["n_rows"] == mem["n_rows"]
    res = runner.invoke(app, ["predict", str(tmp_path / "bc"), info["panel"], "--manifest", man,
                              "--out", str(tmp_path / "p.parquet")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["train", info["panel"], "--manifest", man, "--algo", "spibb",
                              "--chunk-rows", "150", "--out", str(tmp_path / "s")])
    assert res.exit_code == 2 and "--chunk-rows does not apply to --algo spibb" in res.output


def test_audit_streams_group_values_with_the_stationary_table(tmp_path):
    """``audit --q-model tabular_stationary --chunk-rows``: the in-memory group values (a
    Garnet panel: one categorical state column); auto streams too; a Q-model that does not
    stream exits 2."""
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s50_a5_g1", "--episodes",
                              "300", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    base = ["audit", str(tmp_path / "panel.parquet"), "-m", str(tmp_path / "manifest.toml"),
            "--policy", f"soft={tmp_path / 'policies' / 'soft_optimal.parquet'}",
            "--estimators", "fqe", "--q-model", "tabular_stationary", "--bootstrap", "50",
            "--permutations", "20", "--json"]
    whole = runner.invoke(app, base)
    streamed = runner.invoke(app, base + ["--chunk-rows", "900"])
    assert whole.exit_code == 0 and streamed.exit_code == 0, whole.output + streamed.output
    a = json.loads(whole.stdout)["policies"]["soft"]
    b = json.loads(streamed.stdout)["policies"]["soft"]
    assert a["value_estimator"] == b["value_estimator"] == "fqe"
    assert set(b["value_by_group"]) == {"g0", "g1", "g2"}
    for g, v in a["value_by_group"].items():
        assert b["value_by_group"][g]["value"] == pytest.approx(v["value"], rel=1e-9), g
    truth = json.loads((tmp_path / "truth.json").read_text())["policies"]["soft_optimal"]
    lo, hi = b["value"]["ci"]  # 300 episodes: the exact value is inside the interval
    assert lo <= truth["value"] <= hi and hi - lo < 0.3
    auto = runner.invoke(app, [*base[:9], "auto", *base[10:], "--chunk-rows", "900"])
    assert auto.exit_code == 0, auto.output  # chosen on a sample, here the whole panel
    bad = runner.invoke(app, [*base[:9], "tabular_backward", *base[10:], "--chunk-rows", "900"])
    assert bad.exit_code == 2, bad.output
    assert "'auto', 'linear', 'tabular_stationary' or 'tabular_window'" in " ".join(
        bad.output.split())


def test_streamed_behaviour_sample_without_episodes_is_a_one_line_user_error(tmp_path,
                                                                            monkeypatch):
    """An empty behaviour-model sample (few, very long episodes) exits 2, not 'internal error'."""
    import copy

    from equicare.data import Manifest, from_frame
    from equicare.ope import _stream_behavior
    from equicare.policy import write_policy_file

    from ..conftest import MANIFEST, make_frame

    md = copy.deepcopy(MANIFEST)
    md["dataset"].pop("behavior_prob")
    df = make_frame(30, seed=1).drop(columns=["propensity"])
    ds = from_frame(df, md, emit_warnings=False)
    probs = np.random.default_rng(0).dirichlet(np.ones(ds.n_actions), size=ds.n_steps)
    pol = write_policy_file(ds, probs, tmp_path / "policy.parquet")
    df.to_parquet(tmp_path / "panel.parquet", index=False)
    (tmp_path / "m.toml").write_text(Manifest.from_dict(md).to_toml())
    monkeypatch.setattr(_stream_behavior, "sample_episodes",
                        lambda source, rows, seed: (None, 1e-6))
    res = runner.invoke(app, ["evaluate", str(tmp_path / "panel.parquet"), "--manifest",
                              str(tmp_path / "m.toml"), "--policy", str(pol), "--q-model",
                              "linear", "--chunk-rows", "50", "--no-progress"])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "internal error" not in res.output
    assert "The behaviour model's sample (rate 1e-06) has no episode" in " ".join(
        res.output.split())


def test_streamed_evaluate_reports_support_as_in_memory(tmp_path):
    """``evaluate --chunk-rows``: the in-memory ``support`` in the JSON, the same warning on
    stderr and the same ``Support:`` line under the table (a Garnet policy on never-logged
    actions)."""
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s50_a5_g1", "--episodes",
                              "300", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    base = ["evaluate", str(tmp_path / "panel.parquet"), "-m", str(tmp_path / "manifest.toml"),
            "--policy", str(tmp_path / "policies" / "unsupported.parquet"), "--estimators",
            "is,wis", "--bootstrap", "20", "--no-progress"]
    whole = runner.invoke(app, [*base, "--json"])
    streamed = runner.invoke(app, [*base, "--json", "--chunk-rows", "900"])
    assert whole.exit_code == 0 and streamed.exit_code == 0, whole.output + streamed.output
    a, b = json.loads(whole.stdout)["support"], json.loads(streamed.stdout)["support"]
    assert a["warning"] and b["warning"] and b["message"] == a["message"]
    assert b["share_pct"] == pytest.approx(a["share_pct"], rel=1e-12)
    assert b["n_rows"] == a["n_rows"]
    text = runner.invoke(app, [*base, "--chunk-rows", "900"])
    out = " ".join(text.output.split())
    assert f"Support: {a['share_pct']:.2f}% of the target policy's mass" in out, out
    assert "warning: The target policy puts" in out


def test_streamed_audit_reports_weight_and_support_diagnostics_as_in_memory(tmp_path):
    """``audit --chunk-rows``: the in-memory ``diagnostics`` (ESS overall and by group to 1e-9,
    the support check), the same warnings and the same lines under the tables."""
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s50_a5_g1", "--episodes",
                              "300", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    base = ["audit", str(tmp_path / "panel.parquet"), "-m", str(tmp_path / "manifest.toml"),
            "--policy", f"uns={tmp_path / 'policies' / 'unsupported.parquet'}",
            "--estimators", "wis", "--bootstrap", "20", "--permutations", "10"]
    whole = runner.invoke(app, [*base, "--json"])
    streamed = runner.invoke(app, [*base, "--json", "--chunk-rows", "900"])
    assert whole.exit_code == 0 and streamed.exit_code == 0, whole.output + streamed.output
    a = json.loads(whole.stdout)["policies"]["uns"]["diagnostics"]
    b = json.loads(streamed.stdout)["policies"]["uns"]["diagnostics"]
    assert b["ess"]["trajectory"] == pytest.approx(a["ess"]["trajectory"], rel=1e-9)
    assert b["ess"]["per_decision_pct"] == pytest.approx(a["ess"]["per_decision_pct"], rel=1e-9)
    for g, e in a["ess_by_group"].items():
        assert b["ess_by_group"][g]["trajectory"] == pytest.approx(e["trajectory"], rel=1e-9)
    assert b["support"]["share_pct"] == pytest.approx(a["support"]["share_pct"], rel=1e-12)
    assert a["support"]["warning"] and b["warnings"] == a["warnings"]
    text = runner.invoke(app, [*base, "--chunk-rows", "900"])
    mem_text = runner.invoke(app, base)
    lines = [ln for ln in mem_text.output.splitlines() if ln.startswith(("ESS of", "Support of"))]
    assert lines and all(ln in text.output for ln in lines), text.output


def _propensity_lines(text: str) -> list[str]:
    """The logged-propensity warnings of a command's output, one line each."""
    flat = " ".join(text.split())
    end = "let evaluate estimate the behaviour policy."
    return [w[:w.index(end) + len(end)] for w in flat.split("warning: ")[1:]
            if "disagree with the logged actions" in w]


@pytest.mark.parametrize("extra", [["--chunk-rows", "100"],
                                   ["--chunk-rows", "100", "--executor", "local", "--jobs", "1"]])
def test_streamed_validate_and_evaluate_check_logged_propensities_as_in_memory(parts, tmp_path,
                                                                              extra):
    """Every propensity 1.0 on an 862-row care panel: the sample is the whole panel, so
    ``validate --json``'s ``warnings`` and ``evaluate``'s warning are the in-memory ones."""
    d, info = parts
    frame = pd.read_parquet(info["panel"])
    frame["propensity"] = 1.0
    ones = tmp_path / "ones.parquet"
    frame.to_parquet(ones, index=False)
    man = str(d / "manifest.toml")
    args = ["validate", str(ones), "--manifest", man, "--json"]
    mem, res = runner.invoke(app, args), runner.invoke(app, [*args, *extra])
    assert mem.exit_code == 0 and res.exit_code == 0, res.output
    a, b = json.loads(mem.stdout)["warnings"], json.loads(res.stdout)["warnings"]
    assert b == a and any("disagree with the logged actions" in w for w in a)
    args = ["evaluate", str(ones), "--manifest", man, "--policy", str(d / "bc"),
            "--estimators", "is,wis", "--bootstrap", "20", "--no-progress"]
    mem = runner.invoke(app, args)
    res = runner.invoke(app, [*args, "--chunk-rows", "100"])
    assert mem.exit_code == 0 and res.exit_code == 0, res.output
    assert len(_propensity_lines(mem.output)) == 1
    assert _propensity_lines(res.output) == _propensity_lines(mem.output)


def test_streamed_validate_checks_logged_propensities_on_a_sample(tmp_path):
    """26,613 rows with random propensities: ``validate --chunk-rows`` warns from about 20,000
    rows of whole episodes and says so; the true propensities give no such warning."""
    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s50_a5_g1", "--episodes",
                              "2500", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    frame = pd.read_parquet(tmp_path / "panel.parquet")
    frame["propensity"] = np.random.default_rng(0).uniform(0.001, 1.0, len(frame))
    frame.to_parquet(tmp_path / "random.parquet", index=False)
    man = str(tmp_path / "manifest.toml")
    found = {}
    for name in ("random", "panel"):
        res = runner.invoke(app, ["validate", str(tmp_path / f"{name}.parquet"), "-m", man,
                                  "--chunk-rows", "3000", "--json"])
        assert res.exit_code == 0, res.output
        found[name] = [w for w in json.loads(res.stdout)["warnings"]
                       if "disagree with the logged actions" in w]
    assert len(found["random"]) == 1 and not found["panel"]
    assert (f"a random sample of whole episodes of the panel's {len(frame):,}; above"
            in found["random"][0])


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
def test_evaluate_bootstrap_0_streams_the_in_memory_result_on_a_garnet_panel(tmp_path):
    """--bootstrap 0 --chunk-rows on Garnet episodes of 1 to 100+ steps (a policy file, the
    stationary table): the in-memory result JSON's numbers, overall and per group."""
    from equicare.sim._garnet_cli import synth_garnet
    from equicare.sim.garnet import garnet_preset

    from ..ope.test_stream import same_as_in_memory

    paths = synth_garnet(tmp_path, config=garnet_preset("s50_a25_g1"), n_episodes=500, seed=5)
    base = ["evaluate", paths["panel"], "--manifest", paths["manifest"], "--policy",
            paths["policies"]["tilted"], "--bootstrap", "0", "--q-model", "tabular_stationary",
            "--json", "--no-progress"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    ref = json.loads(res.stdout)
    res = runner.invoke(app, [*base, "--chunk-rows", "1500"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["streaming"]["n_chunks"] > 2 and got["bootstrap"]["ci"] == "jackknife"
    assert same_as_in_memory(got, ref) >= 2


def _censored_panel_files(tmp_path):
    """tests/ope/test_censoring.py's panel (2,000 stays cut at 10 steps, about 18% censored)
    as a Parquet panel, its manifest and the target policy as a policy file."""
    from ..ope.test_censoring import TGT, panel

    ds = panel(2000, 10, seed=4)
    ep = ds.episode_ids[ds.episode_index]
    cell = ds.categorical[:, 0]
    frame = pd.DataFrame({"episode": ep, "t": ds.step, "cell": cell,
                          "s": ds.states[:, 0].astype(float), "action": ds.actions,
                          "reward": ds.rewards, "terminal": ds.terminals.astype(int),
                          "propensity": ds.behavior_prob, "g": ds.groups["g"][ds.episode_index]})
    frame.to_parquet(tmp_path / "panel.parquet", index=False)
    (tmp_path / "manifest.toml").write_text(
        '[dataset]\nepisode = "episode"\ntime = "t"\nstates = ["s"]\n'
        'categorical_states = ["cell"]\ngroups = ["g"]\nterminal = "terminal"\n'
        'behavior_prob = "propensity"\ngamma = 0.9\n\n[actions.action]\nlevels = 3\n\n'
        '[reward]\nreward = { column = "reward", weight = 1.0 }\n')
    pol = pd.DataFrame({"episode": ep, "t": ds.step,
                        **{f"p_{a}": TGT[cell, a] for a in range(3)}})
    pol.to_parquet(tmp_path / "policy.parquet", index=False)
    return (str(tmp_path / "panel.parquet"), str(tmp_path / "manifest.toml"),
            str(tmp_path / "policy.parquet"))


@pytest.mark.usefixtures("raw_group_values")
def test_evaluate_streams_the_window_table_and_the_censoring_check(tmp_path):
    """--q-model tabular_window --chunk-rows: the in-memory result (--bootstrap 0); the
    stationary table streamed gets the in-memory censoring check and warning; auto streamed
    replaces it by the window table and says so."""
    from ..ope.test_stream import same_as_in_memory

    panel, man, pol = _censored_panel_files(tmp_path)
    base = ["evaluate", panel, "--manifest", man, "--policy", pol, "--bootstrap", "0",
            "--estimators", "fqe,dr,wdr", "--no-progress"]
    res = runner.invoke(app, [*base, "--q-model", "tabular_window", "--json"])
    assert res.exit_code == 0, res.output
    ref = json.loads(res.stdout)
    res = runner.invoke(app, [*base, "--q-model", "tabular_window", "--json",
                              "--chunk-rows", "3000"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["streaming"]["n_chunks"] > 2 and got["q_model"]["chosen"] == "tabular_window"
    assert same_as_in_memory(got, ref) == 2
    checks = []
    for extra in ([], ["--chunk-rows", "3000"]):
        res = runner.invoke(app, [*base, "--q-model", "tabular_stationary", "--json", *extra])
        assert res.exit_code == 0, res.output
        assert "Prefer --q-model tabular_window" in " ".join(res.stderr.split())
        checks.append(json.loads(res.stdout)["q_model"]["censoring"])
    assert checks[1]["warning"] and set(checks[1]) == set(checks[0])
    for k, v in checks[0].items():
        assert checks[1][k] == pytest.approx(v, rel=1e-9), k
    res = runner.invoke(app, [*base, "--chunk-rows", "3000"])
    said = " ".join(res.output.split())
    assert res.exit_code == 0, said
    assert "Q-model: tabular_window (streamed fit, window table" in said
    assert re.search(r"tabular_stationary replaced by tabular_window: 1\d\.\d% of the episodes "
                     r"are censored and the two tables differ by -\d\.\d%", said), said


def test_a_q_table_that_ignores_numeric_states_says_so(tmp_path):
    """A care panel (site as the only categorical state, numeric risk) had FQE/DR intervals
    that missed the truth by 15-30% with auto's table, whose cells are the sites alone; nothing
    said the table ignored the numeric states. Now evaluate (in memory and streamed) and audit
    (both modes) name them: ``q_model["ignored_numeric"]`` and a note under the Q-model line;
    the linear model, which uses them, gets neither. (The panel's ``s`` is its cell's code,
    constant within each cell, which nothing loses: noise is added so that it varies.)"""
    panel, man, pol = _censored_panel_files(tmp_path)
    frame = pd.read_parquet(panel)
    frame["s"] += np.random.default_rng(0).normal(0, 0.1, len(frame))
    frame.to_parquet(panel, index=False)
    note = ("Note: the cells of the Q-table (categorical states, and any numeric state's bins that "
            "auto kept) ignore the numeric state columns s: where they drive both the actions "
            "and the outcomes, its FQE, DR "
            "and WDR values can be biased beyond their intervals; compare --q-model gbm")
    base = ["evaluate", panel, "--manifest", man, "--policy", pol, "--bootstrap", "0",
            "--estimators", "fqe,dr", "--no-progress"]
    for i, (q, extra) in enumerate([("tabular_window", []), ("auto", ["--chunk-rows", "3000"]),
                                    ("tabular_window", ["--chunk-rows", "3000"]),
                                    ("linear", []), ("linear", ["--chunk-rows", "3000"])]):
        out = tmp_path / f"eval{i}.json"
        res = runner.invoke(app, [*base, "--q-model", q, "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        got = json.loads(out.read_text())["q_model"]
        table = got["chosen"].startswith("tabular")
        assert table == (q != "linear"), (q, extra, got["chosen"])
        assert got.get("ignored_numeric") == (["s"] if table else None), (q, extra)
        assert (note in " ".join(res.output.split())) == table, (q, extra, res.output)
    base = ["audit", panel, "-m", man, "--policy", f"tgt={pol}", "--action", "action=1",
            "--estimators", "dr", "--bootstrap", "0", "--permutations", "0"]
    for i, (q, extra) in enumerate([(q, x) for q in ("tabular_window", "linear")
                                    for x in ([], ["--chunk-rows", "3000"])]):
        out = tmp_path / f"audit{i}.json"
        res = runner.invoke(app, [*base, "--q-model", q, "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        got = json.loads(out.read_text())["policies"]["tgt"]["q_model"]
        assert got.get("ignored_numeric") == (["s"] if q != "linear" else None), (q, extra)
        said = " ".join(res.output.split())
        assert (note.replace("Q-table", "Q-table of tgt") in said) == (q != "linear"), said


def test_a_numeric_state_constant_in_every_cell_is_not_called_ignored(tmp_path):
    """The Garnet test bed's severity is a function of the state: the table's cells lose
    nothing, and the README's Garnet example printed the ignored-numeric note anyway. Now a
    column constant within every cell of the table is not named, in memory and streamed
    (where each chunk's per-cell ranges are merged: a chunk of 900 rows), by evaluate and
    audit; the same column with noise added within the cells is named again."""
    import pandas as pd

    from equicare.ope._fqe import cell_ranges, merge_cell_ranges

    res = runner.invoke(app, ["synth", "--sim", "garnet", "--preset", "s50_a5_g1", "--episodes",
                              "300", "--seed", "2", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    frame = pd.read_parquet(tmp_path / "panel.parquet")
    noisy = tmp_path / "noisy.parquet"
    frame.assign(severity=frame["severity"] + np.random.default_rng(0).normal(
        0, 0.01, len(frame))).to_parquet(noisy)
    pol = str(tmp_path / "policies" / "soft_optimal.parquet")
    for data, named in ((str(tmp_path / "panel.parquet"), None), (str(noisy), ["severity"])):
        for extra in ([], ["--chunk-rows", "900"]):
            base = ["--manifest", str(tmp_path / "manifest.toml"), "--q-model",
                    "tabular_stationary", "--bootstrap", "0", "--no-progress", *extra]
            out = tmp_path / "e.json"
            res = runner.invoke(app, ["evaluate", data, "--policy", pol, "--estimators", "fqe",
                                      "--out", str(out), "--force", *base])
            assert res.exit_code == 0, res.output
            got = json.loads(out.read_text())["q_model"].get("ignored_numeric")
            assert got == named, (data, extra)
            said = " ".join(res.output.split())
            assert ("ignore the numeric state columns" in said) == bool(named)
            res = runner.invoke(app, ["audit", data, "--policy", f"soft={pol}", "--estimators",
                                      "fqe", "--permutations", "0", "--json", *base])
            assert res.exit_code == 0, res.output
            entry = json.loads(res.stdout)["policies"]["soft"]["q_model"]
            assert entry.get("ignored_numeric") == named, (data, extra)
    rng = np.random.default_rng(1)
    cell, vals = rng.integers(0, 7, 50), rng.normal(size=(50, 2))
    whole = cell_ranges(vals, cell)
    parts = merge_cell_ranges(cell_ranges(vals[:20], cell[:20]), cell_ranges(vals[20:], cell[20:]))
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_array_equal(a, b)


def test_audit_streams_the_window_table_and_the_censoring_check(tmp_path):
    """``audit --chunk-rows`` on censored stays: --q-model tabular_window streams (it exited 2);
    auto streamed replaces the stationary table by the window table as in memory (it kept the
    stationary table) and says so; a named stationary table draws evaluate's warning, once, in
    both modes (the in-memory bootstrap draws other replicates: point values and the check
    compared; in-memory auto, about 5 s here, in tests/fairness/test_stream.py)."""
    panel, man, pol = _censored_panel_files(tmp_path)
    base = ["audit", panel, "-m", man, "--policy", f"tgt={pol}", "--action", "action=1",
            "--estimators", "dr", "--bootstrap", "10", "--permutations", "0"]
    got = {}
    for q, extra in [("tabular_window", []), ("tabular_stationary", []),
                     *[(q, ["--chunk-rows", "3000"])
                       for q in ("tabular_window", "tabular_stationary", "auto")]]:
        res = runner.invoke(app, [*base, "--q-model", q, "--json", *extra])
        assert res.exit_code == 0, res.output
        err = " ".join(res.stderr.split())
        assert err.count("Prefer --q-model tabular_window") == (q == "tabular_stationary"), err
        got[q, bool(extra)] = json.loads(res.stdout)["policies"]["tgt"]
    for q, ref in [("tabular_window", "tabular_window"), ("auto", "tabular_window"),
                   ("tabular_stationary", "tabular_stationary")]:
        whole, streamed = got[ref, False], got[q, True]
        assert streamed["value"]["value"] == pytest.approx(whole["value"]["value"], rel=1e-9)
        for g in ("x", "y"):
            assert streamed["value_by_group"][g]["value"] == pytest.approx(
                whole["value_by_group"][g]["value"], rel=1e-9), (q, g)
        check = streamed["diagnostics"].get("censoring", {})
        assert (check.get("switched_to_window"), check.get("warning")) == {
            "tabular_window": (None, None), "auto": (True, True),
            "tabular_stationary": (False, True)}[q]
    check = got["tabular_stationary", False]["diagnostics"]["censoring"]
    assert got["tabular_stationary", True]["diagnostics"]["censoring"] == pytest.approx(
        check, rel=1e-9)
    assert got["auto", True]["diagnostics"]["censoring"] == pytest.approx(
        {**check, "switched_to_window": True}, rel=1e-9)
    said = " ".join(runner.invoke(app, [*base, "--q-model", "auto", "--chunk-rows",
                                        "3000"]).output.split())
    assert re.search(r"Q-model of tgt: tabular_stationary replaced by tabular_window: "
                     r"1\d\.\d% of the episodes are censored", said), said


def test_evaluate_bins_a_score_that_drives_transitions_in_memory_and_streamed(tmp_path):
    """tests/ope/test_select.py's transitions-only panel: the target's edge of the score joins
    the table's cells in memory and streamed (one chunk of 3,000 rows at a time) alike."""
    from ..ope.test_select import _transition_reads_panel

    ds, truth = _transition_reads_panel(1500, seed=1)
    pd.DataFrame({"id": ds.episode_ids[ds.episode_index], "t": ds.step,
                  "x": ds.states[:, 0].astype(float), "h": ds.categorical[:, 0],
                  "act": ds.actions, "r": ds.rewards, "end": ds.terminals.astype(int),
                  "p": ds.behavior_prob}).to_parquet(tmp_path / "panel.parquet", index=False)
    (tmp_path / "m.toml").write_text(
        '[dataset]\nepisode = "id"\ntime = "t"\nstates = ["x"]\ncategorical_states = ["h"]\n'
        'terminal = "end"\nbehavior_prob = "p"\ngamma = 0.95\n\n[actions.act]\nlevels = 2\n\n'
        '[reward]\nr = { column = "r", weight = 1.0 }\n')
    act = (ds.states[:, 0] >= 0.5).astype(float)
    pd.DataFrame({"id": ds.episode_ids[ds.episode_index], "t": ds.step, "p_0": 1.0 - act,
                  "p_1": act}).to_parquet(tmp_path / "pol.parquet", index=False)
    base = ["evaluate", str(tmp_path / "panel.parquet"), "--manifest", str(tmp_path / "m.toml"),
            "--policy", str(tmp_path / "pol.parquet"), "--bootstrap", "0", "--estimators",
            "fqe", "--no-progress"]
    got = []
    for extra in ([], ["--chunk-rows", "3000"]):
        out = tmp_path / f"ev{len(extra)}.json"
        res = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        q = json.loads(out.read_text())
        reads = (q["q_model"].get("numeric_bins")
                 or q["q_model"]["selection"]["numeric_bins"])["target_reads"]["x"]
        assert reads["added"] and "Q-table pools" not in res.output
        got.append((q["q_model"]["chosen"], q["estimates"]["fqe"]["value"]))
    assert got[0][0] == got[1][0] == "tabular_stationary[h,x@0.3335/0.4995/0.6655]"
    assert got[1][1] == pytest.approx(got[0][1], rel=1e-9)
    assert abs(got[0][1] / truth - 1.0) < 0.06


@pytest.mark.parametrize("drives", [True, False])
def test_evaluate_bins_a_score_the_target_reads_in_memory_and_streamed(tmp_path, drives):
    """tests/ope/test_select.py's panel: the target acts when a score x is at least 0.5, and x
    decides the reward (``drives``) or nothing. auto crossed x's terciles with the target's
    edge 0.499 where x drives the reward (FQE -18% before, within 6% now), in memory and
    streamed alike; where it does not, the table stays on the terciles and the terminal says
    it pools a column the target reads, as the result JSON does."""
    from ..ope.test_select import _target_reads_panel

    ds, truth = _target_reads_panel(400, seed=0, drives=drives)
    ep = ds.episode_ids[ds.episode_index]
    frame = pd.DataFrame({"id": ep, "t": ds.step, "x": ds.states[:, 0].astype(float),
                          "site": np.asarray(ds.categorical_levels[0])[ds.categorical[:, 0]],
                          "act": ds.actions, "r": ds.rewards, "end": ds.terminals.astype(int),
                          "p": ds.behavior_prob, "g": ds.episode_index % 2})
    frame.to_parquet(tmp_path / "panel.parquet", index=False)
    (tmp_path / "m.toml").write_text(
        '[dataset]\nepisode = "id"\ntime = "t"\nstates = ["x"]\ncategorical_states = ["site"]\n'
        'groups = ["g"]\nterminal = "end"\nbehavior_prob = "p"\ngamma = 0.9\n\n'
        '[actions.act]\nlevels = 2\n\n'
        '[reward]\nr = { column = "r", weight = 1.0 }\n')
    act = (ds.states[:, 0] >= 0.5).astype(float)
    pd.DataFrame({"id": ep, "t": ds.step, "p_0": 1.0 - act, "p_1": act}).to_parquet(
        tmp_path / "pol.parquet", index=False)
    base = ["evaluate", str(tmp_path / "panel.parquet"), "--manifest", str(tmp_path / "m.toml"),
            "--policy", str(tmp_path / "pol.parquet"), "--bootstrap", "0", "--estimators",
            "fqe", "--no-progress"]
    chosen, values = [], []
    for extra in ([], ["--chunk-rows", "700"]):
        out = tmp_path / f"ev{len(extra)}.json"
        res = runner.invoke(app, [*base, "--out", str(out), *extra])
        said = " ".join(res.output.split())
        assert res.exit_code == 0, said
        q = json.loads(out.read_text())
        values.append(q["estimates"]["fqe"]["value"])
        q = q["q_model"]
        chosen.append(q["chosen"])
        reads = (q.get("numeric_bins") or q["selection"]["numeric_bins"])["target_reads"]["x"]
        assert reads["added"] == drives
        assert ("Note: the Q-table pools x (its probabilities change at 0.499; reward gain per "
                "episode" in said) == (not drives), said
    assert chosen[0] == chosen[1] == ("tabular_stationary[x@0.3373/0.499/0.6695]" if drives
                                      else "tabular_stationary[x@0.3373/0.6695]")
    assert values[1] == pytest.approx(values[0], rel=1e-9)
    assert abs(values[0] / truth - 1.0) < (0.06 if drives else 0.1)
    base = ["audit", str(tmp_path / "panel.parquet"), "-m", str(tmp_path / "m.toml"),
            "--policy", f"tgt={tmp_path / 'pol.parquet'}", "--action", "act=1", "--estimators",
            "fqe", "--bootstrap", "0", "--permutations", "0", "--q-model", "auto"]
    for extra in ([], ["--chunk-rows", "700"]):  # the audit's policies: the same choice and note
        out = tmp_path / f"audit{len(extra)}.json"
        res = runner.invoke(app, [*base, "--out", str(out), *extra])
        said = " ".join(res.output.split())
        assert res.exit_code == 0, said
        q = json.loads(out.read_text())["policies"]["tgt"]["q_model"]
        assert q["chosen"] == chosen[0]
        assert q["numeric_bins"]["target_reads"]["x"]["added"] == drives
        assert ("Note: the Q-table of tgt pools x (its probabilities change at 0.499" in said
                ) == (not drives), said
