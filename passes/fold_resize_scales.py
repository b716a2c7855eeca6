"""fold_resize_scales: constant Resize scales where the shape arithmetic provably gives one.

What
    A Resize (or opset-9 Upsample) whose ``scales`` or ``sizes`` are computed from tensor
    shapes gets a constant ``scales`` instead, whenever that constant is what the computation
    yields for *every* input size. The dead shape chain is then removed by the cleanup that
    follows every pass.

Why
    Old PyTorch exporters (and ``F.interpolate(x, size=(h * 2, w * 2))`` in any version) write
    a nearest ``scale_factor`` as a shape computation; DBNet's neck has one per upsampling.
    Ascend ATC cannot compile such chains for a shape range, and TensorRT/MagicMind build
    better engines from constant scales. The hand-made DBNet pipeline replaced each chain by
    ``[1, 1, B, B]`` with a one-off script; this pass does it, and proves it first.

How (proof, not pattern matching)
    ``segc.passes._shape_expr.ShapeAnalysis`` evaluates the chain with exact arithmetic, with
    every graph-input dimension a symbol (even a static one: the result must hold for any
    input size). Two cases fold:

    * computed ``scales``: every element simplifies to a constant, and every float operation
      on the way was exact (so the runtime float equals the constant bit for bit).
      ``floor(H * 2) / H`` folds to 2; ``floor(H * 1.5) / H`` does not (it depends on H).
    * computed ``sizes``: ``sizes[i] == k_i * X.shape[i]`` as polynomials, ``k_i`` exact in
      float32. Then scales ``k`` give the same output size (``floor(k * d) = k * d``) and the
      same sampling positions (onnxruntime derives the scale from sizes as ``sizes / d = k``).
      ``sizes = Shape(y)[2:]`` of *another* tensor folds only when ``y``'s size is provably a
      fixed multiple of the input's (``y = Resize(x, scales=2)``); HRNet's
      ``interpolate(low, size=high.shape[2:])`` with ``low = conv_stride2(high)`` does not
      (``H / (floor((H - 1) / 2) + 1)`` is not constant) and is reported in ``notes``.

Under divisibility
    A range ``x:1,3,64~2048/32,64~2048/32`` (stored by ``set_shape_range`` in the model's
    metadata) says H, W are multiples of 32. The analysis then writes ``H = 32 * q``, every
    ``floor(H / 2^k)`` with ``k <= 5`` is exact, and HRNet's / FPN's ``size=high.shape[2:]``
    becomes the constant ratio it is at every admissible size. Without such a range, the note
    for a Resize left over names the model's total stride (``total_stride``) and the exact
    ``--input-shape`` text that would make it fold, but only after checking that it would.

Before / after (opset 10, DBNet neck)::

        x ──┬──────────────────────────────────────────────┐
            └─ Shape ─ Gather(2) ─ Mul(2) ─ Floor ─ ┐       │
               Shape ─ Gather(3) ─ Mul(2) ─ Floor ─ Concat  │
               Shape ─ Slice[2:4] ────────── Div ◄──┘       │
               [1, 1] ──────────── Concat ◄─┘               │
                                      └──────── scales ─ Resize ─ y
    ==>
        x ─ Resize(scales = [1, 1, 2, 2]) ─ y

Before / after (opset 11+, sizes)::

        x ─┬──────────────────────────────────── Resize(roi, -, sizes) ─ y
           └─ Shape ─┬─ Slice[0:2] ─────── Concat ─┘
                     └─ Slice[2:4] ─ Mul(2) ─┘
    ==>
        x ─ Resize(roi, scales = [1, 1, 2, 2]) ─ y
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import onnx_graphsurgeon as gs

import onnx

from segc.passbase import Contract, GraphPass, PassContext, PassResult, register_pass
from segc.onnx_graph import constant_array, is_absent, unique_name
from segc.passes._sym_poly import Poly, float32_exact
from segc.passes._shape_expr import ShapeAnalysis, topo_nodes
from segc.passes._shape_stride import spatial_symbols, total_stride
from segc.shapes import ShapeRange, ranges_from_metadata
from segc.gs_import import import_graph


def divisible_dims(graph: gs.Graph, ranges: list[ShapeRange]) -> dict[str, tuple[Poly, ...]]:
    """``ShapeAnalysis`` input dims where a range says a dim is a multiple of M: ``M * q``."""
    by_name = {r.name: r for r in ranges if r.has_multiples}
    dims: dict[str, tuple[Poly, ...]] = {}
    for t in graph.inputs:
        r = by_name.get(t.name)
        if r is None or t.shape is None or len(t.shape) != len(r.min):
            continue
        out = []
        for i, d in enumerate(t.shape):
            base = d if isinstance(d, str) and d else f"{t.name}.{i}"
            if r.step(i) > 1:
                out.append(Poly.symbol(f"{base}/{r.step(i)}") * r.step(i))
            elif isinstance(d, int) and d > 0 and r.min[i] == r.max[i] == d:
                out.append(Poly.const(d))
            else:
                out.append(Poly.symbol(base))
        dims[t.name] = tuple(out)
    return dims


def suggest_range(r: ShapeRange, multiple: int) -> ShapeRange | None:
    """``r`` with its ranged spatial dims on a ``multiple`` grid (bounds moved inwards)."""
    lo, hi, mult = list(r.min), list(r.max), [r.step(i) for i in range(len(r.min))]
    for i in range(2, len(lo)):
        if lo[i] == hi[i]:
            continue
        a = -(-lo[i] // multiple) * multiple
        b = (hi[i] // multiple) * multiple
        if a > b:
            return None
        lo[i], hi[i], mult[i] = a, b, multiple
    return ShapeRange(r.name, tuple(lo), tuple(hi), tuple(lo), tuple(mult))


class _Decision:
    """What to do with one Resize: fold to ``scales`` (and drop sizes), or leave with a reason."""

    def __init__(self, scales: list[Fraction] | None = None, from_sizes: bool = False, reason: str = "") -> None:
        self.scales = scales
        self.from_sizes = from_sizes
        self.reason = reason


@register_pass
class FoldResizeScales(GraphPass):
    """Replace shape-computed Resize/Upsample scales or sizes by provably equal constants.

    Stats: ``resizes`` (all Resize/Upsample nodes), ``computed`` (those with shape-computed
    scales or sizes), ``folded`` (of which ``from_sizes`` had sizes), ``left`` (computed but not
    provably constant; each gets a line in ``notes`` saying why).
    """

    name = "fold_resize_scales"
    contract = Contract.EXACT
    summary = (
        "replace shape-computed Resize scales/sizes by constants where provably identical for every input size "
        "(or every size on the range's /M grid)"
    )
    runs_after = ("simplify",)
    order_reason = "simplify folds what it can first; this proves the Resize parameters it leaves"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        resizes = [
            n for n in topo_nodes(graph) if n.op in ("Resize", "Upsample") and (n.domain or "") in ("", "ai.onnx")
        ]
        stats = {"resizes": len(resizes), "computed": 0, "folded": 0, "from_sizes": 0, "left": 0}
        if not resizes:
            return PassResult(changed=False, stats=stats)
        # the range (with its /M multiples) lives in the model's metadata once set_shape_range ran
        ranges = list(ranges_from_metadata(ctx.model_metadata))
        analysis = ShapeAnalysis(graph, divisible_dims(graph, ranges)).run()
        notes: list[str] = []
        decisions: list[tuple[gs.Node, _Decision]] = []
        left: list[tuple[gs.Node, _Decision]] = []
        for node in resizes:
            decision = self._decide(node, analysis)
            if decision is None:
                continue
            stats["computed"] += 1
            if decision.scales is None:
                left.append((node, decision))
            else:
                decisions.append((node, decision))
        hint = self._stride_hint(graph, [n for n, _ in left], ranges) if left else ""
        for node, decision in left:
            stats["left"] += 1
            notes.append(f"left {node.op} {node.name!r}: {decision.reason}{hint}")
        taken = set(graph.tensors())  # once: each graph.tensors() walks the whole graph
        for node, decision in decisions:
            self._fold(graph, node, decision, analysis, taken)
            stats["folded"] += 1
            stats["from_sizes"] += int(decision.from_sizes)
        return PassResult(changed=bool(decisions), stats=stats, notes=notes)

    @classmethod
    def _stride_hint(cls, graph: gs.Graph, nodes: list[gs.Node], ranges: list[ShapeRange]) -> str:
        """"; with H, W multiples of 32 ... give --input-shape ..." when a stride grid makes
        every one of ``nodes`` fold (checked, not assumed); "" otherwise."""
        if any(r.has_multiples for r in ranges):
            return ""  # the user gave multiples already: the grid does not help these
        stride = total_stride(graph)
        if stride is None or stride == 1:
            return ""
        dims, _ = spatial_symbols(graph, stride)
        analysis = ShapeAnalysis(graph, dims).run()
        if any((d := cls._decide(n, analysis)) is not None and d.scales is None for n in nodes):
            return ""
        ranged = [suggest_range(r, stride) for r in ranges if not r.is_static]
        if ranged and all(r is not None for r in ranged):
            shown = " ".join(f"--input-shape {r.atc()}" for r in ranged if r is not None)
        else:
            shown = f"--input-shape NAME:N,C,LO~HI/{stride},LO~HI/{stride}"
        return f"; with H, W multiples of {stride} (the model's total stride) it folds exactly: give {shown}"

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _decide(node: gs.Node, analysis: ShapeAnalysis) -> _Decision | None:
        """None when there is nothing computed to fold; else fold values or a reason."""
        if node.op == "Upsample" and analysis.opset < 9:
            return None  # scales is an attribute there
        scales_t, sizes_t = analysis.resize_operands(node)
        computed_scales = scales_t is not None and constant_array(scales_t) is None
        computed_sizes = sizes_t is not None and constant_array(sizes_t) is None
        if not (computed_scales or computed_sizes):
            return None
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            return _Decision(reason=f"keep_aspect_ratio_policy={policy} derives scales from sizes at runtime")
        in_shape = analysis.shape(node.inputs[0])
        if in_shape is None:
            return _Decision(reason=f"the rank of its input {node.inputs[0].name!r} is unknown")
        axes = node.attrs.get("axes")
        axes = list(range(len(in_shape))) if axes is None else [a + len(in_shape) if a < 0 else a for a in axes]

        if sizes_t is not None:
            value = analysis.value(sizes_t)
            if value is None:
                return _Decision(reason=f"its sizes cannot be evaluated: {analysis.unknown_reason(sizes_t)}")
            if len(value.elems) != len(axes):
                return _Decision(reason=f"sizes has {len(value.elems)} elements for {len(axes)} axes")
            ratios: list[Fraction] = []
            for axis, elem in zip(axes, value.elems, strict=False):
                dim = in_shape[axis]
                ratio = None if elem is None else elem.exact_div(dim)
                if ratio is None or not ratio.is_const():
                    shown = "?" if elem is None else str(elem)
                    return _Decision(
                        reason=f"sizes[{axis}] = {shown} is not a fixed multiple of the size {dim} of its input "
                               f"{node.inputs[0].name!r}"
                    )
                k = ratio.constant
                if k <= 0 or not float32_exact(k):
                    return _Decision(reason=f"sizes[{axis}] / input = {k} is not exact as a float32 scale")
                ratios.append(k)
            return _Decision(scales=ratios, from_sizes=True)

        value = analysis.value(scales_t)
        if value is None:
            return _Decision(reason=f"its scales cannot be evaluated: {analysis.unknown_reason(scales_t)}")
        if value.kind != "f32":
            return _Decision(reason=f"its scales are {value.kind}, not float32")
        consts: list[Fraction] = []
        for i, elem in enumerate(value.elems):
            if elem is None:
                return _Decision(reason=f"scales[{i}] cannot be proven constant: {analysis.unknown_reason(scales_t)}")
            if not elem.is_const():
                return _Decision(reason=f"scales[{i}] = {elem} depends on the input size")
            if elem.constant <= 0 or not float32_exact(elem.constant):
                return _Decision(reason=f"scales[{i}] = {elem.constant} is not an exact positive float32")
            consts.append(elem.constant)
        return _Decision(scales=consts)

    @staticmethod
    def _fold(graph: gs.Graph, node: gs.Node, decision: _Decision, analysis: ShapeAnalysis,
              taken: set[str] | None = None) -> None:
        """Rewrite ``node`` to constant scales. ``taken``: the graph's tensor names, which
        ``unique_name`` keeps up to date (one ``graph.tensors()`` per new name walked
        ocrnet_hrnetw18's whole graph 72 times: 0.19 s)."""
        taken = set(graph.tensors()) if taken is None else taken
        values = np.array([float(k) for k in decision.scales or []], dtype=np.float32)
        const = gs.Constant(unique_name(f"{node.name or node.outputs[0].name}_scales", taken), values)
        if node.op == "Upsample" or analysis.opset <= 10:
            node.inputs[1] = const
            return
        # opset >= 11: (X, roi, scales[, sizes]); with scales given, sizes must be absent
        while len(node.inputs) < 3:
            node.inputs.append(gs.Variable.empty())
        node.inputs[2] = const
        while len(node.inputs) > 3:
            del node.inputs[3]
        if is_absent(node.inputs[1]) and analysis.opset < 13:
            # opsets 11/12 require roi as an input; an empty float tensor means "unused"
            roi_name = unique_name(f"{node.name or 'resize'}_roi", taken)
            node.inputs[1] = gs.Constant(roi_name, np.zeros(0, np.float32))


@dataclass(frozen=True)
class StrideAdvice:
    """What ``segc inspect`` says about sizes: the total stride and how to use it."""

    stride: int | None
    computed_resizes: int  # Resizes whose scales/sizes are computed at run time
    text: str


def stride_advice(model: onnx.ModelProto) -> StrideAdvice:
    """The model's total stride (``total_stride``) and, when Resizes take their sizes from
    shapes, the ``/M`` range syntax that lets ``fold_resize_scales`` fold them."""
    graph = import_graph(model)
    analysis = ShapeAnalysis(graph)
    computed = 0
    for node in graph.nodes:
        if node.op in ("Resize", "Upsample") and (node.domain or "") in ("", "ai.onnx"):
            scales_t, sizes_t = analysis.resize_operands(node)
            computed += any(t is not None and constant_array(t) is None for t in (scales_t, sizes_t))
    stride = total_stride(graph)
    if stride is None:
        text = "no power-of-two grid up to 128 makes every size in the graph exact"
    elif stride == 1:
        text = "total stride 1: every size in the graph is exact for any H, W"
    elif computed:
        meta = {p.key: p.value for p in model.metadata_props}
        ranged = [suggest_range(r, stride) for r in ranges_from_metadata(meta) if not r.is_static]
        example = " ".join(r.atc() for r in ranged if r is not None) or f"640~4096/{stride}"
        text = (
            f"total stride {stride}: give ranges as {example} to fold the {computed} Resize(s) "
            f"sized at run time (a Resize to another tensor's size is a fixed ratio only on that grid)"
        )
    else:
        text = f"total stride {stride}: H, W multiples of {stride} make every size in the graph exact"
    return StrideAdvice(stride, computed, text)


def resize_fold(node: gs.Node, analysis: ShapeAnalysis) -> list[Fraction] | None:
    """The constant scales ``node`` provably has under ``analysis`` (None: nothing computed to
    fold, or no proof). Other modules ask this, never the pass's internals."""
    decision = FoldResizeScales._decide(node, analysis)
    return None if decision is None else decision.scales


def apply_resize_fold(graph: gs.Graph, node: gs.Node, analysis: ShapeAnalysis) -> list[Fraction] | None:
    """Fold ``node`` to constant scales when provable; returns the scales (None: left alone)."""
    decision = FoldResizeScales._decide(node, analysis)
    if decision is None or decision.scales is None:
        return None
    FoldResizeScales._fold(graph, node, decision, analysis)
    return decision.scales


def stride_hint(graph: gs.Graph, nodes: list[gs.Node], ranges: list[ShapeRange]) -> str:
    """ "; with H, W multiples of 32 ... give --input-shape ..." when the stride grid makes
    every one of ``nodes`` fold (checked), else ""."""
    return FoldResizeScales._stride_hint(graph, nodes, ranges)
