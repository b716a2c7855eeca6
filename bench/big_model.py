"""The "over 2 GiB" benchmark: compile a generated 2.25 GiB model for every target with the
default pipeline and verification on, and record each compile's peak memory against the
model's size (the target: within 2x).

The model is generated, not downloaded: three 1x1 convolutions whose weights are zeros in a
sparse data file (no disk blocks, written in no time) but for their first value, which
differs (equal weights would be merged as copies), with residual Adds so the outputs still
carry the input's signal for the verifier::

    x[1,16384,1,1] --Conv(W1 1 GiB)--> +x --Conv(W2 1 GiB)--> +  --> y
                                                              \\--Conv(W3 256 MiB)--> z

Peak memory is ``wait4``'s ru_maxrss of the segc process. onnxruntime memory-maps the weights,
and ru_maxrss counts those file-backed pages once per session that maps them (the reference
and a candidate share one page cache), so it is an upper bound; the peak of RssAnon (sampled
every 0.1 s: memory no file backs, what an OOM kill is about) is recorded beside it.

    python bench/big_model.py --out build/bench     # writes OUT/big_model.json and .md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

CHANNELS = 16384
TARGETS = ("onnxruntime", "ascend", "tensorrt", "magicmind")


def _external(name: str, dims: list[int], location: str, offset: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    length = 4
    for d in dims:
        length *= d
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def write_big_model(folder: Path, channels: int = CHANNELS) -> tuple[Path, int]:
    """``folder/big.onnx`` + ``folder/big.data`` (sparse zeros); the path and the weight bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    c = channels
    sizes = {"W1": [c, c, 1, 1], "W2": [c, c, 1, 1], "W3": [c // 4, c, 1, 1]}
    inits, offset, starts = [], 0, []
    for name, dims in sizes.items():
        inits.append(_external(name, dims, "big.data", offset))
        starts.append(offset)
        offset += 4 * dims[0] * dims[1]
    with open(folder / "big.data", "wb") as fh:
        fh.truncate(offset)  # a hole: zeros that take no disk space
        for k, start in enumerate(starts):  # one value each: no two weights are equal (merged as copies)
            fh.seek(start)
            fh.write(np.float32(0.5 * (k + 1)).tobytes())
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], name="conv1"),
        helper.make_node("Add", ["x", "c1"], ["y1"], name="add1"),
        helper.make_node("Conv", ["y1", "W2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["y1", "c2"], ["y"], name="add2"),
        helper.make_node("Conv", ["y", "W3"], ["z"], name="conv3"),
    ]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 1, 1]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, c // 4, 1, 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path, offset


def compile_measured(
    model: Path, target: str, outdir: Path, extra: list[str] = (), sample_anon: bool = False
) -> dict[str, Any]:
    """One ``segc compile`` in its own process: rc, wall seconds, peak RSS (MiB), stderr tail."""
    cmd = [
        sys.executable,
        "-m",
        "segc",
        "compile",
        str(model),
        "--target",
        target,
        "-o",
        str(outdir),
        "--force",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    anon = 0
    while True:  # wait4, not poll(): only wait4 reports the child's peak RSS
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG if sample_anon else 0)
        if pid:
            break
        anon = max(anon, _rss_anon_kib(proc.pid))  # RssAnon: the part of RSS no file backs
        time.sleep(0.1)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    row = {"target": target, "rc": os.waitstatus_to_exitcode(status), "seconds": round(time.perf_counter() - t0, 1),
           "peak_mib": round(usage.ru_maxrss / 1024), "stderr": err.splitlines()[-1] if err else ""}
    if sample_anon:
        row["peak_anon_mib"] = round(anon / 1024)
    return row


def _rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/bench"))
    ap.add_argument("--targets", default=",".join(TARGETS))
    args = ap.parse_args()
    work = args.out / "big_model"
    model, nbytes = write_big_model(work / "model")
    size_mib = nbytes / 2**20
    rows = []
    for target in args.targets.split(","):
        extra = ["--outputs", "y"] if target == "tensorrt" else []  # one changed, verified pass
        row = compile_measured(model, target, work / target, extra, sample_anon=True)
        row["peak_over_model"] = round(row["peak_mib"] / size_mib, 2)
        rows.append(row)
        print(json.dumps(row))
    (args.out / "big_model.json").write_text(json.dumps({"model_mib": round(size_mib), "rows": rows}, indent=2))
    lines = [
        f"over 2 GiB: {size_mib:.0f} MiB model, default pipeline, verification on",
        "",
        "| target | rc | seconds | peak RSS MiB | peak / model size | peak RssAnon MiB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['target']} | {r['rc']} | {r['seconds']} | {r['peak_mib']} | {r['peak_over_model']} | "
        f"{r['peak_anon_mib']} |"
        for r in rows
    ]
    (args.out / "big_model.md").write_text("\n".join(lines) + "\n")
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # gigabytes of outputs: only the figures stay
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
