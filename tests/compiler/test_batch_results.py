"""segc batch's results files and progress lines, from CellResult records (no compiles)."""

from __future__ import annotations

import json
from pathlib import Path

from segc.batch_progress import Progress
from segc.batch_results import CellResult, VerdictSummary, write_results


def cell(model: str, target: str, outcome: str, seconds: float, *, cached: bool = False, failure: str | None = None,
         option_set: str | None = None) -> CellResult:
    rel = "/".join(p for p in (model, target, option_set) if p)
    return CellResult(
        model,
        target,
        option_set,
        ["--verify", "none"],
        "cached" if cached else outcome,
        outcome,
        0 if outcome == "passed" else 2,
        seconds,
        VerdictSummary("ok" if outcome == "passed" else None, 3, None, failure, 0),
        f"{rel}/report.md" if outcome == "passed" else None,
        f".segc-batch/logs/{rel}.log",
        cached,
        "k" * 64,
    )


RESULTS = [cell("a", "onnxruntime", "passed", 1.5), cell("a", "ascend", "passed", 12.0, cached=True),
           cell("b<x>", "onnxruntime", "error", 0.2, failure="segc: error: bad shape [1,3,640~4096] <b>"),
           cell("a", "onnxruntime", "passed", 2.0, option_set="fp16")]


def test_results_json_md_html(tmp_path: Path) -> None:
    write_results(tmp_path, RESULTS, executor="local", segc_version="9.9")
    data = json.loads((tmp_path / "results.json").read_text())
    assert (data["cells"], data["failed"], data["cached"], data["executor"]) == (4, 1, 1, "local")
    assert [r["status"] for r in data["results"]] == ["passed", "cached", "error", "passed"]
    assert data["results"][1]["outcome"] == "passed" and data["results"][1]["cached"] is True
    assert CellResult.from_dict(data["results"][2]) == RESULTS[2]
    md = (tmp_path / "results.md").read_text().splitlines()
    assert "| model | onnxruntime | ascend |" in md
    assert "| a | [passed 1.5s](a/onnxruntime/report.md) | [passed 12.0s (cached)](a/ascend/report.md) |" in md
    assert "| a/fp16 | [passed 2.0s](a/onnxruntime/fp16/report.md) | - |" in md
    page = (tmp_path / "results.html").read_text()
    assert "<td class='passed cached'" in page and "<td class='error'" in page
    assert "b&lt;x&gt;" in page and "<b>" not in page.replace("<body>", "")  # names and errors are escaped
    assert "data-v='12.000'" in page and "function sortBy(col)" in page


def test_progress_lines_are_not_rich_markup(capsys) -> None:
    progress = Progress(1)
    with progress:
        progress.done(
            RESULTS[2].__class__(
                **{**RESULTS[2].__dict__, "verdict": VerdictSummary(None, 0, None, "bad [/x] [1,3]", 0)}
            )
        )
    err = capsys.readouterr().err
    assert "[1/1]" in err and "bad [/x] [1,3]" in err
