"""Linear-time replacements for two onnx-optimizer passes that onnx-simplifier runs.

onnx-simplifier runs onnx-optimizer's passes in its fixed-point loop. Two of them grow
quadratically in graph size (``ONNXSIM_PROFILE=1`` on bench/run_bench.py's synthetic graphs:
``eliminate_nop_with_unit`` 23 ms / 275 ms / 2.9 s at 5k / 20k / 50k nodes,
``eliminate_duplicate_initializer`` 5 / 48 / 596 ms): the first visits every node and fetches
each constant input with ``FetchConstantTensor``, which calls onnx IR's
``Graph::getInitializer``, a linear scan of the initializer list; the second finds each
duplicate's value by a linear scan over the initializer node's outputs. segc turns both off in onnx-simplifier
(``segc.passes._onnxsim_core.SKIPPED_OPTIMIZERS``) and does the same rewrites here on the
protobuf, with dicts: one pass over the nodes, one hash per initializer that shares its
dtype, shape and size with another.

What each rewrite does, and its guards, follow onnx/optimizer's
``onnxoptimizer/passes/eliminate_nop_with_unit.h``, ``eliminate_nop_concat.h``,
``eliminate_duplicate_initializer.h``, ``pass_util.h`` (``isABroadcastToB``,
``FetchConstantTensor``) and ``pass.h`` (``tryReplacingAllUsesWith``), read at commit
96ddf59917d8ba381e0627522d09077e66b8bbf6 of https://github.com/onnx/optimizer.

Unit operands (a constant that leaves the other operand as it is)::

    x -> Add(x, 0) -> Relu          x -> Relu        Add/Or with all 0 / false, either side
    x -> Mul(1, x) -> Relu    ==>   x -> Relu        Mul/And with all 1 / true, either side
    x -> Sub(x, 0), Div(x, 1), Pow(x, 1)             only with the constant second
    Concat(a, empty, b)       ==>   Concat(a, b)     a constant with no elements on the axis goes
    Concat(a)                 ==>   a                one input left: the node goes

Guards: the constant must broadcast to the other operand's known shape (its rank no larger,
each of its dims 1 or equal to the other's static dim), so the output's shape and dtype are
the other operand's; a symbolic or unknown dim blocks the rewrite. A graph output keeps its
name: the producer of the other operand is renamed to it, and when that operand is itself a
graph input, output or constant the node stays (onnx-optimizer would rename a constant;
segc leaves it).

Duplicate initializers::

    A = [1 2 3], B = [1 2 3]              A = [1 2 3]
    E = Add(D, A); F = Mul(E, B)    ==>   E = Add(D, A); F = Mul(E, A)

Same dtype, same dims, same bytes (byte equality: ``-0.0`` and ``0.0`` stay apart, which
onnx-optimizer's value equality would merge); the first one in the initializer list is kept.
Initializers that are graph inputs or outputs are left alone, as there.

Only the top-level graph is rewritten, and a name that a subgraph (If/Loop body) reads is
never renamed or removed.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from segc.modelio import disk_tensor, read_disk_bytes, tensor_array

BROADCAST_BINARY = ("Add", "Mul", "Div", "Sub", "Pow", "And", "Or")
_ZERO_UNIT = ("Add", "Or")  # unit 0 / false on either side
_ONE_UNIT = ("Mul", "And")  # unit 1 / true on either side
_SECOND_ZERO = ("Sub",)  # unit 0 only as the second operand
_SECOND_ONE = ("Div", "Pow")  # unit 1 only as the second operand
# the dtypes onnx-optimizer's isAllOf reads (PROTO_DTYPE_LIST); others are never a unit
_UNIT_DTYPES = frozenset({
    onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
    onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16,
    onnx.TensorProto.UINT32, onnx.TensorProto.INT32, onnx.TensorProto.UINT64, onnx.TensorProto.INT64,
    onnx.TensorProto.BOOL,
})

Dims = list[int | None]  # None: a symbolic or unknown dim


@dataclass(frozen=True)
class UnitNopStats:
    """What ``eliminate_unit_nops`` did; the simplify pass reports it."""

    duplicate_initializers: int
    unit_nodes: int
    empty_concat_inputs: int


def eliminate_unit_nops(graph: onnx.GraphProto) -> UnitNopStats:
    """Both rewrites on ``graph`` in place (duplicates first, so unit constants are shared)."""
    pinned = _subgraph_reads(graph)
    dups = _merge_duplicate_initializers(graph, pinned)
    units, empties = _bypass_unit_ops(graph, pinned)
    return UnitNopStats(duplicate_initializers=dups, unit_nodes=units, empty_concat_inputs=empties)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read inside any subgraph (outer names a body captures): never renamed here."""
    reads: set[str] = set()
    stack = [g for n in graph.node for g in _subgraphs(n)]
    while stack:
        g = stack.pop()
        for n in g.node:
            reads.update(n.input)
            stack.extend(_subgraphs(n))
        reads.update(o.name for o in g.output)
    return reads


def _merge_duplicate_initializers(graph: onnx.GraphProto, pinned: set[str]) -> int:
    """Point readers of a repeated initializer at its first copy; drop the copies."""
    io = {v.name for v in graph.input} | {v.name for v in graph.output}
    groups: dict[tuple[int, tuple[int, ...]], list[onnx.TensorProto]] = defaultdict(list)
    for t in graph.initializer:
        if not t.name or t.name in io:  # an external tensor in memory is always a weight kept on disk
            continue
        if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        groups[(t.data_type, tuple(t.dims))].append(t)
    replace: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue  # a unique (dtype, dims) is never hashed: most weights stop here
        first: dict[bytes, str] = {}
        for t in _same_start(members):
            digest = _digest(t)
            kept = first.setdefault(digest, t.name)
            if kept != t.name and t.name not in pinned:
                replace[t.name] = kept
    if not replace:
        return 0
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name in replace:
                node.input[k] = replace[name]
    # deleted in place, last first: re-adding the kept ones (``extend``) would copy every
    # weight, a second copy of the model at the peak (+260 MiB on hrnet_w48_ocr's 28 copies);
    # a delete moves only the repeated field's pointers
    for i in reversed([i for i, t in enumerate(graph.initializer) if t.name in replace]):
        del graph.initializer[i]
    _drop_value_info(graph, set(replace))
    return len(replace)


_PREFIX = 256  # first bytes compared before a same-shaped group is hashed whole (see _same_start)


def _same_start(members: list[onnx.TensorProto]) -> list[onnx.TensorProto]:
    """``members`` less those whose first bytes no other member shares, when any of them is
    a weight kept on disk (``segc.lazy_load``): hashing every same-shaped weight would read
    most of hrnet_w48_ocr's 268 MiB from the file, while distinct trained or random weights
    differ in their first bytes. Groups held in memory are hashed whole, as they are read."""
    if all(disk_tensor(t) is None for t in members):
        return members
    keys = [_start(t) for t in members]
    starts: dict[bytes, int] = defaultdict(int)
    for key in keys:
        starts[key] += 1
    return [t for t, key in zip(members, keys, strict=True) if starts[key] > 1]


def _start(t: onnx.TensorProto) -> bytes:
    """The first bytes of the tensor's values as little-endian bytes (see :func:`_digest`)."""
    disk = disk_tensor(t)
    if disk is not None:
        return b"".join(read_disk_bytes(disk, _PREFIX))
    return (t.raw_data or numpy_helper.to_array(t).tobytes())[:_PREFIX]


def _digest(t: onnx.TensorProto) -> bytes:
    """A hash of the tensor's values as little-endian bytes, whichever field holds them."""
    h = hashlib.blake2b(digest_size=32)
    disk = disk_tensor(t)
    if disk is not None:
        for chunk in read_disk_bytes(disk):
            h.update(chunk)
    elif t.raw_data:
        h.update(t.raw_data)
    else:
        h.update(numpy_helper.to_array(t).tobytes())
    return h.digest()


class _Shapes:
    """Known shapes by name (value_info, graph inputs and outputs), decoded only when asked.

    Only the operand beside a constant is ever looked up; decoding every value_info of a 50k-node
    graph up front took 0.64 s, most of this module's time.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self._infos: dict[str, onnx.ValueInfoProto] | None = None

    def get(self, name: str, const: dict[str, onnx.TensorProto]) -> Dims | None:
        if name in const:
            return list(const[name].dims)
        if self._infos is None:
            self._infos = {vi.name: vi for vi in (*self.graph.value_info, *self.graph.input, *self.graph.output)}
        vi = self._infos.get(name)
        if vi is None or not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _broadcasts_to(small: list[int], big: Dims | None) -> bool:
    """onnx-optimizer's isABroadcastToB: ``small`` stretched to ``big`` leaves ``big`` as it is."""
    if big is None:
        return len(small) == 0  # unknown rank: only a scalar is sure not to change the shape
    if len(small) > len(big):
        return False
    for a, b in zip(reversed(small), reversed(big), strict=False):
        if a != 1 and (b is None or a != b):
            return False
    return True


def _all_equal(t: onnx.TensorProto, value: int) -> bool:
    if t.data_type not in _UNIT_DTYPES:
        return False
    try:
        data = tensor_array(t)
    except (ValueError, TypeError):  # a dtype this numpy/onnx cannot decode
        return False
    if t.data_type == onnx.TensorProto.BFLOAT16:
        data = np.asarray(data, dtype=np.float32)
    return bool(np.all(data == value))


def _empty_along(t: onnx.TensorProto | None, axis: int) -> bool:
    """A constant with no elements along the Concat axis contributes nothing.

    onnx-optimizer drops any constant with zero elements; a zero in another dim would make the
    whole output empty, and dropping the input would change its shape, so segc asks for the
    zero on the axis itself.
    """
    if t is None or not t.dims:
        return False
    rank = len(t.dims)
    return -rank <= axis < rank and t.dims[axis] == 0


def _is_unit(op: str, index: int, t: onnx.TensorProto) -> bool:
    if op in _ZERO_UNIT or (op in _SECOND_ZERO and index == 1):
        return _all_equal(t, 0)
    if op in _ONE_UNIT or (op in _SECOND_ONE and index == 1):
        return _all_equal(t, 1)
    return False


class _Rewriter:
    """One forward pass over a topologically sorted graph, renames resolved as it goes."""

    def __init__(self, graph: onnx.GraphProto, pinned: set[str]) -> None:
        self.graph = graph
        self.pinned = pinned
        inputs = {v.name for v in graph.input}
        self.outputs = {v.name for v in graph.output}
        self.io = inputs | self.outputs
        self.const: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer if t.name not in inputs}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.output) == 1:
                value = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                             None)
                if value is not None:
                    self.const[n.output[0]] = value
            for o in n.output:
                self.producer[o] = n
        self.shapes = _Shapes(graph)
        self.repl: dict[str, str] = {}
        self.touched: set[str] = set()  # constants a removed node or input read

    def resolve(self, name: str) -> str:
        seen = 0
        while name in self.repl and seen <= len(self.repl):
            name = self.repl[name]
            seen += 1
        return name

    def bypass(self, node: onnx.NodeProto, other: str) -> bool:
        """Send the readers of ``node``'s output to ``other``; False where a name must stay."""
        out = node.output[0]
        if out in self.pinned:
            return False
        if out not in self.outputs:
            self.repl[out] = other
            return True
        # a graph output keeps its name: the producer of ``other`` writes it instead
        producer = self.producer.get(other)
        if other in self.io or other in self.const or other in self.pinned or producer is None:
            return False
        producer.output[list(producer.output).index(other)] = out
        self.producer[out] = producer
        self.repl[other] = out
        return True

    def unit_binary(self, node: onnx.NodeProto) -> bool:
        for i in (0, 1):
            t = self.const.get(node.input[i])
            if t is None:
                continue
            other = node.input[1 - i]
            if _broadcasts_to(list(t.dims), self.shapes.get(other, self.const)) and _is_unit(node.op_type, i, t):
                if self.bypass(node, other):
                    self.touched.add(node.input[i])
                    return True
        return False

    def concat(self, node: onnx.NodeProto) -> tuple[bool, int]:
        """Drop constant inputs with no elements; bypass a Concat left with one input."""
        names = list(node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        kept = [n for n in names if not _empty_along(self.const.get(n), axis)]
        dropped = len(names) - len(kept)
        if not kept:  # every input empty: the node stays as it is (constant folding's business)
            return False, 0
        if dropped:
            self.touched.update(set(names) - set(kept))
            del node.input[:]
            node.input.extend(kept)
        return len(kept) == 1 and self.bypass(node, kept[0]), dropped

    def run(self) -> tuple[int, int]:
        removed: list[int] = []
        empties = 0
        for idx, node in enumerate(self.graph.node):
            for k, name in enumerate(node.input):
                if name in self.repl:
                    node.input[k] = self.resolve(name)
            if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
                continue
            if node.op_type in BROADCAST_BINARY and len(node.input) == 2:
                if self.unit_binary(node):
                    removed.append(idx)
            elif node.op_type == "Concat" and node.input:
                gone, dropped = self.concat(node)
                empties += dropped
                if gone:
                    removed.append(idx)
        if not removed and not empties:
            return 0, 0
        for node in self.graph.node:  # readers before a renamed producer (graph-output case)
            for k, name in enumerate(node.input):
                if name in self.repl:
                    node.input[k] = self.resolve(name)
        dead = set(removed)
        keep = [n for i, n in enumerate(self.graph.node) if i not in dead]
        del self.graph.node[:]
        self.graph.node.extend(keep)
        self._drop_unread_constants()
        _drop_value_info(self.graph, set(self.repl))  # every name that no longer exists is a key of ``repl``
        return len(removed), empties

    def _drop_unread_constants(self) -> None:
        """Unit constants and empty inputs that nothing reads any more (what onnxsim's cleanup would drop)."""
        read = {name for n in self.graph.node for name in n.input} | self.outputs | self.pinned
        unread = self.touched - read
        if not unread:
            return
        inits = [t for t in self.graph.initializer if t.name not in unread]
        if len(inits) != len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(inits)
        nodes = [n for n in self.graph.node if not (n.op_type == "Constant" and n.output and n.output[0] in unread)]
        if len(nodes) != len(self.graph.node):
            del self.graph.node[:]
            self.graph.node.extend(nodes)


def _bypass_unit_ops(graph: onnx.GraphProto, pinned: set[str]) -> tuple[int, int]:
    return _Rewriter(graph, pinned).run()


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    """value_info entries for names that no longer exist (a stale entry would mislead shape users)."""
    if not names or not any(vi.name in names for vi in graph.value_info):
        return
    keep = [vi for vi in graph.value_info if vi.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(keep)
