"""One legality engine, many data files: what a vendor compiler accepts, checked before a build.

Vendor compilers fail late and cryptically (ATC after minutes, with an error code and a node
name from its own IR). segc instead checks the model against a *profile* (a JSON file next to
this module, one per target) before any build is written, and names each offending node
with the pass that fixes it, when one does. Keeping the facts in data rather than code means
a newer CANN or TensorRT release is a reviewed data change, and each file cites its source.

A profile (``targets/<name>.json``) holds:

``target``, ``vendor``, ``source`` (list of URLs/documents), ``notes``
``opset``            ``{"min": 9, "max": 20}`` for the default ONNX domain
``ops``              op types of the default domain the compiler accepts (``partial`` true
                     where the public list is incomplete); anything else gets a violation
                     "not in <vendor>'s operator list" without a fix
``function_ops``     ops without their own kernel that the tool expands (onnxruntime only)
``custom_ops``       ``{"domain": [op, ...]}`` accepted ops outside the default domain
``deform_conv``      the form the compiler wants: ``{"form": "DeformableConv2D", "domain": "",
                     "attributes": {...}}``, or ``"form": "decomposed"`` when it has none
``resize``           accepted ``modes``, ``coordinate_transformation_modes``,
                     ``nearest_modes``, and ``constant_scales``: ``"always"`` when the
                     compiler needs Resize scales/sizes as constants, ``"ranges"`` when
                     only a ranged (dynamic-shape) build does
``dtypes``           ``io``: tensor types accepted as graph inputs/outputs
``op_opsets``        ``{"DeformableConv2D": [9, 16]}``: ops accepted only at some opsets
``dynamic_shapes``   ``{"ranges": true}`` when the compiler builds for shape ranges;
                     ``"batch_builds": true`` when it builds per batch size (or a batch range)

A profile whose ``ops`` list is ``partial`` (the vendor publishes none, so segc lists only the
ops it has evidence for) reports unlisted ops as ``Severity.UNCONFIRMED``: a warning, never a
refusal, because the absence of evidence is not evidence of absence.
``BuildOptions.allow_unlisted_ops`` (``--allow-unlisted-ops``) silences those
warnings; a complete list is never waived.

Every violation says which pass fixes it, so ``segc inspect`` can tell a user what to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import onnx

from segc.errors import SegcError
from segc.onnx_graph import default_opset, real_input_names, real_inputs
from segc.shapes import ShapeRange
from segc.targets.base import BuildOptions, Severity, Violation, registered

# Every deformable-convolution spelling segc meets, by (domain, op type). The pass
# ``rewrite_deform_conv`` converts any of them into any other (or into standard ops).
DEFORM_CONV_FORMS: dict[tuple[str, str], str] = {
    ("", "DeformConv"): "onnx",  # ONNX standard, opset 19
    ("", "DeformableConv2D"): "ascend",  # Huawei custom op, default domain
    ("mmcv", "MMCVModulatedDeformConv2d"): "mmcv",  # mmdeploy's TensorRT plugin
}
DEFORM_FIX = "rewrite_deform_conv"
RESIZE_FOLD_FIX = "fold_resize_scales"
RANGE_FIX = "set_shape_range"
OPSET_FIX = "convert_opset"
FUNCTION_FIX = "expand_functions"

MODEL = "<model>"  # the ``node`` of a violation that concerns the whole model


@dataclass(frozen=True)
class Profile:
    """A target's legality data (see the module docstring for the fields)."""

    name: str
    data: dict[str, Any]

    @property
    def vendor(self) -> str:
        return str(self.data.get("vendor", self.name))

    @property
    def ops(self) -> frozenset[str]:
        return frozenset(self.data.get("ops", {}).get("list", [])) | frozenset(
            self.data.get("function_ops", {}).get("list", [])
        )

    @property
    def opset_range(self) -> tuple[int, int]:
        opset = self.data.get("opset", {})
        return int(opset.get("min", 1)), int(opset.get("max", 10**6))

    def custom_ops(self, domain: str) -> frozenset[str]:
        return frozenset(self.data.get("custom_ops", {}).get(domain, []))

    @property
    def deform_form(self) -> dict[str, Any]:
        return dict(self.data.get("deform_conv", {"form": "onnx"}))

    @property
    def resize(self) -> dict[str, Any]:
        return dict(self.data.get("resize", {}))

    @property
    def io_dtypes(self) -> frozenset[str]:
        return frozenset(self.data.get("dtypes", {}).get("io", []))


@lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """Read ``targets/<name>.json`` shipped as package data, or the registered target's ``profile_path``."""
    cls = registered(name)
    try:
        if cls is not None and cls.profile_path is not None:
            text = Path(cls.profile_path).read_text(encoding="utf-8")
        else:
            text = resources.files("segc.targets").joinpath(f"{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SegcError(f"no legality profile for target {name!r} (missing {name}.json)") from None
    data = json.loads(text)
    if data.get("target") != name:
        raise SegcError(f"legality profile {name}.json names target {data.get('target')!r}, expected {name!r}")
    return Profile(name=name, data=data)


# --------------------------------------------------------------------------- helpers


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _node_name(node: onnx.NodeProto) -> str:
    # unnamed nodes are named by their first output, which is what users can select on
    return node.name or (f"<{node.output[0]}>" if node.output else f"<{node.op_type}>")


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output if out}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value is known at build time (initializers and Constant outputs)."""
    names = {t.name for t in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _derives_from_shape(tensor: str, producers: dict[str, onnx.NodeProto], constants: set[str]) -> bool:
    """True when ``tensor`` is computed at run time (reaches a Shape/Size, or a graph input)."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        name = stack.pop()
        if name in seen or name in constants or not name:
            continue
        seen.add(name)
        node = producers.get(name)
        if node is None:  # a graph input
            return True
        if node.op_type in ("Shape", "Size"):
            return True
        stack.extend(node.input)
    return False


def _is_ranged(options: BuildOptions) -> bool:
    return any(not r.is_static for r in options.shape_ranges)


def _dtype_name(elem_type: int) -> str:
    """``float32``, ``int64``...: numpy-style names, as the profiles spell them."""
    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type).name)
    except Exception:  # string, undefined, or types numpy lacks (bfloat16, fp8...)
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


# --------------------------------------------------------------------------- the checks


def check_model(model: onnx.ModelProto, profile: Profile, options: BuildOptions | None = None) -> list[Violation]:
    """Every reason ``profile``'s compiler would reject ``model``, with the fixing pass."""
    options = options or BuildOptions()
    out: list[Violation] = []
    out += _check_opset(model, profile)
    out += _check_ranges(model, profile, options)
    out += _check_batches(model, profile, options)
    out += _check_io_dtypes(model, profile)
    out += _check_nodes(model, profile, options)
    return out


def _check_opset(model: onnx.ModelProto, profile: Profile) -> list[Violation]:
    version = default_opset(model)
    lo, hi = profile.opset_range
    if version is None or lo <= version <= hi:
        return []
    return [
        Violation(
            MODEL,
            "opset",
            f"ONNX opset {version} is outside {profile.vendor}'s supported range {lo}..{hi}",
            fixed_by=OPSET_FIX,
        )
    ]


def _check_ranges(model: onnx.ModelProto, profile: Profile, options: BuildOptions) -> list[Violation]:
    """A shape range must name a real input of the same rank whose ranged dims are symbolic."""
    found: list[Violation] = []
    inputs = {i.name: i for i in model.graph.input}
    real = real_input_names(model)
    ranged = _is_ranged(options)
    if ranged and not profile.data.get("dynamic_shapes", {}).get("ranges", False):
        found.append(Violation(MODEL, "input", f"{profile.vendor} cannot build for shape ranges; give static shapes"))
    for rng in options.shape_ranges:
        if rng.name not in inputs:
            found.append(
                Violation(
                    rng.name,
                    "input",
                    f"shape range for {rng.name!r}, which is not an input (inputs: {', '.join(real)})",
                )
            )
            continue
        dims = inputs[rng.name].type.tensor_type.shape.dim
        if len(dims) != len(rng.min):
            found.append(
                Violation(rng.name, "input", f"shape range has {len(rng.min)} dims, the input has {len(dims)}")
            )
            continue
        found += _range_dim_violations(rng, dims)
    return found


def _check_batches(model: onnx.ModelProto, profile: Profile, options: BuildOptions) -> list[Violation]:
    """Builds per batch size (or a batch range) need a batch dimension the graph leaves free.

    A graph exported at batch 1 bakes that 1 into Reshape shapes and the like; a vendor tool
    told to build batch 8 from it either refuses or builds a wrong model. ``set_shape_range``
    makes the batch symbolic and repairs such constants, so it is the fix.
    """
    if not profile.data.get("dynamic_shapes", {}).get("batch_builds", False):
        return []
    requested = set(options.batch_sizes)
    if options.batch_range:
        requested |= set(options.batch_range)
    if not requested:
        return []
    found: list[Violation] = []
    for value in real_inputs(model):
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value"):
            continue
        fixed = dims[0].dim_value
        other = sorted(b for b in requested if b != fixed)
        if other:
            asked = ", ".join(str(b) for b in other)
            found.append(
                Violation(
                    value.name,
                    "input",
                    f"the graph fixes the batch at {fixed}, the build asks for batch {asked}",
                    fixed_by=RANGE_FIX,
                )
            )
    return found


def _range_dim_violations(rng: ShapeRange, dims: Iterable[onnx.TensorShapeProto.Dimension]) -> list[Violation]:
    found: list[Violation] = []
    for axis, dim in enumerate(dims):
        lo, hi = rng.min[axis], rng.max[axis]
        if dim.HasField("dim_value"):
            fixed = dim.dim_value
            if lo != hi:
                found.append(
                    Violation(
                        rng.name,
                        "input",
                        f"dim {axis} is fixed at {fixed} in the graph but ranged {lo}~{hi} in the build",
                        fixed_by=RANGE_FIX,
                    )
                )
            elif fixed != lo:
                found.append(
                    Violation(
                        rng.name,
                        "input",
                        f"dim {axis} is {fixed} in the graph but {lo} in the build",
                        fixed_by=RANGE_FIX,
                    )
                )
    return found


def _check_io_dtypes(model: onnx.ModelProto, profile: Profile) -> list[Violation]:
    allowed = profile.io_dtypes
    if not allowed:
        return []
    found: list[Violation] = []
    for kind, values in (("input", real_inputs(model)), ("output", model.graph.output)):
        for v in values:
            elem = v.type.tensor_type.elem_type
            if elem and _dtype_name(elem) not in allowed:
                found.append(
                    Violation(
                        v.name,
                        kind,
                        f"graph {kind} of type {_dtype_name(elem)}, which {profile.vendor} does not accept (accepts "
                        f"{', '.join(sorted(allowed))})",
                    )
                )
    return found


def _check_nodes(model: onnx.ModelProto, profile: Profile, options: BuildOptions) -> list[Violation]:
    graph = model.graph
    producers = _producers(graph)
    constants = _constant_names(graph)
    ranged = _is_ranged(options)
    ops = profile.ops
    partial = bool(profile.data.get("ops", {}).get("partial", False))
    allow_unlisted = options.allow_unlisted_ops
    opset = default_opset(model)
    found: list[Violation] = []
    for node in graph.node:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        key = (domain, node.op_type)
        if key in DEFORM_CONV_FORMS:
            found += _check_deform(node, key, profile)
            if DEFORM_CONV_FORMS[key] == profile.deform_form.get("form"):
                found += _check_op_opset(node, profile, opset)
            continue
        if domain:
            if node.op_type not in profile.custom_ops(domain):
                found.append(
                    Violation(
                        _node_name(node),
                        node.op_type,
                        f"custom op of domain {domain!r} is not supported by {profile.vendor}",
                    )
                )
            continue
        if node.op_type == "Constant" and "Constant" not in ops:
            continue  # parsers fold Constant into weights; no list names it
        if node.op_type not in ops:
            if partial and allow_unlisted:
                continue
            if partial:
                found.append(
                    Violation(
                        _node_name(node), node.op_type, unconfirmed_reason(profile), severity=Severity.UNCONFIRMED
                    )
                )
            else:
                fix = FUNCTION_FIX if opset is not None and _has_function(node.op_type, opset) else None
                found.append(
                    Violation(_node_name(node), node.op_type, f"not in {profile.vendor}'s operator list", fixed_by=fix)
                )
            continue
        found += _check_op_opset(node, profile, opset)
        if node.op_type in ("Resize", "Upsample"):
            found += _check_resize(node, profile, producers, constants, ranged)
    return found


def _has_function(op_type: str, opset: int) -> bool:
    """Whether onnx defines the op as a function of other ops (``expand_functions`` inlines it)."""
    from segc.passes.expand_functions import has_function

    return has_function(op_type, opset)


def _check_op_opset(node: onnx.NodeProto, profile: Profile, opset: int | None) -> list[Violation]:
    """Ops the vendor parses only at some opsets (e.g. Ascend's DeformableConv2D: 9..16)."""
    span = profile.data.get("op_opsets", {}).get(node.op_type)
    if not span or opset is None or span[0] <= opset <= span[1]:
        return []
    return [
        Violation(
            _node_name(node),
            node.op_type,
            f"{profile.vendor} parses {node.op_type} only at opset {span[0]}..{span[1]}, the model declares opset "
            f"{opset}",
            fixed_by=OPSET_FIX,
        )
    ]


def unconfirmed_reason(profile: Profile) -> str:
    return f"unconfirmed: not in segc's partial {profile.vendor} list; --allow-unlisted-ops silences this"


def errors(violations: Iterable[Violation]) -> list[Violation]:
    return [v for v in violations if v.severity is Severity.ERROR]


def unconfirmed(violations: Iterable[Violation]) -> list[Violation]:
    return [v for v in violations if v.severity is Severity.UNCONFIRMED]


def group_violations(violations: Iterable[Violation], *, examples: int = 3) -> list[str]:
    """One line per distinct (op, reason, fix), with a count and a few node names.

    A DBNet neck has dozens of identical Resize violations; a line per node buries the one
    different message among them. Unconfirmed ops of a partial list collapse further, into
    one line ``Clip x12, Div x3 (unconfirmed: ...)``.
    """
    items = list(violations)
    lines: list[str] = []
    unsure = [v for v in items if v.severity is Severity.UNCONFIRMED]
    if unsure:
        counts: dict[str, int] = {}
        for v in unsure:
            counts[v.op] = counts.get(v.op, 0) + 1
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"{ops} ({unsure[0].reason})")
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for v in items:
        if v.severity is Severity.ERROR:
            groups.setdefault((v.op, v.reason, v.fixed_by), []).append(v.node)
    for (op, reason, fix), nodes in groups.items():
        suffix = f" (fixed by pass {fix})" if fix else ""
        if len(nodes) == 1:
            lines.append(f"{nodes[0]} [{op}]: {reason}{suffix}")
        else:
            shown = ", ".join(nodes[:examples]) + (", ..." if len(nodes) > examples else "")
            lines.append(f"{op} x{len(nodes)} ({shown}): {reason}{suffix}")
    return lines


def _check_deform(node: onnx.NodeProto, key: tuple[str, str], profile: Profile) -> list[Violation]:
    want = profile.deform_form
    form = want.get("form", "onnx")
    have = DEFORM_CONV_FORMS[key]
    name = _node_name(node)
    if have != form:
        wanted = "standard ops (no deformable convolution op)" if form == "decomposed" else f"{want.get('op', form)}"
        return [
            Violation(
                name,
                node.op_type,
                f"deformable convolution as {node.op_type}; {profile.vendor} wants {wanted}",
                fixed_by=DEFORM_FIX,
            )
        ]
    found: list[Violation] = []
    for attr in want.get("required", []):
        if _attr(node, attr) is None:
            found.append(
                Violation(
                    name,
                    node.op_type,
                    f"attribute {attr} is missing; {profile.vendor} requires it",
                    fixed_by=DEFORM_FIX,
                )
            )
    for attr, value in want.get("attributes", {}).items():
        actual = _text(_attr(node, attr))
        if actual != value:
            found.append(
                Violation(
                    name,
                    node.op_type,
                    f"attribute {attr}={actual!r}, {profile.vendor} needs {value!r}",
                    fixed_by=DEFORM_FIX,
                )
            )
    for attr, lengths in want.get("attribute_lengths", {}).items():
        actual = _attr(node, attr)
        if actual is not None and len(actual) not in lengths:
            allowed = " or ".join(str(n) for n in lengths)
            found.append(
                Violation(
                    name,
                    node.op_type,
                    f"attribute {attr} has {len(actual)} entries, {profile.vendor} parses {allowed}",
                    fixed_by=DEFORM_FIX,
                )
            )
    return found


def _check_resize(
    node: onnx.NodeProto, profile: Profile, producers: dict[str, onnx.NodeProto], constants: set[str], ranged: bool
) -> list[Violation]:
    rules = profile.resize
    name = _node_name(node)
    found: list[Violation] = []
    mode = _text(_attr(node, "mode", "nearest"))
    modes = rules.get("modes")
    if modes is not None and mode not in modes:
        found.append(
            Violation(
                name,
                node.op_type,
                f"Resize mode {mode!r} is not supported by {profile.vendor} (supports {', '.join(modes)})",
            )
        )
    if node.op_type == "Resize":
        ctm = _text(_attr(node, "coordinate_transformation_mode", "half_pixel"))
        ctms = rules.get("coordinate_transformation_modes")
        if ctms is not None and ctm not in ctms:
            found.append(
                Violation(
                    name, node.op_type, f"coordinate_transformation_mode {ctm!r} is not supported by {profile.vendor}"
                )
            )
        if mode == "nearest":
            nm = _text(_attr(node, "nearest_mode", "round_prefer_floor"))
            nms = rules.get("nearest_modes")
            if nms is not None and nm not in nms:
                found.append(Violation(name, node.op_type, f"nearest_mode {nm!r} is not supported by {profile.vendor}"))
    need_constant = rules.get("constant_scales", False)  # "always" | "ranges" | false
    if need_constant == "always" or (need_constant == "ranges" and ranged):
        # Resize(X, roi, scales, sizes) from opset 11, Resize(X, scales) at 10, Upsample(X, scales)
        size_inputs = [t for t in node.input[1:] if t]
        computed = [t for t in size_inputs if t not in constants and _derives_from_shape(t, producers, constants)]
        if computed:
            # fold_resize_scales folds what is provably constant over the shapes the graph takes:
            # every shape of a range, or the one shape of a static input. (onnx-simplifier also
            # folds static chains, but not when another dim, such as the batch, is dynamic.)
            fix = RESIZE_FOLD_FIX
            when = "for a shape range" if ranged else "unless they are constants"
            found.append(
                Violation(
                    name,
                    node.op_type,
                    f"Resize scales/sizes computed at run time; {profile.vendor} cannot build that {when}",
                    fixed_by=fix,
                )
            )
    return found
