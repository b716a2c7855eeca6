"""Selectors: naming the nodes and tensors a pass should touch without exporter numbering.

The hand-made pipelines named nodes by the legacy exporter's numbers (``Conv_1380``,
``Resize_1051``), which break as soon as the model or the exporter changes. A selector says
*what* a node is instead: its op type and position, a pattern over its name, or where it sits
relative to an output. Exact names still work, including ATC's ``name:0`` form.

Syntax (spaces around ``>`` are optional; ``before``/``after`` need spaces around them)::

    NAME            exact node name, else exact tensor name       Conv_1380, output2
    NAME:K          output K of node NAME (ATC's --out_nodes)     Conv_1380:0
    GLOB            shell pattern (* ? [..]) over node names;      */fuse_layers/*, Resize_*
                    tensor names only when no node name matches
    re:REGEX        Python regex, searched like GLOB; the rest of  re:^/stage4/.*Resize$
                    the selector is the pattern
    OP              every node of op type OP                       Resize
    OP[I]           I-th OP node in topological order              Conv[-1], Resize[0]
    OP[*]  OP[A:B]  all OP nodes / a Python slice of them          Resize[*], Resize[2:5]
    ATOM:K          output K of whatever ATOM matched              Split[0]:1
    A>B             A nodes with an output consumed directly by    Resize>Concat
                    a B node (chains: A>B>C)
    A before T      the nearest A node upstream of T               Conv before output2
    A after T       the nearest A node downstream of T             Resize after Conv[-1]

Resolution order: the whole text as an exact node or tensor name wins; then ``re:``; then
``before``/``after``; then ``>``; each atom is tried as exact name, ``...:K``, ``OP[..]``,
glob, and finally bare op type. A tensor name stands for the node producing it where nodes
are wanted; a node stands for its first output (or output ``K``) where tensors are wanted.

``A before T`` walks backwards from T layer by layer (T's producer first when T is a tensor,
T's inputs first when T is a node) and returns the A nodes of the first layer that has any.
Identity and Cast count as no step. The walk follows value edges only: weights, shape
computations (``Shape``/``Size``) and the shape arguments of ``Resize``/``Reshape``/
``Expand``/``Slice``... are not followed, so the answer never jumps into a ``Shape`` side
chain. ``Conv before output2`` therefore names the classifier convolution of the head that
produces ``output2`` whatever the exporter numbered it. ``after`` is the same walk forwards.

Options that take several selectors accept a list, or one string split on ``;`` (ATC's
separator) and on commas outside brackets: ``"Conv before output1;Conv before output2"``.

A selector that matches nothing is a ``SegcError`` that lists the closest node and tensor
names and the op types present. Unnamed nodes are reachable through op type, position and
relations.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Sequence

import onnx_graphsurgeon as gs

from segc.errors import SegcError
from segc.graph_view import GraphView

# Ops whose output depends on their input's shape, never its values: a walk stops there.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size", "ConstantOfShape"})
# Ops whose inputs after the first are shape/index arguments, not data.
_DATA_FIRST_OPS = frozenset({"Resize", "Upsample", "Reshape", "Expand", "Tile", "Slice", "Pad", "Squeeze", "Unsqueeze"})

# Ops a structural walk steps through for free: they move or retype a value, nothing else.
_ZERO_STEP_OPS = frozenset({"Identity", "Cast"})

_POSITION_RE = re.compile(r"^(?P<op>[A-Za-z_][\w.]*)\[(?P<pos>[^\[\]]*)\]$")
_OUTPUT_INDEX_RE = re.compile(r"^(?P<body>.+):(?P<k>\d+)$")
_RELATION_RE = re.compile(r"\s+(before|after)\s+")
_GLOB_CHARS = frozenset("*?[")
_NUMBERED_RE = re.compile(r"^([A-Za-z]+)_\d+$")


@dataclass(frozen=True, eq=False)
class _Hit:
    """One thing a selector matched: a node (optionally one of its outputs) or a tensor."""

    node: gs.Node | None = None
    tensor: gs.Tensor | None = None
    index: int | None = None  # output index, for node hits written ``...:K``

    def carried(self) -> list[gs.Tensor]:
        """Tensors through which this hit feeds other nodes (used by ``>`` and ``after``)."""
        if self.tensor is not None:
            return [self.tensor]
        assert self.node is not None
        return [self.node.outputs[self.index]] if self.index is not None else list(self.node.outputs)

    def first_tensor(self) -> gs.Tensor:
        if self.tensor is not None:
            return self.tensor
        assert self.node is not None
        return self.node.outputs[self.index or 0]


def node_label(node: gs.Node) -> str:
    """A printable name for stats and messages, also for the unnamed nodes some exporters write."""
    if node.name:
        return str(node.name)
    out = node.outputs[0].name if node.outputs else "?"
    return f"<{node.op} -> {out}>"


def as_selector_list(value: str | Sequence[str] | None) -> list[str]:
    """Normalise an option value to a list of selectors.

    A list is taken as is. A string is split on ``;`` (ATC's ``--out_nodes`` separator) and on
    commas outside brackets (``Resize[2:5],Conv[-1]``), except that a ``re:`` piece is never
    split on commas, since a regex may need them (``re:x{1,3}``).
    """
    if value is None:
        return []
    if not isinstance(value, str):
        return [str(v).strip() for v in value if str(v).strip()]
    pieces: list[str] = []
    for chunk in value.split(";"):
        chunk = chunk.strip()
        if not chunk:
            continue
        if chunk.startswith("re:"):
            pieces.append(chunk)
            continue
        depth, start = 0, 0
        for i, ch in enumerate(chunk):
            depth += ch == "["
            depth -= ch == "]"
            if ch == "," and depth == 0:
                pieces.append(chunk[start:i].strip())
                start = i + 1
        pieces.append(chunk[start:].strip())
    return [p for p in pieces if p]


class _Resolver:
    """Indexes one graph once (topological order, names, op types) and resolves selectors."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self._file_order = list(graph.nodes)
        self._index = {id(n): i for i, n in enumerate(self._file_order)}
        # edges marked "value" are the ones the structural walk follows (see _value_inputs)
        self.view = GraphView.from_gs(graph, self._file_order, value_inputs=_value_inputs)
        self.nodes = [self._file_order[i] for i in self.view.topological()]
        self.order = {id(n): i for i, n in enumerate(self.nodes)}
        self.node_by_name: dict[str, gs.Node] = {}
        for n in self.nodes:
            if n.name and n.name not in self.node_by_name:
                self.node_by_name[n.name] = n
        self.tensors = {name: t for name, t in graph.tensors().items() if name}
        self.op_types = sorted({n.op for n in self.nodes})

    # ---------------------------------------------------------------- entry points
    def hits(self, selector: str) -> list[_Hit]:
        text = selector.strip()
        if not text:
            raise SegcError("empty selector")
        exact = self._exact(text)
        if exact:
            return exact
        if text.startswith("re:"):
            return self._require(self._pattern(text, text[3:], regex=True), text, text)
        parts = _RELATION_RE.split(text)
        if len(parts) == 1:
            return self._chain(text, text)
        if len(parts) != 3 or not parts[0].strip() or not parts[2].strip():
            raise SegcError(f"selector {text!r}: write one 'A before T' or 'A after T' relation")
        left, keyword, right = parts[0].strip(), parts[1], parts[2].strip()
        candidates = self._chain(left, text)
        anchors = self._chain(right, text)
        found = self._walk(candidates, anchors, upstream=keyword == "before")
        if not found:
            raise SegcError(f"selector {text!r}: no {left!r} node lies {keyword} {right!r}{self._ops_hint()}")
        return found

    def nodes_of(self, selector: str) -> list[gs.Node]:
        out: list[gs.Node] = []
        for hit in self.hits(selector):
            node = hit.node if hit.node is not None else _producer(hit.tensor)
            if node is None:
                assert hit.tensor is not None  # a hit without a node is a tensor hit
                raise SegcError(
                    f"selector {selector.strip()!r} names {hit.tensor.name!r}, a graph input or constant that no node "
                    "produces"
                )
            out.append(node)
        return self._sorted_nodes(out)

    def tensors_of(self, selector: str) -> list[gs.Tensor]:
        return self._sorted_tensors([hit.first_tensor() for hit in self.hits(selector)])

    # ---------------------------------------------------------------- atoms and chains
    def _chain(self, text: str, whole: str) -> list[_Hit]:
        """``A>B>C``: the A hits that feed a B hit that feeds a C hit (right to left)."""
        atoms = [a.strip() for a in text.split(">")]
        if any(not a for a in atoms):
            raise SegcError(f"selector {whole!r}: empty operand around '>'")
        resolved = [self._atom(a, whole) for a in atoms]
        kept = resolved[-1]
        for i in range(len(atoms) - 2, -1, -1):
            allowed = {id(n) for n in self._hit_nodes(kept)}
            kept = [h for h in resolved[i] if any(id(c) in allowed for t in h.carried() for c in t.outputs)]
            if not kept:
                rest = ">".join(atoms[i + 1:])
                raise SegcError(
                    f"selector {whole!r}: no {atoms[i]!r} node feeds a {rest!r} node directly{self._ops_hint()}"
                )
        return kept

    def _atom(self, atom: str, whole: str) -> list[_Hit]:
        exact = self._exact(atom)
        if exact:
            return exact
        m = _OUTPUT_INDEX_RE.match(atom)
        if m:
            body, k = m.group("body").strip(), int(m.group("k"))
            base = self._atom(body, whole)
            out = []
            for hit in base:
                if hit.node is None:
                    raise SegcError(f"selector {whole!r}: {body!r} is a tensor; ':{k}' picks an output of a node")
                if k >= len(hit.node.outputs):
                    count = len(hit.node.outputs)
                    raise SegcError(f"selector {whole!r}: {node_label(hit.node)} has {count} output(s), no output {k}")
                out.append(_Hit(node=hit.node, index=k))
            return out
        m = _POSITION_RE.match(atom)
        if m and m.group("op") in self.op_types:
            return self._position(m.group("op"), m.group("pos").strip(), whole)
        if _GLOB_CHARS & set(atom):
            found = self._pattern(whole, atom, regex=False)
            if found:
                return found
            if m:  # looked like OP[..] but the op is absent: say so rather than "no glob match"
                raise SegcError(f"selector {whole!r}: the graph has no {m.group('op')} node{self._ops_hint()}")
            return self._require(found, whole, atom)
        if atom in self.op_types:
            return [_Hit(node=n) for n in self.nodes if n.op == atom]
        return self._require([], whole, atom)

    def _exact(self, name: str) -> list[_Hit]:
        node = self.node_by_name.get(name)
        if node is not None:
            return [_Hit(node=node)]
        tensor = self.tensors.get(name)
        if tensor is not None:
            return [_Hit(tensor=tensor)]
        return []

    def _pattern(self, whole: str, pattern: str, *, regex: bool) -> list[_Hit]:
        """Glob or regex over node names; over tensor names only if no node name matches."""
        match: Callable[[str], bool]
        if regex:
            try:
                rx = re.compile(pattern)
            except re.error as exc:
                raise SegcError(f"selector {whole!r}: bad regular expression ({exc})") from None
            match = lambda s: rx.search(s) is not None  # noqa: E731 - tiny adapter
        else:
            match = lambda s: fnmatch.fnmatchcase(s, pattern)  # noqa: E731
        nodes = [_Hit(node=n) for n in self.nodes if n.name and match(n.name)]
        if nodes:
            return nodes
        tensors = [t for name, t in self.tensors.items() if match(name)]
        return [_Hit(tensor=t) for t in self._sorted_tensors(tensors)]

    def _position(self, op: str, pos: str, whole: str) -> list[_Hit]:
        of_op = [n for n in self.nodes if n.op == op]
        if pos == "*":
            chosen = of_op
        elif ":" in pos:
            try:
                bounds = [int(p) if p.strip() else None for p in pos.split(":")]
                if len(bounds) > 3:
                    raise ValueError
                chosen = of_op[slice(*bounds)]
            except ValueError:
                raise SegcError(f"selector {whole!r}: bad slice [{pos}] (use [A:B] or [A:B:S] with integers)") from None
            if not chosen:
                raise SegcError(f"selector {whole!r}: [{pos}] is empty; the graph has {len(of_op)} {op} node(s)")
        else:
            try:
                i = int(pos)
            except ValueError:
                raise SegcError(
                    f"selector {whole!r}: bad position [{pos}] (use an integer, *, or a slice A:B)"
                ) from None
            if not -len(of_op) <= i < len(of_op):
                raise SegcError(
                    f"selector {whole!r}: position {i} is out of range; the graph has {len(of_op)} {op} node(s)"
                )
            chosen = [of_op[i]]
        return [_Hit(node=n) for n in chosen]

    # ---------------------------------------------------------------- structural walk
    def _walk(self, candidates: list[_Hit], anchors: list[_Hit], *, upstream: bool) -> list[_Hit]:
        """Nearest candidate nodes from each anchor, breadth first along value edges."""
        wanted: dict[int, _Hit] = {}
        for h in candidates:
            node = h.node if h.node is not None else _producer(h.tensor)
            if node is not None:
                wanted[id(node)] = h
        found: dict[int, _Hit] = {}
        for anchor in anchors:
            frontier = self._start(anchor, upstream)
            seen = {id(n) for n in frontier}
            while frontier:
                frontier = self._close(frontier, seen, upstream)
                layer = [wanted[id(n)] for n in frontier if id(n) in wanted]
                if layer:
                    for h in layer:
                        found.setdefault(id(h.node if h.node is not None else h.tensor), h)
                    break
                nxt: list[gs.Node] = []
                for n in frontier:
                    for m in (self._upstream(n) if upstream else self._downstream(n.outputs)):
                        if id(m) not in seen:
                            seen.add(id(m))
                            nxt.append(m)
                frontier = nxt
        hits = list(found.values())
        hits.sort(key=lambda h: self.order.get(id(h.node if h.node is not None else _producer(h.tensor)), -1))
        return hits

    def _close(self, layer: list[gs.Node], seen: set[int], upstream: bool) -> list[gs.Node]:
        """Add what lies behind Identity/Cast nodes to the same layer: they count as no step."""
        out = list(layer)
        i = 0
        while i < len(out):
            node = out[i]
            i += 1
            if node.op in _ZERO_STEP_OPS:
                for m in self._upstream(node) if upstream else self._downstream(node.outputs):
                    if id(m) not in seen:
                        seen.add(id(m))
                        out.append(m)
        return out

    def _start(self, anchor: _Hit, upstream: bool) -> list[gs.Node]:
        if upstream:
            if anchor.node is not None and anchor.index is None:
                return self._upstream(anchor.node)  # a node anchor: start at its inputs
            producer = _producer(anchor.first_tensor())  # a tensor anchor: its producer counts
            return [producer] if producer is not None else []
        return self._downstream(anchor.carried())

    def _upstream(self, node: gs.Node) -> list[gs.Node]:
        return [self._file_order[p] for p in self.view.predecessors(self._index[id(node)], values_only=True)]

    def _downstream(self, tensors: Iterable[gs.Tensor]) -> list[gs.Node]:
        return [self._file_order[c] for t in tensors if t.name for c in self.view.consumers(t.name, values_only=True)]

    # ---------------------------------------------------------------- helpers
    def _hit_nodes(self, hits: list[_Hit]) -> list[gs.Node]:
        out = []
        for h in hits:
            n = h.node if h.node is not None else _producer(h.tensor)
            if n is not None:
                out.append(n)
        return out

    def _sorted_nodes(self, nodes: list[gs.Node]) -> list[gs.Node]:
        unique = {id(n): n for n in nodes}
        return sorted(unique.values(), key=lambda n: self.order.get(id(n), -1))

    def _sorted_tensors(self, tensors: list[gs.Tensor]) -> list[gs.Tensor]:
        unique = {id(t): t for t in tensors}

        def key(t: gs.Tensor) -> tuple[int, int]:
            p = _producer(t)
            if p is None:
                return (-1, 0)
            return (self.order.get(id(p), -1), next((i for i, o in enumerate(p.outputs) if o is t), 0))

        return sorted(unique.values(), key=key)

    def _ops_hint(self) -> str:
        return f"; op types present: {', '.join(self.op_types) or '(none)'}"

    def _require(self, hits: list[_Hit], whole: str, atom: str) -> list[_Hit]:
        if hits:
            return hits
        # weights are never what a user means to select, and their names crowd out the rest
        names = list(self.node_by_name) + [
            n for n, t in self.tensors.items() if n not in self.node_by_name and not isinstance(t, gs.Constant)
        ]
        probe = atom[3:] if atom.startswith("re:") else atom
        close = difflib.get_close_matches(probe, names, n=5, cutoff=0.5)
        close += [op for op in difflib.get_close_matches(probe, self.op_types, n=2, cutoff=0.6) if op not in close]
        where = f" ({atom!r})" if atom != whole else ""
        hint = f"; closest names: {', '.join(close)}" if close else ""
        numbered = _NUMBERED_RE.match(probe)
        if numbered and numbered.group(1) in self.op_types:
            # Conv_1380 is the legacy exporter's numbering: point at the structural form instead
            op = numbered.group(1)
            out = self.graph.outputs[0].name if self.graph.outputs else "OUTPUT"
            hint += (f"; numbered names change with every export, select by structure instead, "
                     f"e.g. '{op}[-1]' or '{op} before {out}'")
        raise SegcError(f"selector {whole!r} matches nothing{where}{hint}{self._ops_hint()}")


def _producer(tensor: gs.Tensor | None) -> gs.Node | None:
    if tensor is None or not tensor.inputs:
        return None
    return tensor.inputs[0]


def _value_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Inputs whose *values* flow into the node's outputs (not weights, not shape arguments)."""
    if node.op in _SHAPE_ONLY_OPS:
        return []
    inputs = node.inputs[:1] if node.op in _DATA_FIRST_OPS else node.inputs
    return [t for t in inputs if t.name and not isinstance(t, gs.Constant)]


def select_nodes(graph: gs.Graph, selector: str) -> list[gs.Node]:
    """Nodes matched by ``selector``, in topological order (see the module docstring)."""
    return _Resolver(graph).nodes_of(selector)


def select_tensors(graph: gs.Graph, selector: str) -> list[gs.Tensor]:
    """Tensors matched by ``selector``: tensor names as is, nodes as their first (or ``:K``) output."""
    return _Resolver(graph).tensors_of(selector)


def select_many(
    graph: gs.Graph, selectors: Sequence[str] | str, kind: Literal["nodes", "tensors"] = "nodes"
) -> list[gs.Node] | list[gs.Tensor]:
    """Union of several selectors, deduplicated, in graph order. Each must match something."""
    if kind not in ("nodes", "tensors"):
        raise ValueError(f"kind must be 'nodes' or 'tensors', not {kind!r}")
    resolver = _Resolver(graph)
    items = as_selector_list(selectors)
    if kind == "nodes":
        return resolver._sorted_nodes([n for s in items for n in resolver.nodes_of(s)])
    return resolver._sorted_tensors([t for s in items for t in resolver.tensors_of(s)])


def select_ordered(
    graph: gs.Graph, selectors: Sequence[str] | str, kind: Literal["nodes", "tensors"] = "tensors"
) -> list[gs.Node] | list[gs.Tensor]:
    """Like ``select_many`` but in the order the selectors were given (graph order within one).

    Output lists care about the user's order (ATC's ``--out_nodes`` fixes output order).
    """
    if kind not in ("nodes", "tensors"):
        raise ValueError(f"kind must be 'nodes' or 'tensors', not {kind!r}")
    resolver = _Resolver(graph)
    seen: set[int] = set()
    out: list[Any] = []
    for s in as_selector_list(selectors):
        for item in resolver.nodes_of(s) if kind == "nodes" else resolver.tensors_of(s):
            if id(item) not in seen:
                seen.add(id(item))
                out.append(item)
    return out
