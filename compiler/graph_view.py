"""One view of an ONNX graph as a dependency graph of its nodes: the walks segc needs, written once.

Nodes are the ONNX nodes, numbered in file order (0..n-1); an edge ``p -> c`` means some
tensor ``p`` produces is an input of ``c``. Which inputs carry a *value* is kept per node: a
caller that only follows data (``segc.selectors``: not weights, not the sizes of a Resize)
says which inputs count when it builds the view (``predecessors(values_only=True)``). Graph
inputs and initializers are not nodes; ``producer`` is None for them.

Subgraphs (If/Loop/Scan bodies) are not expanded: the If/Loop node is one node, and every
tensor its bodies read from the enclosing graph (at any depth) is an implicit input of that
node, so walks and regions see the real dependency (a body that reads ``x`` depends on the
producer of ``x``) without the body's own nodes appearing in the view::

    x -> Relu -> r ----------.           view:  Relu -> If   (edge r: implicit,
    c -> If(then: Add(r, 1)) -> y                           read by the then-branch)

The walks are plain breadth-first searches and Kahn's algorithm over successor and
predecessor lists, linear in nodes and edges, written here so that every caller asks the same
question the same way. They were networkx calls on a DiGraph once; importing networkx and
building the DiGraph cost each ``--verify each`` compile about 0.13 s (issue 11), more than
the walks themselves. networkx still orders the nodes of a graph with a cycle (an invalid
graph: see ``topological``), where its strongly connected components are worth the import.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

InputFilter = Callable[[int], Sequence[str]]


@dataclass(frozen=True)
class Boundary:
    """Where a region of nodes meets the rest of the graph.

    ``inputs``: tensors the region reads that it does not produce (outputs of nodes outside it,
    graph inputs, initializers). ``outputs``: tensors the region produces that a node outside
    it reads, or that are graph outputs (or otherwise ``watched``).
    """

    nodes: frozenset[int]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class GraphView:
    """The dependency graph of one graph's nodes (see module docstring)."""

    def __init__(self, inputs: Sequence[Sequence[str]], outputs: Sequence[Sequence[str]],
                 value_inputs: Sequence[Sequence[str]] | None = None, graph_outputs: Sequence[str] = ()) -> None:
        self.graph_outputs = tuple(graph_outputs)
        self.inputs = [tuple(names) for names in inputs]
        self.outputs = [tuple(names) for names in outputs]
        values = [set(v) for v in value_inputs] if value_inputs is not None else [set(i) for i in self.inputs]
        self._producer: dict[str, int] = {}
        for i, outs in enumerate(self.outputs):
            for name in outs:
                if name:
                    self._producer.setdefault(name, i)
        self._consumers: dict[str, list[int]] = {}
        self._succ: list[list[int]] = [[] for _ in self.inputs]  # each node's readers, once each
        self._pred: list[list[int]] = [[] for _ in self.inputs]  # each node's producers, once each
        for c, names in enumerate(self.inputs):
            for name in dict.fromkeys(names):
                if not name:
                    continue
                self._consumers.setdefault(name, []).append(c)
                p = self._producer.get(name)
                if p is not None and p != c and p not in self._pred[c]:
                    self._succ[p].append(c)
                    self._pred[c].append(p)
        self._values = values

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_onnx(cls, graph: onnx.GraphProto) -> GraphView:
        """The view of a GraphProto; subgraph bodies' outer reads are implicit inputs."""
        inputs = [node_reads(n) for n in graph.node]
        return cls(inputs, [list(n.output) for n in graph.node], graph_outputs=[o.name for o in graph.output])

    @classmethod
    def from_gs(cls, graph: gs.Graph, nodes: Sequence[gs.Node] | None = None,
                value_inputs: Callable[[gs.Node], Iterable[gs.Tensor]] | None = None) -> GraphView:
        """The view of a graph-surgeon graph's ``nodes`` (default: ``graph.nodes``, in that order).

        ``value_inputs`` marks which inputs carry values (edges' ``value`` attribute)."""
        nodes = list(graph.nodes if nodes is None else nodes)
        inputs = [[t.name for t in n.inputs] + _outer_reads_gs(n) for n in nodes]
        values = None
        if value_inputs is not None:
            values = [[t.name for t in value_inputs(n)] for n in nodes]
        return cls(inputs, [[t.name for t in n.outputs] for n in nodes], values,
                   graph_outputs=[t.name for t in graph.outputs])

    # ---------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return len(self.inputs)

    def producer(self, tensor: str) -> int | None:
        return self._producer.get(tensor)

    def consumers(self, tensor: str, *, values_only: bool = False) -> list[int]:
        """Nodes that read ``tensor`` (explicitly or from a body), in file order."""
        users = self._consumers.get(tensor, [])
        return [c for c in users if tensor in self._values[c]] if values_only else list(users)

    def predecessors(self, node: int, *, values_only: bool = False) -> list[int]:
        """Producers of ``node``'s inputs, in input order (once each)."""
        out: list[int] = []
        for name in dict.fromkeys(self.inputs[node]):
            if values_only and name not in self._values[node]:
                continue
            p = self._producer.get(name)
            if p is not None and p != node and p not in out:
                out.append(p)
        return out

    def successors(self, node: int) -> list[int]:
        """Readers of ``node``'s outputs (once each)."""
        return list(self._succ[node])

    def has_edge(self, producer: int, consumer: int) -> bool:
        return consumer in self._succ[producer]

    # ---------------------------------------------------------------- walks
    def topological(self) -> list[int]:
        """Stable topological order: among ready nodes, file order first.

        A cycle (an invalid graph) does not raise: the nodes of each cycle come together, in
        file order, where the cycle as a whole sits (so a selector still resolves)."""
        order = self._kahn()
        if len(order) == len(self.inputs):
            return order
        import networkx as nx

        graph: nx.DiGraph[int] = nx.DiGraph()
        graph.add_nodes_from(range(len(self.inputs)))
        graph.add_edges_from((p, c) for p, readers in enumerate(self._succ) for c in readers)
        condensed = nx.condensation(graph)
        members = condensed.graph["mapping"]
        groups: dict[int, list[int]] = {}
        for node, comp in members.items():
            groups.setdefault(comp, []).append(node)
        first = {comp: min(nodes) for comp, nodes in groups.items()}
        comps = nx.lexicographical_topological_sort(condensed, key=lambda comp: first[comp])
        return [n for comp in comps for n in sorted(groups[comp])]

    def is_acyclic(self) -> bool:
        return len(self._kahn()) == len(self.inputs)

    def _kahn(self) -> list[int]:
        """Kahn's algorithm, the smallest ready node first; stops short of any cycle's nodes."""
        waiting = [len(p) for p in self._pred]
        ready = [i for i, n in enumerate(waiting) if n == 0]  # ascending: already a heap
        order: list[int] = []
        while ready:
            node = heapq.heappop(ready)
            order.append(node)
            for c in self._succ[node]:
                waiting[c] -= 1
                if waiting[c] == 0:
                    heapq.heappush(ready, c)
        return order

    def downstream(self, sources: Iterable[int]) -> set[int]:
        """Every node reachable from ``sources`` (the sources not included unless on a cycle)."""
        return set(self._layers(self._succ, sources))

    def upstream(self, sources: Iterable[int]) -> set[int]:
        """Every node ``sources`` depend on (the sources not included unless on a cycle)."""
        return set(self._layers(self._pred, sources))

    def walk_upstream(self, node: int) -> Iterator[int]:
        """The nodes ``node`` depends on, nearest first (breadth first; each once)."""
        return iter(self._layers(self._pred, [node]))

    @staticmethod
    def _layers(edges: list[list[int]], sources: Iterable[int]) -> list[int]:
        """Nodes reachable from ``sources`` by at least one edge along ``edges``, breadth first
        from the sources' neighbours (in the order first met)."""
        seen: dict[int, None] = {}
        for s in dict.fromkeys(sources):
            for m in edges[s]:
                seen.setdefault(m)
        queue = list(seen)
        for node in queue:  # (grows as it goes)
            for m in edges[node]:
                if m not in seen:
                    seen[m] = None
                    queue.append(m)
        return queue

    def components(self, nodes: Iterable[int]) -> list[set[int]]:
        """``nodes`` split into groups joined by edges among them (either direction)."""
        left = set(nodes)
        groups: list[set[int]] = []
        while left:
            group = {left.pop()}
            stack = list(group)
            while stack:
                node = stack.pop()
                for m in (*self._succ[node], *self._pred[node]):
                    if m in left:
                        left.discard(m)
                        group.add(m)
                        stack.append(m)
            groups.append(group)
        return groups

    def convex(self, region: Iterable[int]) -> set[int]:
        """``region`` plus every node on a path between two of its nodes.

        With a convex region, no tensor the region reads is computed from what the region
        computes: its boundary inputs are the same values before and after a rewrite of it."""
        nodes = set(region)
        return nodes | (self.downstream(nodes) & self.upstream(nodes))

    def boundary(self, region: Iterable[int], watched: Iterable[str] = ()) -> Boundary:
        """The tensors entering and leaving ``region`` (see :class:`Boundary`); graph outputs
        the region produces are always boundary outputs, ``watched`` tensors too."""
        nodes = frozenset(region)
        produced = {name for i in nodes for name in self.outputs[i] if name}
        inputs: dict[str, None] = {}
        for i in sorted(nodes):
            for name in self.inputs[i]:
                if name and name not in produced:
                    inputs.setdefault(name)
        watch = set(watched) | set(self.graph_outputs)
        outputs: dict[str, None] = {}
        for i in sorted(nodes):
            for name in self.outputs[i]:
                if name and (name in watch or any(c not in nodes for c in self._consumers.get(name, []))):
                    outputs.setdefault(name)
        return Boundary(nodes, tuple(inputs), tuple(outputs))


def node_reads(node: onnx.NodeProto) -> list[str]:
    """The tensors ``node`` reads: its inputs, then what its bodies read from outside them."""
    return [*node.input, *_outer_reads_proto(node)] if node.attribute else list(node.input)


def _outer_reads_proto(node: onnx.NodeProto) -> list[str]:
    """Names a node's subgraph bodies read from enclosing scopes (nested bodies included)."""
    reads: dict[str, None] = {}
    for attr in node.attribute:
        bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for body in bodies:
            for name in _free_names(body):
                reads.setdefault(name)
    return list(reads)


def _free_names(body: onnx.GraphProto) -> list[str]:
    defined = {i.name for i in body.input} | {t.name for t in body.initializer}
    defined |= {t.name for t in body.sparse_initializer}
    free: dict[str, None] = {}
    for n in body.node:
        for name in [*n.input, *_outer_reads_proto(n)]:
            if name and name not in defined:
                free.setdefault(name)
        defined.update(n.output)
    for o in body.output:
        if o.name not in defined:
            free.setdefault(o.name)
    return list(free)


def _outer_reads_gs(node: gs.Node) -> list[str]:
    reads: dict[str, None] = {}
    for value in node.attrs.values():
        bodies = [value] if isinstance(value, gs.Graph) else [v for v in value if isinstance(v, gs.Graph)] \
            if isinstance(value, list) else []
        for body in bodies:
            defined = {t.name for t in body.inputs}
            for n in body.nodes:
                for t in [*n.inputs]:
                    if t.name and t.name not in defined and not isinstance(t, gs.Constant):
                        reads.setdefault(t.name)
                for name in _outer_reads_gs(n):
                    if name not in defined:
                        reads.setdefault(name)
                defined.update(t.name for t in n.outputs)
    return list(reads)
