"""SIGTERM as an exception: ``kill PID`` or a scheduler's time limit stops work cleanly.

Python's default SIGTERM ends the process at once, so ``finally`` blocks do not run: temporary
files of atomic writes stay behind and a run is never recorded as interrupted. Inside
:func:`sigterm_raises` the signal raises an exception instead, and the usual clean-up runs.

Once the work's result is recorded (:func:`mark_committed`: a run's ``finished`` status is
committed, a command has returned), a SIGTERM changes nothing: it is ignored for the rest of the
block, and with ``final=True`` (the command line's own process) until the process has exited, so
a signal during interpreter exit cannot turn a finished run into exit code 143.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["sigterm_raises", "mark_committed", "sigterm_deferred"]

#: Whether the result of the innermost :func:`sigterm_raises` block's work is recorded.
_committed = [False]
#: Inside :func:`sigterm_deferred`; a SIGTERM arrived meanwhile (handled when the block ends).
_deferring = [False]
_pending = [False]


def mark_committed() -> None:
    """Say that the work's result is recorded: SIGTERM no longer raises inside the block.

    Called when a run's ``finished`` status is committed and when a command returns. Outside a
    :func:`sigterm_raises` block it has no effect (each block starts uncommitted).
    """
    _committed[0] = True


@contextlib.contextmanager
def sigterm_raises(exc: type[BaseException], *, final: bool = False) -> Iterator[None]:
    """Raise ``exc`` on SIGTERM inside the block (main thread only), until the work is committed.

    The handler in place before is restored after; with ``final`` (the process ends with the
    block: the command line's entry point) SIGTERM is ignored instead, so that nothing arriving
    during interpreter exit changes the exit code. Outside the main thread (a test runner's
    worker thread) a handler cannot be installed, and the block runs unchanged.

    Parameters
    ----------
    exc : type of BaseException
        Raised with the message ``"received signal 15"``, unless :func:`mark_committed` was
        called inside the block (the signal is then ignored).
    final : bool
        Leave SIGTERM ignored after the block (only for a process that exits right after).
    """

    def handler(signum: int, frame: Any) -> None:
        if _committed[0]:  # the result is recorded: finishing is all that is left
            return
        if _deferring[0]:  # inside sigterm_deferred(): handled when it ends
            _pending[0] = True
            return
        raise exc(f"received signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    before = _committed[0]
    _committed[0] = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN if final else old)
        _committed[0] = before


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Hold SIGTERM during the block (a commit and :func:`mark_committed`); handle it after.

    A signal handled between a database's ``COMMIT`` and the line after it would be taken for
    a failed commit. Inside a :func:`sigterm_raises` block, a SIGTERM that arrives here is
    noted and raised again when the block ends (then ignored if the work was committed).
    A flag, not a signal mask: a process-directed signal goes to any thread that does not
    block it (DuckDB's and torch's threads), and Python runs its handler in the main thread.
    """
    outer = _deferring[0]
    _deferring[0] = True
    try:
        yield
    finally:
        _deferring[0] = outer
        if not outer and _pending[0]:
            _pending[0] = False
            signal.raise_signal(signal.SIGTERM)
