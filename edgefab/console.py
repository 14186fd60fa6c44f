"""Terminal output for the CLI: progress on stderr, summary tables or JSON on stdout, one-line errors."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgefab.errors import EdgefabError

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="Target name or path to a target .toml.")]

stdout = Console()
stderr = Console(stderr=True)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    """Print a one-line error and exit with the user-error code."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USER_ERROR)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn EdgefabError into a one-line message and exit code 2; Ctrl-C into exit code 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EdgefabError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            stderr.print("[bold red]interrupted:[/] nothing was written")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


class RichProgress:
    """The pipeline's :class:`~edgefab.pipeline.common.Progress` drawn with rich on stderr.

    Where stderr is not a terminal (a log file, a pipe, CI), rich draws only the last frame when the
    command ends, so a long run would log nothing while it works; there a plain line is written per
    stage and per tenth of a stage instead, with the seconds since the start."""

    def __init__(self, enabled: bool = True):
        self._plain = enabled and not stderr.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=stderr,
            disable=not enabled or self._plain,
            transient=False,
        )
        self._task: Any = None
        self._start = time.perf_counter()
        self._tenth = -1

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish_task()
        self._progress.stop()

    def _finish_task(self) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            total = task.total or 1
            self._progress.update(self._task, total=total, completed=total)

    def _line(self, text: str) -> None:
        seconds = time.perf_counter() - self._start
        stderr.print(f"[{seconds:6.0f} s] {text}", highlight=False, markup=False, soft_wrap=True)

    def stage(self, description: str) -> None:
        self._finish_task()
        self._task = self._progress.add_task(description, total=None)
        self._tenth = -1
        if self._plain:
            self._line(description)

    def advance(self, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total)
        tenth = 10 * done // max(1, total)
        if self._plain and tenth != self._tenth:
            self._tenth = tenth
            self._line(f"  {done}/{total}")


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    """Print ``data`` as JSON (``--json``) or ``table`` for a person."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    elif table is not None:
        stdout.print(table)


def key_value_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    """A two-column summary table."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, "-" if value is None else str(value))
    return table
