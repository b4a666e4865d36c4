"""Learned embeddings of categorical states in the offline learners (issue 15, item 2)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from equicare.data import from_frame
from equicare.learn import AWR, BC, CQL
from equicare.learn._data import TrainData
from equicare.models import embedding_size
from equicare.models._inputs import categorical_vocabulary
from equicare.policy import load_policy

torch.set_num_threads(1)


def _wide_frame(n_levels: int, n_rows: int = 20_000, seed: int = 0) -> pd.DataFrame:
    """Episodes of 10 rows over one categorical state with ``n_levels`` levels."""
    rng = np.random.default_rng(seed)
    cell = rng.integers(0, n_levels, size=n_rows)
    a = rng.integers(0, 5, size=n_rows)
    return pd.DataFrame({"ep": np.arange(n_rows) // 10, "t": np.arange(n_rows) % 10,
                         "cell": [f"c{c:04d}" for c in cell], "x": rng.normal(size=n_rows),
                         "a": a, "r": (cell % 7 == a).astype(float),
                         "end": (np.arange(n_rows) % 10 == 9).astype(int)})


WIDE_MANIFEST = {"dataset": {"episode": "ep", "time": "t", "states": ["x"],
                             "categorical_states": ["cell"], "terminal": "end", "gamma": 0.9},
                 "actions": {"a": {"levels": 5}},
                 "reward": {"r": {"column": "r", "weight": 1.0}}}


def test_embedding_size_rule():
    assert [embedding_size(n) for n in (1, 2, 6, 50, 700, 5000)] == [2, 2, 4, 14, 50, 50]
    assert embedding_size(700, max_dim=20) == 20


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("encoding", ["auto", "embedding", "onehot"])
def test_memory_of_a_700_level_state_is_independent_of_its_width(encoding):
    """Training inputs hold one code per categorical column, not one column per level."""
    data = {n: from_frame(_wide_frame(n), WIDE_MANIFEST, emit_warnings=False) for n in (7, 700)}
    CQL(n_steps=2, hidden=(4,), batch_size=8, valid_fraction=0.0).fit(  # warm-up: lazy imports
        from_frame(_wide_frame(7, n_rows=40), WIDE_MANIFEST, emit_warnings=False), progress=False)
    peak, width = {}, {}
    for n, ds in data.items():
        def fit(ds=ds, n=n):
            learner = CQL(n_steps=5, hidden=(16,), batch_size=64, valid_fraction=0.0,
                          categorical_encoding=encoding).fit(ds, progress=False)
            width[n] = learner.nets_["policy"].spec.n_features

        peak[n] = _peak_bytes(fit)
    print(f"\n{encoding}: peak traced bytes 7 levels {peak[7]:,}, 700 levels {peak[700]:,}")
    if encoding != "onehot":
        assert width == {7: 2, 700: 2}  # code + numeric state
        assert "features" not in data[700]._cache  # the one-hot matrix is never built
        assert peak[700] < 1.3 * peak[7]
    else:  # the check has teeth: one-hot inputs grow with the number of levels
        assert width == {7: 8, 700: 701}
        assert peak[700] > 20 * peak[7]


@pytest.mark.slow
def test_700_level_state_trains_and_learns_its_rewards():
    """A 700-level state through a 50-wide embedding: Q recovers r = 1[cell % 7 == a]."""
    ds = from_frame(_wide_frame(700, n_rows=30_000, seed=1), WIDE_MANIFEST, emit_warnings=False)
    cql = CQL(n_steps=1500, alpha=0.0, hidden=(64,), valid_fraction=0.0, batch_size=512,
              learning_rate=3e-3).fit(ds, progress=False)
    assert cql.nets_["policy"].embed.tables[0].weight.shape == (700, 50)  # "auto": learned
    greedy = cql.predict(ds)
    cell = np.array([int(c[1:]) for c in np.asarray(ds.categorical_levels[0])])[
        ds.categorical[:, 0]]
    hit = cell % 7 < 5  # cells whose rewarded action exists
    acc = float(np.mean(greedy[hit] == (cell % 7)[hit]))
    print(f"\n700 levels: greedy action = rewarded action on {acc:.1%} of rows")
    assert acc > 0.85


@pytest.mark.parametrize("klass, kw", [
    (CQL, {"alpha": 0.3}),
    (AWR, {}),
])
def test_embedding_matches_or_beats_one_hot_on_exact_values(mdp, tab_data, klass, kw):
    """Tabular MDP with exact values: learned-embedding inputs (forced for the 6 states, which
    "auto" would give a one-hot block) reach the one-hot policy's value."""
    v = {}
    for enc in ("embedding", "onehot"):
        learner = klass(n_steps=1000, hidden=(32, 32), valid_fraction=0.0,
                        categorical_encoding=enc, **kw).fit(tab_data, progress=False)
        v[enc] = mdp.value(mdp.policy_table(learner))
    v_b, v_star = mdp.value(mdp.behaviour), mdp.value(mdp.optimal_policy())
    print(f"\n{klass.__name__}: V(b)={v_b:.3f} V*={v_star:.3f} embedding={v['embedding']:.3f} "
          f"one-hot={v['onehot']:.3f}")
    assert v["embedding"] >= v["onehot"] - 0.05 * (v_star - v_b)


@pytest.mark.parametrize("encoding", ["embedding", "auto"])
def test_save_load_round_trip_keeps_the_vocabulary(tmp_path, small_data, mdp, encoding):
    learner = AWR(n_steps=30, hidden=(16,), valid_fraction=0.0,
                  categorical_encoding=encoding).fit(small_data, progress=False)
    assert learner.categorical_levels_ == categorical_vocabulary(small_data)
    learner.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    spec = cfg["policy"]["network"]
    assert spec["categorical_levels"] == [list(v) for v in learner.categorical_levels_]
    assert spec["categorical_levels"] == [[str(s) for s in range(mdp.n_states)]]
    onehot = encoding == "auto"  # 6 levels <= onehot_max_levels: a fixed one-hot block
    assert spec["categorical_onehot"] == [onehot]
    assert spec["embedding_dims"] == [mdp.n_states if onehot else embedding_size(mdp.n_states)]
    assert cfg["feature_names"] == ["state:categorical"]
    back = AWR.load(tmp_path / "m")
    probe = mdp.probe()
    np.testing.assert_array_equal(learner.action_probs(probe), back.action_probs(probe))
    np.testing.assert_array_equal(learner.scores(probe, "critic"), back.scores(probe, "critic"))
    pol = load_policy(tmp_path / "m")  # the generic loader of every model folder
    np.testing.assert_array_equal(pol.action_probs(probe), learner.action_probs(probe))


def test_unseen_level_maps_to_the_unknown_code(small_data, mdp):
    """A level never seen in training is read as the frequency-weighted mean embedding."""
    bc = BC(n_steps=30, hidden=(16,), valid_fraction=0.0,
            categorical_encoding="embedding").fit(small_data, progress=False)
    probe = mdp.probe()
    frame = pd.DataFrame({"ep": [0, 1], "t": 0, "state": [0, 999], "kind": "a",
                          "level": "l0", "r": 0.0, "done": 1, "grp": "A"})
    from tests.learn.tabular_mdp import manifest

    new = from_frame(frame, manifest(), emit_warnings=False)
    p = bc.action_probs(new)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], bc.action_probs(probe)[0])  # level 0: as in training
    net = bc.nets_["policy"]
    emb = net.embed
    counts = np.bincount(small_data.categorical[:, 0], minlength=mdp.n_states)
    mean = (counts / counts.sum()) @ emb.tables[0].weight.detach().numpy()
    out = emb(torch.tensor([[0]])).detach().numpy()[0]
    np.testing.assert_allclose(out, mean, rtol=1e-5, atol=1e-6)
    # the unseen row equals a forward pass with the mean embedding
    with torch.no_grad():
        z = torch.cat([torch.as_tensor(mean, dtype=torch.float32)[None, :]], dim=1)
        logits = net.head(net.encoder(z))
    p_mean = torch.softmax(logits, dim=1).double().numpy()[0]
    np.testing.assert_allclose(p[1, bc.support_], p_mean, rtol=1e-5, atol=1e-7)
    # "auto" (a one-hot block for 6 levels): the unknown level is the mean input, which the
    # standardisation maps to exactly zero
    auto = BC(n_steps=30, hidden=(16,), valid_fraction=0.0).fit(small_data, progress=False)
    net = auto.nets_["policy"]
    assert net.spec.categorical_onehot == (True,)
    x = net.encoder.norm(net.embed_inputs(torch.tensor([[0.0]])))
    torch.testing.assert_close(x, torch.zeros(1, mdp.n_states), atol=1e-6, rtol=0)
    p_auto = auto.action_probs(new)
    with torch.no_grad():
        ref = torch.softmax(net.head(net.encoder.body(torch.zeros(1, mdp.n_states))), dim=1)
    np.testing.assert_allclose(p_auto[1, auto.support_], ref.double().numpy()[0], rtol=1e-5,
                               atol=1e-7)


def test_train_data_inputs_are_codes(tab_data):
    vocab = categorical_vocabulary(tab_data)
    td = TrainData.build(tab_data, 1, np.arange(12), np.zeros(tab_data.n_steps, dtype=np.int64),
                         vocabulary=vocab)
    np.testing.assert_array_equal(td.inputs.x[:, 0].numpy(), tab_data.categorical[:, 0] + 1)


@pytest.mark.parametrize("encoding", ["auto", "embedding", "onehot"])
def test_model_folder_keeps_no_small_level_count(tmp_path, encoding) -> None:
    """Privacy audit #5: a network folder stored each level's training share (embedding
    frequencies, one-hot means and scales), so times the training rows gave a one-member
    level's row count. Levels of fewer than 11 episodes now share a pooled value (here with
    the smallest large level, since the two small ones hold 3 episodes together); so do the
    levels of a critic's group block."""
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    frames = []
    for lang, race, n_ep, first in (("english", "a", 40, 0), ("spanish", "b", 25, 100),
                                    ("amharic", "c", 1, 200), ("tagalog", "c", 2, 300)):
        for e in range(first, first + n_ep):
            frames.append(pd.DataFrame({"ep": e, "t": np.arange(8), "lang": lang, "race": race,
                                        "x": rng.normal(size=8), "a": rng.integers(0, 3, 8),
                                        "r": rng.normal(size=8)}))
    df = pd.concat(frames, ignore_index=True)
    man = {"dataset": {"episode": "ep", "time": "t", "states": ["x"],
                       "categorical_states": ["lang"], "groups": ["race"], "gamma": 0.9},
           "actions": {"a": {"levels": 3}}, "reward": {"column": "r"}}
    ds = from_frame(df, man, emit_warnings=False)
    m = AWR(n_steps=5, batch_size=32, hidden=(8,), valid_fraction=0.0, seed=0,
            categorical_encoding=encoding, group_robust=0.5).fit(ds)
    m.save(tmp_path / "m")
    t = {k: v.astype(np.float64) for k, v in load_file(str(tmp_path / "m" / "model.safetensors"))
         .items()}
    exact = np.array([8, 16, 24]) / len(df)  # rows of amharic, tagalog, and race c
    # level order: lang amharic, english, spanish, tagalog (pooled: 0, 2, 3); race a, b, c
    # (pooled: b, c); the numeric x sits before the one-hot lang block, or after the codes
    lang = slice(1, 5) if encoding == "onehot" else slice(0, 4)
    blocks = []
    for net in ("policy", "critic"):
        if encoding != "onehot":
            blocks.append(t[f"{net}.embed.freq0"])
        for stat in ("mean", "scale"):
            v = t[f"{net}.encoder.norm.{stat}"]
            if encoding != "embedding":
                blocks.append(v[lang])
            if net == "critic":
                blocks.append(v[-3:])  # the critic's group block
    for b in blocks:
        assert not np.isclose(b[:, None], exact[None, :], rtol=1e-6).any()
        if b.size == 4:
            assert b[0] == b[2] == b[3] != b[1]
        else:
            assert b[0] != b[1] == b[2]
