"""simplify with the weights onnx-simplifier cannot use left out, against onnx-simplifier
given every weight: the two must agree node for node (segc.passes.simplify._opaque_weights).
Shared by tests/passes and tests/thirdparty (imported as tests.onnxsim_parity)."""

from __future__ import annotations

import onnx

from segc.modelio import tensor_array
from segc.passbase import PassContext, PassResult
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


def assert_same_graph(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    """Node for node, input for input, and the same initializers (names, types, dims, bytes)."""
    assert [n.SerializeToString(deterministic=True) for n in a.graph.node] == \
        [n.SerializeToString(deterministic=True) for n in b.graph.node]
    assert [i.name for i in a.graph.input] == [i.name for i in b.graph.input]
    def weights(m: onnx.ModelProto) -> dict[str, bytes]:
        return {t.name: tensor_array(t).tobytes() + bytes(t.data_type) + str(list(t.dims)).encode()
                for t in m.graph.initializer}
    assert weights(a) == weights(b)
