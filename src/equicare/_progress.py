"""Nesting progress bars: a long step shows its own bar, or a row in the pipeline's shared display.

Rich allows one live display at a time. Library code calls :func:`progress_task`; when the pipeline
has opened :func:`shared_progress`, the task becomes a row of that display (with elapsed time and
ETA), otherwise it gets a display of its own. When stderr is not a terminal (a log file, a pipe,
CI) there is no live display: each task prints one line when it starts, a line at every tenth of
its work (at most one per 10 s) and one when it ends, so long commands are never silent.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["ProgressTask", "Stages", "progress_task", "shared_progress"]

_ACTIVE: list[Any] = []  # the shared rich Progress, when the pipeline runs


def _columns() -> list[Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return [
        TextColumn("[bold]{task.description:<26}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]


class ProgressTask:
    """Handle of one task: ``update(completed=..., advance=..., info=...)``.

    A no-op when disabled.
    """

    def __init__(self, progress: Any, task_id: Any) -> None:
        self._p = progress
        self._id = task_id

    def update(
        self,
        *,
        completed: float | None = None,
        advance: float | None = None,
        info: str | None = None,
        total: float | None = None,
    ) -> None:
        """Move the bar and/or change its info text."""
        if self._p is None:
            return
        kw: dict[str, Any] = {}
        if completed is not None:
            kw["completed"] = completed
        if advance is not None:
            kw["advance"] = advance
        if info is not None:
            kw["info"] = info
        if total is not None:
            kw["total"] = total
        self._p.update(self._id, **kw)


def _is_terminal() -> bool:
    from rich.console import Console

    return bool(Console(stderr=True).is_terminal)


class _LineTask:
    """Progress of one task as plain lines on stderr (no live display)."""

    def __init__(self, description: str, total: float | None, completed: float) -> None:
        self.description = description.strip()
        self.total = total
        self.completed = completed
        self.info = ""
        self.t0 = time.perf_counter()
        self._last = self.t0
        self._next_tenth = 1
        self._say(f"{self.description}: started"
                  + (f" ({self._count()})" if total is not None else ""))

    def _count(self) -> str:
        done = f"{self.completed:g}"
        return done if self.total is None else f"{done}/{self.total:g}"

    def _say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def update(self, *, completed: float | None = None, advance: float | None = None,
               info: str | None = None, total: float | None = None) -> None:
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = completed
        if advance is not None:
            self.completed += advance
        if info is not None:
            self.info = info
        now = time.perf_counter()
        if not self.total:
            return
        tenth = int(10 * self.completed / self.total)
        if tenth >= self._next_tenth and now - self._last >= 10.0 and self.completed < self.total:
            self._next_tenth = tenth + 1
            self._last = now
            extra = f" {self.info}" if self.info else ""
            self._say(f"{self.description}: {self._count()} ({now - self.t0:.1f} s){extra}")

    def close(self) -> None:
        extra = f" {self.info}" if self.info else ""
        self._say(f"{self.description}: done ({self._count()}) in "
                  f"{time.perf_counter() - self.t0:.1f} s{extra}")


@contextlib.contextmanager
def progress_task(
    description: str,
    total: float | None,
    *,
    enabled: bool = True,
    completed: float = 0,
    info: str = "",
) -> Iterator[ProgressTask]:
    """A progress bar for one long step (training, bootstrap, simulation).

    Parameters
    ----------
    description : str
    total : float or None
        Units of work (None: indeterminate).
    enabled : bool
        False gives a silent handle.
    """
    if not enabled:
        yield ProgressTask(None, None)
        return
    if not _ACTIVE and not _is_terminal():
        line = _LineTask(description, total, completed)
        yield line  # type: ignore[misc]
        line.close()
        return
    if _ACTIVE:
        prog = _ACTIVE[-1]
        tid = prog.add_task(description, total=total, completed=completed, info=info)
        try:
            yield ProgressTask(prog, tid)
        finally:
            task = prog._tasks.get(tid)
            if task is not None and task.total is not None:
                prog.update(tid, completed=task.total)
        return
    from rich.progress import Progress

    with Progress(*_columns(), transient=False) as prog:
        # rich accepts a float `completed` (it stores floats); its annotation says int
        tid = prog.add_task(description, total=total, completed=completed,  # type: ignore[arg-type]
                            info=info)
        yield ProgressTask(prog, tid)


@contextlib.contextmanager
def shared_progress(enabled: bool = True) -> Iterator[Any]:
    """Open one live display that every :func:`progress_task` inside joins as a row."""
    if not enabled or not _is_terminal():
        yield None
        return
    from rich.progress import Progress

    with Progress(*_columns(), transient=False) as prog:
        _ACTIVE.append(prog)
        try:
            yield prog
        finally:
            _ACTIVE.pop()


class Stages:
    """A command's progress: one ``[command] ...`` line per stage on stderr, bars over long loops.

    The stage lines are printed whether or not stderr is a terminal (above a live display when
    one runs); :meth:`bar` is :func:`progress_task` named after the command. Disabled, both
    do nothing, so library functions take ``progress: bool = False`` and call them freely.

    Parameters
    ----------
    command : str
        Name printed in brackets, e.g. ``"audit"``.
    enabled : bool
        False: silent.

    Examples
    --------
    >>> say = Stages("audit", enabled=False)
    >>> say("behaviour: bootstrap 200 replicates")  # prints nothing
    """

    def __init__(self, command: str, enabled: bool = True) -> None:
        self.command = command
        self.enabled = bool(enabled)

    def __call__(self, message: str) -> None:
        """Print ``[command] message`` on stderr (flushed) when enabled."""
        if self.enabled:
            print(f"[{self.command}] {message}", file=sys.stderr, flush=True)

    def bar(self, what: str, total: float | None
            ) -> contextlib.AbstractContextManager[ProgressTask]:
        """A :func:`progress_task` named ``"command: what"`` over ``total`` units of work."""
        return progress_task(f"{self.command}: {what}", total, enabled=self.enabled)
