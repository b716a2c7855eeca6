"""Cambricon MagicMind: a Python build program on MagicMind's API, and an ``mm_run`` timing.

MagicMind has no command-line compiler for ONNX, so the build is a program, written the way
Cambricon's own OCRNet sample (seed 001) builds: ``Parser(ModelKind.kOnnx)`` into a
``Network``, a ``BuilderConfig`` filled with ``parse_from_string`` JSON (``archs``,
``precision_config.precision_mode``, ``graph_shape_mutable`` and ``dim_range`` for a shape or
batch range), int8 calibration over a folder of images (a ``CalibDataInterface`` subclass that
reads, resizes and normalises them with the recipe's constants), then
``Builder().build_model(...)`` and ``serialize_to_file`` into ``OUT/<stem>.mm``.

``build.sh`` checks for python3, the ``magicmind`` module and ``mm_run``, runs the program,
then times the model with ``mm_run --magicmind_model M.mm --input_dims ...`` as the seed did.
The program itself also says which module is missing (and exits 127) when run elsewhere.
"""

from __future__ import annotations

import pprint
from pathlib import Path
from typing import Any

import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs
from segc.recipe import RECIPE_METADATA_KEY, InputSpec, get_recipe
from segc.shapes import ShapeRange
from segc.targets.base import Artefact, BuildOptions, Target, Violation, register_target
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


def keep_fp32_line(options: BuildOptions) -> str | None:
    """What the MagicMind build does with ``emulate_fp16``'s keep-set (None when there is none).

    MagicMind's builder takes a whole-network ``precision_config.precision_mode``; segc found
    no per-layer precision setting in Cambricon's public samples (Cambricon/magicmind_cloud,
    e.g. buildin/nlp/SpeechSynthesis/tacotron2_onnx/data/jsons/builder_config.json: archs,
    graph_shape_mutable, precision_config.precision_mode, debug_config, opt_config, nothing
    per layer), so it cannot keep single layers in fp32. A
    force_float16 build would overflow where the emulation did; the build falls back to
    force_float32, and says so in build.sh and the report.
    """
    if options.precision != "fp16" or not options.fp32_layers:
        return None
    return (f"MagicMind has no per-layer precision segc can set: {len(options.fp32_layers)} layers must stay fp32 "
            f"({', '.join(options.fp32_layers[:8])}{', ...' if len(options.fp32_layers) > 8 else ''}), so this build is "
            f"force_float32 instead of force_float16")


def calibration_folder(options: BuildOptions) -> str:
    """The folder of int8 calibration images, which must exist (checked before any pass runs)."""
    raw = options.extra.get("calib_images")
    if not raw:
        raise SegcError("magicmind int8 (qint8_mixed_float16) needs calibration images: give --calib-images FOLDER")
    folder = Path(str(raw)).expanduser().resolve()
    if not folder.is_dir():
        raise SegcError(f"calibration image folder {str(raw)!r} does not exist")
    return str(folder)


def input_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[ShapeRange]:
    """One range per real input, widened to the batch range when one is given.

    The batch range comes from ``extra["batch_range"]`` (recipe: OCRNet 1..16) or from
    ``batch_sizes`` (min..max); a static input with neither is built static.
    """
    given = {r.name: r for r in options.shape_ranges}
    batch: tuple[int, int] | None = None
    if options.extra.get("batch_range"):
        lo, hi = (int(v) for v in options.extra["batch_range"])
        batch = (lo, hi)
    elif len(options.batch_sizes) > 1:
        batch = (min(options.batch_sizes), max(options.batch_sizes))
    ranges = []
    for value in real_inputs(model):
        if value.name in given:
            r = given[value.name]
        else:
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
            if not dims or any(d <= 0 for d in dims):
                raise SegcError(f"magicmind needs a shape for input {value.name!r} (its dims are not all fixed): give --input-shape")
            r = ShapeRange(value.name, tuple(dims), tuple(dims), tuple(dims))
        if batch is not None:
            lo, hi, opt = list(r.min), list(r.max), list(r.opt)
            lo[0], hi[0] = batch
            opt[0] = min(max(opt[0], batch[0]), batch[1])
            r = ShapeRange(r.name, tuple(lo), tuple(hi), tuple(opt))
        ranges.append(r)
    return ranges


def normalisation(model: onnx.ModelProto, options: BuildOptions, input_name: str) -> dict[str, Any]:
    """Calibration preprocessing constants: extra["normalisation"], else the model's recipe."""
    given = options.extra.get("normalisation")
    if given:
        spec = InputSpec(name=input_name, **dict(given))
    else:
        meta = {p.key: p.value for p in model.metadata_props}
        recipe_name = options.extra.get("recipe") or meta.get(RECIPE_METADATA_KEY)
        spec = None
        if recipe_name:
            spec = get_recipe(str(recipe_name)).input(input_name)
        if spec is None:
            raise SegcError("magicmind int8 calibration needs the input normalisation: use a model exported by segc (it names its recipe), --recipe, or extra['normalisation']")
    return {"mean": list(spec.mean), "std": list(spec.std), "pixel_scale": float(spec.pixel_scale), "channel_order": spec.channel_order.upper()}


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
{calib_line}and serialises {mm_name}. Runs only where MagicMind is installed.
"""

import glob
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
CALIB_DIR = {calib_dir!r}
CALIB_SAMPLES = {calib_samples!r}
# x = (pixels * pixel_scale / 255 - mean) / std, channels flipped first for BGR networks
NORMALISE = {normalise}
DEVICE_ID = {device_id!r}


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


def load_image(path, height, width):
    """One image as a float32 CHW array, normalised as the network expects."""
    try:
        from PIL import Image
    except ImportError:
        fail("python module PIL not found (pip install pillow)", 127)
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float32)
    chw = rgb.transpose(2, 0, 1)
    if NORMALISE["channel_order"] == "BGR":
        chw = chw[::-1]
    chw = chw * (NORMALISE["pixel_scale"] / 255.0)
    mean = np.asarray(NORMALISE["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(NORMALISE["std"], dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)


class CalibData(mm.CalibDataInterface):
    """Batches of calibration images at the input's optimisation shape (as the seed's CalibData)."""

    def __init__(self, shape, image_dir, max_samples):
        super().__init__()
        patterns = ("*.jpg", "*.jpeg", "*.png", "*.bmp")
        self.paths = sorted(p for pat in patterns for p in glob.glob(os.path.join(image_dir, pat)))
        if not self.paths:
            fail("no calibration images (jpg/png/bmp) in " + image_dir)
        self.shape = shape
        self.max_samples = min(max_samples, len(self.paths))
        self.index = 0
        self.sample = None

    def get_shape(self):
        return mm.Dims(self.shape)

    def get_data_type(self):
        return mm.DataType.FLOAT32

    def get_sample(self):
        return self.sample

    def next(self):
        batch, _, height, width = self.shape
        end = self.index + batch
        if end > self.max_samples:
            return mm.Status(mm.Code.OUT_OF_RANGE, "calibration data exhausted")
        images = [load_image(p, height, width) for p in self.paths[self.index:end]]
        self.sample = np.ascontiguousarray(np.stack(images))
        self.index = end
        return mm.Status.OK()

    def reset(self):
        self.index = 0
        self.sample = None
        return mm.Status.OK()


def main():
    if not os.path.isfile(ONNX_MODEL):
        fail("ONNX model not found: " + ONNX_MODEL)
    network = mm.Network()
    check(Parser(mm.ModelKind.kOnnx).parse(network, ONNX_MODEL), "parsing " + ONNX_MODEL)
    mutable = any(spec["min"] != spec["max"] for spec in INPUTS)
    if not mutable:
        for i, spec in enumerate(INPUTS):
            check(network.get_input(i).set_dimension(mm.Dims(spec["min"])), "setting the shape of " + spec["name"])
    config = mm.BuilderConfig()
    for piece in BUILDER_CONFIG:
        check(config.parse_from_string(json.dumps(piece)), "builder config " + json.dumps(piece))
    if PRECISION_MODE.startswith("qint"):
        if len(INPUTS) != 1:
            fail("calibration supports one image input, the model has " + str(len(INPUTS)))
        calib = CalibData(INPUTS[0]["opt"], CALIB_DIR, CALIB_SAMPLES)
        calibrator = mm.Calibrator([calib])
        check(calibrator.set_quantization_algorithm(mm.QuantizationAlgorithm.LINEAR_ALGORITHM), "choosing the quantisation algorithm")
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


def render_program(model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> tuple[str, Path, list[ShapeRange]]:
    """The build program's text, the .mm path it writes, and the input ranges it uses."""
    arch = check_arch(options.soc)
    mode = precision_mode(options.precision)
    if keep_fp32_line(options):
        mode = PRECISION_MODES["fp32"]
    ranges = input_ranges(model, options)
    name = Path(model_path).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    mm_path = Path(outdir) / f"{stem}.mm"
    calib_dir: str | None = None
    normalise: dict[str, Any] = {}
    if options.precision == "int8":
        calib_dir = calibration_folder(options)
        if len(ranges) != 1 or len(ranges[0].min) != 4:
            raise SegcError("magicmind int8 calibration supports one NCHW image input")
        normalise = normalisation(model, options, ranges[0].name)
    mutable = any(not r.is_static for r in ranges)
    text = PROGRAM.format(
        model_name=_doc_safe(stem),
        segc_version=options.segc_version or "unknown",
        sha256=options.input_sha256 or "unknown",
        command_line=_doc_safe(options.command_line or "unknown"),
        precision_mode=mode,
        shape_kind="shape range (graph_shape_mutable)" if mutable else "static shapes",
        calib_line="calibrates on the images in CALIB_DIR, " if calib_dir else "",
        mm_name=mm_path.name,
        onnx_rel=relative_name(Path(model_path), outdir),
        mm_rel=mm_path.name,
        config=pprint.pformat(builder_configs(arch, mode, ranges), width=100),
        inputs=pprint.pformat([{"name": r.name, "min": list(r.min), "opt": list(r.opt), "max": list(r.max)} for r in ranges], width=100),
        calib_dir=calib_dir,
        calib_samples=int(options.extra.get("calib_samples", 32)),
        normalise=pprint.pformat(normalise, width=100),
        device_id=int(options.extra.get("device_id", 0)),
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

    def validate_options(self, options: BuildOptions) -> None:
        check_arch(options.soc)
        precision_mode(options.precision)
        if options.precision == "int8":
            calibration_folder(options)

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        check_arch(options.soc)
        precision_mode(options.precision)
        return check_model(model, load_profile(self.name), options)

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        outdir = Path(outdir)
        text, mm_path, ranges = render_program(model, Path(model_path), outdir, options)
        program = outdir / PROGRAM_NAME
        write_text(program, text, executable=True)
        dims = [",".join(str(d) for d in r.opt) for r in ranges]
        steps = [
            Step(("python3", PROGRAM_NAME), comment="parse, configure, (calibrate,) build and serialise the .mm model"),
            Step(("mm_run", "--magicmind_model", relative_name(mm_path, outdir), "--input_dims", *dims, "--iterations", "1000"), comment="time it at the optimisation shape"),
        ]
        needs = [
            Requirement("magicmind", MAGICMIND_HINT, kind="python-module"),
            Requirement("numpy", "pip install numpy", kind="python-module"),
            Requirement("mm_run", MM_RUN_HINT),
        ]
        if options.precision == "int8":
            needs.append(Requirement("PIL", "pip install pillow", kind="python-module"))
        line = keep_fp32_line(options)
        script = write_build_script(outdir, options, needs, steps, title="Cambricon MagicMind build",
                                    notes=[line] if line else [])
        run = write_run_script(outdir, options, "magicmind", relative_name(mm_path, outdir), model)
        return [Artefact(path=program, kind="program"), script, *run]
