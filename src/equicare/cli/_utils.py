"""Shared plumbing of the command-line interface: consoles, one-line errors, exit code 2."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from equicare.exceptions import DataValidationError

__all__ = ["console", "err_console", "fail", "user_errors", "print_json", "check_out_path"]

console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    """Print one error line on stderr and exit with code 2."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn user mistakes (bad data, bad arguments, existing outputs) into exit code 2.

    No traceback is printed.
    """
    try:
        yield
    except DataValidationError as exc:
        if len(exc.problems) > 1:
            err_console.print(
                f"[bold red]error:[/] {len(exc.problems)} problems found:", highlight=False
            )
            for p in exc.problems:
                err_console.print(f"  - {escape(p)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        fail(str(exc))
    except (ValueError, KeyError, FileExistsError, FileNotFoundError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(msg))


def print_json(obj: Any) -> None:
    """Print machine-readable JSON on stdout."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def check_out_path(path: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless ``--force``."""
    if path.exists() and not force:
        fail(f"{path} exists; refusing to overwrite it (pass --force to replace it).")
