"""Whose fault a failure is, and the exit status that says so (docs/design.md, "Exit codes").

===  ===========================================================================================
0    done
1    the model did not survive: a pass failed verification or refused the graph; the output
     folder and its report are still written and name the pass
2    bad usage or bad input, found before any work: one line ``segc: error: ...``, no traceback
70   a bug in segc (``EX_SOFTWARE`` of BSD's sysexits.h, "an internal software error"): one line
     ``segc: internal error: ...``; the traceback is in report.json (``internal_error``) when a
     pass crashed inside a compile, else printed with ``--debug``
130  interrupted (Ctrl-C)
===  ===========================================================================================

A user who sees 2 fixes the command line; one who sees 70 files a bug with the report. The two
used to share exit 2, so a crash read as "you typed it wrong".
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass
from pathlib import Path


class ExitStatus(enum.IntEnum):
    """segc's exit statuses (see the module docstring)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERNAL = 70
    INTERRUPTED = 130


class SegcError(Exception):
    """Bad usage or bad input: the CLI prints one line and exits 2.

    Raised by a pass while the pipeline runs, it means the pass refuses this graph (a range
    the graph does not follow, an opset the converter cannot reach): the pipeline records that
    pass as refused, the report is written and the exit is 1.
    """

    exit_code = ExitStatus.USAGE


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (onnxruntime's run to dozens)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class CrashRecord:
    """A bug caught where it happened: what report.json's ``internal_error`` holds."""

    exc_type: str
    message: str  # the first line only: the whole message is in the traceback
    traceback: str
    where: str  # e.g. "pass cleanup"

    @classmethod
    def of(cls, exc: BaseException, where: str) -> CrashRecord:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, first_line(exc), text, where)

    def to_dict(self) -> dict[str, str]:
        return {"type": self.exc_type, "message": self.message, "where": self.where, "traceback": self.traceback}


class InternalError(Exception):
    """A bug that was already recorded (``report`` holds its traceback): the CLI prints one
    line pointing there and exits 70, instead of turning it into a usage error."""

    exit_code = ExitStatus.INTERNAL

    def __init__(self, crash: CrashRecord, report: Path | None) -> None:
        super().__init__(f"{crash.exc_type}: {crash.message}")
        self.crash = crash
        self.report = report
