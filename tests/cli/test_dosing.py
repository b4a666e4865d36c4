"""``equicare train --algo omg`` options (``equicare.cli._dosing.build_omg_config``)."""

from __future__ import annotations

from equicare.cli._dosing import build_omg_config


def test_explicit_sizes_override_small_and_the_defaults():
    # --small with --iterations 7 trained 3 iterations without a word
    small = build_omg_config(small=True, iterations=7, policy_updates=50, dynamics_epochs=4)
    assert (small.n_iterations, small.policy_updates, small.dynamics.max_epochs) == (7, 50, 4)
    base = build_omg_config(small=True)
    assert (base.n_iterations, base.policy_updates, base.dynamics.max_epochs) == (3, 20, 3)
    full = build_omg_config()
    assert (full.n_iterations, full.policy_updates, full.dynamics.max_epochs) == (40, 500, 60)
    assert build_omg_config(iterations=2).n_iterations == 2
    # the small networks stay small when a size is given
    assert small.sac == build_omg_config(small=True).sac
