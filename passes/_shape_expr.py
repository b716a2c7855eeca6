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

Layout: this module is the driver (``ShapeAnalysis``: the per-tensor record, the visit loop and
the helpers handlers share). Per-op rules are functions in an explicit table
(``_shape_table.HANDLERS``), one module per family: ``_shape_arith`` (values and elementwise
ops), ``_shape_ops`` (shape and index manipulation), ``_shape_spatial`` (convolution, pooling,
padding, resizing). ``_shape_sizes`` holds the Slice/Reshape size rules, ``_shape_stride`` the
total-stride queries built on the analysis. ``visit`` catches only the errors a malformed node
raises (a missing input, an attribute of another type) and records their type in the reason.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from segc.errors import first_line
from segc.onnx_graph import ResizeOperands, graph_opset, is_absent, is_default_domain, producer, resize_operands
from segc.passes._shape_sizes import INT64_MAX, Shape, reshape_dims, slice_length  # noqa: F401 - re-exported
from segc.passes._shape_table import HANDLERS, HandlerTable
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



# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------



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


def topo_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes in a topological order, without reordering ``graph.nodes`` (a pass that finds
    nothing to do must leave the graph untouched).

    The one walk not on :class:`segc.graph_view.GraphView`: three passes call it on every
    graph, and on a 50k-node chain the view (build, then a networkx graph and stable sort) took
    2 to 3.6 s against this iterative DFS's 0.25 to 0.6 s (same order returned), which the pass-time
    scaling budget cannot carry. Selectors, set_shape_range's suspects, boundary verification
    and pass ordering use the view."""
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
    ``handlers`` is the op table (``_shape_table.HANDLERS``, filled by the handler modules).
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
        handlers: HandlerTable = HANDLERS,
    ) -> None:
        self.graph = graph
        self.handlers = handlers
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
            self.why_unknown.setdefault(
                t.name, f"{t.name!r} is a graph input" if not t.inputs else f"{t.name!r} is not computed from sizes"
            )
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
        s = tuple(Poly.symbol(self.new_symbol(t, i)) for i in range(len(t.shape)))
        self.shapes[t.name] = s
        return s

    def record(self, t: gs.Tensor, shape: Shape | None, value: SymValue | None = None, why: str | None = None) -> None:
        """What a handler found for output ``t``: its shape (None: fresh symbols), its small value,
        and, when the value is unknown, ``why`` (kept for the passes' explanations)."""
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
        """Compute the shapes (and small values) of ``node``'s outputs with the op's handler."""
        self._visited.add(id(node))
        handler = self.handlers.get(node.op) if is_default_domain(node.domain) else None
        if handler is None:
            # an op without a handler, or a vendor op (even one with a familiar name): fresh sizes
            what = node.op if is_default_domain(node.domain) else f"{node.domain}::{node.op}"
            for out in node.outputs:
                self.record(out, None, why=f"{what} {node.name!r} is not modelled")
            return
        try:
            handler(self, node)
        except ShapeConflict:
            raise
        except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError, OverflowError) as exc:
            # Best effort: a malformed or unusual node (a missing input, an attribute of another
            # type) gets fresh sizes, which claims nothing. The exception's type and text stay in
            # the reason, so a handler bug reads as one rather than as an odd graph.
            why = f"{node.op} {node.name!r} could not be analysed: {type(exc).__name__}: {first_line(exc)}"
            for out in node.outputs:
                self.record(out, None, why=why)

    # helpers -----------------------------------------------------------------------------------
    def ints(self, t: gs.Tensor | None) -> list[int] | None:
        """The known integer value of ``t`` (axes, pads, split sizes), else None."""
        if t is None or is_absent(t):
            return None
        v = self.value(t)
        return None if v is None else v.ints()

    def unknown_from(self, node: gs.Node, inputs: Iterable[gs.Tensor]) -> str:
        """Why ``node``'s value is unknown: the reason of its first input without a known value."""
        for t in inputs:
            if is_absent(t) or t.name not in self.why_unknown:
                continue
            v = self.values.get(t.name)
            if v is None or not v.known:
                return self.why_unknown[t.name]
        return f"{node.op} {node.name!r} does not give a known value"

    def merge(self, a: Poly, b: Poly, node: gs.Node, what: str) -> Poly:
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
                where = (
                    ", ".join(f"{k}={v}" for k, v in env.items() if k in (a.symbols() | b.symbols()))
                    or "the traced shape"
                )
                raise ShapeConflict(
                    node,
                    f"{node.op} {node.name!r} needs equal sizes on {what}, but they are {a} and {b}: {va} vs {vb} at "
                    f"{where}",
                    (a, b),
                )
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
                dim = s[i] if dim is None else self.merge(dim, s[i], node, f"axis {axis}")
            out.append(dim if dim is not None else Poly.const(1))
        return tuple(out)

    def fits(self, d: Poly, v: int) -> bool:
        """Is size ``d`` at least ``v`` everywhere we can tell (constants, or every sample)?"""
        if d.is_const():
            return d.constant >= v
        if not self.samples:
            return False
        vals = [d.evaluate(env) for env in self.samples]
        return all(x is not None and x >= v for x in vals)

    def new_symbol(self, t: gs.Tensor, axis: int) -> str:
        """A fresh symbol for a size nothing is known about (its traced value noted if any)."""
        name = f"{t.name}#{axis}"
        self.fresh.add(name)
        if self.hint is not None and self.traced is not None and name not in self.traced:
            h = self.hint(t, axis)
            if h is not None:
                self.traced[name] = h
        return name

    def fresh_dim(self, t: gs.Tensor, axis: int) -> Poly:
        """A fresh size for axis ``axis`` of ``t`` (``new_symbol`` as a Poly)."""
        return Poly.symbol(self.new_symbol(t, axis))

    def resize_operands(self, node: gs.Node) -> ResizeOperands:
        """(scales, sizes) tensors of a Resize/Upsample for this graph's opset (None if absent)."""
        return resize_operands(node, self.opset)


# The handler modules fill HANDLERS when imported; they import ShapeAnalysis from here, so last.
from segc.passes import _shape_arith, _shape_ops, _shape_spatial  # noqa: E402,F401
