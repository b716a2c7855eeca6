"""Legalisation: the target's profile decides which fixing passes the pipeline needs.

``segc compile`` used to run the recipe's or target's pass list and then ask the target
whether the result was legal, so an opset-20 export was refused for Ascend ("opset 20 is
outside 9..18") although ``convert_opset`` exists. Now, before any pass runs, the input
model is checked against the target with the build it is meant for, and each violation
class maps to the pass that fixes it:

=====================================  ==============================================
violation                              pass added (and where)
=====================================  ==============================================
opset outside the vendor's range, or   ``convert_opset`` to the highest opset every
an op parsed only at some opsets       op of the result accepts (after the deform rewrite)
deformable conv in the wrong form      ``rewrite_deform_conv`` with the profile's form
Resize sizes computed at run time      static build of a symbolic export:
                                       ``fix_input_shapes`` (first), so ``simplify``
                                       folds the chains; otherwise ``fold_resize_scales``
batch fixed in the graph, other        ``set_shape_range`` with a batch range
batches requested
=====================================  ==============================================

A static ``--input-shape`` for an input with symbolic dims always adds ``fix_input_shapes``:
the build is for that one shape, so every shape computation can become a constant.

A pass is inserted before the first listed pass that must run after it, by the ordering
the passes declare (``runs_after``/``runs_before``, ``segc.pass_order``): dims fixed before
folding; the deform rewrite before the opset conversion (ATC's DeformableConv2D exists only
up to opset 16); shape ranges after folding; cleanup last.

What no pass fixes (an op a complete list lacks on the data path, a dtype, a range the
vendor cannot build) is refused here, before any work, with what would make it legal.
Unconfirmed ops (partial lists) become one grouped warning. With the user's own
``--passes`` (or a ``--skip`` of a needed pass) nothing is added: the error names the
missing pass instead. The target's check after the pipeline stays as the final gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from segc.errors import SegcError
from segc.onnx_graph import default_opset, real_input_names, real_inputs
from segc.pass_order import insertion_index
from segc.pipeline import PassSpec, PipelineResult
from segc.shapes import ShapeRange
from segc.targets.base import BuildOptions, Target, Violation
from segc.targets.legality import (
    DEFORM_FIX,
    FUNCTION_FIX,
    MODEL,
    OPSET_FIX,
    RANGE_FIX,
    RESIZE_FOLD_FIX,
    Profile,
    errors,
    group_violations,
    load_profile,
    unconfirmed,
)

FREEZE_FIX = "fix_input_shapes"

#: Ops that simplify (onnx-simplifier's optimiser) or cleanup may remove or fuse away, so an
#: unlisted one is left to the final check rather than refused up front.
MAY_VANISH = frozenset({"Identity", "Dropout", "Pad", "BatchNormalization", "Transpose", "Squeeze", "Unsqueeze",
                        "Reshape", "Flatten", "Cast", "Expand", "Concat", "Split", "Slice", "Tile"})


@dataclass(frozen=True)
class AddedPass:
    """A pass segc put into the pipeline, and the violation that made it necessary."""

    name: str
    options: dict[str, Any]
    reason: str

    def __str__(self) -> str:
        return f"added pass {self.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "options": self.options, "reason": self.reason}


@dataclass
class Plan:
    """The pipeline to run, what was added to it, and the warnings to show."""

    specs: list[PassSpec]
    added: list[AddedPass] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # other changes to the plan (a range the command line replaced)


def insert_pass(specs: list[PassSpec], spec: PassSpec) -> None:
    """Insert ``spec`` before the first pass that must run after it (``segc.pass_order``)."""
    specs.insert(insertion_index([s.name for s in specs], spec.name), spec)


def symbolic_axes(model: onnx.ModelProto, name: str) -> list[int]:
    for vi in model.graph.input:
        if vi.name == name:
            return [i for i, d in enumerate(vi.type.tensor_type.shape.dim) if not d.HasField("dim_value")]
    return []


def _ranged_by_pass(specs: list[PassSpec]) -> set[str]:
    from segc.passes.set_shape_range import parse_ranges

    names: set[str] = set()
    for s in specs:
        if s.name == RANGE_FIX and s.options.get("ranges"):
            names |= {r.name for r in parse_ranges(s.options.get("ranges"), None)}
    return names


def _drop_overridden_ranges(specs: list[PassSpec], static_cli: dict[str, ShapeRange]) -> list[str]:
    """A static ``--input-shape`` wins over a recipe's range for that input.

    The recipe's range (DBNet: 640~4096) describes the seed deployment; a user who asks for
    one static shape wants a static build, and only a static graph lets every shape chain
    fold. The range is removed from ``set_shape_range`` (the pass too, when nothing is left).
    """
    from segc.passes.set_shape_range import parse_ranges

    notes: list[str] = []
    for spec in list(specs):
        if spec.name != RANGE_FIX or not spec.options.get("ranges"):
            continue
        ranges = parse_ranges(spec.options.get("ranges"), spec.options.get("opt"))
        hit = [r for r in ranges if r.name in static_cli]
        if not hit:
            continue
        keep = [r for r in ranges if r.name not in static_cli]
        replaced = ", ".join(f"{static_cli[r.name].atc()} replaces the planned range {r.atc()}" for r in hit)
        if keep:
            spec.options["ranges"] = [r.atc() for r in keep]
            opts = [f"{r.name}:{','.join(map(str, r.opt))}" for r in keep if r.opt != r.min]
            if opts:
                spec.options["opt"] = opts
            else:
                spec.options.pop("opt", None)
            notes.append(f"--input-shape {replaced}")
        else:
            specs.remove(spec)
            notes.append(f"--input-shape {replaced}; pass {RANGE_FIX} is not needed and was left out")
    return notes


def _opset_target(model: onnx.ModelProto, profile: Profile, will_have: set[str]) -> tuple[int, int]:
    """The opset window every op of the result accepts: the profile's, narrowed by ``op_opsets``."""
    lo, hi = profile.opset_range
    for op, span in profile.data.get("op_opsets", {}).items():
        if op in will_have:
            lo, hi = max(lo, int(span[0])), min(hi, int(span[1]))
    return lo, hi


def _on_data_path(model: onnx.ModelProto, node_name: str) -> bool:
    """True when the node computes on tensor data (not only on shapes and constants)."""
    graph = model.graph
    data = set(real_input_names(graph))
    for node in graph.node:  # graph order is topological in valid models
        if node.op_type in ("Shape", "Size"):
            continue
        if any(i in data for i in node.input):
            data |= {o for o in node.output if o}
        label = node.name or (f"<{node.output[0]}>" if node.output else "")
        if label == node_name:
            return any(i in data for i in node.input)
    return True


def legalise(model: onnx.ModelProto, target: Target, options: BuildOptions, specs: list[PassSpec], *,
             user_passes: bool, skipped: set[str], static_cli: dict[str, ShapeRange]) -> Plan:
    """Add the passes the target's violations need, or refuse before any pass runs."""
    plan = Plan(specs=list(specs))
    missing: list[str] = []

    def names() -> set[str]:  # re-read after each insertion
        return {s.name for s in plan.specs}

    def need(name: str, opts: dict[str, Any], reason: str) -> None:
        if name in names():
            return
        if user_passes or name in skipped:
            how = "--skip leaves it out" if name in skipped else "--passes leaves it out"
            missing.append(
                f"{reason}: needs pass {name}, which {how}; add it (or drop --passes/--skip and segc adds it)"
            )
            return
        insert_pass(plan.specs, PassSpec(name, dict(opts)))
        plan.added.append(AddedPass(name, dict(opts), reason))

    profile = load_profile(target.name)
    if not user_passes:
        plan.notes += _drop_overridden_ranges(plan.specs, static_cli)
    ranged_by_pass = _ranged_by_pass(plan.specs)

    # a static build of an input with symbolic dims: fix them so shape chains fold
    freeze = []
    for name, rng in static_cli.items():
        axes = symbolic_axes(model, name)
        if axes and name not in ranged_by_pass:
            freeze.append((name, rng, axes))
    shapes: list[str] = []
    fully_fixed = {name for name, _, _ in freeze}
    reason = ""
    if freeze:
        from segc.passes.fix_input_shapes import fixed_shape_option

        shapes = [fixed_shape_option(rng) for _, rng, _ in freeze]
        reason = "the build is static at " + "; ".join(
            f"{rng.atc()} (symbolic dims {', '.join(map(str, axes))})" for _, rng, axes in freeze
        )
    # one --batch size (and no batch range) fixes a symbolic batch dim the same way
    if len(options.batch_sizes) == 1 and not options.batch_range:
        batch = options.batch_sizes[0]
        only_batch = [vi.name for vi in real_inputs(model) if vi.name not in static_cli
                      and vi.name not in ranged_by_pass and 0 in symbolic_axes(model, vi.name)]
        for name in only_batch:
            rank = len(next(vi for vi in model.graph.input if vi.name == name).type.tensor_type.shape.dim)
            shapes.append(f"{name}:{batch}" + ",-1" * (rank - 1))
            if symbolic_axes(model, name) == [0]:
                fully_fixed.add(name)
        if only_batch:
            reason = (
                reason + "; " if freeze else ""
            ) + f"--batch {batch} fixes the symbolic batch of {', '.join(only_batch)}"
    if shapes and not (user_passes or FREEZE_FIX in skipped):
        need(FREEZE_FIX, {"shapes": shapes}, f"{reason}; fixed dims let simplify fold the shape computations")
    frozen = FREEZE_FIX in names()

    found = target.check(model, options)
    plan.warnings = group_violations(unconfirmed(found))
    hard = errors(found)

    will_have = {n.op_type for n in model.graph.node}
    deform = [v for v in hard if v.fixed_by == DEFORM_FIX]
    if deform or DEFORM_FIX in names():
        form = profile.deform_form
        if form.get("op"):
            will_have.add(str(form["op"]))
    for v in deform[:1]:
        need(
            DEFORM_FIX,
            {"form": profile.deform_form.get("form")},
            f"{len(deform)} deformable convolution(s) not in the form {profile.vendor} takes ({v.reason})",
        )

    functions = [v for v in hard if v.fixed_by == FUNCTION_FIX]
    if functions:
        ops = sorted({v.op for v in functions})
        need(FUNCTION_FIX, {"ops": ops}, f"{', '.join(ops)} not in {profile.vendor}'s operator list; "
                                          "inlining their ONNX function bodies")
        will_have -= set(ops)

    opset_issues = [v for v in hard if v.fixed_by == OPSET_FIX]
    lo, hi = _opset_target(model, profile, will_have)
    current = default_opset(model) or 1
    if opset_issues or (DEFORM_FIX in names() and not lo <= current <= hi and profile.data.get("op_opsets")):
        if lo > hi:
            missing.append(f"no opset satisfies every op of the model for {profile.vendor} (needs {lo}..{hi})")
        else:
            version = hi if current > hi else lo
            opts: dict[str, Any] = {"version": version} if current > hi else {"version": version, "only_down": False}
            why = opset_issues[0].reason if opset_issues else f"the model declares opset {current}"
            need(OPSET_FIX, opts, f"{why}; converting to opset {version}")

    resize = [v for v in hard if v.fixed_by == RESIZE_FOLD_FIX]
    if resize:
        static_build = all(r.is_static for r in options.shape_ranges)
        folds_by_simplify = frozen and static_build and "simplify" in names() and not _symbolic_left(model, fully_fixed)
        if not folds_by_simplify:
            need(
                RESIZE_FOLD_FIX,
                {},
                f"{len(resize)} Resize(s) with sizes/scales computed at run time ({resize[0].reason})",
            )

    batch_issues = [v for v in hard if v.fixed_by == RANGE_FIX and "batch" in v.reason]
    if batch_issues and RANGE_FIX not in names():
        first = batch_issues[0]
        ranges = _batch_ranges(model, options)
        if ranges:
            need(RANGE_FIX, {"ranges": ranges}, f"{first.node}: {first.reason}")
        else:
            missing.append(f"{first.node}: {first.reason}; give --input-shape with a batch range")

    # a fully static build folds every branch that only constants and shapes feed (Dinov2's
    # bicubic position-embedding Resize): what sits on such a branch is left to the final check
    static_folds = (all(r.is_static for r in options.shape_ranges) and "simplify" in names()
                    and (frozen or not _symbolic_left(model, set())) and not _symbolic_left(model, fully_fixed))
    unfixable = [v for v in hard if v.fixed_by is None and _refusable(model, v, names())
                 and not (static_folds and v.node != MODEL and not _on_data_path(model, v.node))]
    if unfixable or missing:
        lines = missing + _refusal_lines(unfixable, profile)
        shown = "; ".join(lines[:6]) + (f"; and {len(lines) - 6} more" if len(lines) > 6 else "")
        raise SegcError(f"target {target.name} cannot build this model: {shown}")
    return plan


def _symbolic_left(model: onnx.ModelProto, fixed: set[str]) -> bool:
    """Whether an input keeps a symbolic dim after ``fix_input_shapes`` fixed those in ``fixed``."""
    return any(symbolic_axes(model, vi.name) for vi in real_inputs(model) if vi.name not in fixed)


def _batch_ranges(model: onnx.ModelProto, options: BuildOptions) -> list[str]:
    """``x:1~16,3,512,512`` per input whose batch alone is fixed, for ``set_shape_range``."""
    sizes = set(options.batch_sizes) | set(options.batch_range or ())
    if not sizes:
        return []
    out = []
    for vi in real_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims or not all(d.HasField("dim_value") for d in dims):
            return []
        rest = ",".join(str(d.dim_value) for d in dims[1:])
        lo, hi = min(sizes | {dims[0].dim_value}), max(sizes | {dims[0].dim_value})
        out.append(f"{vi.name}:{lo}~{hi}" + (f",{rest}" if rest else ""))
    return out


def _refusable(model: onnx.ModelProto, v: Violation, passes: set[str]) -> bool:
    """Whether a violation no pass names as its fix is certain to survive the pipeline."""
    if "operator list" in v.reason:
        # an op on a shape-only path folds away; some data-path ops are fused by simplify
        if v.op in MAY_VANISH and passes & {"simplify", "cleanup"}:
            return False
        return _on_data_path(model, v.node)
    if v.op in ("Resize", "Upsample") and "resize_to_nearest" in passes:
        return False
    if v.op == "output" and "prune_outputs" in passes:
        return False
    return True


def _refusal_lines(violations: list[Violation], profile: Profile) -> list[str]:
    """One line per kind of unfixable violation (grouped, with a count), plus what would fix it."""
    groups: dict[tuple[str, str], list[Violation]] = {}
    for v in violations:
        groups.setdefault((v.op, v.reason), []).append(v)
    return [group_violations(group)[0] + _hint(group[0], profile) for group in groups.values()]


def _hint(v: Violation, profile: Profile) -> str:
    """What would make it legal, where segc knows an option or a different build."""
    if "shape range" in v.reason and v.node == MODEL:
        return " (give static shapes: --input-shape NAME:N,C,H,W, or --batch for per-batch builds)"
    if v.op in ("Resize", "Upsample") and "mode" in v.reason and "nearest" in profile.resize.get("modes", ["nearest"]):
        return f" (--nearest-resize {v.node} switches it to nearest: an approximate change, verified against a budget)"
    if "operator list" in v.reason:
        return " (no segc pass replaces this op: export the model without it, or build for another target)"
    return " (no segc pass fixes this)"


def final_gate_lines(violations: list[Violation], result: PipelineResult) -> list[str]:
    """The final check's refusal, grouped; a fix that already ran says what it reported instead."""
    ran = {r.name: r for r in result.records if r.status not in ("pending", "skipped")}
    lines = []
    for line in group_violations(violations):
        for name, record in ran.items():
            tag = f" (fixed by pass {name})"
            if line.endswith(tag):
                said = "; ".join(record.notes[:2]) or f"status {record.status}, stats {record.stats}"
                line = line[: -len(tag)] + f" (pass {name} ran and could not fix it: {said})"
        lines.append(line)
    return lines
