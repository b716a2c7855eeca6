"""simplify: folds constants, keeps dynamic dims symbolic, never grows the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes.simplify import Simplify, weight_bytes


def foldable(dynamic: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array([2.0], np.float32), "two")
    three = numpy_helper.from_array(np.array([3.0], np.float32), "three")
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 16, 16]
    g = helper.make_graph(
        [helper.make_node("Mul", ["two", "three"], ["six"]),
         helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["a", "six"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"] if dynamic else [1, 4, 16, 16])],
        [w, two, three])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_folds_and_keeps_dynamic_dims() -> None:
    model = foldable()
    out, result = Simplify().apply(model, PassContext())
    assert result.changed and len(out.graph.node) < len(model.graph.node)
    dims = [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    for shape in [(1, 3, 16, 16), (2, 3, 24, 40)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run_model(out, {"x": x})["y"], run_model(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)
    again, second = Simplify().apply(out, PassContext())
    assert not second.changed and again is out  # idempotent


def test_file_route_matches_bytes_route(tmp_path) -> None:
    """Given the file the model came from, onnx-simplifier reads it itself; same graph either way."""
    model = foldable()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    from_file, by_file = Simplify().apply(model, PassContext(source=path))
    from_bytes, by_bytes = Simplify().apply(model, PassContext())
    assert (by_file.stats["input"], by_bytes.stats["input"]) == ("file", "bytes")
    assert by_file.changed and by_bytes.changed
    assert [n.op_type for n in from_file.graph.node] == [n.op_type for n in from_bytes.graph.node]
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(from_file, {"x": x})["y"], run_model(from_bytes, {"x": x})["y"], rtol=1e-6)


def test_negative_case_nothing_to_fold() -> None:
    out, _ = Simplify().apply(foldable(), PassContext())
    again, result = Simplify().apply(out, PassContext())
    assert not result.changed


def test_refuses_to_grow_the_model() -> None:
    """Expand of a constant to a big shape: folding it would turn 4 bytes into 4 MB."""
    g = helper.make_graph(
        [helper.make_node("Expand", ["one", "shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, 1024])],
        [numpy_helper.from_array(np.array([1.0], np.float32), "one"),
         numpy_helper.from_array(np.array([1024, 1024], np.int64), "shape")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out, result = Simplify().apply(model, PassContext())
    assert weight_bytes(out) < 64 * 1024
    assert "Expand" in [n.op_type for n in out.graph.node]


def test_vendor_ops_survive() -> None:
    g = helper.make_graph([helper.make_node("DeformableConv2D", ["x"], ["y"], domain="")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out, result = Simplify().apply(model, PassContext())
    assert [n.op_type for n in out.graph.node] == ["DeformableConv2D"]  # kept, not dropped or guessed at
    assert [o.name for o in out.graph.output] == ["y"]


@pytest.mark.slow
def test_seed_model_dbnet_dynamic(seed_onnx) -> None:
    model = onnx.load(str(seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=True)))
    out, result = Simplify().apply(model, PassContext())
    assert result.changed
    dims = [bool(d.dim_param) for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2] and dims[3]  # H and W stay symbolic
    assert weight_bytes(out) <= weight_bytes(model) * 1.02 + 4096
    for shape in [(1, 3, 128, 160), (1, 3, 96, 224)]:
        x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(run_model(out, {"input": x})["output"], run_model(model, {"input": x})["output"],
                                   rtol=1e-4, atol=1e-5)


def test_a_result_with_contrib_ops_is_discarded(monkeypatch) -> None:
    """Whatever onnx-simplifier fuses, segc's output stays in the domains its input used."""
    from onnx import TensorProto, helper

    from segc.passbase import PassContext
    from segc.passes import simplify as mod

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    fused = helper.make_model(
        helper.make_graph(
            [helper.make_node("FusedRelu", ["x"], ["y"], domain="com.microsoft")], "g", list(g.input), list(g.output)
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )
    monkeypatch.setattr(mod._OnnxsimInput, "simplify", lambda self, settings, notes: fused)
    out, result = mod.Simplify().apply(model, PassContext())
    assert out is model and not result.changed and "com.microsoft" in result.notes[-1]
