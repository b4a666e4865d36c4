"""Training from a streamed panel: mini-batches from a shuffle buffer of whole-episode chunks."""

from __future__ import annotations

import numpy as np
import pytest

from equicare.data import from_frame
from equicare.exceptions import InvalidParameterError
from equicare.learn import AWR, BC
from equicare.learn._stream import fit_stream

from .tabular_mdp import TabularMDP, manifest


@pytest.fixture(scope="module")
def mdp_panel(tmp_path_factory):
    """Tabular MDP with exact values: 2,000 episodes (~13k rows) in a Parquet file."""
    mdp = TabularMDP(behaviour_noise=0.5, p_end=0.15)
    frame = mdp.sample_frame(2000, random_state=7)
    man = manifest()
    path = tmp_path_factory.mktemp("learn_stream") / "tab.parquet"
    frame.to_parquet(path, index=False, row_group_size=500)
    return mdp, path, man, from_frame(frame, man, emit_warnings=False)


def _table(model, mdp, ds):
    """The learned policy per state (rows of a state averaged), shape (n_states, n_actions)."""
    p = model.action_probs(ds)
    st = ds.categorical[:, 0]
    return np.stack([p[st == s].mean(axis=0) for s in range(mdp.n_states)])


def test_streamed_bc_recovers_the_behaviour_policy(mdp_panel):
    mdp, path, man, ds = mdp_panel
    bc = fit_stream(BC(n_steps=500, seed=1, hidden=(32,)), path, man, chunk_rows=3000,
                    buffer_chunks=2)
    info = bc.stream_info_
    assert info["chunks_read"] >= 4 and bc.n_steps_done_ == 500
    assert all(h["chunk_rows"] <= 3000 + 40 for h in bc.history_)  # one chunk at a time
    err = np.abs(_table(bc, mdp, ds) - mdp.behaviour).sum(axis=1).mean()
    mem = BC(n_steps=500, seed=1, hidden=(32,)).fit(ds, progress=False)
    err_mem = np.abs(_table(mem, mdp, ds) - mdp.behaviour).sum(axis=1).mean()
    assert err < 0.12 and err < err_mem + 0.05, (err, err_mem)


def test_streamed_awr_improves_on_the_behaviour_policy(mdp_panel):
    mdp, path, man, ds = mdp_panel
    awr = fit_stream(AWR(n_steps=600, seed=1, hidden=(32,)), path, man, chunk_rows=3000)

    def value(t):
        return 0.5 * mdp.value(t, "A") + 0.5 * mdp.value(t, "B")

    assert value(_table(awr, mdp, ds)) > value(mdp.behaviour) + 1.0


def test_learners_that_do_not_stream_are_refused(mdp_panel):
    from equicare.learn._registry import LEARNERS

    _, path, man, _ = mdp_panel
    with pytest.raises(InvalidParameterError, match="does not train from a stream"):
        fit_stream(LEARNERS["spibb"](), path, man)
    with pytest.raises(InvalidParameterError, match="buffer_chunks"):
        fit_stream(BC(n_steps=5), path, man, buffer_chunks=0)


def _weights(learner):
    return {f"{name}.{k}": v.detach().clone() for name, net in learner.nets_.items()
            for k, v in net.state_dict().items()}


def test_prefetch_timing_does_not_change_the_trained_weights(mdp_panel, monkeypatch):
    """Buffers built ahead in a thread (slowed at random) give bitwise the synchronous weights."""
    import random
    import threading
    import time

    import torch

    import equicare.learn._stream as stream

    _, path, man, _ = mdp_panel
    sync = fit_stream(BC(n_steps=120, seed=3, hidden=(16,)), path, man, chunk_rows=1500,
                      prefetch=0)
    build = stream._buffer_data
    jitter = random.Random(11)

    def slow_build(buffer, **kw):
        time.sleep(jitter.random() * 0.03)  # the thread runs late at random points
        return build(buffer, **kw)

    monkeypatch.setattr(stream, "_buffer_data", slow_build)
    threads = threading.active_count()
    ahead = fit_stream(BC(n_steps=120, seed=3, hidden=(16,)), path, man, chunk_rows=1500,
                       prefetch=2)
    assert threading.active_count() == threads  # the prefetch thread has ended
    assert sync.stream_info_["chunks_read"] == ahead.stream_info_["chunks_read"] >= 8
    assert ahead.stream_info_["wait_seconds"] > 0
    a, b = _weights(sync), _weights(ahead)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = fit_stream(BC(n_steps=120, seed=4, hidden=(16,)), path, man, chunk_rows=1500)
    assert not all(torch.equal(a[k], v) for k, v in _weights(other).items())


def test_an_error_while_prefetching_is_raised_by_fit_stream(mdp_panel, monkeypatch):
    import threading

    import equicare.learn._stream as stream
    from equicare.exceptions import DataValidationError

    _, path, man, _ = mdp_panel
    build = stream._buffer_data
    calls = []

    def failing(buffer, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise DataValidationError("chunk 3 is broken")
        return build(buffer, **kw)

    monkeypatch.setattr(stream, "_buffer_data", failing)
    threads = threading.active_count()
    with pytest.raises(DataValidationError, match="chunk 3 is broken"):
        fit_stream(BC(n_steps=400, seed=3, hidden=(16,)), path, man, chunk_rows=1500)
    assert threading.active_count() == threads
    with pytest.raises(InvalidParameterError, match="prefetch"):
        fit_stream(BC(n_steps=5), path, man, prefetch=-1)
