"""Cambricon MagicMind: a Python build program on MagicMind's API, and an ``mm_run`` timing.

MagicMind has no command-line compiler for ONNX, so the build is a program, written the way
Cambricon's own OCRNet sample (seed 001) builds: ``Parser(ModelKind.kOnnx)`` into a
``Network``, a ``BuilderConfig`` filled with ``parse_from_string`` JSON (``archs``,
``precision_config.precision_mode``, ``graph_shape_mutable`` and ``dim_range`` for a shape or
batch range), then ``Builder().build_model(...)`` and ``serialize_to_file`` into
``OUT/<stem>.mm``.

int8 (``qint8_mixed_float16``) calibrates on segc's calibration set, not on the image folder:
segc preprocesses ``--calib-images`` by the recipe and writes ``calib.npy`` (one image per row,
batch 1) into the build folder, and the program's ``CalibDataInterface`` subclass hands
``mm.Calibrator`` batches of those rows (``get_shape``/``get_data_type``/``get_sample``/
``next``/``reset``, ``OUT_OF_RANGE`` when exhausted), as Cambricon's samples feed it
preprocessed arrays (Cambricon/magicmind_cloud, buildin/python_common/common_calibrate.py and
buildin/cv/detection/mmdetection/gen_model/calibrator.py, whose ``CalibData`` takes
``sample_data``). So the device calibrates on exactly the inputs segc's int8 estimate used.

fp16 with layers kept fp32 (``emulate_fp16``'s keep-set): the build stays ``force_float16`` and
the program sets each kept node's float inputs (``node.set_precision(i, FLOAT32)``) and outputs
(``node.set_output_type(i, FLOAT32)``), found by name in
``network.get_all_nodes_in_network()`` (the per-node API of Cambricon/magicmind_cloud,
buildin/cv/detection/mmdetection/gen_model/gen_model.py, which keeps NMS/Sqrt/Mul in fp32 the
same way, matching ``get_node_name()`` against the exporter's ONNX node names such as
``Mul_123``). segc matches exact names; a kept name the parsed network lacks stops the build
with that name, rather than building an fp16 model that overflows.

``build.sh`` checks for python3, the ``magicmind`` module and ``mm_run``, runs the program,
then times the model with ``mm_run --magicmind_model M.mm --input_dims ...`` as the seed did.
The program itself also says which module is missing (and exits 127) when run elsewhere.
"""

from __future__ import annotations

import pprint
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs
from segc.shapes import ShapeRange
from segc.targets.base import (Artefact, BuildOptions, Target, TargetFlag, TargetOptions, Violation, own_options,
                               register_target)
from segc.outdir import write_text
from segc.targets.buildscript import Requirement, Step, relative_name, write_build_script
from segc.targets.runscript import write_run_script
from segc.targets.legality import check_model, load_profile

PRECISION_MODES = {"fp32": "force_float32", "fp16": "force_float16", "int8": "qint8_mixed_float16"}

# Default visible clusters per MLU architecture, as Cambricon's samples set them
# (buildin/python_common/model_process.py, DEFAULT_CLUSTER_NUM_4_EACH_ARCH).
ARCH_CLUSTERS: dict[str, list[int]] = {"mtp_372": [2, 6, 8], "tp_322": [1], "mtp_592": [1]}
DEFAULT_ARCH = "mtp_372"

MAGICMIND_HINT = "install Cambricon Neuware (CNToolkit) and the MagicMind Python wheel"
MM_RUN_HINT = "install MagicMind; mm_run ships in its bin/ folder"
PROGRAM_NAME = "build_magicmind.py"


def check_arch(soc: str | None) -> str:
    arch = soc or DEFAULT_ARCH
    if arch not in ARCH_CLUSTERS:
        raise SegcError(f"unknown MLU architecture {arch!r} for --soc; known: {', '.join(ARCH_CLUSTERS)}")
    return arch


def precision_mode(precision: str) -> str:
    if precision not in PRECISION_MODES:
        raise SegcError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    return PRECISION_MODES[precision]


@dataclass(frozen=True)
class MagicMindOptions(TargetOptions):
    """MagicMind's own settings: the MLU architecture built for and the MLU that calibrates."""

    arch: str = DEFAULT_ARCH  # --soc: BuilderConfig archs
    device_id: int = 0  # --device-id: the MLU int8 calibration runs on (as the samples' --device_id)


FLAGS = (
    TargetFlag("--soc", f"MLU architecture ({', '.join(ARCH_CLUSTERS)}; default {DEFAULT_ARCH})", metavar="CHIP"),
    TargetFlag("--device-id", "the MLU that runs int8 calibration in the build program (default 0)", kind="int",
               metavar="N"),
)


def magicmind_options(values: Mapping[str, Any]) -> MagicMindOptions:
    device = values.get("device_id")
    if device is not None and device < 0:
        raise SegcError(f"--device-id must be 0 or more, got {device}")
    return MagicMindOptions(arch=check_arch(values.get("soc")), device_id=0 if device is None else device)


CALIB_FILE = "calib.npy"  # segc.int8_calibration.NPY_FILE, written at batch 1


def input_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[ShapeRange]:
    """One range per real input, widened to the batch range when one is given.

    The batch range comes from ``batch_range`` (recipe: OCRNet 1..16) or from
    ``batch_sizes`` (min..max); a static input with neither is built static.
    """
    given = {r.name: r for r in options.shape_ranges}
    batch: tuple[int, int] | None = None
    if options.batch_range:
        batch = options.batch_range
    elif len(options.batch_sizes) > 1:
        batch = (min(options.batch_sizes), max(options.batch_sizes))
    ranges = []
    for value in real_inputs(model):
        if value.name in given:
            r = given[value.name]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
            if not dims or any(d <= 0 for d in dims):
                raise SegcError(
                    f"magicmind needs a shape for input {value.name!r} (its dims are not all fixed): give --input-shape"
                )
            r = ShapeRange(value.name, tuple(dims), tuple(dims), tuple(dims))
        if batch is not None:
            lo, hi, opt = list(r.min), list(r.max), list(r.opt)
            lo[0], hi[0] = batch
            opt[0] = min(max(opt[0], batch[0]), batch[1])
            r = ShapeRange(r.name, tuple(lo), tuple(hi), tuple(opt))
        ranges.append(r)
    return ranges


def builder_configs(arch: str, mode: str, ranges: list[ShapeRange]) -> list[dict[str, Any]]:
    """The JSON pieces given to ``BuilderConfig.parse_from_string``, one call each (as the seed)."""
    mutable = any(not r.is_static for r in ranges)
    pieces: list[dict[str, Any]] = [
        {"archs": [{arch: ARCH_CLUSTERS[arch]}]},
        # int64 tensors (the argmax label map) computed as int32 on the MLU, as the seed did
        {"opt_config": {"type64to32_conversion": True}},
        {"graph_shape_mutable": mutable},
    ]
    if mutable:
        pieces.append({"dim_range": {str(i): {"min": list(r.min), "max": list(r.max)} for i, r in enumerate(ranges)}})
    pieces.append({"precision_config": {"precision_mode": mode}})
    return pieces


PROGRAM = '''\
#!/usr/bin/env python3
"""MagicMind build for {model_name}, written by segc {segc_version}.

Input model sha256: {sha256}
Command line: {command_line}

Parses the ONNX model, configures the builder ({precision_mode}, {shape_kind}),
{keep_line}{calib_line}and serialises {mm_name}. Runs only where MagicMind is installed.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_MODEL = os.path.join(HERE, {onnx_rel!r})
MM_MODEL = os.path.join(HERE, {mm_rel!r})
MODEL_NAME = {model_name!r}
PRECISION_MODE = {precision_mode!r}
# one dict per parse_from_string call, in order
BUILDER_CONFIG = {config}
# per input: name, min / opt / max shape (opt is what calibration and mm_run use)
INPUTS = {inputs}
# segc's preprocessed calibration set: one image per row, each row of shape [1, C, H, W]
CALIB_FILE = {calib_file!r}
DEVICE_ID = {device_id!r}
# ONNX node names kept in fp32 in an fp16 build (segc's fp16 emulation overflows without them)
KEEP_FP32 = {keep_fp32}


def fail(message, status=1):
    print("{program}: " + message, file=sys.stderr)
    sys.exit(status)


try:
    import numpy as np
except ImportError:
    fail("python module numpy not found (pip install numpy)", 127)
try:
    import magicmind.python.runtime as mm
    from magicmind.python.runtime.parser import Parser
except ImportError:
    fail("python module magicmind not found ({magicmind_hint})", 127)


def check(status, what):
    if not status.ok():
        fail(what + " failed: " + str(status))


class CalibData(mm.CalibDataInterface):
    """Batches of segc's preprocessed calibration rows at the input's optimisation shape."""

    def __init__(self, shape, rows):
        super().__init__()
        self.shape = shape
        self.rows = rows
        self.index = 0
        self.sample = None

    def get_shape(self):
        return mm.Dims(self.shape)

    def get_data_type(self):
        return mm.DataType.FLOAT32

    def get_sample(self):
        return self.sample

    def next(self):
        end = self.index + self.shape[0]
        if end > len(self.rows):
            return mm.Status(mm.Code.OUT_OF_RANGE, "calibration data exhausted")
        self.sample = np.ascontiguousarray(np.concatenate(list(self.rows[self.index:end])), dtype=np.float32)
        self.index = end
        return mm.Status.OK()

    def reset(self):
        self.index = 0
        self.sample = None
        return mm.Status.OK()


def keep_fp32(network):
    """Float inputs and outputs of the KEEP_FP32 nodes in fp32; the rest follows PRECISION_MODE."""
    found = set()
    for node in network.get_all_nodes_in_network():
        name = node.get_node_name()
        if name not in KEEP_FP32:
            continue
        found.add(name)
        floats = (mm.DataType.FLOAT16, mm.DataType.FLOAT32)
        for i in range(node.get_input_count()):
            if node.get_input(i).get_data_type() in floats:
                check(node.set_precision(i, mm.DataType.FLOAT32), "fp32 input " + str(i) + " of " + name)
        for i in range(node.get_output_count()):
            if node.get_output(i).get_data_type() in floats:
                check(node.set_output_type(i, mm.DataType.FLOAT32), "fp32 output " + str(i) + " of " + name)
    missing = [name for name in KEEP_FP32 if name not in found]
    if missing:
        fail("nodes to keep in fp32 are not in the parsed network: " + ", ".join(missing))


def main():
    if not os.path.isfile(ONNX_MODEL):
        fail("ONNX model not found: " + ONNX_MODEL)
    network = mm.Network()
    check(Parser(mm.ModelKind.kOnnx).parse(network, ONNX_MODEL), "parsing " + ONNX_MODEL)
    mutable = any(spec["min"] != spec["max"] for spec in INPUTS)
    if not mutable:
        for i, spec in enumerate(INPUTS):
            check(network.get_input(i).set_dimension(mm.Dims(spec["min"])), "setting the shape of " + spec["name"])
    if KEEP_FP32:
        keep_fp32(network)
    config = mm.BuilderConfig()
    for piece in BUILDER_CONFIG:
        check(config.parse_from_string(json.dumps(piece)), "builder config " + json.dumps(piece))
    if PRECISION_MODE.startswith("qint"):
        if len(INPUTS) != 1:
            fail("calibration supports one image input, the model has " + str(len(INPUTS)))
        path = os.path.join(HERE, CALIB_FILE)
        if not os.path.isfile(path):
            fail("calibration set not found: " + path)
        rows = np.load(path, allow_pickle=False)
        if len(rows) < INPUTS[0]["opt"][0]:
            fail("calibration set has " + str(len(rows)) + " images, fewer than the batch " + str(INPUTS[0]["opt"][0]))
        calibrator = mm.Calibrator([CalibData(INPUTS[0]["opt"], rows)])
        check(
            calibrator.set_quantization_algorithm(mm.QuantizationAlgorithm.LINEAR_ALGORITHM),
            "choosing the quantisation algorithm",
        )
        with mm.System() as system:
            if DEVICE_ID >= system.device_count():
                fail("no MLU device " + str(DEVICE_ID) + " for calibration")
            device = mm.Device()
            device.id = DEVICE_ID
            check(device.active(), "activating MLU " + str(DEVICE_ID))
            check(calibrator.calibrate(network, config), "calibration")
    model = mm.Builder().build_model(MODEL_NAME, network, config)
    if model is None:
        fail("MagicMind could not build the model")
    check(model.serialize_to_file(MM_MODEL), "writing " + MM_MODEL)
    print("{program}: wrote " + MM_MODEL)


if __name__ == "__main__":
    main()
'''


def _doc_safe(text: str) -> str:
    """Text that can sit inside the program's docstring: one line, no quotes that end it."""
    return " ".join(text.split()).replace("\\", "/").replace('"""', "'''")


def render_program(
    model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions
) -> tuple[str, Path, list[ShapeRange]]:
    """The build program's text, the .mm path it writes, and the input ranges it uses."""
    own = own_options(options, MagicMindOptions)
    arch = check_arch(own.arch)
    mode = precision_mode(options.precision)
    keep = list(options.fp32_layers) if options.precision == "fp16" else []
    ranges = input_ranges(model, options)
    name = Path(model_path).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    mm_path = Path(outdir) / f"{stem}.mm"
    if options.precision == "int8" and (len(ranges) != 1 or len(ranges[0].min) != 4):
        raise SegcError("magicmind int8 calibration supports one NCHW image input")
    mutable = any(not r.is_static for r in ranges)
    text = PROGRAM.format(
        model_name=_doc_safe(stem),
        segc_version=options.segc_version or "unknown",
        sha256=options.input_sha256 or "unknown",
        command_line=_doc_safe(options.command_line or "unknown"),
        precision_mode=mode,
        shape_kind="shape range (graph_shape_mutable)" if mutable else "static shapes",
        keep_line=f"keeps {len(keep)} nodes in fp32 (KEEP_FP32), " if keep else "",
        calib_line=f"calibrates on segc's calibration set ({CALIB_FILE}), " if options.precision == "int8" else "",
        mm_name=mm_path.name,
        onnx_rel=relative_name(Path(model_path), outdir),
        mm_rel=mm_path.name,
        config=pprint.pformat(builder_configs(arch, mode, ranges), width=100),
        inputs=pprint.pformat(
            [{"name": r.name, "min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for r in ranges], width=100
        ),
        calib_file=CALIB_FILE if options.precision == "int8" else None,
        device_id=own.device_id,
        keep_fp32=pprint.pformat(keep, width=100),
        program=PROGRAM_NAME,
        magicmind_hint=MAGICMIND_HINT,
    )
    return text, mm_path, ranges


@register_target
class MagicMindTarget(Target):
    """Cambricon MLUs through MagicMind's Python builder API."""

    name = "magicmind"
    description = "Cambricon MagicMind: Python build program (.mm) and an mm_run timing"
    default_passes = ("simplify", "cleanup")
    flags = FLAGS

    def target_options(self, values: Mapping[str, Any]) -> MagicMindOptions:
        return magicmind_options(values)

    def validate_options(self, options: BuildOptions) -> None:
        check_arch(own_options(options, MagicMindOptions).arch)
        precision_mode(options.precision)
        if options.precision == "int8" and options.calib_images is None:
            raise SegcError("magicmind int8 (qint8_mixed_float16) needs calibration images: give --calib-images FOLDER")

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        check_arch(own_options(options, MagicMindOptions).arch)
        precision_mode(options.precision)
        return check_model(model, load_profile(self.name), options)

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        from segc.int8_calibration import emit_calibration

        outdir = Path(outdir)
        self.validate_options(options)
        text, mm_path, ranges = render_program(model, Path(model_path), outdir, options)
        calib: list[Artefact] = []
        notes: list[str] = []
        if options.precision == "int8":
            files = emit_calibration(model, outdir, options, formats=("npy",), batch=1)
            assert files is not None and files.npy_file == CALIB_FILE
            calib = [Artefact(outdir / files.npy_file, "data")]
            notes.append(
                f"int8: calibrates on {files.count} preprocessed images in {files.npy_file} "
                f"(batches of {ranges[0].opt[0]})"
            )
        if options.precision == "fp16" and options.fp32_layers:
            notes.append(
                f"{len(options.fp32_layers)} layers kept fp32 by the build program (KEEP_FP32: "
                f"set_precision / set_output_type), the rest force_float16"
            )
        program = outdir / PROGRAM_NAME
        write_text(program, text, executable=True)
        dims = [",".join(str(d) for d in r.opt) for r in ranges]
        steps = [
            Step(("python3", PROGRAM_NAME), comment="parse, configure, (calibrate,) build and serialise the .mm model"),
            Step(
                (
                    "mm_run",
                    "--magicmind_model",
                    relative_name(mm_path, outdir),
                    "--input_dims",
                    *dims,
                    "--iterations",
                    "1000",
                ),
                comment="time it at the optimisation shape",
            ),
        ]
        needs = [
            Requirement("magicmind", MAGICMIND_HINT, kind="python-module"),
            Requirement("numpy", "pip install numpy", kind="python-module"),
            Requirement("mm_run", MM_RUN_HINT),
        ]
        script = write_build_script(outdir, options, needs, steps, title="Cambricon MagicMind build", notes=notes)
        run = write_run_script(outdir, options, "magicmind", relative_name(mm_path, outdir), model)
        return [Artefact(path=program, kind="program"), *calib, script, *run]
