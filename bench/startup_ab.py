"""segc's fixed cost, before and after a change: two source trees and the floor, alternating.

Issue 11: ``segc compile MODEL --target ascend --verify none`` against a bare ``onnx.load`` +
``onnx.save`` of the same file, on a model small enough that start-up (imports, planning,
the interpreter's exit) is most of it. A change to start-up moves the whole process by tens of
milliseconds, less than a 2-core machine's noise between two runs minutes apart, so both
trees are timed in the same rotation, with the floor, round after round (as
``compile_floor.py`` rotates its tools), and CPU seconds are reported next to wall seconds:
a neighbour's load moves wall time far more than CPU time.

    git worktree add --detach /tmp/before main
    .venv/bin/python bench/startup_ab.py --before /tmp/before --models ppocrv4_det,dbnet_r50 --rounds 5

Each tree runs as a package tree of symlinks (as ``make lint`` builds for mypy) placed first
on ``sys.path``, so it wins over the editable install; both trees get their bytecode written
first (``run_bench.precompile_segc``'s reason). Writes ``OUT/startup_ab.json`` and
``OUT/startup_ab.md``. Timings are never asserted anywhere: this script reports.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "thirdparty"))

from compile_floor import model_path  # noqa: E402
from run_bench import PY, measure  # noqa: E402

# main() with no argv: the process's own command line, as the `segc` console script calls it
LAUNCH = "import sys; sys.path.insert(0, sys.argv.pop(1)); from segc.cli import main; sys.exit(main())"
FLOOR = "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])"


def package_tree(source: Path, into: Path) -> Path:
    """``into/segc`` laid out as the installed package (compiler/ is segc, passes/ is
    segc.passes, ...), of symlinks into ``source``, with its bytecode written."""
    pkg = into / "segc"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (source / "compiler").glob("*.py"):
        link = pkg / f.name
        if not link.is_symlink():
            link.symlink_to(f)
    for sub in ("passes", "targets", "models"):
        link = pkg / sub
        if not link.is_symlink():
            link.symlink_to(source / sub, target_is_directory=True)
    for folder in (pkg, pkg / "passes", pkg / "targets", pkg / "models"):
        compileall.compile_dir(str(folder), maxlevels=0, quiet=1)
    return into


def ab_model(name: str, trees: dict[str, Path], out: Path, rounds: int) -> dict[str, Any]:
    model, extra = model_path(name, out / "models")
    work = out / "work" / f"startup_{name}"
    work.mkdir(parents=True, exist_ok=True)
    cmds = {"floor": [PY, "-c", FLOOR, str(model), str(work / "floor.onnx")]}
    for label, tree in trees.items():
        cmds[label] = [PY, "-c", LAUNCH, str(tree), "compile", str(model), "--target", "ascend", "--verify", "none",
                       "--force", "-o", str(work / label), *extra]
    tools = list(cmds)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in tools}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for tool in tools[r % len(tools):] + tools[:r % len(tools)]:
            runs[tool].append(measure(cmds[tool]))
            last = runs[tool][-1]
            print(f"  {name} round {r + 1} {tool}: {last['seconds']:.2f}s cpu {last['cpu_seconds']:.2f}s "
                  f"rc={last['rc']}{' ' + str(last['error']) if last['rc'] else ''}", flush=True)
        load.append(os.getloadavg()[0])
    entry: dict[str, Any] = {"load": [round(x, 2) for x in load], "tools": {}}
    for tool, rs in runs.items():
        ok = [x for x in rs if x["rc"] == 0]
        entry["tools"][tool] = {
            "rounds_s": [round(x["seconds"], 3) for x in rs],
            "seconds": statistics.median(x["seconds"] for x in ok) if ok else None,
            "cpu_seconds": statistics.median(x["cpu_seconds"] for x in ok) if ok else None,
            "peak_mib": statistics.median(x["peak_mib"] for x in ok) if ok else None,
        }
    return entry


def _cell(x: dict[str, Any], floor: dict[str, Any]) -> str:
    if not x["seconds"] or not floor["seconds"]:
        return "failed"
    return (f"{x['seconds']:.2f} / {x['cpu_seconds']:.2f} ({x['seconds'] / floor['seconds']:.2f}x / "
            f"{x['cpu_seconds'] / floor['cpu_seconds']:.2f}x)")


def render(results: dict[str, Any]) -> str:
    lines = [f"{results['rounds']} rounds, medians; wall s / CPU s (ratio to the floor's); load average per round.",
             "", "| model | floor | before | after | load |", "|---|---|---|---|---|"]
    for name, e in results["models"].items():
        cells = [_cell(e["tools"][tool], e["tools"]["floor"]) for tool in ("floor", "before", "after")]
        lines.append(f"| {name} | {' | '.join(cells)} | {', '.join(f'{x:.1f}' for x in e['load'])} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, type=Path, help="a checkout of the code before the change")
    ap.add_argument("--after", type=Path, default=HERE.parent, help="the code after it (default: this checkout)")
    ap.add_argument("--out", default="build/bench", type=Path)
    ap.add_argument("--models", default="ppocrv4_det")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    (args.out / "models").mkdir(parents=True, exist_ok=True)
    trees = {label: package_tree(src.resolve(), args.out / "work" / f"tree_{label}")
             for label, src in (("before", args.before), ("after", args.after))}
    results: dict[str, Any] = {"rounds": args.rounds, "cpus": os.cpu_count(), "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        print(f"== {name}", flush=True)
        results["models"][name] = ab_model(name, trees, args.out, args.rounds)
        (args.out / "startup_ab.json").write_text(json.dumps(results, indent=2))
    (args.out / "startup_ab.md").write_text(render(results))
    print((args.out / "startup_ab.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
