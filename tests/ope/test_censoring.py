"""Censored stays: the stationary table's check against the window table, with exact truth."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataWarning
from equicare.ope import evaluate
from equicare.spaces import FactoredActionSpace

# 3 live states, 3 actions; each step ends in success (reward 1) w.p. PS, failure (0) w.p. PF,
# else moves on by PM. Outcomes come at the end of a stay; stays are cut at H steps.
PS = np.array([[0.02, 0.10, 0.05], [0.05, 0.25, 0.02], [0.15, 0.05, 0.30]])
PF = np.array([[0.05, 0.02, 0.10], [0.10, 0.03, 0.05], [0.02, 0.10, 0.05]])
PM = np.array([[[0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]],
               [[0.5, 0.4, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]],
               [[0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]]])
MU = np.array([0.5, 0.3, 0.2])
BEH = np.array([[0.5, 0.3, 0.2], [0.4, 0.3, 0.3], [0.3, 0.4, 0.3]])
TGT = np.array([[0.2, 0.6, 0.2], [0.2, 0.6, 0.2], [0.3, 0.2, 0.5]])
GAMMA = 0.9


def window_value(h: int) -> float:
    """Exact value of the first ``h`` steps under TGT (dynamic programming forward)."""
    d, v = MU.copy(), 0.0
    for t in range(h):
        v += GAMMA ** t * d @ (TGT * PS).sum(1)
        d = np.einsum("s,sat->t", d, TGT[:, :, None] * (1 - PS - PF)[:, :, None] * PM)
    return float(v)


def panel(n: int, h: int, seed: int) -> TrajectoryDataset:
    """``n`` stays under BEH, cut at ``h`` steps (vectorised over episodes)."""
    rng = np.random.default_rng(seed)
    s = rng.choice(3, size=n, p=MU)
    alive = np.ones(n, dtype=bool)
    cols: list[tuple[np.ndarray, ...]] = []
    for t in range(h):
        a = (rng.random(n)[:, None] > np.cumsum(BEH[s], axis=1)).sum(1)
        u = rng.random(n)
        win, lose = u < PS[s, a], (u >= PS[s, a]) & (u < PS[s, a] + PF[s, a])
        cols.append((np.flatnonzero(alive), s[alive], a[alive], win[alive].astype(float),
                     (win | lose)[alive], np.full(alive.sum(), t)))
        alive &= ~(win | lose)
        nxt = (rng.random(n)[:, None] > np.cumsum(PM[s, a], axis=1)).sum(1)
        s = np.where(alive, nxt, s)
    ep, st, ac, rw, te, tt = (np.concatenate(c) for c in zip(*cols, strict=True))
    order = np.lexsort((tt, ep))
    ep, st, ac, rw, te, tt = (x[order] for x in (ep, st, ac, rw, te, tt))
    offsets = np.r_[0, np.cumsum(np.bincount(ep, minlength=n))].astype(np.int64)
    return TrajectoryDataset(
        states=st.astype(np.float32)[:, None], actions=ac.astype(np.int64),
        reward_components=rw, terminals=te, episode_offsets=offsets,
        episode_ids=np.arange(n), times=tt.astype(np.int64),
        action_space=FactoredActionSpace.single(3), state_names=("s",), gamma=GAMMA,
        groups={"g": np.where(np.arange(n) % 2 == 0, "x", "y")},
        behavior_prob=BEH[st, ac], categorical=st[:, None].astype(np.int64),
        categorical_names=("cell",), categorical_levels=((0, 1, 2),))


def _fqe(ds: TrajectoryDataset, q_model: str) -> tuple[float, dict, list[str]]:
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = evaluate(ds, TGT[ds.categorical[:, 0]], estimators="fqe", q_model=q_model,
                       bootstrap=50, groups=[], diagnose_support=False, random_state=0)
    msgs = [str(w.message) for w in got if issubclass(w.category, DataWarning)]
    return res.estimates["fqe"].value, res.q_model or {}, msgs


def test_the_stationary_table_is_biased_by_a_cut_off_and_the_check_says_so():
    """Cut at 10 steps (about 18% of the stays): the stationary table, named by the user, is
    6-7% low (exact truth 0.5215), the window table within 3%, and the check names the window
    table."""
    ds = panel(5000, 10, seed=1)
    truth = window_value(10)
    assert 0.12 < ds.censored.mean() < 0.25
    v_st, info, msgs = _fqe(ds, "tabular_stationary")
    assert v_st / truth - 1 < -0.04
    c = info["censoring"]
    assert c["window"] == pytest.approx(truth, rel=0.03)
    assert c["stationary"] == pytest.approx(v_st, rel=1e-12)
    assert c["warning"] and c["difference_pct"] < -4 and not c["switched_to_window"]
    assert abs(c["stationary"] - c["window"]) > 2 * c["difference_se"]
    assert any("tabular_window" in m and "censored" in m for m in msgs)
    v_win, info_w, _ = _fqe(ds, "tabular_window")
    assert v_win == pytest.approx(c["window"], rel=1e-12)
    assert "censoring" not in info_w  # only the stationary table is checked


def test_auto_uses_the_window_table_when_the_check_finds_the_bias():
    """The default: auto's criterion picks the stationary table (it cannot see the bias); the
    check replaces it by the window table, for FQE, DR and WDR and within subgroups, and says so
    in the JSON instead of warning."""
    from equicare.cli._ope import q_model_line

    ds = panel(5000, 10, seed=1)
    truth = window_value(10)
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = evaluate(ds, TGT[ds.categorical[:, 0]], estimators=("fqe", "dr", "wdr"),
                       bootstrap=50, groups=["g"], diagnose_support=False, random_state=0)
    assert not [w for w in got if "censored" in str(w.message)]
    q = res.q_model or {}
    assert q["chosen"] == "tabular_window"
    assert q["replaced"]["criterion_choice"] == "tabular_stationary"
    assert q["censoring"]["switched_to_window"] and q["censoring"]["warning"]
    from equicare.ope._evaluate import FQE_VARIANCE_ONLY

    # auto's bias estimate was of the other table: FQE's interval is the bootstrap's alone
    assert res.settings["fqe_interval"] == FQE_VARIANCE_ONLY
    v_win, _, _ = _fqe(ds, "tabular_window")
    assert res.estimates["fqe"].value == pytest.approx(v_win, rel=1e-12)
    assert res.estimates["fqe"].value == pytest.approx(truth, rel=0.03)
    for k in ("dr", "wdr"):
        assert res.estimates[k].value == pytest.approx(truth, rel=0.03)
    fixed = evaluate(ds, TGT[ds.categorical[:, 0]], estimators=("fqe",), q_model="tabular_window",
                     bootstrap=50, groups=["g"], diagnose_support=False, random_state=0)
    for lv in ("x", "y"):
        assert res.groups["g"][lv].estimates["fqe"].value == pytest.approx(
            fixed.groups["g"][lv].estimates["fqe"].value, rel=1e-12)
    line = q_model_line(res) or ""
    assert "tabular_stationary replaced by tabular_window" in line and "censored" in line


def test_auto_checks_its_stationary_table_when_it_pools_over_a_column():
    """With a second categorical column that does not change the dynamics, auto chose
    ``tabular_stationary[cell]`` and the in-memory check compared that name with
    ``"tabular_stationary"``: it never ran, so the biased table stayed in memory while the
    streamed evaluation switched (a daily panel pooled over its program tier: DR 32.1 in memory
    against 35.2 streamed, disjoint intervals). The check now runs on the table's config."""
    ds = panel(5000, 10, seed=1)
    site = np.repeat(np.arange(ds.n_episodes) % 3, np.diff(ds.episode_offsets))
    pooled = replace(ds, categorical=np.c_[ds.categorical[:, 0], site],
                     categorical_names=("cell", "site"), categorical_levels=((0, 1, 2),) * 2,
                     _cache={})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = evaluate(pooled, TGT[ds.categorical[:, 0]], estimators=("fqe", "dr"),
                       bootstrap=0, groups=[], diagnose_support=False, random_state=0)
    q = res.q_model or {}
    assert q["cells"] == ["cell"]  # auto pooled over site
    assert q["replaced"]["criterion_choice"] == "tabular_stationary[cell]"
    assert q["chosen"] == "tabular_window" and q["censoring"]["switched_to_window"]
    assert res.estimates["fqe"].value == pytest.approx(window_value(10), rel=0.03)


def test_no_censoring_no_check():
    ds = panel(2000, 200, seed=2)
    assert not ds.censored.any()
    _, info, msgs = _fqe(ds, "tabular_stationary")
    assert "censoring" not in info
    assert not any("censored" in m for m in msgs)


def test_censoring_too_rare_to_move_the_value_is_not_checked():
    """Three censored stays of 3,000 cannot move the value by 2% (their share times the largest
    return): the window table is not fitted and nothing is reported."""
    from dataclasses import replace

    from equicare.ope._censoring import CENSORING_MIN_PCT, censoring_check
    from equicare.ope._fqe import FQEConfig, fit_fqe_logged

    ds = panel(3000, 200, seed=3)
    terminals = ds.terminals.copy()
    terminals[(ds.episode_offsets[1:] - 1)[:3]] = False  # three stays censored
    cut = replace(ds, terminals=terminals, _cache={})
    pe = TGT[cut.categorical[:, 0]]
    cfg = FQEConfig(model="tabular", horizon="stationary")
    fit = fit_fqe_logged(cut, pe, cfg)
    v = fit.v[cut.episode_offsets[:-1]].mean()
    assert 3 / 3000 * np.abs(cut.returns()).max() < CENSORING_MIN_PCT / 100 * v
    assert censoring_check(cut, pe, fit, cfg) is None


class _Table:
    def action_probs(self, ds):
        return TGT[ds.categorical[:, 0]]


def _chunks(ds: TrajectoryDataset, n: int = 3) -> list:
    from equicare.data import Chunk

    cuts = np.linspace(0, ds.n_episodes, n + 1).astype(int)
    return [Chunk(index=i, dataset=ds.subset(np.arange(a, b)), first_row=0)
            for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))]


def _both(ds: TrajectoryDataset, q_model: str, keys: tuple[str, ...] = ("fqe", "dr", "wdr"),
          **kw) -> tuple[tuple[dict, list[str]], tuple[dict, list[str]]]:
    """In memory and streamed over 3 chunks (``--bootstrap 0``): result JSON, DataWarnings."""
    from equicare.ope import evaluate_stream

    out = []
    for stream in (False, True):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            if stream:
                res = evaluate_stream(_chunks(ds), _Table(), estimators=keys, q_model=q_model,
                                      n_boot=0, random_state=0, diagnose_support=False, **kw)
            else:
                res = evaluate(ds, _Table(), estimators=keys, q_model=q_model, bootstrap=0,
                               diagnose_support=False, random_state=0, **kw)
        out.append((res.to_dict(), [str(w.message) for w in got
                                    if issubclass(w.category, DataWarning)]))
    return out[0], out[1]


def _same_check(got: dict, ref: dict) -> None:
    assert set(got) == set(ref)
    for k, v in ref.items():
        if isinstance(v, float):
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-15), k
        else:
            assert got[k] == v, k


@pytest.mark.usefixtures("raw_group_values")
def test_streamed_check_and_auto_switch_equal_in_memory():
    """The panel cut at 10 steps, streamed in 3 chunks: the named stationary table gets the
    in-memory check (both values, the SE of their difference, the bound, the warning), and
    auto (its streamed candidates: the stationary table and the linear model) replaces it by
    the window table as in memory: every value and jackknife interval of the in-memory window
    table, overall and per level, the JSON's choice and replacement."""
    from .test_stream import same_as_in_memory

    ds = panel(3000, 10, seed=4)
    (ref, ref_w), (got, got_w) = _both(ds, "tabular_stationary", groups=[])
    check = ref["q_model"]["censoring"]
    _same_check(got["q_model"]["censoring"], check)
    assert check["warning"] and not check["switched_to_window"]
    assert len(got_w) == len(ref_w) == 1 and "tabular_window" in got_w[0]
    assert got_w[0].split("%")[0] == ref_w[0].split("%")[0]
    same_as_in_memory(got, ref)
    (ref, _), (_, _) = _both(ds, "tabular_window", groups=["g"])
    from equicare.ope import evaluate_stream

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = evaluate_stream(_chunks(ds), _Table(), estimators=("fqe", "dr", "wdr"),
                              n_boot=0, random_state=0, diagnose_support=False,
                              groups=["g"]).to_dict()
    assert not [w for w in caught if issubclass(w.category, DataWarning)]
    q = got["q_model"]
    assert q["chosen"] == q["selection"]["chosen"] == "tabular_window"
    assert q["replaced"]["criterion_choice"] == "tabular_stationary"
    assert q["selection"]["replaced"] == q["replaced"]
    assert q["fqe_interval"].startswith("the bootstrap's alone")  # as in memory
    _same_check(q["censoring"], {**check, "switched_to_window": True})
    assert same_as_in_memory(got, ref) == 2
    assert got["estimates"]["fqe"]["value"] == pytest.approx(window_value(10), rel=0.03)
    # no censored stay: no check, no key, streamed or not
    (ref, _), (got, got_w) = _both(panel(1000, 200, seed=5), "tabular_stationary",
                                   keys=("fqe",), groups=[])
    assert "censoring" not in ref["q_model"] and "censoring" not in got["q_model"]
    assert not got_w


@pytest.mark.slow
@pytest.mark.usefixtures("raw_group_values")
def test_streamed_auto_switch_is_the_in_memory_auto():
    """auto in memory (every candidate cross-fitted: about 10 s) and streamed make the same
    choice, replacement and numbers on the cut panel."""
    from .test_stream import same_as_in_memory

    (ref, ref_w), (got, got_w) = _both(panel(3000, 10, seed=4), "auto", groups=["g"])
    assert not ref_w and not got_w
    for k in ("chosen", "replaced"):
        assert got["q_model"][k] == ref["q_model"][k]
    _same_check(got["q_model"]["censoring"], ref["q_model"]["censoring"])
    assert same_as_in_memory(got, ref) == 2


@pytest.mark.usefixtures("raw_group_values")
@pytest.mark.filterwarnings("ignore::equicare.exceptions.SupportWarning")
def test_streamed_window_table_equals_in_memory_on_a_cut_garnet_panel():
    """Garnet s50_a25_g1 (600 stays of 1 to 100+ steps) cut at windows uniform on 2-30 steps:
    q_model='tabular_window' streamed in 4 chunks gives the in-memory values, jackknife
    intervals and every level's, and its bootstrap the in-memory linearised refit of the
    window table under the same Poisson weights."""
    import sys
    from pathlib import Path

    from equicare.ope import episode_keys, evaluate_stream, poisson_weights
    from equicare.ope._bootstrap import percentile_interval
    from equicare.ope._core import combine, episode_parts
    from equicare.ope._evaluate import _with_q_refit
    from equicare.ope._fqe import FQEConfig, WindowLinearisation
    from equicare.ope._prepare import prepare

    from .test_stream import same_as_in_memory

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ope._garnet import censor_windows, make

    _, ds, pols = make("s50_a25_g1", 600, 11)
    cut, _ = censor_windows(ds, 2, 30, 3)
    cut = replace(cut, groups={"g": np.where(np.arange(cut.n_episodes) % 3 == 0, "a", "b")})
    assert cut.censored.mean() > 0.2
    pe = pols["soft_optimal"][cut.categorical[:, 0]]
    keys = ("is", "wis", "pdis", "wpdis", "fqe", "dr", "wdr")
    ref = evaluate(cut, pe, estimators=keys, q_model="tabular_window", bootstrap=0,
                   diagnose_support=False, random_state=2).to_dict()

    class Probs:
        def action_probs(self, part):
            return pols["soft_optimal"][part.categorical[:, 0]]

    got = evaluate_stream(_chunks(cut, 4), Probs(), estimators=keys, q_model="tabular_window",
                          n_boot=0, random_state=2, diagnose_support=False)
    assert got.q_model is not None and got.q_model["solver"] == "window"
    assert got.q_model["bootstrap"] == "Q-model refit linearised in every replicate"
    assert same_as_in_memory(got.to_dict(), ref) == 2
    prep = prepare(cut, pe, keys=keys[4:], q_model=FQEConfig(model="tabular", horizon="window"))
    assert isinstance(prep.qfit.lstd, WindowLinearisation)
    parts = _with_q_refit(prep, episode_parts(prep.inputs, keys[4:]), None, "absorbing")
    w = poisson_weights(episode_keys(cut.episode_ids), 200, seed=6)
    reps = combine(parts, w @ parts.matrix, w.sum(axis=1))
    boot = evaluate_stream(_chunks(cut, 4), Probs(), estimators=keys[4:],
                           q_model="tabular_window", n_boot=200, random_state=6,
                           ci_method="percentile", groups=(), diagnose_support=False)
    for k in keys[4:]:
        assert boot.estimates[k].se == pytest.approx(float(reps[k].std(ddof=1)), rel=1e-9), k
        np.testing.assert_allclose(boot.estimates[k].ci, percentile_interval(reps[k]),
                                   rtol=1e-9, err_msg=k)


def test_a_difference_of_the_sign_false_ends_cannot_cause_is_not_named_censoring():
    """Garnet s700_a25_g1 (5,000 stays) cut at windows uniform on 2-30 steps, independently of
    the state (28% censored). Rewards are never negative, so false ends can only lower the
    stationary value; here it is 5.2% above the window table's (4 standard errors) because of
    thin cells (many pairs seen once), and the window table is the further from the truth
    (-8.2% against -3.4%): no warning, and auto would not switch."""
    import sys
    from pathlib import Path

    from equicare.ope._censoring import censoring_check
    from equicare.ope._fqe import FQEConfig, fit_fqe_logged

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.ope._garnet import censor_windows, make, window_mean_value

    mdp, ds, pols = make("s700_a25_g1", 5000, 200)
    cut, _ = censor_windows(ds, 2, 30, 299)
    assert (cut.rewards >= 0).all()
    cfg = FQEConfig(model="tabular", horizon="stationary")
    pe = pols["soft_optimal"][cut.categorical[:, 0]]
    c = censoring_check(cut, pe, fit_fqe_logged(cut, pe, cfg), cfg)
    assert c is not None and c.difference_se is not None
    truth = window_mean_value(mdp, pols["soft_optimal"], 2, 30)
    assert c.stationary - c.window > 2 * c.difference_se and c.difference_pct > 2
    assert abs(c.window / truth - 1) > abs(c.stationary / truth - 1)
    assert not c.warn


def test_with_costs_the_check_looks_for_the_opposite_sign():
    """Rewards never positive (a cost at the good end): false ends raise the stationary value,
    and the check warns for that sign; mixed signs allow either."""
    from dataclasses import replace

    from equicare.ope._censoring import _censoring_direction

    ds = panel(5000, 10, seed=1)
    cost = replace(ds, reward_components=-ds.reward_components, _cache={})
    assert (cost.rewards <= 0).all()
    _, info, msgs = _fqe(cost, "tabular_stationary")
    c = info["censoring"]
    assert c["warning"] and c["stationary"] > c["window"]
    assert any("tabular_window" in m for m in msgs)
    assert _censoring_direction(np.array([0.0, 1.0])) == -1
    assert _censoring_direction(np.array([0.0, -1.0])) == 1
    assert _censoring_direction(np.array([-1.0, 1.0])) == 0
