"""``segc batch``'s results: results.json for machines, results.md and results.html for people.

One record per cell (:class:`CellResult`). ``status`` is what happened in this run
(``passed``, ``failed``, ``error``, ``timeout``, ``crashed``, ``not run`` when the batch was
stopped first, or ``cached``: not recompiled);
``outcome`` is the compile's result whether it ran now or was cached, so a cached failure
still fails the batch (exit 1) and still shows red in the matrix.

    results.md / results.html        onnxruntime        ascend
    a                                passed 0.4s        passed 0.6s (cached)
    broken                           error 0.1s         error 0.1s
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segc.outdir import write_text

NOT_RUN = "not run"  # the batch was stopped (Ctrl-C, SIGTERM) before this cell finished
OUTCOMES = ("passed", "failed", "error", "timeout", "crashed", NOT_RUN)


@dataclass(frozen=True)
class VerdictSummary:
    """The few facts of a cell's report.json a matrix needs (the report has the rest)."""

    report_status: str | None  # report.json's status: ok | failed | illegal; None without a report
    passes: int  # passes that ran
    failed_pass: str | None
    failure: str | None  # the report's failure, else the compile's last error line
    unverified: int  # passes whose check had no signal

    def line(self) -> str:
        if self.failure:
            return self.failure
        extra = f", {self.unverified} unverified" if self.unverified else ""
        return f"{self.report_status or '-'}: {self.passes} passes{extra}"

    @classmethod
    def from_report(cls, report_json: Path, fallback_failure: str | None) -> "VerdictSummary":
        try:
            report = json.loads(report_json.read_text())
        except (OSError, ValueError):
            return cls(None, 0, None, fallback_failure, 0)
        failure = report.get("failure")
        if report.get("status") == "illegal":
            failure = "; ".join(report.get("violations") or []) or fallback_failure
        return cls(report.get("status"), len(report.get("passes") or []), report.get("failed_pass"),
                   failure or fallback_failure,
                   len(report.get("unverified") or []))


@dataclass(frozen=True)
class CellResult:
    model: str
    target: str
    option_set: str | None
    options: list[str]  # the cell's resolved segc compile flags
    status: str  # this run: an OUTCOME, or "cached"
    outcome: str  # the compile's result (for a cached cell, the cached one)
    exit_code: int | None  # None: killed (timeout or signal)
    seconds: float  # the compile's wall time (for a cached cell, when it was compiled)
    verdict: VerdictSummary
    report: str | None  # report.md, relative to the batch folder
    log: str  # the compile's stdout and stderr, relative to the batch folder
    cached: bool
    key: str  # the cache key: input sha256 + segc version + resolved options
    input_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "/".join(p for p in (self.model, self.target, self.option_set) if p)

    @property
    def ok(self) -> bool:
        return self.outcome == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CellResult":
        return cls(**{**data, "verdict": VerdictSummary(**data["verdict"])})


def write_results(outdir: Path, results: list[CellResult], *, executor: str, segc_version: str) -> list[Path]:
    """results.json, results.md and results.html in ``outdir``; returns their paths."""
    data = {"segc_version": segc_version, "executor": executor, "cells": len(results),
            "failed": sum(not r.ok for r in results), "cached": sum(r.cached for r in results),
            "results": [r.to_dict() for r in results]}
    paths = [outdir / "results.json", outdir / "results.md", outdir / "results.html"]
    write_text(paths[0], json.dumps(data, indent=2) + "\n")
    write_text(paths[1], render_markdown(results))
    write_text(paths[2], render_html(results))
    return paths


def _matrix(results: list[CellResult]) -> tuple[list[str], list[str], dict[tuple[str, str], CellResult]]:
    targets: list[str] = []
    rows: list[str] = []
    cells: dict[tuple[str, str], CellResult] = {}
    for r in results:
        row = "/".join(p for p in (r.model, r.option_set) if p)
        if r.target not in targets:
            targets.append(r.target)
        if row not in rows:
            rows.append(row)
        cells[(row, r.target)] = r
    return rows, targets, cells


def _text(r: CellResult) -> str:
    return f"{r.outcome} {r.seconds:.1f}s" + (" (cached)" if r.cached else "")


def render_markdown(results: list[CellResult]) -> str:
    rows, targets, cells = _matrix(results)
    failed = sum(not r.ok for r in results)
    lines = [
        "# segc batch results",
        "",
        f"{len(results)} cells: {len(results) - failed} passed, {failed} failed, {sum(r.cached for r in results)} "
        "cached.",
        "",
        "| model | " + " | ".join(targets) + " |",
        "|---|" + "---|" * len(targets),
    ]
    for row in rows:
        out = []
        for t in targets:
            r = cells.get((row, t))
            out.append("-" if r is None else (f"[{_text(r)}]({r.report})" if r.report else _text(r)))
        lines.append(f"| {row} | " + " | ".join(out) + " |")
    failures = [r for r in results if not r.ok]
    if failures:
        lines += ["", "## Failures", ""] + [f"- {r.label}: {r.verdict.line()} (log `{r.log}`)" for r in failures]
    return "\n".join(lines) + "\n"


_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}
td,th{border:1px solid #999;padding:.3em .6em;text-align:left}th{background:#eee}
th.sort{cursor:pointer;text-decoration:underline}.passed{background:#c8f0c8}.failed,.error,.timeout,.crashed{background:#f6c0c0}.not-run{background:#eee}
.cached{font-style:italic}"""

# Sorts the cell list by its time column; the matrix above stays as it is.
_SCRIPT = """function sortBy(col){var t=document.getElementById('cells'),b=t.tBodies[0],
rows=Array.prototype.slice.call(b.rows),asc=t.dataset.asc!=='1';t.dataset.asc=asc?'1':'0';
rows.sort(function(x,y){var a=parseFloat(x.cells[col].dataset.v),c=parseFloat(y.cells[col].dataset.v);
return asc?a-c:c-a;});
rows.forEach(function(r){b.appendChild(r);});}"""


def _css(r: CellResult) -> str:
    return r.outcome.replace(" ", "-")


def render_html(results: list[CellResult]) -> str:
    """A static page: the matrix in pass/fail colours, and every cell in a list sortable by time."""
    rows, targets, cells = _matrix(results)
    e = html.escape
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>segc batch results</title>",
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>",
        "<h1>segc batch results</h1>",
        "<table id='matrix'><thead><tr><th>model</th>"
        + "".join(f"<th>{e(t)}</th>" for t in targets)
        + "</tr></thead><tbody>",
    ]
    for row in rows:
        tds = []
        for t in targets:
            r = cells.get((row, t))
            if r is None:
                tds.append("<td>-</td>")
                continue
            body = e(_text(r))
            if r.report:
                body = f"<a href='{e(r.report)}'>{body}</a>"
            tds.append(
                f"<td class='{_css(r)}{' cached' if r.cached else ''}' title='{e(r.verdict.line())}'>{body}</td>"
            )
        out.append(f"<tr><th>{e(row)}</th>{''.join(tds)}</tr>")
    out += [
        "</tbody></table>",
        "<h2>Cells</h2>",
        "<table id='cells'><thead><tr><th>cell</th><th>status</th><th class='sort' onclick='sortBy(2)'>time (s)</th>"
        "<th>exit</th><th>verdict</th><th>report</th></tr></thead><tbody>",
    ]
    for r in results:
        link = f"<a href='{e(r.report)}'>report.md</a>" if r.report else f"<a href='{e(r.log)}'>log</a>"
        out.append(
            f"<tr class='{_css(r)}'><td>{e(r.label)}</td><td>{e(r.status)}</td>"
            f"<td data-v='{r.seconds:.3f}'>{r.seconds:.2f}</td><td>{'-' if r.exit_code is None else r.exit_code}</td>"
            f"<td>{e(r.verdict.line())}</td><td>{link}</td></tr>"
        )
    out.append("</tbody></table></body></html>")
    return "\n".join(out) + "\n"
