"""Shape-analysis handlers for shape and index manipulation: Shape, Gather, Slice, Concat, Reshape, reductions..."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import onnx_graphsurgeon as gs
from segc.onnx_graph import is_absent
from segc.passes._shape_expr import ShapeAnalysis
from segc.passes._shape_sizes import reshape_dims, slice_length
from segc.passes._shape_table import HANDLERS
from segc.passes._sym_poly import (
    MAX_VALUE_ELEMS,
    Poly,
    SymValue,
    as_int,
    constant_value,
)


@HANDLERS.register("Shape")
def shape_op(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None, why=f"the rank of {node.inputs[0].name!r} is unknown")
        return
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    dims = list(s)[start:] if end is None else list(s)[start:int(end)]
    sa.record(node.outputs[0], None, SymValue("int", tuple(dims)))


@HANDLERS.register("Size")
def size_op(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], (), why=f"the rank of {node.inputs[0].name!r} is unknown")
        return
    total = Poly.const(1)
    for d in s:
        total = total * d
    sa.record(node.outputs[0], (), SymValue("int", (total,), scalar=True))


@HANDLERS.register("Gather")
def gather(sa: ShapeAnalysis, node: gs.Node) -> None:
    data, idx = node.inputs[0], node.inputs[1]
    axis = int(node.attrs.get("axis", 0))
    v = sa.value(data)
    iv = sa.value(idx)
    if v is not None and not v.scalar and axis == 0 and iv is not None and iv.ints() is not None:
        n = len(v.elems)
        wanted = [i + n if i < 0 else i for i in iv.ints() or []]
        if all(0 <= i < n for i in wanted):
            picks = [v.elems[i] for i in wanted]
            why = sa.unknown_from(node, node.inputs)
            sa.record(node.outputs[0], None, SymValue(v.kind, tuple(picks), scalar=iv.scalar), why=why)
            return
    s, si = sa.shape(data), sa.shape(idx)
    if s is None or si is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    axis = axis + len(s) if axis < 0 else axis
    sa.record(node.outputs[0], s[:axis] + si + s[axis + 1 :], why=sa.unknown_from(node, node.inputs))


def _slice_params(
    sa: ShapeAnalysis, node: gs.Node, rank: int
) -> tuple[list[Poly], list[Poly], list[int], list[int]] | None:
    """(starts, ends, axes, steps) of a Slice (attributes before opset 10), None unless all known."""
    if sa.opset < 10:
        starts = [Poly.const(x) for x in node.attrs.get("starts", [])]
        ends = [Poly.const(x) for x in node.attrs.get("ends", [])]
        axes = list(node.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        sv = sa.value(node.inputs[1])
        ev = sa.value(node.inputs[2])
        if sv is None or ev is None or not sv.known or not ev.known:
            return None
        starts = [e for e in sv.elems if e is not None]  # all there: sv.known
        ends = [e for e in ev.elems if e is not None]
        axes_t = node.inputs[3] if len(node.inputs) > 3 and not is_absent(node.inputs[3]) else None
        steps_t = node.inputs[4] if len(node.inputs) > 4 and not is_absent(node.inputs[4]) else None
        given_axes = sa.ints(axes_t) if axes_t is not None else list(range(len(starts)))
        given_steps = sa.ints(steps_t) if steps_t is not None else [1] * len(starts)
        if given_axes is None or given_steps is None:
            return None
        axes, steps = given_axes, given_steps
    axes = [a + rank if a < 0 else a for a in axes]
    return starts, ends, axes, steps


@HANDLERS.register("Slice")
def slice_(sa: ShapeAnalysis, node: gs.Node) -> None:
    v = sa.value(node.inputs[0])
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    params = _slice_params(sa, node, len(s))
    if params is None:
        sa.record(node.outputs[0], None, why=f"Slice {node.name!r} has non-constant bounds")
        return
    starts, ends, axes, steps = params
    if v is not None and not v.scalar and axes == [0]:
        first, last = as_int(starts[0]), as_int(ends[0])
        if first is not None and last is not None:
            picked = tuple(v.elems[slice(first, last, steps[0])])
            sa.record(node.outputs[0], None, SymValue(v.kind, picked), why=sa.unknown_from(node, node.inputs))
            return
    out = list(s)
    for st, en, ax, step in zip(starts, ends, axes, steps, strict=False):  # extra bounds: ignored
        out[ax] = slice_length(s[ax], st, en, step, fresh=partial(sa.fresh_dim, node.outputs[0], ax),
                               fits=sa.fits)
    sa.record(node.outputs[0], tuple(out), why=f"Slice {node.name!r} of a data tensor")


@HANDLERS.register("Unsqueeze")
def unsqueeze(sa: ShapeAnalysis, node: gs.Node) -> None:
    axes = node.attrs.get("axes") if sa.opset < 13 else sa.ints(node.inputs[1] if len(node.inputs) > 1 else None)
    v = sa.value(node.inputs[0])
    if axes is not None and v is not None and v.scalar and list(axes) in ([0], [-1]):
        sa.record(node.outputs[0], None, SymValue(v.kind, v.elems), why=sa.unknown_from(node, node.inputs))
        return
    s = sa.shape(node.inputs[0])
    if s is None or axes is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    rank = len(s) + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    out = list(s)
    for a in axes:
        out.insert(a, Poly.const(1))
    sa.record(node.outputs[0], tuple(out), why=sa.unknown_from(node, node.inputs))


@HANDLERS.register("Squeeze")
def squeeze(sa: ShapeAnalysis, node: gs.Node) -> None:
    axes = node.attrs.get("axes") if sa.opset < 13 else sa.ints(node.inputs[1] if len(node.inputs) > 1 else None)
    v = sa.value(node.inputs[0])
    if v is not None and not v.scalar and len(v.elems) == 1 and (axes is None or list(axes) in ([0], [-1])):
        sa.record(node.outputs[0], None, SymValue(v.kind, v.elems, scalar=True), why=sa.unknown_from(node, node.inputs))
        return
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    if axes is None:
        if any(as_int(d) is None for d in s):
            sa.record(node.outputs[0], None, why=f"Squeeze {node.name!r} without axes on a dynamic shape")
            return
        keep = [d for d in s if as_int(d) != 1]
    else:
        drop = {a + len(s) if a < 0 else a for a in axes}
        keep = [d for i, d in enumerate(s) if i not in drop]
    sa.record(node.outputs[0], tuple(keep), why=sa.unknown_from(node, node.inputs))


@HANDLERS.register("Concat")
def concat(sa: ShapeAnalysis, node: gs.Node) -> None:
    axis = int(node.attrs.get("axis", 0))
    vals = [sa.value(t) for t in node.inputs]
    if all(v is not None and not v.scalar for v in vals) and axis in (0, -1):
        elems: list[Poly | None] = []
        for v in vals:
            elems.extend(v.elems)  # type: ignore[union-attr]
        kinds = {v.kind for v in vals}  # type: ignore[union-attr]
        if len(kinds) == 1 and len(elems) <= MAX_VALUE_ELEMS:
            why = sa.unknown_from(node, node.inputs)
            sa.record(node.outputs[0], None, SymValue(kinds.pop(), tuple(elems)), why=why)
            return
    shapes = [sa.shape(t) for t in node.inputs]
    known = [s for s in shapes if s is not None]
    if not known or len(known) != len(shapes):
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    rank = len(known[0])
    axis = axis + rank if axis < 0 else axis
    out = list(known[0])
    total = Poly.const(0)
    for s in known:
        total = total + s[axis]
        for i in range(rank):
            if i != axis:
                out[i] = sa.merge(out[i], s[i], node, f"axis {i} of the concatenated inputs")
    out[axis] = total
    sa.record(node.outputs[0], tuple(out), why=sa.unknown_from(node, node.inputs))


@HANDLERS.register("Reshape")
def reshape(sa: ShapeAnalysis, node: gs.Node) -> None:
    v = sa.value(node.inputs[0])
    target = sa.value(node.inputs[1])
    if v is not None and target is not None and target.ints() is not None:
        dims = target.ints() or []
        if (not dims and len(v.elems) == 1) or (len(dims) == 1 and dims[0] in (-1, len(v.elems))):
            why = sa.unknown_from(node, node.inputs)
            sa.record(node.outputs[0], None, SymValue(v.kind, v.elems, scalar=not dims), why=why)
            return
    s = sa.shape(node.inputs[0])
    if target is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    out_shape = reshape_dims(s, target, allowzero=bool(node.attrs.get("allowzero", 0)))
    sa.record(node.outputs[0], out_shape, why=sa.unknown_from(node, node.inputs))


@HANDLERS.register("ReduceProd")
def reduce_prod(sa: ShapeAnalysis, node: gs.Node) -> None:
    v = sa.value(node.inputs[0])
    axes = node.attrs.get("axes")
    whole_vector = axes is None or list(axes) in ([0], [-1])
    no_axes_input = len(node.inputs) < 2 or is_absent(node.inputs[1])
    if v is not None and not v.scalar and v.known and whole_vector and no_axes_input:
        total = Poly.const(1)
        for e in v.elems:
            total = total * e  # type: ignore[operator]
        keep = bool(node.attrs.get("keepdims", 1))
        sa.record(node.outputs[0], None, SymValue(v.kind, (total,), scalar=not keep))
        return
    reduction(sa, node)


@HANDLERS.register("ConstantOfShape")
def constant_of_shape(sa: ShapeAnalysis, node: gs.Node) -> None:
    sv = sa.value(node.inputs[0])
    if sv is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    shape = tuple(e if e is not None else sa.fresh_dim(node.outputs[0], i) for i, e in enumerate(sv.elems))
    fill = node.attrs.get("value")
    arr = np.asarray(fill.values) if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
    n = as_int(shape[0]) if len(shape) == 1 else None
    if n is not None and n <= MAX_VALUE_ELEMS and arr.size == 1:
        base = constant_value(arr.reshape(-1))
        if base is not None:
            sa.record(node.outputs[0], None, SymValue(base.kind, base.elems * n))
            return
    sa.record(node.outputs[0], shape)


@HANDLERS.register("Range")
def range_(sa: ShapeAnalysis, node: gs.Node) -> None:
    vals = [sa.value(t) for t in node.inputs[:3]]
    if all(v is not None and v.constants() is not None for v in vals):
        start, limit, delta = (v.constants()[0] for v in vals)  # type: ignore[index,union-attr]
        n = max(math.ceil((limit - start) / delta), 0) if delta else 0
        kind = vals[0].kind  # type: ignore[union-attr]
        if n <= MAX_VALUE_ELEMS:
            sa.record(node.outputs[0], None, SymValue(kind, tuple(Poly.const(start + i * delta) for i in range(n))))
        else:
            sa.record(node.outputs[0], (Poly.const(n),))
        return
    if all(v is not None and v.known for v in vals):
        start, limit, delta = (v.elems[0] for v in vals)  # type: ignore[union-attr]
        if start.is_const() and delta.is_const() and delta.constant > 0:  # type: ignore[union-attr]
            # a size-dependent length: ceil((limit - start) / delta), limit >= start assumed
            n_sym = ((limit - start) * (1 / delta.constant)).ceil()  # type: ignore[operator,union-attr]
            sa.record(node.outputs[0], (n_sym,), why=f"Range {node.name!r} has a size-dependent length")
            return
    sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))


# ReduceProd also multiplies out a small value (the element count of a shape): handler above
REDUCE_OPS = (
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceSumSquare",
)


@HANDLERS.register(*REDUCE_OPS)
def reduction(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and not is_absent(node.inputs[1]):
        axes = sa.ints(node.inputs[1])
        if axes is None:
            sa.record(node.outputs[0], None)
            return
    if s is None:
        sa.record(node.outputs[0], None)
        return
    keep = bool(node.attrs.get("keepdims", 1))
    if axes is None or len(axes) == 0:
        if node.attrs.get("noop_with_empty_axes", 0):
            sa.record(node.outputs[0], s)
            return
        axes = list(range(len(s)))
    red = {a + len(s) if a < 0 else a for a in axes}
    out = [Poly.const(1) if i in red else d for i, d in enumerate(s) if keep or i not in red]
    sa.record(node.outputs[0], tuple(out))


@HANDLERS.register("ArgMax", "ArgMin")
def arg_max(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None)
        return
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(s) if axis < 0 else axis
    keep = bool(node.attrs.get("keepdims", 1))
    out = [Poly.const(1) if i == axis else d for i, d in enumerate(s) if keep or i != axis]
    sa.record(node.outputs[0], tuple(out))


@HANDLERS.register("Transpose")
def transpose(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None)
        return
    perm = node.attrs.get("perm") or list(range(len(s)))[::-1]
    sa.record(node.outputs[0], tuple(s[p] for p in perm))


@HANDLERS.register("Flatten")
def flatten(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None)
        return
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(s) if axis < 0 else axis
    a, b = Poly.const(1), Poly.const(1)
    for d in s[:axis]:
        a = a * d
    for d in s[axis:]:
        b = b * d
    sa.record(node.outputs[0], (a, b))


@HANDLERS.register("Split")
def split(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        for out in node.outputs:
            sa.record(out, None)
        return
    axis = int(node.attrs.get("axis", 0))
    axis = axis + len(s) if axis < 0 else axis
    split = node.attrs.get("split")
    if split is None and len(node.inputs) > 1 and not is_absent(node.inputs[1]):
        split = sa.ints(node.inputs[1])
    k = len(node.outputs)
    for i, out in enumerate(node.outputs):
        dims = list(s)
        if split is not None:
            dims[axis] = Poly.const(split[i])
        else:
            part = s[axis].exact_div(k)
            dims[axis] = part if part is not None and part.is_integer_valued() else sa.fresh_dim(out, axis)
        sa.record(out, tuple(dims))


@HANDLERS.register("Expand")
def expand(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    target = sa.value(node.inputs[1])
    if s is None or target is None:
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, node.inputs))
        return
    tshape = tuple(e if e is not None else sa.fresh_dim(node.outputs[0], i) for i, e in enumerate(target.elems))
    sa.record(node.outputs[0], sa.broadcast([s, tshape], node))


@HANDLERS.register("Tile")
def tile(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    reps = sa.value(node.inputs[1])
    if s is None or reps is None or len(reps.elems) != len(s):
        sa.record(node.outputs[0], None)
        return
    pairs = enumerate(zip(s, reps.elems, strict=True))
    tiled = (d * r if r is not None else sa.fresh_dim(node.outputs[0], i) for i, (d, r) in pairs)
    sa.record(node.outputs[0], tuple(tiled))
