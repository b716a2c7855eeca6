"""segc.lowering: vendor ops rewritten to standard ONNX before onnxruntime runs a graph."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper
from segc import lowering
from segc.lowering import lower_for_reference, lowerable_ops, register_lowering
from segc.ortrun import run_model


def vendor_model() -> onnx.ModelProto:
    """x -> Relu -> TestVendorDouble (a made-up vendor op, domain test.vendor) -> y."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]),
                           helper.make_node("TestVendorDouble", ["r"], ["y"], domain="test.vendor")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("test.vendor", 1)],
                             ir_version=9)


@pytest.fixture
def double() -> Iterator[None]:
    @register_lowering("TestVendorDouble")
    def lower(graph: gs.Graph, node: gs.Node) -> None:
        """y = x + x, in standard ops."""
        (x,), (y,) = node.inputs, node.outputs
        graph.nodes.append(gs.Node("Add", inputs=[x, x], outputs=[y]))
        node.outputs.clear()

    yield
    lowering._LOWERINGS.pop("TestVendorDouble")


def test_a_registered_lowering_makes_the_graph_runnable(double: None) -> None:
    model = vendor_model()
    lowered, count = lower_for_reference(model)
    assert count == 1 and [n.op_type for n in lowered.graph.node] == ["Relu", "Add"]
    x = np.array([[1, -2], [3, -4]], np.float32)
    np.testing.assert_array_equal(run_model(model, {"x": x})["y"], 2 * np.maximum(x, 0))  # run_model lowers too
    assert [n.op_type for n in model.graph.node] == ["Relu", "TestVendorDouble"]  # the input is not modified


def test_nothing_to_lower_returns_the_same_model() -> None:
    model = vendor_model()
    model.graph.node[1].CopyFrom(helper.make_node("Identity", ["r"], ["y"]))
    same, count = lower_for_reference(model)
    assert same is model and count == 0


def test_lowerings_are_registered_once(double: None) -> None:
    assert "TestVendorDouble" in lowerable_ops() and "DeformableConv2D" in lowerable_ops()  # the Ascend form's
    with pytest.raises(ValueError, match="registered twice"):
        register_lowering("TestVendorDouble")(lambda graph, node: None)
