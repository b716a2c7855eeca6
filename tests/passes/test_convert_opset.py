"""convert_opset: down-conversion for vendor parsers, vendor ops kept, exact in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.errors import SegcError
from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes.convert_opset import ConvertOpset
from segc.passes.rewrite_deform_conv import RewriteDeformConv


def resize_model(opset: int = 19) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("Resize", ["a", "", "scales"], ["y"], mode="linear")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w, scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_converts_down_and_stays_exact() -> None:
    model = resize_model()
    out, result = ConvertOpset().apply(model, PassContext(options={"version": 16}))
    assert result.changed and opset_of(out) == 16 and result.stats == {"from": 19, "to": 16}
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, {"x": x})["y"], run_model(model, {"x": x})["y"], rtol=1e-6, atol=1e-6)
    again, second = ConvertOpset().apply(out, PassContext(options={"version": 16}))
    assert not second.changed and again is out


def test_negative_cases() -> None:
    model = resize_model(opset=16)
    assert not ConvertOpset().apply(model, PassContext(options={"version": 16}))[1].changed
    assert not ConvertOpset().apply(model, PassContext(options={"version": 18}))[1].changed  # only down by default
    with pytest.raises(SegcError, match="needs option version"):
        ConvertOpset().apply(model, PassContext())


def test_impossible_conversion_is_one_clear_error() -> None:
    g = helper.make_graph([helper.make_node("DeformConv", ["x", "w", "off"], ["y"])], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "w", "off")],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)
    with pytest.raises(SegcError, match="convert_opset: cannot convert the graph from opset 19 to 16"):
        ConvertOpset().apply(model, PassContext(options={"version": 16}))


def test_seed_model_dbnet_dcn_for_ascend(seed_onnx) -> None:
    """The Ascend DCN path: DeformConv -> DeformableConv2D, then opset 19 -> 16 for ATC's parser."""
    model = onnx.load(str(seed_onnx("dbnet_r50_dcn", shape=(1, 3, 128, 160))))
    ascend, _ = RewriteDeformConv().apply(model, PassContext(options={"form": "ascend"}))
    out, result = ConvertOpset().apply(ascend, PassContext(options={"version": 16}))
    assert result.changed and opset_of(out) == 16
    assert sum(n.op_type == "DeformableConv2D" for n in out.graph.node) == 13
    x = np.random.default_rng(2).standard_normal((1, 3, 128, 160)).astype(np.float32)
    np.testing.assert_allclose(run_model(out, {"input": x})["output"], run_model(model, {"input": x})["output"],
                               rtol=1e-4, atol=1e-6)


def test_the_converter_never_sees_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large initializers go to onnx's converter as name, type and dims only (it serialises and
    parses whatever it gets), and come back with their data; small constants an
    adapter may read (the ReduceSum axes that opset 13 -> 12 moves into an attribute) travel whole."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w")  # 1728 bytes
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
         helper.make_node("ReduceSum", ["a", "axes"], ["y"], keepdims=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])], [w, axes])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    seen: list[onnx.ModelProto] = []
    real = onnx.version_converter.convert_version

    def spy(m: onnx.ModelProto, version: int) -> onnx.ModelProto:
        seen.append(m)
        return real(m, version)

    monkeypatch.setattr(onnx.version_converter, "convert_version", spy)
    out, result = ConvertOpset().apply(model, PassContext(options={"version": 12}))
    assert result.changed and opset_of(out) == 12
    sent = {t.name: t for t in seen[0].graph.initializer}
    assert not sent["w"].raw_data and list(sent["w"].dims) == [16, 3, 3, 3]
    assert sent["axes"].raw_data == axes.raw_data
    reduce = next(n for n in out.graph.node if n.op_type == "ReduceSum")
    assert [list(a.ints) for a in reduce.attribute if a.name == "axes"] == [[2, 3]]
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run_model(out, {"x": x})["y"], run_model(model, {"x": x})["y"])
    full = real(model, 12)
    assert [t.SerializeToString() for t in out.graph.initializer] == [
        t.SerializeToString() for t in full.graph.initializer
    ]
