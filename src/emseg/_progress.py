"""Progress bars (rich) that stay quiet when not on a terminal or under --quiet."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

__all__ = ["progress_bar", "set_quiet"]

_QUIET = False


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


@contextlib.contextmanager
def progress_bar(description: str, *, total: float | None, unit: str = "", enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n=1, **fields)``; a rich bar on a terminal, a no-op otherwise."""
    if not enabled or _QUIET or not sys.stderr.isatty():
        yield lambda *args, **kwargs: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: float = 1, *, status: str | None = None, completed: float | None = None) -> None:
            kwargs = {"status": status} if status is not None else {}
            if completed is not None:
                bar.update(task, completed=completed, **kwargs)
            else:
                bar.update(task, advance=n, **kwargs)

        yield advance
