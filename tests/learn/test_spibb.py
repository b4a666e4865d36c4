"""SPIBB: safe improvement against exact values, censoring, cells, save/load."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from equicare.data import from_frame
from equicare.exceptions import DataValidationError, InvalidParameterError, NotFittedError
from equicare.learn import SPIBB, SPIBBConfig
from equicare.learn._spibb import MSG_NOT_DISCRETE
from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
from equicare.sim.garnet import GarnetConfig, garnet_panel, garnet_policy_table

SMALL = GarnetConfig(n_states=50, n_actions=5, n_successors=3)


def _panel(seed: int, n: int = 5000, cfg: GarnetConfig = SMALL):
    mdp, pan = garnet_panel(cfg, n, seed)
    ds = from_frame(garnet_frame(mdp, pan), garnet_manifest(cfg), emit_warnings=False)
    return mdp, ds


def test_spibb_improves_on_behaviour_and_never_falls_below() -> None:
    # exact values of the learned tables; N_wedge = 200 on 5,000 episodes of a 50 x 5 Garnet.
    # Tolerance: never more than 0.005 (about one Monte-Carlo SE of a 5,000-episode panel)
    # below the behaviour; on average at least 0.01 above it.
    gains = []
    for seed in (0, 1, 2):
        mdp, ds = _panel(seed)
        vb = mdp.value(mdp.behavior_policy)
        table, _ = garnet_policy_table(mdp, ds, SPIBB(n_wedge=200).fit(ds).policy_)
        gains.append(mdp.value(table) - vb)
    assert min(gains) > -0.005, gains
    assert np.mean(gains) > 0.01, gains


def test_unconstrained_mle_is_unsafe_where_spibb_is_not() -> None:
    # N_wedge = 0 is plain model-based RL on the MLE MDP: it falls below the clinicians here
    mdp, ds = _panel(5, n=2000)
    vb = mdp.value(mdp.behavior_policy)
    t0, _ = garnet_policy_table(mdp, ds, SPIBB(n_wedge=0).fit(ds).policy_)
    assert mdp.value(t0) < vb - 0.05
    t_inf, _ = garnet_policy_table(mdp, ds, SPIBB(n_wedge=np.inf).fit(ds).policy_)
    assert abs(mdp.value(t_inf) - vb) < 0.01


def test_infinite_wedge_reproduces_the_behaviour_estimate() -> None:
    # the table is rounded to 4 significant digits (the model folder keeps no logged
    # propensity), hence rtol=1e-3; one state of this panel is logged in fewer than 11 episodes
    # and has no row of its own: its rows are left to the clinicians whole
    mdp, ds = _panel(0, n=1000)
    m = SPIBB(n_wedge=float("inf")).fit(ds)
    assert m.pooled_cells_ == 1 and m.n_cells_ == 49
    np.testing.assert_allclose(m.policy_.table[:-1], m.behavior_, rtol=1e-3, atol=1e-12)
    assert m.bootstrapped_.all()
    from equicare.sim.garnet import garnet_state_index

    s = garnet_state_index(ds)
    probs = m.action_probs(ds)
    kept = m.policy_.cell_index(ds) < m.policy_.n_cells
    assert (~kept).sum() > 0
    n_sa = np.zeros((mdp.n_states, ds.n_actions), dtype=bool)
    n_sa[s, ds.actions] = True
    logged = n_sa[s]
    b = mdp.behavior_policy[s]
    # default with logged propensities (the known baseline): the true probability of every
    # logged action, the rest spread evenly over the unlogged ones and left to the clinicians
    rest = 1.0 - np.where(logged, b, 0.0).sum(axis=1, keepdims=True)
    n_un = (~logged).sum(axis=1, keepdims=True)
    want = np.where(logged, b, rest / np.maximum(n_un, 1))
    np.testing.assert_allclose(probs[kept], (want / want.sum(axis=1, keepdims=True))[kept],
                               rtol=1e-3, atol=1e-12)
    rows = np.flatnonzero(~kept)  # the pooled cell's rows: the clinicians' own propensity
    np.testing.assert_allclose(probs[rows, ds.actions[rows]], ds.behavior_prob[rows])
    assert (~logged & (probs > 0)).any()
    mask = m.policy_.deferred_mask(ds)
    np.testing.assert_array_equal(mask[kept], (~logged & (probs > 0))[kept])
    assert mask[~kept].all()
    table, _ = garnet_policy_table(mdp, ds, m.policy_)  # so its value is the clinicians'
    assert mdp.value(table) == pytest.approx(mdp.value(mdp.behavior_policy), abs=1e-4)
    # behavior="logged": the true behaviour renormalised over the logged actions; only the
    # fallback row (unseen and pooled cells) is left to the clinicians
    renorm = SPIBB(n_wedge=float("inf"), behavior="logged").fit(ds)
    want = np.where(logged, b, 0.0)
    np.testing.assert_allclose(renorm.action_probs(ds)[kept],
                               (want / want.sum(axis=1, keepdims=True))[kept], rtol=1e-3)
    assert not renorm.policy_.deferred[:-1].any() and renorm.policy_.deferred[-1].all()
    assert renorm.policy_.deferred_share() == 0.0
    counts = SPIBB(n_wedge=float("inf"), behavior="counts").fit(ds)
    freq = np.bincount(s * 5 + ds.actions, minlength=250).reshape(50, 5)[s].astype(float)
    np.testing.assert_allclose(counts.action_probs(ds)[kept],
                               (freq / freq.sum(1, keepdims=True))[kept], rtol=1e-3)


def test_a_deferring_policy_is_valued_as_current_practice_on_held_out_rows() -> None:
    # the behaviour reproduction fitted on one half defers every unlogged action of a cell to
    # the clinicians; on the other half, rows whose action that half never logged in the cell
    # (or whose cell it never saw, or saw in fewer than 11 episodes) get the clinicians' own
    # propensity, so every importance ratio is 1 (up to the table's rounding to 4 significant
    # digits) and IS is the held-out mean return; the table's even stand-in is not
    from dataclasses import replace

    from equicare.ope import evaluate

    cfg = GarnetConfig(n_states=300, n_actions=10, n_successors=3)
    mdp, ds = _panel(4, n=800, cfg=cfg)
    train, held = ds.split(0.5, random_state=0)
    pol = SPIBB(n_wedge=float("inf")).fit(train).policy_
    probs = pol.action_probs(held)
    ratio = probs[np.arange(held.n_steps), held.actions] / held.behavior_prob
    np.testing.assert_allclose(ratio, 1.0, atol=1e-3)
    stand_in = replace(pol, deferred=None).action_probs(held)
    off = stand_in[np.arange(held.n_steps), held.actions] / held.behavior_prob
    assert np.abs(off - 1.0).max() > 0.5  # what the stand-in alone would have given
    res = evaluate(held, pol, estimators="is", q_model="tabular", bootstrap=0,
                   diagnose_support=False, groups=[])
    returns = np.add.reduceat(held.rewards * held.gamma ** held.times, held.episode_offsets[:-1])
    assert res.estimates["is"].value == pytest.approx(float(returns.mean()), rel=1e-4)
    np.testing.assert_array_equal(pol.predict(held), pol.table[pol.cell_index(held)].argmax(1))


def test_known_baseline_keeps_logged_propensities_and_renormalises_an_excess() -> None:
    from equicare.learn._spibb import behavior_table

    # cell 0: actions 0 and 1 logged at 0.5 and 0.2 -> 0.3 left for actions 2 and 3;
    # cell 1: propensities averaging above 1 in total -> renormalised, nothing left over
    n_all = np.array([[2.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    flat = np.array([0, 0, 1, 4, 5])
    prob = np.array([0.4, 0.6, 0.2, 0.9, 0.6])
    pb = behavior_table(n_all, flat, prob, "known")
    np.testing.assert_allclose(pb, [[0.5, 0.2, 0.15, 0.15], [0.6, 0.4, 0.0, 0.0]])
    np.testing.assert_allclose(behavior_table(n_all, flat, prob, "logged"),
                               [[5 / 7, 2 / 7, 0, 0], [0.6, 0.4, 0, 0]])
    np.testing.assert_allclose(behavior_table(n_all, flat, None, "auto"),
                               [[2 / 3, 1 / 3, 0, 0], [0.5, 0.5, 0, 0]])
    with pytest.raises(DataValidationError, match="behavior='known' needs logged propens"):
        behavior_table(n_all, flat, None, "known")


def _censor_frame(terminal_last: bool) -> pd.DataFrame:
    """Cell x: action 0 leads to an outcome (reward 0.5 on average), action 1 is logged only
    on the last row of episodes whose window closes (censored unless ``terminal_last``)."""
    rows = []
    for e in range(60):
        a = e % 2
        r = float(e % 4 == 0) if a == 0 else 0.0
        rows.append({"ep": e, "t": 0, "cell": "x", "a": a, "r": r,
                     "term": 1 if (a == 0 or terminal_last) else 0, "p": 0.5})
    return pd.DataFrame(rows)


CENSOR_MANIFEST = {"dataset": {"episode": "ep", "time": "t", "categorical_states": ["cell"],
                               "terminal": "term", "behavior_prob": "p", "gamma": 1.0},
                   "actions": {"a": {"levels": 2}}, "reward": {"column": "r"}}


def test_censored_last_rows_are_not_zero_future_value() -> None:
    cens = from_frame(_censor_frame(False), CENSOR_MANIFEST, emit_warnings=False)
    m = SPIBB(n_wedge=10).fit(cens)
    assert m.counts_[0].tolist() == [30, 0]  # the censored ends add no transition
    np.testing.assert_allclose(m.policy_.table[0], [0.5, 0.5])  # action 1 stays bootstrapped
    # the same rows as true absorptions with reward 0: action 1 is now known to be worse
    term = from_frame(_censor_frame(True), CENSOR_MANIFEST, emit_warnings=False)
    m2 = SPIBB(n_wedge=10).fit(term)
    assert m2.counts_[0].tolist() == [30, 30]
    np.testing.assert_allclose(m2.policy_.table[0], [1.0, 0.0])


def test_save_load_and_load_policy(tmp_path) -> None:
    from equicare.learn import load_learner
    from equicare.policy import CellPolicy, load_policy

    _, ds = _panel(0, n=500)
    m = SPIBB(n_wedge=20).fit(ds)
    m.save(tmp_path / "m")
    with pytest.raises(FileExistsError):
        m.save(tmp_path / "m")
    back = load_learner(tmp_path / "m")
    assert isinstance(back, SPIBB)
    np.testing.assert_array_equal(back.action_probs(ds), m.action_probs(ds))
    pol = load_policy(tmp_path / "m")
    assert isinstance(pol, CellPolicy)
    np.testing.assert_array_equal(pol.action_probs(ds), m.action_probs(ds))
    assert back.config == m.config
    # what is left to current practice survives the model folder
    assert m.policy_.deferred is not None and m.policy_.deferred_share() > 0
    np.testing.assert_array_equal(pol.deferred_mask(ds), m.policy_.deferred_mask(ds))


def test_unseen_cells_get_the_fallback_row() -> None:
    _, ds = _panel(0, n=300)
    _, other = _panel(1, n=300, cfg=GarnetConfig(n_states=60, n_actions=5, n_successors=3))
    m = SPIBB(n_wedge=20).fit(ds)
    probs = m.action_probs(other)
    seen = set(ds.categorical_levels[0])
    labels = np.asarray(other.categorical_levels[0], dtype=object)[other.categorical[:, 0]]
    new = np.array([lv not in seen for lv in labels])
    assert new.any()
    assert (m.policy_.cell_index(other)[new] == m.policy_.n_cells).all()
    assert m.policy_.deferred_mask(other)[new].all()  # and are left to current practice:
    rows = np.flatnonzero(new)  # the logged action keeps the clinicians' own propensity
    np.testing.assert_allclose(probs[rows, other.actions[rows]], other.behavior_prob[rows])
    from dataclasses import replace

    plain = replace(m.policy_, deferred=None)  # without deferral: the fallback row itself
    np.testing.assert_allclose(plain.action_probs(other)[new],
                               np.broadcast_to(m.policy_.table[-1], (new.sum(), 5)))


def test_numeric_states_refused_or_binned() -> None:
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({"ep": np.repeat(np.arange(40), 5), "t": np.tile(np.arange(5), 40),
                       "x": rng.normal(size=n), "a": rng.integers(0, 3, n),
                       "r": rng.normal(size=n)})
    man = {"dataset": {"episode": "ep", "time": "t", "states": ["x"], "gamma": 0.9},
           "actions": {"a": {"levels": 3}}, "reward": {"column": "r"}}
    ds = from_frame(df, man, emit_warnings=False)
    with pytest.raises(DataValidationError, match=re.escape(MSG_NOT_DISCRETE.format(
            learner="SPIBB"))):
        SPIBB().fit(ds)
    from equicare.learn import PVI

    with pytest.raises(DataValidationError, match=r"^PVI works on .*--param numeric=bin"):
        PVI().fit(ds)  # it named SPIBB and numeric_bins (which was 10, not 0)
    m = SPIBB(numeric="bin", numeric_bins=4, n_wedge=5).fit(ds)
    assert m.n_cells_ == 4
    np.testing.assert_allclose(m.action_probs(ds).sum(axis=1), 1.0)


def test_numeric_bin_edges_keep_no_rows_value(tmp_path) -> None:
    """The quantile edges a model folder keeps are rounded (equicare.privacy): with 201 rows
    the exact quartiles are three rows' values; the saved edges are none of them."""
    from equicare.learn import SPIBB, load_learner

    rng = np.random.default_rng(1)
    n = 201
    df = pd.DataFrame({"ep": np.repeat(np.arange(67), 3), "t": np.tile(np.arange(3), 67),
                       "x": rng.normal(size=n) * 37.0 + 100.0, "a": rng.integers(0, 3, n),
                       "r": rng.normal(size=n)})
    man = {"dataset": {"episode": "ep", "time": "t", "states": ["x"], "gamma": 0.9},
           "actions": {"a": {"levels": 3}}, "reward": {"column": "r"}}
    ds = from_frame(df, man, emit_warnings=False)
    assert np.isin(np.quantile(df["x"], [0.25, 0.5, 0.75]), df["x"]).all()  # what was kept
    m = SPIBB(numeric="bin", numeric_bins=4, n_wedge=5).fit(ds)
    m.save(tmp_path / "m")
    back = load_learner(tmp_path / "m")
    edges = np.concatenate(back.policy_.edges)
    assert edges.size == 3 and not np.isin(edges, df["x"]).any()
    xs = np.sort(df["x"].to_numpy())  # each quartile is row 50, 100, 150's value: its edge
    k = np.array([50, 100, 150])  # is in the gap just below or above that row's value
    assert np.all((xs[k - 1] < edges) & (edges < xs[k + 1]))
    np.testing.assert_array_equal(back.action_probs(ds), m.action_probs(ds))


def _flag_count_panel(n_ep: int = 400, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    n = n_ep * 5
    return (pd.DataFrame({"ep": np.repeat(np.arange(n_ep), 5), "t": np.tile(np.arange(5), n_ep),
                          "flag": (rng.random(n) < 0.06).astype(float),
                          "needs": rng.choice([0.0, 1.0, 2.0], n, p=[0.4, 0.35, 0.25]),
                          "x": rng.normal(size=n), "a": rng.integers(0, 3, n),
                          "r": rng.normal(size=n)}),
            {"dataset": {"episode": "ep", "time": "t", "states": ["flag", "needs", "x"],
                         "gamma": 0.9},
             "actions": {"a": {"levels": 3}}, "reward": {"column": "r"}})


@pytest.mark.parametrize("bins", [3, 4, 10])
def test_numeric_bins_keep_a_rare_flag_and_each_small_count_apart(bins: int) -> None:
    """Inner quantiles on a point mass: the deciles of a 0/1 flag with 6% ones are all 0, and
    with ``searchsorted(side="right")`` the edge 0 put every row in one bin (the flag was
    ignored while reported as binned); counts 0/1/2 lost their lowest bin."""
    df, man = _flag_count_panel()
    ds = from_frame(df, man, emit_warnings=False)
    m = SPIBB(numeric="bin", numeric_bins=bins, n_wedge=5).fit(ds)
    codes = {c: np.searchsorted(e, df[c].to_numpy(), side="right")
             for c, e in zip(m.policy_.numeric, m.policy_.edges, strict=True)}
    np.testing.assert_array_equal(codes["flag"], df["flag"].to_numpy())
    want = df["needs"].to_numpy() if bins > 3 else np.minimum(df["needs"].to_numpy(), 2)
    np.testing.assert_array_equal(codes["needs"], want)
    assert np.unique(codes["x"]).size == bins  # a continuous column: its quantile bins
    assert m.ignored_numeric_ == ()
    assert m.policy_.edges[0].size == 1 and 0.0 < m.policy_.edges[0][0] < 1.0


def test_model_folders_with_edges_of_the_earlier_rule_predict_as_saved(tmp_path) -> None:
    """The folder keeps the edges themselves (coding unchanged): a folder written before the
    point-mass rule, whose flag edge was 0, still puts every row in that one bin."""
    import json

    from equicare.learn import load_learner
    from equicare.policy import load_policy

    df, man = _flag_count_panel()
    ds = from_frame(df, man, emit_warnings=False)
    m = SPIBB(numeric="bin", numeric_bins=3, n_wedge=5).fit(ds)
    m.save(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["policy"]["edges"][0] = [0.0]  # what the earlier rule saved for the flag
    cfg_path.write_text(json.dumps(cfg))
    back, pol = load_learner(tmp_path / "m"), load_policy(tmp_path / "m")
    np.testing.assert_allclose(back.policy_.edges[0], [0.0])
    flag0 = df["flag"].to_numpy() == 0
    idx = pol.cell_index(ds)
    other = df.assign(flag=1.0 - df["flag"])  # flipping the flag moves no row to another cell
    np.testing.assert_array_equal(pol.cell_index(from_frame(other, man, emit_warnings=False)),
                                  idx)
    assert flag0.any() and (~flag0).any()
    np.testing.assert_array_equal(back.action_probs(ds), pol.action_probs(ds))


def _lab_panel(n_ep: int = 300, seed: int = 0) -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Practice reads a lab value (p(treat) = sigmoid(3 lab)); age is noise; 3 wards."""
    rng = np.random.default_rng(seed)
    n = n_ep * 8
    lab, age = rng.normal(size=n), rng.normal(60, 10, n)
    p = 1.0 / (1.0 + np.exp(-3.0 * lab))
    a = (rng.random(n) < p).astype(int)
    df = pd.DataFrame({"ep": np.repeat(np.arange(n_ep), 8), "t": np.tile(np.arange(8), n_ep),
                       "ward": rng.choice(["A", "B", "C"], n), "lab": lab, "age": age, "a": a,
                       "r": -np.abs(lab) + 0.5 * a * (lab > 0) + rng.normal(0, 0.1, n),
                       "prop": np.where(a == 1, p, 1.0 - p)})
    man = {"dataset": {"episode": "ep", "time": "t", "states": ["lab", "age"],
                       "categorical_states": ["ward"], "behavior_prob": "prop", "gamma": 0.9},
           "actions": {"a": {"levels": 2}}, "reward": {"column": "r"}}
    return df, man, p


def test_numeric_states_that_drive_practice_are_binned_by_default(tmp_path) -> None:
    """With numeric='ignore' the default, cells blind to the lab made the behaviour estimate
    the wards' average, and N_wedge = inf (current practice, as the selection's fallback uses
    it) treated every row at about 50%: a dosing panel's SPIBB/PVI had Monte-Carlo value -62.0
    against practice's -7.25. numeric='auto' bins the lab (its bins predict the actions held
    out), not the noise column."""
    from equicare.learn import PVI, load_learner

    df, man, p = _lab_panel()
    ds = from_frame(df, man, emit_warnings=False)
    m = SPIBB(n_wedge=float("inf")).fit(ds)
    assert m.config.numeric == "auto"
    assert m.policy_.numeric == ("lab",) and m.ignored_numeric_ == ("age",)
    tests = m.numeric_choice_["tests"]
    assert tests["lab"]["chosen"] and tests["lab"]["gain_per_row"] > 0.1
    assert not tests["age"]["chosen"] and tests["age"]["gain_per_row"] < 0.01
    err = np.abs(m.policy_.table[m.policy_.cell_index(ds), 1] - p).mean()
    blind = SPIBB(n_wedge=float("inf"), numeric="ignore").fit(ds)
    err_blind = np.abs(blind.policy_.table[blind.policy_.cell_index(ds), 1] - p).mean()
    assert err < 0.1 < 0.3 < err_blind
    assert PVI().fit(ds).policy_.numeric == ("lab",)
    m.save(tmp_path / "m")
    back = load_learner(tmp_path / "m")
    assert back.numeric_choice_ == m.numeric_choice_ and back.ignored_numeric_ == ("age",)
    np.testing.assert_array_equal(back.action_probs(ds), m.action_probs(ds))


def test_numeric_auto_leaves_a_state_function_alone_on_the_garnet_test_bed() -> None:
    """Garnet's severity is a function of the categorical state: auto bins nothing, and the
    tables are those of numeric='ignore' (the test beds' numbers are unchanged)."""
    from equicare.learn import PVI

    _, ds = _panel(0, n=2000)
    for cls in (SPIBB, PVI):
        auto, ign = cls().fit(ds), cls(numeric="ignore").fit(ds)
        assert auto.policy_.numeric == () and auto.ignored_numeric_ == ("severity",)
        np.testing.assert_array_equal(auto.policy_.table, ign.policy_.table)
        np.testing.assert_array_equal(auto.policy_.keys, ign.policy_.keys)


def test_soft_variant_and_config() -> None:
    mdp, ds = _panel(0, n=2000)
    vb = mdp.value(mdp.behavior_policy)
    m = SPIBB(variant="soft", epsilon=0.1).fit(ds)
    table, _ = garnet_policy_table(mdp, ds, m.policy_)
    assert mdp.value(table) > vb
    m0 = SPIBB(variant="soft", epsilon=0.0).fit(ds)
    np.testing.assert_allclose(m0.policy_.table[:-1], m0.behavior_, rtol=1e-3, atol=1e-12)
    msg = "The 'variant' parameter of SPIBBConfig must be one of 'pi_b', 'soft'. Got 'x' instead."
    with pytest.raises(ValueError, match=re.escape(msg)):
        SPIBBConfig(variant="x")  # type: ignore[arg-type]
    cfg = SPIBBConfig(n_wedge=float("inf"))
    assert SPIBBConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidParameterError, match="Unknown SPIBBConfig keys"):
        SPIBBConfig.from_dict({"n_wedge_": 3})
    with pytest.raises(NotFittedError):
        SPIBB().action_probs(ds)


def test_thin_combinations_of_categorical_columns_warn() -> None:
    """A second categorical column that splits the cells into thin combinations draws a
    DataWarning naming the learner and the columns with ``cells="all"``; by default
    (``cells="auto"``) a column that does not change the dynamics is pooled over, and the
    policy is the one-column policy."""
    import warnings
    from dataclasses import replace

    from equicare.exceptions import DataWarning

    _, ds = _panel(0, n=300)
    site = np.random.default_rng(0).integers(0, 100, ds.n_episodes)[ds.episode_index]
    two = replace(ds, categorical=np.c_[ds.categorical, site],
                  categorical_names=(*ds.categorical_names, "site"),
                  categorical_levels=(*ds.categorical_levels, tuple(range(100))), _cache={})
    with pytest.warns(DataWarning, match=r"SPIBB's cells are the combinations of the "
                      r"categorical states \(state x site"):
        SPIBB(n_wedge=20, cells="all").fit(two)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        one = SPIBB(n_wedge=20).fit(ds)
        pooled = SPIBB(n_wedge=20).fit(two)
    assert pooled.cell_columns_ == ("state",) and one.cell_choice_ is None
    assert pooled.cell_choice_ is not None and pooled.cell_choice_["dropped"] == ["site"]
    np.testing.assert_allclose(pooled.action_probs(two), one.action_probs(ds))
    assert SPIBB(n_wedge=20, cells=("site",)).fit(two).cell_columns_ == ("site",)
    with pytest.raises(ValueError, match=r"SPIBB's cells \['ward'\] name \['ward'\], which is "
                       r"not a categorical state column"):
        SPIBB(cells=("ward",)).fit(two)
    with pytest.raises(ValueError, match="The 'cells' parameter of SPIBBConfig"):
        SPIBBConfig(cells=("state", "state"))


def test_scores_are_the_cell_log_probabilities_and_values(tmp_path) -> None:
    """scores() as docs/learn.md lists it for every learner: (n_steps, n_actions) per row."""
    from safetensors.torch import load_file, save_file

    from equicare.exceptions import PolicyError
    from equicare.learn import load_learner
    from equicare.learn._spibb import MSG_NO_CRITIC

    _, ds = _panel(0, n=500)
    with pytest.raises(NotFittedError):
        SPIBB().scores(ds)
    m = SPIBB(n_wedge=20).fit(ds)
    s = m.scores(ds)
    idx = m.policy_.cell_index(ds)
    assert s.shape == (ds.n_steps, ds.n_actions)
    np.testing.assert_array_equal(s.argmax(axis=1), m.predict(ds))
    np.testing.assert_allclose(np.exp(s), m.policy_.table[idx])  # softmax = the table row
    assert np.isneginf(s).any()  # bootstrapped zero-mass actions of a cell
    q = m.scores(ds, "critic")
    assert q.shape == s.shape
    kept = idx < m.policy_.n_cells  # rows of cells of fewer than 11 episodes: no value
    assert (~kept).any() and np.isnan(q[~kept]).all()
    q, idx = q[kept], idx[kept]
    modelled = m.counts_[idx] > 0
    np.testing.assert_allclose(q[modelled], m.q_[idx][modelled], rtol=1e-3)  # 4 digits kept
    assert np.isnan(q[~modelled]).all()
    # cells never seen in training: the fallback policy row, no value
    _, other = _panel(1, n=300, cfg=GarnetConfig(n_states=60, n_actions=5, n_successors=3))
    new = m.policy_.cell_index(other) == m.policy_.n_cells
    assert new.any()
    np.testing.assert_allclose(np.exp(m.scores(other)[new]),
                               np.broadcast_to(m.policy_.table[-1], (new.sum(), 5)))
    assert np.isnan(m.scores(other, "critic")[new]).all()
    with pytest.raises(InvalidParameterError, match=re.escape(
            "The 'network' parameter of SPIBB.scores must be one of")):
        m.scores(ds, "target")
    # the model folder keeps both
    folder = m.save(tmp_path / "m")
    back = load_learner(folder)
    np.testing.assert_array_equal(back.scores(ds), s)
    np.testing.assert_array_equal(back.scores(ds, "critic"), m.scores(ds, "critic"))
    # a folder saved before the values were kept: the policy scores, a clear critic error
    w = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in w.items() if not k.startswith("critic.")},
              str(folder / "model.safetensors"))
    old = SPIBB.load(folder)
    np.testing.assert_array_equal(old.scores(ds), s)
    with pytest.raises(PolicyError, match=re.escape(
            MSG_NO_CRITIC.format(source=str(folder)).split(";")[0])):
        old.scores(ds, "critic")


@pytest.mark.parametrize("algo", ["spibb", "pvi"])
@pytest.mark.parametrize("behavior", ["known", "counts"])
def test_model_folder_keeps_no_small_cell_and_no_logged_propensity(tmp_path, algo,
                                                                   behavior) -> None:
    """Privacy audit #1: a cell of one or two members got its own table row, which held those
    rows' exact logged propensities and action history. Cells of fewer than MIN_CELL (11)
    episodes now read the fallback row, and every stored number is rounded."""
    from safetensors.numpy import load_file

    from equicare.learn import PVI, load_learner
    from equicare.utils import MIN_CELL

    rng = np.random.default_rng(3)
    frames = []
    for lang, n_ep, first in (("english", 40, 0), ("spanish", 25, 100), ("amharic", 1, 200),
                              ("tagalog", 2, 300)):
        for e in range(first, first + n_ep):
            frames.append(pd.DataFrame({"ep": e, "t": np.arange(8), "lang": lang,
                                        "a": rng.integers(0, 6, 8), "r": rng.normal(size=8)}))
    df = pd.concat(frames, ignore_index=True)
    df["p"] = rng.uniform(0.01, 0.3, len(df))  # full-precision logged propensities
    man = {"dataset": {"episode": "ep", "time": "t", "categorical_states": ["lang"],
                       "gamma": 0.9, "behavior_prob": "p"},
           "actions": {"a": {"levels": 6}}, "reward": {"column": "r"}}
    ds = from_frame(df, man, emit_warnings=False)
    learner = (SPIBB(n_wedge=5, behavior=behavior) if algo == "spibb"
               else PVI(behavior=behavior))
    m = learner.fit(ds)
    m.save(tmp_path / "m")
    t = load_file(str(tmp_path / "m" / "model.safetensors"))
    stored = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in t.values()])
    assert not np.isin(stored[np.isfinite(stored)], df["p"].to_numpy()).any()
    assert not np.isin(stored[np.isfinite(stored)], df["r"].to_numpy()).any()
    # only the two large cells have a row; the two small ones are pooled with unseen cells
    back = load_learner(tmp_path / "m")
    pol = back.policy_
    idx = pol.cell_index(ds)
    ep_per_cell = pd.Series(ds.episode_index).groupby(idx).nunique()
    assert (ep_per_cell.drop(pol.n_cells) >= MIN_CELL).all() and pol.n_cells == 2
    small = df["lang"].isin(["amharic", "tagalog"]).to_numpy()
    assert (idx[small] == pol.n_cells).all() and (idx[~small] < pol.n_cells).all()
    assert m.pooled_cells_ == back.pooled_cells_ == 2
    # their rows read the pooled (fallback) row: the marginal stand-in, left to the clinicians,
    # so on the panel each gets its logged propensity on its logged action
    np.testing.assert_array_equal(back.scores(ds)[small],
                                  np.log(np.broadcast_to(pol.table[-1], (small.sum(), 6))))
    assert pol.deferred_mask(ds)[small].all() and np.isnan(back.scores(ds, "critic")[small]).all()
    probs = back.action_probs(ds)
    rows = np.flatnonzero(small)
    np.testing.assert_allclose(probs[rows, ds.actions[rows]], df["p"].to_numpy()[rows])
    np.testing.assert_array_equal(probs, m.action_probs(ds))
