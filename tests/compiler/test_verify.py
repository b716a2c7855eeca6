"""``segc verify`` and the Verifier: verdicts that must not lie, lost outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main


def _model(path: Path, nodes, inputs, outputs, inits=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _scaled(path: Path, factor: float, shape=(1, 3, 8, 8), extra_output: bool = False) -> Path:
    """y = x * factor (and, optionally, a second output z = relu(x))."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"])]
    outs = [_vi("y", list(shape))]
    if extra_output:
        nodes.append(helper.make_node("Relu", ["x"], ["z"]))
        outs.append(_vi("z", list(shape)))
    k = numpy_helper.from_array(np.array(factor, np.float32), "k")
    return _model(path, nodes, [_vi("x", list(shape))], outs, [k])


def _verify(tmp_path: Path, a: Path, b: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "v.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["verify", str(a), str(b), "--json", *extra])
    out.write_text(buf.getvalue())
    return rc, json.loads(buf.getvalue())


def test_identical_models_are_equivalent(tmp_path: Path) -> None:
    rc, v = _verify(tmp_path, _scaled(tmp_path / "a.onnx", 2.0), _scaled(tmp_path / "b.onnx", 2.0))
    assert rc == 0 and v["status"] == "ok" and v["metrics"]


def test_one_nan_in_192_and_a_candidate_500x_larger(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)  # 192 values
    x[0, 1, 2, 3] = np.nan
    np.savez(tmp_path / "in.npz", x=x)
    rc, v = _verify(tmp_path, _scaled(tmp_path / "a.onnx", 1.0), _scaled(tmp_path / "b.onnx", 500.0),
                    "--verify-inputs", str(tmp_path / "in.npz"))
    assert rc == 1 and any("max abs error" in r for r in v["reasons"])


def test_reference_entirely_nan(tmp_path: Path) -> None:
    a = _scaled(tmp_path / "a.onnx", float("nan"))
    rc, v = _verify(tmp_path, a, a)
    assert rc == 1 and "nothing compared" in v["reasons"][0]


def test_candidate_that_lost_an_output(tmp_path: Path) -> None:
    a = _scaled(tmp_path / "a.onnx", 2.0, extra_output=True)
    b = _scaled(tmp_path / "b.onnx", 2.0)
    rc, v = _verify(tmp_path, a, b)
    assert rc == 1 and "output 'z' is gone" in v["reasons"][0]


def test_renamed_output_fails(tmp_path: Path) -> None:
    a = _scaled(tmp_path / "a.onnx", 2.0)
    k = numpy_helper.from_array(np.array(2.0, np.float32), "k")
    b = _model(tmp_path / "b.onnx", [helper.make_node("Mul", ["x", "k"], ["y2"])], [_vi("x", [1, 3, 8, 8])],
               [_vi("y2", [1, 3, 8, 8])], [k])
    rc, v = _verify(tmp_path, a, b, "--contract", "approximate")
    assert rc == 1 and "output 'y' is gone" in v["reasons"][0]


def test_changed_output_dtype_fails(tmp_path: Path) -> None:
    a = _scaled(tmp_path / "a.onnx", 2.0)
    k = numpy_helper.from_array(np.array(2.0, np.float32), "k")
    b = _model(tmp_path / "b.onnx", [helper.make_node("Mul", ["x", "k"], ["m"]),
                                     helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT16)],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 3, 8, 8], TensorProto.FLOAT16)], [k])
    rc, v = _verify(tmp_path, a, b, "--contract", "approximate")
    assert rc == 1 and "element type float16" in " ".join(v["reasons"])


def test_different_input_shapes_compare_nothing(tmp_path: Path) -> None:
    a = _scaled(tmp_path / "a.onnx", 2.0, shape=(1, 3, 8, 8))
    b = _scaled(tmp_path / "b.onnx", 2.0, shape=(1, 3, 16, 16))
    rc, v = _verify(tmp_path, a, b)
    assert rc == 1 and not v["metrics"]
    assert any("nothing was compared" in r for r in v["reasons"])


def test_no_signal_is_unverified_not_equivalent(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _scaled(tmp_path / "a.onnx", 1e-7)  # every value far below atol
    b = _scaled(tmp_path / "b.onnx", 2e-7)
    assert main(["verify", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "UNVERIFIED" in out and "--verify-inputs" in out


@pytest.mark.parametrize("bad", ["rtol=nan", "cosine=2", "atol=-1", "speed=1"])
def test_bad_tolerance_is_a_usage_error(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture) -> None:
    a = _scaled(tmp_path / "a.onnx", 2.0)
    assert main(["verify", str(a), str(a), "--tolerance", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segc: error:") and "--tolerance" in err and "Traceback" not in err


def _conv_resize(path: Path, gain: float = 1.0) -> Path:
    """x[1,3,16,16] -> Conv(3->4) -> *gain -> Resize(linear, x2) -> y[1,4,32,32] (class logits)."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = numpy_helper.from_array(np.array(gain, np.float32), "g")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "g"], ["m"]),
             helper.make_node("Resize", ["m", "", "scales"], ["y"], mode="linear")]
    return _model(path, nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 4, 32, 32])], [w, g, scales])


def test_compile_one_nan_pixel_does_not_turn_a_failing_pass_into_ok(tmp_path: Path) -> None:
    """A NaN pixel in 4096 (1x4x... here 256 per channel) switched the comparison off."""
    model = _conv_resize(tmp_path / "m.onnx")
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    x[0, 0, 5, 5] = np.nan
    np.savez(tmp_path / "in.npz", x=x)
    rc = main(["compile", str(model), "--target", "onnxruntime", "--nearest-resize", "Resize", "--passes", "cleanup",
               "--verify-inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 1 and report["failed_pass"] == "resize_to_nearest"
    reasons = " ".join(next(p for p in report["passes"] if p["name"] == "resize_to_nearest")["verdict"]["reasons"])
    assert "NaN/Inf differ" in reasons or "agreement" in reasons


def _foldable(path: Path, gain: float) -> Path:
    """x -> Conv(3->1) -> Mul(gain0 + 0) -> y: ``simplify`` folds the constant Add (an exact change)."""
    w = numpy_helper.from_array(np.random.default_rng(3).standard_normal((1, 3, 3, 3)).astype(np.float32), "w")
    g0 = numpy_helper.from_array(np.array(gain, np.float32), "g0")
    z = numpy_helper.from_array(np.array(0.0, np.float32), "z")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["g0", "z"], ["g"]),
             helper.make_node("Mul", ["c", "g"], ["y"])]
    return _model(path, nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 1, 16, 16])], [w, g0, z])


def test_compile_without_signal_marks_the_pass_unverified(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Outputs all below atol make a check that cannot fail; the report says so."""
    rc = main(["compile", str(_foldable(tmp_path / "m.onnx", 1e-8)), "--target", "onnxruntime",
               "--passes", "simplify,cleanup", "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    record = next(p for p in report["passes"] if p["name"] == "simplify")
    assert rc == 0 and record["changed"] and record["status"] == "unverified"
    assert "no signal" in record["verdict"]["unverified"][0] and "--verify-inputs" in record["verdict"]["fix"]
    assert report["unverified"] and report["unverified"][0].startswith("simplify: UNVERIFIED")
    assert report["status"] == "unverified"  # the top-level verdict does not read "ok" either
    err = capsys.readouterr().err
    assert "UNVERIFIED" in err and "--verify-inputs" in err
    assert "UNVERIFIED" in (tmp_path / "out" / "report.md").read_text()
    # the same model at unit gain carries signal: the same pass is simply ok
    main(["compile", str(_foldable(tmp_path / "m2.onnx", 1.0)), "--target", "onnxruntime",
          "--passes", "simplify,cleanup", "-o", str(tmp_path / "out2")])
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert next(p for p in report["passes"] if p["name"] == "simplify")["status"] == "ok"


@pytest.mark.parametrize("mode", ["end"])
def test_end_mode_without_signal_is_unverified(tmp_path: Path, mode: str) -> None:
    rc = main(["compile", str(_foldable(tmp_path / "m.onnx", 1e-8)), "--target", "onnxruntime", "--verify", mode,
               "--passes", "simplify,cleanup", "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0 and next(p for p in report["passes"] if p["name"] == "simplify")["status"] == "unverified"



def test_a_model_with_signal_on_photos_keeps_photo_inputs(tmp_path: Path) -> None:
    """No recipe, signal on photo-like inputs: no text probe wins, nothing is noted."""
    main(["compile", str(_foldable(tmp_path / "m.onnx", 1.0)), "--target", "onnxruntime",
          "--passes", "simplify,cleanup", "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert all(label.startswith("random[") for label in report["verified_shapes"])
    assert report["verification_notes"] == []


def test_a_model_without_inputs_is_verified_once(tmp_path: Path) -> None:
    """A constant generator has nothing to feed; it is still checked (once), not "nothing compared"."""
    c = numpy_helper.from_array(np.arange(-3, 3, dtype=np.float32).reshape(2, 3), "c")
    src = _model(tmp_path / "m.onnx", [helper.make_node("Relu", ["c"], ["y"])], [], [_vi("y", [2, 3])], [c])
    rc = main(["compile", str(src), "--target", "onnxruntime", "-o", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rc == 0 and report["status"] == "ok" and report["verified_shapes"] == ["random[]"]
    assert next(p for p in report["passes"] if p["name"] == "simplify")["status"] == "ok"


def test_a_static_shape_too_large_to_verify_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _model(
        tmp_path / "m.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [_vi("x", [1, 3, "h", "w"])],
        [_vi("y", [1, 3, "h", "w"])],
    )
    before = src.read_bytes()
    rc = main(
        [
            "compile",
            str(src),
            "--target",
            "onnxruntime",
            "--input-shape",
            "x:1,3,50000,50000",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("segc: error: verifying at x:1x3x50000x50000 needs 28 GiB")
    assert src.read_bytes() == before and not (tmp_path / "out").exists()
