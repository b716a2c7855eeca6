"""MagicMind target: the build program (run against a recording stand-in runtime) and build.sh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from segc.errors import SegcError
from segc.recipe import RECIPE_METADATA_KEY
from segc.targets.base import get_target
from segc.targets.buildscript import parse_steps
from segc.targets.magicmind import PRECISION_MODES, MagicMindOptions


def _emit(model: onnx.ModelProto, outdir: Path, opts, stem: str = "m") -> list[list[str]]:
    path = outdir / f"{stem}.magicmind.onnx"
    onnx.save(model, path)
    arts = get_target("magicmind").emit(model, path, outdir, opts)
    assert [(a.path.name, a.kind) for a in arts] == [("build_magicmind.py", "program"), ("build.sh", "script"),
                                                       ("run_device.py", "program"), ("run.sh", "script")]
    return parse_steps((outdir / "build.sh").read_text())


def _run_program(outdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(outdir / "build_magicmind.py")],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
    )


def test_precision_names() -> None:
    assert PRECISION_MODES == {"fp32": "force_float32", "fp16": "force_float16", "int8": "qint8_mixed_float16"}


def test_ocrnet_seed_batch_range(tmp_path: Path, conv_model, options, fake_magicmind) -> None:
    """Seed 001: graph_shape_mutable, dim_range min [1,3,1024,2048] max [16,3,1024,2048]."""
    model = conv_model(dims=("N", 3, 1024, 2048), name="input")
    steps = _emit(model, tmp_path, options("input:1,3,1024,2048", precision="fp16", batch_range=(1, 16)), stem="ocrnet")
    assert steps == [
        ["python3", "build_magicmind.py"],
        ["mm_run", "--magicmind_model", "ocrnet.magicmind.mm", "--input_dims", "1,3,1024,2048", "--iterations", "1000"],
    ]
    env, log = fake_magicmind()
    proc = _run_program(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(log.read_text())
    assert calls["parser_kind"] == "onnx" and calls["parsed"] == str(tmp_path / "ocrnet.magicmind.onnx")
    assert calls["config"] == [
        {"archs": [{"mtp_372": [2, 6, 8]}]},
        {"opt_config": {"type64to32_conversion": True}},
        {"graph_shape_mutable": True},
        {"dim_range": {"0": {"min": [1, 3, 1024, 2048], "max": [16, 3, 1024, 2048]}}},
        {"precision_config": {"precision_mode": "force_float16"}},
    ]
    assert calls["dims"] == {}  # a mutable graph keeps its symbolic dims
    assert calls["model_name"] == "ocrnet.magicmind"
    assert (tmp_path / "ocrnet.magicmind.mm").read_text() == "fake mm model"


def test_static_build_sets_dimensions(tmp_path: Path, conv_model, options, fake_magicmind) -> None:
    _emit(conv_model(), tmp_path, options("x:2,3,64,96", target=MagicMindOptions(arch="mtp_592")))
    env, log = fake_magicmind()
    assert _run_program(tmp_path, env).returncode == 0
    calls = json.loads(log.read_text())
    assert calls["dims"] == {"0": [2, 3, 64, 96]}
    assert calls["config"][0] == {"archs": [{"mtp_592": [1]}]}
    assert {"graph_shape_mutable": False} in calls["config"]
    assert calls["config"][-1] == {"precision_config": {"precision_mode": "force_float32"}}


def _write_images(folder: Path, count: int) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    pixels = []
    for i in range(count):
        img = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
        pixels.append(img)
    return pixels


def test_int8_calibrates_on_segcs_calibration_files(nasty_dir: Path, conv_model, options, fake_magicmind) -> None:
    """The program feeds mm.Calibrator segc's preprocessed calib.npy rows, batched at the opt
    shape, not images it reads and normalises itself (the same inputs as segc's int8 estimate)."""
    from segc.int8_calibration import calibration_feeds
    from segc.recipe import get_recipe

    images = nasty_dir / "calib $imgs"
    _write_images(images, 5)
    model = conv_model(name="input")
    model.metadata_props.add(key=RECIPE_METADATA_KEY, value="dbnet_r50")
    recipe = get_recipe("dbnet_r50")
    opts = options(
        "input:2,3,32,48",
        precision="int8",
        calib_images=images,
        calib_samples=4,
        recipe=recipe,
        target=MagicMindOptions(device_id=1),
    )
    path = nasty_dir / "m.magicmind.onnx"
    onnx.save(model, path)
    arts = get_target("magicmind").emit(model, path, nasty_dir, opts)
    assert ("calib.npy", "data") in [(a.path.name, a.kind) for a in arts]
    rows = np.load(nasty_dir / "calib.npy")
    assert rows.shape == (4, 1, 3, 32, 48) and rows.dtype == np.float32
    # the rows are the recipe's preprocessing, as segc's own calibration feeds compute it
    feeds = calibration_feeds(images, model, recipe, (1, 3, 32, 48), 4)
    np.testing.assert_array_equal(rows[2], feeds[2].arrays["input"])
    assert "calib.npy" in (nasty_dir / "build.sh").read_text()
    program = (nasty_dir / "build_magicmind.py").read_text()
    assert "load_image" not in program and "glob" not in program  # no image reading on the device side
    env, log = fake_magicmind()
    proc = _run_program(nasty_dir, env)
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(log.read_text())
    assert calls["config"][-1] == {"precision_config": {"precision_mode": "qint8_mixed_float16"}}
    assert calls["algorithm"] == "linear" and calls["device"] == 1
    # 4 rows in batches of 2 -> two batches of [2, 3, 32, 48] float32: rows 0+1, then 2+3
    assert [c["shape"] for c in calls["calibration"]] == [[2, 3, 32, 48]] * 2
    assert calls["calibration"][0]["dims"] == [2, 3, 32, 48] and calls["calibration"][0]["type"] == "float32"
    np.testing.assert_allclose(calls["calibration"][1]["first"], rows[2].reshape(-1)[:6], rtol=1e-6)


def test_int8_needs_images(tmp_path: Path, conv_model, options) -> None:
    with pytest.raises(SegcError, match="needs calibration images"):
        _emit(conv_model(), tmp_path, options("x:1,3,8,8", precision="int8"))


def test_fp16_keeps_the_named_nodes_fp32(tmp_path: Path, conv_model, options, fake_magicmind) -> None:
    """A keep-set: force_float16 stays, and those nodes' float inputs and outputs are set to FLOAT32."""
    _emit(conv_model(), tmp_path, options("x:1,3,16,16", precision="fp16", fp32_layers=("relu1",)))
    env, log = fake_magicmind()
    proc = _run_program(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(log.read_text())
    assert calls["config"][-1] == {"precision_config": {"precision_mode": "force_float16"}}
    assert calls["node_precision"] == [["relu1", "input", 0, "float32"], ["relu1", "output", 0, "float32"]]
    # a kept name the parsed network does not have stops the build, naming it
    _emit(conv_model(), tmp_path, options("x:1,3,16,16", precision="fp16", fp32_layers=("gone",)))
    proc = _run_program(tmp_path, env)
    assert proc.returncode == 1 and "not in the parsed network: gone" in proc.stderr


def test_program_without_magicmind(nasty_dir: Path, conv_model, options, py_compiles, bash_syntax_ok) -> None:
    _emit(
        conv_model(),
        nasty_dir,
        options("x:1,3,64~128,64~128", command_line='segc compile """x""" \\ --target magicmind'),
    )
    py_compiles(nasty_dir / "build_magicmind.py")
    bash_syntax_ok(nasty_dir / "build.sh")
    proc = _run_program(nasty_dir, {"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 127
    assert proc.stderr.strip() == (
        "build_magicmind.py: python module magicmind not found "
        "(install Cambricon Neuware (CNToolkit) and the MagicMind Python wheel)"
    )


def test_build_sh_runs_program_then_mm_run(
    nasty_dir: Path, conv_model, options, fake_magicmind, fake_tools, fake_log
) -> None:
    steps = _emit(conv_model(), nasty_dir, options("x:1,3,64~128,64~128", opt=(1, 3, 96, 96)))
    env, log = fake_tools("mm_run")
    mm_env, mm_log = fake_magicmind()
    env["PYTHONPATH"], env["SEGC_FAKE_MM_LOG"] = mm_env["PYTHONPATH"], mm_env["SEGC_FAKE_MM_LOG"]
    proc = subprocess.run(
        ["bash", str(nasty_dir / "build.sh")], capture_output=True, text=True, env=env, cwd="/", timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert fake_log(log) == [steps[1]] and steps[1][4] == "1,3,96,96"
    assert (nasty_dir / "m.magicmind.mm").exists()


def test_user_errors(tmp_path: Path, conv_model, options) -> None:
    with pytest.raises(SegcError, match="unknown MLU architecture 'Ascend310P3'"):
        get_target("magicmind").check(conv_model(), options(target=MagicMindOptions(arch="Ascend310P3")))
    with pytest.raises(SegcError, match="needs a shape for input 'x'"):
        _emit(conv_model(), tmp_path, options())
