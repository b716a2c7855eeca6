"""The harness itself: its independent re-check must catch a wrong compiled model.

A check that cannot fail proves nothing, so each way the re-check can go wrong is tried on a
small graph built here: a changed weight, a dropped output, an output that is right at one
shape but wrong at the odd one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import harness

SPEC = harness.ModelSpec("conv", harness.PackagedOnnx("none==0", "none.onnx"), "x", harness.Layout.NCHW,
                         32, 64, 1, ((32, 48), (37, 53)))


def _conv_model(path: Path, scale: float = 1.0, extra_output: bool = True) -> Path:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32) * scale
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["z"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if extra_output:
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outputs, [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_recheck_passes_an_identical_model(tmp_path: Path) -> None:
    a = _conv_model(tmp_path / "a.onnx")
    checks = harness.recheck(a, a, SPEC)
    assert len(checks) == 4 and all(c.ok for c in checks)
    assert {c.shape for c in checks} == {(1, 3, 32, 48), (1, 3, 37, 53)}


def test_recheck_catches_a_small_weight_change(tmp_path: Path) -> None:
    checks = harness.recheck(_conv_model(tmp_path / "a.onnx"), _conv_model(tmp_path / "b.onnx", scale=1.01), SPEC)
    assert not any(c.ok for c in checks)


def test_recheck_catches_a_dropped_output(tmp_path: Path) -> None:
    checks = harness.recheck(
        _conv_model(tmp_path / "a.onnx"), _conv_model(tmp_path / "b.onnx", extra_output=False), SPEC
    )
    assert [c.output for c in checks if not c.ok] == ["z", "z"]


def test_recheck_catches_a_model_wrong_only_at_the_odd_shape(tmp_path: Path) -> None:
    """A candidate that adds 1 wherever W is odd: right at 32x48, wrong at 37x53."""
    ref = _conv_model(tmp_path / "a.onnx", extra_output=False)
    m = onnx.load(ref)
    g = m.graph
    g.node.extend([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "i3", "i4"], ["wdim"]),
        helper.make_node("Mod", ["wdim", "two"], ["odd"]),
        helper.make_node("Cast", ["odd"], ["oddf"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["y", "oddf"], ["y2"]),
    ])
    g.initializer.extend(
        [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("i3", 3), ("i4", 4), ("two", 2))]
    )
    g.output[0].name = "y2"
    cand = tmp_path / "b.onnx"
    onnx.save(m, cand)
    # the candidate's output is named differently, so rename the reference's to match
    ok = [c.ok for c in harness.recheck(cand, cand, SPEC)]
    assert ok == [True, True]
    m_ref = onnx.load(ref)
    m_ref.graph.node.append(helper.make_node("Identity", ["y"], ["y2"]))
    m_ref.graph.output[0].name = "y2"
    onnx.save(m_ref, tmp_path / "a2.onnx")
    checks = harness.recheck(tmp_path / "a2.onnx", cand, SPEC)
    assert [c.ok for c in checks] == [True, False]


def test_recheck_refuses_outputs_without_signal(tmp_path: Path) -> None:
    """Zeros against zeros agree perfectly and prove nothing: a weightless conv fails."""
    zero = _conv_model(tmp_path / "a.onnx", scale=0.0)
    assert not any(c.ok for c in harness.recheck(zero, zero, SPEC))


def test_text_input_lights_up_dark_strokes() -> None:
    spec = harness.MODELS_BY_NAME["ppocrv4_det"]
    x = harness.image_input(spec, 96, 160, seed=0)
    assert x.shape == (1, 3, 96, 160)
    # ImageNet-normalised dark text on a light page: most pixels light, some strongly dark
    assert (x > 1.0).mean() > 0.5 and (x < -1.0).mean() > 0.01


def test_shape_arg_follows_layout_and_stride() -> None:
    pnet = harness.MODELS_BY_NAME["mtcnn_pnet"]
    assert pnet.shape_arg(True) == "input_1:1,64~160,64~160,3"
    seg = harness.MODELS_BY_NAME["segformer_legacy"]
    assert seg.shape_arg(False) == "pixel_values:1,3,128~256,128~256"
    assert seg.shape_arg(True) == "pixel_values:1,3,128~256/32,128~256/32"


def test_packaged_onnx_fetch_reports_a_missing_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    monkeypatch.setenv(harness.CACHE_ENV, str(tmp_path))
    src = harness.PackagedOnnx("fake-pkg==1.0", "fake_pkg/model.onnx")
    dist = tmp_path / "wheels" / "fake-pkg-1.0"
    dist.mkdir(parents=True)
    with zipfile.ZipFile(dist / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_pkg/other.onnx", b"x")
    with pytest.raises(harness.FetchError, match="has no fake_pkg/model.onnx"):
        harness.fetch_packaged_onnx(src)
    with zipfile.ZipFile(dist / "fake_pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fake_pkg/model.onnx", b"onnx-bytes")
    out = harness.fetch_packaged_onnx(src)
    assert out.read_bytes() == b"onnx-bytes" and out.is_relative_to(tmp_path)


def test_packaged_onnx_fetch_without_an_index_is_a_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline (no index, no local wheels), the download fails as FetchError, which the
    fixture turns into a skip with this reason, and nothing half-written stays in the cache."""
    monkeypatch.setenv(harness.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))   # an empty folder, replacing the configured one
    with pytest.raises(harness.FetchError, match=r"pip download rapidocr-onnxruntime==1\.3\.24 failed: .+"):
        harness.fetch_packaged_onnx(harness.MODELS_BY_NAME["ppocrv4_det"].source)
    assert not (tmp_path / "cache" / "onnx").exists()


def test_a_bare_text_detector_is_verified_on_rendered_text(thirdparty_model, tmp_path: Path) -> None:
    """No check that cannot fail, on the real PP-OCRv4 detector given as a user would: no recipe, no data.

    On photo-like inputs its probabilities stay below 1e-4; segc must notice and verify on
    rendered text pages, where the map carries real signal, and say so in the report.
    """
    import json

    from segc.cli import main

    spec = harness.MODELS_BY_NAME["ppocrv4_det"]
    model = thirdparty_model(spec)
    assert main(["compile", str(model), "--target", "onnxruntime", "--input-shape", "x:1,3,256~320,256~320",
                 "-o", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verified_shapes"] and all(label.startswith("text[") for label in report["verified_shapes"])
    assert "rendered text" in report["verification_notes"][0]
    assert report["unverified"] == [] and report["passes"][0]["status"] == "ok"
