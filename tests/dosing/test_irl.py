"""Guided cost learning: the importance weights use the policies that generated the background."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equicare.dosing._irl import (
    UNIFORM,
    Segments,
    background_weights,
    gcl_loss,
    mixture_log_density,
)

K = 3
REWARD = torch.tensor([0.0, 1.0, 2.0])  # r(s, a) of the one state, per action
LOG_Z = math.log(float(torch.exp(REWARD).sum()))  # exact partition function of 1-step segments


def _fixed_logits(logits):
    t = torch.tensor(logits, dtype=torch.float32)
    return lambda states: t.expand(states.shape[0], K)


def _segments(actions, source):
    n = actions.numel()
    s = torch.zeros((n, 1, 1))
    return Segments(s, actions.reshape(n, 1), s, torch.ones((n, 1)),
                    torch.full((n,), source, dtype=torch.int64))


def _log_z(demo, samp, components):
    """The GCL estimate of log Z: gcl_loss(...) + mean demo return."""
    ret_d, ret_s = REWARD[demo.actions[:, 0]], REWARD[samp.actions[:, 0]]
    logq = torch.cat([mixture_log_density(demo, components, K),
                      mixture_log_density(samp, components, K)])
    return float(gcl_loss(ret_d, torch.cat([ret_d, ret_s]), logq) + ret_d.mean())


def test_partition_function_uses_the_generating_policies():
    """Pool rollouts drawn by an old actor (mostly action 0), while the current actor prefers
    action 2: scoring them with the current actor misestimates log Z; the mixture of the
    policies that generated the background recovers the exact value."""
    g = torch.Generator().manual_seed(0)
    behaviour = _fixed_logits([0.5, 0.0, -0.5])
    old_actor = _fixed_logits([3.0, 0.0, 0.0])
    current = _fixed_logits([0.0, 0.0, 3.0])
    n_demo, n_old, n_unif = 20000, 14000, 6000

    def draw(logits, n):
        return torch.multinomial(torch.softmax(logits(torch.zeros((1, 1))), -1)[0], n,
                                 replacement=True, generator=g)

    demo = _segments(draw(behaviour, n_demo), -1)
    samp = _segments(torch.cat([draw(old_actor, n_old),
                                torch.randint(0, K, (n_unif,), generator=g)]), 1)
    samp.source[n_old:] = UNIFORM
    # shares of the background from the pool's generator ids
    w_demo, w_src = background_weights(n_demo, samp.source, n_old + n_unif)
    assert w_demo == pytest.approx(0.5)
    assert w_src == pytest.approx({1: 0.35, UNIFORM: 0.15})
    right = _log_z(demo, samp, [(w_demo, behaviour), (w_src[1], old_actor),
                                (w_src[UNIFORM], None)])
    wrong = _log_z(demo, samp, [(w_demo, behaviour), (w_src[1], current),
                                (w_src[UNIFORM], None)])
    print(f"\nlog Z exact {LOG_Z:.4f}; generating mixture {right:.4f}; "
          f"current actor {wrong:.4f}")
    assert abs(right - LOG_Z) < 0.03
    assert abs(wrong - LOG_Z) > 0.3  # (0.43 here: Z off by a factor 1.5)


def test_background_weights_count_draws_with_replacement():
    src = torch.tensor([0, 0, 3, 3, 3, 3, 5, 5])
    w_demo, w = background_weights(10, src, 8, 2)
    assert w_demo == pytest.approx(0.5)
    assert w == pytest.approx({0: (8 * 2 / 8 + 2) / 20, 3: 8 * 4 / 8 / 20, 5: 8 * 2 / 8 / 20})
    assert w_demo + sum(w.values()) == pytest.approx(1.0)


def test_mixture_log_density_by_hand():
    seg = Segments(torch.zeros((2, 2, 1)), torch.tensor([[0, 2], [1, 1]]), torch.zeros((2, 2, 1)),
                   torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    p = torch.softmax(torch.tensor([1.0, 0.0, -1.0]), -1)
    got = mixture_log_density(seg, [(0.25, _fixed_logits([1.0, 0.0, -1.0])), (0.75, None),
                                    (0.0, None)], K)
    want = np.log([0.25 * p[0] * p[2] + 0.75 / 9, 0.25 * p[1] + 0.75 / 3])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    with pytest.raises(ValueError, match="at least one component"):
        mixture_log_density(seg, [(0.0, None)], K)


def test_omg_keeps_only_the_snapshots_its_pool_needs():
    from equicare.dosing import OMG, OMGConfig
    from equicare.sim.heparin import heparin_dataset

    ds = heparin_dataset(20, random_state=0)
    omg = OMG(OMGConfig.small(n_iterations=4, reward_freeze=1.0, rollout_starts=16,
                              policy_updates=5, reward_updates=2, reward_warmup=2),
              random_state=0).fit(ds)
    # the pool keeps 10 * rollout_starts segments: every iteration's rollouts are still in it,
    # each with the actor that drew it (ids 1..4), none equal to the final actor
    assert sorted(omg._proposals) == [1, 2, 3, 4]
    final = omg.agent_.actor.state_dict()
    first = omg._proposals[1].state_dict()
    assert any(not torch.equal(first[k], final[k]) for k in final)
