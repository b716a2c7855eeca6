"""segc's benchmark: compile speed, verification cost, compiled-model latency, memory, scaling.

Run with ``make bench`` (never part of CI). Every tool runs in its own process so wall time
and peak resident memory (``wait4``'s ru_maxrss) are measured the same way for segc,
onnx-simplifier, onnxslim and a bare onnx load + save (the floor). Tools alternate within
each round and medians over rounds are quoted, so a noisy neighbour hurts all of them alike.

Writes ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PY = sys.executable
SEGC = [PY, "-m", "segc"]
SEED_SHAPES = {
    "ocrnet_hrnetw18": None,  # None: the zoo's seed shape
    "hrnet_w48_ocr": None,
    "deeplabv2_r101": None,
    "dbnet_r50": None,
    "dbnet_r50_dcn": None,
}
TARGETS = ("onnxruntime", "ascend", "tensorrt", "magicmind")
LATENCY_SHAPE = (1, 3, 512, 1024)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, CPU seconds (user + system), peak RSS in MiB, exit status.

    CPU seconds are what a neighbour's load changes least (wall time on this 2-core machine
    at load 5 varied 13.6 to 21.6 s for one 50k-node onnx-simplifier call); the scaling
    exponent is fitted on both.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024,
            "rc": proc.returncode,
            "error": err.strip().splitlines()[-1] if proc.returncode and err.strip() else None}


def precompile_segc() -> None:
    """Write segc's bytecode once, as installing it from a wheel does.

    onnx, onnxruntime and onnx-simplifier come from wheels, so their processes load compiled
    bytecode; segc here is an editable install, and with PYTHONDONTWRITEBYTECODE set (as on
    this machine) every segc process would compile all its sources again: 0.1 s quiet, up to
    0.8 s on a loaded machine (measured on ppocrv4_det, issue 11), which no user pays twice.
    """
    import compileall
    import importlib

    for package in ("segc", "segc.passes", "segc.targets", "segc.models"):
        for folder in importlib.import_module(package).__path__:
            compileall.compile_dir(folder, maxlevels=0, quiet=1)


def export_seed(name: str, models_dir: Path) -> Path:
    path = models_dir / f"{name}.onnx"
    if not path.exists():
        result = measure([*SEGC, "export", name, "-o", str(path), "--force"])
        if result["rc"] != 0:
            raise SystemExit(f"export of {name} failed: {result['error']}")
    return path


def tool_commands(model: Path, work: Path, targets: tuple[str, ...]) -> dict[str, list[str]]:
    """Every command timed per model: the floor, the two simplifiers, segc per target, verification."""
    cmds = {
        "onnx load+save": [
            PY,
            "-c",
            "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.save(m, sys.argv[2])",
            str(model),
            str(work / "floor.onnx"),
        ],
        "onnx-simplifier": [PY, "-m", "onnxsim", str(model), str(work / "onnxsim.onnx")],
        "onnxslim": [PY, "-m", "onnxslim", str(model), str(work / "onnxslim.onnx")],
    }
    for t in targets:
        # MagicMind's published op list is partial (targets/magicmind.json): time the build anyway
        extra = ["--allow-unlisted-ops"] if t == "magicmind" else []
        cmds[f"segc {t}"] = [
            *SEGC,
            "compile",
            str(model),
            "--target",
            t,
            "-o",
            str(work / t),
            "--verify",
            "none",
            "--force",
            *extra,
        ]
    return cmds


def ort_latency(path: Path, shape: tuple[int, ...], runs: int, threads: int) -> float | None:
    """Median onnxruntime CPU latency in ms at ``shape`` (fixed threads), or None if it cannot run."""
    code = f"""
import sys, time, json, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal({tuple(shape)!r}).astype(np.float32)
s.run(None, {{i.name: x}})
t = []
for _ in range({runs}):
    t0 = time.perf_counter(); s.run(None, {{i.name: x}}); t.append(time.perf_counter() - t0)
print(json.dumps(sorted(t)[len(t) // 2] * 1000))
"""
    proc = subprocess.run([PY, "-c", code, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def latency_shape(path: Path) -> tuple[int, ...]:
    """The first input's fixed dims, with LATENCY_SHAPE filling the dynamic ones.

    Static seed exports run only at their own size; a dynamic-batch HRNet keeps its H and W.
    The model's structure only is read (``lazy``): a child's ``ru_maxrss`` starts from this
    process's size, so reading hrnet_w48_ocr's weights here read as a 583 MiB peak for every
    later model's tools.
    """
    from segc.modelio import load_model
    from segc.onnx_graph import real_inputs

    model = load_model(path, lazy=True)
    vi = next(iter(real_inputs(model)))
    dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    return tuple(d if d > 0 else LATENCY_SHAPE[i] for i, d in enumerate(dims))


def synthetic_graph(nodes: int, path: Path) -> None:
    """A valid conv net of about ``nodes`` nodes: Conv-Relu-Add blocks with periodic Resize/Concat."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c = 4
    made, inits, cur, k = [], [], "x", 0
    while len(made) < nodes:
        w = f"w{k}"
        inits.append(numpy_helper.from_array((rng.standard_normal((c, c, 1, 1)) * 0.3).astype(np.float32), w))
        made.append(helper.make_node("Conv", [cur, w], [f"c{k}"]))
        made.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        made.append(helper.make_node("Add", [f"r{k}", cur], [f"a{k}"]))
        cur = f"a{k}"
        if k % 50 == 49:  # a down/up pair with a shape-computed Resize, like the seeds' heads
            made.append(helper.make_node("MaxPool", [cur], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2]))
            made.append(helper.make_node("Shape", [cur], [f"s{k}"]))
            made.append(helper.make_node("Resize", [f"p{k}", "", "", f"s{k}"], [f"u{k}"], mode="nearest"))
            made.append(helper.make_node("Concat", [cur, f"u{k}"], [f"cat{k}"], axis=1))
            inits.append(
                numpy_helper.from_array((rng.standard_normal((c, 2 * c, 1, 1)) * 0.3).astype(np.float32), f"m{k}")
            )
            made.append(helper.make_node("Conv", [f"cat{k}", f"m{k}"], [f"mix{k}"]))
            cur = f"mix{k}"
        k += 1
    made.append(helper.make_node("Identity", [cur], ["y"]))
    g = helper.make_graph(made, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 16, 16])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), str(path))


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) over log(nodes)."""
    xs, ys = np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float))
    return float(np.polyfit(xs, ys, 1)[0])


def pass_seconds(report: Path) -> float:
    data = json.loads(report.read_text())
    return sum(p["seconds"] for p in data.get("passes", []))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/bench")
    ap.add_argument("--models", default=",".join(SEED_SHAPES))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scaling", default="1000,5000,20000,50000")
    ap.add_argument("--skip-seed", action="store_true", help="only the synthetic scaling run")
    args = ap.parse_args()
    precompile_segc()
    out = Path(args.out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "work").mkdir(parents=True, exist_ok=True)
    targets = tuple(t for t in args.targets.split(",") if t)
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                           "platform": platform.platform()}, "models": {}, "scaling": {}}

    for name in ([] if args.skip_seed else [m for m in args.models.split(",") if m]):
        print(f"== {name}", flush=True)
        model = export_seed(name, out / "models")
        work = out / "work" / name
        work.mkdir(parents=True, exist_ok=True)
        cmds = tool_commands(model, work, targets)
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in cmds}
        for r in range(args.rounds):
            for label, cmd in cmds.items():  # alternate tools within each round
                runs[label].append(measure(cmd))
                print(
                    f"  round {r + 1} {label}: {runs[label][-1]['seconds']:.1f}s rc={runs[label][-1]['rc']}", flush=True
                )
        entry: dict[str, Any] = {"file_mib": model.stat().st_size / 2**20, "tools": {}}
        for label, rs in runs.items():
            ok = [x for x in rs if x["rc"] == 0]
            entry["tools"][label] = {
                "seconds": statistics.median(x["seconds"] for x in ok) if ok else None,
                "peak_mib": statistics.median(x["peak_mib"] for x in ok) if ok else None,
                "failures": [x["error"] for x in rs if x["rc"] != 0][:1],
            }
        # verification alone: the default `each` compile minus the same compile without it
        verify_run = measure(
            [*SEGC, "compile", str(model), "--target", "onnxruntime", "-o", str(work / "verified"), "--force"]
        )
        rep = work / "verified" / "report.json"
        if rep.exists():
            data = json.loads(rep.read_text())
            entry["verification"] = {
                "compile_seconds": verify_run["seconds"],
                "verify_seconds": sum(p["verify_seconds"] for p in data["passes"]),
                "sessions": data["verification_cost"]["sessions"], "runs": data["verification_cost"]["runs"],
                "changed_passes": sum(p["changed"] for p in data["passes"]),
                "shapes": data["verified_shapes"], "status": data["status"],
            }
        lat_shape = latency_shape(model)
        latencies = {"original": ort_latency(model, lat_shape, args.latency_runs, args.threads),
                     "onnx-simplifier": ort_latency(work / "onnxsim.onnx", lat_shape, args.latency_runs, args.threads)
                     if (work / "onnxsim.onnx").exists() else None}
        for t in targets:
            compiled = work / t / f"{model.stem}.{t}.onnx"
            if compiled.exists():
                latencies[f"segc {t}"] = ort_latency(compiled, lat_shape, args.latency_runs, args.threads)
        entry["latency_ms"] = latencies
        entry["latency_shape"] = list(lat_shape)
        results["models"][name] = entry
        (out / "results.json").write_text(json.dumps(results, indent=2))

    sizes = [int(s) for s in args.scaling.split(",") if s]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for n in sizes:  # written by a child: this process must stay small, or every child's ru_maxrss starts
        # from its size (Linux carries the high-water mark over fork and exec; see compile_floor.node_count)
        subprocess.run([PY, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); from run_bench import "
                        f"synthetic_graph; from pathlib import Path; synthetic_graph({n}, "
                        f"Path({str(out / 'work' / f'synthetic_{n}.onnx')!r}))"], check=True)
    for r in range(args.rounds):  # every size once per round, the order rotating: a neighbour's load hits all
        for n in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            work = out / "work" / f"syn_{n}"
            run = measure([*SEGC, "compile", str(out / "work" / f"synthetic_{n}.onnx"), "--target", "onnxruntime",
                           "-o", str(work), "--verify", "none", "--force"])
            run["pass_seconds"] = pass_seconds(work / "report.json") if run["rc"] == 0 else math.nan
            runs[n].append(run)
            print(f"  synthetic {n} round {r + 1}: passes {run['pass_seconds']:.2f}s, "
                  f"process CPU {run['cpu_seconds']:.2f}s", flush=True)
    times, cpus = [], []
    for n in sizes:
        ok = [run for run in runs[n] if run["rc"] == 0]
        secs = statistics.median(run["pass_seconds"] for run in ok) if ok else math.nan
        cpu = statistics.median(run["cpu_seconds"] for run in ok) if ok else math.nan
        times.append(secs)
        cpus.append(cpu)
        results["scaling"][str(n)] = {
            "pass_seconds": secs,
            "pass_seconds_rounds": [round(run["pass_seconds"], 3) for run in runs[n]],
            "process_seconds": statistics.median(run["seconds"] for run in ok) if ok else math.nan,
            "process_cpu_seconds": cpu,
            "peak_mib": max((run["peak_mib"] for run in ok), default=math.nan),
            "error": next((run["error"] for run in runs[n] if run["rc"] != 0), None),
        }
    for key, series in (("exponent", times), ("cpu_exponent", cpus)):
        ok = [(n, t) for n, t in zip(sizes, series, strict=True) if t == t and t > 0]
        if len(ok) >= 2:
            results["scaling"][key] = growth_exponent([n for n, _ in ok], [t for _, t in ok])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render(results))
    print((out / "results.md").read_text())
    return 0


def _f(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def render(results: dict[str, Any]) -> str:
    lines = ["# segc benchmark", "", f"Machine: {results['machine']}", ""]
    if results["models"]:
        tools = list(next(iter(results["models"].values()))["tools"])
        lines += ["## Compile time (median s) / peak memory (MiB), `--verify none`", "",
                  "| model | file MiB | " + " | ".join(tools) + " |", "|---|---|" + "---|" * len(tools)]
        for name, e in results["models"].items():
            cells = [f"{_f(e['tools'][t]['seconds'])} / {_f(e['tools'][t]['peak_mib'], '.0f')}" for t in tools]
            lines.append(f"| {name} | {_f(e['file_mib'])} | " + " | ".join(cells) + " |")
        lines += ["", "## Verification (onnxruntime target, `--verify each`)", "",
                  "| model | verify s | sessions | runs | changed passes | shapes |", "|---|---|---|---|---|---|"]
        for name, e in results["models"].items():
            v = e.get("verification") or {}
            lines.append(
                f"| {name} | {_f(v.get('verify_seconds'))} | {v.get('sessions', '-')} | {v.get('runs', '-')} | "
                f"{v.get('changed_passes', '-')} | {len(v.get('shapes', []))} |"
            )
        lat_cols = sorted({k for e in results["models"].values() for k in e["latency_ms"]})
        lines += [
            "",
            "## onnxruntime CPU latency (median ms; fixed dims as exported, dynamic ones from 1x3x512x1024)",
            "",
            "| model | " + " | ".join(lat_cols) + " |",
            "|---|" + "---|" * len(lat_cols),
        ]
        for name, e in results["models"].items():
            lines.append(f"| {name} | " + " | ".join(_f(e["latency_ms"].get(c)) for c in lat_cols) + " |")
    if results["scaling"]:
        lines += ["", "## Scaling (synthetic graphs, onnxruntime target, `--verify none`, medians of the rounds)",
                  "", "| nodes | pass s | pass s, rounds | process s | process CPU s | peak MiB |",
                  "|---|---|---|---|---|---|"]
        for n, s in results["scaling"].items():
            if n not in ("exponent", "cpu_exponent"):
                rounds = " / ".join(_f(t, ".2f") for t in s.get("pass_seconds_rounds", []))
                lines.append(
                    f"| {n} | {_f(s['pass_seconds'], '.2f')} | {rounds} | {_f(s['process_seconds'])} | "
                    f"{_f(s.get('process_cpu_seconds'), '.2f')} | {_f(s['peak_mib'], '.0f')} |"
                )
        if "exponent" in results["scaling"]:
            lines.append(f"\nGrowth exponent of pass time in node count: {results['scaling']['exponent']:.2f}")
        if "cpu_exponent" in results["scaling"]:
            lines.append(f"Growth exponent of process CPU time: {results['scaling']['cpu_exponent']:.2f}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
