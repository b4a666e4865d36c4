"""Small shared helpers: random state handling, parameter checks, atomic writes, fitted checks."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from equicare.exceptions import InvalidParameterError, NotFittedError

__all__ = [
    "available_memory",
    "RandomState",
    "int_seed",
    "check_random_state",
    "spawn_seeds",
    "check_is_fitted",
    "check_param",
    "check_dataset",
    "DATASET_EXPECTED",
    "atomic_write",
    "atomic_write_text",
    "PARAM_MESSAGE",
    "MIN_CELL",
    "config_to_dict",
    "config_from_dict",
    "ROW_BLOCK_ELEMENTS",
    "row_blocks",
    "check_out_location",
    "value_text",
]

RandomState = int | np.random.Generator | None

#: Minimum number of episodes in any published cell (table row, figure bar).
MIN_CELL = 11

#: Template of every argument-constraint error (tests match it exactly).
PARAM_MESSAGE = "The '{name}' parameter of {owner} must be {expected}. Got {got!r} instead."

#: Elements (rows x columns) per block when a per-row quantity of an ``(n_steps, n_actions)``
#: matrix is computed block by block instead of on the whole matrix (64 MB of float64).
ROW_BLOCK_ELEMENTS = 8_000_000


def value_text(x: float, small: str = ".3f") -> str:
    """A value for a table: thousands separators and no decimals from 1,000 to 1e9.

    Below 1,000 in ``small``'s format; from 1e9 on (importance weights blowing up) with 4
    significant digits. Costs in dollars read ``-5,863`` instead of ``-5863.0250`` (the run's
    table) or ``-5958.121 [-6480.245, -5352.126]`` (the audit's), as the policy card reads them.

    Parameters
    ----------
    x : float
    small : str
        Format spec of values below 1,000 in magnitude (and of non-finite ones).
    """
    if math.isfinite(x) and 1000 <= abs(x) < 1e9:
        return f"{x:,.0f}"
    if math.isfinite(x) and abs(x) >= 1e9:
        return f"{x:.4g}"
    return format(x, small)


def available_memory() -> int | None:
    """Bytes of memory the system can give this process now (``MemAvailable``), or None.

    Read from ``/proc/meminfo`` on Linux; elsewhere the physical memory from ``os.sysconf``;
    None where neither is known (checks that use it are then skipped).
    """
    import os

    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def row_blocks(n_rows: int, n_cols: int = 1, *, multiple: int = 1) -> Iterator[slice]:
    """Consecutive row slices covering ``range(n_rows)``, one block of a row-wise pass each.

    A block has at most ``ROW_BLOCK_ELEMENTS // n_cols`` rows, rounded down to a multiple of
    ``multiple`` (and at least ``multiple`` rows). The limit is read at call time, so tests can
    lower it to exercise several blocks on small data.

    Examples
    --------
    >>> [(s.start, s.stop) for s in row_blocks(5, 1)]
    [(0, 5)]
    """
    rows = max(1, ROW_BLOCK_ELEMENTS // max(1, n_cols))
    rows = max(multiple, rows - rows % multiple)
    for lo in range(0, n_rows, rows):
        yield slice(lo, min(lo + rows, n_rows))


def check_random_state(random_state: RandomState) -> np.random.Generator:
    """Turn ``random_state`` into a :class:`numpy.random.Generator`.

    Parameters
    ----------
    random_state : int, numpy.random.Generator or None
        A seed, an existing generator (returned as is) or ``None`` for fresh OS entropy.

    Returns
    -------
    numpy.random.Generator
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, int | np.integer):
        if random_state is not None and int(random_state) < 0:
            raise InvalidParameterError(
                PARAM_MESSAGE.format(
                    name="random_state",
                    owner="check_random_state",
                    expected="a non-negative int, a numpy Generator or None",
                    got=random_state,
                )
            )
        return np.random.default_rng(None if random_state is None else int(random_state))
    raise InvalidParameterError(
        PARAM_MESSAGE.format(
            name="random_state",
            owner="check_random_state",
            expected="an int, a numpy Generator or None",
            got=random_state,
        )
    )


def int_seed(random_state: RandomState, owner: str) -> int:
    """One integer seed from ``random_state``, for functions that derive all their seeds from one.

    An int (or NumPy integer) ``>= 0`` is returned as is; a :class:`numpy.random.Generator`
    draws the seed once (so it advances); ``None`` draws it from fresh OS entropy.

    Parameters
    ----------
    random_state : int, numpy.random.Generator or None
    owner : str
        Name of the calling function, for the error message.

    Returns
    -------
    int
        In ``[0, 2**31 - 1)`` when drawn.

    Raises
    ------
    InvalidParameterError
        A bool, a negative int or anything else.
    """
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if int(random_state) >= 0:
            return int(random_state)
    elif random_state is None or isinstance(random_state, np.random.Generator):
        return int(check_random_state(random_state).integers(2**31 - 1))
    raise InvalidParameterError(PARAM_MESSAGE.format(
        name="random_state", owner=owner,
        expected="a non-negative int, a numpy Generator or None", got=random_state))


#: What a ``dataset`` argument must be (the expected part of its :data:`PARAM_MESSAGE`).
DATASET_EXPECTED = ("a TrajectoryDataset (build one with "
                    "equicare.data.from_frame(frame, manifest))")


def check_dataset(dataset: Any, owner: str, name: str = "dataset") -> None:
    """Refuse anything but a trajectory dataset (a pandas frame, a path, ...) at a public entry.

    Duck-typed: an object with ``action_space`` and ``episode_offsets`` passes (a
    :class:`~equicare.data.TrajectoryDataset` or a subset of one).

    Raises
    ------
    InvalidParameterError
        ``"The 'dataset' parameter of {owner} must be a TrajectoryDataset (build one with
        equicare.data.from_frame(frame, manifest)). Got 'DataFrame' instead."``
    """
    if not hasattr(dataset, "action_space") or not hasattr(dataset, "episode_offsets"):
        raise InvalidParameterError(PARAM_MESSAGE.format(
            name=name, owner=owner, expected=DATASET_EXPECTED, got=type(dataset).__name__))


def spawn_seeds(random_state: RandomState, n: int) -> list[int]:
    """Draw ``n`` independent integer seeds from ``random_state`` (for executors and workers)."""
    rng = check_random_state(random_state)
    return [int(s) for s in rng.integers(0, 2**31 - 1, size=n)]


def check_is_fitted(obj: Any, attributes: str | list[str] | None = None) -> None:
    """Raise :class:`NotFittedError` unless ``obj`` has fitted attributes (ending in ``_``).

    Parameters
    ----------
    obj : object
        Estimator or learner.
    attributes : str or list of str, optional
        Attribute names that must exist; default: any public attribute ending in ``_``.
    """
    if attributes is None:
        fitted = any(k.endswith("_") and not k.startswith("_") for k in vars(obj))
    else:
        names = [attributes] if isinstance(attributes, str) else attributes
        fitted = all(hasattr(obj, a) for a in names)
    if not fitted:
        raise NotFittedError(
            f"This {type(obj).__name__} instance is not fitted yet; call fit first."
        )


def check_param(
    value: Any,
    name: str,
    owner: str,
    *,
    kind: type | tuple[type, ...] | None = None,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    choices: tuple[Any, ...] | list[Any] | None = None,
    allow_none: bool = False,
    expected: str | None = None,
) -> Any:
    """Check one argument against its constraints and raise in the house style.

    Returns the value unchanged so that it can be used inline. Raises
    :class:`~equicare.exceptions.InvalidParameterError` (a ``ValueError`` and a ``TypeError``)
    with :data:`PARAM_MESSAGE`.
    """
    if value is None and allow_none:
        return value

    def fail(exc: type[Exception], default: str) -> None:
        raise exc(
            PARAM_MESSAGE.format(name=name, owner=owner, expected=expected or default, got=value)
        )

    if choices is not None:
        if value not in choices:
            fail(InvalidParameterError, "one of " + ", ".join(repr(c) for c in choices))
        return value
    if kind is not None:
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
        )
        if not ok:
            names = (
                kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            )
            fail(InvalidParameterError, f"of type {names}")
    if low is not None or high is not None:
        v = float(value)
        bad = math.isnan(v)
        if low is not None:
            bad |= v < low if low_inclusive else v <= low
        if high is not None:
            bad |= v > high if high_inclusive else v >= high
        if bad:
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            lb = "[" if (low_inclusive and low is not None) else "("
            hb = "]" if (high_inclusive and high is not None) else ")"
            fail(InvalidParameterError, f"a number in {lb}{lo}, {hi}{hb}")
    return value


#: An output whose folder cannot be written (tests match it).
MSG_OUT_NOT_WRITABLE = ("{option} {path}: cannot write in {folder} (no write permission or a "
                        "read-only file system); choose a folder you can write to.")


def check_out_location(path: str | os.PathLike[str], *, folder: bool = False,
                       option: str = "--out") -> None:
    """Refuse an output path that cannot be written.

    One of its parents is a file or, for an output folder (``folder=True``), the path itself is
    a file. Checked before any work starts, so that training does not fail at the end.

    Raises
    ------
    InvalidParameterError
        One line naming the option, the path and the file in the way.
    """
    p = Path(path)
    for parent in reversed(p.parents):
        if parent.exists() and not parent.is_dir():
            raise InvalidParameterError(
                f"{option} {p}: {parent} is a file, not a folder; choose a path under a folder.")
    if folder and p.exists() and not p.is_dir():
        raise InvalidParameterError(
            f"{option} {p} is a file; expected a folder (a new or empty one, or pass --force "
            "to replace an earlier output folder).")
    # the folder the output is created in (or, for an existing output folder, the folder
    # itself): unwritable, the write at the end of the work failed as an internal error
    where = p if folder and p.is_dir() else next(
        (q for q in p.absolute().parents if q.exists()), None)
    if where is not None and not os.access(where, os.W_OK | os.X_OK):
        raise InvalidParameterError(MSG_OUT_NOT_WRITABLE.format(option=option, path=p,
                                                                folder=where))


def _new_file_mode(target: Path) -> int:
    """Permissions of a file written at ``target``: its current ones, else 0o666 less the umask."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[Any]:
    """Write a file atomically: to a temporary file in the same folder, then ``os.replace``.

    A crash mid-write leaves any earlier file at ``path`` untouched. The file gets the
    permissions a plain ``open(path, "w")`` gives it (``0o666`` less the umask; those of the
    file it replaces, if any), not the owner-only ``0o600`` of the temporary file: results are
    read by other analysts and auditors.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:  # name the file asked for, not the hidden temporary one
        raise type(exc)(exc.errno, exc.strerror, str(target)) from None
    try:
        os.chmod(tmp, _new_file_mode(target))
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dictionary of a config dataclass (tuple fields become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(cls: type[C], d: dict[str, Any]) -> C:
    """Rebuild a config dataclass from :func:`config_to_dict` output (lists back to tuples)."""
    tuple_fields = {f.name for f in fields(cls) if "tuple" in str(f.type)}  # type: ignore[arg-type]
    return cls(**{k: tuple(v) if k in tuple_fields and isinstance(v, list) else v
                  for k, v in d.items()})
