"""Executors: one ``map`` interface for bootstrap refits, sweeps, seeds and fairness frontiers.

``local`` runs a process pool on this machine (``jobs=1`` runs in-process); ``ray`` sends the same
tasks to a Ray cluster. Results come back in input order and every task receives its own seed from
the caller, so the same seeds give the same numbers on either executor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from equicare._tasks import iter_map, record_warnings, reemit_warnings
from equicare.exceptions import InvalidParameterError
from equicare.utils import PARAM_MESSAGE, check_param

__all__ = [
    "Executor",
    "LocalExecutor",
    "RayExecutor",
    "SerialExecutor",
    "get_executor",
    "iter_map",
    "record_warnings",
    "reemit_warnings",
    "torch_threads",
]

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(n)`` and restore the previous count afterwards.

    Tasks of a serial executor run in the caller's process: without the restore, one sweep
    point would leave the caller's torch on ``n`` threads. ``None`` leaves the count alone.
    """
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@runtime_checkable
class Executor(Protocol):
    """Anything with ``map(fn, items) -> list`` returning results in input order."""

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item; results in input order."""
        ...


@dataclass(frozen=True)
class SerialExecutor:
    """Run tasks one after another in this process."""

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item; results in input order."""
        return [fn(x) for x in items]

    def imap(self, fn: Callable[[Any], R], items: Iterable[Any]) -> Iterator[R]:
        """Like :meth:`map`, yielding each result as soon as it and those before it are done."""
        return (fn(x) for x in items)


@dataclass(frozen=True)
class LocalExecutor:
    """A pool of local processes.

    Parameters
    ----------
    jobs : int
        Worker processes; 1 runs serially in-process (no pickling). ``-1`` uses every core.
    """

    jobs: int = 1

    def __post_init__(self) -> None:
        check_param(
            self.jobs,
            "jobs",
            "LocalExecutor",
            kind=int,
            expected="a positive int or -1 (all cores)",
        )
        if self.jobs == 0 or self.jobs < -1:
            raise InvalidParameterError(
                "The 'jobs' parameter of LocalExecutor must be a positive int or -1 "
                f"(all cores). Got {self.jobs!r} instead."
            )

    @property
    def n_workers(self) -> int:
        """Number of worker processes."""
        return (os.cpu_count() or 1) if self.jobs == -1 else self.jobs

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item in worker processes; results in input order."""
        return list(self.imap(fn, items))

    def imap(self, fn: Callable[[Any], R], items: Iterable[Any]) -> Iterator[R]:
        """Like :meth:`map`, yielding results in input order as they finish, from one pool.

        Inside :meth:`session` every call uses the session's pool; otherwise each call starts
        (and ends) its own.
        """
        seq: Sequence[Any] = list(items)
        if self.n_workers == 1 or len(seq) <= 1:
            yield from (fn(x) for x in seq)
            return
        pool = self.__dict__.get("_pool")
        if pool is not None:
            yield from pool.map(fn, seq)
            return
        with _owned_pool(min(self.n_workers, len(seq))) as own:
            yield from own.map(fn, seq)

    @contextlib.contextmanager
    def session(self) -> Iterator[LocalExecutor]:
        """Keep one pool of worker processes for every ``map`` inside the block.

        Multi-pass jobs (streamed FQE and DR make three passes, each a ``map`` over the shards)
        start the workers, and import the library in them, once instead of once per pass.
        Nested sessions share the outer one's pool.

        Examples
        --------
        >>> ex = LocalExecutor(jobs=2)
        >>> with ex.session():  # doctest: +SKIP
        ...     first, second = ex.map(abs, [-1, -2]), ex.map(abs, [-3, -4])
        """
        if self.n_workers == 1 or self.__dict__.get("_pool") is not None:
            yield self
            return
        with _owned_pool(self.n_workers) as pool:
            object.__setattr__(self, "_pool", pool)  # frozen: the pool is not a setting
            try:
                yield self
            finally:
                object.__delattr__(self, "_pool")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings only (a session's pool stays in this process)."""
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}


@contextlib.contextmanager
def _owned_pool(n: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool, shut down at the end; on an error or an interrupt its workers are stopped.

    Ctrl-C, or SIGTERM turned into an exception, stops the workers instead of waiting for their
    tasks: a sweep stopped by SIGTERM left its workers running after the parent had gone.
    """
    pool = _spawn_pool(n)
    try:
        yield pool
    except BaseException:
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            if w.is_alive():
                w.terminate()
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():  # SIGTERM blocked or ignored in the worker: stop it for good
                w.kill()
                w.join(timeout=5)
        raise
    pool.shutdown(wait=True)


class Interrupted(Exception):
    """SIGTERM received inside :func:`sigterm_as_interrupt` (handled as Ctrl-C)."""


def sigterm_as_interrupt() -> contextlib.AbstractContextManager[None]:
    """Turn SIGTERM into :class:`Interrupted` inside the block (main thread only).

    A stopped run or sweep is then recorded as interrupted and its worker pool stopped.
    """
    from equicare._signals import sigterm_raises

    return sigterm_raises(Interrupted)


def _spawn_pool(n: int) -> ProcessPoolExecutor:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # no fork of a process holding torch threads
    threads = max(1, (os.cpu_count() or 1) // max(n, 1))
    return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_share_cores,
                               initargs=(threads,))


#: The worker's thread limits (kept alive for the worker's life).
_WORKER_LIMITS: list[Any] = []


def _share_cores(threads: int) -> None:
    """Worker initializer: BLAS and OpenMP on ``threads`` threads, the pool's share of the cores.

    Without it every worker's BLAS starts one thread per core, and ``n`` workers oversubscribe
    the machine ``n`` times over (the sharded streamed evaluation's bootstrap products ran 2x
    slower on a 2-worker pool than in one process). A limit the user set in the environment
    (``OMP_NUM_THREADS`` ...) is kept for libraries loaded later.
    """
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    _WORKER_LIMITS.append(threadpool_limits(limits=threads))


RAY_MISSING = "The ray executor needs Ray: pip install 'equicare[ray]'."
RAY_NO_CLUSTER = (
    "No Ray cluster answers at address {address!r}. Start one with `ray start --head` "
    "(then pass --address auto or HOST:PORT), or pass --address local to start one on this "
    "machine for this run."
)
RAY_STALE_CLUSTER = (
    "No Ray cluster answers at {resolved}, where address {address!r} points (read from "
    "{source}; a cluster stopped without `ray stop` leaves it behind). Start one with "
    "`ray start --head`, pass --address HOST:PORT of a running one, or pass --address local "
    "(or --executor local) to run on this machine."
)

# The session this module started with ray.init, as (address, num_cpus); None when Ray was
# initialised by the caller or not at all. Used to reuse, replace or shut down our own session.
_ray_session: list[tuple[str, int | None]] = []


@dataclass(frozen=True)
class RayExecutor:
    """Tasks on a Ray cluster (``pip install 'equicare[ray]'``).

    The first ``map`` connects (or starts a local cluster) and the session is kept for later
    calls with the same settings; an executor with other settings shuts that session down and
    opens its own. ``shutdown()`` (or leaving a ``with RayExecutor(...)`` block) ends a session
    this executor opened; a local cluster it started stops with it. If the caller already ran
    ``ray.init`` itself, tasks go to that session and ``address`` is not used.

    A cluster started here listens on loopback only, has no dashboard, and usage statistics are
    off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise, so nothing is sent over the network.

    Parameters
    ----------
    address : str
        ``"auto"`` (the cluster ``ray start`` runs on this machine, or ``RAY_ADDRESS``),
        ``"local"`` (start a cluster here) or ``"HOST:PORT"`` of a cluster's head node.
    num_cpus : int, optional
        CPUs of a locally started cluster (ignored when connecting to a running one).

    Examples
    --------
    >>> with RayExecutor(address="local", num_cpus=2) as ex:  # doctest: +SKIP
    ...     ex.map(abs, [-1, -2])
    [1, 2]
    """

    address: str = "auto"
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        expected = "'auto', 'local' or 'HOST:PORT'"
        check_param(self.address, "address", "RayExecutor", kind=str, expected=expected)
        if self.address not in ("auto", "local") and _host_port(self.address) is None:
            raise InvalidParameterError(
                PARAM_MESSAGE.format(
                    name="address", owner="RayExecutor", expected=expected, got=self.address
                )
            )
        check_param(
            self.num_cpus,
            "num_cpus",
            "RayExecutor",
            kind=int,
            low=1,
            allow_none=True,
            expected="a positive int or None",
        )

    @property
    def n_workers(self) -> int:
        """CPUs of the cluster (connects on first use)."""
        ray = self._connect()
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item as Ray tasks; results in input order."""
        return list(self.imap(fn, items))

    def imap(self, fn: Callable[[Any], R], items: Iterable[Any]) -> Iterator[R]:
        """Submit every item as a Ray task at once; yield the results in input order."""
        seq: Sequence[Any] = list(items)
        if not seq:
            return
        ray = self._connect()
        remote = ray.remote(fn)
        refs = [remote.remote(x) for x in seq]
        for ref in refs:
            yield ray.get(ref)

    def connect(self) -> None:
        """Connect now (or start the local cluster): a missing cluster fails here, up front."""
        self._connect()

    def shutdown(self) -> None:
        """End the Ray session this module opened (a no-op for a session the caller opened)."""
        if not _ray_session:
            return
        import ray

        ray.shutdown()
        _ray_session.clear()

    def __enter__(self) -> RayExecutor:
        """Use as a context manager that shuts its session down on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Shut down the session this executor opened."""
        self.shutdown()

    def _connect(self) -> Any:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise InvalidParameterError(RAY_MISSING) from exc
        key = (self.address, self.num_cpus if self.address == "local" else None)
        if ray.is_initialized():
            if not _ray_session or _ray_session[0] == key:
                return ray  # the caller's own session, or ours with the same settings
            self.shutdown()
        if self.address == "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                num_cpus=self.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,  # the driver's own "ray" logger (start-up notices)
                _node_ip_address="127.0.0.1",  # a cluster of this machine stays on loopback
            )
        else:
            hp = _host_port(self.address)
            if hp is not None and not _answers(*hp):
                raise InvalidParameterError(RAY_NO_CLUSTER.format(address=self.address))
            if self.address == "auto":
                _check_auto_address()
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.ERROR)
            except ConnectionError as exc:
                raise InvalidParameterError(RAY_NO_CLUSTER.format(address=self.address)) from exc
        _ray_session[:] = [key]
        return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``("host", port)`` of ``"HOST:PORT"`` (or ``"ray://HOST:PORT"``), else None."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def _check_auto_address() -> None:
    """Fail fast when ``"auto"`` resolves to a cluster that no longer answers.

    Ray resolves ``"auto"`` to ``RAY_ADDRESS``, a running GCS process of this machine, or the
    ``ray_current_cluster`` file of its temp folder - which a head node killed without
    ``ray stop`` leaves behind. ``ray.init`` then retries that address without end, so probe it
    first. Resolution uses Ray's own rule; if that private helper moves, nothing is probed.
    """
    try:
        from ray._common.utils import get_ray_address_file
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # pragma: no cover - a Ray release that moved the helpers
        return
    try:
        resolved = canonicalize_bootstrap_address("auto")
    except ConnectionError as exc:
        raise InvalidParameterError(RAY_NO_CLUSTER.format(address="auto")) from exc
    except Exception:  # pragma: no cover - let ray.init report what it makes of it
        return
    hp = _host_port(resolved) if resolved else None
    if hp is None or _answers(*hp):
        return
    env = os.environ.get("RAY_ADDRESS", "")
    source = "the RAY_ADDRESS environment variable" if env else get_ray_address_file(None)
    raise InvalidParameterError(
        RAY_STALE_CLUSTER.format(resolved=resolved, address="auto", source=source)
    )


def _answers(host: str, port: int, timeout: float = 5.0) -> bool:
    """Whether something accepts TCP connections at ``host:port`` (Ray would wait minutes)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def get_executor(
    name: Literal["local", "serial", "ray"] | str = "local", jobs: int = 1, address: str = "auto"
) -> Executor:
    """Build an executor by name (``local``, ``serial`` or ``ray``)."""
    check_param(name, "executor", "get_executor", choices=("local", "serial", "ray"))
    if name == "serial":
        return SerialExecutor()
    if name == "ray":
        return RayExecutor(address=address, num_cpus=None if jobs == -1 else jobs)
    return LocalExecutor(jobs=jobs)
