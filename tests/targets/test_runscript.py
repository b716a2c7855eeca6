"""run.sh: the built model on `segc data`'s inputs, outputs that `segc evaluate --from-outputs` reads.

No NPU or GPU here, so the vendor runners are stand-ins on PATH / PYTHONPATH that do what the
real ones document for the arguments run.sh passes (trtexec: --loadEngine, --loadInputs
name:file, --exportOutput JSON; ais_bench: --model, --input folder, --output +
--output_dirname, <stem>_0.bin), computing with onnxruntime on the compiled ONNX. What is
tested is the wiring: the argv, the file names and formats, and the figures at the end,
which must equal the onnxruntime evaluation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from segc.cli import main
from segc.targets.buildscript import parse_steps
from tests.compiler.datagen import PLAIN_RECIPE, save, seg_model
from tests.compiler.test_evaluate_seg import frames, make_cityscapes

FAKE_TRTEXEC = r'''#!{python}
import json, sys
import numpy as np, onnxruntime as ort
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
assert "--shapes" not in " ".join(sys.argv), "a static engine takes no --shapes"
onnx_path = args["loadEngine"][: -len(".engine")] + ".onnx"
name, path = args["loadInputs"].split(":", 1)
sess = ort.InferenceSession(onnx_path)
shape = [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
x = np.fromfile(path, "<f4").reshape(shape)
outs = sess.run(None, {{name: x}})
with open(args["exportOutput"], "w") as f:
    json.dump([{{"name": o.name, "dimensions": "x".join(map(str, v.shape)), "values": v.ravel().tolist()}}
               for o, v in zip(sess.get_outputs(), outs)], f)
'''

FAKE_AIS_BENCH = r'''import argparse, pathlib
import numpy as np, onnxruntime as ort
p = argparse.ArgumentParser()
for a in ("--model", "--input", "--output", "--output_dirname", "--outfmt"):
    p.add_argument(a, required=True)
a = p.parse_args()
assert a.outfmt == "BIN" and a.model.endswith(".om")
sess = ort.InferenceSession(a.model[: -len(".om")] + ".onnx")
inp = sess.get_inputs()[0]
out = pathlib.Path(a.output) / a.output_dirname
out.mkdir(parents=True, exist_ok=True)
for f in sorted(pathlib.Path(a.input).glob("*.bin")):
    ys = sess.run(None, {inp.name: np.fromfile(f, "<f4").reshape(inp.shape)})
    for i, y in enumerate(ys):
        y.tofile(out / f"{f.stem}_{i}.bin")
'''


@pytest.fixture
def setup(tmp_path: Path):
    root = make_cityscapes(tmp_path / "cs", frames(2, seed=9))
    model = save(seg_model(dims=(1, 3, 32, 64)), tmp_path / "m.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        PLAIN_RECIPE.format(task="segmentation", kind="logits", resize='resize = "fixed"\nsize = [32, 64]')
    )
    data = tmp_path / "data"
    assert main(["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe), "-o", str(data)]) == 0
    return root, model, recipe, data


def metrics(argv: list[str], out: Path) -> dict:
    assert main([*argv, "-o", str(out)]) == 0
    return json.loads((out / "report.json").read_text())["model"]["metrics"]


def test_tensorrt_run_script(tmp_path: Path, setup) -> None:
    root, model, recipe, data = setup
    build = tmp_path / "trt"
    assert main(["compile", str(model), "--target", "tensorrt", "--recipe", str(recipe), "-o", str(build)]) == 0
    run_sh = (build / "run.sh").read_text()
    assert run_sh.startswith("#!/usr/bin/env bash") and "command -v trtexec" in run_sh
    assert parse_steps(run_sh)[-1] == ["exec", "python3", "run_device.py", "$@"]
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "trtexec").write_text(FAKE_TRTEXEC.format(python=sys.executable))
    (bindir / "trtexec").chmod(0o755)
    env = os.environ | {"PATH": f"{bindir}:{os.environ['PATH']}"}
    outs = tmp_path / "outs"
    proc = subprocess.run(
        ["bash", str(build / "run.sh"), str(data), str(outs)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.suffix for p in outs.iterdir()) == [".json", ".json"]
    compiled = next(build.glob("*.onnx"))
    base = ["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe)]
    ref = metrics(base, tmp_path / "e1")
    dev = metrics(["evaluate", str(compiled), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe),
                   "--from-outputs", str(outs)], tmp_path / "e2")
    assert dev == ref and ref["miou"] > 50


def test_ascend_run_script(tmp_path: Path, setup) -> None:
    root, model, recipe, data = setup
    build = tmp_path / "om"
    assert main(["compile", str(model), "--target", "ascend", "--recipe", str(recipe), "-o", str(build)]) == 0
    fake = tmp_path / "py" / "ais_bench"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(FAKE_AIS_BENCH)
    env = os.environ | {
        "PYTHONPATH": str(tmp_path / "py"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    om = next(
        a[len("--output=") :] for a in parse_steps((build / "build.sh").read_text())[0] if a.startswith("--output=")
    )
    (build / f"{om}.onnx").write_bytes(next(build.glob("*.onnx")).read_bytes())  # the ".om" the fake runs
    outs = tmp_path / "outs" / "run1"
    proc = subprocess.run(
        ["bash", str(build / "run.sh"), str(data), str(outs)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert len(list(outs.glob("*_0.bin"))) == 2
    base = ["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe)]
    assert metrics([*base, "--from-outputs", str(outs)], tmp_path / "e2") == metrics(base, tmp_path / "e1")


def test_run_script_usage_and_missing_tool(tmp_path: Path, setup) -> None:
    _, model, recipe, _ = setup
    build = tmp_path / "trt"
    assert main(["compile", str(model), "--target", "tensorrt", "--recipe", str(recipe), "-o", str(build)]) == 0
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(build / "run.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 127 and "trtexec not found" in proc.stderr
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "trtexec").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "trtexec").chmod(0o755)
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    proc = subprocess.run(["bash", str(build / "run.sh"), str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "usage: run.sh DATA_DIR" in proc.stderr
