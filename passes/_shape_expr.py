"""A forward shape/value analysis of a graph, in exact symbolic sizes.

Two passes need to *prove* things about sizes rather than observe them at one traced shape:

* ``fold_resize_scales`` replaces a shape-computed Resize ``scales``/``sizes`` by a constant only
  when that constant is the same for every input size;
* ``set_shape_range`` looks for sizes baked in at export (a Reshape to ``[1, C, 16384]``) and must
  know which dimension of which tensor varies with the input and how.

Both reduce to the same question: "as a function of the graph inputs' dimensions, what is this
tensor's shape, and what are the values of this small integer tensor?". The algebra (``Poly``,
``SymValue``, exact float rules) lives in ``segc.passes._sym_poly``; this module walks graphs:

``ShapeAnalysis``
    visits the nodes in topological order and records, per tensor, its symbolic shape and (for
    small tensors) its symbolic value. Ops it does not model get *fresh* symbols for their
    output dimensions: nothing is ever claimed about them, which keeps every conclusion sound.
    In ``strict`` mode, two sizes that must agree (both sides of an Add, the non-axis dims of a
    Concat, a MatMul's inner dims) are evaluated at sample points (e.g. min/max of a shape
    range); if they differ at one, ``ShapeConflict`` names the node.

Nothing here edits the graph; passes read the analysis and rewrite (``set_shape_range`` edits
a node in the ``before`` hook, just before the analysis visits it).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from segc.onnx_graph import constant_array, graph_opset, is_absent, producer, resize_operands
from segc.passes._sym_poly import (  # noqa: F401 - re-exported for the passes
    MAX_VALUE_ELEMS,
    ONNX_TO_KIND,
    OP_SIGN,
    Poly,
    SymValue,
    arith,
    as_int,
    cast_value,
    constant_value,
    float32_exact,
    float64_exact,
    kind_of_dtype,
)

INT64_MAX = 2**63 - 1
_HUGE = 2**31  # Slice ends at or above this mean "to the end" in every exporter's output


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------

Shape = tuple[Poly, ...]


class ShapeConflict(Exception):
    """Two sizes that must be equal provably differ somewhere in the sampled range."""

    def __init__(self, node: gs.Node, message: str, sizes: tuple[Poly, Poly] | None = None) -> None:
        super().__init__(message)
        self.node = node
        self.sizes = sizes

    @property
    def one_side_fixed(self) -> bool:
        """One size is a constant while the other varies: the signature of a traced size."""
        return self.sizes is not None and self.sizes[0].is_const() != self.sizes[1].is_const()


_UNARY = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "IsInf",
    "IsNaN", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Mish", "Neg", "Not", "PRelu", "Reciprocal",
    "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "LRN", "MeanVarianceNormalization", "QuantizeLinear", "DequantizeLinear", "Trilu",
    "CumSum", "BitwiseNot",
}
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
}
_POOLS = {"MaxPool", "AveragePool", "LpPool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCES = {
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
}


def topo_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in a topological order, without reordering ``graph.nodes`` (a pass that finds
    nothing to do must leave the graph untouched)."""
    produced_by: dict[int, gs.Node] = {}
    for node in graph.nodes:
        for out in node.outputs:
            produced_by[id(out)] = node
    order: list[gs.Node] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done
    for root in graph.nodes:
        if state.get(id(root)) == 2:
            continue
        stack: list[tuple[gs.Node, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(id(node)) == 2:
                    continue
                state[id(node)] = 1
            deps = [produced_by[id(t)] for t in node.inputs if id(t) in produced_by]
            while i < len(deps) and state.get(id(deps[i])) in (1, 2):
                i += 1
            if i < len(deps):
                stack.append((node, i + 1))
                stack.append((deps[i], 0))
            else:
                state[id(node)] = 2
                order.append(node)
    return order


class ShapeAnalysis:
    """Symbolic shapes and small values of every tensor of a graph (see module docstring).

    ``input_dims`` maps a graph input's name to its symbolic dims; inputs not listed get a
    symbol per dimension (their ``dim_param`` if they have one, else ``"<input>.<axis>"``,
    even where the dimension is static: a conclusion then holds for *every* input size).
    ``samples`` are symbol assignments used in ``strict`` mode to decide whether two sizes
    that must agree provably disagree. ``traced`` (usually one of the samples) is the point
    the graph was exported at; ``hint(tensor, axis)`` gives a fresh symbol's size there (from
    the exported shape annotations), so fresh symbols can still be evaluated at that point.
    """

    def __init__(
        self,
        graph: gs.Graph,
        input_dims: Mapping[str, Sequence[Poly]] | None = None,
        *,
        samples: Sequence[dict[str, int]] = (),
        strict: bool = False,
        traced: dict[str, int] | None = None,
        hint: Callable[[gs.Tensor, int], int | None] | None = None,
    ) -> None:
        self.graph = graph
        self.opset = graph_opset(graph)
        self.input_dims = {k: tuple(v) for k, v in (input_dims or {}).items()}
        self.samples = list(samples)
        self.strict = strict
        self.traced = traced
        self.hint = hint
        self.shapes: dict[str, Shape | None] = {}
        self.values: dict[str, SymValue | None] = {}
        self.why_unknown: dict[str, str] = {}
        self.fresh: set[str] = set()
        self._visited: set[int] = set()

    # public ----------------------------------------------------------------------------------
    def run(self, before: Callable[[gs.Node], None] | None = None) -> "ShapeAnalysis":
        """Visit every node in topological order; ``before(node)`` may edit the node first."""
        for node in topo_nodes(self.graph):
            if before is not None:
                before(node)
            self.visit(node)
        return self

    def shape(self, t: gs.Tensor) -> Shape | None:
        if is_absent(t):
            return None
        if t.name in self.shapes:
            return self.shapes[t.name]
        if isinstance(t, gs.Constant):
            s: Shape | None = tuple(Poly.const(int(d)) for d in t.shape)
        elif not t.inputs:  # graph input
            s = self.input_dims.get(t.name)
            if s is None and t.shape is not None:
                # a fixed input dim is a fact of this graph (it accepts nothing else), so it is a
                # constant; named or unknown dims stay symbols
                s = tuple(
                    Poly.const(d) if isinstance(d, int) and d > 0
                    else Poly.symbol(d) if isinstance(d, str) and d else Poly.symbol(f"{t.name}.{i}")
                    for i, d in enumerate(t.shape)
                )
        elif id(producer(t)) not in self._visited:
            return self._fresh_shape(t)
        else:
            return None
        self.shapes[t.name] = s
        return s

    def value(self, t: gs.Tensor) -> SymValue | None:
        if is_absent(t):
            return None
        if t.name in self.values:
            return self.values[t.name]
        v: SymValue | None = None
        if isinstance(t, gs.Constant):
            if len(t.shape) <= 1 and int(np.prod(t.shape)) <= MAX_VALUE_ELEMS:
                v = constant_value(np.asarray(t.values))
            if v is None:
                self.why_unknown[t.name] = f"constant {t.name!r} is not a small integer/float vector"
        else:
            self.why_unknown.setdefault(t.name, f"{t.name!r} is a graph input" if not t.inputs else f"{t.name!r} is not computed from sizes")
        self.values[t.name] = v
        return v

    def sizes_equal(self, a: Poly, b: Poly) -> bool | None:
        """True if equal as polynomials, False if they differ at some sample, else None."""
        if a == b:
            return True
        return False if self.differing_sample(a, b) is not None else None

    def differing_sample(self, a: Poly, b: Poly) -> tuple[dict[str, int], Fraction, Fraction] | None:
        """A sample where ``a`` and ``b`` take different values, with both values."""
        for env in self.samples:
            va, vb = a.evaluate(env), b.evaluate(env)
            if va is not None and vb is not None and va != vb:
                return env, va, vb
        return None

    def unknown_reason(self, t: gs.Tensor) -> str:
        return self.why_unknown.get(t.name, f"{t.name!r} could not be evaluated")

    # internals -------------------------------------------------------------------------------
    def _fresh_shape(self, t: gs.Tensor) -> Shape | None:
        if t.shape is None:
            return None
        s = tuple(Poly.symbol(self._new_symbol(t, i)) for i in range(len(t.shape)))
        self.shapes[t.name] = s
        return s

    def _set(self, t: gs.Tensor, shape: Shape | None, value: SymValue | None = None, why: str | None = None) -> None:
        if is_absent(t):
            return
        if value is not None and value.scalar:
            shape = ()
        elif value is not None:
            shape = (Poly.const(len(value.elems)),)
        if shape is None:
            self.shapes.pop(t.name, None)
            self._fresh_shape(t)
        else:
            self.shapes[t.name] = tuple(shape)
        self.values[t.name] = value
        if why and (value is None or not value.known):
            self.why_unknown[t.name] = why

    def visit(self, node: gs.Node) -> None:
        """Compute the shapes (and small values) of ``node``'s outputs."""
        self._visited.add(id(node))
        handler = getattr(self, f"_op_{node.op}", None)
        try:
            if (node.domain or "") not in ("", "ai.onnx"):
                # a vendor op: nothing is assumed about it, even if its name is familiar
                for out in node.outputs:
                    self._set(out, None, why=f"{node.domain}::{node.op} {node.name!r} is not modelled")
            elif handler is not None:
                handler(node)
            elif node.op in _UNARY:
                self._unary(node)
            elif node.op in _BROADCAST:
                self._broadcast_op(node)
            elif node.op in _POOLS:
                self._pool(node)
            elif node.op in _GLOBAL_POOLS:
                s = self.shape(node.inputs[0])
                self._set(node.outputs[0], None if s is None else s[:2] + tuple(Poly.const(1) for _ in s[2:]))
            elif node.op in _REDUCES:
                self._reduce(node)
            else:
                for out in node.outputs:
                    self._set(out, None, why=f"{node.op} {node.name!r} is not modelled")
        except ShapeConflict:
            raise
        except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError, OverflowError):
            # a malformed or unusual node: claim nothing about its outputs
            for out in node.outputs:
                self._set(out, None, why=f"{node.op} {node.name!r} could not be analysed")

    # helpers -----------------------------------------------------------------------------------
    def _ints(self, t: gs.Tensor | None) -> list[int] | None:
        if t is None or is_absent(t):
            return None
        v = self.value(t)
        return None if v is None else v.ints()

    def _unknown_why(self, node: gs.Node, inputs: Iterable[gs.Tensor]) -> str:
        for t in inputs:
            if is_absent(t) or t.name not in self.why_unknown:
                continue
            v = self.values.get(t.name)
            if v is None or not v.known:
                return self.why_unknown[t.name]
        return f"{node.op} {node.name!r} does not give a known value"

    def _merge(self, a: Poly, b: Poly, node: gs.Node, what: str) -> Poly:
        """Two sizes that the op requires to be equal (broadcasting aside)."""
        if a == b:
            return a
        if as_int(a) == 1:
            return b
        if as_int(b) == 1:
            return a
        if self.strict:
            diff = self.differing_sample(a, b)
            if diff is not None:
                env, va, vb = diff
                where = ", ".join(f"{k}={v}" for k, v in env.items() if k in (a.symbols() | b.symbols())) or "the traced shape"
                raise ShapeConflict(node, f"{node.op} {node.name!r} needs equal sizes on {what}, but they are {a} and {b}: {va} vs {vb} at {where}", (a, b))
        # equal at runtime by the op's own contract; prefer the side that is not a fresh symbol
        if a.symbols() & self.fresh and not b.symbols() & self.fresh:
            return b
        return a

    def broadcast(self, shapes: Sequence[Shape], node: gs.Node) -> Shape:
        rank = max(len(s) for s in shapes)
        out: list[Poly] = []
        for axis in range(rank):
            dim: Poly | None = None
            for s in shapes:
                i = axis - (rank - len(s))
                if i < 0:
                    continue
                dim = s[i] if dim is None else self._merge(dim, s[i], node, f"axis {axis}")
            out.append(dim if dim is not None else Poly.const(1))
        return tuple(out)

    # value arithmetic ---------------------------------------------------------------------------
    def _value_binop(self, node: gs.Node, a: SymValue, b: SymValue) -> SymValue | None:
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
            self.why_unknown[node.outputs[0].name] = why or self._unknown_why(node, node.inputs)
        return value

    # op handlers: value ops ----------------------------------------------------------------------
    def _op_Constant(self, node: gs.Node) -> None:
        arr = constant_array(node.outputs[0])
        if arr is None:
            self._set(node.outputs[0], None, why=f"Constant {node.name!r} is not a tensor")
            return
        v = constant_value(arr)
        self._set(node.outputs[0], tuple(Poly.const(d) for d in arr.shape) if v is None else None, v)

    def _op_Shape(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None, why=f"the rank of {node.inputs[0].name!r} is unknown")
            return
        start = int(node.attrs.get("start", 0))
        end = node.attrs.get("end")
        dims = list(s)[start:] if end is None else list(s)[start:int(end)]
        self._set(node.outputs[0], None, SymValue("int", tuple(dims)))

    def _op_Size(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], (), why=f"the rank of {node.inputs[0].name!r} is unknown")
            return
        total = Poly.const(1)
        for d in s:
            total = total * d
        self._set(node.outputs[0], (), SymValue("int", (total,), scalar=True))

    def _op_Identity(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        self._set(node.outputs[0], self.shape(node.inputs[0]), v, why=self._unknown_why(node, node.inputs))

    def _op_Cast(self, node: gs.Node) -> None:
        src = self.value(node.inputs[0])
        to = ONNX_TO_KIND.get(int(node.attrs.get("to", 0)))
        if src is None or to is None:
            self._set(node.outputs[0], self.shape(node.inputs[0]), None, why=self._unknown_why(node, node.inputs) if src is None else f"Cast {node.name!r} to an unsupported type")
            return
        self._set(node.outputs[0], None, SymValue(to, tuple(cast_value(e, src.kind, to) for e in src.elems), src.scalar), why=f"Cast {node.name!r} to {to} is not exact" if src.known else self._unknown_why(node, node.inputs))

    def _op_CastLike(self, node: gs.Node) -> None:
        target = node.inputs[1]
        kind = kind_of_dtype(target.dtype) if target.dtype is not None else None
        src = self.value(node.inputs[0])
        if src is None or kind is None:
            self._unary(node)
            return
        self._set(node.outputs[0], None, SymValue(kind, tuple(cast_value(e, src.kind, kind) for e in src.elems), src.scalar))

    def _op_Floor(self, node: gs.Node) -> None:
        self._rounding(node, Poly.floor)

    def _op_Ceil(self, node: gs.Node) -> None:
        self._rounding(node, Poly.ceil)

    def _rounding(self, node: gs.Node, fn: Callable[[Poly], Poly]) -> None:
        v = self.value(node.inputs[0])
        if v is None:
            self._unary(node)
            return
        self._set(node.outputs[0], None, SymValue(v.kind, tuple(None if e is None else fn(e) for e in v.elems), v.scalar), why=self._unknown_why(node, node.inputs))

    def _op_Neg(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        if v is None:
            self._unary(node)
            return
        self._set(node.outputs[0], None, SymValue(v.kind, tuple(None if e is None else -e for e in v.elems), v.scalar))

    def _op_Abs(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        if v is None:
            self._unary(node)
            return

        def absval(e: Poly | None) -> Poly | None:
            if e is None:
                return None
            if e.is_const():
                return Poly.const(abs(e.constant))
            return e if e.is_nonneg() else None

        self._set(node.outputs[0], None, SymValue(v.kind, tuple(absval(e) for e in v.elems), v.scalar))

    def _op_Gather(self, node: gs.Node) -> None:
        data, idx = node.inputs[0], node.inputs[1]
        axis = int(node.attrs.get("axis", 0))
        v = self.value(data)
        iv = self.value(idx)
        if v is not None and not v.scalar and axis == 0 and iv is not None and iv.ints() is not None:
            n = len(v.elems)
            picks = []
            for i in iv.ints() or []:
                i = i + n if i < 0 else i
                if not 0 <= i < n:
                    picks = None
                    break
                picks.append(v.elems[i])
            if picks is not None:
                self._set(node.outputs[0], None, SymValue(v.kind, tuple(picks), scalar=iv.scalar), why=self._unknown_why(node, node.inputs))
                return
        s, si = self.shape(data), self.shape(idx)
        if s is None or si is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        axis = axis + len(s) if axis < 0 else axis
        self._set(node.outputs[0], s[:axis] + si + s[axis + 1 :], why=self._unknown_why(node, node.inputs))

    def _slice_params(self, node: gs.Node, rank: int) -> tuple[list[Poly], list[Poly], list[int], list[int]] | None:
        if self.opset < 10:
            starts = [Poly.const(x) for x in node.attrs.get("starts", [])]
            ends = [Poly.const(x) for x in node.attrs.get("ends", [])]
            axes = list(node.attrs.get("axes", range(len(starts))))
            steps = [1] * len(starts)
        else:
            sv = self.value(node.inputs[1])
            ev = self.value(node.inputs[2])
            if sv is None or ev is None or not sv.known or not ev.known:
                return None
            starts = list(sv.elems)  # type: ignore[arg-type]
            ends = list(ev.elems)  # type: ignore[arg-type]
            axes_t = node.inputs[3] if len(node.inputs) > 3 and not is_absent(node.inputs[3]) else None
            steps_t = node.inputs[4] if len(node.inputs) > 4 and not is_absent(node.inputs[4]) else None
            axes = self._ints(axes_t) if axes_t is not None else list(range(len(starts)))
            steps = self._ints(steps_t) if steps_t is not None else [1] * len(starts)
            if axes is None or steps is None:
                return None
        axes = [a + rank if a < 0 else a for a in axes]
        return starts, ends, axes, steps

    def _op_Slice(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        params = self._slice_params(node, len(s))
        if params is None:
            self._set(node.outputs[0], None, why=f"Slice {node.name!r} has non-constant bounds")
            return
        starts, ends, axes, steps = params
        if v is not None and not v.scalar and axes == [0]:
            st, en = as_int(starts[0]), as_int(ends[0])
            if st is not None and en is not None:
                self._set(node.outputs[0], None, SymValue(v.kind, tuple(v.elems[slice(st, en, steps[0])])), why=self._unknown_why(node, node.inputs))
                return
        out = list(s)
        for st, en, ax, step in zip(starts, ends, axes, steps):
            out[ax] = slice_length(s[ax], st, en, step, fresh=lambda: Poly.symbol(self._new_symbol(node.outputs[0], ax)), fits=self._fits)
        self._set(node.outputs[0], tuple(out), why=f"Slice {node.name!r} of a data tensor")

    def _fits(self, d: Poly, v: int) -> bool:
        """Is size ``d`` at least ``v`` everywhere we can tell (constants, or every sample)?"""
        if d.is_const():
            return d.constant >= v
        if not self.samples:
            return False
        vals = [d.evaluate(env) for env in self.samples]
        return all(x is not None and x >= v for x in vals)

    def _new_symbol(self, t: gs.Tensor, axis: int) -> str:
        """A fresh symbol for a size nothing is known about (its traced value noted if any)."""
        name = f"{t.name}#{axis}"
        self.fresh.add(name)
        if self.hint is not None and self.traced is not None and name not in self.traced:
            h = self.hint(t, axis)
            if h is not None:
                self.traced[name] = h
        return name

    def _op_Unsqueeze(self, node: gs.Node) -> None:
        axes = node.attrs.get("axes") if self.opset < 13 else self._ints(node.inputs[1] if len(node.inputs) > 1 else None)
        v = self.value(node.inputs[0])
        if axes is not None and v is not None and v.scalar and list(axes) in ([0], [-1]):
            self._set(node.outputs[0], None, SymValue(v.kind, v.elems), why=self._unknown_why(node, node.inputs))
            return
        s = self.shape(node.inputs[0])
        if s is None or axes is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        rank = len(s) + len(axes)
        axes = sorted(a + rank if a < 0 else a for a in axes)
        out = list(s)
        for a in axes:
            out.insert(a, Poly.const(1))
        self._set(node.outputs[0], tuple(out), why=self._unknown_why(node, node.inputs))

    def _op_Squeeze(self, node: gs.Node) -> None:
        axes = node.attrs.get("axes") if self.opset < 13 else self._ints(node.inputs[1] if len(node.inputs) > 1 else None)
        v = self.value(node.inputs[0])
        if v is not None and not v.scalar and len(v.elems) == 1 and (axes is None or list(axes) in ([0], [-1])):
            self._set(node.outputs[0], None, SymValue(v.kind, v.elems, scalar=True), why=self._unknown_why(node, node.inputs))
            return
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        if axes is None:
            if any(as_int(d) is None for d in s):
                self._set(node.outputs[0], None, why=f"Squeeze {node.name!r} without axes on a dynamic shape")
                return
            keep = [d for d in s if as_int(d) != 1]
        else:
            drop = {a + len(s) if a < 0 else a for a in axes}
            keep = [d for i, d in enumerate(s) if i not in drop]
        self._set(node.outputs[0], tuple(keep), why=self._unknown_why(node, node.inputs))

    def _op_Concat(self, node: gs.Node) -> None:
        axis = int(node.attrs.get("axis", 0))
        vals = [self.value(t) for t in node.inputs]
        if all(v is not None and not v.scalar for v in vals) and axis in (0, -1):
            elems: list[Poly | None] = []
            for v in vals:
                elems.extend(v.elems)  # type: ignore[union-attr]
            kinds = {v.kind for v in vals}  # type: ignore[union-attr]
            if len(kinds) == 1 and len(elems) <= MAX_VALUE_ELEMS:
                self._set(node.outputs[0], None, SymValue(kinds.pop(), tuple(elems)), why=self._unknown_why(node, node.inputs))
                return
        shapes = [self.shape(t) for t in node.inputs]
        known = [s for s in shapes if s is not None]
        if not known or len(known) != len(shapes):
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        rank = len(known[0])
        axis = axis + rank if axis < 0 else axis
        out = list(known[0])
        total = Poly.const(0)
        for s in known:
            total = total + s[axis]
            for i in range(rank):
                if i != axis:
                    out[i] = self._merge(out[i], s[i], node, f"axis {i} of the concatenated inputs")
        out[axis] = total
        self._set(node.outputs[0], tuple(out), why=self._unknown_why(node, node.inputs))

    def _op_Reshape(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        target = self.value(node.inputs[1])
        if v is not None and target is not None and target.ints() is not None:
            dims = target.ints() or []
            if (not dims and len(v.elems) == 1) or (len(dims) == 1 and dims[0] in (-1, len(v.elems))):
                self._set(node.outputs[0], None, SymValue(v.kind, v.elems, scalar=not dims), why=self._unknown_why(node, node.inputs))
                return
        s = self.shape(node.inputs[0])
        if target is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        self._set(node.outputs[0], reshape_dims(s, target, allowzero=bool(node.attrs.get("allowzero", 0))), why=self._unknown_why(node, node.inputs))

    def _op_ReduceProd(self, node: gs.Node) -> None:
        v = self.value(node.inputs[0])
        axes = node.attrs.get("axes")
        if v is not None and not v.scalar and v.known and (axes is None or list(axes) in ([0], [-1])) and (len(node.inputs) < 2 or is_absent(node.inputs[1])):
            total = Poly.const(1)
            for e in v.elems:
                total = total * e  # type: ignore[operator]
            keep = bool(node.attrs.get("keepdims", 1))
            self._set(node.outputs[0], None, SymValue(v.kind, (total,), scalar=not keep))
            return
        self._reduce(node)

    def _op_ConstantOfShape(self, node: gs.Node) -> None:
        sv = self.value(node.inputs[0])
        if sv is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        shape = tuple(e if e is not None else Poly.symbol(self._new_symbol(node.outputs[0], i)) for i, e in enumerate(sv.elems))
        fill = node.attrs.get("value")
        arr = np.asarray(fill.values) if isinstance(fill, gs.Constant) else np.zeros(1, np.float32)
        n = as_int(shape[0]) if len(shape) == 1 else None
        if n is not None and n <= MAX_VALUE_ELEMS and arr.size == 1:
            base = constant_value(arr.reshape(-1))
            if base is not None:
                self._set(node.outputs[0], None, SymValue(base.kind, base.elems * n))
                return
        self._set(node.outputs[0], shape)

    def _op_Range(self, node: gs.Node) -> None:
        vals = [self.value(t) for t in node.inputs[:3]]
        if all(v is not None and v.constants() is not None for v in vals):
            start, limit, delta = (v.constants()[0] for v in vals)  # type: ignore[index,union-attr]
            n = max(math.ceil((limit - start) / delta), 0) if delta else 0
            kind = vals[0].kind  # type: ignore[union-attr]
            if n <= MAX_VALUE_ELEMS:
                self._set(node.outputs[0], None, SymValue(kind, tuple(Poly.const(start + i * delta) for i in range(n))))
            else:
                self._set(node.outputs[0], (Poly.const(n),))
            return
        if all(v is not None and v.known for v in vals):
            start, limit, delta = (v.elems[0] for v in vals)  # type: ignore[union-attr]
            if start.is_const() and delta.is_const() and delta.constant > 0:  # type: ignore[union-attr]
                # a size-dependent length: ceil((limit - start) / delta), limit >= start assumed
                n_sym = ((limit - start) * (1 / delta.constant)).ceil()  # type: ignore[operator,union-attr]
                self._set(node.outputs[0], (n_sym,), why=f"Range {node.name!r} has a size-dependent length")
                return
        self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))

    # op handlers: data ops -----------------------------------------------------------------------
    def _unary(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        self._set(node.outputs[0], s, why=f"{node.op} {node.name!r} of a data tensor")
        for extra in node.outputs[1:]:  # BatchNorm/LayerNorm/Dropout side outputs
            self._set(extra, None)

    def _broadcast_op(self, node: gs.Node) -> None:
        ins = [t for t in node.inputs if not is_absent(t)]
        vals = [self.value(t) for t in ins]
        if node.op in ("Add", "Sub", "Mul", "Div", "Max", "Min") and len(vals) == 2 and all(v is not None for v in vals):
            if vals[0].kind == vals[1].kind:  # type: ignore[union-attr]
                res = self._value_binop(node, vals[0], vals[1])  # type: ignore[arg-type]
                if res is not None:
                    self._set(node.outputs[0], None, res, why=self.why_unknown.get(node.outputs[0].name))
                    return
        if node.op == "Equal" and len(vals) == 2 and all(v is not None for v in vals):
            res = self._value_binop(node, vals[0], vals[1])  # type: ignore[arg-type]
            if res is not None:
                self._set(node.outputs[0], None, SymValue("bool", res.elems, res.scalar))
                return
        if node.op == "Where" and all(v is not None for v in vals):
            cond, a, b = vals  # type: ignore[misc]
            n = max(len(cond.elems), len(a.elems), len(b.elems))
            if all(len(v.elems) in (1, n) for v in vals) and all(c is not None and c.is_const() for c in cond.elems):  # type: ignore[union-attr]
                pick = lambda v, i: v.elems[i if len(v.elems) > 1 else 0]  # noqa: E731
                elems = tuple(pick(a, i) if pick(cond, i).constant else pick(b, i) for i in range(n))  # type: ignore[union-attr]
                self._set(node.outputs[0], None, SymValue(a.kind, elems, cond.scalar and a.scalar and b.scalar))
                return
        shapes = [self.shape(t) for t in ins]
        if any(s is None for s in shapes):
            self._set(node.outputs[0], None, why=self._unknown_why(node, ins))
            return
        self._set(node.outputs[0], self.broadcast(shapes, node), why=self._unknown_why(node, ins))  # type: ignore[arg-type]

    def _conv_like(self, node: gs.Node, spatial: Sequence[Poly], kernel: Sequence[int]) -> list[Poly] | None:
        n = len(spatial)
        strides = list(node.attrs.get("strides", [1] * n))
        dil = list(node.attrs.get("dilations", [1] * n))
        pads = list(node.attrs.get("pads", [0] * (2 * n)))
        auto = node.attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        ceil_mode = bool(node.attrs.get("ceil_mode", 0))
        out = []
        for i, d in enumerate(spatial):
            k_eff = dil[i] * (kernel[i] - 1) + 1
            if auto in ("SAME_UPPER", "SAME_LOWER"):
                out.append((d * Fraction(1, strides[i])).ceil())
                continue
            span = d - k_eff if auto == "VALID" else d + pads[i] + pads[i + n] - k_eff
            q = span * Fraction(1, strides[i])
            if ceil_mode and not q.is_integer_valued():
                return None  # ceil_mode's "last window must start inside" rule is not modelled
            out.append((q.ceil() if ceil_mode else q.floor()) + 1)
        return out

    def _op_Conv(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        w = self.shape(node.inputs[1])
        if s is None or w is None or len(s) < 3:
            self._set(node.outputs[0], None, why=f"Conv {node.name!r} input rank unknown")
            return
        kernel = node.attrs.get("kernel_shape") or [as_int(d) for d in w[2:]]
        if any(k is None for k in kernel):
            self._set(node.outputs[0], None)
            return
        spatial = self._conv_like(node, s[2:], kernel)  # type: ignore[arg-type]
        self._set(node.outputs[0], None if spatial is None else (s[0], w[0], *spatial))

    _op_DeformConv = _op_Conv

    def _op_ConvTranspose(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        w = self.shape(node.inputs[1])
        if s is None or w is None:
            self._set(node.outputs[0], None)
            return
        n = len(s) - 2
        group = int(node.attrs.get("group", 1))
        channels = w[1] * group
        if "output_shape" in node.attrs:
            self._set(node.outputs[0], (s[0], channels, *(Poly.const(d) for d in node.attrs["output_shape"][-n:])))
            return
        kernel = node.attrs.get("kernel_shape") or [as_int(d) for d in w[2:]]
        strides = list(node.attrs.get("strides", [1] * n))
        dil = list(node.attrs.get("dilations", [1] * n))
        pads = list(node.attrs.get("pads", [0] * (2 * n)))
        opad = list(node.attrs.get("output_padding", [0] * n))
        auto = node.attrs.get("auto_pad", "NOTSET")
        out = []
        for i, d in enumerate(s[2:]):
            if auto in ("SAME_UPPER", "SAME_LOWER"):
                out.append(d * strides[i])
            else:
                out.append(strides[i] * (d - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[i + n])
        self._set(node.outputs[0], (s[0], channels, *out))

    def _pool(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None or "kernel_shape" not in node.attrs:
            self._set(node.outputs[0], None)
            return
        spatial = self._conv_like(node, s[2:], list(node.attrs["kernel_shape"]))
        shape = None if spatial is None else (s[0], s[1], *spatial)
        for out in node.outputs:
            self._set(out, shape)

    def _reduce(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and not is_absent(node.inputs[1]):
            axes = self._ints(node.inputs[1])
            if axes is None:
                self._set(node.outputs[0], None)
                return
        if s is None:
            self._set(node.outputs[0], None)
            return
        keep = bool(node.attrs.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if node.attrs.get("noop_with_empty_axes", 0):
                self._set(node.outputs[0], s)
                return
            axes = list(range(len(s)))
        red = {a + len(s) if a < 0 else a for a in axes}
        out = [Poly.const(1) if i in red else d for i, d in enumerate(s) if keep or i not in red]
        self._set(node.outputs[0], tuple(out))

    def _op_ArgMax(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None)
            return
        axis = int(node.attrs.get("axis", 0))
        axis = axis + len(s) if axis < 0 else axis
        keep = bool(node.attrs.get("keepdims", 1))
        out = [Poly.const(1) if i == axis else d for i, d in enumerate(s) if keep or i != axis]
        self._set(node.outputs[0], tuple(out))

    _op_ArgMin = _op_ArgMax

    def _op_Transpose(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None)
            return
        perm = node.attrs.get("perm") or list(range(len(s)))[::-1]
        self._set(node.outputs[0], tuple(s[p] for p in perm))

    def _op_Flatten(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None)
            return
        axis = int(node.attrs.get("axis", 1))
        axis = axis + len(s) if axis < 0 else axis
        a, b = Poly.const(1), Poly.const(1)
        for d in s[:axis]:
            a = a * d
        for d in s[axis:]:
            b = b * d
        self._set(node.outputs[0], (a, b))

    def _op_MatMul(self, node: gs.Node) -> None:
        a, b = self.shape(node.inputs[0]), self.shape(node.inputs[1])
        if a is None or b is None or not a or not b:
            self._set(node.outputs[0], None)
            return
        a1, b1 = len(a) == 1, len(b) == 1
        a2 = (Poly.const(1),) + a if a1 else a
        b2 = b + (Poly.const(1),) if b1 else b
        self._merge(a2[-1], b2[-2], node, "inner dimensions")
        batch = self.broadcast([a2[:-2], b2[:-2]], node) if len(a2) > 2 or len(b2) > 2 else ()
        out = list(batch) + ([] if a1 else [a2[-2]]) + ([] if b1 else [b2[-1]])
        self._set(node.outputs[0], tuple(out))

    def _op_Gemm(self, node: gs.Node) -> None:
        a, b = self.shape(node.inputs[0]), self.shape(node.inputs[1])
        if a is None or b is None:
            self._set(node.outputs[0], None)
            return
        m = a[1] if node.attrs.get("transA", 0) else a[0]
        n = b[0] if node.attrs.get("transB", 0) else b[1]
        self._set(node.outputs[0], (m, n))

    def _op_Split(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            for out in node.outputs:
                self._set(out, None)
            return
        axis = int(node.attrs.get("axis", 0))
        axis = axis + len(s) if axis < 0 else axis
        split = node.attrs.get("split")
        if split is None and len(node.inputs) > 1 and not is_absent(node.inputs[1]):
            split = self._ints(node.inputs[1])
        k = len(node.outputs)
        for i, out in enumerate(node.outputs):
            dims = list(s)
            if split is not None:
                dims[axis] = Poly.const(split[i])
            else:
                part = s[axis].exact_div(k)
                dims[axis] = part if part is not None and part.is_integer_valued() else Poly.symbol(self._new_symbol(out, axis))
            self._set(out, tuple(dims))

    def _op_Pad(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None)
            return
        pads = node.attrs.get("pads") if self.opset < 11 else self._ints(node.inputs[1])
        if pads is None:
            self._set(node.outputs[0], None)
            return
        axes = list(range(len(s)))
        if len(node.inputs) > 3 and not is_absent(node.inputs[3]):
            ax = self._ints(node.inputs[3])
            if ax is None:
                self._set(node.outputs[0], None)
                return
            axes = [a + len(s) if a < 0 else a for a in ax]
        n = len(axes)
        out = list(s)
        for i, a in enumerate(axes):
            out[a] = s[a] + pads[i] + pads[i + n]
        self._set(node.outputs[0], tuple(out))

    def _op_Expand(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        target = self.value(node.inputs[1])
        if s is None or target is None:
            self._set(node.outputs[0], None, why=self._unknown_why(node, node.inputs))
            return
        tshape = tuple(e if e is not None else Poly.symbol(self._new_symbol(node.outputs[0], i)) for i, e in enumerate(target.elems))
        self._set(node.outputs[0], self.broadcast([s, tshape], node))

    def _op_Tile(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        reps = self.value(node.inputs[1])
        if s is None or reps is None or len(reps.elems) != len(s):
            self._set(node.outputs[0], None)
            return
        self._set(node.outputs[0], tuple(d * r if r is not None else Poly.symbol(self._new_symbol(node.outputs[0], i)) for i, (d, r) in enumerate(zip(s, reps.elems))))

    def _op_DepthToSpace(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        bs = int(node.attrs.get("blocksize", 1))
        c = None if s is None else s[1].exact_div(bs * bs)
        if s is None or c is None:
            self._set(node.outputs[0], None)
            return
        self._set(node.outputs[0], (s[0], c, s[2] * bs, s[3] * bs))

    def _op_SpaceToDepth(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        bs = int(node.attrs.get("blocksize", 1))
        if s is None:
            self._set(node.outputs[0], None)
            return
        h, w = s[2].exact_div(bs), s[3].exact_div(bs)
        if h is None or w is None:
            self._set(node.outputs[0], None)
            return
        self._set(node.outputs[0], (s[0], s[1] * (bs * bs), h, w))

    def resize_operands(self, node: gs.Node) -> tuple[gs.Tensor | None, gs.Tensor | None]:
        """(scales, sizes) tensors of a Resize/Upsample for this graph's opset (None if absent)."""
        return resize_operands(node, self.opset)

    def _op_Resize(self, node: gs.Node) -> None:
        s = self.shape(node.inputs[0])
        if s is None:
            self._set(node.outputs[0], None)
            return
        axes = node.attrs.get("axes")
        axes = list(range(len(s))) if axes is None else [a + len(s) if a < 0 else a for a in axes]
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        if node.op == "Upsample" and self.opset < 9:
            scales_v: SymValue | None = SymValue("f32", tuple(Poly.const(Fraction(float(x))) for x in node.attrs.get("scales", [])))
            sizes_t = None
        else:
            scales_t, sizes_t = self.resize_operands(node)
            scales_v = self.value(scales_t) if scales_t is not None else None
        out = list(s)
        if sizes_t is not None:
            sv = self.value(sizes_t)
            if sv is None or len(sv.elems) != len(axes) or policy != "stretch":
                self._set(node.outputs[0], None)
                return
            for a, e in zip(axes, sv.elems):
                out[a] = e if e is not None else Poly.symbol(self._new_symbol(node.outputs[0], a))
        elif scales_v is not None and len(scales_v.elems) == len(axes):
            for a, e in zip(axes, scales_v.elems):
                out[a] = (s[a] * e).floor() if e is not None else Poly.symbol(self._new_symbol(node.outputs[0], a))
        else:
            self._set(node.outputs[0], None)
            return
        self._set(node.outputs[0], tuple(out))

    _op_Upsample = _op_Resize


# --------------------------------------------------------------------------------------------
# Free functions shared by the passes
# --------------------------------------------------------------------------------------------


def slice_length(d: Poly, start: Poly, end: Poly, step: int, fresh: Callable[[], Poly], fits: Callable[[Poly, int], bool] = lambda d, v: False) -> Poly:
    """Length of ``range(d)[start:end:step]`` with ONNX clamping, when it can be written.

    A constant end ``v`` on a varying size ``d`` gives ``min(d, v)``; that is ``v`` only where
    ``fits(d, v)`` confirms ``d >= v`` (over the sampled range), else the length is fresh.
    """
    dv, sv, ev = as_int(d), as_int(start), as_int(end)
    if dv is not None and sv is not None and ev is not None:
        return Poly.const(len(range(dv)[slice(sv, ev, step)]))
    if step != 1:
        if step > 1 and sv == 0 and ev is not None and ev >= _HUGE:
            return ((d + (step - 1)) * Fraction(1, step)).floor()
        return fresh()

    def norm(p: Poly, is_end: bool) -> Poly | None:
        v = as_int(p)
        if v is None:
            return p  # a computed bound, assumed within [0, d] (exporters compute them so)
        if v >= _HUGE:
            return d if is_end else None
        if v < -_HUGE:
            return Poly.const(0)
        if v < 0:
            return d + v
        if is_end and not fits(d, v):
            return None  # min(d, v): which one it is depends on the size
        return Poly.const(v)  # a start is assumed inside the tensor, as exporters write it

    s, e = norm(start, False), norm(end, True)
    if s is None or e is None:
        return fresh()
    return e - s


def reshape_dims(src: Shape | None, target: SymValue, *, allowzero: bool = False) -> Shape | None:
    """Output shape of Reshape(src, target) with ONNX's 0 (copy) and -1 (infer) rules."""
    out: list[Poly | None] = []
    infer = -1
    for i, e in enumerate(target.elems):
        v = as_int(e)
        if v == 0 and not allowzero:
            if src is None or i >= len(src):
                return None
            out.append(src[i])
        elif v == -1:
            infer = i
            out.append(None)
        else:
            out.append(e)
    if infer >= 0:
        if src is None or any(d is None for j, d in enumerate(out) if j != infer):
            return None
        total = Poly.const(1)
        for d in src:
            total = total * d
        known = Poly.const(1)
        for j, d in enumerate(out):
            if j != infer:
                known = known * d  # type: ignore[operator]
        q = total.exact_div(known)
        if q is None or not q.is_integer_valued():
            return None
        out[infer] = q
    if any(d is None for d in out):
        return None
    return tuple(out)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Divisibility: input sizes that are multiples of M, and the model's total stride
# --------------------------------------------------------------------------------------------

STRIDE_LIMIT = 128
"""The largest total stride looked for (2^7: deeper than any segmentation backbone)."""


def _inexact_floors(p: Poly, symbols: set[str]) -> bool:
    """True when ``p`` still holds a ``floor`` of something that varies with ``symbols``."""
    return any(atom.arg is not None and atom.symbols() & symbols for m in p.terms for atom, _ in m)


def spatial_symbols(graph: gs.Graph, multiple: int, inputs: Sequence[str] | None = None) -> tuple[dict[str, tuple[Poly, ...]], set[str]]:
    """Symbolic dims for the graph inputs with H, W (axes 2+) written ``multiple * q``.

    Returns the ``input_dims`` for ``ShapeAnalysis`` and the names of the quotient symbols.
    A static spatial size stays symbolic too: the answer must hold for every admissible size.
    """
    dims: dict[str, tuple[Poly, ...]] = {}
    quotients: set[str] = set()
    for t in graph.inputs:
        if t.shape is None or len(t.shape) < 3 or (inputs is not None and t.name not in inputs):
            continue
        out: list[Poly] = []
        for i, d in enumerate(t.shape):
            base = d if isinstance(d, str) and d else f"{t.name}.{i}"
            if i >= 2:
                q = f"{base}/{multiple}" if multiple > 1 else base
                quotients.add(q)
                out.append(Poly.symbol(q) * multiple)
            else:
                out.append(Poly.const(d) if isinstance(d, int) and d > 0 else Poly.symbol(base))
        dims[t.name] = tuple(out)
    return dims, quotients


def exact_under(graph: gs.Graph, multiple: int, inputs: Sequence[str] | None = None) -> bool:
    """Is every size (and every small size value) in the graph floor-free when H, W are
    multiples of ``multiple``? Then all the strided arithmetic is exact division."""
    dims, quotients = spatial_symbols(graph, multiple, inputs)
    if not quotients:
        return True
    analysis = ShapeAnalysis(graph, dims).run()
    for shape in analysis.shapes.values():
        if shape is not None and any(_inexact_floors(d, quotients) for d in shape):
            return False
    for value in analysis.values.values():
        if value is not None and any(e is not None and _inexact_floors(e, quotients) for e in value.elems):
            return False
    return True


def total_stride(graph: gs.Graph, inputs: Sequence[str] | None = None, limit: int = STRIDE_LIMIT) -> int | None:
    """The smallest power of two M such that, with every input H and W a multiple of M, no
    size in the graph needs a floor (every strided Conv/Pool divides exactly, so a later
    Resize to another tensor's size is a fixed ratio). 1 when the graph has no floors at all;
    None when no M up to ``limit`` removes them (e.g. a ``floor(H * 0.3)``)."""
    m = 1
    while m <= limit:
        if exact_under(graph, m, inputs):
            return m
        m *= 2
    return None
