"""A big graph goes to onnx-simplifier's core in segments: the core is superlinear in graph size.

On bench/run_bench.py's synthetic conv graphs, one call of the C++ core took 9.3 s for the
50k-node graph whole and 3.5 s for the same graph as ten segments of about 5k nodes (2 cores,
one run each); its Optimize and InferShapes stages grow faster than the graph (issue 11). Per
node, one call took 38 us at 1000 nodes, 46 at 2000, 51 at 4000 and 79 at 8000 (best of 3),
so segments are at least 2048 nodes: near the floor, and few enough that what each costs
around the call (its model built, one shape inference) stays small.
Graphs of up to ``2 * SEGMENT_NODES`` nodes (every seed model, every third-party model segc
is tested on) go whole, as before.

Where a graph is cut, in file order (a valid ONNX graph is topologically sorted)::

    ... -> Relu -> Add -> t -> Conv -> Relu -> ...
    '-- segment k ------'    '-- segment k+1 -----
                          t: segment k's output and segment k+1's input

A cut after node ``i`` is taken only when the segments simplify as the whole graph would:

- ``t`` is the one tensor produced at or before ``i`` and read after it. Nothing else, not
  even a constant, crosses the cut, so no fold and no shape computation spans it (a
  Constant read on both sides makes it no cut);
- ``t`` is computed at run time (it depends on a graph input that is not a weight), so
  neither side could have folded it;
- node ``i`` produces ``t`` and is one of ``SAFE_PRODUCERS``: activations and elementwise
  arithmetic, which start none of the rewrites onnx-simplifier's optimizer makes across an
  edge (those start at Conv, MatMul, Gemm, Pad, Transpose, Squeeze, Unsqueeze, Concat,
  Reshape, Slice, Shape, Reduce* and the softmaxes), and, for a unary op, no reader of ``t``
  has node ``i``'s op (consecutive idempotent ops such as Relu, Relu are merged).

Each segment is a model of its own: its nodes, the initializers and graph inputs they read,
``t`` of the cut before as an input (typed as far as onnx's inference with data propagation
finds, see ``_cut_type``), and as outputs the next cut's tensor and the graph outputs it
produces. The results are joined in order, and three things the core does across a whole
graph are done across the joins:

- names it makes up (``_v_12``) are numbered on from segment to segment (``_renumber``);
- a node repeating one of an earlier segment is merged into it (``_merge_repeats``: a
  Constant of the same value, a Shape of the same graph input);
- nameless nodes are named by their place in the joined result (``Relu_1234``).

If a segment fails, or two segments return different initializers of one name, the whole
graph goes to the core as one, so a segmented result is never worse than no result. The
tests compare the two node for node (tests/passes/test_simplify_segments.py, and on
third-party exports tests/thirdparty/test_simplify_parity.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from segc.graph_view import node_reads
from segc.modelio import copy_fields_except

SEGMENT_NODES = 2048

# Ops after which a cut is safe (see the module docstring): no onnx-optimizer rewrite starts
# at them and reaches into what reads them.
SAFE_PRODUCERS = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Gelu",
    "Add", "Sub", "Mul", "Div",
})


# Of those, the ones a reader of the same op may follow across a cut (onnx-optimizer merges
# consecutive idempotent ops, all unary; no rewrite merges consecutive arithmetic)
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass(frozen=True)
class Cut:
    """After node ``after`` (exclusive end of a segment), ``tensor`` alone crosses."""

    after: int
    tensor: str


@dataclass(frozen=True)
class SegmentPlan:
    """Where a graph is cut, and what each of its nodes reads (subgraph bodies' outer reads included)."""

    cuts: list[Cut]
    reads: list[list[str]]


def plan_segments(graph: onnx.GraphProto) -> SegmentPlan | None:
    """Cuts that split ``graph`` into segments of at least SEGMENT_NODES nodes; None for a
    graph of up to twice that, one not in topological order, or one with no such cut."""
    segment_nodes = SEGMENT_NODES  # (read when called: tests cut small graphs)
    n = len(graph.node)
    if n <= 2 * segment_nodes:
        return None
    reads = [node_reads(node) for node in graph.node]
    produced_at: dict[str, int] = {}
    readers: dict[str, set[str]] = {}  # the ops reading each output of a SAFE_PRODUCERS node
    for i, node in enumerate(graph.node):
        for name in node.output:
            if name:
                produced_at.setdefault(name, i)
                if node.op_type in SAFE_PRODUCERS:
                    readers[name] = set()
    last_read: dict[str, int] = {}
    for i, (node, names) in enumerate(zip(graph.node, reads, strict=True)):
        for name in names:
            at = produced_at.get(name)
            if at is not None and at >= i:
                return None  # read before it is produced: not sorted (or a cycle)
            last_read[name] = i
            if name in readers:
                readers[name].add(node.op_type)
    # (a graph output nothing reads later leaves from its own segment: it crosses no cut)
    varying = _varying(graph, reads)
    dies_after = [0] * n
    for name in produced_at:
        if name in last_read:
            dies_after[last_read[name]] += 1
    cuts: list[Cut] = []
    live = 0
    start = 0
    for i, node in enumerate(graph.node):
        crossing = [o for o in node.output if o and last_read.get(o, -1) > i]
        live += len(crossing) - dies_after[i]
        if (live == 1 and len(crossing) == 1 and i + 1 - start >= segment_nodes and n - (i + 1) >= segment_nodes // 2
                and node.op_type in SAFE_PRODUCERS and node.domain in ("", "ai.onnx") and crossing[0] in varying
                and (node.op_type in _BINARY or node.op_type not in readers[crossing[0]])):
            cuts.append(Cut(i + 1, crossing[0]))
            start = i + 1
    return SegmentPlan(cuts, reads) if cuts else None


def _varying(graph: onnx.GraphProto, reads: list[list[str]]) -> set[str]:
    """Tensors computed from a graph input that is not an initializer."""
    inits = {t.name for t in graph.initializer}
    varying = {i.name for i in graph.input if i.name not in inits}
    for node, names in zip(graph.node, reads, strict=True):
        if any(r in varying for r in names):
            varying.update(o for o in node.output if o)
    return varying


def simplify_in_segments(model: onnx.ModelProto, plan: SegmentPlan,
                         simplify: Callable[[onnx.ModelProto], onnx.ModelProto]) -> onnx.ModelProto | None:
    """``model`` simplified a segment at a time by ``simplify``; None when a segment failed or
    the segments disagree on a name."""
    g = model.graph
    bounds = [0, *(c.after for c in plan.cuts), len(g.node)]
    inits = {t.name: t for t in g.initializer}
    inputs = {i.name: i for i in g.input}
    outputs = {o.name: o for o in g.output}
    named = {node.name for node in g.node if node.name}
    original = {*inits, *inputs, *(name for node in g.node for name in node.output)}
    counter = 0  # the next number for a name the core made up
    merged = onnx.ModelProto()
    copy_fields_except(model, merged, "graph")
    copy_fields_except(g, merged.graph, "node", "initializer", "value_info", "output")
    entering: onnx.ValueInfoProto | None = None
    kept: dict[str, bytes] = {}
    starts: list[int] = []  # where each segment's nodes begin in the joined graph
    core_named: list[bool] = []  # per joined node: named by the core for its place in the segment
    results: dict[str, onnx.ValueInfoProto] = {}
    for k in range(len(bounds) - 1):
        a, b = bounds[k], bounds[k + 1]
        reads = {name for names in plan.reads[a:b] for name in names if name}
        made = {name for node in g.node[a:b] for name in node.output if name}
        seg = onnx.ModelProto()
        copy_fields_except(model, seg, "graph")
        seg.graph.name = f"{g.name}_segment{k}"
        seg.graph.node.extend(g.node[a:b])
        if entering is not None:
            seg.graph.input.append(entering)
        seg.graph.input.extend(i for name, i in inputs.items() if name in reads and name not in inits)
        seg.graph.initializer.extend(t for name, t in inits.items() if name in reads)
        leaving = [c.tensor for c in plan.cuts if c.after == b]
        seg.graph.output.extend(o for name, o in outputs.items() if name in made)
        try:
            cut_types = [_cut_type(seg, name) for name in leaving]
            seg.graph.output.extend(_rank_only(vi) for vi in cut_types)
            out = simplify(seg)
        except Exception:  # noqa: BLE001 - the core raises bare RuntimeErrors; the whole graph decides
            return None
        og = out.graph
        counter = _renumber(og, original, counter)
        starts.append(len(merged.graph.node))
        core_named.extend(n.name == f"{n.op_type}_{j}" and n.name not in named for j, n in enumerate(og.node))
        merged.graph.node.extend(og.node)
        for t in og.initializer:
            data = t.SerializeToString(deterministic=True)
            if t.name not in kept:
                kept[t.name] = data
                merged.graph.initializer.append(t)
            elif kept[t.name] != data:  # one weight, changed in one segment only
                return None
        merged.graph.value_info.extend(og.value_info)
        results.update((o.name, o) for o in og.output if o.name not in leaving)
        if cut_types:
            # the type inferred with data propagation, else the one the core's result gives
            entering = next((vi for vi in (cut_types[0], *(o for o in og.output if o.name == leaving[0]))
                             if vi.type.tensor_type.HasField("shape")), None)
            if entering is None:
                return None  # no type for the next segment's input
            merged.graph.value_info.append(entering)
    produced = {name for node in merged.graph.node for name in node.output}
    if any(name in produced for name in kept):
        return None  # a folded value's name is also a node's output
    merged.graph.output.extend(results.get(o.name, o) for o in g.output)
    kept_nodes = _merge_repeats(merged.graph, starts)
    for place, (node, was) in enumerate(zip(merged.graph.node, (core_named[i] for i in kept_nodes), strict=True)):
        if was:
            node.name = f"{node.op_type}_{place}"  # the core names a nameless node by its place in its result
    return merged


def _renumber(graph: onnx.GraphProto, original: set[str], start: int) -> int:
    """Give the names the core made up in one segment's result (``_v_12``: a folded value, a
    fused weight) numbers from ``start`` on, in the order they come; returns the next free
    number. The core numbers them from the same start in every call, so two segments' made-up
    names would clash (the BatchNorm-fused weights of two segments both named ``_v_27``)."""
    renamed: dict[str, str] = {}
    number = start

    def new(name: str) -> str:
        nonlocal number
        if not name.startswith("_v_") or name in original:
            return name
        if name not in renamed:
            while f"_v_{number}" in original:  # (an input simplified before has names like these)
                number += 1
            renamed[name] = f"_v_{number}"
            number += 1
        return renamed[name]

    for node in graph.node:
        for field in (node.input, node.output):
            for k, name in enumerate(field):
                field[k] = new(name)
    for t in graph.initializer:
        t.name = new(t.name)
    for vi in (*graph.value_info, *graph.output):
        vi.name = new(vi.name)
    return number


def _cut_type(segment: onnx.ModelProto, name: str) -> onnx.ValueInfoProto:
    """``name``'s type as far as onnx's inference, with data propagation, finds it from the
    segment's inputs (the next segment's input gets it).

    Data propagation matters: the core, inside one graph, knows a size from a folded shape
    computation that plain inference leaves unknown (resnet_fpn's batch of 1 behind a Resize
    whose sizes are computed), and the next segment folds ``Shape -> Slice`` on it only if
    its input says so."""
    segment.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        inferred = onnx.shape_inference.infer_shapes(segment, strict_mode=False, data_prop=True)
    finally:
        segment.graph.output.pop()
    found: onnx.ValueInfoProto = next(o for o in inferred.graph.output if o.name == name)
    return found


def _rank_only(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``vi`` with every dim unknown: the core's own inference fills the output in (a dim
    given here would be kept as it is)."""
    out = onnx.ValueInfoProto(name=vi.name)
    out.type.tensor_type.elem_type = vi.type.tensor_type.elem_type
    out.type.tensor_type.shape.SetInParent()
    for _ in vi.type.tensor_type.shape.dim:
        out.type.tensor_type.shape.dim.add()
    return out


# ops whose two calls on the same inputs may differ: never merged
_RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"})


def _merge_repeats(graph: onnx.GraphProto, starts: list[int]) -> list[int]:
    """Merge a node that repeats one of an earlier segment (same op, attributes and inputs),
    as the core does within a graph: a Constant of the same value, a Shape of the same graph
    input. The earlier node stays and its outputs are read instead; returns the places of the
    nodes kept::

        segment 0:  C0 = Constant(value=[])  ->  Resize(.., C0, ..)
        segment 1:  C1 = Constant(value=[])  ->  Resize(.., C1, ..)     C1 dropped, read as C0
    """
    segment = 0
    seen: dict[tuple[object, ...], tuple[int, list[str]]] = {}
    renamed: dict[str, str] = {}
    graph_outputs = {o.name for o in graph.output}
    # Only one tensor crosses a cut, so a node can repeat one of an earlier segment only if
    # everything it reads is the same in every segment: graph inputs, initializers, and what
    # nodes compute from those alone. The rest is not even keyed.
    shared = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    keep: list[int] = []
    for i, node in enumerate(graph.node):
        while segment + 1 < len(starts) and i >= starts[segment + 1]:
            segment += 1
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
        if (not shared.issuperset(node.input) or node.op_type in _RANDOM
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            keep.append(i)
            continue
        shared.update(node.output)
        key = (node.domain, node.op_type, tuple(node.input), len(node.output),
               tuple(a.SerializeToString(deterministic=True) for a in node.attribute))
        first = seen.setdefault(key, (segment, list(node.output)))
        if first[0] != segment and not graph_outputs.intersection(node.output):
            renamed.update(zip(node.output, first[1], strict=True))
            continue
        keep.append(i)
    if len(keep) < len(graph.node):
        nodes = [graph.node[i] for i in keep]
        del graph.node[:]
        graph.node.extend(nodes)
    return keep
