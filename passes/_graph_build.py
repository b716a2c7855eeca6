"""Small helpers for passes that build new nodes in an onnx-graphsurgeon graph.

Why a helper: rewrites such as ``rewrite_deform_conv`` create dozens of nodes and constants,
and every name must be unique in the graph, including against tensors left by an earlier
rewrite of the same node (a round trip onnx -> ascend -> onnx reuses the node's name as a
prefix). ``GraphBuilder`` hands out fresh names from one set of taken names, and turns
numpy arrays into constants, so rewrite code reads as a list of ops.

It also knows the graph's default-domain opset, because which spelling of an op is valid
(Slice with inputs since 10, GridSample's ``linear`` mode since 20) depends on it, and how
to raise that opset safely (see ``opset_bump_is_safe``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from segc.onnx_graph import DEFAULT_DOMAINS, graph_opset, is_absent, unique_name

TensorLike: TypeAlias = "gs.Tensor | np.ndarray"


def used_names(graph: gs.Graph) -> set[str]:
    """Every tensor and node name in ``graph`` (including subgraphs' outer tensors)."""
    names = set(graph.tensors().keys())
    names.update(node.name for node in graph.nodes if node.name)
    return names


class GraphBuilder:
    """Creates uniquely named nodes and constants in one graph.

    ``taken`` may be shared between several builders working on the same graph (one per
    rewritten node) so that one O(graph) scan serves them all.
    """

    def __init__(self, graph: gs.Graph, taken: set[str] | None = None) -> None:
        self.graph = graph
        self.taken = taken if taken is not None else used_names(graph)
        self.created_nodes = 0

    # names ---------------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        """``base`` itself if unused, else ``base_1``, ``base_2``... (and reserve it)."""
        return unique_name(base, self.taken)

    # constants -----------------------------------------------------------------------------

    def const(self, base: str, values: Any, dtype: Any = None) -> gs.Constant:
        """A new initializer holding ``values`` (a numpy array, list or scalar)."""
        array = np.array(values, dtype=dtype, order="C")  # a copy; keeps 0-d scalars 0-d
        return gs.Constant(self.fresh(base), array)

    def ints(self, base: str, values: Sequence[int] | int) -> gs.Constant:
        """An int64 constant (ONNX's type for shapes, axes and indices)."""
        return self.const(base, values, dtype=np.int64)

    # nodes ---------------------------------------------------------------------------------

    def op(
        self,
        op: str,
        inputs: Sequence[TensorLike | None],
        base: str,
        attrs: dict[str, Any] | None = None,
        *,
        dtype: Any = None,
        shape: Sequence[Any] | None = None,
        outputs: Sequence[gs.Variable] | None = None,
        domain: str | None = None,
        num_outputs: int = 1,
    ) -> gs.Variable:
        """Add one node; returns its (first) output.

        ``inputs`` may mix tensors and numpy arrays (turned into constants named after the
        node) and None for an absent optional input. ``outputs`` lets a node write an existing
        tensor, which is how a rewrite keeps the name of the tensor it replaces.
        """
        node_name = self.fresh(base)
        ins: list[gs.Tensor] = []
        for i, value in enumerate(inputs):
            if value is None:
                ins.append(gs.Variable.empty())
            elif isinstance(value, gs.Tensor):
                ins.append(value)
            else:
                ins.append(self.const(f"{node_name}/in{i}", value))
        if outputs is None:
            outs = [
                gs.Variable(self.fresh(f"{node_name}/out{i}" if num_outputs > 1 else f"{node_name}/out"),
                            dtype=dtype, shape=list(shape) if shape is not None else None)
                for i in range(num_outputs)
            ]
        else:
            outs = list(outputs)
        node = gs.Node(op=op, name=node_name, attrs=dict(attrs or {}), inputs=ins, outputs=outs, domain=domain)
        self.graph.nodes.append(node)
        self.created_nodes += 1
        return outs[0]


def input_at(node: gs.Node, index: int) -> gs.Tensor | None:
    """The node's input ``index``, or None when absent."""
    if index >= len(node.inputs):
        return None
    tensor = node.inputs[index]
    return None if is_absent(tensor) else tensor


def element_dtype(*tensors: gs.Tensor | None) -> np.dtype:
    """The float dtype to use for new constants next to these tensors (float32 if unknown)."""
    for tensor in tensors:
        if tensor is None:
            continue
        if isinstance(tensor, gs.Constant):
            found: np.dtype[Any] = np.asarray(tensor.values).dtype
            return found
        if tensor.dtype is not None:
            try:
                dtype: np.dtype[Any] = np.dtype(tensor.dtype)
            except TypeError:
                continue
            if dtype.kind == "f":
                return dtype
    return np.dtype(np.float32)


# opsets --------------------------------------------------------------------------------------


def _default_domain_ops(graph: gs.Graph) -> set[str]:
    ops = {n.op for n in graph.nodes if (n.domain or "") in DEFAULT_DOMAINS}
    for sub in graph.subgraphs(recursive=True):
        ops.update(n.op for n in sub.nodes if (n.domain or "") in DEFAULT_DOMAINS)
    return ops


def opset_bump_is_safe(ops: Iterable[str], old: int, new: int) -> bool:
    """True when declaring opset ``new`` instead of ``old`` changes the meaning of no op.

    Raising only the declared number is correct exactly when every op in the graph resolves
    to the same schema version under both opsets (e.g. Conv, Relu, Add). Ops whose schema
    changed in between (Softmax's axis rule at 13, Unsqueeze's axes input at 13, ReduceMean
    at 18...) need onnx's version converter instead. Ops with no schema (vendor ops such as
    Ascend's DeformableConv2D in the default domain) do not depend on the opset.
    """
    if new <= old:
        return True
    for op in ops:
        try:
            before = onnx.defs.get_schema(op, old).since_version
        except onnx.defs.SchemaError:
            continue  # vendor op: not versioned by ONNX
        try:
            after = onnx.defs.get_schema(op, new).since_version
        except onnx.defs.SchemaError:
            return False
        if before != after:
            return False
    return True


def graph_opset_bump_is_safe(graph: gs.Graph, new: int) -> bool:
    return opset_bump_is_safe(_default_domain_ops(graph), graph_opset(graph), new)


def set_default_opset(graph: gs.Graph, version: int) -> None:
    """Declare ``version`` for the default domain (both gs's ``opset`` and the import list)."""
    graph.opset = version
    if graph.import_domains is None:
        return
    for opset in graph.import_domains:
        if opset.domain in DEFAULT_DOMAINS:
            opset.version = version
            return
    graph.import_domains.append(onnx.helper.make_opsetid("", version))
