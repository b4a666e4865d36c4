"""Training on panels larger than memory: mini-batches from a shuffle buffer of streamed chunks.

:func:`fit_stream` trains an :class:`~equicare.learn.OfflineLearner` (BC, AWR, CQL) without ever
holding the panel:

1. **one pass** counts every action (the policy's support, as in memory: actions logged at least
   ``min_support_count`` times) and keeps a random sample of whole episodes (keyed by episode id,
   at most about ``sample_rows`` rows) that fixes the networks' input standardisation and the
   categorical vocabulary; group levels come from the panel scan;
2. **training** reads the panel chunk by chunk (whole episodes, so every next row a temporal
   difference needs is in the same chunk), keeps the last ``buffer_chunks`` chunks in a shuffle
   buffer and draws each mini-batch uniformly from the buffer's rows. ``n_steps`` are spread over
   the chunks in proportion to their rows; when they outnumber one pass, the panel is read again.

Peak memory is the buffer (``buffer_chunks x chunk_rows`` rows of training tensors), the sample and
the model, whatever the panel's size. Differences from the in-memory fit: batches come from the
buffer rather than the whole table (a uniform shuffle only within the buffer), there is no
validation split (no early stopping: the run does ``n_steps``), and the input statistics come from
the sample.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from equicare.data import TrajectoryDataset
from equicare.exceptions import DataValidationError, InvalidParameterError
from equicare.learn._base import OfflineLearner
from equicare.learn._data import EpochSampler, TrainData, group_codes, support_of
from equicare.models._inputs import categorical_vocabulary, input_names
from equicare.policy._learned import manifest_fingerprint

__all__ = ["fit_stream", "STREAM_ALGOS"]

#: Learners that train from a stream (their updates read only rows of whole episodes).
STREAM_ALGOS = ("bc", "awr", "cql")


@dataclass
class _PassA:
    """Action counts of the panel and a sample of whole episodes."""

    counts: NDArray[np.int64]
    sample: list[TrajectoryDataset] = field(default_factory=list)

    def __add__(self, o: _PassA) -> _PassA:
        return _PassA(self.counts + o.counts, self.sample + o.sample)


def _pass_a(dataset: TrajectoryDataset, *, rate: float, seed: int) -> _PassA:
    from equicare.ope._stream_behavior import sample_mask

    counts = np.bincount(dataset.actions, minlength=dataset.n_actions).astype(np.int64)
    mask = sample_mask(dataset.episode_ids, rate, seed)
    return _PassA(counts, [dataset.subset(mask)] if mask.any() else [])


def _support(space: Any, counts: NDArray[np.int64], kind: str, min_count: int
             ) -> NDArray[np.int64]:
    """The in-memory support rule on counts (``support_of`` of a stand-in with those counts)."""
    capped = np.minimum(counts, max(int(min_count), 1))
    stand_in = _Actions(space, np.repeat(np.arange(counts.size), capped))
    return support_of(stand_in, kind, min_count)


@dataclass(frozen=True)
class _Actions:
    action_space: Any
    actions: NDArray[np.int64]

    @property
    def n_actions(self) -> int:
        return int(self.action_space.n_actions)


def _setup(learner: OfflineLearner, ref: TrajectoryDataset, support: NDArray[np.int64],
           levels: NDArray[Any] | None) -> TrainData:
    """What :meth:`OfflineLearner.fit` sets up before its loop, from the sample ``ref``."""
    cfg = learner.config
    name = type(learner).__name__
    learner._prepare(ref, ref)  # checks, group attribute, names; ``valid=ref``: no split
    learner.support_ = support
    learner.fair_mask_ = (np.zeros(ref.n_actions, dtype=bool) if cfg.fair_action is None
                          else ref.action_space.parse_action_set(cfg.fair_action))
    if cfg.fair_lambda > 0 and not learner.fair_mask_[support].any():
        raise DataValidationError(f"{name}: the action set {cfg.fair_action!r} contains no "
                                  "action of the policy's support (never logged).")
    learner.manifest_fingerprint_ = manifest_fingerprint(getattr(ref, "manifest", None))
    learner.feature_names_ = input_names(ref, learner._embedded)
    g_ref, levels = group_codes(ref, learner.group_attr_, levels)
    learner.group_levels_ = levels
    learner._n_groups = int(len(levels))
    n_cg = learner._n_groups if learner._critic_groups() else 0
    vocab = categorical_vocabulary(ref) if learner._embedded else None
    learner.categorical_levels_ = vocab
    tdata = TrainData.build(ref, cfg.input_window, support, g_ref, cfg.input_actions, n_cg,
                            vocab)
    learner._build_networks(tdata, ref.action_space.sizes, cfg.input_window, vocab)
    return tdata


def fit_stream(
    learner: OfflineLearner,
    source: str | os.PathLike[str],
    manifest: Any,
    *,
    chunk_rows: int = 500_000,
    buffer_chunks: int = 2,
    sample_rows: int = 200_000,
    progress: bool = False,
) -> OfflineLearner:
    """Train ``learner`` on a panel read in chunks of whole episodes (see the module docstring).

    Parameters
    ----------
    learner : OfflineLearner
        An unfitted BC, AWR or CQL (its config's ``n_steps``, ``batch_size``, ``seed``, ...).
    source : path-like
        Parquet file or folder, CSV or DuckDB file.
    manifest : Manifest, dict or path
    chunk_rows : int
        Rows per chunk.
    buffer_chunks : int
        Chunks in the shuffle buffer (>= 1); mini-batches are drawn from their rows.
    sample_rows : int
        Rows (about) of the sample that fixes input statistics and vocabularies.
    progress : bool
        Show a progress bar.

    Returns
    -------
    OfflineLearner
        Fitted (``history_`` has one entry per chunk with its mean losses, steps and seconds;
        ``stream_info_`` the chunk, buffer and sample sizes and the training steps/s).
    """
    from equicare._progress import progress_task
    from equicare.data import iter_chunks, scan_panel
    from equicare.data._io import _manifest_of
    from equicare.ope._stream import ChunkSource
    from equicare.ope._stream_behavior import _concat

    if learner.algo not in STREAM_ALGOS:
        raise InvalidParameterError(
            f"{learner.algo} does not train from a stream; use one of {', '.join(STREAM_ALGOS)}.")
    for name, v in (("buffer_chunks", buffer_chunks), ("sample_rows", sample_rows),
                    ("chunk_rows", chunk_rows)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidParameterError(f"{name} must be an int >= 1; got {v!r}.")
    cfg = learner.config
    man = _manifest_of(manifest)
    scan = scan_panel(source, man)
    src = ChunkSource(source, manifest=man, chunk_rows=chunk_rows, owner="fit_stream")
    rate = min(1.0, sample_rows / max(scan.n_rows, 1))
    first, _ = src.map_reduce(functools.partial(_pass_a, rate=rate, seed=int(cfg.seed)))
    if not first.sample:
        raise DataValidationError("The panel's sample has no episode; raise sample_rows.")
    ref = _concat(first.sample)
    support = _support(ref.action_space, first.counts, cfg.support, cfg.min_support_count)
    attr = cfg.group_attr if cfg.group_attr is not None else (man.groups[0] if man.groups
                                                              else None)
    levels = None
    if attr is not None and attr in scan.episode_groups:
        levels = np.unique(np.asarray(scan.episode_groups[attr]).astype(str))
    _setup(learner, ref, support, levels)
    del ref, first
    rng = np.random.default_rng(cfg.seed)
    n_steps = int(cfg.n_steps)
    learner.history_ = []
    step = 0
    buffer: list[TrajectoryDataset] = []
    t0 = time.perf_counter()
    train_seconds = 0.0
    n_chunks = 0
    with progress_task(f"train {learner.algo} (streamed)", n_steps, enabled=progress) as bar:
        while step < n_steps:
            done_before = step
            for chunk in iter_chunks(source, man, chunk_rows=chunk_rows, scan=scan):
                ds = chunk.dataset
                buffer = [*buffer[-(buffer_chunks - 1):], ds] if buffer_chunks > 1 else [ds]
                data = _concat(buffer)
                g, _ = group_codes(data, learner.group_attr_, learner.group_levels_)
                n_cg = learner._n_groups if learner._critic_groups() else 0
                tdata = TrainData.build(data, cfg.input_window, learner.support_, g,
                                        cfg.input_actions, n_cg, learner.categorical_levels_)
                if tdata.rows.shape[0] == 0:
                    continue
                share = ds.n_steps / scan.n_rows
                k = min(n_steps - step, max(1, math.ceil(n_steps * share)))
                sampler = EpochSampler(tdata.rows, cfg.batch_size, rng)
                t1 = time.perf_counter()
                sums: dict[str, float] = {}
                for _ in range(k):
                    if learner._uses_value_signal() and (
                            step % 50 == 0 or learner._group_signal is None):
                        learner._refresh_group_signal(tdata)
                    losses = learner._update(tdata, sampler.next(), step)
                    for key, loss in losses.items():
                        sums[key] = sums.get(key, 0.0) + float(loss)
                    step += 1
                train_seconds += time.perf_counter() - t1
                n_chunks += 1
                learner.history_.append({"step": step, "chunk_steps": k, "chunk_rows": ds.n_steps,
                                         **{f"train_{key}": tot / k for key, tot in sums.items()},
                                         "seconds": time.perf_counter() - t0})
                bar.update(completed=step)
                if step >= n_steps:
                    break
            if step == done_before:
                raise DataValidationError(f"{type(learner).__name__}: no training row has an "
                                          "action in the support.")
    learner.n_steps_done_ = step
    learner.best_step_ = step
    for net in learner.nets_.values():
        net.eval()
    learner.policy_ = learner._make_policy()
    learner.group_weights_ = learner._dro.q.numpy().copy()
    learner.stream_info_ = {"chunk_rows": chunk_rows, "buffer_chunks": buffer_chunks,
                            "sample_rate": rate, "chunks_read": n_chunks, "n_rows": scan.n_rows,
                            "train_seconds": train_seconds,
                            "steps_per_second": step / train_seconds if train_seconds else 0.0}
    return learner


def stream_summary(learner: OfflineLearner) -> Mapping[str, Any]:
    """The ``stream_info_`` of a learner trained by :func:`fit_stream` (empty otherwise)."""
    return dict(getattr(learner, "stream_info_", {}))
