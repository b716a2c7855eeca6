"""Weights left in the input file (segc.lazy_load): what ``segc compile`` reads and writes.

Covered: only big inline weights become references into the .onnx itself, with their exact
offsets; the model saved from them is the input, field for field; values read on demand are
the file's; a file not laid out as expected, truncated or malformed loads (or fails) exactly
as an ordinary load does; a tensor whose bytes do not fit its dims stays inline; a file that
changes under a compile stops the save; and a whole compile leaves its input untouched while
writing one self-contained model that runs as the input does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main
from segc.errors import SegcError
from segc.gs_import import DiskValues, import_graph
from segc.lazy_load import LAZY_MIN, read_skeleton
from segc.modelio import disk_tensor, disk_tensors, load_model_and_files, save_model, tensor_array
from segc.ortrun import make_session, run_session


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 16, 3, 3)).astype(np.float32)  # 36 KiB: left in the file
    small = rng.standard_normal((16, 16, 1, 1)).astype(np.float32)  # 1 KiB: read
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "small"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
         helper.make_node("Conv", ["b", "big"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 8, 8])],
        [numpy_helper.from_array(small, "small"), numpy_helper.from_array(big, "big")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    onnx.save(_model(), str(p))
    return p


def test_big_weights_refer_to_their_bytes_in_the_file(path: Path) -> None:
    model, files = load_model_and_files(path, lazy=True)
    located = {t.name: d for t, d in disk_tensors(model)}
    assert set(located) == {"big"}
    disk = located["big"]
    assert disk.file == path.resolve() and disk.length == 64 * 16 * 9 * 4 >= LAZY_MIN
    raw = path.read_bytes()[disk.offset:disk.offset + disk.length]
    expected = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[1])
    assert raw == expected.tobytes()  # the offset is exactly where raw_data starts
    np.testing.assert_array_equal(tensor_array(model.graph.initializer[1]), expected)
    assert model.graph.initializer[0].raw_data  # the small one is read as usual
    assert files == [path.resolve()]


def test_saved_model_is_the_input_field_for_field(path: Path, tmp_path: Path) -> None:
    model, _ = load_model_and_files(path, lazy=True)
    out = save_model(model, tmp_path / "out.onnx", protect=[path])
    assert not (tmp_path / "out.onnx.data").exists()  # one self-contained file
    a, b = onnx.load(str(path)), onnx.load(str(out))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_nothing_big_enough_loads_the_ordinary_way(tmp_path: Path) -> None:
    m = _model()
    del m.graph.initializer[1]
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((4, 16, 3, 3), np.float32), "big"))
    p = tmp_path / "small.onnx"
    onnx.save(m, str(p))
    assert read_skeleton(p) is None
    model, _ = load_model_and_files(p, lazy=True)
    assert not disk_tensors(model)


@pytest.mark.parametrize("cut", [5, 200, 0.5, -3])
def test_truncated_or_garbage_fails_as_an_ordinary_load_does(path: Path, tmp_path: Path, cut: float) -> None:
    data = path.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    results = []
    for lazy in (True, False):
        try:
            load_model_and_files(bad, lazy=lazy)
            results.append("loaded")
        except SegcError as exc:
            results.append(str(exc))
    assert results[0] == results[1]


def test_random_bytes_fail_as_an_ordinary_load_does(tmp_path: Path) -> None:
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(3).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    errors = []
    for lazy in (True, False):
        with pytest.raises(SegcError) as info:
            load_model_and_files(bad, lazy=lazy)
        errors.append(str(info.value))
    assert errors[0] == errors[1]


def test_bytes_that_do_not_fit_the_dims_stay_inline(tmp_path: Path) -> None:
    m = _model()
    m.graph.initializer[1].dims[0] = 32  # raw_data holds 64 rows
    p = tmp_path / "odd.onnx"
    onnx.save(m, str(p))
    model, _ = load_model_and_files(p, lazy=True)
    assert not disk_tensors(model) and len(model.graph.initializer[1].raw_data) == 64 * 16 * 9 * 4


def test_a_file_changed_under_the_compile_is_not_saved(path: Path, tmp_path: Path) -> None:
    model, _ = load_model_and_files(path, lazy=True)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SegcError, match="changed while segc was using its weights"):
        save_model(model, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_file_rewritten_between_two_loads_is_read_as_it_is_now(path: Path, tmp_path: Path) -> None:
    load_model_and_files(path, lazy=True)
    m = _model()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((64, 16, 3, 3), np.float32), "big"))
    onnx.save(m, str(path))
    model, _ = load_model_and_files(path, lazy=True)
    np.testing.assert_array_equal(tensor_array(model.graph.initializer[1]), 1)


def test_graph_surgeon_reads_values_on_demand(path: Path) -> None:
    model, _ = load_model_and_files(path, lazy=True)
    graph = import_graph(model)
    big = graph.tensors()["big"]
    assert isinstance(big._values, DiskValues)
    untouched = gs.export_onnx(graph).graph.initializer
    assert disk_tensor(next(t for t in untouched if t.name == "big")) is not None  # exported as the reference
    np.testing.assert_array_equal(big.values, numpy_helper.to_array(onnx.load(str(path)).graph.initializer[1]))
    big.values = big.values * 2  # what a pass rewriting weights does
    exported = next(t for t in gs.export_onnx(graph).graph.initializer if t.name == "big")
    assert exported.data_location == TensorProto.DEFAULT and not exported.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(exported),
                                  2 * numpy_helper.to_array(onnx.load(str(path)).graph.initializer[1]))


def test_external_data_stays_on_disk_and_the_output_is_self_contained(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    p = folder / "ext.onnx"
    onnx.save(_model(), str(p), save_as_external_data=True, location="ext.data", size_threshold=0)
    model, files = load_model_and_files(p, lazy=True)
    located = {t.name: d for t, d in disk_tensors(model)}
    assert set(located) == {"big"} and located["big"].file == (folder / "ext.data").resolve()
    assert (folder / "ext.data").resolve() in files
    out = save_model(model, tmp_path / "out.onnx", protect=files)
    assert not (tmp_path / "out.onnx.data").exists()
    saved = onnx.load(str(out))
    assert all(disk_tensor(t) is None and t.data_location == TensorProto.DEFAULT for t in saved.graph.initializer)
    np.testing.assert_array_equal(numpy_helper.to_array(saved.graph.initializer[1]),
                                  numpy_helper.to_array(_model().graph.initializer[1]))


def test_external_tensors_outside_the_initializers_are_read(tmp_path: Path) -> None:
    """A Constant node's tensor in the data file is read in: the one-file save inlines only
    top-level initializers, so a reference there would reach the output as an absolute path."""
    m = _model()
    value = np.random.default_rng(2).standard_normal((1, 64, 8, 8)).astype(np.float32)  # 16 KiB
    m.graph.node.append(helper.make_node("Constant", [], ["bias"], value=numpy_helper.from_array(value)))
    m.graph.node.append(helper.make_node("Add", ["y", "bias"], ["z"]))
    m.graph.output[0].name = "z"
    folder = tmp_path / "in"
    folder.mkdir()
    p = folder / "c.onnx"
    onnx.save(m, str(p), save_as_external_data=True, location="c.data", size_threshold=0, convert_attribute=True)
    model, _ = load_model_and_files(p, lazy=True)
    assert {t.name for t, _ in disk_tensors(model)} == {"big"}
    out = save_model(model, tmp_path / "out.onnx", protect=[p])
    saved = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in saved.graph.initializer)
    assert saved.graph.node[-2].attribute[0].t.data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(numpy_helper.to_array(saved.graph.node[-2].attribute[0].t), value)


def test_compile_leaves_the_input_alone_and_writes_a_model_that_runs_as_it(path: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    rc = main(["compile", str(path), "--target", "ascend", "-o", str(tmp_path / "out"), "--verify", "each"])
    assert rc == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    compiled = tmp_path / "out" / "m.ascend.onnx"
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".data")) == []
    x = np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)
    got = run_session(make_session(onnx.load(str(compiled))), {"x": x})["y"]
    want = run_session(make_session(onnx.load(str(path))), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
