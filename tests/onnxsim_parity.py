"""simplify against onnx-simplifier as it would be called plainly: with every weight (segc
leaves out those it cannot use, segc.passes.simplify._opaque_weights) and on the whole graph
(segc cuts big graphs into segments, segc.passes._simplify_segments); the results must agree
node for node. And its folds: numpy's (segc.passes._fold_numpy) against onnxruntime's.
Shared by tests/passes and tests/thirdparty (imported as tests.onnxsim_parity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from segc.modelio import tensor_array
from segc.passbase import PassContext, PassResult
from segc.passes import _onnxsim_core as core
from segc.passes.simplify import Simplify


def simplified_both_ways(model: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto, PassResult]:
    """``model`` simplified as segc does (weights it cannot use left out), and with every
    weight handed to onnx-simplifier; and the first run's result."""
    from segc.passes import simplify as mod

    out, result = Simplify().apply(model, PassContext())
    real = mod._opaque_weights
    mod._opaque_weights = lambda m: set()
    try:
        full, _ = Simplify().apply(model, PassContext())
    finally:
        mod._opaque_weights = real
    return out, full, result


def assert_same_graph(a: onnx.ModelProto, b: onnx.ModelProto, *, core_names: bool = False) -> None:
    """Node for node, input for input, and the same initializers (names, types, dims, bytes).

    ``core_names``: names onnx-simplifier made up (``_v_12``: a folded value, a fused node's
    output) count as the same when they stand in the same places. It numbers them with a
    counter that runs across calls, so a graph simplified in segments gets other numbers."""
    rename = _core_names(a) if core_names else {}
    other = _core_names(b) if core_names else {}
    assert [_node_bytes(n, rename) for n in a.graph.node] == [_node_bytes(n, other) for n in b.graph.node]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    def weights(m: onnx.ModelProto, names: dict[str, str]) -> dict[str, bytes]:
        return {names.get(t.name, t.name): tensor_array(t).tobytes() + bytes(t.data_type) + str(list(t.dims)).encode()
                for t in m.graph.initializer}
    assert weights(a, rename) == weights(b, other)


def _core_names(model: onnx.ModelProto) -> dict[str, str]:
    """Each ``_v_*`` name to its order of first appearance in the nodes."""
    names: dict[str, str] = {}
    for node in model.graph.node:
        for name in (*node.input, *node.output):
            if name.startswith("_v_"):
                names.setdefault(name, f"core#{len(names)}")
    return names


def _node_bytes(node: onnx.NodeProto, rename: dict[str, str]) -> bytes:
    if not rename:
        return node.SerializeToString(deterministic=True)
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for field in (copy.input, copy.output):
        for k, name in enumerate(field):
            field[k] = rename.get(name, name)
    return copy.SerializeToString(deterministic=True)


def simplified_whole_and_in_segments(model: onnx.ModelProto, segment_nodes: int
                                     ) -> tuple[onnx.ModelProto, onnx.ModelProto, PassResult]:
    """``model`` simplified with graphs cut into segments of ``segment_nodes`` nodes, and whole;
    and the first run's result (its ``segments`` stat says how many there were)."""
    from segc.passes import _simplify_segments as seg
    from segc.passes import simplify as mod

    real_size, real_plan = seg.SEGMENT_NODES, mod.plan_segments
    seg.SEGMENT_NODES = segment_nodes
    try:
        cut, result = Simplify().apply(model, PassContext())
        mod.plan_segments = lambda graph: None
        whole, _ = Simplify().apply(model, PassContext())
    finally:
        seg.SEGMENT_NODES, mod.plan_segments = real_size, real_plan
    return cut, whole, result


def fold_bytes(values: list[np.ndarray]) -> list[bytes]:
    """Fold results as onnx-simplifier's core receives them: serialised tensors."""
    return [onnx.numpy_helper.from_array(np.asarray(v)).SerializeToString() for v in values]


def folds_checked_against_onnxruntime(path: Path) -> int:
    """Run onnx-simplifier's core on ``path``; every fold numpy computed must equal onnxruntime's
    bytes. Returns how many were compared (a caller asserts it is not zero)."""
    compared = 0
    folder = core.executor()
    cls = type(folder)
    run = cls.Run

    def checked(self: Any, model_bytes: bytes, inputs: list[bytes]) -> list[bytes]:
        nonlocal compared
        before = core.FOLDS.numpy
        out: list[bytes] = run(self, model_bytes, inputs)
        if core.FOLDS.numpy > before:
            model = onnx.load_from_string(model_bytes)
            feeds = {}
            for i, raw in zip(model.graph.input, inputs, strict=True):
                t = onnx.TensorProto()
                t.ParseFromString(raw)
                feeds[i.name] = onnx.numpy_helper.to_array(t)
            assert out == fold_bytes(core._run_on_onnxruntime(model_bytes, feeds))
            compared += 1
        return out

    cls.Run = checked
    try:
        core.simplify_bytes(path.read_bytes(), core.FoldSettings())
    finally:
        cls.Run = run
    return compared
