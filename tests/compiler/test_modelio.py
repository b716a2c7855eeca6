"""Model I/O: every bad input is one clear SegcError; writes are atomic and never clobber the input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc import modelio
from segc.errors import SegcError
from segc.modelio import load_model, save_model


def _model(opset: int = 17, ir: int = 10, big: int = 4) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(big * big, dtype=np.float32).reshape(big, big), "w")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, big])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, big])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def test_round_trip(tmp_path: Path) -> None:
    path = save_model(_model(), tmp_path / "m.onnx")
    loaded = load_model(path)
    assert loaded.graph.node[0].op_type == "MatMul"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty"),
    (b"\x08\x07\x12\x04", "not"),  # a protobuf fragment: parses to something without a graph
    (b"hello, this is a text file\n", "not"),
])
def test_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SegcError, match=message):
        load_model(path)


def test_truncated_file(tmp_path: Path) -> None:
    data = _model(big=64).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegcError, match="not a readable ONNX model|not an ONNX model"):
        load_model(path)


def test_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SegcError, match="is a folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("opset", [5, 30])
def test_unsupported_opset(tmp_path: Path, opset: int) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_model(opset=opset).SerializeToString())
    with pytest.raises(SegcError, match=f"opset {opset} is not supported"):
        load_model(path)


def _with_external(tmp_path: Path, location: str) -> Path:
    model = _model(big=32)
    onnx.save_model(
        model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    reloaded = onnx.load(str(tmp_path / "ext.onnx"), load_external_data=False)
    for t in reloaded.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    path = tmp_path / "model.onnx"
    path.write_bytes(reloaded.SerializeToString())
    return path


def test_external_data_beside_model_loads(tmp_path: Path) -> None:
    model = load_model(_with_external(tmp_path, "ext.data"))
    w = numpy_helper.to_array(model.graph.initializer[0])
    assert w.shape == (32, 32) and w[1, 1] == 33


@pytest.mark.parametrize("location, message", [
    ("/etc/passwd", "absolute"),
    ("../outside.data", "outside the model's folder"),
    ("missing.data", "missing"),
])
def test_external_data_refused(tmp_path: Path, location: str, message: str) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "outside.data").write_bytes(b"\0" * 4096)
    path = _with_external(inner, location)
    with pytest.raises(SegcError, match=message):
        load_model(path)


def test_external_data_truncated(tmp_path: Path) -> None:
    path = _with_external(tmp_path, "ext.data")
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(SegcError):
        load_model(path)


def test_save_lowers_ir_version(tmp_path: Path) -> None:
    path = save_model(_model(ir=14), tmp_path / "m.onnx")
    assert onnx.load(str(path)).ir_version == modelio.MAX_IR_VERSION


def test_save_refuses_to_overwrite_input(tmp_path: Path) -> None:
    src = save_model(_model(), tmp_path / "m.onnx")
    before = src.read_bytes()
    with pytest.raises(SegcError, match="refusing to write over the input"):
        save_model(_model(big=8), src, protect=[src])
    assert src.read_bytes() == before


def test_interrupted_write_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.onnx"
    old = save_model(_model(), target)
    old_bytes = old.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(modelio.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_model(_model(big=16), target)
    monkeypatch.undo()
    assert target.read_bytes() == old_bytes  # the old file is intact, not half new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temp files left


def test_large_models_use_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", 1000)  # pretend 4 KiB is "over 2 GiB"
    path = save_model(_model(big=32), tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    assert os.path.getsize(path) < 1000
    model = load_model(path)
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
