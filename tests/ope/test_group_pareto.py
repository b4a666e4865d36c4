"""The Pareto tail check of the importance weights within each subgroup (evaluate and audit).

A seeded two-step panel built here with numpy/pandas (not ``equicare.sim``): in groups A and B
practice calls with a probability uniform on 0.3-0.7; in group D it calls with a
probability log-uniform on 0.03-0.5, tiny for the target's action (a call with probability
0.9), so D's trajectory weights have a heavy tail; group E has 60 episodes, too few for the
tail fit (it needs 20 weights, the largest min(n/5, 3 sqrt(n)) of n episodes).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.data import TrajectoryDataset, from_frame
from equicare.exceptions import LowESSWarning, SupportWarning
from equicare.fairness import FairnessAudit, audit, audit_stream
from equicare.ope import evaluate, evaluate_stream
from equicare.ope._ess import PARETO_NA_FEW
from equicare.policy import CallablePolicy

MANIFEST = {"dataset": {"episode": "id", "time": "t", "states": ["x"], "groups": ["grp"],
                        "behavior_prob": "prop", "gamma": 1.0},
            "actions": {"a": {"levels": ["none", "call"]}}, "reward": {"column": "r"}}
SIZES = {"A": 2000, "B": 1500, "D": 1000, "E": 60}
E_NA = PARETO_NA_FEW.format(min_tail=20, n_episodes=60, m=12)


def frame(seed: int) -> pd.DataFrame:
    """The panel under practice (two rows per member)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(list(SIZES), list(SIZES.values()))
    n = g.size
    rows = []
    for t in range(2):
        b1 = np.where(g == "D", np.exp(rng.uniform(np.log(0.03), np.log(0.5), n)),
                      rng.uniform(0.3, 0.7, n))
        a = (rng.random(n) < b1).astype(int)
        x = rng.normal(size=n)
        rows.append(pd.DataFrame({"id": np.arange(n), "t": t, "x": x,
                                  "a": np.where(a == 1, "call", "none"),
                                  "prop": np.where(a == 1, b1, 1 - b1),
                                  "r": x + a + 0.1 * rng.normal(size=n), "grp": g}))
    return pd.concat(rows, ignore_index=True).sort_values(["id", "t"], ignore_index=True)


def target(dataset: TrajectoryDataset) -> np.ndarray:
    """A call with probability 0.9 at every row."""
    return np.tile([0.1, 0.9], (dataset.n_steps, 1))


@pytest.fixture(scope="module")
def panel(tmp_path_factory) -> tuple[str, TrajectoryDataset]:  # type: ignore[no-untyped-def]
    df = frame(0)
    path = tmp_path_factory.mktemp("pareto") / "panel.parquet"
    df.to_parquet(path)
    return str(path), from_frame(df, MANIFEST, emit_warnings=False)


HEAVY_D = re.compile(r"The is and wis values of subgroup grp=D \(k (\d\.\d+) over the largest "
                     r"94 of 1,000 episodes\) rest on trajectory importance weights with a heavy "
                     r"tail within the group")


@pytest.mark.parametrize("streamed", [False, True])
def test_evaluate_names_the_subgroup_whose_weights_have_a_heavy_tail(panel, streamed: bool
                                                                     ) -> None:  # type: ignore[no-untyped-def]
    path, ds = panel
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = (evaluate_stream(ds, CallablePolicy(target, 2, takes_dataset=True),
                               chunk_rows=2000, n_boot=50, groups=["grp"], estimators=("is", "wis"),
                               random_state=0) if streamed
               else evaluate(ds, target(ds), estimators="is,wis", bootstrap=50, groups=["grp"],
                             random_state=0))
    k = {lv: g.pareto_k for lv, g in res.groups["grp"].items()}
    assert k["D"] > 0.7 and k["A"] < 0.3 and k["B"] < 0.3 and np.isnan(k["E"]), k
    said = [str(w.message) for w in rec
            if issubclass(w.category, LowESSWarning) and HEAVY_D.search(str(w.message))]
    assert len(said) == 1 and "grp=A" not in said[0] and "grp=E" not in said[0], said
    groups = res.to_dict()["groups"]["grp"]
    assert groups["D"]["ess"]["trajectory_weight_pareto_k"] == pytest.approx(k["D"])
    assert groups["E"]["ess"]["trajectory_weight_pareto_k"] is None
    assert groups["E"]["ess"]["trajectory_weight_pareto_k_na"] == E_NA
    assert "trajectory_weight_pareto_k_na" not in groups["A"]["ess"]


def test_streamed_subgroup_pareto_k_is_the_in_memory_one(panel) -> None:  # type: ignore[no-untyped-def]
    path, ds = panel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = evaluate(ds, target(ds), estimators="is,wis", bootstrap=0, groups=["grp"],
                       random_state=0)
        st = evaluate_stream(ds, CallablePolicy(target, 2, takes_dataset=True), chunk_rows=2000,
                             n_boot=0, groups=["grp"], estimators=("is", "wis"), random_state=0)
    for lv, g in mem.groups["grp"].items():
        np.testing.assert_allclose(st.groups["grp"][lv].pareto_k, g.pareto_k, rtol=1e-9)


def test_a_small_group_is_suppressed_not_fitted() -> None:
    """Cells of fewer than 11 episodes say nothing, their Pareto k included."""
    df = frame(0)
    keep = df[(df.grp != "E") | (df.id < SIZES["A"] + SIZES["B"] + SIZES["D"] + 8)]
    ds = from_frame(keep, MANIFEST, emit_warnings=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(ds, target(ds), estimators="is,wis", bootstrap=0, groups=["grp"],
                       random_state=0)
    assert res.to_dict()["groups"]["grp"]["E"] == {"suppressed": True, "n_episodes": None}


@pytest.mark.parametrize("streamed", [False, True])
def test_audit_names_the_group_whose_weights_have_a_heavy_tail(panel, streamed: bool
                                                               ) -> None:  # type: ignore[no-untyped-def]
    path, ds = panel
    cfg = FairnessAudit(action="a=call", estimator="wis", n_boot=50, n_permutations=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        res = (audit_stream(path, {"tgt": CallablePolicy(target, 2, takes_dataset=True)},
                            manifest=MANIFEST, config=cfg, chunk_rows=2000, random_state=0)
               if streamed else audit(ds, {"tgt": target(ds)}, action="a=call",
                                      estimator="wis", n_boot=50, n_permutations=0,
                                      random_state=0))
    d = res.to_dict()["policies"]["tgt"]["diagnostics"]
    by = d["ess_by_group"]
    assert by["D"]["trajectory_weight_pareto_k"] > 0.7
    assert by["A"]["trajectory_weight_pareto_k"] < 0.3
    assert by["E"]["trajectory_weight_pareto_k"] is None
    assert by["E"]["trajectory_weight_pareto_k_na"] == E_NA
    heavy = [m for m in res.warnings if m.startswith("policy 'tgt': The wis value of subgroup "
                                                     "grp=D (k ")]
    assert len(heavy) == 1 and "heavy tail within the group" in heavy[0]
    from equicare.cli._fairness import diagnostics_lines

    line = diagnostics_lines(res)[0]
    assert re.search(r"D [\d.]+ \([\d.]+%, Pareto k \d\.\d+ \(over 0\.5\)\)", line), line
    assert re.search(r"E [\d.]+ \([\d.]+%, Pareto k n/a\)", line), line


def test_audit_and_evaluate_agree_on_each_groups_k(panel) -> None:  # type: ignore[no-untyped-def]
    path, ds = panel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = audit(ds, {"tgt": target(ds)}, action="a=call", estimator="wis", n_boot=0,
                    n_permutations=0, random_state=0)
        ev = evaluate(ds, target(ds), estimators="wis", bootstrap=0, groups=["grp"],
                      random_state=0)
    diag = res["tgt"].diagnostics
    assert diag is not None
    for g, e in diag.ess_by_group.items():
        np.testing.assert_allclose(e.weight_pareto_k, ev.groups["grp"][g].pareto_k, rtol=1e-12)
