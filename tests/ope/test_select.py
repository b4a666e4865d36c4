"""q_model='auto': candidates, scores, the choice, and how they are reported; logged support."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from equicare.exceptions import InvalidParameterError, LowESSWarning, SupportWarning
from equicare.ope import _select as select_mod
from equicare.ope import evaluate
from equicare.ope._select import AUTO_CANDIDATES, candidate_config, select_q_model
from tests.ope._garnet import SUPPORTED, make


@pytest.fixture(scope="module")
def garnet():
    return make("s50_a5_g1", 400, seed=7)


def test_auto_scores_every_candidate_and_picks_the_lowest(garnet, monkeypatch):
    _, ds, pols = garnet
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    monkeypatch.setattr(select_mod, "AUTO_FLEXIBLE_WORK", 10)  # gbm/mlp skipped: too slow
    sel = select_q_model(ds, pe, random_state=0)
    assert set(sel.candidates) == set(AUTO_CANDIDATES)
    assert set(sel.skipped) == {"gbm", "mlp"} and "> 10 (slow)" in sel.skipped["gbm"]
    scored = {k: v for k, v in sel.candidates.items() if v is not None}
    assert set(scored) == {"tabular_stationary", "tabular_backward", "linear"}
    best = min(scored, key=scored.get)
    ref = sel.reference
    assert ref == "tabular_stationary"  # categorical states: the table's ratio weighs the errors
    gap = abs(sel.bias[ref]) - abs(sel.bias[best])
    margin = 2.0 * np.hypot(sel.bias_se[ref], sel.bias_se[best])
    assert sel.chosen == (best if gap > margin else ref)
    assert all(v >= 0 for v in scored.values())
    d = sel.to_dict()
    assert d["chosen"] == sel.chosen and d["n_folds"] == 2 and "td_error" in d
    assert d["reference"] == ref and "2 standard errors" in d["criterion"]


def test_auto_is_the_default_and_reported_in_the_result(garnet, monkeypatch):
    _, ds, pols = garnet
    pe = pols["mixture_30"][ds.categorical[:, 0]]
    monkeypatch.setattr(select_mod, "AUTO_FLEXIBLE_WORK", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SupportWarning)
        res = evaluate(ds, pe, bootstrap=50, groups=[])
    q = res.to_dict()["q_model"]
    assert q["chosen"] in AUTO_CANDIDATES and set(q["candidates"]) == set(AUTO_CANDIDATES)
    assert res.settings["q_model"] == "auto"
    if q["chosen"] in ("tabular_stationary", "linear"):
        assert res.settings["nuisance"] == "Q-model refit linearised in every replicate"


def test_auto_without_categorical_states_skips_the_tables(monkeypatch):
    from tests.ope._mdp import BEHAVIOR, TARGET, small_mdp

    monkeypatch.setattr(select_mod, "AUTO_FLEXIBLE_WORK", 10)
    mdp = small_mdp(end=True, horizon=4)
    ds = mdp.sample(BEHAVIOR, 200, seed=0)
    from dataclasses import replace

    ds = replace(ds, categorical=None, categorical_names=(), categorical_levels=())
    sel = select_q_model(ds, TARGET[np.argmax(ds.states, axis=1)], random_state=0)
    assert sel.skipped["tabular_stationary"] == "no categorical states"
    assert sel.chosen == "linear" and sel.n_folds == 0  # the only candidate: no cross-fitting


def test_never_logged_pairs_draw_a_support_warning_with_their_share():
    """Logged propensities: the support check is the empirical cell support (no model fit)."""
    _, ds, pols = make("s700_a25_g1", 250, seed=8)
    pe = pols["unsupported"][ds.categorical[:, 0]]
    n_a = ds.n_actions
    s = ds.categorical[:, 0]
    logged = np.zeros((int(s.max()) + 1, n_a), bool)
    logged[s, ds.actions] = True
    share = 100.0 * float(np.mean((pe * ~logged[s]).sum(axis=1)))
    # the never-logged pairs' weight is missing from the sample: WIS's weights average
    # well below 1 (1 minus about that share), which the weight-mean check says too
    with (pytest.warns(SupportWarning, match=f"{share:.2f}% of its probability mass"),
          pytest.warns(LowESSWarning, match="The wis value rests on .* average 0")):
        res = evaluate(ds, pe, estimators="wis,fqe,dr", q_model="tabular_stationary",
                       bootstrap=20, groups=[])
    assert res.support.share_pct == pytest.approx(share, rel=1e-9)
    assert "empirical per categorical cell" in res.behavior_model["support_check"]
    assert "fast numeric" not in res.behavior_model["support_check"]


def test_the_reference_is_kept_unless_clearly_beaten():
    from equicare.ope._select import choose_with_reference

    scores = {"tabular_stationary": 0.004, "linear": 0.001}
    se = {"tabular_stationary": 0.03, "linear": 0.04}  # hypot = 0.05, two of them 0.1
    # linear's |bias| is smaller by 0.09 < 0.1: the reference stays
    assert choose_with_reference(scores, {"tabular_stationary": 0.11, "linear": -0.02}, se,
                                 "tabular_stationary") == "tabular_stationary"
    # smaller by 0.11 > 0.1: the lowest score wins
    assert choose_with_reference(scores, {"tabular_stationary": -0.12, "linear": 0.01}, se,
                                 "tabular_stationary") == "linear"
    # with n_se=1 the margin is 0.05
    assert choose_with_reference(scores, {"tabular_stationary": 0.11, "linear": -0.02}, se,
                                 "tabular_stationary", n_se=1.0) == "linear"
    # the reference is the lowest, or not fitted: plain minimum
    assert choose_with_reference({"tabular_stationary": 0.0, "linear": 1.0}, {}, {},
                                 "tabular_stationary") == "tabular_stationary"
    assert choose_with_reference({"linear": 1.0, "gbm": 0.5}, {"linear": 0.1, "gbm": 0.0},
                                 {"linear": 0.0, "gbm": 0.0}, "tabular_stationary") == "gbm"


def test_auto_pools_the_tables_over_a_site_that_does_not_drive_outcomes():
    """An irrelevant 30-level site multiplies the all-column table's cells (FQE 5.6% off on
    700-state panels, docs/ope.md); auto's tables pool over it, the result JSON says why,
    and FQE is closer to the truth than with the all-column table (cells given)."""
    from equicare.exceptions import DataWarning
    from equicare.ope import FQEConfig
    from tests.ope._garnet import with_site

    mdp, ds, pols = make("s50_a25_g1", 2000, seed=11)
    two = with_site(ds, np.random.default_rng(0).integers(0, 30, ds.n_episodes))
    pe = pols["mixture_30"][ds.categorical[:, 0]]
    truth = mdp.value(pols["mixture_30"])
    kw = {"estimators": ("fqe",), "bootstrap": 0, "groups": [], "random_state": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        res = evaluate(two, pe, q_model="auto", **kw)
    q = res.q_model
    assert q is not None and q["chosen"] == "tabular_stationary[state]"
    assert q["cells"] == ["state"] and q["cell_choice"]["dropped"] == ["site"]
    assert set(q["candidates"]) == {"tabular_stationary[state]", "tabular_backward[state]",
                                    "linear", "gbm", "mlp"}
    pooled = evaluate(two, pe, q_model="tabular_stationary[state]", **kw)
    assert pooled.estimates["fqe"].value == pytest.approx(res.estimates["fqe"].value)
    full = evaluate(two, pe, q_model=FQEConfig(model="auto", cells=("state", "site")), **kw)
    assert full.q_model is not None and full.q_model["cell_choice"] is None
    assert full.q_model["chosen"] == "tabular_stationary[state,site]"
    for fam in SUPPORTED:  # measured: -0.3 / -1.5%, +1.1 / -3.8%, +0.2 / -2.9%
        pe = pols[fam][ds.categorical[:, 0]]
        truth = mdp.value(pols[fam])
        err = {cells: abs(evaluate(two, pe, q_model=FQEConfig(model="auto", cells=cells), **kw)
                          .estimates["fqe"].value - truth) / truth
               for cells in (("state",), ("state", "site"))}
        assert err[("state",)] < 0.5 * err[("state", "site")]


def test_cells_name_categorical_columns_of_a_table():
    """Cells must be distinct column names of a tabular (or auto) Q-model, and columns the
    dataset has."""
    from equicare.exceptions import InvalidParameterError
    from equicare.ope import FQEConfig

    with pytest.raises(InvalidParameterError, match="cells"):
        FQEConfig(model="linear", cells=("state",))
    with pytest.raises(InvalidParameterError, match="cells"):
        FQEConfig(model="tabular", cells=("state", "state"))
    assert FQEConfig(model="tabular", cells="state").cells == ("state",)
    mdp, ds, pols = make("s50_a5_g1", 100, seed=1)
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    with pytest.raises(InvalidParameterError, match=r"\['site'\], which is not a categorical "
                       r"state column; the dataset's categorical states are \['state'\]"):
        evaluate(ds, pe, q_model="tabular_stationary[site]", estimators="fqe", bootstrap=0,
                 groups=[])
    with pytest.raises(InvalidParameterError, match="q_model"):
        evaluate(ds, pe, q_model="linear[state]", estimators="fqe", bootstrap=0, groups=[])


def test_auto_decides_the_cells_once():
    """When auto keeps every column (a site with its own dynamics), the fixed-table step of
    ``prepare`` does not choose the cells again (a second, differently seeded test could
    disagree with the cells auto scored)."""
    from equicare.ope._prepare import prepare
    from tests.ope._garnet import two_site_panel

    two, pe, _ = two_site_panel("s50_a25_g1", 600, seed=5, family="soft_optimal")
    prep = prepare(two, pe, keys=("fqe",), q_model="auto", random_state=0)
    assert prep.q_selection is not None and prep.q_selection.cell_choice is not None
    assert prep.q_selection.cell_choice.dropped == ()
    assert prep.q_cells is None and prep.q_name == prep.q_selection.chosen
    fixed = prepare(two, pe, keys=("fqe",), q_model="tabular_stationary", random_state=0)
    assert fixed.q_cells is not None and fixed.q_cells.dropped == ()
    assert fixed.q_name == "tabular_stationary"


def test_auto_estimates_each_subgroups_bias_with_its_own_density_ratio():
    """A level holding every episode gets exactly the overall bias estimate; the levels of the
    initial-state strata get their own (the strata's occupancies differ)."""
    from dataclasses import replace

    mdp, ds, pols = make("s50_a5_g1", 600, seed=3)
    ds = replace(ds, groups={**ds.groups, "everyone": np.full(ds.n_episodes, "all")}, _cache={})
    pe = pols["soft_optimal"][ds.categorical[:, 0]]
    sel = select_q_model(ds, pe, random_state=0, groups=("everyone", "group"))
    b, se = sel.group_bias["everyone"]["all"]
    assert b == pytest.approx(sel.bias[sel.chosen], rel=1e-9, abs=1e-15)
    assert se == pytest.approx(sel.bias_se[sel.chosen], rel=1e-9)
    strata = sel.group_bias["group"]
    assert sorted(strata) == ["0", "1", "2"]
    assert len({round(v[0], 12) for v in strata.values()}) == 3
    assert "group_bias" in sel.to_dict()
    assert select_q_model(ds, pe, random_state=0).group_bias == {}


def test_bad_candidate_names_are_parameter_errors():
    with pytest.raises(InvalidParameterError,
                       match=r"The 'q_model' parameter of candidate_config must be one of "):
        candidate_config("forest")
    with pytest.raises(InvalidParameterError,
                       match=r"must be a tabular Q-model when cells are named in brackets\. "
                             r"Got 'gbm\[site\]' instead\."):
        candidate_config("gbm[site]")


def _site_x_dataset(frames: list, gamma: float):
    """The rows (id, t, site, x, act, p, r, end) as a dataset: numeric x, categorical site."""
    import pandas as pd

    from equicare.data import from_frame

    manifest = {"dataset": {"episode": "id", "time": "t", "states": ["x"],
                            "categorical_states": ["site"], "terminal": "end",
                            "behavior_prob": "p", "gamma": gamma},
                "actions": {"act": {"levels": [0, 1]}},
                "reward": {"r": {"column": "r", "weight": 1.0}}}
    return from_frame(pd.concat(frames, ignore_index=True), manifest, emit_warnings=False)


def _count_state_panel(n: int, seed: int):
    """Members whose 0/1/2 need ``x`` (a numeric column) drives the reward, its own moves and
    the clinicians' actions, at 3 sites that do not matter; the target always acts. Exact truth
    of its value by backward recursion over the (x, step) chain."""
    import pandas as pd

    gamma, p_end, t_max, up = 0.9, 0.1, 40, np.array([0.2, 0.7])  # P(x + 1 | action)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, n)
    site = np.array(["A", "B", "C"])[rng.integers(0, 3, n)]
    alive, frames = np.ones(n, dtype=bool), []
    for t in range(t_max):
        p1 = 1.0 / (1.0 + np.exp(-2.5 * (x - 1)))
        a = (rng.random(n) < p1).astype(int)
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        frames.append(pd.DataFrame({
            "id": np.arange(n), "t": t, "site": site, "x": x.astype(float), "act": a,
            "p": np.where(a == 1, p1, 1.0 - p1), "r": x - 0.3 * a + rng.normal(0, 0.5, n),
            "end": end})[alive])
        alive &= ~end
        u, pu = rng.random(n), up[a]
        x = np.where(u < pu, np.minimum(x + 1, 2),
                     np.where(u < pu + 0.5 * (1 - pu), np.maximum(x - 1, 0), x))
    ds = _site_x_dataset(frames, gamma)
    move = np.zeros((3, 3))  # always act
    for s in range(3):
        move[s, min(s + 1, 2)] += up[1]
        move[s, max(s - 1, 0)] += 0.5 * (1 - up[1])
        move[s, s] += 1 - up[1] - 0.5 * (1 - up[1])
    v = np.zeros(3)
    for t in range(t_max - 1, -1, -1):
        v = np.arange(3) - 0.3 + gamma * (0.0 if t == t_max - 1 else 1 - p_end) * (move @ v)
    return ds, float(v.mean())


def test_auto_bins_a_numeric_state_that_drives_outcomes_within_the_cells():
    """A numeric need drives rewards and actions within each site: the site table averages
    over it (FQE +16% here; +13 to +20% at 4 seeds). auto offers its bins (point masses kept
    whole: 0 / 1 / 2) to the cells' choice, which keeps them and pools over the site; FQE is
    then within 6% of the exact value (-1.1% here; -5.0 to +1.8% at 4 seeds)."""
    ds, truth = _count_state_panel(1000, seed=0)
    pe = np.zeros((ds.n_steps, 2))
    pe[:, 1] = 1.0
    kw = {"estimators": ("fqe",), "bootstrap": 0, "groups": [], "random_state": 0}
    res = evaluate(ds, pe, **kw)
    q = res.q_model
    assert q is not None and q["cells"] == ["x@0.5/1.5"]
    assert q["chosen"] == "tabular_stationary[x@0.5/1.5]"
    assert q["numeric_bins"] == {"offered": ["x@0.5/1.5"]}
    assert q["cell_choice"]["dropped"] == ["site"]
    assert "ignored_numeric" not in q  # the table uses x's bins
    assert abs(res.estimates["fqe"].value - truth) / truth < 0.06
    site = evaluate(ds, pe, q_model="tabular_stationary", **kw)
    assert (site.estimates["fqe"].value - truth) / truth > 0.09
    named = evaluate(ds, pe, q_model="tabular_stationary[x@0.5/1.5]", **kw)  # the name refits it
    assert named.estimates["fqe"].value == pytest.approx(res.estimates["fqe"].value, rel=1e-6)


def test_binned_names_carry_the_edges_as_used():
    from equicare.ope._fqe import binned_name, parse_binned
    from equicare.privacy import quantile_edges

    x = np.random.default_rng(0).normal(size=3000)
    e = quantile_edges(x, 3)
    assert e.size == 2
    col, back = parse_binned(binned_name("risk", e))  # type: ignore[misc]
    assert col == "risk" and np.array_equal(back, e)  # edges are written as they are used
    assert binned_name("x", np.array([0.5, 1.5])) == "x@0.5/1.5"
    assert binned_name("x", np.array([2.0, 1e-05])) == "x@2/1e-05"
    assert parse_binned("site") is None


def _target_reads_panel(n: int, seed: int, drives: bool = True):
    """Members with a score ``x ~ U(0, 1)`` drawn anew at every row and 2 sites that do not
    matter; practice acts at random (p = 0.5). With ``drives``, the reward is 1 when the
    action is ``x >= 0.5`` (a match) and 0 otherwise, plus N(0, 1) noise; else it is 1, plus
    0.5 when the action is taken, plus the noise. Rows end with probability 0.2 (terminal).
    The target acts when ``x >= 0.5`` (it reads x). Exact truth: ``E[r] / (1 - gamma * 0.8)``."""
    import pandas as pd

    gamma, p_end, t_max = 0.9, 0.2, 60
    rng = np.random.default_rng(seed)
    site = np.array(["A", "B"])[rng.integers(0, 2, n)]
    alive, frames = np.ones(n, dtype=bool), []
    for t in range(t_max):
        x = rng.random(n).round(3)
        a = (rng.random(n) < 0.5).astype(int)
        mean_r = (a == (x >= 0.5)).astype(float) if drives else 1.0 + 0.5 * a
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        frames.append(pd.DataFrame({
            "id": np.arange(n), "t": t, "site": site, "x": x, "act": a, "p": 0.5,
            "r": mean_r + rng.normal(0, 1.0, n), "end": end})[alive])
        alive &= ~end
    ds = _site_x_dataset(frames, gamma)
    return ds, (1.0 if drives else 1.25) / (1.0 - gamma * (1.0 - p_end))


class _ActsOnHighX:
    """Acts when the numeric state ``x`` is at least 0.5."""

    def action_probs(self, d):
        act = (np.asarray(d.states[:, 0]) >= 0.5).astype(float)
        return np.column_stack([1.0 - act, act])


def _fqe_error(n: int, seed: int, drives: bool):
    ds, truth = _target_reads_panel(n, seed, drives)
    res = evaluate(ds, _ActsOnHighX(), estimators=("fqe", "dr"), bootstrap=0, groups=[],
                   random_state=0)
    assert res.q_model is not None
    return ds, res, {k: res.estimates[k].value / truth - 1.0 for k in ("fqe", "dr")}


def test_auto_bins_a_numeric_state_the_target_reads_where_it_drives_rewards():
    """The target acts on a score that decides the reward, which practice ignores. The cells'
    choice never looks at the target: it kept x's terciles (x@0.3373/0.6695), and the middle
    one pools the target's threshold: FQE -18% (before). auto now finds the threshold (a
    tree on the target's probabilities within the cells; 0.499, between the observed 0.498
    and 0.5), sees that its bins lower the held-out error of the mean reward, and adds the
    edge to x's bins."""
    ds, res, err = _fqe_error(400, seed=0, drives=True)
    assert abs(err["fqe"]) < 0.06 and abs(err["dr"]) < 0.06, err
    q = res.q_model
    assert q is not None and q["chosen"] == "tabular_stationary[x@0.3373/0.499/0.6695]"
    reads = q["numeric_bins"]["target_reads"]["x"]
    x = ds.states[:, 0]
    assert reads["added"] and 0.499 in reads["edges"] and not np.isin(reads["edges"], x).any()
    assert reads["reward_gain"] > 2 * reads["se"] and reads["tv"] > 0.1
    assert "ignored_numeric" not in q


def test_auto_leaves_a_read_score_pooled_where_it_does_not_drive_rewards():
    """The same target on a panel where the score it reads drives nothing: its bins would
    only cost variance, so the cells stay as chosen and the report says the table pools a
    column the target reads."""
    ds, res, err = _fqe_error(400, seed=0, drives=False)
    q = res.q_model
    assert q is not None and q["chosen"] == "tabular_stationary[x@0.3373/0.6695]"  # terciles
    reads = q["numeric_bins"]["target_reads"]["x"]  # (the last column choose_cells leaves)
    assert not reads["added"] and reads["reward_gain"] <= 2 * reads["se"]
    assert abs(err["fqe"]) < 0.1, err


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_bins_a_read_score_on_bigger_panels(seed):
    """3 seeds at 3,000 members: FQE within 3% of the truth where the score drives the
    reward (DR, whose weights double at every row, within 10%), and the target's edge kept
    out of the cells where it does not."""
    for drives in (True, False):
        _, res, err = _fqe_error(3000, seed=seed, drives=drives)
        assert abs(err["fqe"]) < 0.03 and abs(err["dr"]) < 0.1, (drives, err)
        assert res.q_model is not None
        reads = res.q_model["numeric_bins"]["target_reads"]["x"]
        assert reads["added"] == drives and ("0.499" in res.q_model["chosen"]) == drives


def _tree_panel(n: int, seed: int):  # type: ignore[no-untyped-def]
    """tests/explain's tree simulator with its ends marked terminal, plus a clinic column that
    drives nothing; the optimal rule reads the site, which drives only the rewards."""
    from dataclasses import replace

    from tests.explain import tree_sim

    ds = tree_sim.generate(n, seed=seed)
    last = np.zeros(ds.n_steps, dtype=bool)
    last[ds.episode_offsets[1:] - 1] = True
    clinic = np.random.default_rng(seed + 1).integers(0, 2, ds.n_steps)
    ds = replace(ds, terminals=last, categorical=np.column_stack([ds.categorical, clinic]),
                 categorical_names=(*ds.categorical_names, "clinic"),
                 categorical_levels=(*ds.categorical_levels, ("c0", "c1")), _cache={})
    return ds, tree_sim.optimal_of(ds), clinic


def _stationary_truth(ds, probs):  # type: ignore[no-untyped-def]
    """The stationary table's fixed point on (site, x1 > 0.6, clinic): the model is exact there
    for rewards (they depend on site, x1 > 0.6 and the action only) and next states (i.i.d.)."""
    cell = (ds.categorical[:, 0] * 2 + (ds.states[:, 0] > 0.6)) * 2 + ds.categorical[:, 1]
    key = cell * 3 + ds.actions
    nxt = np.r_[np.arange(1, ds.n_steps), 0]
    q = np.zeros(24)
    n_key = np.maximum(np.bincount(key, minlength=24), 1)
    for _ in range(300):
        v = (probs * q.reshape(8, 3)[cell]).sum(axis=1)
        y = ds.rewards + ds.gamma * np.where(ds.terminals, 0.0, v[nxt])
        q = np.bincount(key, weights=y, minlength=24) / n_key
    return float((probs * q.reshape(8, 3)[cell]).sum(axis=1)[ds.episode_offsets[:-1]].mean())


def test_auto_keeps_a_categorical_column_the_target_reads_where_it_drives_rewards():
    """A site whose levels want different actions changes no next state, so the cells' choice
    pooled it: the optimal rule's FQE was 2.51 against the table's own fixed point 3.58 (every
    choice at the two sites' average reward). A clinic the target reads but that drives nothing
    stays pooled."""
    ds, opt, clinic = _tree_panel(3000, 11)
    target = np.full((ds.n_steps, 3), 0.0005)
    target[np.arange(ds.n_steps), opt] = 0.999
    # the target reads the clinic too: at c1 it hesitates between the optimum and its neighbour
    nb = (opt + 1) % 3
    target[clinic == 1] = 0.0
    rows = np.flatnonzero(clinic == 1)
    target[rows, opt[rows]] = 0.7
    target[rows, nb[rows]] = 0.3
    sel = select_q_model(ds, target, random_state=0)
    reads = sel.numeric_bins["target_reads"]
    assert reads["site"]["added"] and reads["site"]["levels"]
    assert reads["site"]["reward_gain"] > 10 * reads["site"]["se"]
    assert not reads["clinic"]["added"] and reads["clinic"]["tv"] >= select_mod.READS_TV
    assert "site" in sel.cells and "clinic" not in sel.cells
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(ds, target, estimators=["fqe"], bootstrap=0, random_state=0, groups=[])
    assert "site" in res.q_model["chosen"]
    exact = _stationary_truth(ds, target)
    assert abs(res.estimates["fqe"].value - exact) < 0.03 * exact, (res.estimates, exact)


def _transition_reads_panel(n: int, seed: int, drives: bool = True):
    """Members in health ``h`` 0/1/2 (categorical) with a score ``x ~ U(0, 1)`` drawn anew at
    every row; practice acts at random. With ``drives``, an action that matches ``x >= 0.5``
    moves ``h`` up with probability 0.6 (down 0.1) and a mismatch down with 0.6 (up 0.1);
    without, every action moves it up or down with 0.35 each. The reward, ``2 h`` at the
    terminal row (probability 0.1 per row) plus N(0, 0.3) noise, never depends on ``x`` or the
    action: the score drives only the transitions. The target acts when ``x >= 0.5``. Exact
    truth: ``(I - gamma 0.9 P) V = R`` over ``h``, averaged over the members' first ``h``."""
    import pandas as pd

    from equicare.data import from_frame

    gamma, p_end, t_max = 0.95, 0.1, 150
    up_m, down_m, up_n, down_n = (0.6, 0.1, 0.1, 0.6) if drives else (0.35,) * 4
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 3, n)
    h0, alive, frames = h.copy(), np.ones(n, dtype=bool), []
    for t in range(t_max):
        x = rng.random(n).round(3)
        a = (rng.random(n) < 0.5).astype(int)
        end = (rng.random(n) < p_end) | (t == t_max - 1)
        frames.append(pd.DataFrame({
            "id": np.arange(n), "t": t, "h": h, "x": x, "act": a, "p": 0.5,
            "r": np.where(end, 2.0 * h, 0.0) + rng.normal(0, 0.3, n), "end": end})[alive])
        alive &= ~end
        match = a == (x >= 0.5)
        p_up, p_down = np.where(match, up_m, up_n), np.where(match, down_m, down_n)
        u = rng.random(n)
        h = np.where(u < p_up, np.minimum(h + 1, 2),
                     np.where(u < p_up + p_down, np.maximum(h - 1, 0), h))
    manifest = {"dataset": {"episode": "id", "time": "t", "states": ["x"],
                            "categorical_states": ["h"], "terminal": "end",
                            "behavior_prob": "p", "gamma": gamma},
                "actions": {"act": {"levels": [0, 1]}},
                "reward": {"r": {"column": "r", "weight": 1.0}}}
    ds = from_frame(pd.concat(frames, ignore_index=True), manifest, emit_warnings=False)
    move = np.zeros((3, 3))  # the target always matches
    for s in range(3):
        move[s, min(s + 1, 2)] += up_m
        move[s, max(s - 1, 0)] += down_m
        move[s, s] += 1.0 - up_m - down_m
    v = np.linalg.solve(np.eye(3) - gamma * (1 - p_end) * move, p_end * 2.0 * np.arange(3))
    return ds, float(v[h0].mean())


def test_auto_bins_a_read_score_that_drives_only_the_transitions():
    """The target acts on a score that decides where the action moves the patient; the reward
    comes only at the end and never depends on the score. The cells' choice keeps x's terciles
    (x@0.3335/0.6655), whose middle one pools the target's threshold, and the reward test saw
    no gain: FQE -13.9% (before; -8.4 to -15.5% at seeds 0-3). The held-out error of the TD
    target ``r + gamma Vbar(next cell)`` sees it: the edge joins x's bins and FQE is -2.9%
    (-5.6 to +2.5% at seeds 0-3)."""
    ds, truth = _transition_reads_panel(1500, seed=1)
    kw = {"estimators": ("fqe", "dr"), "bootstrap": 0, "groups": [], "random_state": 0}
    res = evaluate(ds, _ActsOnHighX(), **kw)
    q = res.q_model
    assert q is not None and q["chosen"] == "tabular_stationary[h,x@0.3335/0.4995/0.6655]"
    reads = q["numeric_bins"]["target_reads"]["x"]
    assert reads["added"] and reads["reward_gain"] <= 2 * reads["se"]
    assert reads["value_gain"] > 5 * reads["value_se"]
    assert abs(res.estimates["fqe"].value / truth - 1) < 0.06, (res.estimates, truth)
    pooled = evaluate(ds, _ActsOnHighX(), q_model="tabular_stationary[h,x@0.3335/0.6655]", **kw)
    assert pooled.estimates["fqe"].value / truth - 1 < -0.08


def test_auto_leaves_a_read_score_pooled_where_it_drives_no_transition():
    """The same target where the score changes neither rewards nor transitions: no gain in
    the TD target either, and the score stays pooled (0 of 10 seeds at 2,000 members added it,
    nor a site or a persistent score that drives nothing: docs/ope.md)."""
    ds, truth = _transition_reads_panel(1500, seed=1, drives=False)
    res = evaluate(ds, _ActsOnHighX(), estimators=("fqe",), bootstrap=0, groups=[],
                   random_state=0)
    q = res.q_model
    assert q is not None and "0.4995" not in q["chosen"]
    reads = q["numeric_bins"]["target_reads"]["x"]
    assert not reads["added"] and reads["value_gain"] <= 2 * reads["value_se"]
    assert abs(res.estimates["fqe"].value / truth - 1) < 0.05


def test_the_transitions_test_steps_aside_when_the_stationary_table_is_singular(monkeypatch):
    """A stationary table without a solution (a loop without exit at gamma 1) leaves the
    reward test alone: the read column is reported with ``value_gain`` None, not an error."""
    from equicare.exceptions import InvalidParameterError as Singular

    def singular(*args, **kwargs):
        raise Singular("The stationary tabular FQE system is singular")

    ds, _ = _transition_reads_panel(300, seed=1)
    monkeypatch.setattr(select_mod, "fit_fqe_logged", singular)
    cells, reads = select_mod.target_read_bins(ds, _ActsOnHighX().action_probs(ds), None)
    assert cells is None and reads["x"]["value_gain"] is None and not reads["x"]["added"]
    assert reads["x"]["reward_gain"] <= 2 * reads["x"]["se"]


def test_draw_folds_deals_people_with_all_their_episodes() -> None:
    """auto's cross-fitting folds keep a person's episodes (members) together, in near-equal
    folds; without members the draws are the episodes' (unchanged)."""
    members = np.array([f"p{i // 4}" for i in range(400)], dtype=object)
    fold, seed = select_mod.draw_folds(400, 2, np.random.default_rng(0), members)
    assert all(np.unique(fold[members == p]).size == 1 for p in np.unique(members))
    assert abs(int((fold == 0).sum()) - 200) <= 4 and isinstance(seed, int)
    plain, _ = select_mod.draw_folds(400, 2, np.random.default_rng(0))
    expected = np.arange(400) % 2
    np.random.default_rng(0).shuffle(expected)
    np.testing.assert_array_equal(plain, expected)
