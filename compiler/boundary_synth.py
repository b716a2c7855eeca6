"""Boundary inputs made up, not computed: the synthesized route of ``--verify each``.

Checking an exact pass at its boundary (segc.boundary_verify) needs values for the tensors
entering the changed region. Computing the real ones runs the graph upstream of the region:
on DBNet the first check ran the whole ResNet-50 backbone at three input shapes, 70 to 80%
of ``--verify each``'s time, to check 52 nodes of shape arithmetic and a fused head. But an
exact pass must keep the region's *function*, and a function is checked on any valid input:

    before:  leaves -> [cone of the graph before] -> boundary outputs   } compared
    after:   leaves -> [changed region]           -> boundary outputs   }

Both sides are run on the same made-up ``leaves``, and their outputs compared by the pass's
contract. What a leaf may be depends on how its value is used (``LeafKind``):

- a float tensor computed from the graph's image content (``RANDOM``): seeded random values of
  the tensor's real shape at that input shape. Shapes matter: a folded Resize scale is right
  at one size and wrong at another, so each leaf's shape at each verification shape comes from
  segc's own shape analysis (``segc.passes._shape_expr``, concrete input dims), checked against
  onnx's shape inference where both know it; a shape neither knows means no synthesis;
- a tensor only read by Shape/Size nodes (``SHAPE_READ``): zeros of its real shape;
- a tensor whose value depends on no image content, only on shapes and constants
  (``SHAPE_VALUE``: a Resize's sizes, a Reshape target): its exact value, computed by running
  its own cone of the graph before, cut at Shape/Size nodes whose results come from the known
  shapes (tens of scalar nodes, no convolution);
- a graph input (``GRAPH_INPUT``): the real feed.

An integer or boolean tensor computed from image content (an argmax, indices from NonZero) can
be neither random nor made up: such a region goes to the reference route, as does one where
the graph before computes the boundary outputs from far more than the region (its cone would
cost as much as the reference run). The caller (segc.boundary_verify) takes a pass from here
only when it passes: a synthesized check that fails, or has no signal, is decided on the real
values, so a function that agrees only on real data (a rewrite relying on an upstream Relu)
never fails a build here, and every reported failure is one on real values.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from segc.graph_view import Boundary, GraphView
from segc.onnx_graph import real_inputs
from segc.verify_inputs import Feed

if TYPE_CHECKING:
    from segc.passes._shape_expr import ShapeAnalysis

Values = dict[str, np.ndarray]
Shape = tuple[int, ...]

# The graph before may compute the boundary outputs with more nodes than the region (a folded
# shape chain unfolded); past this many its cone is no longer "the region", and the
# reference route is used.
MAX_CONE_NODES = 4  # times the region's nodes, plus MAX_CONE_SLACK
MAX_CONE_SLACK = 32
# Ops whose outputs depend only on their input's shape.
SHAPE_OPS = frozenset({"Shape", "Size"})
# Ops whose outputs are not a function of their inputs: never reproduced, always content.
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                        "Multinomial", "Bernoulli"})
# Random leaves: uniform in [-RANDOM_SCALE, RANDOM_SCALE). Both signs, thresholds such as
# ReLU6's 6 and HardSigmoid's 3 crossed, no outliers (exact tolerances scale with max|ref|, so
# a heavy tail would loosen them for every other value). Uniform, not normal: numpy draws
# float32 uniforms about 4x as fast (3.7 against 16 ns a value), and DBNet's regions read 10M
# values per input shape.
RANDOM_SCALE = 8.0
RANDOM_PERIOD = 1_048_573  # a prime (see random_leaf)


class LeafKind(str, enum.Enum):
    RANDOM = "random"
    SHAPE_READ = "shape-read"
    SHAPE_VALUE = "shape-value"
    GRAPH_INPUT = "graph-input"


@dataclass(frozen=True)
class Leaf:
    """One tensor both sides read: its name, how its value is made, its element type."""

    name: str
    kind: LeafKind
    elem: int  # onnx TensorProto data type


@dataclass(frozen=True)
class SynthPlan:
    """What to run on the made-up leaves (see module docstring)."""

    before_nodes: frozenset[int]  # nodes of the graph before computing the boundary outputs
    leaves: tuple[Leaf, ...]
    shape_nodes: frozenset[int]  # nodes of the graph before computing the SHAPE_VALUE leaves
    shape_reads: tuple[int, ...]  # Shape/Size nodes whose results feed ``shape_nodes``

    def count(self, kind: LeafKind) -> int:
        return sum(1 for leaf in self.leaves if leaf.kind is kind)


@dataclass(frozen=True)
class NoSynth:
    """Why the region's inputs cannot be made up (the reference route is used)."""

    reason: str


class ShapeOracle:
    """Concrete shapes (per input shape set) and element types of one graph's tensors.

    Shapes: ``segc.passes._shape_expr.ShapeAnalysis``, run once with the graph inputs'
    variable dims as symbols (it models the size arithmetic of Resize-by-sizes chains that
    onnx's inference leaves unknown), each shape then evaluated at an input shape set; and
    onnx's ``infer_shapes`` with data propagation on a weightless copy with fixed input dims,
    an independent second opinion. A shape one of them knows is used; where both know it and
    disagree the tensor counts as unknown (a wrong shape would make the check prove nothing),
    as it does where neither knows it.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self._analysis: ShapeAnalysis | None = None
        self._failed = False  # the analysis raised: onnx's inference alone
        self._types: dict[str, int] | None = None
        self._onnx: dict[tuple[tuple[str, Shape], ...], dict[str, tuple[int, Shape | None]]] = {}
        self._symbols: dict[tuple[str, int], str] = {}
        self._known: dict[tuple[tuple[tuple[str, Shape], ...], str], Shape | None] = {}

    def elem_types(self) -> dict[str, int]:
        if self._types is None:
            self._types = {name: elem for name, (elem, _) in _infer(self.model, None).items() if elem}
        return self._types

    def shape(self, inputs: dict[str, Shape], name: str) -> Shape | None:
        """``name``'s shape when the graph inputs have the shapes ``inputs``, or None."""
        key = tuple(sorted(inputs.items()))
        if (key, name) in self._known:
            return self._known[key, name]
        if key not in self._onnx:
            self._onnx[key] = _infer(self.model, inputs)
        theirs = self._onnx[key].get(name, (0, None))[1]
        ours = self._evaluate(inputs, name)
        found = None if ours is not None and theirs is not None and ours != theirs else \
            ours if ours is not None else theirs
        self._known[key, name] = found
        return found

    def _evaluate(self, inputs: dict[str, Shape], name: str) -> Shape | None:
        analysis = self._run()
        if analysis is None:
            return None
        symbolic = analysis.shapes.get(name)
        if symbolic is None:
            return None
        env: dict[str, int] = {}
        for (tensor, axis), symbol in self._symbols.items():
            if tensor in inputs and axis < len(inputs[tensor]):
                env[symbol] = inputs[tensor][axis]
        dims: list[int] = []
        for d in symbolic:
            value = d.evaluate(env)
            if value is None or value.denominator != 1 or value < 0:
                return None
            dims.append(int(value))
        return tuple(dims)

    def _run(self) -> ShapeAnalysis | None:
        if self._analysis is None and not self._failed:
            import onnx_graphsurgeon as gs

            from segc.passes._shape_expr import ShapeAnalysis
            from segc.passes._sym_poly import Poly

            try:
                graph = gs.import_onnx(self.model)
                dims: dict[str, tuple[Poly, ...]] = {}
                for vi in real_inputs(self.model):
                    row: list[Poly] = []
                    for axis, d in enumerate(vi.type.tensor_type.shape.dim):
                        if d.HasField("dim_value") and d.dim_value > 0:
                            row.append(Poly.const(d.dim_value))
                        else:
                            symbol = self._symbols.setdefault((vi.name, axis), f"segc.input.{vi.name}.{axis}")
                            row.append(Poly.symbol(symbol))
                    dims[vi.name] = tuple(row)
                self._analysis = ShapeAnalysis(graph, dims).run()
            except Exception:  # noqa: BLE001 - a help: onnx's inference and the reference route remain
                self._failed = True
        return self._analysis


def _weightless(model: onnx.ModelProto, inputs: dict[str, Shape] | None) -> onnx.ModelProto:
    """``model``'s graph with its large initializers turned into typed graph inputs (shape
    inference needs their dims, not their bytes) and, with ``inputs``, fixed input dims."""
    g = model.graph
    sub = onnx.GraphProto(name=g.name)
    sub.node.extend(g.node)
    inits = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in inits:
            continue
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(vi)
        if inputs is not None and vi.name in inputs:
            shape = copy.type.tensor_type.shape
            shape.Clear()
            for d in inputs[vi.name]:
                shape.dim.add().dim_value = d
        sub.input.append(copy)
    for t in g.initializer:
        if int(np.prod(t.dims)) <= 64 and not t.external_data:
            sub.initializer.append(t)
        else:
            sub.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    sub.output.extend(g.output)
    out = onnx.ModelProto(ir_version=model.ir_version)
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(sub)
    return out


def _infer(model: onnx.ModelProto, inputs: dict[str, Shape] | None) -> dict[str, tuple[int, Shape | None]]:
    """onnx's element types and (static) shapes, by tensor name; {} when inference fails."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_weightless(model, inputs), strict_mode=False,
                                                     data_prop=inputs is not None)
    except Exception:  # noqa: BLE001 - a help only
        return {}
    out: dict[str, tuple[int, Shape | None]] = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        shape: Shape | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        out[vi.name] = (tt.elem_type, shape)
    return out


def content_dependent(model: onnx.ModelProto, view: GraphView) -> set[str]:
    """Tensors whose values depend on the content of a float graph input (an image), not only
    on shapes and constants. Shape/Size outputs never do; random ops always do."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    content = {vi.name for vi in g.input
               if vi.name not in inits and _is_float(vi.type.tensor_type.elem_type)}
    for i in view.topological():
        node = g.node[i]
        if node.domain in ("", "ai.onnx") and node.op_type in SHAPE_OPS:
            continue
        if node.op_type in RANDOM_OPS or any(name in content for name in view.inputs[i] if name):
            content.update(name for name in view.outputs[i] if name)
    return content


def _is_float(elem: int) -> bool:
    return elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def plan(before: onnx.ModelProto, before_view: GraphView, region: Boundary, after: onnx.ModelProto,
         after_view: GraphView, oracle: ShapeOracle) -> SynthPlan | NoSynth:
    """Which nodes of the graph before to run, and how to make each leaf (module docstring)."""
    bg = before.graph
    before_inits = {t.name for t in bg.initializer}
    after_inits = {t.name for t in after.graph.initializer}
    graph_inputs = {vi.name for vi in real_inputs(before)}
    content = content_dependent(before, before_view)
    region_inputs = [n for n in region.inputs if n not in after_inits]
    cut = set(region_inputs)
    # the cone of the graph before that computes the boundary outputs from the leaves
    nodes: set[int] = set()
    leaf_names: dict[str, None] = dict.fromkeys(region_inputs)
    stack: list[int] = []
    for name in region.outputs:
        p = before_view.producer(name)
        if p is None:
            return NoSynth(f"{name!r} is computed by no node of the graph before")
        stack.append(p)
    limit = MAX_CONE_NODES * len(region.nodes) + MAX_CONE_SLACK
    while stack:
        i = stack.pop()
        if i in nodes:
            continue
        nodes.add(i)
        if len(nodes) > limit:
            return NoSynth(f"the graph before computes the region's outputs with over {limit} nodes")
        for name in before_view.inputs[i]:
            if not name or name in before_inits:
                continue
            if name in cut or name in graph_inputs or name not in content:
                leaf_names.setdefault(name)
                continue
            p = before_view.producer(name)
            if p is None:
                return NoSynth(f"{name!r} is read by the graph before but defined nowhere")
            stack.append(p)
    types = oracle.elem_types()
    shape_only_readers = _shape_only_readers(before, before_view, nodes, after, after_view, region.nodes)
    leaves: list[Leaf] = []
    for name in leaf_names:
        elem = types.get(name)
        if name in graph_inputs:
            kind = LeafKind.GRAPH_INPUT
        elif name not in content:
            kind = LeafKind.SHAPE_VALUE
        elif name in shape_only_readers:
            kind = LeafKind.SHAPE_READ
        elif elem is not None and _is_float(elem):
            kind = LeafKind.RANDOM
        elif elem is None:
            return NoSynth(f"the element type of {name!r} is not known")
        else:
            return NoSynth(f"{name!r} ({onnx.helper.tensor_dtype_to_np_dtype(elem)}) is computed from the image and "
                           "read as a value: its real value is needed")
        if elem is None and kind is not LeafKind.GRAPH_INPUT:
            return NoSynth(f"the element type of {name!r} is not known")
        leaves.append(Leaf(name, kind, elem or 0))
    shape_nodes, shape_reads = _shape_cone(before, before_view, [x.name for x in leaves
                                                                 if x.kind is LeafKind.SHAPE_VALUE],
                                           before_inits, graph_inputs)
    return SynthPlan(frozenset(nodes), tuple(leaves), frozenset(shape_nodes), tuple(shape_reads))


def _shape_only_readers(before: onnx.ModelProto, before_view: GraphView, before_nodes: set[int],
                        after: onnx.ModelProto, after_view: GraphView, after_nodes: frozenset[int]) -> set[str]:
    """Tensors that every reader, on both sides, reads only through its shape."""
    reads: dict[str, bool] = {}
    for model, view, nodes in ((before, before_view, before_nodes), (after, after_view, after_nodes)):
        for i in nodes:
            node = model.graph.node[i]
            shape_op = node.domain in ("", "ai.onnx") and node.op_type in SHAPE_OPS
            for name in view.inputs[i]:
                if name:
                    reads[name] = reads.get(name, True) and shape_op
    return {name for name, only in reads.items() if only}


def _shape_cone(before: onnx.ModelProto, view: GraphView, names: list[str], inits: set[str],
                graph_inputs: set[str]) -> tuple[set[int], list[int]]:
    """The nodes computing ``names`` (content-free tensors) from constants, graph inputs and
    the results of Shape/Size nodes, and those Shape/Size nodes (their inputs' shapes known)."""
    nodes: set[int] = set()
    reads: dict[int, None] = {}
    stack = [p for p in (view.producer(n) for n in names) if p is not None]
    while stack:
        i = stack.pop()
        node = before.graph.node[i]
        if node.domain in ("", "ai.onnx") and node.op_type in SHAPE_OPS:
            reads.setdefault(i)
            continue
        if i in nodes:
            continue
        nodes.add(i)
        for name in view.inputs[i]:
            if name and name not in inits and name not in graph_inputs:
                p = view.producer(name)
                if p is not None:
                    stack.append(p)
    return nodes, list(reads)


def shape_result(node: onnx.NodeProto, shape: Shape) -> np.ndarray:
    """What Shape (with its start/end, opset 15) or Size returns for an input of ``shape``."""
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), dtype=np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(shape[start:end], dtype=np.int64)


def random_leaf(name: str, feed_index: int, seed: int, shape: Shape, elem: int) -> np.ndarray:
    """Seeded values uniform in [-RANDOM_SCALE, RANDOM_SCALE) (the seed mixes in the tensor's
    name and the feed, so two leaves never share values).

    A tensor over RANDOM_PERIOD values repeats one block of that prime length: a copy runs at
    memory speed where drawing costs 4 ns a value (DBNet's leaves hold 10M values at 1280x1280),
    and a prime period lines up with no row, channel or batch stride, so no two rows, channels
    or images of a tensor hold the same values (a swapped or shifted index still shows)."""
    rng = np.random.default_rng([seed, feed_index, zlib.crc32(name.encode())])
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
    size = int(np.prod(shape))
    block: np.ndarray = rng.random(min(size, RANDOM_PERIOD), dtype=np.float64 if dtype == np.float64 else np.float32)
    block -= 0.5
    block *= 2 * RANDOM_SCALE
    if size <= RANDOM_PERIOD:
        return block.astype(dtype, copy=False).reshape(shape)
    values = np.empty(size, dtype)
    values[: block.size] = block
    filled = block.size
    while filled < size:  # doubling copies: 3.5x faster than np.resize, which concatenates repeats
        step = min(filled, size - filled)
        values[filled : filled + step] = values[:step]
        filled += step
    return values.reshape(shape)


def leaf_values(plan: SynthPlan, feed: Feed, feed_index: int, seed: int, oracle: ShapeOracle,
                shape_values: Values, only: set[str] | None = None) -> Values | NoSynth:
    """The leaves' values for one feed: ``shape_values`` holds the SHAPE_VALUE leaves (computed
    by the caller on the shape cone), ``oracle`` the graph before's shapes. ``only``: just
    these leaves (what the checks run at this feed read)."""
    inputs = feed_shapes(feed)
    out: Values = {}
    for leaf in plan.leaves:
        if only is not None and leaf.name not in only:
            continue
        if leaf.kind is LeafKind.GRAPH_INPUT:
            if leaf.name not in feed.arrays:
                return NoSynth(f"graph input {leaf.name!r} has no value in {feed.label}")
            out[leaf.name] = feed.arrays[leaf.name]
            continue
        if leaf.kind is LeafKind.SHAPE_VALUE:
            out[leaf.name] = shape_values[leaf.name]
            continue
        shape = oracle.shape(inputs, leaf.name)
        if shape is None:
            return NoSynth(f"the shape of {leaf.name!r} at {feed.label} is not known")
        if leaf.kind is LeafKind.SHAPE_READ:
            out[leaf.name] = np.zeros(shape, dtype=onnx.helper.tensor_dtype_to_np_dtype(leaf.elem))
        else:
            out[leaf.name] = random_leaf(leaf.name, feed_index, seed, shape, leaf.elem)
    return out


def feed_shapes(feed: Feed) -> dict[str, Shape]:
    """The graph inputs' shapes in ``feed``, without making its arrays."""
    return dict(feed.shapes)
