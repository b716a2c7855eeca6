"""set_shape_range: make chosen input dimensions dynamic over a range, and prove the graph follows.

What
    ``ranges`` (ATC syntax, ``input:1,3,640~4096,640~4096``) say which input dimensions vary.
    The pass gives those dimensions symbolic names (``dim_param``; existing names are kept),
    then walks the graph with exact symbolic shapes (``segc.passes._shape_expr``) looking for
    sizes that the export baked in at the traced shape, and either fixes them or stops with an
    error naming the node. The ranges and optimisation shapes go into the model's metadata
    (``segc.shape_range`` / ``segc.opt_shape``) for the targets (ATC ``--input_shape``, TensorRT
    profiles, MagicMind ``dim_range``).

Why
    A static export is a trace: a Reshape to ``[1, 512, 16384]`` is ``H * W`` at 128x128 and
    nothing else. Marking the input dynamic without looking would give a model that loads and
    then fails (or silently misbehaves) at every other size. Vendor tools report such failures
    late and obscurely; here they are found at compile time, in the graph, with a name.

Fixes (each exact at the traced shape and valid over the whole range)::

    Reshape(x[1,C,H,W], [1, C, 16384])           ==>  Reshape(x, [0, C, -1])
    Resize(x[1,C,H,W], sizes=[1, C, 256, 256])   ==>  Resize(x, scales=[1, 1, 2, 2])
    Expand(x[1,C,H,W], [1, C, 128, 128])         ==>  Expand(x, [1, C, 1, 1])
    Slice(x[.., H, ..], ends=[128], axes=[2])     ==>  Slice(x, ends=[INT64_MAX], axes=[2])
    AveragePool(x[1,C,H,W], kernel=[H, W])       ==>  GlobalAveragePool(x)

On a ``/M`` grid (``640~4096/32``) each gridded dim is analysed as ``M * q``, so strided sizes
divide exactly; a Resize to another tensor's size (HRNet, FPN) is then a provable constant
ratio and is folded here, with ``fold_resize_scales``'s own proof, whatever the pass order::

    Resize(p, sizes=Concat(Shape(p)[:2], Shape(f)[2:]))  ==>  Resize(p, scales=[1, 1, 2, 2])

What cannot be fixed with constants is an error naming the node: a Reshape that splits a
varying size (``[1, C, H*W] -> [1, C, H, W]``) or that would need two ``-1``; a
ConstantOfShape/Expand/Tile of a traced size that then meets a varying tensor (the error names
the op where they meet and the nearest node with a constant shape upstream).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from segc.errors import SegcError
from segc.graph_view import GraphView
from segc.onnx_graph import constant_array, is_absent, unique_name
from segc.passbase import Contract, GraphPass, OptionKind, PassContext, PassOption, PassResult, register_pass
from segc.passes._shape_expr import ShapeAnalysis, ShapeConflict
from segc.passes._shape_sizes import INT64_MAX, reshape_dims
from segc.passes._sym_poly import Poly, as_int, float32_exact
from segc.shapes import OPT_SHAPE_KEY, SHAPE_RANGE_KEY, ShapeRange, format_ranges, parse_shape_range, parse_static_shape

_AXIS_NAMES_4D = ("batch", "channels", "height", "width")
_HUGE = 2**31
_SHAPE_LITERAL_OPS = {
    "Reshape",
    "Expand",
    "ConstantOfShape",
    "Tile",
    "Slice",
    "Resize",
    "Upsample",
    "AveragePool",
    "MaxPool",
    "Pad",
}


def _as_list(option: Any) -> list[str]:
    """Option values arrive as a list, or as one ';'-separated string from a command line."""
    if option is None:
        return []
    items = [option] if isinstance(option, str) else list(option)
    out: list[str] = []
    for item in items:
        out.extend(part.strip() for part in str(item).split(";") if part.strip())
    return out


def parse_ranges(ranges: Any, opts: Any) -> list[ShapeRange]:
    """Parse the ``ranges`` and ``opt`` options (old ATC ``name:[...]`` brackets accepted)."""
    parsed = [parse_shape_range(re.sub(r"[\[\]]", "", text)) for text in _as_list(ranges)]
    names = [r.name for r in parsed]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise SegcError(f"set_shape_range: input {sorted(dup)[0]!r} has more than one range")
    by_name = {r.name: r for r in parsed}
    for text in _as_list(opts):
        name, dims = parse_static_shape(text)
        if name not in by_name:
            raise SegcError(
                f"--opt-shape names {name!r}, which has no --input-shape range; ranges are given for: "
                f"{', '.join(names) or 'none'}"
            )
        by_name[name] = by_name[name].with_opt(dims)
    return [by_name[n] for n in names]


def _sanitize(name: str) -> str:
    return re.sub(r"\W", "_", name).strip("_") or "input"


@dataclass
class _Plan:
    """New input dims, the symbols standing for them, and the points the graph is checked at."""

    dims: dict[str, list[int | str]] = field(default_factory=dict)
    symbols: dict[str, list[Poly]] = field(default_factory=dict)
    traced: dict[str, int] = field(default_factory=dict)
    samples: list[dict[str, int]] = field(default_factory=list)
    changed_inputs: list[str] = field(default_factory=list)
    dynamic_dims: int = 0
    static_origin: bool = False  # some analysed dim was static in the model (a traced export)


def _plan(graph: gs.Graph, ranges: list[ShapeRange]) -> _Plan:
    inputs = {t.name: t for t in graph.inputs}
    plan = _Plan()
    lo_env: dict[str, int] = {}
    hi_env: dict[str, int] = {}
    opt_env: dict[str, int] = {}
    used_params: dict[str, tuple[int, int]] = {}
    for r in ranges:
        if r.name not in inputs:
            raise SegcError(
                f"set_shape_range: the model has no input {r.name!r}; its inputs are: "
                f"{', '.join(_describe(t) for t in graph.inputs)}"
            )
        tensor = inputs[r.name]
        old = list(tensor.shape) if tensor.shape is not None else None
        if old is None or len(old) != len(r.min):
            rank = "unknown" if old is None else str(len(old))
            raise SegcError(
                f"set_shape_range: range {r.atc()!r} has {len(r.min)} dims but input {r.name!r} has rank {rank}; "
                f"the model's inputs are: {', '.join(_describe(t) for t in graph.inputs)}"
            )
        dims: list[int | str] = []
        syms: list[Poly] = []
        for axis, (lo, hi, opt, cur) in enumerate(zip(r.min, r.max, r.opt, old, strict=False)):
            traced = cur if isinstance(cur, int) and cur > 0 else None
            if lo == hi and traced == lo:
                dims.append(lo)
                syms.append(Poly.const(lo))
                continue
            # the dim varies (or changes its static value): analyse it as a symbol
            if isinstance(cur, str) and cur and used_params.get(cur, (lo, hi)) == (lo, hi):
                pname = cur
            else:
                axis_name = _AXIS_NAMES_4D[axis] if len(old) == 4 else f"dim{axis}"
                pname = f"{_sanitize(r.name)}_{axis_name}"
                while pname in used_params and used_params[pname] != (lo, hi):
                    pname += "_"
            used_params[pname] = (lo, hi)
            dims.append(lo if lo == hi else pname)
            step = r.step(axis)
            # a dim on a /M grid is analysed as M * q: strided sizes then divide exactly
            sym = f"{pname}/{step}" if step > 1 else pname
            syms.append(Poly.symbol(sym) * step)
            at_trace = traced if traced is not None else opt
            if at_trace % step:
                raise SegcError(
                    f"set_shape_range: input {r.name!r} was exported at {at_trace} on dim {axis}, "
                    f"which is not a multiple of {step} as the range {r.atc()!r} says; export it at a multiple"
                )
            plan.traced[sym] = at_trace // step
            plan.static_origin |= traced is not None
            lo_env[sym], hi_env[sym], opt_env[sym] = lo // step, hi // step, opt // step
            plan.dynamic_dims += int(lo != hi)
        plan.dims[r.name] = dims
        plan.symbols[r.name] = syms
        if dims != old:
            plan.changed_inputs.append(r.name)
    for t in graph.inputs:
        # inputs without a range keep their static sizes (symbols only for their named dims)
        if t.name not in plan.symbols and t.shape is not None:
            plan.symbols[t.name] = [
                Poly.const(d)
                if isinstance(d, int) and d > 0
                else Poly.symbol(d if isinstance(d, str) and d else f"{t.name}.{i}")
                for i, d in enumerate(t.shape)
            ]
    plan.samples = [plan.traced, lo_env, hi_env, opt_env]
    return plan


def _describe(t: gs.Tensor) -> str:
    shape = "?" if t.shape is None else "x".join(str(d) for d in t.shape)
    return f"{t.name} [{shape}]"


def _regroup(src: list[int], dst: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of ``src`` dims with runs of ``dst`` dims of equal product (Reshape's axis map)."""
    if 0 in src or 0 in dst:
        return None
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi: list[int] = []
        gj: list[int] = []
        pi = pj = 1
        if i < len(src):
            gi.append(i)
            pi *= src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj *= dst[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif pj < pi and j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def _product(dims: tuple[Poly, ...] | list[Poly]) -> Poly:
    total = Poly.const(1)
    for d in dims:
        total = total * d
    return total


class _Fixer:
    """Called before the analysis visits each node: rewrites sizes baked in at the trace."""

    def __init__(self, graph: gs.Graph, analysis: ShapeAnalysis, traced_analysis: ShapeAnalysis | None) -> None:
        self.graph = graph
        self.analysis = analysis
        # the same graph with every input at its traced (static) size: what each computed
        # value was at export, used where a static export left half-folded size arithmetic
        self.traced_analysis = traced_analysis
        self.traced = analysis.traced or {}
        self.notes: list[str] = []
        self.counts = {"reshapes_fixed": 0, "resizes_fixed": 0, "expands_fixed": 0, "slices_fixed": 0, "pools_fixed": 0}
        self._taken: set[str] = set()
        self.static_origin = False

    # helpers -----------------------------------------------------------------------------------
    def _traced(self, dims: tuple[Poly, ...]) -> list[int] | None:
        out = []
        for d in dims:
            v = d.evaluate(self.traced)
            if v is None or v.denominator != 1:
                return None
            out.append(int(v))
        return out

    def _const(self, base: str, values: np.ndarray) -> gs.Constant:
        if not self._taken:  # filled on the first new constant: most graphs need none
            self._taken.update(self.graph.tensors().keys())
        return gs.Constant(unique_name(base, self._taken), values)

    @staticmethod
    def _varies(d: Poly) -> bool:
        return not d.is_const()

    def __call__(self, node: gs.Node) -> None:
        if (node.domain or "") not in ("", "ai.onnx"):
            return
        fix = getattr(self, f"_fix_{node.op}", None)
        if fix is not None:
            fix(node)

    # Reshape -----------------------------------------------------------------------------------
    def _fix_Reshape(self, node: gs.Node) -> None:
        """Constant (or half-folded computed) shapes: rewrite with 0/-1 where a group varies."""
        src = self.analysis.shape(node.inputs[0])
        if src is None or not any(self._varies(d) for d in src):
            return
        target = self.analysis.value(node.inputs[1])
        if target is None or not target.known:
            return  # computed by ops the analysis does not model: nothing to say
        literal_t = self._traced(tuple(e for e in target.elems if e is not None))  # all known
        t_in = self._traced(src)
        if t_in is None or literal_t is None:
            self.notes.append(f"Reshape {node.name!r}: sizes unknown at the traced shape; not checked")
            return
        allowzero = bool(node.attrs.get("allowzero", 0))
        current = reshape_dims(src, target, allowzero=allowzero)
        if current is not None and _product(current) == _product(src):
            return  # the element count matches for every size: nothing is baked in
        literal = literal_t
        total = int(np.prod(t_in)) if t_in else 1
        t_out: list[int] = []
        for i, v in enumerate(literal):
            if v == 0 and not allowzero:
                if i >= len(t_in):
                    raise SegcError(
                        f"set_shape_range: Reshape {node.name!r} copies dim {i} (0) that its input does not have"
                    )
                t_out.append(t_in[i])
            else:
                t_out.append(v)
        if t_out.count(-1) > 1:
            raise SegcError(f"set_shape_range: Reshape {node.name!r} has more than one -1 in {literal}")
        if -1 in t_out:
            known = int(np.prod([d for d in t_out if d != -1])) if len(t_out) > 1 else 1
            if known == 0 or total % known:
                raise SegcError(
                    f"set_shape_range: Reshape {node.name!r}: shape {literal} does not fit its input {t_in} at the "
                    "traced shape"
                )
            t_out[t_out.index(-1)] = total // known
        if int(np.prod(t_out)) != total:
            raise SegcError(
                f"set_shape_range: Reshape {node.name!r}: shape {literal} does not fit its input {t_in} at the traced "
                "shape"
            )
        groups = _regroup(t_in, t_out)
        if groups is None:
            raise SegcError(f"set_shape_range: Reshape {node.name!r}: cannot map its input dims {t_in} onto {t_out}")
        new: list[int] = list(literal)
        varying: list[int] = []
        for gi, gj in groups:
            sym = Poly.const(1)
            for i in gi:
                sym = sym * src[i]
            if sym.is_const():
                for j in gj:
                    if literal[j] == -1 or (literal[j] == 0 and not allowzero):
                        continue  # still resolves to the same constant
                    new[j] = t_out[j]
                continue
            if len(gj) != 1:
                names = ", ".join(str(src[i]) for i in gi)
                raise SegcError(
                    f"set_shape_range: Reshape {node.name!r} splits the varying size {sym} (from {names}) into "
                    f"{[t_out[j] for j in gj]} as traced: a constant shape cannot say which part varies; "
                    f"export the model with this reshape computed from x.shape"
                )
            j = gj[0]
            if not allowzero and j < len(src) and src[j] == sym:
                new[j] = 0
            else:
                new[j] = -1
                varying.append(j)
        if len(varying) > 1:
            raise SegcError(
                f"set_shape_range: Reshape {node.name!r} to {literal} has {len(varying)} output dims that vary "
                f"({', '.join(str(d) for d in src)} in), but a constant shape can infer only one (-1)"
            )
        if new == literal and constant_array(node.inputs[1]) is not None:
            return
        shown = literal if constant_array(node.inputs[1]) is not None else f"{target} (traced {literal})"
        node.inputs[1] = self._const(f"{node.name or 'reshape'}_shape", np.array(new, dtype=np.int64))
        self.counts["reshapes_fixed"] += 1
        self.notes.append(f"Reshape {node.name!r}: shape {shown} -> {new}")

    # Resize with traced sizes or scales -------------------------------------------------------------
    def _traced_resize(
        self, node: gs.Node, src: tuple[Poly, ...], axes: list[int]
    ) -> tuple[list[Fraction], str] | None:
        """Scales equal to what the Resize did at the traced shape, when its sizes or scales
        are baked (constant sizes, or size arithmetic that mixes traced constants with
        shapes); None when they already follow the input."""
        scales_t, sizes_t = self.analysis.resize_operands(node)
        if sizes_t is not None:
            literal = constant_array(sizes_t)
            if literal is not None:
                sizes: list[Fraction] = [Fraction(int(v)) for v in literal.reshape(-1)]
                shown = str(literal.reshape(-1).tolist())
            else:
                sym = self.analysis.value(sizes_t)
                if (
                    sym is not None
                    and sym.known
                    and all(
                        not (e.is_const() and self._varies(src[a]))
                        for a, e in zip(axes, sym.elems, strict=False)
                        if e is not None
                    )
                ):
                    return None  # sizes computed from shapes: they follow the input already
                if not self.static_origin or self.traced_analysis is None:
                    return None
                traced = self.traced_analysis.value(sizes_t)
                consts = None if traced is None else traced.constants()
                if consts is None:
                    return None
                sizes = list(consts)
                shown = f"computed as {sym} (traced {[str(c) for c in consts]})"
            t_in = self._traced(src)
            if t_in is None or len(sizes) != len(axes):
                return None
            return [Fraction(sz) / t_in[a] for a, sz in zip(axes, sizes, strict=False)], f"sizes {shown}"
        if scales_t is None or constant_array(scales_t) is not None:
            return None
        sym = self.analysis.value(scales_t)
        if sym is not None and sym.constants() is not None:
            return None  # provably constant (fold_resize_scales folds it)
        if not self.static_origin or self.traced_analysis is None:
            return None
        traced = self.traced_analysis.value(scales_t)
        consts = None if traced is None else traced.constants()
        if consts is None:
            return None
        return list(consts), f"scales computed from traced sizes ({self.analysis.unknown_reason(scales_t)})"

    def _fix_Resize(self, node: gs.Node) -> None:
        src = self.analysis.shape(node.inputs[0])
        if src is None or not any(self._varies(d) for d in src):
            return
        axes = node.attrs.get("axes")
        axes = list(range(len(src))) if axes is None else [a + len(src) if a < 0 else a for a in axes]
        found = self._traced_resize(node, src, axes)
        if found is None:
            return
        ratios, what = found
        for axis, k in zip(axes, ratios, strict=False):
            if not float32_exact(k) or k <= 0:
                raise SegcError(
                    f"set_shape_range: Resize {node.name!r} has {what} traced at input {self._traced(src)}; "
                    f"the ratio {k} on axis {axis} is not an exact scale, so its output cannot follow the range"
                )
        if node.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise SegcError(
                f"set_shape_range: Resize {node.name!r} has {what} and keep_aspect_ratio_policy; cannot rewrite to "
                "scales"
            )
        scales = self._const(f"{node.name or 'resize'}_scales", np.array([float(k) for k in ratios], dtype=np.float32))
        if node.op == "Upsample" or self.analysis.opset <= 10:
            node.inputs[1] = scales
            self.counts["resizes_fixed"] += 1
            self.notes.append(f"{node.op} {node.name!r}: {what} -> scales {[str(k) for k in ratios]}")
            return
        while len(node.inputs) < 3:
            node.inputs.append(gs.Variable.empty())
        node.inputs[2] = scales
        while len(node.inputs) > 3:
            del node.inputs[3]
        if is_absent(node.inputs[1]) and self.analysis.opset < 13:
            node.inputs[1] = self._const(f"{node.name or 'resize'}_roi", np.zeros(0, np.float32))
        self.counts["resizes_fixed"] += 1
        self.notes.append(f"Resize {node.name!r}: {what} -> scales {[str(k) for k in ratios]}")

    _fix_Upsample = _fix_Resize

    # Expand -----------------------------------------------------------------------------------------
    def _fix_Expand(self, node: gs.Node) -> None:
        target = constant_array(node.inputs[1])
        src = self.analysis.shape(node.inputs[0])
        if target is None or src is None or not any(self._varies(d) for d in src):
            return
        literal = [int(v) for v in target.reshape(-1)]
        t_in = self._traced(src)
        if t_in is None:
            return
        new = list(literal)
        offset = len(literal) - len(src)
        for i, d in enumerate(src):
            j = i + offset
            if j >= 0 and self._varies(d) and literal[j] == t_in[i] and literal[j] != 1:
                new[j] = 1  # broadcasting keeps the input's own (varying) size
        if new != literal:
            node.inputs[1] = self._const(f"{node.name or 'expand'}_shape", np.array(new, dtype=np.int64))
            self.counts["expands_fixed"] += 1
            self.notes.append(f"Expand {node.name!r}: shape {literal} -> {new}")

    # Slice ------------------------------------------------------------------------------------------
    def _fix_Slice(self, node: gs.Node) -> None:
        if self.analysis.opset < 10 or len(node.inputs) < 3:
            return
        src = self.analysis.shape(node.inputs[0])
        ends = constant_array(node.inputs[2])
        starts = constant_array(node.inputs[1])
        if src is None or ends is None or starts is None or not any(self._varies(d) for d in src):
            return
        axes = (
            constant_array(node.inputs[3])
            if len(node.inputs) > 3 and not is_absent(node.inputs[3])
            else np.arange(len(ends))
        )
        steps = (
            constant_array(node.inputs[4])
            if len(node.inputs) > 4 and not is_absent(node.inputs[4])
            else np.ones(len(ends), np.int64)
        )
        if axes is None or steps is None:
            return
        t_in = self._traced(src)
        if t_in is None:
            return
        new = [int(e) for e in ends.reshape(-1)]
        for k, (axis, step) in enumerate(zip(axes.reshape(-1).tolist(), steps.reshape(-1).tolist(), strict=False)):
            axis = axis + len(src) if axis < 0 else axis
            if step > 0 and self._varies(src[axis]) and t_in[axis] <= new[k] < _HUGE:
                new[k] = INT64_MAX  # "to the end", as traced
        if new != [int(e) for e in ends.reshape(-1)]:
            node.inputs[2] = self._const(f"{node.name or 'slice'}_ends", np.array(new, dtype=ends.dtype))
            self.counts["slices_fixed"] += 1
            self.notes.append(
                f"Slice {node.name!r}: ends {ends.reshape(-1).tolist()} -> "
                f"{['end' if e == INT64_MAX else e for e in new]}"
            )

    # Pools over the whole traced image ---------------------------------------------------------------
    def _fix_pool(self, node: gs.Node, global_op: str) -> None:
        src = self.analysis.shape(node.inputs[0])
        kernel = node.attrs.get("kernel_shape")
        if src is None or kernel is None or not any(self._varies(d) for d in src[2:]):
            return
        t_in = self._traced(src)
        if t_in is None:
            return
        whole = [k == t for k, t in zip(kernel, t_in[2:], strict=False)]
        covers_varying = [w for w, d in zip(whole, src[2:], strict=False) if self._varies(d)]
        if not any(covers_varying):
            return
        pads = list(node.attrs.get("pads", [0] * (2 * len(kernel))))
        dil = list(node.attrs.get("dilations", [1] * len(kernel)))
        auto = node.attrs.get("auto_pad", "NOTSET")
        one_output = len(node.outputs) == 1 or all(
            not o.outputs and o not in self.graph.outputs for o in node.outputs[1:]
        )
        if all(whole) and not any(pads) and all(d == 1 for d in dil) and auto in ("NOTSET", "VALID") and one_output:
            node.op = global_op
            node.attrs.clear()
            while len(node.outputs) > 1:
                node.outputs.pop()
            self.counts["pools_fixed"] += 1
            self.notes.append(
                f"{global_op.replace('Global', '')} {node.name!r}: kernel {list(kernel)} = traced size -> {global_op}"
            )
            return
        raise SegcError(
            f"set_shape_range: {node.op} {node.name!r} has kernel {list(kernel)} = the traced size {t_in[2:]} on a "
            "varying axis "
            f"(an adaptive pooling baked in at export) and cannot become a global pooling"
        )

    def _fix_AveragePool(self, node: gs.Node) -> None:
        self._fix_pool(node, "GlobalAveragePool")

    def _fix_MaxPool(self, node: gs.Node) -> None:
        self._fix_pool(node, "GlobalMaxPool")


def _grid_advice(graph: gs.Graph, ranges: list[ShapeRange]) -> str:
    """What range the model can run on: its total stride's grid, as ``--input-shape`` text."""
    from segc.passes._shape_stride import total_stride
    from segc.passes.fold_resize_scales import suggest_range

    generic = "pick range bounds it supports"
    if any(r.has_multiples for r in ranges):
        return generic
    stride = total_stride(graph)
    suggested = [suggest_range(r, stride) for r in ranges if not r.is_static] if stride and stride > 1 else []
    if not suggested or any(r is None for r in suggested):
        return generic + " (e.g. multiples of its total stride)"
    shown = " ".join(f"--input-shape {r.atc()}" for r in suggested if r is not None)
    return f"sizes must be multiples of its total stride {stride}: give {shown}"


def _fold_on_grid(graph: gs.Graph, analysis: ShapeAnalysis, ranges: list[ShapeRange], notes: list[str]) -> int:
    """Fold the Resizes whose computed sizes the ``/M`` grid makes provable ratios.

    The analysis ran with every gridded dim as ``M * q``, so ``fold_resize_scales``'s own
    proof applies unchanged; doing it here means a range with multiples is enough for an
    FPN's ``size=f.shape[2:]`` to become constant scales, whatever the pass order.
    """
    from segc.passes.fold_resize_scales import apply_resize_fold

    grid = "; ".join(r.multiples_text() for r in ranges if r.has_multiples)
    folded = 0
    for node in [n for n in graph.nodes if n.op in ("Resize", "Upsample") and (n.domain or "") in ("", "ai.onnx")]:
        scales = apply_resize_fold(graph, node, analysis)
        if scales is None:
            continue
        folded += 1
        notes.append(
            f"{node.op} {node.name!r}: computed sizes/scales -> scales {[str(k) for k in scales]} (exact because "
            f"{grid})"
        )
    return folded


def _suspects(graph: gs.Graph, node: gs.Node, limit: int = 400) -> list[gs.Node]:
    """Nearest upstream nodes with a constant shape-like input: where a traced size may live.

    Breadth first over the graph view (segc.graph_view), nearest layer first, at most
    ``limit`` nodes looked at and two named."""
    nodes = list(graph.nodes)
    index = {id(n): i for i, n in enumerate(nodes)}
    if id(node) not in index:
        return []
    view = GraphView.from_gs(graph, nodes)
    found: list[gs.Node] = []
    for seen, p in enumerate(view.walk_upstream(index[id(node)]), start=1):
        if seen > limit or len(found) >= 2:
            break
        cand = nodes[p]
        if (
            cand.op in _SHAPE_LITERAL_OPS
            and any(constant_array(x) is not None for x in cand.inputs[1:])
            or cand.op == "ConstantOfShape"
        ):
            found.append(cand)
    return found


@register_pass
class SetShapeRange(GraphPass):
    """Make chosen input dimensions dynamic; fix or reject sizes baked in at export.

    Stats: ``inputs_changed``, ``dynamic_dims`` and one counter per kind of fix
    (``reshapes_fixed``, ``resizes_fixed``, ``expands_fixed``, ``slices_fixed``, ``pools_fixed``);
    ``notes`` has one line per rewrite.
    """

    name = "set_shape_range"
    contract = Contract.EXACT
    summary = (
        "make input dims dynamic over an ATC-style range; fix sizes baked in at export or name the node that bakes them"
    )
    options = {
        "ranges": PassOption(OptionKind.STR_LIST, "list of NAME:1,3,640~4096,640~4096 (ATC syntax; 640~4096/32: "
                             "multiples of 32 only), one per input to change"),
        "opt": PassOption(OptionKind.STR_LIST,
                          "list of NAME:1,3,1280,1280 optimisation shapes (default: each range's minimum)"),
    }
    runs_after = ("simplify", "fold_resize_scales", "rewrite_deform_conv")
    order_reason = "ranges are set on the folded graph in its final form, whose baked sizes they fix"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        ranges = parse_ranges(ctx.option("ranges"), ctx.option("opt"))
        if not ranges:
            return PassResult(changed=False, notes=["no ranges given: nothing to do"])
        plan = _plan(graph, ranges)
        ctx.metadata[SHAPE_RANGE_KEY] = format_ranges(ranges)
        # only chosen optima are stored: a default one (the minimum) lets each target pick its own
        ctx.metadata[OPT_SHAPE_KEY] = ";".join(
            f"{r.name}:{','.join(str(d) for d in r.opt)}" for r in ranges if r.opt_given
        )

        def hint(t: gs.Tensor, axis: int) -> int | None:
            shape = t.shape
            if shape is None or axis >= len(shape) or not isinstance(shape[axis], int) or plan.changed_inputs == []:
                return None
            return int(shape[axis])  # the exported annotation: the traced size

        analysis = ShapeAnalysis(graph, plan.symbols, samples=plan.samples, strict=True, traced=plan.traced, hint=hint)
        traced_analysis = None
        if plan.static_origin:
            def at_trace(p: Poly) -> Poly:
                v = p.evaluate(plan.traced)
                return p if v is None else Poly.const(v)

            traced_dims = {name: [at_trace(p) for p in syms] for name, syms in plan.symbols.items()}
            traced_analysis = ShapeAnalysis(graph, traced_dims).run()
        fixer = _Fixer(graph, analysis, traced_analysis)
        fixer.static_origin = plan.static_origin
        range_text = format_ranges(ranges)
        try:
            analysis.run(before=fixer)
        except ShapeConflict as err:
            where = _suspects(graph, err.node) if err.one_side_fixed else []
            if where:
                hint_text = "; a size traced at export is probably baked in at " + ", ".join(
                    f"{n.op} {n.name!r}" for n in where
                )
            elif err.one_side_fixed:
                hint_text = "; one side has a size fixed at export"
            else:
                hint_text = "; both sizes follow the input, so the model itself cannot run there: " + _grid_advice(
                    graph, ranges
                )
            raise SegcError(f"set_shape_range: the graph does not follow {range_text}: {err}{hint_text}") from None
        if any(r.has_multiples for r in ranges):
            fixer.counts["resizes_folded"] = _fold_on_grid(graph, analysis, ranges, fixer.notes)
        fixes = sum(fixer.counts.values())
        stats: dict[str, Any] = {
            "inputs_changed": len(plan.changed_inputs),
            "dynamic_dims": plan.dynamic_dims,
            **fixer.counts,
        }
        if not plan.changed_inputs and not fixes:
            return PassResult(changed=False, stats=stats, notes=fixer.notes)
        self._annotate(graph, plan, analysis)
        return PassResult(changed=True, stats=stats, notes=fixer.notes)

    @staticmethod
    def _annotate(graph: gs.Graph, plan: _Plan, analysis: ShapeAnalysis) -> None:
        """New input dims; output dims from the analysis; traced intermediate shapes dropped."""
        for t in graph.inputs:
            if t.name in plan.dims:
                t.shape = list(plan.dims[t.name])
        # the analysed symbol of each input dim (``32*x_height/32`` on a grid) -> its dim_param
        names = {str(p): str(p) for syms in plan.symbols.values() for p in syms if not p.is_const()}
        for name, syms in plan.symbols.items():
            for p, d in zip(syms, plan.dims.get(name, []), strict=False):
                if not p.is_const() and isinstance(d, str):
                    names[str(p)] = d
        io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
        for t in graph.tensors().values():
            if isinstance(t, gs.Variable) and id(t) not in io and t.shape is not None:
                t.shape = None  # annotations from the trace would contradict the new range
        for t in graph.outputs:
            dims = analysis.shapes.get(t.name)
            if dims is None:
                if t.shape is not None:
                    t.shape = [None] * len(t.shape)  # rank kept, sizes unknown
                continue
            out: list[int | str | None] = []
            for dim in dims:
                v = as_int(dim)
                out.append(v if v is not None else names.get(str(dim)))
            t.shape = out
