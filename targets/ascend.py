"""Huawei Ascend: ``atc`` commands that turn the verified ONNX model into ``.om`` files.

What the seed pipelines did by hand, and what this module decides for them:

* one static build per batch size (OCRNet: bs 1, 4, 8, 16; DeepLabv2: 1..64), each its own
  ``.om``, because a static ``.om`` is what runs fastest on the NPU;
* or one build for a shape range (DBNet: H, W in 640~4096) with ``--input_format=ND``. The
  range syntax depends on the CANN release: ranges inside ``--input_shape`` are documented from
  CANN 6.3 on; older releases only know ``--input_shape_range="x:[1,3,640~4096,...]"``, which
  newer ones deprecate. ``extra["cann"]`` picks (default: the newest syntax);
* ``--precision_mode`` from ``--precision``: fp16 is ``force_fp16``; fp32 is
  ``must_keep_origin_dtype`` where the chip's Cube unit computes fp32, but ``force_fp32`` on
  Ascend310/310B (fp16-only Cube) and for models with ``DeformableConv2D`` (its spec rejects
  float inputs under ``must_keep_origin_dtype``); int8 is refused: ATC does not quantise,
  AMCT does;
* ``--out_nodes="Conv_1380:0;..."`` when outputs were chosen but not pruned (3D_HRNet), mapped
  from tensor names to the *current* node names, never typed by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from segc.errors import SegcError
from segc.shapes import ShapeRange
from segc.targets.base import Artefact, BuildOptions, Target, Violation, register_target
from segc.targets.buildscript import Requirement, Step, relative_name, write_build_script
from segc.targets.legality import MODEL, check_model, load_profile

# --soc_version values ATC accepts (CANN docs: "Ascend310", "Ascend310P*", "Ascend910*",
# "Ascend310B*"; the full names as torch_npu's socVersionMap lists them).
KNOWN_SOCS: tuple[str, ...] = (
    "Ascend310",
    "Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4",
    "Ascend310P1", "Ascend310P2", "Ascend310P3", "Ascend310P4", "Ascend310P5", "Ascend310P7",
    "Ascend910", "Ascend910A", "Ascend910B", "Ascend910ProA", "Ascend910ProB", "Ascend910PremiumA",
    "Ascend910B1", "Ascend910B2", "Ascend910B2C", "Ascend910B3", "Ascend910B4",
)  # fmt: skip
DEFAULT_SOC = "Ascend310P3"

# CANN 6.3.RC2's ATC guide is the oldest we found documenting ranges in --input_shape;
# 6.0.1 and earlier document only --input_shape_range.
RANGE_IN_INPUT_SHAPE_SINCE = (6, 3)
NEWEST_CANN = (99, 0)

ATC_HINT = "install the CANN toolkit and run: source /usr/local/Ascend/ascend-toolkit/set_env.sh"
AMCT_HINT = (
    "ATC does not quantise: quantise the ONNX model with AMCT (Ascend Model Compression Toolkit, "
    "amct_onnx calibration) and build the result with --precision fp16"
)


def check_soc(soc: str | None) -> str:
    """The --soc_version to use; an unknown chip is a user error listing the known ones."""
    chosen = soc or DEFAULT_SOC
    if chosen not in KNOWN_SOCS:
        raise SegcError(f"unknown Ascend chip {chosen!r}; known: {', '.join(KNOWN_SOCS)}")
    return chosen


def fp16_only_cube(soc: str) -> bool:
    """Ascend310 (Atlas 200/300/500) and 310B (Atlas 200I/500 A2): no fp32 Cube, no shape ranges."""
    return soc == "Ascend310" or soc.startswith("Ascend310B")


def parse_cann_version(text: str | None) -> tuple[int, int]:
    """``"6.3.RC2"`` -> (6, 3); ``None`` -> the newest."""
    if not text:
        return NEWEST_CANN
    m = re.match(r"^\s*(\d+)\.(\d+)", str(text))
    if not m:
        raise SegcError(f"malformed CANN version {text!r}: expected e.g. 6.3.RC2, 7.0.0 or 8.0.RC3")
    return int(m.group(1)), int(m.group(2))


def has_deformable_conv(model: onnx.ModelProto) -> bool:
    return any(n.op_type == "DeformableConv2D" for n in model.graph.node)


def precision_mode(precision: str, soc: str, model: onnx.ModelProto) -> str:
    """ATC --precision_mode for segc's --precision (see the module docstring for why)."""
    if precision == "fp16":
        return "force_fp16"
    if precision == "int8":
        raise SegcError(f"ascend cannot build int8 from a float model: {AMCT_HINT}")
    if precision != "fp32":
        raise SegcError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if fp16_only_cube(soc) or has_deformable_conv(model):
        return "force_fp32"
    return "must_keep_origin_dtype"


def _static_range(name: str, dims: list[int]) -> ShapeRange:
    return ShapeRange(name, tuple(dims), tuple(dims), tuple(dims))


def input_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[ShapeRange]:
    """One range per real model input: from the build options, else the model's static shape."""
    init = {t.name for t in model.graph.initializer}
    given = {r.name: r for r in options.shape_ranges}
    ranges: list[ShapeRange] = []
    for value in model.graph.input:
        if value.name in init:
            continue
        if value.name in given:
            ranges.append(given[value.name])
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
        if not dims or any(d <= 0 for d in dims):
            raise SegcError(f"ascend needs a shape for input {value.name!r} (its dims are not all fixed): give --input-shape {value.name}:N,C,H,W")
        ranges.append(_static_range(value.name, dims))
    return ranges


def with_batch(ranges: list[ShapeRange], batch: int) -> list[ShapeRange]:
    """The same inputs with the batch dimension fixed to ``batch``."""
    out = []
    for r in ranges:
        lo, hi, opt = list(r.min), list(r.max), list(r.opt)
        lo[0] = hi[0] = opt[0] = batch
        out.append(ShapeRange(r.name, tuple(lo), tuple(hi), tuple(opt)))
    return out


def shape_flag(ranges: list[ShapeRange], cann: tuple[int, int]) -> str:
    """``--input_shape=...`` (static, or a range on CANN >= 6.3) or ``--input_shape_range=...``."""
    if all(r.is_static for r in ranges) or cann >= RANGE_IN_INPUT_SHAPE_SINCE:
        return "--input_shape=" + ";".join(r.atc() for r in ranges)
    parts = []
    for r in ranges:
        dims = [str(a) if a == b else f"{a}~{b}" for a, b in zip(r.min, r.max)]
        parts.append(f"{r.name}:[{','.join(dims)}]")
    return "--input_shape_range=" + ";".join(parts)


def out_nodes(model: onnx.ModelProto, outputs: list[str]) -> str:
    """ATC's ``node:index;...`` for chosen output tensors (or ``node:index`` given directly)."""
    producers = {out: (node, i) for node in model.graph.node for i, out in enumerate(node.output) if out}
    node_names = {n.name: n for n in model.graph.node if n.name}
    parts: list[str] = []
    for wanted in outputs:
        if wanted in producers:
            node, index = producers[wanted]
            if not node.name:
                raise SegcError(f"--out_nodes: the node producing {wanted!r} has no name; ATC selects outputs by node name")
            parts.append(f"{node.name}:{index}")
            continue
        name, _, index = wanted.rpartition(":")
        if name in node_names and index.isdigit() and int(index) < len(node_names[name].output):
            parts.append(wanted)
            continue
        raise SegcError(f"--out_nodes: {wanted!r} is neither a tensor nor NODE:INDEX of this model")
    return ";".join(parts)


def atc_steps(model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Step]:
    """One ``atc`` step per build (batch size, or the one range)."""
    soc = check_soc(options.soc)
    mode = precision_mode(options.precision, soc, model)
    cann = parse_cann_version(options.extra.get("cann"))
    ranges = input_ranges(model, options)
    name = Path(model_path).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    builds: list[tuple[str, list[ShapeRange]]]
    if options.batch_sizes:
        many = len(options.batch_sizes) > 1
        builds = [(f"{stem}_bs{b}" if many else stem, with_batch(ranges, b)) for b in options.batch_sizes]
    else:
        builds = [(stem, ranges)]
    tail = [f"--soc_version={soc}", f"--precision_mode={mode}", "--log=error"]
    if options.outputs:
        tail.append(f"--out_nodes={out_nodes(model, options.outputs)}")
    steps = []
    for output, shapes in builds:
        ranged = any(not r.is_static for r in shapes)
        if ranged and fp16_only_cube(soc):
            raise SegcError(f"{soc} cannot build for a shape range (ATC: not supported on Atlas 200/300/500 and 200I/500 A2); give static shapes or --batch")
        default_format = "ND" if ranged or any(len(r.min) != 4 for r in shapes) else "NCHW"
        fmt = str(options.extra.get("input_format") or default_format)
        argv = (
            "atc",
            "--framework=5",
            f"--model={relative_name(Path(model_path), outdir)}",
            f"--output={output}",
            f"--input_format={fmt}",
            shape_flag(shapes, cann),
            *tail,
        )
        what = "shape range " + ";".join(r.atc() for r in shapes) if ranged else "static shape " + ";".join(r.atc() for r in shapes)
        steps.append(Step(argv, comment=f"{output}.om: {what}"))
    return steps


@register_target
class AscendTarget(Target):
    """Huawei Ascend NPUs through ATC (CANN)."""

    name = "ascend"
    description = "Huawei Ascend NPU: atc commands producing .om files"
    default_passes = ("simplify", "cleanup")

    def validate_options(self, options: BuildOptions) -> None:
        check_soc(options.soc)
        parse_cann_version(options.extra.get("cann"))
        if options.precision == "int8":
            raise SegcError(f"ascend cannot build int8 from a float model: {AMCT_HINT}")

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        soc = check_soc(options.soc)
        precision_mode(options.precision, soc, model)  # int8 / unknown precision: user error now
        found = check_model(model, load_profile(self.name), options)
        if fp16_only_cube(soc) and any(not r.is_static for r in options.shape_ranges):
            found.append(Violation(MODEL, "input", f"{soc} cannot build for a shape range (ATC: ranges unsupported on Atlas 200/300/500 and 200I/500 A2)"))
        return found

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        outdir = Path(outdir)
        steps = atc_steps(model, Path(model_path), outdir, options)
        notes = [f"chip {check_soc(options.soc)}, CANN syntax for {options.extra.get('cann') or 'the newest CANN'}"]
        script = write_build_script(outdir, options, [Requirement("atc", ATC_HINT)], steps, title="Ascend ATC build", notes=notes)
        return [script]
