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

import onnx_graphsurgeon as gs

from segc.passbase import Contract, GraphPass, PassContext, PassResult, register_pass


@register_pass
class Cleanup(GraphPass):
    name = "cleanup"
    contract = Contract.EXACT
    summary = "remove dead nodes, Identity nodes, unused initializers and unused inputs"
    options = {}

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
