"""BehaviorModel: recovers known propensities, cross-fits, floors, calibrates, plugs classifiers."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

from equicare.data import TrajectoryDataset
from equicare.exceptions import NotFittedError
from equicare.policy import BehaviorModel, Policy
from equicare.spaces import FactoredActionSpace

from ..ope._mdp import BEHAVIOR, small_mdp


def _factored_data(n_episodes: int = 600, length: int = 5, seed: int = 0
                   ) -> tuple[TrajectoryDataset, np.ndarray]:
    """Two action components with known conditional logits; returns data and true (n, 6) probs."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    x = rng.normal(size=(n, 2)).astype(np.float32)
    # component 1 (3 levels): softmax(x @ W1 + b1); component 2 (2 levels) given component 1
    W1 = np.array([[1.0, -0.5, 0.0], [0.0, 0.8, -1.0]])
    b1 = np.array([0.2, 0.0, -0.3])
    l1 = x @ W1 + b1
    p1 = np.exp(l1 - l1.max(1, keepdims=True))
    p1 /= p1.sum(1, keepdims=True)
    w2 = np.array([0.7, -0.4])
    b2 = np.array([-0.5, 0.0, 0.8])  # P(a2=1 | x, a1) = sigmoid(x @ w2 + b2[a1])
    p2 = 1 / (1 + np.exp(-(x @ w2)[:, None] - b2[None, :]))  # (n, 3)
    truth = np.empty((n, 6))
    for a1 in range(3):
        truth[:, 2 * a1] = p1[:, a1] * (1 - p2[:, a1])
        truth[:, 2 * a1 + 1] = p1[:, a1] * p2[:, a1]
    cdf = truth.cumsum(1)
    acts = np.minimum((cdf < rng.random(n)[:, None]).sum(1), 5)
    offs = np.arange(0, n + 1, length, dtype=np.int64)
    space = FactoredActionSpace.from_levels({"c1": ["a", "b", "c"], "c2": ["no", "yes"]})
    ds = TrajectoryDataset(
        states=x, actions=acts.astype(np.int64), reward_components=np.zeros((n, 1)),
        terminals=np.isin(np.arange(n), offs[1:] - 1), episode_offsets=offs,
        episode_ids=np.arange(n_episodes), times=np.tile(np.arange(length), n_episodes),
        action_space=space, state_names=("x0", "x1"),
        behavior_prob=truth[np.arange(n), acts])
    return ds, truth


def test_recovers_tabular_behaviour_policy():
    ds = small_mdp(horizon=3).sample(BEHAVIOR, 3000, seed=0)
    bm = BehaviorModel(n_folds=3, history=False).fit(ds)
    p = bm.action_probs(ds)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # logistic on the one-hot state is saturated: probabilities are the cell frequencies
    np.testing.assert_allclose(p, BEHAVIOR[ds.categorical[:, 0]], atol=0.03)
    assert isinstance(bm, Policy) and bm.n_actions == 2


@pytest.mark.parametrize("factored", [True, False])
def test_recovers_factored_propensities(factored):
    ds, truth = _factored_data()
    bm = BehaviorModel(factored=factored, n_folds=3, history=False, C=10.0).fit(ds)
    assert bm.factored_ is factored
    p = bm.action_probs(ds)
    tv = 0.5 * np.abs(p - truth).sum(axis=1).mean()
    # the chain is well specified (total variation of a few %); the flat softmax is not
    assert tv < (0.04 if factored else 0.08)
    lp = bm.logged_prob(ds)
    np.testing.assert_allclose(lp, p[np.arange(ds.n_steps), ds.actions], rtol=1e-10)
    assert bm.calibration_["ece"] < 0.02
    assert bm.calibration_["mean_abs_log_ratio_vs_logged"] < 0.15
    bins = bm.calibration_["bins"]  # every (row, action) pair, bins of 1-10 decisions hidden
    shown = sum(b.get("count", 0) for b in bins)
    assert shown == ds.n_steps * 6 or (shown < ds.n_steps * 6
                                       and any(b.get("suppressed") for b in bins))


def test_cross_fitting_out_of_fold():
    ds, _ = _factored_data(n_episodes=200)
    bm = BehaviorModel(n_folds=4, history=False).fit(ds)
    assert np.array_equal(bm.logged_prob(ds), bm.oof_logged_prob_)
    # out-of-fold rows are predicted by the model that did not see their episode
    fold = bm.fold_of_episode_[ds.episode_index]
    assert set(np.unique(bm.fold_of_episode_)) == {0, 1, 2, 3}
    rows = np.flatnonzero(fold == 2)
    X = bm._design(ds)[rows]
    own = bm._logged_probs(bm.models_[2], X, ds.action_codes[rows], ds.actions[rows])
    np.testing.assert_allclose(bm.oof_logged_prob_[rows], own)
    # in-sample probabilities of the logged action are higher on average (overfitting)
    ins = BehaviorModel(n_folds=1, history=False).fit(ds)
    assert ins.oof_logged_prob_.mean() > bm.oof_logged_prob_.mean()
    # on other data the fold models are averaged
    other = ds.subset(np.arange(50))
    avg = np.mean([bm._logged_probs(m, bm._design(other), other.action_codes, other.actions)
                   for m in bm.models_], axis=0)
    np.testing.assert_allclose(bm.logged_prob(other), avg)


def test_cross_fitting_deals_people_with_all_their_episodes():
    """With members (re-enrolment), a person's episodes share one fold: no out-of-fold
    propensity comes from a model fitted on the same person's other stays."""
    ds, _ = _factored_data(n_episodes=300)
    members = np.array([f"p{i // 3}" for i in range(ds.n_episodes)], dtype=object)
    bm = BehaviorModel(n_folds=5, history=False).fit(replace(ds, members=members))
    folds_per_person = [np.unique(bm.fold_of_episode_[members == p]).size
                        for p in np.unique(members)]
    assert max(folds_per_person) == 1
    assert set(np.unique(bm.fold_of_episode_)) == {0, 1, 2, 3, 4}
    # without members the episodes are dealt one by one, as before
    plain = BehaviorModel(n_folds=5, history=False).fit(ds)
    assert max(np.unique(plain.fold_of_episode_[members == p]).size
               for p in np.unique(members)) > 1


def test_floor_counts_rows():
    ds, _ = _factored_data(n_episodes=100)
    bm = BehaviorModel(n_folds=2, floor=0.2, history=False).fit(ds)
    raw = bm.logged_prob(ds)
    assert bm.n_floored_ == int(np.sum(raw < 0.2)) == bm.n_floored(ds) > 0
    np.testing.assert_allclose(bm.propensities(ds), np.maximum(raw, 0.2))
    assert bm.summary()["n_floored"] == bm.n_floored_


def test_pluggable_classifiers_and_sklearn_api():
    ds, truth = _factored_data(n_episodes=400)
    uniform_tv = 0.5 * np.abs(1 / 6 - truth).sum(axis=1).mean()  # about 0.34
    for est, tol in ((LogisticRegression(C=0.5, max_iter=500), 0.06),
                     (DecisionTreeClassifier(max_depth=3), 0.22), ("lgbm", 0.2)):
        if est == "lgbm":
            pytest.importorskip("lightgbm")
        bm = BehaviorModel(estimator=est, n_folds=2).fit(ds)
        p = bm.action_probs(ds)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)
        assert 0.5 * np.abs(p - truth).sum(axis=1).mean() < min(tol, uniform_tv)
    c = clone(BehaviorModel(estimator="lgbm", n_folds=3, floor=0.01))
    assert c.get_params()["n_folds"] == 3 and not hasattr(c, "models_")


def test_history_features_and_new_data():
    ds, _ = _factored_data(n_episodes=100)
    bm = BehaviorModel(n_folds=2, history=True).fit(ds)
    assert bm.n_features_in_ == 2 + 5 + 1  # states, previous components (3 + 2), step
    assert bm.action_probs(ds.subset([3, 1])).shape == (10, 6)


def test_observed_in_state_uses_categorical_counts():
    beh = np.array([[1.0, 0.0], [0.5, 0.5]])  # action 1 never taken in state 0
    ds = small_mdp(horizon=2).sample(beh, 200, seed=0)
    bm = BehaviorModel(n_folds=2).fit(ds)
    obs = bm.observed_in_state(ds)
    s = ds.categorical[:, 0]
    assert not obs[s == 0, 1].any() and obs[s == 0, 0].all() and obs[s == 1].all()



def test_observed_with_several_categorical_columns_is_per_level():
    """Two categorical columns: an action counts as logged at a row when every column's level
    saw it (their combinations are too thin to tell), for the behaviour model and for evaluate's
    logged-propensity check alike; memory is per level, not per combination."""
    from equicare.ope._support import LoggedSupport, cell_observed

    beh = np.array([[1.0, 0.0], [0.5, 0.5]])  # action 1 never taken in state 0
    ds = small_mdp(horizon=2).sample(beh, 300, seed=1)
    rng = np.random.default_rng(0)
    site = rng.integers(0, 3, ds.n_episodes)[ds.episode_index]
    acts = ds.actions.copy()
    acts[(site == 2)] = 0  # site s2 never logs action 1
    both = replace(ds, actions=acts, categorical=np.c_[ds.categorical, site],
                   categorical_names=(*ds.categorical_names, "site"),
                   categorical_levels=(*ds.categorical_levels, ("s0", "s1", "s2")),
                   behavior_prob=None, _cache={})
    s = both.categorical[:, 0]
    expected = np.ones((both.n_steps, 2), dtype=bool)
    expected[:, 1] = (s != 0) & (site != 2)
    bm = BehaviorModel(n_folds=2).fit(both)
    assert [c.shape for c in bm.cat_action_counts_] == [(2, 2), (3, 2)]
    np.testing.assert_array_equal(bm.observed_in_state(both), expected)
    np.testing.assert_array_equal(cell_observed(both), expected)
    # a target always choosing action 1: its unsupported mass is the rows where it was never
    # logged at some column's level
    target = np.tile([0.0, 1.0], (both.n_steps, 1))
    mass = LoggedSupport(both).mass(target)
    np.testing.assert_allclose(mass, ~expected[:, 1])

def test_not_fitted_and_bad_parameters():
    ds, _ = _factored_data(n_episodes=20)
    with pytest.raises(NotFittedError, match=re.escape(
            "This BehaviorModel instance is not fitted yet; call fit first.")):
        BehaviorModel().action_probs(ds)
    cases = [
        ({"factored": "yes"}, "The 'factored' parameter of BehaviorModel must be True, False or "
                              "'auto'. Got 'yes' instead."),
        ({"n_folds": 0}, "The 'n_folds' parameter of BehaviorModel must be an int >= 1 or "
                         "'auto'. Got 0 instead."),
        ({"floor": 1.5}, "The 'floor' parameter of BehaviorModel must be a float in [0, 1). "
                         "Got 1.5 instead."),
        ({"estimator": "svm"}, "The 'estimator' parameter of BehaviorModel must be 'logistic', "
                               "'lgbm' or a scikit-learn classifier with predict_proba. "
                               "Got 'svm' instead."),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=re.escape(msg)):
            BehaviorModel(**kwargs).fit(ds)


class _Noisy(LogisticRegression):
    """A classifier whose fit warns twice: a ConvergenceWarning and something unexpected."""

    def fit(self, X, y, sample_weight=None):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        warnings.warn("solver gave up", ConvergenceWarning, stacklevel=2)
        warnings.warn("a column looks constant", RuntimeWarning, stacklevel=2)
        return super().fit(X, y, sample_weight)


def test_fit_absorbs_only_convergence_warnings():
    import warnings

    ds, _ = _factored_data(n_episodes=60)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bm = BehaviorModel(estimator=_Noisy(max_iter=200), n_folds=2).fit(ds)
    assert bm.converged_ is False  # the ConvergenceWarning is recorded on the model ...
    cats = {w.category.__name__ for w in caught}
    assert "ConvergenceWarning" not in cats  # ... not raised
    msgs = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert msgs and set(msgs) == {"a column looks constant"}  # every other warning passes on
    with pytest.raises(RuntimeWarning, match="a column looks constant"):  # warnings as errors
        BehaviorModel(estimator=_Noisy(max_iter=200), n_folds=2).fit(ds)


def _garnet_data(n_episodes: int = 1500, seed: int = 0, logged: bool = False):
    from equicare.data import from_frame
    from equicare.sim._garnet_cli import garnet_frame, garnet_manifest
    from equicare.sim.garnet import GarnetConfig, garnet_panel

    cfg = GarnetConfig(n_states=200, n_actions=8, n_successors=3)
    mdp, pan = garnet_panel(cfg, n_episodes, seed)
    manifest = garnet_manifest(cfg)
    frame = garnet_frame(mdp, pan)
    if not logged:
        manifest = replace(manifest, behavior_prob=None)
    return from_frame(frame, manifest, emit_warnings=False)


def test_sparse_design_is_the_dense_design():
    ds = _garnet_data(300)
    bm = BehaviorModel(n_folds=1).fit(ds)
    assert bm.sparse_  # 200 one-hot levels + 8 action columns: density ~ 2%
    dense = BehaviorModel(n_folds=1)._design.__func__  # the dense branch of the same method
    bm_dense = clone(bm)
    bm_dense.step_scale_, bm_dense.sparse_ = bm.step_scale_, False
    bm_dense.group_levels_ = bm.group_levels_
    np.testing.assert_array_equal(bm._design(ds).toarray(), dense(bm_dense, ds))


def test_sparse_logistic_fits_the_dense_optimum():
    """Scaling without centring only moves the unpenalised intercepts: the same optimum."""
    from equicare.policy._behavior import _make_classifier

    ds = _garnet_data(400)
    bm = BehaviorModel(n_folds=1).fit(ds)
    xs = bm._design(ds)
    probs = []
    for sparse, x in [(True, xs), (False, xs.toarray())]:
        clf = _make_classifier("logistic", 1.0, 5000, 0, sparse=sparse)
        clf.set_params(logisticregression__tol=1e-10)
        probs.append(clf.fit(x, ds.actions).predict_proba(x))
    np.testing.assert_allclose(probs[0], probs[1], atol=2e-5)


def test_sparse_behaviour_model_recovers_logged_propensities(monkeypatch):
    import equicare.policy._behavior as mod

    ds = _garnet_data(1500, logged=True)
    sparse = BehaviorModel(n_folds=3).fit(ds)
    monkeypatch.setattr(mod, "SPARSE_DENSITY", 0.0)  # force the dense inputs
    dense = BehaviorModel(n_folds=3).fit(ds)
    assert sparse.sparse_ and not dense.sparse_
    ps, pd = sparse.logged_prob(ds), dense.logged_prob(ds)
    # the same penalised model up to the solver's tolerance
    assert np.median(np.abs(ps - pd)) < 2e-3
    assert abs(sparse.calibration_["log_loss"] - dense.calibration_["log_loss"]) < 5e-3
    truth = np.log(ds.behavior_prob)
    err_s = np.mean(np.abs(np.log(ps) - truth))
    err_d = np.mean(np.abs(np.log(pd) - truth))
    assert err_s < err_d + 0.01
    # new data (fold-averaged) and full distributions work on sparse inputs too
    other = ds.subset(np.arange(0, ds.n_episodes, 7))
    p = sparse.action_probs(other)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(sparse.logged_prob(other),
                               p[np.arange(other.n_steps), other.actions], rtol=1e-10)


def test_factored_model_with_sparse_inputs(monkeypatch):
    import equicare.policy._behavior as mod

    ds, _ = _factored_data(400)
    cat = np.repeat(np.arange(400) % 120, 5).astype(np.int64)[:, None]
    ds = replace(ds, categorical=cat, categorical_names=("site",),
                 categorical_levels=(tuple(f"s{i}" for i in range(120)),))
    bm = BehaviorModel(factored=True, n_folds=2, C=10.0).fit(ds)
    assert bm.sparse_ and bm.factored_
    p = bm.action_probs(ds)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(bm.logged_prob(ds), p[np.arange(ds.n_steps), ds.actions],
                               rtol=1e-10)
    monkeypatch.setattr(mod, "SPARSE_DENSITY", 0.0)
    dense = BehaviorModel(factored=True, n_folds=2, C=10.0).fit(ds)
    assert not dense.sparse_
    # the same chain of penalised models, up to the solver's tolerance
    assert 0.5 * np.abs(p - dense.action_probs(ds)).sum(axis=1).mean() < 0.01


def test_logged_support_reuses_its_unsupported_cells_across_targets_and_thresholds(
        monkeypatch):
    """The fast model's unsupported cells are computed once per threshold and reused for every
    target: the mass equals the direct computation from the model's distributions, also for a
    block of rows (taken in pieces of 7 rows, so that the pieces cross its ends)."""
    from equicare.ope import _support
    from equicare.ope._support import LoggedSupport, unsupported_mass

    ds, _ = _factored_data(n_episodes=300)
    monkeypatch.setattr(_support, "MASS_CELLS", 7 * ds.n_actions)
    checker = LoggedSupport(ds, random_state=0)
    assert checker._model is not None
    probs = checker._model.action_probs(ds)
    rng = np.random.default_rng(3)
    for threshold in (0.05, 0.2, 0.05):
        for _ in range(2):
            target = rng.dirichlet(np.ones(ds.n_actions), size=ds.n_steps)
            expected = unsupported_mass(target, probs, None, threshold)
            assert expected.max() > 0
            np.testing.assert_allclose(checker.mass(target, threshold), expected, atol=1e-12)
            rows = slice(103, 1011)
            np.testing.assert_allclose(checker.block_mass(target[rows], rows, threshold),
                                       expected[rows], atol=1e-12)


def test_auto_fits_a_saturated_categorical_state_flat_and_in_sample():
    """A state of thin categorical levels (Garnet, 200 states, 1,500 episodes; logged truth):
    cross-fitting gives actions a level's other folds never logged a probability near 0, and
    a chain over two action components cannot represent a per-level joint choice. The default
    fits one flat model in-sample there: no logged row floored and about half the error of the
    cross-fitted model against the true propensities (mean |log ratio| 0.08 against 0.14 with
    one component, 200 rows floored, and 0.20 for the chain over two, 111 floored)."""
    ds = _garnet_data(1500, logged=True)
    two = replace(ds, action_space=FactoredActionSpace.from_levels(
        {"drug": range(2), "dose": range(4)}), _cache={})  # the same 8 actions, 2 x 4
    for data in (ds, two):
        auto = BehaviorModel().fit(data)
        assert auto.saturated_ and not auto.factored_ and auto.n_folds_ == 1
        assert auto.n_floored_ == 0 and auto.summary()["n_folds"] == 1
        old = BehaviorModel(n_folds=5, factored=len(data.action_space.sizes) > 1).fit(data)
        assert old.n_folds_ == 5 and old.n_floored_ > 100  # the previous default, reachable
        err = [m.calibration_["mean_abs_log_ratio_vs_logged"] for m in (auto, old)]
        assert err[0] < 0.1 and err[0] < 0.6 * err[1], err
    dense = BehaviorModel().fit(_factored_data(200)[0])  # numeric states: the chain, 5 folds
    assert not dense.saturated_ and dense.factored_ and dense.n_folds_ == 5


def test_calibration_bins_of_a_few_decisions_are_suppressed(tmp_path):
    """The reliability table shows no bin whose logged (row, action) pairs, or pairs not
    logged, number 1 to 10: on a 160-member care panel the [0.05, 0.1) bin held 43 pairs, 5
    of them logged (observed_rate 0.116 and count 43 gave back 5 decisions), and is hidden
    with the next smallest bin, which would give it back from the totals (one logged action per
    sampled row)."""
    from equicare.data import Manifest, load_dataset
    from equicare.utils import MIN_CELL

    from ..conftest import MANIFEST, make_frame

    path = tmp_path / "panel.parquet"
    make_frame(n_members=160, seed=5, min_len=1, max_len=10).to_parquet(path, index=False)
    ds = load_dataset(path, Manifest.from_dict(MANIFEST), emit_warnings=False)
    # the states-only model of the panel that showed it (its group inputs move the bins)
    bins = BehaviorModel(random_state=0, groups=False).fit(ds).calibration_["bins"]
    hidden = [b for b in bins if b.get("suppressed")]
    assert [(b["low"], b["high"]) for b in hidden] == [(0.05, 0.1), (0.2, 0.4)]
    assert all(set(b) == {"low", "high", "suppressed"} for b in hidden)
    for b in bins:
        if not b.get("suppressed"):
            logged = round(b["observed_rate"] * b["count"])
            assert logged == 0 or logged >= MIN_CELL
            assert b["count"] - logged == 0 or b["count"] - logged >= MIN_CELL
    # one action logged per row: the published bins never give a hidden one back
    shown = sum(round(b["observed_rate"] * b["count"]) for b in bins if not b.get("suppressed"))
    assert ds.n_steps - shown >= MIN_CELL


@pytest.mark.parametrize("kw", [{}, {"n_folds": 3}, {"factored": True}])
def test_repeated_rows_are_fitted_once_with_their_counts(monkeypatch, kw):
    """A logistic likelihood depends on the data only through the counts of its distinct
    (inputs, target) rows: a saturated state without history (200 levels x 8 actions, 21,506
    rows) is fitted on at most 1,600 weighted rows per model, to the same probabilities."""
    import equicare.policy._behavior as mod

    ds = _garnet_data(1500)
    if kw.get("factored"):
        ds = replace(ds, action_space=FactoredActionSpace.from_levels(
            {"drug": range(2), "dose": range(4)}), _cache={})
    fast = BehaviorModel(history=False, **kw).fit(ds)
    assert fast.sparse_ and len(fast.n_fit_rows_) == fast.n_folds_ * (1 + fast.factored_)
    assert max(fast.n_fit_rows_) <= 200 * 8 < ds.n_steps // 10
    monkeypatch.setattr(mod, "DEDUPE_SHARE", 0.0)  # every row, as before
    slow = BehaviorModel(history=False, **kw).fit(ds)
    assert min(slow.n_fit_rows_) > ds.n_steps // 2
    np.testing.assert_allclose(fast.logged_prob(ds), slow.logged_prob(ds), atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.action_probs(ds), slow.action_probs(ds), atol=1e-6, rtol=0)
    other = ds.subset(np.arange(0, ds.n_episodes, 7))  # new data: fold-averaged, the same
    np.testing.assert_allclose(fast.action_probs(other), slow.action_probs(other), atol=1e-6,
                               rtol=0)


def test_row_keys_are_exact_for_sparse_rows():
    """Equal keys exactly for equal rows, whatever the stored order or explicit zeros."""
    import scipy.sparse as sp

    from equicare.policy._behavior import dedupe_rows, row_keys

    dense = np.array([[0, 1.5, 0, 2], [0, 1.5, 0, 2], [1.5, 0, 0, 2], [0, 0, 0, 0],
                      [0, 1.5, 0, 0], [0, 0, 0, 0]])
    # row 0 unsorted, with an explicit zero and a duplicate entry (1.0 + 0.5 at column 1)
    x = sp.csr_matrix((np.array([2.0, 1.0, 0.0, 0.5, 1.5, 2, 1.5, 2, 1.5]),
                       np.array([3, 1, 2, 1, 1, 3, 0, 3, 1]),
                       np.array([0, 4, 6, 8, 8, 9, 9])), shape=(6, 4))
    before = x.data.copy()
    np.testing.assert_array_equal(x.toarray(), dense)
    first, inv, counts = dedupe_rows(row_keys(x), max_share=1.0)
    np.testing.assert_array_equal(dense[first][inv], dense)  # every row from its distinct row
    assert first.size == 4 and sorted(counts) == [1, 1, 2, 2]
    np.testing.assert_array_equal(row_keys(dense), dense)
    assert dedupe_rows(row_keys(x), max_share=0.5) is None  # 4 of 6 distinct: not worth it
    np.testing.assert_array_equal(x.data, before)  # the caller's matrix is left alone


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_softmax_levels_matches_the_reductions_over_a_last_axis(size: int) -> None:
    """The chain's softmax with the levels on the middle axis has the bits of the reductions.

    NumPy sums fewer than 8 terms left to right. A class never seen (logit -inf) gets
    probability 0.
    """
    from equicare.policy._behavior import _softmax_levels

    logits = np.random.default_rng(size).normal(scale=8.0, size=(50, 4, size))
    if size > 1:
        logits[:, 1, 0] = -np.inf
    ref = np.exp(logits - logits.max(axis=2, keepdims=True))
    ref /= ref.sum(axis=2, keepdims=True)
    got = _softmax_levels(np.ascontiguousarray(logits.transpose(0, 2, 1)))
    assert np.array_equal(got.transpose(0, 2, 1), ref)
    assert size == 1 or (ref[:, 1, 0] == 0.0).all()


def test_the_linear_chain_is_the_models_chain(monkeypatch) -> None:
    """The chain from the logistic coefficients (levels on the middle axis below 8 levels, on
    the last from 8) equals the chain of the models' own predict_proba, one call per prefix."""
    from equicare.policy import _behavior

    rng = np.random.default_rng(0)
    n_ep, length = 200, 3
    n = n_ep * length
    space = FactoredActionSpace.from_levels({"c1": [f"l{j}" for j in range(9)], "c2": list("abc")})
    x = rng.normal(size=(n, 2)).astype(np.float32)
    c1 = np.clip((2 * x[:, 0] + rng.normal(size=n) + 4).astype(np.int64), 0, 8)
    c2 = (c1 + (x[:, 1] > 0) + rng.integers(0, 2, n)) % 3
    offs = np.arange(0, n + 1, length, dtype=np.int64)
    ds = TrajectoryDataset(
        states=x, actions=space.to_flat(np.stack([c1, c2], axis=1)),
        reward_components=np.zeros((n, 1)), terminals=np.isin(np.arange(n), offs[1:] - 1),
        episode_offsets=offs, episode_ids=np.arange(n_ep), times=np.tile(np.arange(length), n_ep),
        action_space=space, state_names=("x0", "x1"))
    bm = BehaviorModel(n_folds=2, random_state=0).fit(ds)
    fast = bm.action_probs(ds)
    monkeypatch.setattr(_behavior.BehaviorModel, "_linear_parts", staticmethod(
        lambda *args: None))
    np.testing.assert_allclose(fast, bm.action_probs(ds), rtol=0, atol=1e-12)


def _grouped_practice(n_episodes: int = 1500, length: int = 4, seed: int = 0
                      ) -> tuple[TrajectoryDataset, np.ndarray]:
    """Practice that treats a small group differently in the same states (as audits find).

    ``P(a=1 | x, g) = sigmoid(-1.5 + 0.5 x + 2.5 [g = small])``; 15% of the episodes are in the
    small group. The reward is ``a`` (small group) or ``0.2 a`` (others) plus noise, so the
    value of "act with probability 0.9" is ``0.9 * 4`` and ``0.18 * 4`` per episode.
    Returns the dataset (no logged propensities) and the true logged-action probabilities.
    """
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    small = rng.random(n_episodes) < 0.15
    small_row = np.repeat(small, length)
    x = rng.normal(size=(n, 1)).astype(np.float32)
    p1 = 1 / (1 + np.exp(-(-1.5 + 0.5 * x[:, 0] + 2.5 * small_row)))
    acts = (rng.random(n) < p1).astype(np.int64)
    r = acts * np.where(small_row, 1.0, 0.2) + rng.normal(0, 0.1, n)
    offs = np.arange(0, n + 1, length, dtype=np.int64)
    ds = TrajectoryDataset(
        states=x, actions=acts, reward_components=r[:, None],
        terminals=np.isin(np.arange(n), offs[1:] - 1), episode_offsets=offs,
        episode_ids=np.arange(n_episodes), times=np.tile(np.arange(length), n_episodes),
        action_space=FactoredActionSpace.from_levels({"act": ["no", "yes"]}),
        state_names=("x",), gamma=1.0,
        groups={"grp": np.where(small, "small", "large").astype(object)})
    return ds, np.where(acts == 1, p1, 1 - p1)


def test_propensities_follow_practice_that_differs_by_group():
    """The groups are inputs: practice that treats a group differently given the state is seen.

    Before, the model read the states only; in the small group it put the logged action's
    probability off by a factor of 2.5 on average (mean |log ratio| 0.9), so every importance
    weight of that group was wrong.
    """
    ds, true_p = _grouped_practice()
    bm = BehaviorModel(n_folds=2).fit(ds)
    small = np.repeat(ds.groups["grp"] == "small", ds.episode_lengths)
    err = np.abs(np.log(bm.logged_prob(ds) / true_p))
    assert err[small].mean() < 0.1 and err[~small].mean() < 0.1
    # new data are coded by the levels seen in fitting: one group alone, or an unseen label
    only_small = ds.subset(np.flatnonzero(ds.groups["grp"] == "small")[:20])
    np.testing.assert_allclose(bm.action_probs(only_small).sum(1), 1.0)
    assert np.abs(np.log(bm.logged_prob(only_small) / true_p[small][:80])).mean() < 0.1
    other = replace(only_small, groups={"grp": np.full(20, "new", dtype=object)})
    assert np.isfinite(bm.action_probs(other)).all()
    # groups=False keeps the states-only model
    blind = BehaviorModel(n_folds=2, groups=False).fit(ds)
    assert blind.n_features_in_ == bm.n_features_in_ - 2
    # a level of fewer than 11 episodes gets no column of its own
    few = ds.subset(np.r_[np.flatnonzero(ds.groups["grp"] == "small")[:10],
                          np.flatnonzero(ds.groups["grp"] == "large")[:200]])
    assert BehaviorModel(n_folds=2).fit(few).group_levels_ == {"grp": ("large",)}


def test_group_value_with_estimated_propensities_is_near_the_truth():
    """evaluate's subgroup IS value of a group that practice treats differently (exact truth)."""
    from equicare.ope import evaluate
    from equicare.policy import CallablePolicy

    ds, _ = _grouped_practice(n_episodes=3000, seed=1)
    target = CallablePolicy(lambda x: np.tile([0.1, 0.9], (x.shape[0], 1)), n_actions=2)
    res = evaluate(ds, target, estimators="pdis,wpdis", bootstrap=0, random_state=0,
                   q_model="linear")
    for level, truth in (("small", 3.6), ("large", 0.72)):
        for key, est in res.groups["grp"][level].estimates.items():
            # before: the small group's pdis was withheld as out of range (DataWarning)
            assert abs(est.value - truth) < 3 * est.se, (level, key, est.value, est.se)
