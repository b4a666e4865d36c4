"""OPE values the logged window (Contract 1): a censored and a terminal episode end both
contribute nothing after the episode's last row, so the terminal flags change no estimate."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from equicare.ope import evaluate
from equicare.policy import TabularPolicy

from ._mdp import BEHAVIOR, TARGET, small_mdp


def test_estimates_do_not_depend_on_censored_or_terminal_ends():
    mdp = small_mdp(horizon=4)
    ds = mdp.sample(BEHAVIOR, 400, seed=0)
    assert ds.terminals[ds.is_last].all()  # every end terminal ...
    censored = replace(ds, terminals=np.zeros(ds.n_steps, dtype=bool), _cache={})
    assert censored.censored.all()  # ... versus every end censored (no terminal column)
    res = {k: evaluate(d, TabularPolicy(TARGET), q_model="tabular", bootstrap=0, groups=())
           for k, d in (("terminal", ds), ("censored", censored))}
    for name, est in res["terminal"].estimates.items():
        assert res["censored"].estimates[name].value == est.value, name
    v_true = mdp.value(TARGET)
    print(f"\nexact {v_true:.4f}; dr {res['censored'].estimates['dr'].value:.4f}")
    assert abs(res["censored"].estimates["dr"].value - v_true) < 0.25
