"""cleanup: remove what computes nothing the outputs need.

Exporters leave Identity nodes, initializers listed as graph inputs (pre-IR-4 habit), and
after other rewrites dead chains and unused weights. None of it changes the function; all of
it costs parse time, memory and sometimes vendor-parser failures (ATC rejects graph inputs
that are also initializers on some CANN versions).

    x -> Identity -> Conv -> y            x -> Conv -> y
    w (initializer, also graph input)     w (initializer only)
    Shape -> Gather (feeds nothing)  ==>  (gone)
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from segc.passbase import Contract, GraphPass, PassContext, PassResult, register_pass
from segc.passes._order import REWRITES


@register_pass
class Cleanup(GraphPass):
    name = "cleanup"
    contract = Contract.EXACT
    summary = "remove dead nodes, Identity nodes, unused initializers and unused inputs"
    runs_after = REWRITES
    order_reason = "it removes what the rewrites leave dangling"

    def shortcut(self, model: onnx.ModelProto) -> PassResult | None:
        """Skip the graph import when a scan of the protobuf finds nothing to remove.

        cleanup runs last in nearly every pipeline and usually finds nothing; importing a 50k-node
        graph into onnx-graphsurgeon just to learn that costs seconds.
        """
        if _has_work(model.graph):
            return None
        return PassResult(changed=False, stats={"identity_removed": 0, "nodes_removed": 0,
                                                "initializers_removed": 0, "inputs_removed": 0})

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        before_nodes = len(graph.nodes)
        before_inits = _initializer_count(graph)
        before_inputs = len(graph.inputs)

        identities = _bypass_identities(graph)
        # initializers wrongly listed as graph inputs are constants, not inputs
        graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
        graph.cleanup(remove_unused_graph_inputs=True, remove_unused_node_outputs=False)

        removed_nodes = before_nodes - len(graph.nodes)
        removed_inits = before_inits - _initializer_count(graph)
        removed_inputs = before_inputs - len(graph.inputs)
        changed = bool(removed_nodes or removed_inits or removed_inputs)
        return PassResult(
            changed=changed,
            stats={"identity_removed": identities, "nodes_removed": removed_nodes,
                   "initializers_removed": max(0, removed_inits), "inputs_removed": removed_inputs},
        )


def _has_work(graph: onnx.GraphProto) -> bool:
    """Cheap, conservative: True when cleanup might remove something (always for subgraphs)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return True  # outer names used inside subgraphs: let the full analysis decide
    if any(n.op_type == "Identity" for n in graph.node):
        return True
    inits = {t.name for t in graph.initializer}
    if any(i.name in inits for i in graph.input):
        return True
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output if out}
    live: set[int] = set()
    needed = {o.name for o in graph.output}
    stack = [producer[name] for name in needed if name in producer]
    while stack:
        i = stack.pop()
        if i in live:
            continue
        live.add(i)
        for name in graph.node[i].input:
            needed.add(name)
            if name in producer and producer[name] not in live:
                stack.append(producer[name])
    if len(live) != len(graph.node):
        return True  # dead nodes
    return any(t not in needed for t in inits) or any(i.name not in needed for i in graph.input)


def _initializer_count(graph: gs.Graph) -> int:
    return sum(1 for t in graph.tensors().values() if isinstance(t, gs.Constant))


def _bypass_identities(graph: gs.Graph) -> int:
    """Point every consumer of an Identity's output at its input; keep ones that name a graph output."""
    outputs = set(id(t) for t in graph.outputs)
    count = 0
    for node in graph.nodes:
        if node.op != "Identity" or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in outputs:
            # never rename a graph output: let the producer write the output tensor directly,
            # which is only possible when the Identity is the sole reader of a node's output
            producer = src.inputs[0] if len(src.inputs) == 1 else None
            if producer is None or id(src) in outputs or [c for c in src.outputs if c is not node]:
                continue
            node.inputs.clear()
            node.outputs.clear()
            producer.outputs = [dst if t is src else t for t in producer.outputs]
            count += 1
            continue
        for consumer in list(dst.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is dst:
                    consumer.inputs[i] = src
        node.outputs.clear()
        node.inputs.clear()
        count += 1
    return count
