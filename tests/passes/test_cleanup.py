"""cleanup: dead nodes, Identity, unused initializers/inputs; exact, idempotent."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes.cleanup import Cleanup


def messy() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    unused = numpy_helper.from_array(np.ones((100,), np.float32), "unused")
    g = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["x1"]),
            helper.make_node("Conv", ["x1", "w"], ["a"]),
            helper.make_node("Shape", ["a"], ["dead_shape"]),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Identity", ["r"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
            helper.make_tensor_value_info(
                "w", TensorProto.FLOAT, [4, 3, 1, 1]
            ),  # initializer listed as input (old exporters)
            helper.make_tensor_value_info("spare", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w, unused],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_removes_everything_dead_and_keeps_the_function() -> None:
    model = messy()
    out, result = Cleanup().apply(model, PassContext())
    assert result.changed
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu"]
    assert [i.name for i in out.graph.input] == ["x"]
    assert [t.name for t in out.graph.initializer] == ["w"]
    assert [o.name for o in out.graph.output] == ["y"]  # the output keeps its name
    x = np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32)
    before = run_model(
        model, {"x": x, "w": numpy_helper.to_array(model.graph.initializer[0]), "spare": np.zeros(1, np.float32)}
    )
    np.testing.assert_array_equal(run_model(out, {"x": x})["y"], before["y"])


def test_idempotent_and_negative_case() -> None:
    out, _ = Cleanup().apply(messy(), PassContext())
    again, result = Cleanup().apply(out, PassContext())
    assert not result.changed and again is out


def test_identity_between_input_and_output_is_kept() -> None:
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out, result = Cleanup().apply(model, PassContext())
    assert not result.changed and [o.name for o in out.graph.output] == ["y"]


def test_seed_model(seed_onnx) -> None:
    """hrnet_w48_ocr's legacy export: cleanup keeps both heads bit-exact."""
    path = seed_onnx("deeplabv2_r101", shape=(1, 3, 64, 128))
    model = onnx.load(str(path))
    out, result = Cleanup().apply(model, PassContext())
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 128)).astype(np.float32)
    ref, got = run_model(model, {"image": x}), run_model(out, {"image": x})
    for name in ref:
        np.testing.assert_array_equal(ref[name], got[name])
    assert not Cleanup().apply(out, PassContext())[1].changed
