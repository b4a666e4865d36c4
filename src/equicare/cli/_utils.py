"""Shared plumbing of the command line: one error taxonomy, threads, warnings, deprecated names.

Every command runs inside :class:`EquicareGroup.invoke`, the one place that

- turns user mistakes (:class:`~equicare.exceptions.EquicareError`, a missing input file, an
  existing output) into one line ``error: ...`` on stderr and exit code 2;
- reports any other exception as a bug: one line naming the log file that holds the traceback
  (under ``$EQUICARE_LOG_DIR``, default ``~/.cache/equicare/logs``), exit code 1;
- turns Ctrl-C into exit code 130;
- prints Python warnings as one line ``warning: ...`` (no source path);
- chooses the torch, BLAS and OpenMP threads (``--threads``, added to every command);
- accepts the option spellings of the previous release (:data:`DEPRECATED_OPTIONS`) with a
  one-line deprecation warning.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer import _click as click
from typer.core import TyperGroup
from typer.exceptions import Abort as TyperAbort
from typer.exceptions import Exit as TyperExit

from equicare.cli._choices import UsualCare
from equicare.exceptions import (
    USER_ERRORS,
    DataValidationError,
    InvalidParameterError,
)

__all__ = ["console", "err_console", "fail", "info", "user_errors", "print_json", "json_safe",
           "check_out_path", "check_out_paths", "check_out_folder", "print_table",
           "literal_table", "not_applicable",
           "EquicareGroup",
           "thread_plan", "thread_limits", "Threads", "Force", "JsonOut", "Seed", "Progress",
           "DEPRECATED_OPTIONS", "OUT_EXISTS", "UsualCareOpt", "usual_care_line"]

console = Console()
err_console = Console(stderr=True)

#: The one message of an output that exists while ``--force`` was not given.
OUT_EXISTS = "{path} exists; refusing to overwrite it (pass --force to replace it)."

#: Option spellings of release 0.1 that still work for one release (hidden, with a warning):
#: ``{command: {old: new}}``.
DEPRECATED_OPTIONS: dict[str, dict[str, str]] = {
    "audit": {"--n-boot": "--bootstrap", "--estimator": "--estimators"},
    "frontier": {"--n-boot": "--bootstrap", "--n-steps": "--steps", "--learner": "--algo",
                 "--estimator": "--estimators"},
    "mediate": {"--target": "--policy"},
    "plan": {"--policies": "--policy"},
    "capacity": {"--policies": "--policy", "--target": "--target-share"},
    "run": {"--quiet": "--no-progress"},
    "sweep": {"--quiet": "--no-progress"},
}

#: Commands removed in this release, with the command that does their job.
REMOVED_COMMANDS = {
    "synth-heparin": "equicare synth --sim heparin --out FOLDER (writes panel.parquet and "
                     "manifest.toml; --n-patients is now --members)",
    "train-omg": "equicare train DATA --manifest MANIFEST --algo omg --out FOLDER",
}


def fail(message: str) -> NoReturn:
    """Print one error line on stderr and exit with code 2."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def info(message: str) -> None:
    """Print one status line on stderr (results go to stdout)."""
    err_console.print(escape(message), highlight=False, soft_wrap=True)


def _user_message(exc: BaseException) -> list[str]:
    if isinstance(exc, DataValidationError) and len(exc.problems) > 1:
        return [f"{len(exc.problems)} problems found:", *[f"  - {p}" for p in exc.problems]]
    if isinstance(exc, KeyError) and exc.args:
        return [str(exc.args[0])]
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return [f"{exc.filename}: {exc.strerror}."]
    return [str(exc)]


def _print_user_error(exc: BaseException) -> None:
    lines = _user_message(exc)
    err_console.print(f"[bold red]error:[/] {escape(lines[0])}", highlight=False, soft_wrap=True)
    for line in lines[1:]:
        err_console.print(escape(line), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn user mistakes into one line on stderr and exit code 2 (no traceback).

    User mistakes are :class:`~equicare.exceptions.EquicareError` (bad data, parameters,
    configs, unknown names), a missing input or existing output file and a file or folder that
    cannot be read or written (no permission). Anything else is left
    to :class:`EquicareGroup`, which reports it as a bug.
    """
    try:
        yield
    except USER_ERRORS as exc:
        _print_user_error(exc)
        raise typer.Exit(code=2) from None


def json_safe(obj: Any) -> Any:
    """``obj`` with every missing or non-finite number as ``None`` (JSON ``null``).

    ``NaN`` and ``Infinity`` are not JSON (RFC 8259): a strict parser (``jq``, JavaScript's
    ``JSON.parse``) refuses the whole document. Frames turned into records carry ``NaN`` for a
    missing cell, and pandas' ``NA`` / ``NaT`` are missing too.
    """
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) or type(obj).__name__.startswith("float"):
        try:
            f = float(obj)
        except (TypeError, ValueError):
            return obj
        return f if f == f and f not in (float("inf"), float("-inf")) else None
    if type(obj).__name__ in ("NAType", "NaTType"):
        return None
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars and arrays
        return json_safe(obj.tolist())
    return obj


def print_json(obj: Any) -> None:
    """Print machine-readable JSON on stdout (``NaN`` and infinities as ``null``)."""
    typer.echo(json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False))


#: A file output (result JSON, figure, report) pointed at a folder (tests match it).
MSG_OUT_IS_FOLDER = ("{option} {path} is a folder; expected a file name (e.g. {example}), even "
                     "with --force.")


def check_out_path(path: Path | None, force: bool, *, folder: bool = False,
                   option: str = "--out", file: bool = False) -> None:
    """Refuse to overwrite an existing output unless ``--force`` (exit code 2).

    Also refuses (even with ``--force``) a path under a file and, for an output folder
    (``folder=True``), a path that is a file: see :func:`check_out_folder`; for an output file
    (``file=True``), a path that is a folder (the write at the end of the run failed on it, an
    internal error after all the work, or replaced nothing).
    """
    if path is None:
        return
    check_out_folder(path, folder=folder, option=option)
    if file and path.is_dir():
        fail(MSG_OUT_IS_FOLDER.format(option=option, path=path, example=path / (
            "figure.png" if option == "--figure" else "result.json")))
    if path.exists() and not force:
        if path.is_dir() and not any(path.iterdir()):
            return
        fail(OUT_EXISTS.format(path=path))


def check_out_folder(path: Path, *, folder: bool = True, option: str = "--out") -> None:
    """Exit 2 with one line if ``path`` sits under a file or (``folder``) is a file."""
    from equicare.utils import check_out_location

    try:
        check_out_location(path, folder=folder, option=option)
    except InvalidParameterError as exc:
        fail(str(exc))


def check_out_paths(paths: list[Path | None], force: bool, *, file: bool = False,
                    options: list[str] | None = None) -> None:
    """:func:`check_out_path` for several outputs, before any work starts.

    ``options`` names each path's option in messages (default ``--out``); ``file`` says that
    every path is an output file.
    """
    for i, p in enumerate(paths):
        check_out_path(p, force, file=file, option=options[i] if options else "--out")


def literal_table(table: Any) -> Any:
    """Make a Rich table's title and caption literal text (returns the table).

    Cells and headers hold user text (group labels such as ``"Hispanic [any race]"``, column,
    level and policy names) that Rich would read as markup, dropping it or failing on a stray
    closing tag; :func:`print_table` prints them with markup off, and this turns the title and
    caption (rendered with the console's markup otherwise) into :class:`rich.text.Text`.
    """
    from rich.text import Text

    for attr in ("title", "caption"):
        v = getattr(table, attr, None)
        if isinstance(v, str):
            setattr(table, attr, Text(v))
    return table


def print_table(table: Any, *, file_console: Console | None = None) -> None:
    """Print a Rich table without truncating cells, every string in it as literal text.

    On a terminal the table gets the terminal's width (long cells fold); when the output is a
    file or a pipe it gets the width its content needs, so run ids and long values stay whole.
    No markup is read from the table's strings (:func:`literal_table`): a label ``"White
    [non-Hispanic]"`` prints as written; styles go through ``style=`` arguments only.
    """
    from rich.measure import Measurement

    con = file_console or console
    literal_table(table)
    if con.is_terminal:
        con.print(table, markup=False)
        return
    need = Measurement.get(con, con.options.update(width=10_000, markup=False), table).maximum
    wide = Console(width=max(con.width, need), stderr=con.stderr, highlight=False)
    wide.print(table, crop=False, markup=False)


#: Options that change no number of a result: where it goes, how it prints, the threads and
#: processes that compute it (same numbers, docs/scale.md). Every other option of the command
#: is a setting of its ``provenance`` block.
NOT_SETTINGS = frozenset({"out", "figure", "figures", "force", "json_out", "progress", "threads",
                          "executor", "address", "jobs"})


def provenance(inputs: dict[str, Any], *, seed: int | None | bool = True) -> dict[str, Any]:
    """The ``provenance`` block of the running command's result (:mod:`equicare._provenance`).

    The command (as typed), its settings (every resolved option but :data:`NOT_SETTINGS`) and
    its seed (``--seed``) come from the command line being run; ``inputs`` maps a role
    (``data``, ``manifest``, ``policy``...) to the path, paths or None read in that role. One
    helper for every command that writes a result; call it only when a file is written (it
    reads every input once to hash it). ``seed``: ``True`` takes ``--seed`` (None for a command
    without one); an int or None overrides it.
    """
    from typer._click.globals import get_current_context

    from equicare._provenance import provenance_block

    ctx = get_current_context()
    root = ctx.find_root().command
    argv = getattr(root, "_argv", None)
    if argv is None:  # pragma: no cover - run outside EquicareGroup.main
        argv = sys.argv[1:]
    params = dict(ctx.params)
    settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS}
    used = params.get("seed") if seed is True else seed
    return provenance_block(command=["equicare", *argv],
                            seed=None if isinstance(used, bool) else used,
                            settings=settings, inputs=inputs)


def write_result_json(out: Path, doc: dict[str, Any], prov: dict[str, Any] | None) -> None:
    """Write a result JSON atomically with its ``provenance`` block (last key).

    ``NaN`` and infinities are written ``null`` (:func:`json_safe`).
    """
    from equicare._provenance import PROVENANCE_KEY
    from equicare.utils import atomic_write_text

    payload = {**doc, PROVENANCE_KEY: prov} if prov is not None else doc
    atomic_write_text(out, json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n")


#: Suffix of the provenance sidecar of an output that cannot hold the block (a policy file).
SIDECAR_SUFFIX = ".provenance.json"


def sidecar_path(out: Path) -> Path:
    """Where :func:`write_sidecar` puts the provenance of ``out``: ``<out>.provenance.json``."""
    return out.with_name(out.name + SIDECAR_SUFFIX)


def write_sidecar(path: Path, outputs: dict[str, Path], prov: dict[str, Any]) -> None:
    """Write the ``provenance`` of outputs whose format has no place for it (docs/contracts.md).

    A policy file or a simulated panel is an input that later commands fingerprint, so its
    bytes stay the same for the same settings; this JSON beside it holds the block and the
    SHA-256 of each output it describes: ``{"outputs": [{"role", "path", "sha256", "bytes"}],
    "provenance": {...}}``.
    """
    from equicare._provenance import file_fingerprint

    doc = {"outputs": [{"role": role, **file_fingerprint(p)} for role, p in outputs.items()]}
    write_result_json(path, doc, prov)


def not_applicable(given: dict[str, bool], what: str) -> None:
    """Exit 2 naming the first option that was given but does not apply to ``what``."""
    bad = [name for name, was_given in given.items() if was_given]
    if bad:
        fail(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to {what}.")


# ------------------------------------------------------------------------------------- threads
def free_cores() -> int:
    """Cores this process may use that other work is not already using (at least 1)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        allowed = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover
        busy = 0.0
    return max(1, min(allowed, int(allowed - busy + 0.5)))


def thread_plan(threads: str) -> dict[str, int]:
    """Threads of each library for ``--threads`` (``auto`` or a positive int).

    ``auto``: torch 1 (equicare's networks are small MLPs/LSTMs, and more threads only add
    synchronisation; measured: ``train --algo awr --steps 3000`` 37 s on 1 thread, not finished
    after 600 s with the default threads on a loaded 2-core machine), OpenMP 1 (LightGBM
    behaviour models) and BLAS on the free cores, at most 4 (:func:`free_cores`: cores of the
    affinity mask minus the 1-minute load average). ``N``: N threads for each, capped at the
    free cores: threads beyond them share a core with other work and wait for each other
    (measured on a 2-core host with a load of 2.3: ``train --algo omg --small --iterations 3
    --policy-updates 100 --dynamics-epochs 5`` took 7.2 s with ``--threads 1`` and 40.5 s with
    torch on 2 threads).

    Returns
    -------
    dict
        ``{"torch": int, "openmp": int, "blas": int}``.
    """
    t = str(threads).strip().lower()
    if t == "auto":
        return {"torch": 1, "openmp": 1, "blas": min(4, free_cores())}
    try:
        n = int(t)
    except ValueError:
        n = 0
    if n < 1:
        from equicare.exceptions import InvalidParameterError

        raise InvalidParameterError(
            f"--threads must be 'auto' or an integer >= 1; got {threads!r}.")
    n = min(n, free_cores())
    return {"torch": n, "openmp": n, "blas": n}


_THREAD_ENV = {"OMP_NUM_THREADS": "openmp", "MKL_NUM_THREADS": "torch",
               "OPENBLAS_NUM_THREADS": "blas"}


@contextlib.contextmanager
def thread_limits(threads: str) -> Iterator[dict[str, int]]:
    """Apply :func:`thread_plan` for the duration of one command, then restore everything.

    Sets the environment (read by libraries loaded later, e.g. torch's OpenMP pool and worker
    processes), ``threadpoolctl`` limits on the libraries already loaded, and
    ``torch.set_num_threads`` when torch is (or gets) imported.
    """
    plan = thread_plan(threads)
    old_env = {k: os.environ.get(k) for k in _THREAD_ENV}
    for k, lib in _THREAD_ENV.items():
        os.environ[k] = str(plan[lib])
    torch_mod = sys.modules.get("torch")
    old_torch = torch_mod.get_num_threads() if torch_mod is not None else None
    if torch_mod is not None:
        torch_mod.set_num_threads(plan["torch"])
    limiter: Any = contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits={"blas": plan["blas"], "openmp": plan["openmp"]})
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    try:
        with limiter:
            yield plan
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch_mod = sys.modules.get("torch")
        if torch_mod is not None:
            torch_mod.set_num_threads(old_torch if old_torch is not None
                                      else max(1, os.cpu_count() or 1))


#: The help of every command's panel argument (``data``): one wording, folders included.
PANEL_HELP = ("Panel: a .parquet file, a folder of Parquet files (hive partitions too), a .csv "
              "file or a DuckDB file.")

THREADS_HELP = ("Threads of torch, BLAS and OpenMP. auto: 1 for torch (small networks) and "
                "OpenMP, BLAS on the free cores (at most 4); N: N each, capped at the free "
                "cores (usable cores minus the load average).")

#: Options shared by every command, so that each concept has one spelling and one default.
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed.")]
Progress = Annotated[bool, typer.Option(
    "--progress/--no-progress",
    help="Progress bars on a terminal, one line per stage otherwise.")]

#: The ``--threads`` option every command declares (:class:`EquicareGroup` applies it).
Threads = Annotated[str, typer.Option("--threads", metavar="auto|N", help=THREADS_HELP)]
#: ``--usual-care`` of ``evaluate`` and ``audit`` (the policy's rows left to current practice).
UsualCareOpt = Annotated[UsualCare, typer.Option(
    "--usual-care",
    help="Rows the policy leaves to current practice (exception rules' 'otherwise, as current "
         "practice'): deployed (the clinicians decide there: the logged action, importance "
         "ratio 1, no propensity needed) or stored (the estimate of practice saved with the "
         "rules, which predict outputs). Example: --usual-care stored")]


ChunkRows = Annotated[int | None, typer.Option(
    "--chunk-rows", min=1,
    help="Stream the panel in chunks of whole episodes of about this many rows (panels larger "
         "than memory; Parquet files or folders, CSV, DuckDB). Offered by validate, evaluate, "
         "audit, train (bc, awr, cql) and predict; mediate, explain, run, sweep, frontier and "
         "online have no streamed mode. What differs from in memory: docs/scale.md.")]
StreamExecutor = Annotated[str | None, typer.Option(
    "--executor", metavar="local|ray",
    help="With --chunk-rows: run one task per shard on local processes or a Ray cluster (the "
         "panel must be a clustered Parquet file or folder every worker can read).")]
Address = Annotated[str, typer.Option(
    "--address", help="Ray address: auto (a running cluster), local (start one here) or "
                      "HOST:PORT.")]
Jobs = Annotated[int, typer.Option("--jobs", min=1, help="Worker processes or Ray CPUs.")]


def stream_executor(chunk_rows: int | None, executor: str | None, address: str,
                    jobs: int) -> Any:
    """The executor of a streamed command (None: stream in this process)."""
    if executor is None:
        return None
    if chunk_rows is None:
        fail("--executor needs --chunk-rows (sharded runs stream each shard in chunks).")
    if executor not in ("local", "ray"):
        fail(f"--executor must be 'local' or 'ray'; got {executor!r}.")
    from equicare.pipeline import get_executor

    return get_executor(executor, jobs=jobs, address=address)


#: Options naming what a command writes (checked against its inputs by every command).
OUTPUT_OPTIONS = ("out", "figure")
#: An output that is one of the command's inputs (tests match it).
MSG_OUT_IS_INPUT = ("--{option} {out} is the input {input}; refusing to overwrite an input, even "
                    "with --force: choose another path.")


def _input_files(value: Any) -> list[Path]:
    """Existing files named by an option value (a path, a ``NAME=PATH`` spec or a list)."""
    if isinstance(value, list | tuple):
        return [f for v in value for f in _input_files(v)]
    if not isinstance(value, str | Path):
        return []
    text = str(value)
    found = []
    for cand in (text, text.partition("=")[2]):
        if cand and os.path.isfile(cand):
            found.append(Path(cand))
    return found


def refuse_inputs_as_outputs(kwargs: dict[str, Any]) -> None:
    """Exit 2 if ``--out`` or ``--figure`` is one of the command's input files.

    ``--force`` replaces an earlier *output*; pointed at the panel, the manifest or a policy
    file the command reads, it destroyed the user's data (``evaluate --out panel.parquet
    --force`` wrote the result JSON over the panel).
    """
    inputs = [f for k, v in kwargs.items() if k not in OUTPUT_OPTIONS for f in _input_files(v)]
    for option in OUTPUT_OPTIONS:
        out = kwargs.get(option)
        if not isinstance(out, str | Path) or not os.path.exists(out):
            continue
        for f in inputs:
            if os.path.samefile(out, f):
                fail(MSG_OUT_IS_INPUT.format(option=option, out=out, input=f))


def _with_threads(cmd: Any) -> None:
    if getattr(cmd, "callback", None) is None or getattr(cmd, "_equicare_threads", False):
        return
    inner = cmd.callback

    @functools.wraps(inner)
    def callback(*args: Any, **kwargs: Any) -> Any:
        refuse_inputs_as_outputs(kwargs)
        with thread_limits(str(kwargs.get("threads", "auto"))):
            return inner(*args, **kwargs)

    cmd.callback = callback
    cmd._equicare_threads = True


# ------------------------------------------------------------------------------------ warnings
def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    text = " ".join(str(message).split())
    err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------- bug report
def log_dir() -> Path:
    """Folder of bug logs: ``$EQUICARE_LOG_DIR``, else ``~/.cache/equicare/logs``."""
    env = os.environ.get("EQUICARE_LOG_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "equicare" / "logs"


def _report_bug(exc: BaseException, argv: list[str]) -> Path | None:
    from equicare import __version__

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (f"equicare {__version__}, Python {sys.version.split()[0]}\n"
            f"command: equicare {' '.join(argv)}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for folder in (log_dir(), Path(tempfile.gettempdir()) / "equicare-logs"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".log", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            return Path(name)
        except OSError:
            continue
    return None  # pragma: no cover


# ---------------------------------------------------------------------------------- the group
def _rewrite_deprecated(command: str, args: list[str]) -> list[str]:
    table = DEPRECATED_OPTIONS.get(command)
    if not table:
        return args
    out: list[str] = []
    for a in args:
        if a == "--":
            out.extend(args[len(out):])
            break
        name, eq, value = a.partition("=")
        new = table.get(name)
        if new is not None:
            err_console.print(f"[yellow]warning:[/] {name} is deprecated and will be removed in "
                              f"the next release; use {new}.", highlight=False, soft_wrap=True)
            a = new + eq + value
        out.append(a)
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a command runs (``kill PID``, a scheduler's time limit).

    Raised like Ctrl-C so that the same clean-up runs: temporary files of atomic writes are
    removed (Python's default SIGTERM ends the process at once and left them behind, e.g. a
    hidden ``.probs.parquet.tmp`` of row-level predictions) and the exit code is 130.
    """


def _sigterm_as_ctrl_c(final: bool = False) -> contextlib.AbstractContextManager[None]:
    """SIGTERM raises :class:`Terminated` while a command runs, until its result is recorded.

    ``final``: the process exits after the command (the ``equicare`` script), so SIGTERM stays
    ignored after it: a finished command keeps its exit code whatever arrives during
    interpreter exit (:func:`equicare._signals.sigterm_raises`).
    """
    from equicare._signals import sigterm_raises

    return sigterm_raises(Terminated, final=final)


class EquicareGroup(TyperGroup):
    """The root command group: error taxonomy, threads, warnings and deprecated spellings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_threads(self)

    @classmethod
    def _add_threads(cls, group: Any) -> None:
        for cmd in group.commands.values():
            if isinstance(cmd, TyperGroup):
                cls._add_threads(cmd)
            else:
                _with_threads(cmd)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """Find the command; rewrite its deprecated option spellings (with a warning)."""
        if args and args[0] in REMOVED_COMMANDS:
            fail(f"'equicare {args[0]}' was removed; use {REMOVED_COMMANDS[args[0]]}.")
        name, cmd, rest = super().resolve_command(ctx, args)
        return name, cmd, _rewrite_deprecated(name or "", rest)

    def invoke(self, ctx: Any) -> Any:
        """Run the command with the error taxonomy and one-line warnings."""
        from equicare._signals import mark_committed

        try:
            with warnings.catch_warnings(), _sigterm_as_ctrl_c(
                    getattr(self, "_own_process", False)):
                warnings.showwarning = _show_warning
                rv = super().invoke(ctx)
                mark_committed()  # done: a SIGTERM from now on changes nothing
                return rv
        except (TyperExit, TyperAbort, click.ClickException):
            raise
        except USER_ERRORS as exc:
            _print_user_error(exc)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
            err_console.print(f"[bold red]error:[/] interrupted ({how}).", highlight=False)
            raise typer.Exit(code=130) from None
        except Exception as exc:  # a bug: say so, keep the traceback, exit 1
            path = _report_bug(exc, getattr(self, "_argv", sys.argv[1:]))
            where = f"the traceback is in {path}" if path else "no log file could be written"
            err_console.print(
                f"[bold red]error:[/] internal error (a bug in equicare, not in your input): "
                f"{escape(type(exc).__name__)}: {escape(' '.join(str(exc).split()))}; {where}. "
                "Please report it with that file.", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None

    def main(self, args: Any = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """Parse and run; usage errors become one line ``error: ...`` and exit code 2.

        ``own_process=True`` (the ``equicare`` script, :func:`equicare.cli.main`): the process
        exits after the command, so SIGTERM stays ignored once the command is done.
        """
        self._own_process = bool(extra.pop("own_process", False))
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{hint}",
                              highlight=False, soft_wrap=True)
            code = 2
        except click.ClickException as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}",
                              highlight=False, soft_wrap=True)
            code = exc.exit_code
        except TyperAbort:
            err_console.print("[bold red]error:[/] interrupted (Ctrl-C).", highlight=False)
            code = 130
        if standalone_mode:
            sys.exit(code)
        return code


def version_callback(value: bool) -> None:
    """``equicare --version``."""
    if value:
        from equicare import __version__

        typer.echo(f"equicare {__version__}")
        raise typer.Exit()



#: The warning of evaluate and audit when a policy was trained on the panel they read (tests
#: match it).
IN_SAMPLE_POLICY = (
    "{name}: the model {model} was trained on this panel ({data}: same SHA-256), so its values "
    "here are in-sample and optimistic: the learner fitted the chance outcomes of the very "
    "members every estimator now reads again. Evaluate it on members it was not trained on "
    "(hold some out before training, or the next campaign; docs/ope.md, 'One-step campaigns').")


def in_sample_warnings(policies: dict[str, Any], data: Any) -> list[str]:
    """One :data:`IN_SAMPLE_POLICY` warning per policy trained on ``data`` itself.

    ``policies`` maps a display name to a model folder or a policy file
    (:func:`equicare._provenance.trained_on`).
    """
    from equicare._provenance import trained_on

    out = []
    for name, path in policies.items():
        model = trained_on(path, data)
        if model is not None:
            out.append(IN_SAMPLE_POLICY.format(name=name, model=model, data=data))
    return out


def usual_care_line(settings: dict[str, Any], unit: str = "rows") -> str | None:
    """The line saying how rows a policy leaves to current practice were valued (or None).

    ``settings["deferred_share"]``: one share (``evaluate``) or one per policy (``audit``);
    ``unit``: what the share counts (``mediate``'s counts transitions, rows with a next row).
    """
    share = settings.get("deferred_share")
    if settings.get("usual_care") is None or share is None or share == {}:
        return None
    who = ("the policy leaves " + (f"{100 * share:.1f}%" if not isinstance(share, dict) else
                                   ", ".join(f"{100 * v:.1f}% ({k})" for k, v in share.items())))
    if settings["usual_care"] == "deployed":
        how = ("valued as deployed: the clinicians decide there (logged action, importance "
               "ratio 1); --usual-care stored values the estimate of practice saved with the "
               "policy, which predict outputs")
    else:
        how = ("valued with the estimate of practice saved with the policy (--usual-care "
               "stored); deployed, the clinicians decide there (the default)")
    return f"Usual care: {who} of {unit} to current practice, {how}"
