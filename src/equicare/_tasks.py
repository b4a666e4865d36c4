"""Run tasks on an executor and relay the warnings they raise to the caller.

Lives below every package that maps work over executors (the streamed evaluation and audit,
sweeps, frontiers), so that each can relay its workers' warnings without importing
``equicare.pipeline``. The executors themselves are in :mod:`equicare.pipeline._executor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["TaskWarning", "record_warnings", "reemit_warnings", "iter_map"]

R = TypeVar("R")

#: A warning recorded in a task: ``(category, message, filename, lineno)``.
TaskWarning = tuple[type[Warning], str, str, int]


def record_warnings(task: tuple[Callable[[Any], Any], Any]) -> tuple[Any, list[TaskWarning]]:
    """Run ``fn(item)`` for ``task = (fn, item)``; return the result and the warnings it raised.

    A top-level function, so process pools and Ray can ship it. The warnings of a task run in a
    worker process would otherwise be printed there by Python's default ``showwarning``
    (``file:line: Category: message`` and the source line), not by the caller's (the command
    line's one-line ``warning: ...``). The worker's warning filters still apply (an ignored
    warning is not recorded).

    Returns
    -------
    result : object
        ``fn(item)``.
    warnings : list of (category, message, filename, lineno)
        In the order raised; a category the caller could not import becomes ``UserWarning``.
    """
    import warnings

    fn, item = task
    with warnings.catch_warnings(record=True) as caught:
        out = fn(item)
    recorded: list[TaskWarning] = []
    for w in caught:
        # a class is shipped by reference (module and qualified name): one defined inside a
        # function cannot be found by the caller
        category = w.category if _importable(w.category) else UserWarning
        recorded.append((category, str(w.message), str(w.filename), int(w.lineno)))
    return out, recorded


def _importable(cls: type) -> bool:
    """Whether ``cls`` is reachable as ``module.qualname`` (how classes are pickled)."""
    import sys

    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


def reemit_warnings(recorded: Iterable[TaskWarning], seen: set[tuple[str, str]]) -> None:
    """Issue warnings recorded by :func:`record_warnings` in this process, each text once.

    They go through this process's filters and ``warnings.showwarning`` (the command line's
    one-line ``warning: ...``), as a warning raised in-process would. ``seen`` holds the
    ``(category name, message)`` pairs already issued and is updated.
    """
    import warnings

    for category, message, filename, lineno in recorded:
        key = (category.__qualname__, message)
        if key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(message, category, filename, lineno)


def iter_map(executor: Any, fn: Callable[[Any], R], items: Iterable[Any]) -> Iterator[R]:
    """Results of ``fn`` over ``items`` in input order, one by one (for progress bars).

    Uses the executor's ``imap`` when it has one (all of ours: one pool or one batch of Ray tasks
    for every item), else its ``map``. Warnings raised by the tasks, in worker processes or in
    this one, are issued here (:func:`reemit_warnings`) as each result arrives, every distinct
    message once.
    """
    tasks = [(fn, x) for x in items]
    imap = getattr(executor, "imap", None)
    results = iter(imap(record_warnings, tasks)) if imap is not None else iter(
        executor.map(record_warnings, tasks))
    seen: set[tuple[str, str]] = set()
    for out, recorded in results:
        reemit_warnings(recorded, seen)
        yield out
