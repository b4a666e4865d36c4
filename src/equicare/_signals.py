"""SIGTERM as an exception: ``kill PID`` or a scheduler's time limit stops work cleanly.

Python's default SIGTERM ends the process at once, so ``finally`` blocks do not run: temporary
files of atomic writes stay behind and a run is never recorded as interrupted. Inside
:func:`sigterm_raises` the signal raises an exception instead, and the usual clean-up runs.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

__all__ = ["sigterm_raises"]


@contextlib.contextmanager
def sigterm_raises(exc: type[BaseException]) -> Iterator[None]:
    """Raise ``exc`` on SIGTERM inside the block (main thread only).

    The handler in place before is restored after. Outside the main thread (a test runner's
    worker thread) a handler cannot be installed, and the block runs unchanged.

    Parameters
    ----------
    exc : type of BaseException
        Raised with the message ``"received signal 15"``.
    """

    def handler(signum: int, frame: Any) -> None:
        raise exc(f"received signal {signum}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
