"""Small ONNX graphs that several test folders build the same way (imported as tests.graphs)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def symbolic_chain() -> onnx.ModelProto:
    """x[1,3,h,w] -> Resize(sizes = concat([1,3], Shape(x)[2:4] * 2)): sizes computed at run time."""
    inits = [nh.from_array(np.array([2, 2], np.int64), "two"), nh.from_array(np.array([2, 3], np.int64), "idx"),
             nh.from_array(np.array([1, 3], np.int64), "nc")]
    nodes = [h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Gather", ["s", "idx"], ["hw"], axis=0, name="gather"),
             h.make_node("Mul", ["hw", "two"], ["hw2"], name="mul"),
             h.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0, name="concat"),
             h.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest", name="up")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 3, "h2", "w2"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def conv_identity_relu(dims: tuple[int | str, ...] = (1, 3, 8, 8)) -> onnx.ModelProto:
    """x -> Conv(4x3x3x3, same padding) -> Identity -> Relu -> y: the smallest graph with a
    weight, something for cleanup to remove and an output every pass keeps (``dims``: x's shape,
    symbolic names allowed)."""
    w = nh.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = h.make_graph(
        [h.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]), h.make_node("Identity", ["a"], ["b"]),
         h.make_node("Relu", ["b"], ["y"])],
        "g", [h.make_tensor_value_info("x", T.FLOAT, list(dims))],
        [h.make_tensor_value_info("y", T.FLOAT, None)], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=10)
