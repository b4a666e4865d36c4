"""The refitting bootstrap of DM, MIS and the baseline (equicare.causal._refit).

A replicate of the batched, weighted refit must be the estimate on the resampled panel: the
episodes copied as often as drawn, every model refitted, in the same folds.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from equicare.causal import DynamicMediation, MediationData
from equicare.causal._dynamic import _Run, resolve_policy
from equicare.causal._refit import bootstrap_counts, refit_etas
from equicare.sim.mediation import toy1, toy_target

from .test_inference import rand20


def _panel(s, rows, episode, logged):
    return MediationData.from_arrays(s.states[rows], s.actions[rows], s.mediators[rows],
                                     s.rewards[rows], s.next_states[rows], episode,
                                     behavior_prob=s.behavior_prob[rows] if logged else None,
                                     n_actions=2)


@pytest.mark.parametrize(("model", "logged", "kw"), [
    ("toy1", True, {}), ("rand20", False, {}), ("rand20", True, {"ratio_method": "kernel"}),
    ("toy1", False, {"basis": "spline", "n_folds": 1})])
def test_a_replicate_is_the_estimate_on_the_resampled_episodes(model, logged, kw):
    """Unit weights give the point estimates; multinomial counts give ``estimate`` on the
    panel with each episode copied as often as drawn (same folds, the same feature maps), to
    1e-8."""
    mdp, target = (toy1(), toy_target()) if model == "toy1" else rand20()
    s = mdp.sample(40, 20, random_state=0)
    pol = mdp.policy_fn(target)
    cfg = DynamicMediation(n_bootstrap=0, estimators=("dm", "mis", "baseline"), **kw)
    n_ep = 40
    md = _panel(s, np.arange(s.actions.size), s.episode_index, logged)
    run = _Run(cfg, md, resolve_policy(pol, md, "t"), resolve_policy(0, md, "c"),
               np.random.default_rng(0))
    W = np.vstack([np.ones(n_ep), bootstrap_counts(np.random.default_rng(5), n_ep, 2)])
    reps = refit_etas(run, W)
    for b in range(W.shape[0]):
        pick = np.repeat(np.arange(n_ep), W[b].astype(int))
        rows = np.concatenate([np.flatnonzero(md.episode_index == j) for j in pick])
        md_b = _panel(s, rows, np.repeat(np.arange(pick.size), 20), logged)
        run_b = _Run(cfg, md_b, resolve_policy(pol, md_b, "t"), resolve_policy(0, md_b, "c"),
                     np.random.default_rng(0))
        run_b.row_fold, run_b.seed = run.row_fold[rows], run.seed
        # the feature maps are the full panel's (random features, spline knots): a fixed sieve
        run_b._bases = {k: (phi[rows], phin[rows]) for k, (phi, phin) in run._bases.items()}
        run_b._kinds = dict(run._kinds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # a SupportWarning on a small resample
            res = run_b.execute("t", "c")
        for name in ("dm", "mis"):
            eta = np.array(list(res[name].eta.values()), dtype=float)
            np.testing.assert_allclose(reps[name][b], eta, atol=1e-8, err_msg=f"{name} {b}")
        base = [res["baseline"].effects[k].value for k in ("ide", "ime")]
        np.testing.assert_allclose(reps["baseline"][b], base, atol=1e-8)


def test_mr_numbers_do_not_depend_on_the_other_estimators():
    """The refit bootstrap draws after MR's cluster bootstrap: MR is the same alone."""
    mdp = toy1()
    data = mdp.sample(60, 30, random_state=0)
    pol = mdp.policy_fn(toy_target())
    both = DynamicMediation(n_bootstrap=50).estimate(data, pol, 0, random_state=3)
    alone = DynamicMediation(n_bootstrap=50, estimators=("mr",)).estimate(data, pol, 0,
                                                                         random_state=3)
    assert both["mr"].to_dict() == alone["mr"].to_dict()
    again = DynamicMediation(n_bootstrap=50).estimate(data, pol, 0, random_state=3)
    assert again.to_dict() == both.to_dict()


def test_a_refit_too_large_to_run_says_so(monkeypatch):
    """Above the work budget DM, MIS and the baseline give point estimates, with the reason."""
    from equicare.causal import _refit
    from equicare.causal._dynamic import NO_INTERVAL_NOTE

    mdp = toy1()
    data = mdp.sample(60, 30, random_state=0)
    pol = mdp.policy_fn(toy_target())
    monkeypatch.setattr(_refit, "MAX_REFIT_WORK", 1e5)
    res = DynamicMediation(n_bootstrap=50).estimate(data, pol, 0, random_state=0)
    head, tail = NO_INTERVAL_NOTE.split("{reason}")
    note = res["dm"].note
    assert note == res["baseline"].note and note.startswith(head) and note.endswith(tail)
    assert re.fullmatch(re.escape(_refit.TOO_MUCH_WORK).replace(r"\{work:\.1g\}", r"\S+")
                        .replace(r"\{groups\}", r"\d+").replace(r"\{p\}", "2")
                        .replace(r"\{b\}", "50"), note[len(head):len(note) - len(tail)])
    assert res["mis"].effects["dde"].se is None and res["mr"].effects["dde"].se > 0


def test_refit_logit_stops_each_replicate_before_diverging():
    """The batched mediator refit keeps the divergence guard per replicate and block.

    On a 6-level mediator with rare levels on a near-collinear basis (intercept, one-hot
    clinics, splines) the unguarded replicates reached coefficients of 9e6 and fitted the
    observed levels' probabilities off by a mean |log(fitted / true)| of 6.52-6.59 in every
    replicate and block; guarded, 0.17-0.20. A single
    replicate with unit weights is the point estimate's fit (BlockNewtonLogit), to 1e-8.
    """
    from equicare.causal import _nuisance as nz
    from equicare.causal._refit import _block_probs, _logit

    from .test_nuisance import _level_error, _rare_levels

    X, a, m, true = _rare_levels(0)
    X = X.toarray()
    W = np.vstack([np.ones(a.size), bootstrap_counts(np.random.default_rng(1), a.size, 2)])
    coef = _logit(W, X, a, 2, m, 6, 1e-6, nz.MEDIATOR_PRIOR)
    P = _block_probs(X, coef)                                      # (B, n, A, K)
    for b in range(W.shape[0]):
        for k in range(2):
            rows = (a == k) & (W[b] > 0)
            assert _level_error(P[b, rows, k], m[rows], true[rows]) < 0.5, (b, k)
    assert np.abs(coef).max() < 100
    one = _logit(W[:1], X, a, 2, m, 6, 1e-6, nz.MEDIATOR_PRIOR)[0]
    point = nz.BlockNewtonLogit(2, prior=nz.MEDIATOR_PRIOR).fit(X, a, m, 6)
    np.testing.assert_allclose(_block_probs(X, one[None])[0], point.predict_proba_all(X, 6),
                               atol=1e-8)
