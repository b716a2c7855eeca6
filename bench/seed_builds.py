"""Regenerate the segc columns of docs/seed_pipelines.md from real builds at the seed shapes.

Why a script and not hand-copied text: the side-by-side document claims "this is the exact
``atc`` / ``trtexec`` / MagicMind command segc writes". That claim stays true only if the
commands are copied out of real ``build.sh`` files, so this script

1. exports each seed model at the shape its guide used (``segc export NAME``, the zoo's seed
   shape: 1024x2048 for the HRNets, 512x1024 for DeepLabv2, 640x640 dynamic for DBNet),
2. compiles it for each vendor the guides used, with ``--verify none`` (verification at the
   full seed shape would take many minutes on a laptop; the integration tests verify the same
   pipelines at small shapes),
3. reads back ``build.sh`` (argv via ``segc.targets.buildscript.parse_steps``), the MagicMind
   builder configuration, and report.json (which passes ran, what they changed),
4. writes ``OUT/seed_builds.json`` and ``OUT/seed_builds.md`` and, with ``--update-doc``,
   replaces each block between ``<!-- seed_builds:MODEL:TARGET -->`` and
   ``<!-- /seed_builds -->`` in the document.

Every segc run is its own process (``python -m segc``), run from inside OUT with relative
paths, so the command lines quoted in the document are the ones a user would type.

    .venv/bin/python bench/seed_builds.py --out build/seed_builds --update-doc docs/seed_pipelines.md

A failed export or compile is not hidden: its exit status and ``segc: error:`` line go into
the document in place of the commands.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PY = sys.executable
SEGC = [PY, "-m", "segc"]
EXPORT_TIMEOUT_S = 1800
COMPILE_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Job:
    """One ``segc compile`` of one seed model for one vendor, as its guide built it."""

    model: str
    target: str
    extra: tuple[str, ...] = ()  # compile flags beyond the recipe's defaults
    why: str = ""  # why the extra flags are there (quoted in the document)
    variant: str = ""  # tells apart two jobs of the same model and target

    @property
    def key(self) -> str:
        """The document marker's name: ``MODEL:TARGET`` or ``MODEL:TARGET:VARIANT``."""
        return ":".join(p for p in (self.model, self.target, self.variant) if p)

    @property
    def outdir(self) -> str:
        return ".".join(p for p in (self.model, self.target, self.variant) if p)


#: The vendor builds the five guides made (docs/seed_pipelines.md), one job each.
JOBS: tuple[Job, ...] = (
    Job("ocrnet_hrnetw18", "ascend"),
    Job("ocrnet_hrnetw18", "tensorrt"),
    Job("ocrnet_hrnetw18", "magicmind"),
    Job("hrnet_w48_ocr", "ascend"),
    Job("hrnet_w48_ocr", "tensorrt"),
    Job("deeplabv2_r101", "ascend"),
    Job("dbnet_r50", "ascend"),
    Job("dbnet_r50", "ascend", ("--cann-version", "6.0.RC1"), variant="cann6",
        why="the guide's CANN 6.0.RC1 predates ranges inside --input_shape"),
    Job("dbnet_r50", "tensorrt"),
    Job("dbnet_r50_dcn", "ascend"),
    Job("dbnet_r50_dcn", "tensorrt"),
    Job("dbnet_r50_dcn", "magicmind", ("--allow-unlisted-ops",),
        why="segc's MagicMind operator list is partial and lacks the decomposition's GridSample/Range/Div/Sub/Floor"),
)

MARKER = re.compile(r"(<!-- seed_builds:(?P<key>[a-z0-9_:]+) -->\n)(?P<body>.*?)(<!-- /seed_builds -->)", re.S)
TIMINGS_KEY = "timings"
ERROR_CHARS = 400  # a legality error lists every node; the document shows its start


@dataclass
class RunResult:
    """One subprocess: its argv as the user would type it, status, time and last error line."""

    argv: list[str]
    status: int
    seconds: float
    error: str | None = None

    @property
    def shown(self) -> str:
        return shlex.join(["segc", *self.argv])


@dataclass
class JobResult:
    job: Job
    export: RunResult
    compile: RunResult | None = None
    steps: list[list[str]] = field(default_factory=list)
    magicmind: dict[str, Any] | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    report_status: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def run(r: RunResult | None) -> dict[str, Any] | None:
            return (
                None
                if r is None
                else {"command": r.shown, "status": r.status, "seconds": round(r.seconds, 1), "error": r.error}
            )

        return {
            "model": self.job.model, "target": self.job.target, "why": self.job.why,
            "export": run(self.export), "compile": run(self.compile), "status": self.report_status,
            "steps": self.steps, "magicmind": self.magicmind, "passes": self.passes,
        }


def _run(argv: list[str], cwd: Path, timeout: int) -> RunResult:
    """Run ``segc ARGV`` in ``cwd``; the error is the last ``segc: error:`` (or FAILED) line."""
    started = time.perf_counter()
    try:
        proc = subprocess.run([*SEGC, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return RunResult(argv, 124, time.perf_counter() - started, f"timed out after {timeout} s")
    seconds = time.perf_counter() - started
    error = None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        picked = [ln for ln in lines if ln.startswith("segc: error:") or ln.startswith("FAILED:")]
        error = (picked or lines or ["(no output)"])[-1]
    return RunResult(argv, proc.returncode, seconds, error)


def export(model: str, out: Path, cache: dict[str, RunResult]) -> RunResult:
    """``segc export MODEL -o MODEL.onnx`` at the seed shape, once per model."""
    if model not in cache:
        (out / f"{model}.onnx").unlink(missing_ok=True)
        cache[model] = _run(["export", model, "-o", f"{model}.onnx"], out, EXPORT_TIMEOUT_S)
        print(f"export {model}: status {cache[model].status} in {cache[model].seconds:.0f} s", file=sys.stderr)
    return cache[model]


def _literal(program: str, name: str) -> Any:
    """The literal value assigned to ``name`` at the top of a generated Python program."""
    for node in ast.parse(program).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return None


def _pass_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per pass: name, whether it changed the graph, and the stats that say what it did."""
    keep = ("switched", "nodes", "folded", "left", "computed", "form", "converted", "deform_convs", "dropped",
            "nodes_before", "nodes_after", "from", "to", "inputs_changed", "dynamic_dims")
    rows = []
    for p in report.get("passes", []):
        stats = {k: v for k, v in (p.get("stats") or {}).items() if k in keep}
        rows.append({"name": p["name"], "changed": p["changed"], "status": p["status"], "stats": stats})
    return rows


def compile_job(job: Job, out: Path, exported: RunResult) -> JobResult:
    result = JobResult(job, exported)
    if exported.status != 0:
        return result
    outdir = job.outdir
    shutil.rmtree(out / outdir, ignore_errors=True)
    argv = ["compile", f"{job.model}.onnx", "--target", job.target, "-o", outdir, "--verify", "none", *job.extra]
    result.compile = _run(argv, out, COMPILE_TIMEOUT_S)
    print(f"compile {job.key}: status {result.compile.status} in {result.compile.seconds:.0f} s",
          file=sys.stderr)
    report_path = out / outdir / "report.json"
    if report_path.exists():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        result.report_status = report.get("status")
        result.passes = _pass_summary(report)
    script = out / outdir / "build.sh"
    if script.exists():
        from segc.targets.buildscript import parse_steps

        result.steps = parse_steps(script.read_text(encoding="utf-8"))
    program = out / outdir / "build_magicmind.py"
    if program.exists():
        text = program.read_text(encoding="utf-8")
        result.magicmind = {"BUILDER_CONFIG": _literal(text, "BUILDER_CONFIG"), "INPUTS": _literal(text, "INPUTS")}
    return result


# ----------------------------------------------------------------------------- markdown


def _passes_line(passes: list[dict[str, Any]]) -> str:
    parts = []
    for p in passes:
        stats = dict(p["stats"])
        stats.pop("nodes", None)  # node-name lists are too long for one line
        shown = ", ".join(f"{k}={v}" for k, v in stats.items())
        parts.append(f"{p['name']}{'' if p['changed'] else ' (no change)'}" + (f" [{shown}]" if shown else ""))
    return " -> ".join(parts)


def render_block(result: JobResult) -> str:
    """The Markdown that goes between one job's markers."""
    lines = ["```sh", result.export.shown]
    if result.compile is not None:
        lines.append(result.compile.shown)
    lines.append("```")
    if result.job.why:
        lines.append(f"Extra flags: {result.job.why}.")
    failed = result.export if result.export.status != 0 else result.compile
    if failed is not None and failed.status != 0:
        error = failed.error or ""
        shown = error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS].rstrip() + " ..."
        lines += ["", f"**Fails (exit {failed.status}):** `{shown}`"]
    if result.passes:
        lines += ["", f"Passes: {_passes_line(result.passes)}"]
    if result.steps:
        lines += ["", "`build.sh` runs:", "```sh"]
        lines += [shlex.join(argv) for argv in result.steps]
        lines.append("```")
    if result.magicmind:
        lines += ["", "`build_magicmind.py` builder config (one `parse_from_string` each) and inputs:", "```json"]
        lines += [json.dumps(piece) for piece in result.magicmind["BUILDER_CONFIG"] or []]
        lines += [json.dumps(spec) for spec in result.magicmind["INPUTS"] or []]
        lines.append("```")
    return "\n".join(lines) + "\n"


def render_timings(results: list[JobResult]) -> str:
    """A table of wall times at the seed shapes (this machine, ``--verify none``)."""
    lines = ["| model | target | export (s) | compile (s) | result |", "|---|---|---|---|---|"]
    for r in results:
        target = r.job.key.split(":", 1)[1]
        if r.compile is None:
            lines.append(f"| {r.job.model} | {target} | {r.export.seconds:.0f} | - | export failed |")
            continue
        result = r.report_status or f"exit {r.compile.status}"
        lines.append(f"| {r.job.model} | {target} | {r.export.seconds:.0f} | {r.compile.seconds:.0f} | {result} |")
    return "\n".join(lines) + "\n"


def update_doc(doc: Path, results: list[JobResult]) -> int:
    """Replace each marked block in ``doc``; returns how many were replaced."""
    blocks = {r.job.key: render_block(r) for r in results}
    if len(results) == len(JOBS):  # a partial run (--only) leaves the timings table alone
        blocks[TIMINGS_KEY] = render_timings(results)
    text = doc.read_text(encoding="utf-8")
    replaced = 0

    def swap(m: re.Match[str]) -> str:
        nonlocal replaced
        key = m.group("key")
        if key not in blocks:
            return m.group(0)
        replaced += 1
        return m.group(1) + blocks[key] + m.group(4)

    doc.write_text(MARKER.sub(swap, text), encoding="utf-8")
    return replaced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/seed_builds", help="working folder (exports and builds go here)")
    parser.add_argument("--only", action="append", default=[], metavar="MODEL", help="only these models (repeatable)")
    parser.add_argument("--update-doc", metavar="DOC.md", help="rewrite the marked blocks of this document")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [j for j in JOBS if not args.only or j.model in args.only]
    exports: dict[str, RunResult] = {}
    results = [compile_job(job, out, export(job.model, out, exports)) for job in jobs]
    (out / "seed_builds.json").write_text(json.dumps([r.to_dict() for r in results], indent=1), encoding="utf-8")
    md = "\n".join(f"### {r.job.key}\n\n{render_block(r)}" for r in results) + "\n" + render_timings(results)
    (out / "seed_builds.md").write_text(md, encoding="utf-8")
    print(f"wrote {out / 'seed_builds.json'} and {out / 'seed_builds.md'}", file=sys.stderr)
    if args.update_doc:
        count = update_doc(Path(args.update_doc), results)
        print(f"updated {count} block(s) in {args.update_doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
