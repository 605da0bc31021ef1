"""What every ``emseg`` command shares: the typer app, the consoles, logging set-up and the error exit.

Imported by ``_main`` (the core commands) and by each ``_cmd_*`` module; it imports none of them, so the
command modules never import ``_main`` (no cycle inside the CLI).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from emseg._progress import set_quiet

__all__ = ["CLASSES_FROM_MODEL", "CLASS_NAMES", "QUIET", "QUIET_LOGS", "TABLE_OUT", "app", "console", "err_console"]

app = typer.Typer(
    name="emseg",
    help="Deep-learning semantic segmentation of electron microscopy volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# User text (paths, class names, arguments) is printed as typed: no ":smile:" emoji codes, and on stdout no
# "[...]" markup either; err_console keeps markup for its "error:" prefix and escapes the message (_fail).
console = Console(emoji=False, markup=False)
err_console = Console(stderr=True, emoji=False)

# Options several commands share, declared once (``quiet: QUIET = False``).
QUIET = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")]
_QUIET = QUIET
#: ``--quiet`` of a command without progress bars.
QUIET_LOGS = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]
#: ``--out``/``-o`` of a command writing a table.
TABLE_OUT = Annotated[list[Path], typer.Option("--out", "-o", help="Table to write: .parquet or .csv (repeat for both).")]
#: ``--classes`` / ``--model``: where class names come from.
CLASS_NAMES = Annotated[Optional[str], typer.Option(help="Comma-separated class names (label i = name i).")]
CLASSES_FROM_MODEL = Annotated[Optional[Path], typer.Option(help="Take class names from this model instead.")]


def _setup(quiet: bool) -> None:
    set_quiet(quiet)
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )


def _fraction(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number in [0, 1) or 'auto', got {text!r}") from None


def _fail(err: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {_escape(str(err))}")
    raise typer.Exit(code=2)


def _escape(text: str) -> str:
    return escape(text)


def _user_errors() -> tuple[type[BaseException], ...]:
    return (ValueError, FileNotFoundError, FileExistsError, RuntimeError, OSError)
