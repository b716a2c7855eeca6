"""Weights kept on disk (segc.modelio.ON_DISK_MIN): the mechanism that lets a model over
protobuf's 2 GiB limit compile, exercised on a small model by lowering the limit.

Covered: load leaves big tensors on disk (absolute references, none read); save copies them
into the output's own data file (relative, page-aligned, sparse, hashed as written); a copy
of the model is cheap; onnxruntime sessions read them from their folder; simplify steps
aside with a note. tests/compiler/test_big_model.py runs the real >2 GiB case (slow).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc import modelio
from segc.modelio import disk_tensors, has_disk_tensors, load_model, load_model_and_files, save_model
from segc.ortrun import make_session, run_session
from segc.outdir import file_sha256

N = 512  # W: 512x512 float32 = 1 MiB, zeros and a ramp


@pytest.fixture
def small_limit(monkeypatch) -> None:
    monkeypatch.setattr(modelio, "PROTOBUF_LIMIT", 1 << 19)
    monkeypatch.setattr(modelio, "ON_DISK_MIN", 64 * 1024)


def _write_input(folder: Path) -> tuple[Path, np.ndarray]:
    zeros = np.zeros((N, N), np.float32)
    ramp = np.arange(N * N, dtype=np.float32).reshape(N, N) / (N * N)
    small = np.ones((1, N), np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "Z"], ["a"]), helper.make_node("Add", ["a", "x"], ["b"]),
         helper.make_node("MatMul", ["b", "R"], ["c"]), helper.make_node("Add", ["c", "S"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
        [numpy_helper.from_array(zeros, "Z"), numpy_helper.from_array(ramp, "R"), numpy_helper.from_array(small, "S")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    return path, ramp


def test_load_keeps_big_tensors_on_disk(tmp_path: Path, small_limit) -> None:
    path, _ = _write_input(tmp_path / "in")
    model, files = load_model_and_files(path)
    located = {t.name: d for t, d in disk_tensors(model)}
    assert set(located) == {"Z", "R"}  # S (2 KiB) is read in
    assert all(d.file == (tmp_path / "in" / "m.data").resolve() and d.length == N * N * 4 for d in located.values())
    assert all(not t.raw_data for t in model.graph.initializer if t.name in located)
    assert (tmp_path / "in" / "m.data").resolve() in files  # protected like the model


def test_under_the_limit_everything_is_read(tmp_path: Path) -> None:
    path, _ = _write_input(tmp_path / "in")
    assert not has_disk_tensors(load_model(path))


def test_save_copies_into_its_own_data_file(tmp_path: Path, small_limit) -> None:
    path, ramp = _write_input(tmp_path / "in")
    before = hashlib.sha256((tmp_path / "in" / "m.data").read_bytes()).hexdigest()
    model = load_model(path)
    out = save_model(model, tmp_path / "out" / "c.onnx", protect=[path])
    data = tmp_path / "out" / "c.onnx.data"
    saved = onnx.load(str(out), load_external_data=False)
    info = {t.name: {e.key: e.value for e in t.external_data} for t in saved.graph.initializer}
    assert {i.get("location") for i in info.values() if i} == {"c.onnx.data"}  # relative: never the input's path
    assert all(int(i["offset"]) % modelio.ALIGN == 0 for i in info.values() if i)
    assert file_sha256(data) == hashlib.sha256(data.read_bytes()).hexdigest()  # the digest kept while writing is right
    assert data.stat().st_blocks * 512 < N * N * 4 * 2  # the zeros are a hole
    full = onnx.load(str(out))
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in full.graph.initializer if t.name == "R")), ramp)
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in full.graph.initializer if t.name == "Z")), 0)
    # the in-memory model is as it was: still on disk at the input, nothing inlined
    assert {d.file for _, d in disk_tensors(model)} == {(tmp_path / "in" / "m.data").resolve()}
    assert hashlib.sha256((tmp_path / "in" / "m.data").read_bytes()).hexdigest() == before


def test_sessions_read_the_weights_from_their_folder(tmp_path: Path, small_limit) -> None:
    path, ramp = _write_input(tmp_path / "in")
    x = np.random.default_rng(0).standard_normal((1, N)).astype(np.float32)
    got = run_session(make_session(load_model(path)), {"x": x})["y"]
    np.testing.assert_allclose(got, x @ ramp + 1, rtol=1e-5, atol=1e-5)


def test_simplify_steps_aside_over_the_limit(tmp_path: Path, small_limit) -> None:
    from segc.passbase import PassContext, get_pass

    path, _ = _write_input(tmp_path / "in")
    model = load_model(path)
    import segc.passes  # noqa: F401 - registers the passes

    out, result = get_pass("simplify")().apply(model, PassContext())
    assert out is model and not result.changed
    assert any("2 GiB" in n and "onnx-simplifier" in n for n in result.notes)


def test_inline_weights_over_the_limit_move_to_a_data_file(tmp_path: Path, small_limit) -> None:
    """A model held whole in memory (an export) but over the limit: its weights move to the
    data file one tensor at a time, and the caller's model keeps them."""
    ramp = np.arange(N * N, dtype=np.float32).reshape(N, N)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "R"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, N])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
        [numpy_helper.from_array(ramp, "R")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out = save_model(model, tmp_path / "e.onnx")
    assert out.stat().st_size < 4096 and (tmp_path / "e.onnx.data").stat().st_size == N * N * 4
    np.testing.assert_array_equal(numpy_helper.to_array(onnx.load(str(out)).graph.initializer[0]), ramp)
    assert model.graph.initializer[0].data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), ramp)


def test_sessions_share_one_map_of_each_weight(tmp_path: Path, small_limit) -> None:
    """The reference and a candidate must not each hold the weights: one map per tensor."""
    from segc import ortrun

    path, ramp = _write_input(tmp_path / "in")
    model = load_model(path)
    ortrun._SHARED.clear()
    x = np.random.default_rng(1).standard_normal((1, N)).astype(np.float32)
    first = run_session(make_session(model), {"x": x})["y"]
    assert len(ortrun._SHARED) == 2  # Z and R, mapped once
    second = run_session(make_session(model), {"x": x})["y"]
    assert len(ortrun._SHARED) == 2  # the second session reused them
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, x @ ramp + 1, rtol=1e-5, atol=1e-5)
