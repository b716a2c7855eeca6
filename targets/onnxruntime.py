"""The onnxruntime target: a portable ONNX model, an ORT-optimised copy, and a smoke build.

This is the target every machine can build, so it is also how the core pipeline is tested.
It writes:

* ``OUT/<stem>.onnxruntime.onnx`` (saved by the caller): the verified model;
* ``OUT/<stem>.onnxruntime.opt.onnx``: the same model after onnxruntime's *basic* graph
  optimisations (constant folding, redundant-node elimination). Basic, not extended/all,
  because the higher levels write fused, CPU-specific kernels into the file that another
  machine's provider may not have; the basic output stays a standard ONNX model;
* ``OUT/build.sh``: checks that onnxruntime is importable, loads the optimised model and runs
  it once on zeros, so "does it even load there" is one command on the deployment host.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from segc.errors import SegcError, first_line
from segc.modelio import PROTOBUF_LIMIT, weight_bytes
from segc.outdir import replacing
from segc.targets.base import Artefact, BuildOptions, Target, Violation, register_target
from segc.targets.buildscript import Requirement, Step, relative_name, write_build_script
from segc.targets.legality import check_model, load_profile

# Run by build.sh as ``python3 -c SMOKE_PROGRAM MODEL SHAPES_JSON``: load, feed zeros, run once.
# Dims the model leaves symbolic take the size from SHAPES_JSON (the build's shapes), else 1.
SMOKE_PROGRAM = """\
import json, sys
import numpy as np
import onnxruntime as ort
path, shapes = sys.argv[1], json.loads(sys.argv[2])
TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
         "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
         "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
feeds = {}
for i in sess.get_inputs():
    dims = shapes.get(i.name) or [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
    dtype = TYPES.get(i.type, "float32")
    feeds[i.name] = np.zeros(dims, dtype=dtype)
outs = sess.run(None, feeds)
for o, v in zip(sess.get_outputs(), outs):
    print(f"{o.name}: {v.dtype} {list(v.shape)}")
print(f"build.sh: {path} ran once on onnxruntime {ort.__version__}")
"""


def opt_model_path(model_path: Path) -> Path:
    """``X.onnxruntime.onnx`` -> ``X.onnxruntime.opt.onnx``."""
    name = model_path.name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    return model_path.with_name(f"{stem}.opt.onnx")


def smoke_shapes(options: BuildOptions) -> dict[str, list[int]]:
    """The shape each input is run at by build.sh: the optimisation shape of its range."""
    return {r.name: list(r.opt) for r in options.shape_ranges}


def write_optimised_copy(model: onnx.ModelProto, dest: Path) -> Path:
    """Let onnxruntime apply its basic (portable) graph optimisations and save the result.

    onnxruntime is imported here, not at module level: every compile loads every target's
    module (the command line lists them), and the import costs about 0.12 s of a compile
    for Ascend that never touches onnxruntime with ``--verify none``.
    """
    import onnxruntime as ort

    from segc.ortrun import inference_session

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    with replacing(dest) as tmp:  # onnxruntime writes the file itself: give it a fresh name
        opts.optimized_model_filepath = str(tmp)
        try:
            if weight_bytes(model) > PROTOBUF_LIMIT:  # over 2 GiB: onnxruntime writes the weights beside the copy
                opts.add_session_config_entry(
                    "session.optimized_model_external_initializers_file_name", f"{dest.name}.data"
                )
                opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            inference_session(model, opts)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = first_line(exc)
            raise SegcError(f"onnxruntime cannot load the model for optimisation: {first}") from None
    return dest


@register_target
class OnnxRuntimeTarget(Target):
    """onnxruntime on CPU: the reference every other target is compared with."""

    name = "onnxruntime"
    description = "onnxruntime (CPU): optimised ONNX copy and a smoke-test build.sh"
    default_passes = ("simplify", "cleanup")

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        return check_model(model, load_profile(self.name), options)

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        outdir = Path(outdir)
        opt_path = write_optimised_copy(model, opt_model_path(Path(model_path)))
        steps = [
            Step(
                (
                    "python3",
                    "-c",
                    SMOKE_PROGRAM,
                    relative_name(opt_path, outdir),
                    json.dumps(smoke_shapes(options), sort_keys=True),
                ),
                comment="load the optimised model and run it once on zeros",
            )
        ]
        needs = [
            Requirement("numpy", "pip install numpy", kind="python-module"),
            Requirement("onnxruntime", "pip install onnxruntime", kind="python-module"),
        ]
        script = write_build_script(outdir, options, needs, steps, title="onnxruntime smoke build")
        return [Artefact(path=opt_path, kind="model"), script]
