"""simplify: folds constants, keeps dynamic dims symbolic, never grows the model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes.simplify import Simplify, weight_bytes
from tests.onnxsim_parity import assert_same_graph, simplified_both_ways


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


def weights_graph() -> onnx.ModelProto:
    """Four 3x3 convs: one whose weight onnx-simplifier cannot use (w_plain), one feeding a
    BatchNormalization it fuses (w_bn), one on a constant input it folds (w_const), and one
    whose weight an Add also reads (w_shared)."""
    rng = np.random.default_rng(4)
    def w(name: str, shape: tuple[int, ...] = (4, 4, 3, 3)) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
          (("s", rng.uniform(0.5, 2, 4)), ("b", rng.standard_normal(4)), ("m", rng.standard_normal(4)),
           ("v", rng.uniform(0.5, 2, 4)))]
    nodes = [helper.make_node("Conv", ["x", "w_plain"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w_bn"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["d"]),
             helper.make_node("Conv", ["k", "w_const"], ["e"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["d", "e"], ["f"]),
             helper.make_node("Conv", ["f", "w_shared"], ["g"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMean", ["w_shared"], ["h"], keepdims=0),
             helper.make_node("Reshape", ["h", "shape"], ["h2"]),
             helper.make_node("Add", ["g", "h2"], ["y"])]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [w("w_plain"), w("w_bn"), w("w_const"), w("w_shared"), w("k", (1, 4, 1, 1)), *bn,
         numpy_helper.from_array(np.array([1, 1, 1, 1], np.int64), "shape")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_only_weights_onnx_simplifier_cannot_use_are_left_out() -> None:
    from segc.passes.simplify import _opaque_weights

    assert _opaque_weights(weights_graph()) == {"w_plain"}


def test_leaving_weights_out_changes_nothing() -> None:
    """The BatchNormalization is fused and the constant conv folded, as with every weight."""
    model = weights_graph()
    out, full, result = simplified_both_ways(model)
    assert result.stats["weights_left_out"] == 1
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]
    assert [n.op_type for n in out.graph.node].count("Conv") == 3  # the one on a constant input folded
    assert_same_graph(out, full)
    x = np.random.default_rng(5).standard_normal((2, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, {"x": x})["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-4)
    again, second = Simplify().apply(out, PassContext())
    assert not second.changed and again is out


def test_weights_kept_on_disk_come_back_as_references(tmp_path) -> None:
    """A lazily loaded model: the weight left out returns as the same reference into the file,
    the ones onnx-simplifier used come back with their (folded) values."""
    from segc.modelio import disk_tensor, load_model_and_files

    path = tmp_path / "w.onnx"
    big = weights_graph()
    rng = np.random.default_rng(6)
    for t in big.graph.initializer:  # big enough to stay in the file
        if t.name.startswith("w_"):
            t.CopyFrom(numpy_helper.from_array(rng.standard_normal((4, 4, 33, 33)).astype(np.float32), t.name))
    for n in big.graph.node:
        if n.op_type == "Conv":
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("pads", [16, 16, 16, 16]))
    onnx.save(big, str(path))
    model, _ = load_model_and_files(path, lazy=True)
    out, full, result = simplified_both_ways(model)
    assert_same_graph(out, full)
    kept = {t.name: disk_tensor(t) for t in out.graph.initializer}
    assert kept["w_plain"] == disk_tensor(next(t for t in model.graph.initializer if t.name == "w_plain"))
    assert kept["w_shared"] is None  # read for onnx-simplifier, returned with its values


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
    from segc.modelio import load_model

    model = load_model(seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=True), lazy=True)
    out, full, result = simplified_both_ways(model)
    assert_same_graph(out, full)
    assert result.changed and result.stats["weights_left_out"] > 50
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
