"""save_model writes a model tensor by tensor (segc.modelio.serialised_chunks).

The streamed encoding must parse, with onnx's loader and with onnxruntime (protobuf C++),
to exactly the message that was saved, every field kept; and it must never hold the whole
encoding at once (the point: serialising hrnet_w48_ocr in one piece was a compile's peak).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from segc.modelio import STREAM_MIN, save_model, serialised_chunks


def _rich_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((8, 128, 128)).astype(np.float32), f"w{i}") for i in range(3)
    ]
    small = numpy_helper.from_array(np.array([1.5], np.float32), "s")
    nodes = [helper.make_node("Mul", ["x", "s"], ["t0"], name="scale", doc_string="why")]
    for i in range(3):
        nodes.append(helper.make_node("Add", [f"t{i}", f"w{i}"], [f"t{i + 1}"]))
    nodes.append(helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones(4, np.float32), "cv")))
    g = helper.make_graph(
        nodes,
        "streamed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 128, 128])],
        [
            helper.make_tensor_value_info("t3", TensorProto.FLOAT, ["n", 8, 128, 128]),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [4]),
        ],
        [*weights, small],
        doc_string="graph doc",
        value_info=[helper.make_tensor_value_info("t1", TensorProto.FLOAT, ["n", 8, 128, 128])],
    )
    m = helper.make_model(
        g,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=9,
        producer_name="test",
        doc_string="model doc",
    )
    helper.set_model_props(m, {"segc.recipe": "x", "k": "v"})
    return m


def test_streamed_save_is_the_same_message(tmp_path: Path) -> None:
    model = _rich_model()
    path = save_model(model, tmp_path / "m.onnx")
    loaded = onnx.load(str(path))
    assert loaded.SerializeToString(deterministic=True) == model.SerializeToString(deterministic=True)
    chunks = list(serialised_chunks(model))
    assert len(chunks) > 3  # really streamed
    assert max(len(c) for c in chunks) <= max(t.ByteSize() for t in model.graph.initializer)  # never whole
    assert path.read_bytes() == b"".join(chunks)
    x = np.random.default_rng(1).standard_normal((2, 8, 128, 128)).astype(np.float32)
    mm = onnx.ModelProto()
    mm.CopyFrom(model)
    del mm.opset_import[1:]  # onnxruntime wants every imported domain to be registered
    path2 = save_model(mm, tmp_path / "ort.onnx")
    got = ort.InferenceSession(str(path2), providers=["CPUExecutionProvider"]).run(["t3"], {"x": x})[0]
    want = x * np.float32(1.5)
    for t in model.graph.initializer[:3]:
        want = want + numpy_helper.to_array(t)  # the graph's order of additions
    np.testing.assert_array_equal(got, want)


def test_small_models_are_one_piece() -> None:
    m = _rich_model()
    del m.graph.initializer[:3]
    m.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.zeros(STREAM_MIN // 8, np.float32), "z"))
    assert [len(c) for c in serialised_chunks(m)] == [m.ByteSize()]
