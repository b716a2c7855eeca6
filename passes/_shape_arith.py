"""Shape-analysis handlers for values and elementwise ops.

Constants, casts, rounding, unary and broadcasting arithmetic, MatMul and Gemm.

Small integer values (a ``Shape`` output, a Concat of sizes) are tracked exactly here, which is
what lets ``fold_resize_scales`` prove that ``sizes = Shape(x)[2:] * 2`` is ``scales = 2``.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs
from segc.onnx_graph import constant_array, is_absent
from segc.passes._shape_expr import ShapeAnalysis
from segc.passes._shape_table import HANDLERS
from segc.passes._sym_poly import (
    ONNX_TO_KIND,
    OP_SIGN,
    Poly,
    SymValue,
    arith,
    cast_value,
    constant_value,
    kind_of_dtype,
)


def _value_binop(sa: ShapeAnalysis, node: gs.Node, a: SymValue, b: SymValue) -> SymValue | None:
    op = node.op
    n = max(len(a.elems), len(b.elems))
    if len(a.elems) not in (1, n) or len(b.elems) not in (1, n):
        return None
    kind = a.kind
    out: list[Poly | None] = []
    why = ""
    for i in range(n):
        x = a.elems[i if len(a.elems) > 1 else 0]
        y = b.elems[i if len(b.elems) > 1 else 0]
        r = None if x is None or y is None else arith(op, kind, x, y)
        if r is None and x is not None and y is not None and not why:
            why = f"{op} {node.name!r} computes ({x}) {OP_SIGN.get(op, op)} ({y}), which is not exact in {kind}"
        out.append(r)
    value = SymValue(kind, tuple(out), scalar=a.scalar and b.scalar)
    if not value.known:
        sa.why_unknown[node.outputs[0].name] = why or sa.unknown_from(node, node.inputs)
    return value


@HANDLERS.register("Constant")
def constant(sa: ShapeAnalysis, node: gs.Node) -> None:
    arr = constant_array(node.outputs[0])
    if arr is None:
        sa.record(node.outputs[0], None, why=f"Constant {node.name!r} is not a tensor")
        return
    v = constant_value(arr)
    sa.record(node.outputs[0], tuple(Poly.const(d) for d in arr.shape) if v is None else None, v)


@HANDLERS.register("Identity")
def identity(sa: ShapeAnalysis, node: gs.Node) -> None:
    v = sa.value(node.inputs[0])
    sa.record(node.outputs[0], sa.shape(node.inputs[0]), v, why=sa.unknown_from(node, node.inputs))


@HANDLERS.register("Cast")
def cast(sa: ShapeAnalysis, node: gs.Node) -> None:
    src = sa.value(node.inputs[0])
    to = ONNX_TO_KIND.get(int(node.attrs.get("to", 0)))
    if src is None or to is None:
        why = sa.unknown_from(node, node.inputs) if src is None else f"Cast {node.name!r} to an unsupported type"
        sa.record(node.outputs[0], sa.shape(node.inputs[0]), None, why=why)
        return
    value = SymValue(to, tuple(cast_value(e, src.kind, to) for e in src.elems), src.scalar)
    why = f"Cast {node.name!r} to {to} is not exact" if src.known else sa.unknown_from(node, node.inputs)
    sa.record(node.outputs[0], None, value, why=why)


@HANDLERS.register("CastLike")
def cast_like(sa: ShapeAnalysis, node: gs.Node) -> None:
    target = node.inputs[1]
    kind = kind_of_dtype(target.dtype) if target.dtype is not None else None
    src = sa.value(node.inputs[0])
    if src is None or kind is None:
        same_shape(sa, node)
        return
    value = SymValue(kind, tuple(cast_value(e, src.kind, kind) for e in src.elems), src.scalar)
    sa.record(node.outputs[0], None, value)


@HANDLERS.register("Floor")
def floor(sa: ShapeAnalysis, node: gs.Node) -> None:
    _elementwise(sa, node, Poly.floor)


@HANDLERS.register("Ceil")
def ceil(sa: ShapeAnalysis, node: gs.Node) -> None:
    _elementwise(sa, node, Poly.ceil)


@HANDLERS.register("Neg")
def neg(sa: ShapeAnalysis, node: gs.Node) -> None:
    _elementwise(sa, node, lambda e: -e)


def _abs(e: Poly) -> Poly | None:
    """|e| where it can be written: a constant, or a size known to be non-negative."""
    if e.is_const():
        return Poly.const(abs(e.constant))
    return e if e.is_nonneg() else None


@HANDLERS.register("Abs")
def abs_(sa: ShapeAnalysis, node: gs.Node) -> None:
    _elementwise(sa, node, _abs)


def _elementwise(sa: ShapeAnalysis, node: gs.Node, fn: Callable[[Poly], Poly | None]) -> None:
    """A one-input op applied to each element of a small value (``fn`` None: not writable);
    without a value, the output has the input's shape."""
    v = sa.value(node.inputs[0])
    if v is None:
        same_shape(sa, node)
        return
    value = SymValue(v.kind, tuple(None if e is None else fn(e) for e in v.elems), v.scalar)
    sa.record(node.outputs[0], None, value, why=sa.unknown_from(node, node.inputs))


# Ops whose (first) output has the shape of their first input. Abs, Cast, CastLike, Ceil, Floor,
# Identity and Neg also track values and have handlers of their own above.
SAME_SHAPE_OPS = (
    "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Celu", "Clip", "Cos", "Cosh", "Dropout", "Elu", "Erf", "Exp",
    "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "IsInf", "IsNaN", "LeakyRelu", "Log", "LogSoftmax",
    "LpNormalization", "Mish", "Not", "PRelu", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign",
    "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LRN", "MeanVarianceNormalization",
    "QuantizeLinear", "DequantizeLinear", "Trilu", "CumSum", "BitwiseNot",
)
BROADCAST_OPS = (
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
)


@HANDLERS.register(*SAME_SHAPE_OPS)
def same_shape(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    sa.record(node.outputs[0], s, why=f"{node.op} {node.name!r} of a data tensor")
    for extra in node.outputs[1:]:  # BatchNorm/LayerNorm/Dropout side outputs
        sa.record(extra, None)


@HANDLERS.register(*BROADCAST_OPS)
def broadcasting(sa: ShapeAnalysis, node: gs.Node) -> None:
    ins = [t for t in node.inputs if not is_absent(t)]
    vals = [sa.value(t) for t in ins]
    if node.op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(vals) == 2 and all(v is not None for v in vals):
        if vals[0].kind == vals[1].kind:  # type: ignore[union-attr]
            res = _value_binop(sa, node, vals[0], vals[1])  # type: ignore[arg-type]
            if res is not None:
                sa.record(node.outputs[0], None, res, why=sa.why_unknown.get(node.outputs[0].name))
                return
    if node.op == "Equal" and len(vals) == 2 and all(v is not None for v in vals):
        res = _value_binop(sa, node, vals[0], vals[1])  # type: ignore[arg-type]
        if res is not None:
            sa.record(node.outputs[0], None, SymValue("bool", res.elems, res.scalar))
            return
    if node.op == "Where" and len(vals) == 3 and vals[0] is not None and vals[1] is not None and vals[2] is not None:
        cond, a, b = vals[0], vals[1], vals[2]
        n = max(len(cond.elems), len(a.elems), len(b.elems))

        def pick(v: SymValue, i: int) -> Poly | None:
            return v.elems[i if len(v.elems) > 1 else 0]

        if all(len(v.elems) in (1, n) for v in (cond, a, b)):
            conds = [c for c in (pick(cond, i) for i in range(n)) if c is not None and c.is_const()]
            if len(conds) == n:  # every condition known
                elems = tuple(pick(a, i) if c.constant else pick(b, i) for i, c in enumerate(conds))
                sa.record(node.outputs[0], None, SymValue(a.kind, elems, cond.scalar and a.scalar and b.scalar))
                return
    shapes = [sa.shape(t) for t in ins]
    if any(s is None for s in shapes):
        sa.record(node.outputs[0], None, why=sa.unknown_from(node, ins))
        return
    sa.record(node.outputs[0], sa.broadcast(shapes, node), why=sa.unknown_from(node, ins))  # type: ignore[arg-type]


@HANDLERS.register("MatMul")
def mat_mul(sa: ShapeAnalysis, node: gs.Node) -> None:
    a, b = sa.shape(node.inputs[0]), sa.shape(node.inputs[1])
    if a is None or b is None or not a or not b:
        sa.record(node.outputs[0], None)
        return
    a1, b1 = len(a) == 1, len(b) == 1
    a2 = (Poly.const(1),) + a if a1 else a
    b2 = b + (Poly.const(1),) if b1 else b
    sa.merge(a2[-1], b2[-2], node, "inner dimensions")
    batch = sa.broadcast([a2[:-2], b2[:-2]], node) if len(a2) > 2 or len(b2) > 2 else ()
    out = list(batch) + ([] if a1 else [a2[-2]]) + ([] if b1 else [b2[-1]])
    sa.record(node.outputs[0], tuple(out))


@HANDLERS.register("Gemm")
def gemm(sa: ShapeAnalysis, node: gs.Node) -> None:
    a, b = sa.shape(node.inputs[0]), sa.shape(node.inputs[1])
    if a is None or b is None:
        sa.record(node.outputs[0], None)
        return
    m = a[1] if node.attrs.get("transA", 0) else a[0]
    n = b[0] if node.attrs.get("transB", 0) else b[1]
    sa.record(node.outputs[0], (m, n))
