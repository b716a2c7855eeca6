"""The progress display of ``segc batch``: a bar over cells, and one line per finished cell.

On a terminal, rich draws the bar live; elsewhere (CI logs, a test) only the lines are
printed, so a log reads ``[3/20] passed  dbnet_r50/ascend  41.2s``.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as _RichProgress

from segc.batch_results import CellResult

_COLOURS = {"passed": "green", "cached": "cyan"}


class Progress:
    def __init__(self, total: int) -> None:
        self.console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
        self.total = total
        self.finished = 0
        self.bar = _RichProgress(TextColumn("segc batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=self.console, transient=True, disable=not self.console.is_terminal)
        self.task = self.bar.add_task("cells", total=total)

    def __enter__(self) -> "Progress":
        self.bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.bar.__exit__(kind, exc, tb)

    def note(self, line: str) -> None:
        self.console.print(escape(line))

    def done(self, r: CellResult) -> None:
        self.finished += 1
        self.bar.advance(self.task)
        colour = _COLOURS.get(r.status, "red" if not r.ok else "green")
        tail = "" if r.ok else f"  {r.verdict.line()}"  # error lines hold ATC shapes such as [1,3,640]: not markup
        self.console.print(
            f"\\[{self.finished}/{self.total}] [{colour}]{r.status:<7}[/] {escape(r.label)}  "
            f"{r.seconds:.1f}s{escape(tail)}"
        )
