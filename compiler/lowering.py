"""Reference lowerings: how the verifier runs ops that onnxruntime cannot.

A ``target-only`` pass produces vendor ops (Ascend ``DeformableConv2D``, mmcv's
``MMCVModulatedDeformConv2d``...). Before running such a graph in onnxruntime the verifier
rewrites each of those ops back into standard ONNX with the function registered here for its
op type. The lowering lives beside the pass that creates the op (one module owns both
directions) and registers itself with ``@register_lowering("OpType")``.
"""

from __future__ import annotations

from typing import Callable

import onnx
import onnx_graphsurgeon as gs

from segc.passbase import carry_model_fields, load_builtin_passes
from segc.gs_import import import_graph

Lowering = Callable[[gs.Graph, gs.Node], None]
"""Rewrites one node in place into runnable standard ops (the node is then disconnected)."""

_LOWERINGS: dict[str, Lowering] = {}


def register_lowering(op_type: str) -> Callable[[Lowering], Lowering]:
    def wrap(fn: Lowering) -> Lowering:
        if op_type in _LOWERINGS:
            raise ValueError(f"a reference lowering for {op_type!r} is registered twice")
        _LOWERINGS[op_type] = fn
        return fn

    return wrap


def lowerable_ops() -> set[str]:
    load_builtin_passes()
    return set(_LOWERINGS)


def lower_for_reference(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Return a runnable copy of ``model`` and how many nodes were lowered (0: same model)."""
    load_builtin_passes()
    graph = import_graph(model)
    lowered = 0
    # re-scan after every lowering: one lowering may rewrite more than its own node (e.g. a
    # version conversion of the whole graph), so a list taken up front could hold stale nodes
    while (node := next((n for n in graph.nodes if n.op in _LOWERINGS and n.outputs), None)) is not None:
        _LOWERINGS[node.op](graph, node)
        lowered += 1
        if lowered > 100_000:
            raise RuntimeError(f"reference lowering of {node.op} does not terminate")
    if not lowered:
        return model, 0
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    carry_model_fields(model, out)
    return out, lowered
