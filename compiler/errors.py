"""Exceptions that map onto segc's exit statuses.

DESIGN.md: exit 0 done, 1 verification (or a pass) failed with artefacts still written,
2 bad usage or bad input, reported as one line ``segc: error: ...`` and never a traceback.
"""

from __future__ import annotations


class SegcError(Exception):
    """Bad usage or bad input: the CLI prints one line and exits 2."""

    exit_code = 2


class PipelineFailure(Exception):
    """A pass broke the model (verification failed, or the pass raised): exit 1.

    ``failed_pass`` names the culprit and ``ran_before`` the passes that ran before it, so
    the message alone tells a user where to look (torch.fx PassManager does the same).
    """

    exit_code = 1

    def __init__(self, message: str, failed_pass: str | None = None, ran_before: list[str] | None = None):
        super().__init__(message)
        self.failed_pass = failed_pass
        self.ran_before = list(ran_before or [])


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, else its type name.

    onnx's checker, onnxruntime and onnx-simplifier raise messages of many lines (a C++
    backtrace, a whole node dump); segc's one-line errors and report reasons quote the first.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
