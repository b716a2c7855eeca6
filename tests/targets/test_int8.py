"""int8 for every target: calibration files + the vendor's calibration step, and the QDQ drop."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from segc.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
from test_emulate_fp16 import overflow_model  # noqa: E402

N_IMAGES = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("int8")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    src = root / "m.onnx"
    onnx.save(overflow_model(scale=10.0), src)
    return src, images


def compile_int8(setup: tuple[Path, Path], target: str) -> tuple[Path, dict]:
    src, images = setup
    out = src.parent / target
    assert main(["compile", str(src), "--target", target, "--precision", "int8", "--calib-images", str(images),
                 "-o", str(out), "--passes", "cleanup"]) == 0
    return out, json.loads((out / "report.json").read_text())


def test_tensorrt_calibrates_with_polygraphy_then_builds_from_the_cache(setup) -> None:
    out, report = compile_int8(setup, "tensorrt")
    est = next(p for p in report["passes"] if p["name"] == "emulate_int8")["stats"]["int8"]
    assert est["samples"] == N_IMAGES and est["quantized_nodes"] > 0
    assert 0.9 < est["cosine"] < 1.0  # a real drop, measured, not a copy of fp32
    # the layer-by-layer comparison ran between fp32 and the QDQ graph (shared tensor names)
    assert est["worst_layers"] == [] or est["worst_layers"][0]["node"] in {
        "conv_in",
        "relu_in",
        "scale_up",
        "relu_big",
        "scale_down",
        "conv_out",
    }
    script = (out / "build.sh").read_text()
    assert (
        "polygraphy convert m.tensorrt.onnx --int8 --data-loader-script calib_loader.py --calibration-cache calib.cache"
        in script
    )
    assert "--int8 --fp16 --calib=calib.cache" in script
    assert script.index("polygraphy convert") < script.index("trtexec --onnx")
    assert not list(out.glob("calib_*.bin"))  # AMCT's format is Ascend's, not written here
    arrays = list(runpy.run_path(str(out / "calib_loader.py"))["load_data"]())
    assert len(arrays) == N_IMAGES and arrays[0]["x"].shape == (1, 3, 16, 16) and arrays[0]["x"].dtype == np.float32


def test_ascend_runs_amct_then_atc_on_its_deploy_model(setup) -> None:
    out, report = compile_int8(setup, "ascend")
    bins = sorted(out.glob("calib_*.bin"))
    assert not (out / "calib.npy").exists()
    assert len(bins) == N_IMAGES and bins[0].stat().st_size == 3 * 16 * 16 * 4
    script = (out / "build.sh").read_text()
    assert script.index("os.makedirs(") < script.index("\namct_onnx calibration")
    assert "amct_onnx calibration --model=m.ascend.onnx --save_path=amct/m.ascend --input_shape=x:1,3,16,16 " \
           "--data_dir=calib_bin --data_types=float32" in script
    assert "atc --framework=5 --model=amct/m.ascend_deploy_model.onnx --output=m.ascend " in script
    assert any(p["name"] == "emulate_int8" for p in report["passes"])


def test_int8_without_images_is_refused_on_ascend(setup, capsys) -> None:
    src, _ = setup
    assert main(["compile", str(src), "--target", "ascend", "--precision", "int8", "-o", str(src.parent / "no")]) == 2
    assert "AMCT" in capsys.readouterr().err


def test_localize_reads_the_dequantised_value_of_a_fused_relu() -> None:
    """onnxruntime's quantiser lets the Conv write the Relu's output name (the clamp moves into
    QuantizeLinear): compared by name alone, relu_in would look broken; its dequantised value is not."""
    from segc.int8_calibration import quantize_qdq
    from segc.localize import localize, qdq_alias
    from segc.passbase import Contract
    from segc.verify_inputs import Feed

    model = overflow_model(scale=10.0)
    rng = np.random.default_rng(0)
    feeds = [Feed(f"x{i}", {"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)}) for i in range(4)]
    qdq = quantize_qdq(model, feeds)
    assert "r1" in qdq_alias(qdq)
    loc = localize(model, qdq, feeds[0], contract=Contract.APPROXIMATE)
    by = {t.tensor: t for t in loc.tensors}
    assert by["r1"].cosine > 0.99 and by["y"].cosine > 0.95


def test_calib_samples_limits_the_calibration_set_and_the_estimate(setup) -> None:
    """--calib-samples N: N images in the vendor's calibration files and in the int8 estimate."""
    src, images = setup
    out = src.parent / "two"
    assert main(["compile", str(src), "--target", "tensorrt", "--precision", "int8", "--calib-images", str(images),
                 "--calib-samples", "2", "-o", str(out), "--passes", "cleanup"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert next(p for p in report["passes"] if p["name"] == "emulate_int8")["stats"]["int8"]["samples"] == 2
    assert np.load(out / "calib.npy").shape[0] == 2
    assert report["build"]["calib_samples"] == 2


def test_bad_calibration_settings_are_usage_errors(setup, capsys) -> None:
    src, images = setup
    for extra, fragment in ((["--calib-samples", "0"], "--calib-samples must be positive"),
                            (["--calib-images", str(src.parent / "nowhere")], "no such folder")):
        argv = ["compile", str(src), "--target", "tensorrt", "--precision", "int8", "-o", str(src.parent / "bad")]
        if "--calib-images" not in extra:
            argv += ["--calib-images", str(images)]
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1
