import re

import numpy as np
import pytest
import torch

from equicare.models import (
    FactoredCategoricalHead,
    FactoredQHead,
    JointCategoricalHead,
    JointQHead,
    NetworkSpec,
    ValueHead,
    build_network,
    flat_codes,
    seeded,
)
from equicare.spaces import FactoredActionSpace

GEN = torch.Generator().manual_seed(12345)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)

SIZES = (5, 5, 4, 3)


def test_flat_codes_match_action_space():
    space = FactoredActionSpace.from_levels({f"c{j}": [str(i) for i in range(s)]
                                             for j, s in enumerate(SIZES)})
    np.testing.assert_array_equal(flat_codes(SIZES), space.all_codes())


@pytest.mark.parametrize("autoregressive", [False, True])
def test_factored_head_flat_probs_are_exact_products(autoregressive):
    head = seeded(0, FactoredCategoricalHead, 7, SIZES, autoregressive=autoregressive,
                  ar_hidden=6)
    h = randn(4, 7)
    flat = head.flat_log_probs(h)
    assert flat.shape == (4, 300)
    torch.testing.assert_close(flat.exp().sum(dim=1), torch.ones(4, dtype=flat.dtype))
    codes = torch.as_tensor(flat_codes(SIZES))
    # chain rule: flat log-prob of every action == sum of its component conditionals
    hh = h.repeat_interleave(300, dim=0)
    cc = codes.repeat(4, 1)
    per_action = head.log_prob(hh, cc).reshape(4, 300)
    torch.testing.assert_close(flat, per_action, rtol=1e-5, atol=1e-5)
    if not autoregressive:
        comps = [lp.exp() for lp in head.component_log_probs(h)]
        prod = comps[0][:, codes[:, 0]] * comps[1][:, codes[:, 1]] * comps[2][:, codes[:, 2]] \
            * comps[3][:, codes[:, 3]]
        torch.testing.assert_close(flat.exp(), prod, rtol=1e-5, atol=1e-7)


def test_autoregressive_head_conditions_on_earlier_components():
    head = seeded(0, FactoredCategoricalHead, 3, (2, 3), autoregressive=True)
    h = randn(1, 3)
    p = head.flat_log_probs(h).exp().reshape(2, 3)
    cond = p / p.sum(dim=1, keepdim=True)  # p(a_1 | a_0)
    assert not torch.allclose(cond[0], cond[1])


def test_factored_head_restricted_support_renormalises():
    support = [0, 7, 64, 299]
    head = seeded(0, FactoredCategoricalHead, 4, SIZES, support=support)
    h = randn(2, 4)
    scores = head(h)
    assert scores.shape == (2, 4)
    torch.testing.assert_close(scores, head.flat_log_probs(h)[:, support])
    p = torch.softmax(scores, dim=1)
    full = head.flat_log_probs(h).exp()[:, support]
    torch.testing.assert_close(p, full / full.sum(dim=1, keepdim=True))


def test_joint_heads_shapes():
    h = randn(3, 6)
    assert JointCategoricalHead(6, 300, [1, 5, 9])(h).shape == (3, 3)
    assert JointQHead(6, 300, [1, 5, 9, 10])(h).shape == (3, 4)
    assert ValueHead(6)(h).shape == (3, 1)


def test_factored_q_sums_component_utilities():
    support = np.array([0, 17, 123, 299])
    head = seeded(0, FactoredQHead, 6, SIZES, support=support)
    h = randn(3, 6)
    u = head.utilities(h)
    codes = flat_codes(SIZES)[support]
    want = torch.stack([sum(u[j][:, int(c[j])] for j in range(4)) for c in codes], dim=1)
    torch.testing.assert_close(head(h), want)


@pytest.mark.parametrize("support", [[], [3, 2], [0, 300]])
def test_bad_support_rejected(support):
    with pytest.raises(ValueError, match="support must"):
        JointCategoricalHead(3, 300, support)


def test_network_spec_round_trip_and_errors():
    spec = NetworkSpec(n_features=5, sizes=SIZES, support=(0, 5, 299), encoder="lstm", window=4,
                       head="autoregressive", hidden=(32, 16))
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match=re.escape(
            "The 'window' parameter of NetworkSpec must be 1 for the mlp encoder. Got 4 instead.")):
        NetworkSpec(n_features=5, sizes=SIZES, support=(0,), window=4)
    with pytest.raises(ValueError, match="Unknown NetworkSpec keys"):
        NetworkSpec.from_dict({**spec.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError, match="The 'head' parameter of NetworkSpec must be one of"):
        NetworkSpec(n_features=5, sizes=SIZES, support=(0,), head="gaussian")


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    spec = NetworkSpec(n_features=4, sizes=(3, 2), support=(0, 1, 4), hidden=(8,))
    state = torch.random.get_rng_state()
    a, b = build_network(spec, seed=3), build_network(spec, seed=3)
    c = build_network(spec, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(),
                                                        strict=True))
