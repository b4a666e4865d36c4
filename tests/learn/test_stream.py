"""Training from a streamed panel: mini-batches from a shuffle buffer of whole-episode chunks."""

from __future__ import annotations

import re

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
                    buffer_chunks=2, prefetch=0)
    info = bc.stream_info_
    assert info["chunks_read"] >= 4 and bc.n_steps_done_ == 500
    assert all(h["chunk_rows"] <= 3000 + 40 for h in bc.history_)  # one chunk at a time
    err = np.abs(_table(bc, mdp, ds) - mdp.behaviour).sum(axis=1).mean()
    mem = BC(n_steps=500, seed=1, hidden=(32,)).fit(ds, progress=False)
    err_mem = np.abs(_table(mem, mdp, ds) - mdp.behaviour).sum(axis=1).mean()
    assert err < 0.12 and err < err_mem + 0.05, (err, err_mem)


def test_streamed_awr_improves_on_the_behaviour_policy(mdp_panel):
    mdp, path, man, ds = mdp_panel
    awr = fit_stream(AWR(n_steps=600, seed=1, hidden=(32,)), path, man, chunk_rows=3000,
                     prefetch=0)  # the same weights as with the producer process (test below)

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


@pytest.mark.parametrize("setting", [{"early_stopping": "loss"}, {"valid_fraction": 0.3},
                                     {"eval_every": 50}, {"patience": 1}])
def test_validation_settings_are_refused_not_ignored(mdp_panel, setting):
    """A streamed fit has no validation split: a config asking for one is an error."""
    _, path, man, _ = mdp_panel
    (name, value), = setting.items()
    msg = f"fit_stream has no validation split, so it cannot apply {name}={value!r}"
    with pytest.raises(InvalidParameterError, match=re.escape(msg)):
        fit_stream(BC(n_steps=5, **setting), path, man)


def _weights(learner):
    return {f"{name}.{k}": v.detach().clone() for name, net in learner.nets_.items()
            for k, v in net.state_dict().items()}


def test_prefetch_timing_does_not_change_the_trained_weights(mdp_panel, monkeypatch):
    """Buffers from the producer process, with the steps slowed at random: the same weights."""
    import random
    import time

    import torch

    import equicare.learn._stream as stream

    _, path, man, _ = mdp_panel
    sync = fit_stream(BC(n_steps=60, seed=3, hidden=(16,)), path, man, chunk_rows=1500,
                      prefetch=0)
    update = BC._update
    jitter = random.Random(11)

    def slow_update(self, data, rows, step):
        if jitter.random() < 0.1:
            time.sleep(jitter.random() * 0.05)  # the producer is ahead or behind at random
        return update(self, data, rows, step)

    monkeypatch.setattr(BC, "_update", slow_update)
    producers = []
    leave = stream._Prefetch.__exit__

    def spy(self, *exc):
        producers.append(self._proc.pid if self._proc is not None else None)
        return leave(self, *exc)

    monkeypatch.setattr(stream._Prefetch, "__exit__", spy)
    ahead = fit_stream(BC(n_steps=60, seed=3, hidden=(16,)), path, man, chunk_rows=1500,
                       prefetch=2)
    assert sync.stream_info_["chunks_read"] == ahead.stream_info_["chunks_read"] >= 8
    assert producers and None not in producers  # the buffers came from a producer process
    a, b = _weights(sync), _weights(ahead)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.undo()
    other = fit_stream(BC(n_steps=60, seed=4, hidden=(16,)), path, man, chunk_rows=1500,
                       prefetch=0)
    assert not all(torch.equal(a[k], v) for k, v in _weights(other).items())


@pytest.mark.slow
def test_an_error_in_the_producer_is_raised_by_fit_stream(mdp_panel, tmp_path, monkeypatch):
    """The panel becomes unreadable after the first pass: the producer's error reaches us."""
    import shutil

    import equicare.learn._stream as stream
    from equicare.exceptions import DataValidationError

    _, path, man, _ = mdp_panel
    copy = tmp_path / "tab.parquet"
    shutil.copy(path, copy)
    setup = stream._setup

    def setup_then_break(*args, **kw):
        out = setup(*args, **kw)
        copy.write_bytes(b"not a parquet file")
        return out

    monkeypatch.setattr(stream, "_setup", setup_then_break)
    with pytest.raises(DataValidationError, match="cannot read the panel"):
        fit_stream(BC(n_steps=50, seed=3, hidden=(16,)), copy, man, chunk_rows=1500,
                   prefetch=1)
    with pytest.raises(InvalidParameterError, match="prefetch"):
        fit_stream(BC(n_steps=5), path, man, prefetch=-1)


def test_a_small_step_budget_reads_a_random_sample_of_the_panel(mdp_panel, tmp_path):
    """300 steps of 32 rows with read_factor 0.5 read ~4,800 of ~13k rows, drawn at random."""
    import pandas as pd
    import torch

    mdp, stored, man, ds = mdp_panel
    frame = pd.read_parquet(stored)
    path = tmp_path / "clustered.parquet"  # episodes stored together: readable by row ranges
    frame.sort_values(["ep", "t"]).to_parquet(path, index=False, row_group_size=500)
    kw = dict(chunk_rows=1500, read_factor=0.5)
    bc = fit_stream(BC(n_steps=300, batch_size=32, seed=2, hidden=(32,)), path, man,
                    prefetch=0, **kw)
    info = bc.stream_info_
    assert info["read"] == "sampled" and info["units_read"] >= 2
    assert 4800 <= info["rows_read_per_pass"] < 4800 + 600  # units of one 500-row group
    assert sum(h["chunk_rows"] for h in bc.history_) == info["rows_read_per_pass"]
    assert bc.n_steps_done_ == 300
    # learned from the sample alone: the clinicians' policy in every state
    err = np.abs(_table(bc, mdp, ds) - mdp.behaviour).sum(axis=1).mean()
    assert err < 0.15, err
    # the producer process reads the same sample in the same order: the same weights
    ahead = fit_stream(BC(n_steps=300, batch_size=32, seed=2, hidden=(32,)), path, man,
                       prefetch=1, **kw)
    a, b = _weights(bc), _weights(ahead)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a CSV panel cannot be read by row ranges: the whole panel, in storage order
    csv = tmp_path / "tab.csv"
    frame.to_csv(csv, index=False)
    whole = fit_stream(BC(n_steps=50, batch_size=32, seed=2, hidden=(16,)), csv, man,
                       prefetch=0, **kw)
    assert whole.stream_info_["read"] == "whole panel"
    assert whole.stream_info_["rows_read_per_pass"] == ds.n_steps
    with pytest.raises(InvalidParameterError, match="read_factor"):
        fit_stream(BC(n_steps=5), path, man, read_factor=0.0)
