"""``run.sh``: the built model run on ``segc data``'s inputs, outputs where ``segc evaluate`` reads them.

The seed guides ended with a device run whose output files a second script scored. Each
vendor build therefore also gets ``run.sh DATA_DIR [OUT_DIR]`` (DATA_DIR written by
``segc data``, OUT_DIR default ``outputs/``), then::

    segc evaluate original.onnx --compare compiled.onnx --compare-outputs OUT_DIR --dataset ...

What it runs (run_device.py beside it, one file so the quoting stays Python's):

* Ascend: ``python3 -m ais_bench --model M.om --input DATA/bin --output .. --output_dirname OUT
  --outfmt BIN``; a shape-range model reads ``DATA/npy`` with ``--auto_set_dymshape_mode 1``
  (ais_bench takes each file's shape from the .npy header) and ``--outputSize``. Output files
  are ``<stem>_<index>.bin`` (ais_bench README, gitee.com/ascend/tools ais-bench_workload).
* TensorRT: ``trtexec --loadEngine=M.engine --loadInputs=<input>:DATA/bin/<stem>.bin
  --exportOutput=OUT/<stem>.json`` per file (``--shapes`` for a dynamic engine); segc
  evaluate reads trtexec's JSON export.
* MagicMind: a Python infer with the MagicMind runtime (Model.deserialize_from_file,
  create_i_engine, create_i_context, enqueue; as in Cambricon's samples, e.g. the
  dx111/mm_convert repository's tests/mm_infer.py), writing ``OUT/<stem>_<index>.npy``.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from segc.onnx_graph import real_input_names
from segc.outdir import write_text
from segc.targets.base import Artefact, BuildOptions
from segc.targets.buildscript import Requirement, render_script

PROGRAM_NAME = "run_device.py"

_PROGRAM = r'''"""Run the built model on `segc data` inputs (see run.sh); written by segc."""
import json
import subprocess
import sys
from pathlib import Path

SETTINGS = json.loads(__SETTINGS__)
TARGET, MODEL, INPUT, DYNAMIC = SETTINGS["target"], SETTINGS["model"], SETTINGS["input"], SETTINGS["dynamic"]

if len(sys.argv) < 2 or not (Path(sys.argv[1]) / "manifest.json").is_file():
    sys.exit("usage: run.sh DATA_DIR [OUT_DIR]  (DATA_DIR: the folder `segc data` wrote, with manifest.json)")
here = Path(__file__).resolve().parent
data = Path(sys.argv[1]).resolve()
out = Path(sys.argv[2] if len(sys.argv) > 2 else "outputs").resolve()
model = str(here / MODEL)
files = json.loads((data / "manifest.json").read_text())["files"]
out.mkdir(parents=True, exist_ok=True)


def run(argv):
    print("+ " + " ".join(argv), flush=True)
    subprocess.run(argv, check=True)


if TARGET == "ascend":
    argv = [sys.executable, "-m", "ais_bench", "--model", model, "--output", str(out.parent),
            "--output_dirname", out.name, "--outfmt", "BIN"]
    if DYNAMIC:
        run(argv + ["--input", str(data / "npy"), "--auto_set_dymshape_mode", "1",
                    "--outputSize", SETTINGS["output_size"]])
    else:
        run(argv + ["--input", str(data / "bin")])
elif TARGET == "tensorrt":
    for f in files:
        argv = ["trtexec", "--loadEngine=" + model, "--loadInputs=%s:%s" % (INPUT, data / "bin" / (f["stem"] + ".bin")),
                "--exportOutput=%s" % (out / (f["stem"] + ".json")), "--iterations=1", "--warmUp=0", "--duration=0",
                "--avgRuns=1"]
        if DYNAMIC:
            argv.append("--shapes=%s:%s" % (INPUT, "x".join(str(d) for d in f["shape"])))
        run(argv)
elif TARGET == "magicmind":
    import numpy as np
    import magicmind.python.runtime as mm

    dev = mm.Device()
    dev.id = 0
    assert dev.active().ok(), "no MLU device"
    queue = dev.create_queue()
    mm_model = mm.Model()
    mm_model.deserialize_from_file(model)
    config = mm.Model.EngineConfig()
    config.device_type = "MLU"
    context = mm_model.create_i_engine(config).create_i_context()
    inputs = context.create_inputs()
    for f in files:
        inputs[0].from_numpy(np.load(data / "npy" / (f["stem"] + ".npy")))
        outputs = []
        assert context.enqueue(inputs, outputs, queue).ok(), "enqueue failed"
        assert queue.sync().ok(), "sync failed"
        for i, o in enumerate(outputs):
            np.save(out / ("%s_%d.npy" % (f["stem"], i)), o.asnumpy())
print("outputs in %s: segc evaluate ... --from-outputs %s" % (out, out))
'''

_HINTS = {
    "ascend": Requirement("ais_bench", "install the ais_bench wheel (gitee.com/ascend/tools, ais-bench_workload)",
                          kind="python-module"),
    "tensorrt": Requirement("trtexec", "install TensorRT and put its bin/ on PATH"),
    "magicmind": Requirement("magicmind", "install the Cambricon MagicMind Python package", kind="python-module"),
}


def write_run_script(outdir: Path, options: BuildOptions, target: str, model_file: str,
                     model: onnx.ModelProto) -> list[Artefact]:
    """``run.sh`` + ``run_device.py`` for the built ``model_file`` (relative to ``outdir``)."""
    ranges = options.shape_ranges
    input_name = next(iter(real_input_names(model)), ranges[0].name if ranges else "input")
    dynamic = any(not r.is_static for r in ranges)
    biggest = max((_prod(r.max) for r in ranges), default=0)
    settings = {
        "target": target, "model": model_file, "input": input_name, "dynamic": dynamic,
        # ais_bench allocates this many bytes per output for a shape-range model: twice the
        # largest float32 input covers the seeds (DB: 1/3 of it; 19 logits at 1/4: 0.4)
        "output_size": str(max(1, biggest) * 4 * 2),
    }
    program = _PROGRAM.replace("__SETTINGS__", repr(json.dumps(settings)))
    outdir = Path(outdir)
    write_text(outdir / PROGRAM_NAME, program, executable=True)
    needs = [_HINTS[target]] + (
        [Requirement("numpy", "pip install numpy", kind="python-module")] if target == "magicmind" else []
    )
    text = render_script(
        options,
        needs,
        [],
        title=f"{target} run on `segc data` inputs (usage: ./run.sh DATA_DIR [OUT_DIR])",
        script_name="run.sh",
    )
    text += f'exec python3 {PROGRAM_NAME} "$@"\n'
    write_text(outdir / "run.sh", text, executable=True)
    return [Artefact(path=outdir / PROGRAM_NAME, kind="program"), Artefact(path=outdir / "run.sh", kind="script")]


def _prod(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= int(d)
    return n
