"""The Pareto tail index of the trajectory weights as a check on IS and WIS (exact truth)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame
from equicare.exceptions import LowESSWarning
from equicare.ope import evaluate
from equicare.ope._ess import pareto_k_off
from equicare.ope._pareto import pareto_k
from equicare.ope._stream_sums import episode_sums


def _manifest(groups: bool = False) -> dict:
    man = {"dataset": {"episode": "id", "time": "t", "states": ["b"],
                       "behavior_prob": "propensity", "gamma": 1.0},
           "actions": {"action": {"levels": 2}}, "reward": {"column": "r"}}
    if groups:
        man["dataset"]["groups"] = ["g"]
    return man


def _frame(a: float, n: int, seed: int) -> pd.DataFrame:
    """One decision per episode; current practice treats with probability ``b ~ Beta(a, 1)``.

    The target always treats, and a treated episode's reward is ``1 + N(0, 1)``: its value is
    exactly 1. Its weight ``1 / b`` on the treated episodes has the tail
    ``P(W > x) ~ x^{-(a + 1)}``: Pareto index ``k = 1 / (a + 1)``.
    """
    rng = np.random.default_rng(seed)
    b = np.clip(rng.beta(a, 1.0, n), 1e-12, 1.0)
    act = (rng.random(n) < b).astype(int)
    r = np.where(act == 1, 1.0 + rng.standard_normal(n), 0.0)
    return pd.DataFrame({"id": np.arange(n), "t": 0, "b": b, "action": act,
                         "propensity": np.where(act == 1, b, 1.0 - b), "r": r,
                         "g": np.where(rng.random(n) < 0.5, "x", "y")})


def _bandit(a: float, n: int, seed: int, groups: bool = False):
    """:func:`_frame`'s dataset and the target's probabilities (always treat)."""
    ds = from_frame(_frame(a, n, seed), _manifest(groups), emit_warnings=False)
    return ds, np.tile([0.0, 1.0], (n, 1))


@pytest.mark.parametrize("k", [0.3, 0.8])
def test_the_tail_index_of_pareto_samples_is_recovered(k):
    est = [pareto_k(np.random.default_rng(s).pareto(1 / k, 20_000)) for s in range(10)]
    assert np.mean(est) == pytest.approx(k, abs=0.04)
    assert np.std(est) < 0.1


def test_no_tail_index_without_a_tail():
    assert np.isnan(pareto_k(np.ones(5000)))  # on-policy: every weight 1
    assert np.isnan(pareto_k(np.random.default_rng(0).pareto(1.0, 60)))  # 12 tail weights < 20
    w = np.random.default_rng(1).pareto(2.0, 5000)
    assert pareto_k(1e250 * w) == pytest.approx(pareto_k(w), abs=1e-9)  # scale-free, no overflow


def test_streamed_chunks_keep_the_tail_the_fit_reads():
    w = np.random.default_rng(2).pareto(1.5, 30_000)
    layout = (("is",), {"is": slice(0, 1)}, 1)
    parts = [episode_sums(np.c_[c, c], np.zeros((0, c.size)), c, n_steps=c.size, gamma=1.0,
                          layout=layout) for c in np.array_split(w, 7)]
    total = sum(parts[1:], parts[0])
    assert pareto_k(total.top_weights, total.n_episodes) == pareto_k(w)


@pytest.mark.parametrize(("mean", "off"), [(0.55, True), (0.45, False), (float("nan"), False),
                                           (None, False)])
def test_the_rule(mean, off):
    assert pareto_k_off(mean) is off


def test_a_k_just_over_the_limit_does_not_read_as_the_limit():
    """k = 0.503 printed 'Pareto k 0.50 ... (above 0.5: ...)' on a Medicaid panel."""
    from equicare.cli._ope import pareto_k_clause
    from equicare.ope._ess import heavy_tail_message

    assert "Pareto k 0.503 over the largest 424 of 20,000 episodes (above 0.5" in (
        heavy_tail_message(["is"], 0.503, 20_000, ["dr"]))
    assert pareto_k_clause(0.503) == ", Pareto k 0.503 (over 0.5: no finite variance)"
    assert pareto_k_clause(0.24) == ", Pareto k 0.24" and pareto_k_clause(float("nan")) == ""


def test_heavy_tailed_weights_are_warned_and_light_ones_not():
    ds, probs = _bandit(0.25, 4000, seed=0)  # k = 0.8
    with pytest.warns(LowESSWarning, match=r"The is and wis values rest on trajectory importance "
                      r"weights with a heavy tail: Pareto k 0\.\d+ over the largest 189 of "
                      r"4,000 episodes \(above 0\.5") as rec:
        res = evaluate(ds, probs, estimators="is,wis,fqe", bootstrap=0, groups=[],
                       diagnose_support=False, q_model="linear")
    assert len(rec) == 1
    assert res.ess.weight_pareto_k > 0.5 and res.ess.trajectory > 11
    assert res.to_dict()["ess"]["trajectory_weight_pareto_k"] == res.ess.weight_pareto_k
    ds, probs = _bandit(5.0, 4000, seed=0)  # k = 1/6
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowESSWarning)
        res = evaluate(ds, probs, estimators="is,wis", bootstrap=0, groups=[],
                       diagnose_support=False)
    assert res.ess.weight_pareto_k < 0.5


@pytest.mark.slow
def test_the_warning_marks_the_intervals_that_undercover():
    """Over 40 panels the heavy tail's IS intervals cover the exact value 1 far less than 95%
    and the warning fires on nearly every one; the light tail's cover and are never warned."""
    cover: dict[float, list[bool]] = {0.25: [], 5.0: []}
    warned = {0.25: 0, 5.0: 0}
    for a in cover:
        for seed in range(40):
            ds, probs = _bandit(a, 2000, seed=100 + seed)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always", LowESSWarning)
                res = evaluate(ds, probs, estimators="is", bootstrap=200, groups=[],
                               diagnose_support=False, random_state=seed)
            warned[a] += any("heavy tail" in str(w.message) for w in rec)
            lo, hi = res.estimates["is"].ci
            cover[a].append(lo <= 1.0 <= hi)
    assert np.mean(cover[0.25]) < 0.85 and warned[0.25] >= 36
    assert np.mean(cover[5.0]) >= 0.85 and warned[5.0] == 0


def test_a_few_repeated_weights_are_not_a_tail():
    """Short stays over few actions give weights with a handful of values: no continuous tail
    to fit (a 4-step tabular panel's gave k = 1.05 before, and a false warning)."""
    w = np.random.default_rng(3).choice([0.5, 1.0, 2.0, 4.0, 8.0, 16.0], size=4000,
                                        p=[0.4, 0.3, 0.15, 0.1, 0.04, 0.01])
    assert np.isnan(pareto_k(w))


@pytest.mark.parametrize("chunk_rows", [None, 700])
def test_the_audit_warns_on_the_same_rule_in_memory_and_streamed(tmp_path, chunk_rows):
    """The audit's IS values rest on the same weights: it gave no warning at k = 0.8."""
    from equicare.exceptions import SupportWarning
    from equicare.fairness import FairnessAudit, audit_stream
    from equicare.policy import FixedActionPolicy

    ds, probs = _bandit(0.25, 4000, seed=0, groups=True)
    cfg = FairnessAudit(action="action=1", estimator="is", n_boot=0, n_permutations=0)
    always = {"always": FixedActionPolicy(action=1, n_actions=2)}
    with pytest.warns(SupportWarning) as rec:
        if chunk_rows is None:
            res = cfg.run(ds, always, random_state=0)
        else:
            path = tmp_path / "bandit.parquet"
            _frame(0.25, 4000, seed=0).to_parquet(path, index=False, row_group_size=500)
            res = audit_stream(path, always, manifest=_manifest(groups=True), config=cfg,
                               chunk_rows=chunk_rows, random_state=0)
    msgs = [str(w.message) for w in rec]
    assert any(m.startswith("policy 'always': The is value rests on trajectory importance "
                            "weights with a heavy tail: Pareto k") for m in msgs), msgs
    k = res.to_dict()["policies"]["always"]["diagnostics"]["ess"]["trajectory_weight_pareto_k"]
    with pytest.warns(LowESSWarning, match="heavy tail"):
        mem = evaluate(ds, probs, estimators="is", bootstrap=0, groups=[],
                       diagnose_support=False)
    assert k == pytest.approx(mem.ess.weight_pareto_k, abs=1e-12) and k > 0.5
