"""Training on panels larger than memory: mini-batches from a shuffle buffer of streamed chunks.

:func:`fit_stream` trains an :class:`~equicare.learn.OfflineLearner` (BC, AWR, CQL) without ever
holding the panel:

1. **one pass** counts every action (the policy's support, as in memory: actions logged at least
   ``min_support_count`` times) and keeps a random sample of whole episodes (keyed by episode id,
   at most about ``sample_rows`` rows) that fixes the networks' input standardisation and the
   categorical vocabulary; group levels come from the panel scan;
2. **training** reads chunks of whole episodes (so every next row a temporal difference needs
   is in the same chunk), keeps the last ``buffer_chunks`` chunks in a shuffle buffer and draws
   each mini-batch uniformly from the buffer's rows. It reads only what its step budget needs:
   about ``read_factor x n_steps x batch_size`` rows, as units of whole episodes (a row group or a
   few) drawn at random across the panel and read in random order
   (:func:`equicare.data._chunks.sample_ranges`), so a step costs the same on a 20M-row panel as
   on a 1M-row one. When the budget covers the panel, or the panel cannot be read by row ranges
   (a CSV or DuckDB file, or Parquet whose episodes are not stored together), the whole panel is
   read in storage order. ``n_steps`` are spread over the chunks read in proportion to their
   rows.
   With ``prefetch > 0`` a producer process reads the next chunk and builds the next buffer's
   tensors while the steps run (``prefetch`` buffers ahead); the buffers arrive in order and the
   shuffle is drawn here, so the weights do not depend on it.

Peak memory is the buffer (``buffer_chunks x chunk_rows`` rows of training tensors, ``1 +
prefetch`` of them here), the sample and the model, plus the producer's one chunk being read,
whatever the panel's size. Differences from the in-memory fit: batches come from the
buffer rather than the whole table (a uniform shuffle only within the buffer), there is no
validation split (no early stopping: the run does ``n_steps``; a config that sets
``early_stopping``, ``valid_fraction``, ``eval_every`` or ``patience`` away from its default is
refused rather than ignored), and the input statistics come from the sample.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import os
import queue
import time
from collections.abc import Iterator, Mapping
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
#: Steps at the start of training left out of ``steps_per_second_after_warmup``.
WARMUP_STEPS = 100
#: Config fields of the in-memory validation split, which a streamed fit does not make.
VALIDATION_FIELDS = ("early_stopping", "valid_fraction", "eval_every", "patience")
NO_VALIDATION = (
    "fit_stream has no validation split, so it cannot apply {settings}: it runs all n_steps "
    "and reports no validation loss. Leave {names} at their defaults, or fit in memory "
    "(OfflineLearner.fit)."
)


def validation_settings(config: Any) -> dict[str, Any]:
    """The validation-split settings of ``config`` that differ from their defaults."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    return {name: getattr(config, name) for name in VALIDATION_FIELDS
            if getattr(config, name) != fields[name].default}



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


@dataclass(frozen=True)
class _Buffers:
    """Everything that turns the panel into shuffle buffers (picklable: the producer's task).

    Attributes
    ----------
    source : str
    manifest : Manifest
    scan : PanelScan
    chunk_rows, buffer_chunks : int
    window : int
        The learner's input window.
    history_actions : bool
    support : ndarray of shape (n_support,)
    group_attr : str or None
    group_levels : ndarray
    critic_groups : int
    vocabulary : tuple of tuple of str, optional
    ranges : tuple of (start, stop), optional
        Episode-aligned storage row ranges to read, in this order (a sample of the panel); None
        reads the whole panel in storage order.
    """

    source: str
    manifest: Any
    scan: Any
    chunk_rows: int
    buffer_chunks: int
    window: int
    history_actions: bool
    support: NDArray[np.int64]
    group_attr: str | None
    group_levels: NDArray[Any]
    critic_groups: int
    vocabulary: tuple[tuple[str, ...], ...] | None
    ranges: tuple[tuple[int, int], ...] | None = None

    def build(self, buffer: list[TrajectoryDataset]) -> TrainData:
        """Training tensors of the buffer's rows."""
        from equicare.data._chunks import concat_datasets

        data = buffer[0] if len(buffer) == 1 else concat_datasets(buffer)
        g, _ = group_codes(data, self.group_attr, self.group_levels)
        return TrainData.build(data, self.window, self.support, g, self.history_actions,
                               self.critic_groups, self.vocabulary)

    def __iter__(self) -> Iterator[tuple[int, TrainData]]:
        """``(rows of the newest chunk, tensors of the last buffer_chunks chunks)`` per chunk."""
        from equicare.data import iter_chunks
        from equicare.data._chunks import iter_range_chunks

        k = self.buffer_chunks
        buffer: list[TrajectoryDataset] = []
        chunks = (iter_chunks(self.source, self.manifest, chunk_rows=self.chunk_rows,
                              scan=self.scan) if self.ranges is None else
                  iter_range_chunks(self.source, self.manifest, list(self.ranges),
                                    categorical_levels=self.scan.categorical_levels,
                                    chunk_rows=self.chunk_rows))
        for chunk in chunks:
            ds = chunk.dataset
            buffer = [*buffer[-(k - 1):], ds] if k > 1 else [ds]
            yield ds.n_steps, self.build(buffer)


def _peak_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of a process, MB; 0 where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _produce(task: _Buffers, out: Any, received: Any) -> None:
    """The producer process: every shuffle buffer of one pass, in order.

    It stays alive until the consumer sets ``received``: the tensors' shared memory is handed
    over by this process when the consumer unpickles them.
    """
    import pickle

    import torch

    torch.set_num_threads(1)
    try:
        for item in task:
            out.put(("item", item))
        out.put(("end", None))
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        try:
            pickle.dumps(exc)
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        out.put(("error", exc))
    received.wait()


class _Prefetch:
    """The shuffle buffers of one pass, prepared ``depth`` ahead by a separate process.

    Reading, decoding and validating the next chunk and building its training tensors run in a
    producer process (spawned: no fork of a process holding torch threads) while the gradient
    steps run here: no work shares this process's interpreter lock with the steps, so their
    speed does not depend on how often a new buffer arrives, i.e. on the panel's size. Tensors
    come back through shared memory (``torch.multiprocessing``). Buffers arrive in storage order
    and carry no randomness, so the shuffle and the trained weights do not depend on the
    producer's timing. ``depth=0`` builds each buffer here, between the steps.
    """

    def __init__(self, task: _Buffers, depth: int) -> None:
        self._task = task
        self._depth = int(depth)
        self._iter: Iterator[tuple[int, TrainData]] | None = None
        self._proc: Any = None
        self._queue: Any = None
        self._done = False
        #: the producer's peak resident memory (MB), read when the pass ends
        self.producer_peak_mb = 0.0

    def __enter__(self) -> _Prefetch:
        if self._depth == 0:
            self._iter = iter(self._task)
            return self
        import torch.multiprocessing as tmp

        ctx = tmp.get_context("spawn")
        self._queue = ctx.Queue(maxsize=self._depth)
        self._received = ctx.Event()
        self._proc = ctx.Process(target=_produce,
                                 args=(self._task, self._queue, self._received),
                                 name="equicare-prefetch", daemon=True)
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self.producer_peak_mb = _peak_mb(self._proc.pid)  # it waits for ``received``
            self._received.set()
            if not self._done:  # stopped early: the rest of the pass is not needed
                self._proc.terminate()
            self._proc.join()
            self._queue.close()
            self._queue.cancel_join_thread()
        elif self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()

    def next(self) -> tuple[int, TrainData] | None:
        """The next buffer, or None at the end of the pass."""
        if self._done:
            return None
        if self._iter is not None:
            item = next(self._iter, None)
            self._done = item is None
            return item
        while True:
            try:
                kind, value = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():
                    self._done = True
                    raise RuntimeError(
                        "The process preparing the training buffers stopped (exit code "
                        f"{self._proc.exitcode}). It is spawned: a script that trains with "
                        "prefetch > 0 must run its code under `if __name__ == \"__main__\":`; "
                        "it also needs shared memory (/dev/shm) for two buffers. Or pass "
                        "prefetch=0.") from None
        if kind == "error":
            self._done = True
            raise value
        if kind == "end":
            self._done = True
            return None
        return value  # type: ignore[no-any-return]


def fit_stream(
    learner: OfflineLearner,
    source: str | os.PathLike[str],
    manifest: Any,
    *,
    chunk_rows: int = 500_000,
    buffer_chunks: int = 2,
    sample_rows: int = 200_000,
    prefetch: int = 0,
    read_factor: float | None = 2.0,
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
        Shuffle buffers prepared ahead by a separate, spawned producer process while the gradient
        steps run (reading, decoding and validating the next chunk, building its tensors); 0 (the
        default) prepares them in this process between the steps. The trained weights do not
        depend on it. With ``prefetch > 0`` a script must run under ``if __name__ ==
        "__main__":`` (as for any spawned process) and the producer adds its own memory (about
        1 GB with 500k-row chunks); it pays off when a core is free for it.
    read_factor : float or None
        The training pass reads about ``read_factor x n_steps x batch_size`` rows (each row read
        is drawn about ``1 / read_factor`` times): whole episodes in units drawn at random across
        a clustered Parquet panel, whatever its size. None, or a budget that covers the panel,
        reads the whole panel in storage order (as does any panel that is not clustered
        Parquet).
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
    from equicare.data._chunks import concat_datasets, random_access, sample_ranges
    from equicare.data._manifest import manifest_of as _manifest_of

    if learner.algo not in STREAM_ALGOS:
        raise InvalidParameterError(
            f"{learner.algo} does not train from a stream; use one of {', '.join(STREAM_ALGOS)}.")
    for name, v, low in (("buffer_chunks", buffer_chunks, 1), ("sample_rows", sample_rows, 1),
                         ("chunk_rows", chunk_rows, 1), ("prefetch", prefetch, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InvalidParameterError(f"{name} must be an int >= {low}; got {v!r}.")
    if read_factor is not None and (isinstance(read_factor, bool)
                                    or not isinstance(read_factor, int | float)
                                    or not math.isfinite(read_factor) or read_factor <= 0):
        raise InvalidParameterError(
            f"read_factor must be a finite number > 0 or None; got {read_factor!r}.")
    cfg = learner.config
    unused = validation_settings(cfg)
    if unused:
        raise InvalidParameterError(NO_VALIDATION.format(
            settings=", ".join(f"{k}={v!r}" for k, v in unused.items()),
            names=", ".join(unused)))
    man = _manifest_of(manifest)
    scan = scan_panel(source, man)  # once: the passes below reuse it
    rate = min(1.0, sample_rows / max(scan.n_rows, 1))
    first = functools.reduce(operator.add, (
        _pass_a(c.dataset, rate=rate, seed=int(cfg.seed))
        for c in iter_chunks(source, man, chunk_rows=chunk_rows, scan=scan)))
    if not first.sample:
        raise DataValidationError("The panel's sample has no episode; raise sample_rows.")
    ref = concat_datasets(first.sample)
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
    train_seconds = wait_seconds = warm_seconds = cpu_seconds = warm_cpu = 0.0
    n_chunks = 0
    # the producer needs the scan's levels and layout, not its per-episode arrays
    slim = dataclasses.replace(scan, episode_ids=scan.episode_ids[:0],
                               lengths=scan.lengths[:0], episode_groups={})
    budget = None if read_factor is None else math.ceil(read_factor * n_steps * cfg.batch_size)
    ranges = None
    if budget is not None and budget < scan.n_rows and random_access(source, scan):
        ranges = tuple(sample_ranges(source, scan, budget, seed=int(cfg.seed),
                                     unit_rows=max(1, chunk_rows // 8)))
    planned = scan.n_rows if ranges is None else sum(b - a for a, b in ranges)
    task = _Buffers(source=str(source), manifest=man, scan=slim, chunk_rows=chunk_rows,
                    buffer_chunks=buffer_chunks, window=cfg.input_window,
                    history_actions=cfg.input_actions, support=learner.support_,
                    group_attr=learner.group_attr_, group_levels=learner.group_levels_,
                    critic_groups=learner._n_groups if learner._critic_groups() else 0,
                    vocabulary=learner.categorical_levels_, ranges=ranges)
    producer_peak = 0.0
    with progress_task(f"train {learner.algo} (streamed)", n_steps, enabled=progress) as bar:
        while step < n_steps:
            done_before = step
            with _Prefetch(task, prefetch) as buffers:
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
                    share = chunk_n / planned
                    k = min(n_steps - step, max(1, math.ceil(n_steps * share)))
                    sampler = EpochSampler(tdata.rows, cfg.batch_size, rng)
                    t1, c1 = time.perf_counter(), time.thread_time()
                    sums: dict[str, float] = {}
                    for _ in range(k):
                        if step == warmup:
                            warm_seconds = train_seconds + time.perf_counter() - t1
                            warm_cpu = cpu_seconds + time.thread_time() - c1
                        if learner._uses_value_signal() and (
                                step % 50 == 0 or learner._group_signal is None):
                            learner._refresh_group_signal(tdata)
                        losses = learner._update(tdata, sampler.next(), step)
                        for key, loss in losses.items():
                            sums[key] = sums.get(key, 0.0) + float(loss)
                        step += 1
                    loop = time.perf_counter() - t1
                    train_seconds += loop
                    cpu_seconds += time.thread_time() - c1
                    n_chunks += 1
                    learner.history_.append({
                        "step": step, "chunk_steps": k, "chunk_rows": chunk_n,
                        **{f"train_{key}": tot / k for key, tot in sums.items()},
                        "train_seconds": loop, "wait_seconds": wait,
                        "seconds": time.perf_counter() - t0})
                    bar.update(completed=step)
                    if step >= n_steps:
                        break
            producer_peak = max(producer_peak, buffers.producer_peak_mb)
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
                            "n_episodes": scan.n_episodes,
                            "read": "sampled" if ranges is not None else "whole panel",
                            "rows_read_per_pass": planned,
                            "units_read": len(ranges) if ranges is not None else None,
                            "prefetch": prefetch, "train_seconds": train_seconds,
                            "wait_seconds": wait_seconds, "producer_peak_mb": producer_peak,
                            "steps_per_second": step / train_seconds if train_seconds else 0.0,
                            "steps_per_second_after_warmup":
                                (step - warmup) / (train_seconds - warm_seconds)
                                if train_seconds > warm_seconds else 0.0,
                            "warmup_steps": warmup,
                            # per CPU-second of the training thread: what other processes
                            # (the producer, a loaded host) take from it does not count
                            "cpu_steps_per_second_after_warmup":
                                (step - warmup) / (cpu_seconds - warm_cpu)
                                if cpu_seconds > warm_cpu else 0.0,
                            "wall_steps_per_second": step / (train_seconds + wait_seconds)
                                if train_seconds + wait_seconds else 0.0}
    return learner


def stream_summary(learner: OfflineLearner) -> Mapping[str, Any]:
    """The ``stream_info_`` of a learner trained by :func:`fit_stream` (empty otherwise)."""
    return dict(getattr(learner, "stream_info_", {}))
