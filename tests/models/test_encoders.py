import subprocess
import sys

import numpy as np
import pytest
import torch

from equicare.exceptions import InvalidParameterError
from equicare.models import HistoryEncoder, MLPEncoder, Standardize, seeded, window_index

GEN = torch.Generator().manual_seed(12345)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


def test_window_index_left_aligned_with_lengths():
    # two episodes: lengths 3 and 2
    step = np.array([0, 1, 2, 0, 1])
    idx, lengths = window_index(step, 2)
    np.testing.assert_array_equal(lengths, [1, 2, 2, 1, 2])
    np.testing.assert_array_equal(idx[:, 0], [0, 0, 1, 3, 3])
    np.testing.assert_array_equal(idx[[1, 2, 4], 1], [1, 2, 4])
    # padded slots repeat the row itself (ignored by the encoder)
    assert idx[0, 1] == 0 and idx[3, 1] == 3


def test_window_index_never_crosses_episodes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, size=50)
    step = np.concatenate([np.arange(n) for n in lengths])
    episode = np.repeat(np.arange(50), lengths)
    idx, ln = window_index(step, 6)
    valid = np.arange(6)[None, :] < ln[:, None]
    assert (episode[idx][valid] == np.repeat(episode, 6).reshape(-1, 6)[valid]).all()
    # the last valid slot is the current row
    assert (idx[np.arange(len(step)), ln - 1] == np.arange(len(step))).all()


def test_window_index_rejects_bad_window():
    with pytest.raises(ValueError, match="window must be >= 1"):
        window_index(np.zeros(3, dtype=np.int64), 0)


def test_standardize_stats_and_constant_columns():
    x = np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)
    s = Standardize(2)
    s.set_stats(x)
    out = s(torch.as_tensor(x))
    np.testing.assert_allclose(out.numpy(), [[-1.0, 0.0], [1.0, 0.0]], atol=1e-6)


def test_mlp_encoder_shape():
    enc = MLPEncoder(5, (16, 8))
    assert enc(randn(3, 5)).shape == (3, 8)
    assert enc.out_dim == 8


@pytest.mark.parametrize("window", [2, 4, 6, 8])
def test_history_padding_never_leaks(window):
    enc = seeded(0, HistoryEncoder, 3, window, hidden=(8,), lstm_hidden=5,
                 attention_dim=4).eval()
    b = 6
    x = randn(b, window, 3)
    lengths = torch.tensor([1, 2, window, window - 1, 1, window])
    garbage = x.clone()
    pad = torch.arange(window)[None, :] >= lengths[:, None]
    garbage[pad] = 1e3 * randn(int(pad.sum()), 3)
    with torch.no_grad():
        a = enc(x, lengths)
        g = enc(garbage, lengths)
        _, w, _ = enc.attention(garbage, lengths)
    torch.testing.assert_close(a, g, rtol=0, atol=0)
    # attention: exactly zero on padding, sums to one
    assert (w[pad] == 0).all()
    torch.testing.assert_close(w.sum(dim=1), torch.ones(b))
    # each row equals the encoding of its unpadded history alone
    for i in range(b):
        n = int(lengths[i])
        with torch.no_grad():
            alone = enc(x[i:i + 1, :n], torch.tensor([n]))
        torch.testing.assert_close(a[i:i + 1], alone, rtol=1e-5, atol=1e-6)


def test_history_encoder_uses_history():
    enc = seeded(1, HistoryEncoder, 2, 3, hidden=(8,), lstm_hidden=4).eval()
    x = randn(1, 3, 2)
    y = x.clone()
    y[0, 0] += 5.0  # change only the oldest row
    with torch.no_grad():
        assert not torch.allclose(enc(x, torch.tensor([3])), enc(y, torch.tensor([3])))


def test_importing_models_does_not_import_torch():
    code = ("import sys, equicare.models, equicare.learn, equicare.policy; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_public_name_imports():
    import equicare.learn as algos
    import equicare.models as models

    for mod in (models, algos):
        for name in mod.__all__:
            assert getattr(mod, name) is not None
    with pytest.raises(AttributeError):
        models.NoSuchThing  # noqa: B018


def test_previous_action_features_and_window_slot_zeroing():
    from equicare.models import ModelInputs, previous_action_features

    codes = np.array([[0, 1], [1, 0], [1, 1], [0, 0]])
    rewards = np.array([0.5, -1.0, 2.0, 3.0])
    step = np.array([0, 1, 2, 0])
    prev = previous_action_features(codes, (2, 2), rewards, step)
    np.testing.assert_array_equal(prev, [[0, 0, 0, 0, 0.0], [1, 0, 0, 1, 0.5],
                                         [0, 1, 1, 0, -1.0], [0, 0, 0, 0, 0.0]])
    x = np.arange(4, dtype=np.float32)[:, None]
    inputs = ModelInputs.from_arrays(x, step, 2, prev)
    xs, ln = inputs.take(torch.tensor([2]))
    # window of row 2 = rows 1, 2; row 1's predecessor (row 0) is outside the window -> zeros
    np.testing.assert_array_equal(xs[0, 0].numpy(), [1, 0, 0, 0, 0, 0.0])
    np.testing.assert_array_equal(xs[0, 1].numpy(), [2, 0, 1, 1, 0, -1.0])
    assert int(ln[0]) == 2
    # the stored tensor itself is not modified
    assert inputs.x[1, 1] == 1.0


# ----------------------------------------------------------------------------- categorical inputs
def test_categorical_embedding_unknown_is_the_frequency_weighted_mean():
    from equicare.models import CategoricalEmbedding

    emb = seeded(0, CategoricalEmbedding, [5, 3], [4, 3], [False, True])
    codes = np.array([[1, 1], [1, 2], [2, 3], [5, 1]])  # levels 0, 0, 1, 4 and 0, 1, 2, 0
    emb.set_frequencies(codes)
    np.testing.assert_allclose(emb.frequencies(0).numpy(), [0.5, 0.25, 0, 0, 0.25])
    out = emb(torch.tensor([[0, 0], [3, 2]]))
    assert out.shape == (2, 7) and emb.out_dim == 7
    w = emb.level_vectors(0).detach()
    torch.testing.assert_close(out[0, :4], emb.frequencies(0) @ w)  # unknown = weighted mean
    torch.testing.assert_close(out[1, :4], w[2])
    torch.testing.assert_close(out[:, 4:], torch.tensor([[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]]))
    # windows: any leading shape
    assert emb(torch.zeros(6, 4, 2, dtype=torch.int64)).shape == (6, 4, 7)
    assert len(list(emb.parameters())) == 1  # the one-hot column has no parameters


def test_network_with_categorical_codes_round_trip_and_standardisation():
    from equicare.models import NetworkSpec, build_network

    spec = NetworkSpec(n_features=3, sizes=(3,), support=(0, 1, 2), hidden=(8,),
                       categorical_levels=(tuple("abcdefghijklmnopqrst"), ("x", "y")),
                       categorical_onehot=(False, True))
    assert spec.embedding_dims == (9, 2) and spec.encoder_inputs == 9 + 2 + 1
    assert NetworkSpec.from_dict(spec.to_dict()) == spec
    net = build_network(spec, seed=0)
    x = np.c_[np.tile([1, 2, 3, 20], 5), np.repeat([1, 2], 10), np.arange(20.0)]
    net.set_input_stats(x.astype(np.float32))
    norm = net.encoder.norm
    np.testing.assert_allclose(norm.mean[:9].numpy(), 0.0)  # learned block: unscaled
    np.testing.assert_allclose(norm.scale[:9].numpy(), 1.0)
    np.testing.assert_allclose(norm.mean[9:11].numpy(), [0.5, 0.5])  # one-hot block: f
    np.testing.assert_allclose(norm.scale[9:11].numpy(), [0.5, 0.5])
    np.testing.assert_allclose(norm.mean[11].item(), 9.5)
    assert net(torch.as_tensor(x[:4], dtype=torch.float32)).shape == (4, 3)
    with pytest.raises(InvalidParameterError,
                       match="must be the number of levels for a one-hot column"):
        NetworkSpec(n_features=3, sizes=(3,), support=(0,), categorical_levels=(("a", "b"),),
                    categorical_onehot=(True,), embedding_dims=(1,))
    with pytest.raises(InvalidParameterError,
                       match="one positive width per non-empty categorical column"):
        NetworkSpec(n_features=3, sizes=(3,), support=(0,), categorical_levels=(("a", "b"),),
                    embedding_dims=(1, 2))


def test_bad_embedding_arguments_are_parameter_errors():
    from equicare.models._encoders import embedding_size

    with pytest.raises(InvalidParameterError,
                       match=r"The 'n_levels' parameter of embedding_size must be an int >= 1\. "
                             r"Got 0 instead\."):
        embedding_size(0)
