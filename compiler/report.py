"""report.json and report.md: every figure of a compile, in one place.

The JSON is for machines (CI dashboards, the benchmark); the Markdown is the same facts for a
person reviewing a build. Both say, per pass, its time, stats, contract, metrics and verdict,
plus hashes of the input and output, the exact command line and the versions of every tool
that touched the model, so a result can be reproduced or questioned later.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import segc
from segc.outdir import write_text
from segc.pipeline import PipelineResult

TOOLS = ("onnx", "onnxruntime", "onnx-graphsurgeon", "onnxsim", "numpy", "torch")


def versions() -> dict[str, str]:
    found = {"segc": segc.__version__, "python": platform.python_version()}
    for name in TOOLS:
        try:
            found[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return found


def build_report(result: PipelineResult | None, **fields: Any) -> dict[str, Any]:
    """Assemble report.json's content; ``fields`` carries the command's own facts."""
    report: dict[str, Any] = {"segc_version": segc.__version__, "versions": versions()}
    report.update(fields)
    if result is not None:
        report["verify_mode"] = result.verify_mode
        report["passes"] = [r.to_dict() for r in result.records]
        report["failed_pass"] = result.failed_pass
        report["failure"] = result.failure
        report["ran_before_failure"] = result.passes_before(result.failed_pass) if result.failed_pass else None
        report["end_verdict"] = result.end_verdict.to_dict() if result.end_verdict else None
        report["bisect_probes"] = result.bisect_probes
        report["internal_error"] = result.internal_error.to_dict() if result.internal_error else None
        report["unverified"] = unverified_lines(report)  # passes whose check had no signal to judge by
    return report


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def pass_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per pass: the columns of both the Markdown table and the terminal summary."""
    rows = []
    for p in report.get("passes", []):
        summary = (p.get("verdict") or {}).get("summary") or {}
        rows.append([
            str(p["index"] + 1), p["name"], p["contract"], "yes" if p["changed"] else "no",
            f"{p['seconds']:.2f}s", f"{p['verify_seconds']:.2f}s", p["status"],
            _fmt(summary.get("max_rel")), _fmt(summary.get("cosine"), ".6f"), _fmt(summary.get("agreement"), ".4f"),
        ])
    return rows


def unverified_lines(report: dict[str, Any]) -> list[str]:
    """One line per pass whose check had no signal, with the reason and the fix (for both summaries).

    Such a pass ran and nothing failed, but its verification proved nothing: the reference
    outputs were (near) constant on the inputs used.
    """
    lines = []
    for p in report.get("passes", []):
        verdict = p.get("verdict") or {}
        if p.get("status") == "unverified" and verdict.get("unverified"):
            lines.append(f"{p['name']}: UNVERIFIED, {verdict['unverified'][0]}; {verdict.get('fix')}")
    end = report.get("end_verdict") or {}
    if end.get("unverified") and not lines:
        lines.append(f"pipeline: UNVERIFIED, {end['unverified'][0]}; {end.get('fix')}")
    return lines


PASS_COLUMNS = ["#", "pass", "contract", "changed", "time", "verify", "verdict", "max rel err", "cosine", "agreement"]


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# segc report: {Path(report.get('input', {}).get('path', '?')).name} -> {report.get('target', '?')}", ""]
    status = report.get("status", "?")
    lines.append(f"**Status: {status}**" + (f" — {report['failure']}" if report.get("failure") else ""))
    lines += ["", f"Command: `{report.get('command_line', '')}`", ""]
    for key in ("input", "output"):
        info = report.get(key)
        if info:
            lines.append(f"- {key}: `{info.get('path')}` sha256 `{info.get('sha256', '-')}`, "
                         f"{info.get('nodes', '-')} nodes, {info.get('bytes', '-')} bytes")
    if report.get("recipe"):
        lines.append(f"- recipe: {report['recipe']}")
    lines.append(f"- verification: {report.get('verify_mode', '-')}, shapes {report.get('verified_shapes', '-')}")
    lines.extend(f"- verification note: {note}" for note in report.get("verification_notes", []))
    cost = report.get("verification_cost")
    if cost:
        lines.append(f"- onnxruntime sessions {cost.get('sessions')}, runs {cost.get('runs')}")
    lines += [f"- **{line}**" for line in unverified_lines(report)]
    lines += ["", "| " + " | ".join(PASS_COLUMNS) + " |", "|" + "---|" * len(PASS_COLUMNS)]
    for row in pass_rows(report):
        lines.append("| " + " | ".join(row) + " |")
    notes = [(p["name"], n) for p in report.get("passes", []) for n in p.get("notes", [])]
    reasons = [
        (p["name"], r) for p in report.get("passes", []) for r in ((p.get("verdict") or {}).get("reasons") or [])
    ]
    if reasons or notes:
        lines += ["", "## Notes", ""]
        lines += [f"- **{name}** (failed): {r}" for name, r in reasons]
        lines += [f"- {name}: {n}" for name, n in notes]
    for p in report.get("passes", []):  # the fp16 emulation's per-layer figures (segc.fp16_emulation)
        if (p.get("stats") or {}).get("fp16"):
            from segc.fp16_emulation import figures_markdown

            lines += figures_markdown(p["stats"]["fp16"])
    legal = report.get("legalisation") or {}
    if legal.get("added") or legal.get("warnings") or legal.get("notes"):
        lines += ["", "## Legalisation", ""]
        lines += [f"- added pass **{a['pass']}**: {a['reason']}" for a in legal.get("added", [])]
        lines += [f"- {n}" for n in legal.get("notes", [])]
        lines += [f"- warning: {w}" for w in legal.get("warnings", [])]
    if report.get("violations"):
        lines += ["", "## Target legality", ""] + [f"- {v}" for v in report["violations"]]
    crash = report.get("internal_error")
    if crash:  # a bug in segc: the traceback to attach to the bug report
        lines += ["", f"## Internal error in {crash['where']}", "", "```", crash["traceback"].rstrip(), "```"]
    if report.get("artefacts"):
        lines += ["", "## Artefacts", ""] + [f"- `{a['path']}` ({a['kind']})" for a in report["artefacts"]]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in report.get("versions", {}).items()]
    return "\n".join(lines) + "\n"


def write_reports(outdir: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """report.json and report.md in ``outdir`` (the staging folder during a compile), through
    segc's atomic writer: the user's umask applies, as to any file a tool writes."""
    json_path, md_path = Path(outdir) / "report.json", Path(outdir) / "report.md"
    write_text(json_path, json.dumps(report, indent=2, default=str) + "\n")
    write_text(md_path, render_markdown(report))
    return json_path, md_path
