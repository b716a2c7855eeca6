"""The third-party matrix: every model of tests/thirdparty x every target, as a table.

Runs exactly what ``tests/thirdparty/test_thirdparty_models.py`` runs (same harness), but
keeps going past failures and prints one Markdown row per model with, per target, the exit
code, the seconds and the one-line verdict: segc's error, or the independent re-check.

    .venv/bin/python bench/thirdparty_matrix.py [--models a,b] [--targets t,u] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "thirdparty"))

import harness  # noqa: E402

from segc.errors import first_line  # noqa: E402


def _cell(spec: harness.ModelSpec, model: Path, target: str, out: Path) -> dict:
    res = harness.compile_model(model, spec, target, out / spec.name / target)
    cell = {"model": spec.name, "target": target, "exit": res.exit_code, "seconds": round(res.seconds, 1),
            "verdict": res.verdict_line(), "recheck": None}
    if res.exit_code == 0:
        problems = harness.report_problems(res)
        if problems:
            cell["verdict"] = "report: " + "; ".join(problems)
        else:
            try:
                checks = harness.recheck(model, res.compiled_onnx, spec)
                cell["recheck"] = all(c.ok for c in checks)
                cell["verdict"] = ("re-check ok: " if cell["recheck"] else "RE-CHECK FAILED: ") + harness.describe(
                    checks
                )
            except Exception as exc:  # noqa: BLE001 - a matrix keeps going
                cell["recheck"] = False
                cell["verdict"] = f"RE-CHECK ERROR: {type(exc).__name__}: {first_line(exc)[:200]}"
    return cell


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated subset of: " + ",".join(harness.MODELS_BY_NAME))
    ap.add_argument("--targets", default=",".join(harness.TARGETS))
    ap.add_argument("--out", default="build/thirdparty")
    ap.add_argument("--json", help="also write the cells here")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else list(harness.MODELS_BY_NAME)
    targets = args.targets.split(",")
    out = Path(args.out)
    cells = []
    start = time.perf_counter()
    for name in names:
        spec = harness.MODELS_BY_NAME[name]
        t0 = time.perf_counter()
        try:
            model = harness.materialise(spec, out / "models")
        except Exception as exc:  # noqa: BLE001
            line = f"{type(exc).__name__}: {first_line(exc)[:200] if str(exc).strip() else ''}"
            cells += [{"model": name, "target": t, "exit": None, "seconds": 0, "verdict": f"no model: {line}",
                       "recheck": None} for t in targets]
            print(f"{name}: no model: {line}", file=sys.stderr)
            continue
        print(f"{name}: model ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        for target in targets:
            try:
                cell = _cell(spec, model, target, out)
            except Exception:  # noqa: BLE001
                cell = {"model": name, "target": target, "exit": None, "seconds": 0,
                        "verdict": "harness crash: " + traceback.format_exc().strip().splitlines()[-1], "recheck": None}
            cells.append(cell)
            print(f"  {target}: exit {cell['exit']} {cell['seconds']}s {cell['verdict'][:160]}", file=sys.stderr)
    total = time.perf_counter() - start
    print("| model | target | exit | s | verdict |")
    print("|---|---|---|---|---|")
    for c in cells:
        print(
            f"| {c['model']} | {c['target']} | {c['exit']} | {c['seconds']} | {c['verdict'].replace('|', '/')[:300]} |"
        )
    passed = sum(1 for c in cells if c["exit"] == 0 and c["recheck"])
    print(f"\n{passed} of {len(cells)} cells pass (exit 0, verified, re-checked); {total:.0f}s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
