"""Reproducers for what a held-out trial found on models outside the acceptance set.

Dinov2 (transformers, dynamo export) interpolates its position embeddings with a *bicubic*
Resize whose data is a constant and whose size comes from the input's shape:

    pos (constant) --Resize(cubic, sizes=f(Shape(x)))--> Add <-- Conv(x)

With a static ``--input-shape`` that whole branch is a constant and ``simplify`` folds it away,
so no cubic Resize reaches the vendor; segc must not refuse it up front. The model here is the
branch in five nodes, so the compile costs about a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from segc.cli import main


def cubic_position_embedding() -> onnx.ModelProto:
    rng = np.random.RandomState(0)
    inits = [nh.from_array(rng.randn(1, 4, 4, 4).astype(np.float32), "pos"),
             nh.from_array(rng.randn(4, 3, 3, 3).astype(np.float32), "w"),
             nh.from_array(np.array([2], np.int64), "s0"), nh.from_array(np.array([4], np.int64), "s1"),
             nh.from_array(np.array([1, 4], np.int64), "nc")]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Slice", ["s", "s0", "s1"], ["hw"], name="slice"),
             h.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0, name="concat"),
             h.make_node("Resize", ["pos", "", "", "sizes"], ["p"], mode="cubic", name="pos_cubic"),
             h.make_node("Add", ["c", "p"], ["y"], name="add")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, "h", "w"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("target", ["tensorrt", "ascend"])
def test_cubic_resize_of_a_constant_folds_under_a_static_shape(tmp_path: Path, capsys, target: str) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(cubic_position_embedding(), src)
    out = tmp_path / "out"
    code = main(["compile", str(src), "--target", target, "--input-shape", "x:1,3,8,12", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = onnx.load(out / f"m.{target}.onnx")
    assert "Resize" not in {n.op_type for n in result.graph.node}, "the constant branch must be folded"


def pow_sized_resize() -> onnx.ModelProto:
    """DPT's position-embedding resize in miniature: the size goes through float math (a Pow,
    as ``sqrt(seq_len)`` exports), which segc's symbolic shape analysis does not evaluate:

        Shape(x)[2:4] -> Cast(float) -> Pow(1.0) -> Cast(int64) -> sizes -> Resize(pos) -> Add

    With a static ``--input-shape`` the chain is plain constants for onnx-simplifier."""
    rng = np.random.RandomState(0)
    inits = [nh.from_array(rng.randn(1, 4, 4, 4).astype(np.float32), "pos"),
             nh.from_array(rng.randn(4, 3, 3, 3).astype(np.float32), "w"),
             nh.from_array(np.array([2], np.int64), "s0"), nh.from_array(np.array([4], np.int64), "s1"),
             nh.from_array(np.array(1.0, np.float32), "one"), nh.from_array(np.array([1, 4], np.int64), "nc")]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Slice", ["s", "s0", "s1"], ["hw"], name="slice"),
             h.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT, name="to_float"),
             h.make_node("Pow", ["hwf", "one"], ["hwp"], name="pow"),
             h.make_node("Cast", ["hwp"], ["hwi"], to=T.INT64, name="to_int"),
             h.make_node("Concat", ["nc", "hwi"], ["sizes"], axis=0, name="concat"),
             h.make_node("Resize", ["pos", "", "", "sizes"], ["p"], mode="linear", name="pos_resize"),
             h.make_node("Add", ["c", "p"], ["y"], name="add")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, "h", "w"])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4, "h", "w"])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


def test_static_shape_folds_a_resize_size_the_analysis_cannot_read(tmp_path: Path, capsys) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(pow_sized_resize(), src)
    out = tmp_path / "out"
    code = main(["compile", str(src), "--target", "ascend", "--input-shape", "x:1,3,8,12", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = onnx.load(out / "m.ascend.onnx")
    assert "Resize" not in {n.op_type for n in result.graph.node}, "the constant branch must be folded"


def vit_attention_block() -> onnx.ModelProto:
    """One ViT self-attention block as the legacy exporter writes it (DPT, ViT, Dinov2), static:

        x -> Conv(patch) -> tokens -> Gemm q/k/v -> Reshape/Transpose -> MatMul -> Div -> Softmax
          -> MatMul -> Transpose/Reshape -> Gemm -> Add(tokens) -> y

    onnx-simplifier's fuse_attention turns this into ``com.microsoft::Attention``, an
    onnxruntime contrib op that no vendor parses."""
    rng = np.random.RandomState(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return nh.from_array((rng.randn(*shape) * 0.2).astype(np.float32), name)

    def i64(name: str, values: list[int]) -> onnx.TensorProto:
        return nh.from_array(np.array(values, np.int64), name)

    inits = [
        w("pw", 16, 3, 4, 4),
        w("pb", 16),
        w("wq", 16, 16),
        w("bq", 16),
        w("wk", 16, 16),
        w("bk", 16),
        w("wv", 16, 16),
        w("bv", 16),
        w("wo", 16, 16),
        w("bo", 16),
        nh.from_array(np.array(2.828427, np.float32), "scale"),
        i64("tok", [1, 16, -1]),
        i64("flat", [-1, 16]),
        i64("heads", [1, -1, 2, 8]),
        i64("img", [1, 16, 4, 4]),
        i64("seq", [1, 16, 16]),
    ]
    n = h.make_node
    nodes = [
        n("Conv", ["x", "pw", "pb"], ["c"], kernel_shape=[4, 4], strides=[4, 4]),
        n("Reshape", ["c", "tok"], ["r0"]),
        n("Transpose", ["r0"], ["t"], perm=[0, 2, 1]),
        n("Reshape", ["t", "flat"], ["tf"]),
        n("Gemm", ["tf", "wq", "bq"], ["q0"]),
        n("Reshape", ["q0", "heads"], ["q1"]),
        n("Transpose", ["q1"], ["q"], perm=[0, 2, 1, 3]),
        n("Gemm", ["tf", "wk", "bk"], ["k0"]),
        n("Reshape", ["k0", "heads"], ["k1"]),
        n("Transpose", ["k1"], ["kt"], perm=[0, 2, 3, 1]),
        n("Gemm", ["tf", "wv", "bv"], ["v0"]),
        n("Reshape", ["v0", "heads"], ["v1"]),
        n("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "kt"], ["s"]),
        n("Div", ["s", "scale"], ["sd"]),
        n("Softmax", ["sd"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["a"]),
        n("Transpose", ["a"], ["a1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["a1", "flat"], ["a2"]),
        n("Gemm", ["a2", "wo", "bo"], ["o0"]),
        n("Reshape", ["o0", "seq"], ["o"]),
        n("Add", ["o", "t"], ["z"]),
        n("Transpose", ["z"], ["zt"], perm=[0, 2, 1]),
        n("Reshape", ["zt", "img"], ["y"]),
    ]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 16, 4, 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("target", ["tensorrt", "magicmind"])
def test_simplify_keeps_attention_in_standard_onnx(tmp_path: Path, capsys, target: str) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(vit_attention_block(), src)
    out = tmp_path / "out"
    code = main(["compile", str(src), "--target", target, "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = onnx.load(out / f"m.{target}.onnx")
    assert {nd.domain for nd in result.graph.node} <= {"", "ai.onnx"}, "no contrib ops in a vendor build"
