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
import operator
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

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
#: Steps at the start of training left out of ``steps_per_second_after_warmup``.
WARMUP_STEPS = 100

T = TypeVar("T")


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


def _buffer_data(buffer: list[TrajectoryDataset], *, learner: OfflineLearner,
                 n_critic_groups: int) -> TrainData:
    """Training tensors of the shuffle buffer's rows (runs in the prefetch thread)."""
    from equicare.ope._stream_behavior import _concat

    cfg = learner.config
    data = buffer[0] if len(buffer) == 1 else _concat(buffer)
    g, _ = group_codes(data, learner.group_attr_, learner.group_levels_)
    return TrainData.build(data, cfg.input_window, learner.support_, g, cfg.input_actions,
                           n_critic_groups, learner.categorical_levels_)


def _buffers(chunks: Iterator[TrajectoryDataset], buffer_chunks: int,
             build: Callable[[list[TrajectoryDataset]], TrainData]
             ) -> Iterator[tuple[int, TrainData]]:
    """``(rows of the newest chunk, training tensors of the last buffer_chunks chunks)``."""
    buffer: list[TrajectoryDataset] = []
    for ds in chunks:
        buffer = [*buffer[-(buffer_chunks - 1):], ds] if buffer_chunks > 1 else [ds]
        yield ds.n_steps, build(buffer)


class _Prefetch(Generic[T]):
    """Run an iterator in a background thread, at most ``depth`` items ahead of the consumer.

    Reading, decoding and validating chunks and building their training tensors happen while the
    gradient steps run (Arrow, pandas and NumPy's large operations and torch's kernels release
    the GIL). Items arrive in the iterator's order, so what the consumer does with them (the
    shuffle, the steps per chunk) does not depend on the thread's timing. ``depth=0`` iterates
    in the caller's thread. An exception in the thread is raised by :meth:`next`; leaving the
    ``with`` block stops the thread (after the item it is building) and closes the iterator.
    """

    def __init__(self, items: Iterator[T], depth: int) -> None:
        self._items = items
        self._depth = int(depth)
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(self._depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done = False

    def __enter__(self) -> _Prefetch[T]:
        if self._depth > 0:
            self._thread = threading.Thread(target=self._run, name="equicare-prefetch",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        else:
            _close(self._items)

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", exc))
        finally:
            _close(self._items)

    def _put(self, message: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> T | None:
        """The next item, or None at the end."""
        if self._done:
            return None
        if self._thread is None:
            item = next(self._items, None)
            self._done = item is None
            return item
        kind, value = self._queue.get()
        if kind == "error":
            self._done = True
            raise value
        if kind == "end":
            self._done = True
            return None
        return value  # type: ignore[no-any-return]


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def fit_stream(
    learner: OfflineLearner,
    source: str | os.PathLike[str],
    manifest: Any,
    *,
    chunk_rows: int = 500_000,
    buffer_chunks: int = 2,
    sample_rows: int = 200_000,
    prefetch: int = 1,
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
    prefetch : int
        Shuffle buffers prepared ahead in a background thread while the gradient steps run
        (reading, decoding, validating the next chunk and building its tensors); 0 prepares
        them in the caller's thread between the steps. The trained weights do not depend on it.
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
    from equicare.ope._stream_behavior import _concat

    if learner.algo not in STREAM_ALGOS:
        raise InvalidParameterError(
            f"{learner.algo} does not train from a stream; use one of {', '.join(STREAM_ALGOS)}.")
    for name, v, low in (("buffer_chunks", buffer_chunks, 1), ("sample_rows", sample_rows, 1),
                         ("chunk_rows", chunk_rows, 1), ("prefetch", prefetch, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidParameterError(f"{name} must be an int >= {low}; got {v!r}.")
    cfg = learner.config
    man = _manifest_of(manifest)
    scan = scan_panel(source, man)  # once: the passes below reuse it
    rate = min(1.0, sample_rows / max(scan.n_rows, 1))
    first = functools.reduce(operator.add, (
        _pass_a(c.dataset, rate=rate, seed=int(cfg.seed))
        for c in iter_chunks(source, man, chunk_rows=chunk_rows, scan=scan)))
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
    warmup = min(WARMUP_STEPS, n_steps // 10)
    learner.history_ = []
    step = 0
    t0 = time.perf_counter()
    train_seconds = wait_seconds = warm_seconds = 0.0
    n_chunks = 0
    n_cg = learner._n_groups if learner._critic_groups() else 0
    build = functools.partial(_buffer_data, learner=learner, n_critic_groups=n_cg)
    with progress_task(f"train {learner.algo} (streamed)", n_steps, enabled=progress) as bar:
        while step < n_steps:
            done_before = step
            chunks = (c.dataset for c in iter_chunks(source, man, chunk_rows=chunk_rows,
                                                     scan=scan))
            with _Prefetch(_buffers(chunks, buffer_chunks, build), prefetch) as buffers:
                while True:
                    t_wait = time.perf_counter()
                    item = buffers.next()
                    wait = time.perf_counter() - t_wait
                    wait_seconds += wait
                    if item is None:
                        break
                    chunk_n, tdata = item
                    if tdata.rows.shape[0] == 0:
                        continue
                    share = chunk_n / scan.n_rows
                    k = min(n_steps - step, max(1, math.ceil(n_steps * share)))
                    sampler = EpochSampler(tdata.rows, cfg.batch_size, rng)
                    t1 = time.perf_counter()
                    sums: dict[str, float] = {}
                    for _ in range(k):
                        if step == warmup:
                            warm_seconds = train_seconds + time.perf_counter() - t1
                        if learner._uses_value_signal() and (
                                step % 50 == 0 or learner._group_signal is None):
                            learner._refresh_group_signal(tdata)
                        losses = learner._update(tdata, sampler.next(), step)
                        for key, loss in losses.items():
                            sums[key] = sums.get(key, 0.0) + float(loss)
                        step += 1
                    loop = time.perf_counter() - t1
                    train_seconds += loop
                    n_chunks += 1
                    learner.history_.append({
                        "step": step, "chunk_steps": k, "chunk_rows": chunk_n,
                        **{f"train_{key}": tot / k for key, tot in sums.items()},
                        "train_seconds": loop, "wait_seconds": wait,
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
                            "prefetch": prefetch, "train_seconds": train_seconds,
                            "wait_seconds": wait_seconds,
                            "steps_per_second": step / train_seconds if train_seconds else 0.0,
                            "steps_per_second_after_warmup":
                                (step - warmup) / (train_seconds - warm_seconds)
                                if train_seconds > warm_seconds else 0.0,
                            "warmup_steps": warmup,
                            "wall_steps_per_second": step / (train_seconds + wait_seconds)
                                if train_seconds + wait_seconds else 0.0}
    return learner


def stream_summary(learner: OfflineLearner) -> Mapping[str, Any]:
    """The ``stream_info_`` of a learner trained by :func:`fit_stream` (empty otherwise)."""
    return dict(getattr(learner, "stream_info_", {}))
