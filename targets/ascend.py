"""Huawei Ascend: ``atc`` commands that turn the verified ONNX model into ``.om`` files.

What the seed pipelines did by hand, and what this module decides for them:

* one static build per batch size (OCRNet: bs 1, 4, 8, 16; DeepLabv2: 1..64), each its own
  ``.om``, because a static ``.om`` is what runs fastest on the NPU;
* or one build for a shape range (DBNet: H, W in 640~4096) with ``--input_format=ND``. The
  range syntax depends on the CANN release: ranges inside ``--input_shape`` are documented from
  CANN 6.3 on; older releases only know ``--input_shape_range="x:[1,3,640~4096,...]"``, which
  newer ones deprecate. ``--cann-version`` picks (default: the newest syntax);
* ``--precision_mode`` from ``--precision``: fp16 is ``force_fp16``; fp32 is
  ``must_keep_origin_dtype`` where the chip's Cube unit computes fp32, but ``force_fp32`` on
  Ascend310/310B (fp16-only Cube) and for models with ``DeformableConv2D`` (its spec rejects
  float inputs under ``must_keep_origin_dtype``); int8: ATC does not quantise, AMCT does, so
  with ``--calib-images`` build.sh runs ``amct_onnx calibration`` on segc's preprocessed
  calibration files first and atc builds AMCT's deploy model (``amct_calibration``); without
  them int8 is refused;
* fp16 with layers kept fp32 (``emulate_fp16``'s keep-set): ``--keep_dtype=keep_dtype.cfg``
  beside ``--precision_mode=force_fp16``, the file listing one ONNX node name per line; ATC
  keeps those operators in the original model's precision (fp32) and converts the rest
  (CANN ATC guide, --keep_dtype:
  https://www.hiascend.com/document/detail/en/canncommercial/850/devaids/atctool/atlasatcparam_16_0074.html;
  it does not apply under ``must_keep_origin_dtype``/``origin``, so it is only written for fp16);
* ``--out_nodes="Conv_1380:0;..."`` when outputs were chosen but not pruned (3D_HRNet), mapped
  from tensor names to the *current* node names, never typed by hand;
* how a shape range is built (``choose_route``): as one ranged ``.om`` when every Resize has
  constant parameters (folded by ``fold_resize_scales``, on a ``/M`` grid if the range has one:
  the build script then says that H, W must be multiples of M, which ATC itself cannot
  express); otherwise as *gears*. ATC wants Resize scales/sizes constant, and a Resize to
  another tensor's size (FPN, UPerNet, HRNet heads) has a constant ratio only when the sizes
  divide exactly. A gear is a static shape, so ATC folds each gear's sizes itself:
  ``--input_shape=x:1,3,-1,-1 --dynamic_image_size="512,512;1024,1024"`` (H, W vary),
  ``--dynamic_batch_size="1,2,4"`` (the batch varies), or ``--dynamic_dims`` with
  ``--input_format=ND`` for anything else; 2 to 100 gears each (CANN ATC guide:
  https://www.hiascend.com/document/detail/en/canncommercial/850/devaids/atctool/atlasatcparam_16_0019.html
  for --dynamic_image_size,
  https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatcparam_16_0020.html
  for --dynamic_dims, which also names the three as mutually exclusive). segc picks up to 4
  sizes per varying dim on the model's stride grid (min, max, the chosen optimum, geometric
  steps between), and the report says which route was taken and why.
"""

from __future__ import annotations

import enum
import itertools
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs
from segc.outdir import write_text
from segc.shapes import ShapeRange
from segc.targets.base import (Artefact, BuildOptions, Target, TargetFlag, TargetOptions, Violation, own_options,
                               register_target)
from segc.targets.buildscript import Requirement, Step, relative_name, write_build_script
from segc.targets.runscript import write_run_script
from segc.targets.legality import MODEL, RESIZE_FOLD_FIX, check_model, load_profile

BROADCAST_FIX = "resize_broadcast"

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
KEEP_DTYPE_FILE = "keep_dtype.cfg"  # --keep_dtype: the ONNX node names kept fp32, one a line

# CANN 6.3.RC2's ATC guide is the oldest we found documenting ranges in --input_shape;
# 6.0.1 and earlier document only --input_shape_range.
RANGE_IN_INPUT_SHAPE_SINCE = (6, 3)
NEWEST_CANN = (99, 0)

ATC_HINT = "install the CANN toolkit and run: source /usr/local/Ascend/ascend-toolkit/set_env.sh"
AMCT_TOOL_HINT = "install AMCT for ONNX (the amct_onnx package shipped with the CANN toolkit)"
AMCT_HINT = (
    "ATC does not quantise: quantise the ONNX model with AMCT (Ascend Model Compression Toolkit, "
    "amct_onnx calibration) and build the result with --precision fp16"
)


# ATC --input_format for an ONNX model (NHWC and NDHWC are TensorFlow's only), CANN ATC guide:
# https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatcparam_16_0015.html
INPUT_FORMATS = ("NCHW", "NCDHW", "ND")


@dataclass(frozen=True)
class AscendOptions(TargetOptions):
    """Ascend's own settings: the chip, the CANN release the commands are written for, the
    input format, and (decided by ``check``, for emit and the report) how shapes are built."""

    soc: str = DEFAULT_SOC  # --soc: ATC --soc_version
    cann_version: str | None = None  # --cann-version: None writes the newest syntax
    input_format: str | None = None  # --input-format: None lets segc choose (NCHW, ND for ranges)
    shape_route: str | None = None  # set by AscendTarget.check: static, range or gears, and why


FLAGS = (
    TargetFlag("--soc", f"Ascend chip, ATC --soc_version (default {DEFAULT_SOC})", metavar="CHIP"),
    TargetFlag("--cann-version", "CANN release the ATC commands are written for, e.g. 6.3.RC2 (default: newest)",
               metavar="VERSION"),
    TargetFlag("--input-format", f"ATC --input_format: {', '.join(INPUT_FORMATS)} (default NCHW, ND for shape "
               "ranges and non-4D inputs)", metavar="FORMAT"),
)


def ascend_options(values: Mapping[str, Any]) -> AscendOptions:
    """Checked now, before any pass: an unknown chip or a malformed CANN version is a usage error."""
    soc = check_soc(values.get("soc"))
    cann = values.get("cann_version")
    parse_cann_version(cann)
    fmt = values.get("input_format")
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise SegcError(f"--input-format {fmt}: ATC takes {', '.join(INPUT_FORMATS[:-1])} or {INPUT_FORMATS[-1]} "
                        "for an ONNX model")
    return AscendOptions(soc=soc, cann_version=cann, input_format=fmt)


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
        return "force_fp16"  # on AMCT's quantised model: int8 where AMCT quantised, fp16 elsewhere
    if precision != "fp32":
        raise SegcError(f"unknown precision {precision!r}; use fp32, fp16 or int8")
    if fp16_only_cube(soc) or has_deformable_conv(model):
        return "force_fp32"
    return "must_keep_origin_dtype"


def _static_range(name: str, dims: list[int]) -> ShapeRange:
    return ShapeRange(name, tuple(dims), tuple(dims), tuple(dims))


def input_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[ShapeRange]:
    """One range per real model input: from the build options, else the model's static shape."""
    given = {r.name: r for r in options.shape_ranges}
    ranges: list[ShapeRange] = []
    for value in real_inputs(model):
        if value.name in given:
            ranges.append(given[value.name])
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]
        unknown_rank = not value.type.tensor_type.HasField("shape")  # a scalar has a shape with no dims
        if unknown_rank or any(d <= 0 for d in dims):
            raise SegcError(
                f"ascend needs a shape for input {value.name!r} (its dims are not all fixed): give --input-shape "
                f"{value.name}:N,C,H,W"
            )
        ranges.append(_static_range(value.name, dims))
    return ranges


def with_batch(ranges: list[ShapeRange], batch: int) -> list[ShapeRange]:
    """The same inputs with the batch dimension fixed to ``batch``."""
    out = []
    for r in ranges:
        if not r.min:  # a scalar has no batch dimension
            out.append(r)
            continue
        lo, hi, opt = list(r.min), list(r.max), list(r.opt)
        lo[0] = hi[0] = opt[0] = batch
        out.append(replace(r, min=tuple(lo), max=tuple(hi), opt=tuple(opt)))
    return out


def shape_flag(ranges: list[ShapeRange], cann: tuple[int, int]) -> tuple[str, ...]:
    """``--input_shape=...`` (static, or a range on CANN >= 6.3) or ``--input_shape_range=...``;
    no flag at all when nothing is left to say.

    Scalar inputs are left out: ATC's guide calls their entry optional outside a gear build
    (CANN 7.0: "no need to configure --input_shape for a scalar input"; 8.0 allows an empty
    ``name:``), and a static model needs no --input_shape at all, so a model whose inputs are
    all scalars, or that has none, gets no flag rather than a bare ``--input_shape=x:`` or
    ``--input_shape=``. (A gear build must name its scalars, as ``B:``: see plan_gears.)
    https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatcparam_16_0016.html
    https://hiascend.com/document/detail/zh/canncommercial/700/inferapplicationdev/atctool/atlasatc_16_0050.html
    """
    shaped = [r for r in ranges if r.min]
    if not shaped:
        return ()
    if all(r.is_static for r in shaped) or cann >= RANGE_IN_INPUT_SHAPE_SINCE:
        return ("--input_shape=" + ";".join(r.vendor_atc() for r in shaped),)
    parts = []
    for r in shaped:
        dims = [str(a) if a == b else f"{a}~{b}" for a, b in zip(r.min, r.max, strict=False)]
        parts.append(f"{r.name}:[{','.join(dims)}]")
    return ("--input_shape_range=" + ";".join(parts),)


def out_nodes(model: onnx.ModelProto, outputs: list[str]) -> str:
    """ATC's ``node:index;...`` for chosen output tensors (or ``node:index`` given directly)."""
    producers = {out: (node, i) for node in model.graph.node for i, out in enumerate(node.output) if out}
    node_names = {n.name: n for n in model.graph.node if n.name}
    parts: list[str] = []
    for wanted in outputs:
        if wanted in producers:
            node, index = producers[wanted]
            if not node.name:
                raise SegcError(
                    f"--out_nodes: the node producing {wanted!r} has no name; ATC selects outputs by node name"
                )
            parts.append(f"{node.name}:{index}")
            continue
        name, _, slot = wanted.rpartition(":")
        if name in node_names and slot.isdigit() and int(slot) < len(node_names[name].output):
            parts.append(wanted)
            continue
        raise SegcError(f"--out_nodes: {wanted!r} is neither a tensor nor NODE:INDEX of this model")
    return ";".join(parts)


class RouteKind(str, enum.Enum):
    """How a build covers its input shapes."""

    STATIC = "static"  # one shape per build (per batch size)
    RANGE = "range"  # one ranged .om: every Resize parameter is a constant
    GEARS = "gears"  # static gears: some Resize takes its sizes from shapes at run time


@dataclass(frozen=True)
class ShapeRoute:
    """The route and, for the report, why (with the Resizes that forced gears)."""

    kind: RouteKind
    reason: str
    resizes: tuple[str, ...] = ()  # gears: the Resizes no pass can make constant
    broadcasts: tuple[str, ...] = ()  # Resizes of a 1x1 map, fixed by resize_broadcast

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.reason}"


def runtime_resizes(violations: list[Violation]) -> list[Violation]:
    """The violations that say a Resize's scales/sizes are computed at run time."""
    return [v for v in violations if v.op in ("Resize", "Upsample") and v.fixed_by == RESIZE_FOLD_FIX]


def choose_route(model: onnx.ModelProto, options: BuildOptions, violations: list[Violation] | None = None,
                 explain: bool = False) -> ShapeRoute:
    """Ranged ``.om`` when every Resize is constant, else gears (see the module docstring).

    ``explain`` adds, for gears, whether a stride grid would have made the ranged build
    possible (an analysis of the whole graph, so only when the report is written)."""
    ranges = input_ranges(model, options)
    if all(r.is_static for r in ranges):
        return ShapeRoute(RouteKind.STATIC, "every input has one shape per build")
    found = runtime_resizes(check_model(model, load_profile("ascend"), options) if violations is None else violations)
    shown = ";".join(r.atc() for r in ranges if not r.is_static)
    unprovable, broadcasts = _classify(model, ranges, found) if found else ([], [])
    if not unprovable:
        grid = "; ".join(r.multiples_text() for r in ranges if r.has_multiples)
        what = (
            "every Resize has constant parameters"
            if not found
            else "every run-time Resize can be made constant (its violation names the pass)"
        )
        return ShapeRoute(
            RouteKind.RANGE, f"{what} over {shown}" + (f" ({grid})" if grid else ""), broadcasts=tuple(broadcasts)
        )
    names = tuple(v.node for v in unprovable)
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    reason = (f"Resize {listed} take their sizes from tensor shapes at run time, not provably constant over {shown}; "
              "ATC needs them constant and folds them itself on each static gear")
    if explain:
        reason += _grid_hint(model, ranges)
    return ShapeRoute(RouteKind.GEARS, reason, names)


def _classify(
    model: onnx.ModelProto, ranges: list[ShapeRange], found: list[Violation]
) -> tuple[list[Violation], list[str]]:
    """Split the run-time Resize violations: those no pass can make constant over ``ranges``
    (not ``fold_resize_scales``, whose proof fails, on the range's grid if it has one; not
    ``resize_broadcast``, the input is not 1x1), and the names of 1x1 broadcasts, whose
    violation must name ``resize_broadcast``: an error never names a fix that has said it
    cannot apply. The rest fold with ``fold_resize_scales``, which their violation names."""
    from segc.gs_import import import_graph

    from segc.passes._shape_expr import ShapeAnalysis
    from segc.passes.fold_resize_scales import divisible_dims, resize_fold
    from segc.passes.resize_broadcast import broadcast_shape

    graph = import_graph(model)
    by_name = {(n.name or (f"<{n.outputs[0].name}>" if n.outputs else "")): n for n in graph.nodes}
    analysis = ShapeAnalysis(graph, divisible_dims(graph, ranges)).run()
    left: list[Violation] = []
    broadcasts: list[str] = []
    for v in found:
        node = by_name.get(v.node)
        if node is None:
            left.append(v)
            continue
        if resize_fold(node, analysis) is not None:
            continue
        if broadcast_shape(node, analysis) is not None:
            broadcasts.append(v.node)
            continue
        left.append(v)
    return left, broadcasts


def _static_build_fixes_symbolic_dims(model: onnx.ModelProto, options: BuildOptions) -> bool:
    """Whether the graph still has symbolic input dims that the build's static shapes fix.

    Then ``fix_input_shapes`` gives them numbers and every shape chain becomes constants for
    ``simplify``, whatever segc's symbolic analysis can read (DPT's Cast/Pow square root): the
    run-time Resize keeps ``fold_resize_scales`` as its fix, and the final check judges the
    folded graph.
    """
    static = {r.name for r in options.shape_ranges if r.is_static}
    symbolic = [vi.name for vi in real_inputs(model)
                if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim)]
    return bool(symbolic) and all(name in static for name in symbolic)


def _reaim_static(model: onnx.ModelProto, options: BuildOptions, found: list[Violation]) -> list[Violation]:
    """Without a range: a run-time Resize that no pass can prove constant names no pass, but
    the way out (a range: gears, or a /M grid where the stride makes it fold)."""
    runtime = runtime_resizes(found)
    unprovable, broadcasts = _classify(model, list(options.shape_ranges), runtime)
    stuck = {id(v) for v in unprovable}
    hint = _grid_hint(model, list(options.shape_ranges)) if stuck else ""
    out = []
    for v in found:
        if id(v) in stuck:
            v = replace(v, fixed_by=None, reason=v.reason + "; fold_resize_scales cannot prove them constant for every "
                        "input size: give --input-shape with a range and segc builds ATC gears" + hint)
        elif v in runtime and v.node in broadcasts:
            v = replace(v, fixed_by=BROADCAST_FIX)
        out.append(v)
    return out


def _grid_hint(model: onnx.ModelProto, ranges: list[ShapeRange]) -> str:
    from segc.gs_import import import_graph

    from segc.passes.fold_resize_scales import stride_hint

    graph = import_graph(model)
    nodes = [n for n in graph.nodes if n.op in ("Resize", "Upsample")]
    return stride_hint(graph, nodes, ranges).replace("it folds", "they fold").replace(
        "give --input-shape", "for one ranged build instead, give --input-shape")


MAX_GEARS = 100  # ATC: "(1, 100]" gears
GEARS_PER_DIM = 4  # "three to four profiles are recommended" (same pages)


def _grid(model: onnx.ModelProto) -> int:
    """The spatial grid for gears: the model's total stride (32 when it has none to find)."""
    from segc.gs_import import import_graph

    from segc.passes._shape_stride import total_stride

    stride = total_stride(import_graph(model))
    return stride if stride and stride > 1 else 32


def dim_gears(lo: int, hi: int, step: int, opt: int | None, count: int) -> list[int]:
    """Up to ``count`` sizes in [lo, hi] on the ``step`` grid: both ends, the optimum, and
    geometric steps between (sizes matter by ratio: 512 and 1024 are as far as 1024 and 2048)."""
    a = -(-lo // step) * step
    b = (hi // step) * step
    if a > b:
        return sorted({lo, hi})  # no grid point inside: the bounds themselves
    values = {a, b}
    if opt is not None:
        values.add(min(b, max(a, round(opt / step) * step)))
    i = 1
    while len(values) < count and i < count:
        v = a * (b / a) ** (i / (count - 1))
        values.add(min(b, max(a, round(v / step) * step)))
        i += 1
    return sorted(values)


@dataclass(frozen=True)
class GearPlan:
    """ATC's gear flags for one build: ``--input_shape`` with -1s, the gear flag, the format."""

    input_shape: str
    gear_flag: str
    input_format: str
    gears: tuple[tuple[int, ...], ...]


def plan_gears(ranges: list[ShapeRange], grid: int) -> GearPlan | None:
    """Gears for the ranged dims of ``ranges`` (None when the range holds only one point)."""
    slots: list[tuple[ShapeRange, int]] = [(r, a) for r in ranges for a in r.dynamic_axes]
    for count in (GEARS_PER_DIM, 3, 2):
        per_dim = []
        for r, axis in slots:
            step = r.step(axis) if r.step(axis) > 1 else (grid if axis >= 2 else 1)
            per_dim.append(dim_gears(r.min[axis], r.max[axis], step, r.opt[axis] if r.opt_given else None, count))
        total = math.prod(len(v) for v in per_dim)
        if total <= MAX_GEARS:
            break
    else:
        raise SegcError(
            f"ascend: the shape range needs more than {MAX_GEARS} gears even at 2 sizes per dim; give fewer varying "
            "dims"
        )
    gears = tuple(itertools.product(*per_dim))
    if len(gears) < 2:
        return None
    shapes = []
    for r in ranges:
        dims = ["-1" if a in r.dynamic_axes else str(d) for a, d in enumerate(r.min)]
        shapes.append(f"{r.name}:{','.join(dims)}")
    input_shape = "--input_shape=" + ";".join(shapes)
    axes = {(r.name, a) for r, a in slots}
    ranged = [r for r in ranges if not r.is_static]
    text = ";".join(",".join(str(v) for v in g) for g in gears)
    if all(a == 0 for _, a in axes) and len({(r.min[0], r.max[0]) for r in ranged}) == 1:
        batches = sorted({g[0] for g in gears})
        return GearPlan(input_shape, f"--dynamic_batch_size={','.join(str(b) for b in batches)}",
                        "NCHW" if all(len(r.min) == 4 for r in ranges) else "ND", tuple((b,) for b in batches))
    if len(ranged) == 1 and len(ranged[0].min) == 4 and set(ranged[0].dynamic_axes) == {2, 3}:
        return GearPlan(input_shape, f"--dynamic_image_size={text}", "NCHW", gears)
    return GearPlan(input_shape, f"--dynamic_dims={text}", "ND", gears)


def atc_steps(model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions,
              atc_model: Path | None = None) -> list[Step]:
    """One ``atc`` step per build (batch size, or the one range); ``atc_model``: the file atc
    reads when it is not ``model_path`` (AMCT's deploy model, for int8)."""
    own = own_options(options, AscendOptions)
    soc = check_soc(own.soc)
    mode = precision_mode(options.precision, soc, model)
    cann = parse_cann_version(own.cann_version)
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
    if options.precision == "fp16" and options.fp32_layers:
        tail.insert(2, f"--keep_dtype={KEEP_DTYPE_FILE}")
    if options.outputs:
        tail.append(f"--out_nodes={out_nodes(model, options.outputs)}")
    route = choose_route(model, options)
    grid = _grid(model) if route.kind is RouteKind.GEARS else 32
    steps = []
    for output, shapes in builds:
        ranged = any(not r.is_static for r in shapes)
        gears = plan_gears(shapes, grid) if ranged and route.kind is RouteKind.GEARS else None
        if ranged and gears is None and fp16_only_cube(soc):
            raise SegcError(
                f"{soc} cannot build for a shape range (ATC: not supported on Atlas 200/300/500 and 200I/500 A2); "
                "give static shapes or --batch"
            )
        if gears is not None:
            fmt = own.input_format or gears.input_format
            flags: tuple[str, ...] = (f"--input_format={fmt}", gears.input_shape, gears.gear_flag)
            what = (f"{len(gears.gears)} static gears of " + ";".join(r.vendor_atc() for r in shapes)
                    + "; at run time the input must have one of the gear shapes (pad or resize to one)")
        else:
            default_format = "ND" if ranged or any(len(r.min) != 4 for r in shapes) else "NCHW"
            fmt = own.input_format or default_format
            flags = (f"--input_format={fmt}", *shape_flag(shapes, cann))
            what = (
                "shape range " + ";".join(r.vendor_atc() for r in shapes)
                if ranged
                else "static shape " + ";".join(r.vendor_atc() for r in shapes)
            )
            grid_text = "; ".join(r.multiples_text() for r in shapes if r.has_multiples)
            if ranged and grid_text:
                what += f"; {grid_text} (the Resizes were folded for those sizes only: ATC cannot check it)"
        argv = (
            "atc",
            "--framework=5",
            f"--model={relative_name(Path(atc_model or model_path), outdir)}",
            f"--output={output}",
            *flags,
            *tail,
        )
        steps.append(Step(argv, comment=f"{output}.om: {what}"))
    return steps


def amct_calibration(model: onnx.ModelProto, model_path: Path, outdir: Path,
                     options: BuildOptions) -> tuple[list[Step], list[Artefact], Path]:
    """int8: AMCT quantises the ONNX model on segc's calibration files, ATC builds the result.

    ``amct_onnx calibration --model M --save_path amct/M --input_shape x:1,3,H,W --data_dir
    calib_bin --data_types float32`` (CANN AMCT guide, command-line options:
    https://www.hiascend.com/document/detail/en/canncommercial/850/devaids/amct/atlasamct_16_0336.html)
    writes ``amct/M_deploy_model.onnx`` (AMCT's ``<save_path>_deploy_model.onnx`` naming),
    which the atc steps then build. Returns the steps, the files and the model atc reads.
    """
    from segc.int8_calibration import BIN_PATTERN, gather_bins_argv, emit_calibration

    files = emit_calibration(model, outdir, options, formats=("bin",))
    assert files is not None
    name = Path(model_path).name
    stem = name[: -len(".onnx")] if name.endswith(".onnx") else name
    shape = ",".join(str(d) for d in files.shape)
    argv = ("amct_onnx", "calibration", f"--model={relative_name(model_path, outdir)}", f"--save_path=amct/{stem}",
            f"--input_shape={files.input_name}:{shape}", f"--data_dir={files.bin_dir}", "--data_types=float32")
    gather = Step(
        gather_bins_argv(),
        comment=f"gather the {files.count} calibration inputs ({BIN_PATTERN}) into {files.bin_dir}/ for AMCT",
    )
    step = Step(
        argv, comment=f"int8: AMCT calibration on {files.count} preprocessed images ({files.bin_dir}/, float32)"
    )
    data = [Artefact(p, "data") for p in files.paths if p.suffix == ".bin"]
    return [gather, step], data, outdir / "amct" / f"{stem}_deploy_model.onnx"


@register_target
class AscendTarget(Target):
    """Huawei Ascend NPUs through ATC (CANN)."""

    name = "ascend"
    description = "Huawei Ascend NPU: atc commands producing .om files"
    # resize_broadcast: a pooled 1x1 branch's Resize is a broadcast, and ATC takes Expand
    default_passes = ("simplify", "resize_broadcast", "cleanup")
    flags = FLAGS

    def target_options(self, values: Mapping[str, Any]) -> AscendOptions:
        return ascend_options(values)

    def validate_options(self, options: BuildOptions) -> None:
        own = own_options(options, AscendOptions)
        check_soc(own.soc)
        parse_cann_version(own.cann_version)
        if options.precision == "int8" and options.calib_images is None:
            raise SegcError(f"ascend cannot build int8 from a float model without calibration: {AMCT_HINT}, "
                            f"or give --calib-images DIR and segc writes that step into build.sh")

    def check(self, model: onnx.ModelProto, options: BuildOptions) -> list[Violation]:
        soc = check_soc(own_options(options, AscendOptions).soc)
        self.validate_options(options)
        precision_mode(options.precision, soc, model)  # unknown precision: user error now
        found = check_model(model, load_profile(self.name), options)
        if any(not r.is_static for r in options.shape_ranges):
            # run-time Resize sizes under a range are no dead end: the build takes gears, in
            # which ATC folds them (and the report says so, with the grid that would avoid it)
            route = choose_route(model, options, found, explain=True)
            options.target = replace(own_options(options, AscendOptions), shape_route=str(route))
            runtime = {id(v) for v in runtime_resizes(found)}
            if route.kind is RouteKind.GEARS:
                found = [v for v in found if id(v) not in runtime]
            else:
                found = [replace(v, fixed_by=BROADCAST_FIX) if id(v) in runtime and v.node in route.broadcasts else v
                         for v in found]
        elif runtime_resizes(found) and not _static_build_fixes_symbolic_dims(model, options):
            found = _reaim_static(model, options, found)
        if fp16_only_cube(soc) and any(not r.is_static for r in options.shape_ranges):
            found.append(
                Violation(
                    MODEL,
                    "input",
                    f"{soc} cannot build for a shape range (ATC: ranges unsupported on Atlas 200/300/500 and 200I/500 "
                    "A2)",
                )
            )
        return found

    def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
        outdir = Path(outdir)
        self.validate_options(options)
        amct_steps: list[Step] = []
        artefacts: list[Artefact] = []
        atc_model: Path | None = None
        if options.precision == "int8":
            amct_steps, artefacts, atc_model = amct_calibration(model, Path(model_path), outdir, options)
        steps = amct_steps + atc_steps(model, Path(model_path), outdir, options, atc_model)
        own = own_options(options, AscendOptions)
        notes = [f"chip {check_soc(own.soc)}, CANN syntax for {own.cann_version or 'the newest CANN'}"]
        if options.precision == "fp16" and options.fp32_layers:
            keep = outdir / KEEP_DTYPE_FILE
            write_text(keep, "".join(f"{n}\n" for n in options.fp32_layers))
            artefacts.append(Artefact(keep, "data"))
            notes.append(
                f"{len(options.fp32_layers)} layers kept fp32 by {KEEP_DTYPE_FILE} "
                "(segc's fp16 emulation overflows or misses its budget without them)"
            )
        if own.shape_route:
            notes.append(f"shapes by {own.shape_route}")
        needs = [Requirement("atc", ATC_HINT)] + ([Requirement("amct_onnx", AMCT_TOOL_HINT)] if amct_steps else [])
        script = write_build_script(outdir, options, needs, steps, title="Ascend ATC build", notes=notes)
        first_om = next(a[len("--output=") :] for step in steps for a in step.argv if a.startswith("--output=")) + ".om"
        return [script, *artefacts, *write_run_script(outdir, options, "ascend", first_om, model)]
