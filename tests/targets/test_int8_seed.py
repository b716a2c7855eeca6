"""int8 on a seed model, for every vendor target: the calibration files segc wrote, the vendor's
calibration step reading them in build.sh, and the emulated int8 drop in report.json.

One DBNet-R50 export (static 1x3x64x64, seeded weights, built at that shape rather than the
recipe's 640~4096 range) and a folder of generated PNGs serve the three compiles;
``--verify none`` because the int8 estimate (``emulate_int8``) is what is under test, not the
other passes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from segc.cli import main

pytestmark = pytest.mark.slow  # a full-size architecture (exported once, compiled three times)

SHAPE = (1, 3, 64, 64)
N_IMAGES = 3


@pytest.fixture(scope="module")
def seed_and_images(seed_onnx: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from PIL import Image

    images = tmp_path_factory.mktemp("calib_images")
    rng = np.random.default_rng(7)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)).save(images / f"page{i}.png")
    return seed_onnx("dbnet_r50", shape=SHAPE, dynamic=False), images


def compile_int8(seed_and_images: tuple[Path, Path], target: str, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    model, images = seed_and_images
    out = tmp_path / target
    argv = ["compile", str(model), "--target", target, "--precision", "int8", "--calib-images", str(images),
            "--input-shape", "input:" + ",".join(map(str, SHAPE)), "--verify", "none", "-o", str(out)]
    assert main(argv) == 0
    script = out / "build.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads((out / "report.json").read_text())


def int8_estimate(report: dict[str, Any]) -> dict[str, Any]:
    est: dict[str, Any] = next(p for p in report["passes"] if p["name"] == "emulate_int8")["stats"]["int8"]
    assert est["samples"] == N_IMAGES and est["quantized_nodes"] > 50  # the whole ResNet-50, not a stub
    assert 0.5 < est["cosine"] < 1.0 and est["max_abs"] > 0  # a real, measured drop
    return est


def test_tensorrt(seed_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    out, report = compile_int8(seed_and_images, "tensorrt", tmp_path)
    int8_estimate(report)
    rows = np.load(out / "calib.npy")
    assert rows.shape == (N_IMAGES, *SHAPE) and rows.dtype == np.float32
    script = (out / "build.sh").read_text()
    assert "--data-loader-script calib_loader.py --calibration-cache calib.cache" in script
    assert "--calib=calib.cache" in script and script.index("polygraphy convert") < script.index("trtexec --onnx")
    assert "calib.npy" in (out / "calib_loader.py").read_text()


def test_ascend(seed_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    out, report = compile_int8(seed_and_images, "ascend", tmp_path)
    int8_estimate(report)
    bins = sorted(out.glob("calib_*.bin"))
    assert len(bins) == N_IMAGES and all(b.stat().st_size == 4 * int(np.prod(SHAPE)) for b in bins)
    script = (out / "build.sh").read_text()
    assert "--data_dir=calib_bin --data_types=float32" in script and "calib_*.bin" in script
    assert script.index("amct_onnx calibration") < script.index("\natc ")
    assert "_deploy_model.onnx" in script.split("\natc ", 1)[1]


def test_magicmind(seed_and_images: tuple[Path, Path], tmp_path: Path) -> None:
    out, report = compile_int8(seed_and_images, "magicmind", tmp_path)
    int8_estimate(report)
    rows = np.load(out / "calib.npy")
    assert rows.shape == (N_IMAGES, *SHAPE) and rows.dtype == np.float32
    program = (out / "build_magicmind.py").read_text()
    assert "CALIB_FILE = 'calib.npy'" in program and "PRECISION_MODE = 'qint8_mixed_float16'" in program
    assert "calib.npy" in (out / "build.sh").read_text()
