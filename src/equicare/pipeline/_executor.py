"""Executors: one ``map`` interface for bootstrap refits, sweeps, seeds and fairness frontiers.

``local`` runs a process pool on this machine (``jobs=1`` runs in-process); ``ray`` sends the same
tasks to a Ray cluster. Results come back in input order and every task receives its own seed from
the caller, so the same seeds give the same numbers on either executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from equicare.utils import check_param

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "SerialExecutor", "get_executor"]

T = TypeVar("T")
R = TypeVar("R")


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
            raise ValueError(
                "The 'jobs' parameter of LocalExecutor must be a positive int or -1 "
                f"(all cores). Got {self.jobs!r} instead."
            )

    @property
    def n_workers(self) -> int:
        """Number of worker processes."""
        return (os.cpu_count() or 1) if self.jobs == -1 else self.jobs

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item in worker processes; results in input order."""
        seq: Sequence[Any] = list(items)
        if self.n_workers == 1 or len(seq) <= 1:
            return [fn(x) for x in seq]
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process holding torch threads
        with ProcessPoolExecutor(max_workers=min(self.n_workers, len(seq)), mp_context=ctx) as pool:
            return list(pool.map(fn, seq))


@dataclass(frozen=True)
class RayExecutor:
    """Tasks on a Ray cluster (``pip install 'equicare[ray]'``).

    Parameters
    ----------
    address : str
        ``"auto"`` (a running cluster), ``"local"`` (start one here) or ``"HOST:PORT"``.
    num_cpus : int, optional
        CPUs of a locally started cluster.
    """

    address: str = "auto"
    num_cpus: int | None = None

    def map(self, fn: Callable[[Any], R], items: Iterable[Any]) -> list[R]:
        """Apply ``fn`` to every item as Ray tasks; results in input order."""
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ValueError("The ray executor needs Ray: pip install 'equicare[ray]'.") from exc
        if not ray.is_initialized():
            if self.address == "local":
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        remote = ray.remote(fn)
        return list(ray.get([remote.remote(x) for x in items]))


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
