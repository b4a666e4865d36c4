"""The benchmark runner, results.json and the generated tables of BENCHMARKS.md."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


render = _module("render")
run_all = _module("run_all")


def _entry(value, bench, date="2026-01-01T00:00:00+00:00", **kw):
    return {"value": value, "unit": "s", "peer": None, "peer_value": None, "ratio": None,
            "date": date, "machine": "m", "revision": "abc", "bench": bench, **kw}


def test_benchmarks_md_is_the_render_of_results_json():
    doc = render.DOC.read_text()
    assert render.render(doc, render.load_results()) == doc, (
        "BENCHMARKS.md is out of date: run python benchmarks/render.py")


def test_every_result_has_its_own_provenance_and_a_module():
    results = json.loads(render.RESULTS.read_text())
    topics = set(run_all.topics())
    for name, e in results.items():
        run_all.check_entry(name, e)
        for key in run_all.PROVENANCE:
            assert e.get(key), f"{name} has no {key}"
        assert e["bench"] in topics, name
        if e.get("note") and e.get("peer"):  # a peer comparison says whether it is the same work
            assert e["note"].startswith(("like-for-like", "not like-for-like", "lower bound")), name


def test_partial_rerun_keeps_the_other_entries_and_their_dates():
    old = {"a": _entry(1.0, "ope", "2026-01-01"), "gone": _entry(2.0, "ope", "2026-01-01"),
           "b": _entry(3.0, "rmab", "2025-12-31")}
    new = {"a": _entry(1.5, "ope", "2026-02-02")}
    merged = run_all.merge(old, new, {"ope"}, full=False)
    assert merged == {"a": new["a"], "b": old["b"]}       # stale ope entry dropped, rmab kept
    assert run_all.merge(old, new, {"ope"}, full=True) == new


@pytest.mark.parametrize("entry, message", [
    ({"value": 1.0, "unit": "s", "peer": None, "peer_value": None}, "lacks"),
    ({"value": float("nan"), "unit": "s", "peer": None, "peer_value": None, "ratio": None},
     "non-finite"),
    ({"value": 1.0, "unit": "s", "peer": "x", "peer_value": None, "ratio": None}, "together"),
])
def test_check_entry_rejects_bad_entries(entry, message):
    with pytest.raises(ValueError, match=message):
        run_all.check_entry("x", entry)


def test_render_replaces_only_the_blocks_and_refuses_unpublished_modules():
    doc = ("intro 3.2 ms stays\n<!-- generated:begin provenance -->\nold\n"
           "<!-- generated:end provenance -->\nmethod\n<!-- generated:begin ope -->\nstale\n"
           "<!-- generated:end ope -->\n")
    res = {"ope_all": _entry(0.05, "ope", peer="p", peer_value=0.5, ratio=10.0,
                             note="like-for-like: same")}
    out = render.render(doc, res, topics=["ope"])
    assert out.startswith("intro 3.2 ms stays\n") and "stale" not in out and "old" not in out
    assert "| `ope_all` | 0.05 s | p | 0.5 s | 10x | like-for-like: same | 2026-01-01 |" in out
    assert render.render(out, res, topics=["ope"]) == out
    with pytest.raises(ValueError, match="missing \\['rmab'\\]"):
        render.render(doc, res, topics=["ope", "rmab"])
    with pytest.raises(ValueError, match="unknown modules \\['learn'\\]"):
        render.render(doc, {**res, "x": _entry(1.0, "learn")}, topics=["ope"])


def test_quick_smoke_of_rmab_writes_nothing(capsys):
    before = render.RESULTS.read_bytes(), render.DOC.read_bytes()
    assert run_all.main(["--quick", "--only", "rmab"]) == 0   # entries checked by the runner
    out = capsys.readouterr().out
    assert "whittle_distinct_10k_h20_all_states" in out and "[not like-for-like" in out
    assert "nothing written" in out
    assert (render.RESULTS.read_bytes(), render.DOC.read_bytes()) == before


def test_every_module_of_a_quick_run_has_a_quick_mode():
    """``make bench-quick`` (``run_all.py --quick``) runs every topic but the separate ones."""
    import inspect

    missing = [t for t in run_all.topics(include_separate=False)
               if "quick" not in inspect.signature(run_all._load(t).run).parameters]
    assert missing == []


@pytest.mark.slow
def test_quick_smoke_of_the_garnet_modules_writes_nothing(capsys):
    """The three Garnet-panel modules (explain, ope_cells, ope_garnet with its quick tour) at
    tiny sizes and without peers: about a minute, mostly subprocess start-up."""
    before = render.RESULTS.read_bytes(), render.DOC.read_bytes()
    assert run_all.main(["--quick", "--only", "explain,ope_cells,ope_garnet"]) == 0
    out = capsys.readouterr().out
    assert "ope_care_quick_tour_end_to_end" in out and "peer skipped (quick run)" in out
    assert "quick run: 21 entries measured, nothing written" in out
    assert (render.RESULTS.read_bytes(), render.DOC.read_bytes()) == before


@pytest.mark.slow
def test_pipeline_records_its_row_count_and_names_entries_after_the_members():
    """The demo simulates with churn: the entries are named after the members the config fixes
    and the row count the run loaded is an entry of its own (about 6 s)."""
    out = _module("bench_pipeline").run(quick=True)
    rows = out["pipeline_rows_200_members"]
    assert rows["unit"] == "rows" and 0 < rows["value"] < 200 * 52  # churn: fewer than all weeks
    assert rows["value"] == int(rows["value"])
    assert {"pipeline_end_to_end_200_members", "pipeline_peak_memory_200_members",
            "pipeline_stage_train_200_members"} <= set(out)
    assert not [k for k in out if "rows" in k and k != "pipeline_rows_200_members"]
