"""The support warning is relative to current practice's own share on the same check (issue #14).

On thin categorical levels practice itself leaves much of its mass on actions it happened not to
log in the row's level: the never-logged share of practice as a target was 12.9% on a
1,000-episode, 700-state Garnet panel (7.56% on a reviewer's ICU panel), and every policy was
warned. The exact truth (the Garnet behaviour policy's zeros) checks the numbers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from equicare.exceptions import SupportWarning
from equicare.ope import evaluate

from ._garnet import make, with_site


def _support(ds, probs):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        res = evaluate(ds, probs, estimators="wis", bootstrap=0, groups=[])
    return res.support, [str(w.message) for w in got if w.category is SupportWarning]


@pytest.mark.parametrize("n_episodes", [250, 1000, 3000])
def test_practice_and_supported_targets_are_silent_and_off_support_mass_is_estimated(n_episodes):
    """Thin levels (1.6 to 20 rows per state of 25 actions): truth from the behaviour's zeros."""
    mdp, ds, pols = make("s700_a25_g1", n_episodes, seed=8)
    s = ds.categorical[:, 0]
    never = mdp.behavior_policy[s] == 0
    from equicare.cli._ope import support_line

    for fam in ("behavior", "tilted", "mixture_30"):
        rep, said = _support(ds, pols[fam][s])
        assert not said and not rep.warn, (fam, rep.share_pct, rep.practice_share_pct)
    # evaluate's line under its table (the audit's, per policy); silent, but not a clean bill:
    # on thin levels up to about practice's own share could be off the support unseen
    assert rep.share_pct > 1.0 and rep.practice_share_pct > 1.0
    assert support_line(rep) == (
        f"Support: {rep.share_pct:.2f}% of the target policy's mass on actions current "
        f"practice (almost) never takes; practice's own expected share "
        f"{rep.practice_share_pct:.2f}%, so about {rep.excess_pct:.2f}% beyond it (warned "
        "over 1%). Inconclusive: the categorical levels are too thin to tell an action "
        "practice takes rarely from one it never takes, so up to about "
        f"{rep.practice_share_pct:.1f}% of the mass could be off its support unseen "
        "(docs/ope.md, 'What the baseline cannot see')")
    rep, said = _support(ds, pols["unsupported"][s])
    truth = 100.0 * float((pols["unsupported"][s] * never).sum(axis=1).mean())  # 21.2 to 21.5%
    assert rep.warn and len(said) == 1
    assert f"{rep.share_pct:.2f}% of its probability mass" in said[0]
    assert f"expected {rep.practice_share_pct:.2f}% of its mass" in said[0]
    assert f"about {rep.excess_pct:.2f}% of the target's mass" in said[0]
    assert support_line(rep, "Support of off", "its").endswith("beyond it (over 1%: warned)")
    # 18.4, 22.2, 22.0 against 21.2, 21.3, 21.5
    assert rep.excess_pct == pytest.approx(truth, rel=0.15)


def test_practice_share_is_the_leave_one_out_never_logged_share():
    """Two categorical columns: a row counts when, without it, its action is unlogged at its
    level of some column (counted here with pandas, independently of the library)."""
    _, ds, pols = make("s700_a25_g1", 400, seed=2)
    rng = np.random.default_rng(0)
    two = with_site(ds, rng.integers(0, 30, ds.n_episodes))
    frame = pd.DataFrame({"state": two.categorical[:, 0], "site": two.categorical[:, 1],
                          "a": two.actions})
    alone = np.zeros(len(frame), bool)
    for col in ("state", "site"):
        alone |= frame.groupby([col, "a"])["a"].transform("size").to_numpy() == 1
    rep, _ = _support(two, pols["behavior"][two.categorical[:, 0]])
    assert rep.practice_share_pct == pytest.approx(100.0 * alone.mean(), rel=1e-12)
    assert rep.to_dict()["practice_share_pct"] == rep.practice_share_pct
    assert rep.practice_share_pct > 10  # thin: the rule matters here


def test_beyond_practice_inverts_the_mixture():
    """A target with ``f`` off the support and the rest like practice shows f + (1 - f) m."""
    from equicare.ope._support import beyond_practice

    f, m = 0.2, 0.3
    assert beyond_practice(100 * (f + (1 - f) * m), 100 * m) == pytest.approx(100 * f)
    assert beyond_practice(5.0, 0.0) == 5.0  # no categorical states: the share itself
    assert beyond_practice(100.0, 100.0) == 0.0  # every action logged once: nothing to tell


def test_no_categorical_states_keep_the_absolute_rule():
    """Without categorical cells the baseline is 0 and the warning is the share over 1%."""
    from dataclasses import replace

    mdp, ds, pols = make("s50_a5_g1", 400, seed=3)
    s = ds.categorical[:, 0]
    plain = replace(ds, categorical=None, categorical_names=(), categorical_levels=(),
                    _cache={})
    rep, _ = _support(plain, pols["behavior"][s])
    assert rep.practice_share_pct == 0.0 and not rep.uses_categorical
    assert rep.warn == (rep.share_pct > 1.0)
