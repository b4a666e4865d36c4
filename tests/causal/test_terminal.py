"""Terminal outcomes: an ended stay is a transition to a new stay's first state (reset chain).

The truth is the exact effects of the renewed process by dynamic programming: a discrete mediated
MDP whose stays end with probability ``p_end(s, a, m)`` and pay their outcome on the ending row
(ICU survival at discharge), renewed at a first state ~ ``init`` (the DP of
:class:`~equicare.sim.mediation.DiscreteMediationMDP`, long-run reward per step = expected
outcome of a stay / expected stay length). Per stay (:func:`_per_stay_truth`): each process's
eta divided by the end rate of its state chain, checked against the expected outcome of a stay
of the episodic model by its absorbing chain.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.causal import DynamicMediation, from_dataset
from equicare.causal._data import transition_rows
from equicare.data import from_frame
from equicare.exceptions import SupportWarning
from equicare.sim.mediation import (
    ETA_KEYS,
    DiscreteMediationMDP,
    effects_from_etas,
    random_mediation_mdp,
)

MANIFEST = {"dataset": {"episode": "pid", "time": "t", "states": ["x"], "mediators": ["m"],
                        "terminal": "done"},
            "actions": {"a": {"levels": 2}}, "reward": {"column": "r"}}
KEYS = ("ide", "ime", "dde", "dme", "total")


def _stays():
    """The episodic model, its renewed (reset) MDP and a target policy."""
    base = random_mediation_mdp(4, 2, 3, random_state=3, concentration=0.7)
    rng = np.random.default_rng(7)
    shape = base.reward_mean.shape
    p_end = rng.uniform(0.03, 0.25, size=shape)
    outcome = 3 * rng.uniform(-1, 1, size=shape)
    reset = DiscreteMediationMDP(
        init=base.init, behavior=base.behavior, mediator=base.mediator,
        reward_mean=p_end * outcome,
        transition=(1 - p_end)[..., None] * base.transition + p_end[..., None] * base.init,
        name="reset")
    return base, p_end, outcome, reset, np.array([[0.2, 0.8]] * shape[0])


def _per_stay_truth() -> tuple[dict[str, float], dict[str, float]]:
    """Exact per-stay effects and end rates of the renewed process (target vs a0 = 0).

    The end rate of a state chain is the stationary mean of the end probability under the
    chain's action and mediator (G: a0 with a mediator drawn as if pi_e had acted); pi_e_a0 and
    pi_e_a0star share pi_e's chain. Each per-stay value is checked against the expected outcome
    of one stay of the episodic model, ``init @ (I - Q)^-1 r`` with ``Q`` the chain's
    transitions among the states while the stay goes on.
    """
    base, p_end, outcome, reset, tgt = _stays()
    pie, pi0, pm = reset.policy_table(tgt), reset.policy_table(0), reset.mediator
    pe_m = np.einsum("sa,sam->sm", pie, pm)
    law = {"pi_e": np.einsum("sa,sam->sam", pie, pm),        # (s, a, m) of each chain
           "G": np.einsum("sm,sa->sam", pe_m, pi0), "a0": np.einsum("sa,sam->sam", pi0, pm)}
    dist = reset.stationary_distributions(tgt, 0)
    rate = {k: float(dist[k] @ np.einsum("sam,sam->s", w, p_end)) for k, w in law.items()}
    chain = dict(zip(ETA_KEYS, ("pi_e", "pi_e", "pi_e", "G", "a0"), strict=True))
    etas = reset.exact_etas(tgt, 0)
    value = {k: etas[k] / rate[chain[k]] for k in ETA_KEYS}
    # reward law of each process: pi_e_a0 a0 with pi_e's mediator, the others a0's (or pi_e's)
    pay = {"pi_e": law["pi_e"], "pi_e_a0": law["G"], "pi_e_a0star": law["a0"],
           "G": law["a0"], "a0": law["a0"]}
    for k in ETA_KEYS:
        stay_on = np.einsum("sam,samt->st", law[chain[k]],
                            (1 - p_end)[..., None] * base.transition)
        per_stay = base.init @ np.linalg.solve(np.eye(stay_on.shape[0]) - stay_on,
                                               np.einsum("sam,sam->s", pay[k], p_end * outcome))
        assert abs(per_stay - value[k]) < 1e-10, (k, per_stay, value[k])
    return effects_from_etas(value), rate


def _panel(n: int, horizon: int, seed: int) -> pd.DataFrame:
    """Stays of the episodic model: outcome on the ending row (``done`` = 1); stays still
    going at ``horizon`` rows are censored (their last row is not terminal)."""
    base, p_end, outcome, _, _ = _stays()
    rng = np.random.default_rng(seed)
    S = base.init.size

    def draw(p):
        return (p.cumsum(1) < rng.random(p.shape[0])[:, None]).sum(1)

    s = draw(np.broadcast_to(base.init, (n, S)))
    alive = np.ones(n, dtype=bool)
    cols = {k: [] for k in ("pid", "t", "x", "a", "m", "r", "done")}
    for t in range(horizon):
        idx = np.flatnonzero(alive)
        st = s[idx]
        a = draw(base.behavior[st])
        m = draw(base.mediator[st, a])
        end = rng.random(idx.size) < p_end[st, a, m]
        for k, v in zip(cols, (idx, np.full(idx.size, t), st, a, m,
                               np.where(end, outcome[st, a, m], 0.0), end.astype(int)),
                        strict=True):
            cols[k].append(v)
        s[idx] = draw(base.transition[st, a, m])
        alive[idx[end]] = False
    df = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    return df.sort_values(["pid", "t"]).reset_index(drop=True)


def _three_stays():
    """Stays 0 and 2 end (terminal rows 1 and 6), stay 1 is censored after 3 rows."""
    df = pd.DataFrame({"pid": [0, 0, 1, 1, 1, 2, 2], "t": [0, 1, 0, 1, 2, 0, 1],
                       "x": [0.0, 1, 2, 3, 4, 5, 6], "m": [0, 1, 0, 1, 0, 1, 0],
                       "a": [0, 1, 1, 0, 1, 0, 1], "r": [0, 1.0, 0, 0, 0.5, 0, 2.0],
                       "done": [0, 1, 0, 0, 0, 0, 1]})
    return from_frame(df, MANIFEST, emit_warnings=False)


def test_a_terminal_row_goes_to_the_next_stays_first_row_and_a_censored_one_is_a_step():
    ds = _three_stays()
    rows, next_rows = transition_rows(ds)
    # stay 0 ends (-> stay 1's first row 2); stay 1 is censored (row 4 kept, its next row a
    # placeholder: itself); stay 2 ends (-> stay 0's first row, the panel's order taken round)
    assert rows.tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert next_rows.tolist() == [1, 2, 3, 4, 4, 6, 0]
    md = from_dataset(ds)
    assert md.n_renewed == 2 and md.n_censored == 1
    # a stay's end is its terminal row; the censored stay's last row is a step that did not
    # end it, with its reward, and no next state (weight 0)
    assert md.stay_ends is not None and md.stay_ends.tolist() == [0, 1, 0, 0, 0, 0, 1]
    assert md.rewards.tolist() == [0, 1.0, 0, 0, 0.5, 0, 2.0]
    np.testing.assert_array_equal(md.next_states[:, 0], [1, 2, 3, 4, 4, 6, 0])
    # fewer than CENSORING_POOL_MIN uncensored rows go on: one hazard for every step, 1 of the
    # 5 non-ending rows censored -> weight 5 / 4 on the 4 others, 1 on terminal rows
    assert md.next_weight is not None
    assert md.next_weight.tolist() == [1.25, 1, 1.25, 1.25, 0, 1.25, 1]


def test_the_censoring_hazard_is_estimated_per_step(monkeypatch):
    """Steps 0 and 1 have 3 and 1 uncensored non-ending rows; step 2 only the censored row
    4, pooled with step 1 (no uncensored row of its own): hazard 1/2 there, weight 2."""
    from equicare.causal import _data

    monkeypatch.setattr(_data, "CENSORING_POOL_MIN", 1)
    ds = _three_stays()
    rows, _ = transition_rows(ds)
    w = _data.next_state_weights(ds, rows)
    assert w is not None and w.tolist() == [1, 1, 1, 2, 0, 1, 1]
    # over the rows that do not end their stay the weights sum to their count
    assert w[~ds.terminals].sum() == (~ds.terminals).sum()


def test_without_terminal_rows_a_censored_last_row_is_left_out():
    """No terminal row: which rows are last depends on the window only, so they are dropped
    (the rest are an unbiased sample of transitions) and no weight is needed."""
    df = pd.DataFrame({"pid": [0, 0, 1, 1, 1], "t": [0, 1, 0, 1, 2], "x": [0.0, 1, 2, 3, 4],
                       "m": [0, 1, 0, 1, 0], "a": [0, 1, 1, 0, 1], "r": [0.5, 0.2, 1.0, 0.3, 0.1],
                       "done": 0})
    ds = from_frame(df, MANIFEST, emit_warnings=False)
    rows, next_rows = transition_rows(ds)
    assert rows.tolist() == [0, 2, 3] and next_rows.tolist() == [1, 3, 4]
    md = from_dataset(ds)
    assert md.next_weight is None and md.n_censored == 0 and md.n_renewed == 0


def test_effects_of_terminal_outcomes_match_the_renewed_process_dp_truth():
    """One panel of 3,000 stays (about 22,000 rows, outcomes only on the 13 % of rows that end
    a stay): DM and MR within 0.05 of the exact effects (their Monte-Carlo SDs on 400-stay
    panels are 0.02-0.05, so about 0.01-0.02 here), MR's 95 % intervals covering them."""
    _, _, _, reset, tgt = _stays()
    truth = reset.exact_effects(tgt, 0)
    ds = from_frame(_panel(3000, 60, seed=11), MANIFEST, emit_warnings=False)
    assert ds.terminals.mean() > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        res = DynamicMediation(n_bootstrap=0, estimators=("dm", "mr")).estimate(
            ds, reset.policy_fn(tgt), 0, random_state=0)
    for k in KEYS:
        for name in ("dm", "mr"):
            assert abs(res[name].effects[k].value - truth[k]) < 0.05, (name, k, truth[k])
        lo, hi = res["mr"].effects[k].ci
        assert lo <= truth[k] <= hi, (k, lo, hi, truth[k])
    # the reader is told the effects are rates of the renewed process (JSON, caption)
    ended = int(ds.terminals.sum())
    assert res.n_renewed == ended and res.to_dict()["n_renewed"] == ended
    assert type(res).from_dict(res.to_dict()).n_renewed == ended
    assert f"{ended:,} stays end in a terminal row" in res.caption()


def test_per_stay_effects_match_the_renewed_process_dp_truth():
    """The same panel per stay (each eta over its chain's end rate): DM, MIS and MR within 0.1
    of the exact per-stay effects (per-stay SEs 0.05-0.09 here, below), their 95 % intervals
    (MR's by the delta method, DM's and MIS's from the refitting bootstrap) covering them, and
    the end rates within 10 % of the truth; JSON, round trip and caption carry them."""
    truth, rate = _per_stay_truth()
    _, _, _, reset, tgt = _stays()
    ds = from_frame(_panel(3000, 60, seed=11), MANIFEST, emit_warnings=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        res = DynamicMediation(n_bootstrap=100, estimators=("dm", "mis", "mr")).estimate(
            ds, reset.policy_fn(tgt), 0, random_state=0)
    for name in ("dm", "mis", "mr"):
        ps = res[name].per_stay
        assert ps is not None
        for k in KEYS:
            e = ps.effects[k]
            assert abs(e.value - truth[k]) < 0.1, (name, k, e.value, truth[k])
            assert e.ci[0] <= truth[k] <= e.ci[1], (name, k, e.ci, truth[k])
            assert 0.02 < e.se < 0.2, (name, k, e.se)
        for k, v in rate.items():
            assert abs(ps.end_rate[k] / v - 1) < 0.1, (name, k, ps.end_rate[k], v)
        # the per-stay values are the etas over their chains' end rates
        assert ps.value["pi_e_a0"] == pytest.approx(res[name].eta["pi_e_a0"]
                                                    / ps.end_rate["pi_e"], rel=1e-12)
        assert ps.value["G"] == pytest.approx(res[name].eta["G"] / ps.end_rate["G"], rel=1e-12)
    d = res.to_dict()["estimators"]["mr"]["per_stay"]
    assert set(d) == {*KEYS, "value", "end_rate", "stay_length", "note"}
    assert d["stay_length"]["a0"] == pytest.approx(1 / d["end_rate"]["a0"])
    back = type(res).from_dict(res.to_dict())
    assert back["mr"].per_stay == res["mr"].per_stay
    assert "Effects per stay" in res.per_stay_caption()


def test_per_stay_effects_are_absent_without_terminal_rows():
    """Every stay censored (no terminal row, a reward per step): no per-stay effects."""
    df = _panel(300, 60, seed=3)
    df["done"], df["r"] = 0, df["m"] + 0.1 * df["x"]
    ds = from_frame(df, MANIFEST, emit_warnings=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = DynamicMediation(n_bootstrap=0, estimators=("dm", "mr")).estimate(
            ds, 1, 0, random_state=0)
    assert res["mr"].per_stay is None and res["dm"].per_stay is None
    assert res.to_dict()["estimators"]["mr"]["per_stay"] is None
    assert res.per_stay_caption() is None


@pytest.mark.slow
def test_terminal_outcomes_over_100_panels_are_unbiased_and_covered():
    """100 panels of 400 stays against the DP truth. Per step (measured: |bias| <= 0.0061 for
    DM and MR, SDs 0.019-0.062, MR's 95 % intervals (200 replicates) covering in 0.91-0.94).
    Per stay (docs/mediation.md "Effects per stay": |bias| <= 0.057 for DM, MIS and MR on SDs
    0.15-0.61, coverage 0.89-0.98): mean within 3 Monte-Carlo SEs + 0.05 of the truth,
    coverage >= 0.85; an effect without a value (an end rate estimated <= 0, 2 of MR's 100)
    counts as not covered, and at most 5 of 100 may have none."""
    _, _, _, reset, tgt = _stays()
    truth = reset.exact_effects(tgt, 0)
    stay_truth, _ = _per_stay_truth()
    names = ("dm", "mis", "mr")
    vals = {k: [] for k in KEYS}
    cover = {k: [] for k in KEYS}
    stay_vals = {k: [] for k in KEYS}
    stay_cover = {k: [] for k in KEYS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(100):
            ds = from_frame(_panel(400, 60, seed=100 + r), MANIFEST, emit_warnings=False)
            res = DynamicMediation(n_bootstrap=200, estimators=names).estimate(
                ds, reset.policy_fn(tgt), 0, random_state=r)
            for k in KEYS:
                vals[k].append([res[n].effects[k].value for n in ("dm", "mr")])
                lo, hi = res["mr"].effects[k].ci
                cover[k].append(lo <= truth[k] <= hi)
                stay = [res[n].per_stay.effects[k] for n in names]
                stay_vals[k].append([np.nan if e.value is None else e.value for e in stay])
                stay_cover[k].append([e.ci is not None and e.ci[0] <= stay_truth[k] <= e.ci[1]
                                      for e in stay])
    for k in KEYS:
        v, sv = np.array(vals[k]), np.array(stay_vals[k])
        print(k, "truth", round(truth[k], 4), "bias dm, mr", (v.mean(0) - truth[k]).round(4),
              "sd", v.std(0, ddof=1).round(4), "mr coverage", np.mean(cover[k]))
        print(f"{k} per stay: truth {stay_truth[k]:.4f} bias dm, mis, mr",
              (np.nanmean(sv, 0) - stay_truth[k]).round(4), "sd",
              np.nanstd(sv, 0, ddof=1).round(4), "coverage", np.mean(stay_cover[k], axis=0))
    for k in KEYS:
        v = np.array(vals[k])
        se = v.std(axis=0, ddof=1) / np.sqrt(v.shape[0])
        assert (np.abs(v.mean(axis=0) - truth[k]) < 3 * se + 0.01).all(), (k, v.mean(0))
        assert np.mean(cover[k]) >= 0.85, (k, np.mean(cover[k]))
        sv = np.array(stay_vals[k])
        ok = np.isfinite(sv)
        assert (ok.sum(axis=0) >= 95).all(), (k, ok.sum(axis=0))
        se = np.nanstd(sv, axis=0, ddof=1) / np.sqrt(ok.sum(axis=0))
        assert (np.abs(np.nanmean(sv, axis=0) - stay_truth[k]) < 3 * se + 0.05).all(), k
        assert (np.mean(stay_cover[k], axis=0) >= 0.85).all(), (k, np.mean(stay_cover[k], 0))


def test_an_end_rate_outside_0_1_or_a_value_outside_the_stays_outcomes_is_noted():
    """On the ICU panel MR's end rates were 5.8 (pi_e) and -8.4 (G) and, with a random-feature
    basis, its survival per stay 1.06 under the target: neither a rate nor a survival. The first
    leaves the values resting on those chains unestimated; the second is noted."""
    from equicare.causal._dynamic import END_RATE_MESSAGE, STAY_RANGE_MESSAGE, per_stay_note

    ok = per_stay_note(np.array([0.2, 0.3, 0.25]), np.array([0.8, 0.9, 0.7, 0.6, 0.85]),
                       (0.0, 1.0), "mr")
    assert ok is None
    note = per_stay_note(np.array([5.8, -8.4, 0.88]),
                         np.array([np.nan, np.nan, np.nan, np.nan, 0.87]), (0.0, 1.0), "mr")
    assert note == END_RATE_MESSAGE.format(name="mr", chains="pi_e, G", values="5.8, -8.4")
    note = per_stay_note(np.array([0.19, 0.25, 0.2]), np.array([1.063, 0.9, 1.34, 0.72, 0.9]),
                         (0.0, 1.0), "mr")
    assert note == STAY_RANGE_MESSAGE.format(name="mr", where="'pi_e' (1.063), 'pi_e_a0star' "
                                             "(1.34) lie", them="them")
