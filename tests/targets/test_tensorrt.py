"""TensorRT target: trtexec argv, polygraphy comparison script, errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest

from segc.errors import SegcError
from segc.targets.base import get_target, own_options
from segc.targets.tensorrt import TensorRTOptions, tensorrt_options
from segc.targets.buildscript import parse_steps


def _emit(model: onnx.ModelProto, outdir: Path, opts, stem: str = "m") -> tuple[list[list[str]], list[list[str]]]:
    path = outdir / f"{stem}.tensorrt.onnx"
    onnx.save(model, path)
    arts = get_target("tensorrt").emit(model, path, outdir, opts)
    assert [(a.path.name, a.kind) for a in arts if a.kind != "data"] == [
        ("build.sh", "script"), ("compare_tensorrt.sh", "script"), ("run_device.py", "program"), ("run.sh", "script")]
    return parse_steps((outdir / "build.sh").read_text()), parse_steps((outdir / "compare_tensorrt.sh").read_text())


def test_dbnet_seed_profile(tmp_path: Path, conv_model, options) -> None:
    """DBNet guide: one profile min 640 / opt 1280 / max 4096, FP16."""
    build, compare = _emit(
        conv_model(name="input"),
        tmp_path,
        options("input:1,3,640~4096,640~4096", opt=(1, 3, 1280, 1280), precision="fp16"),
        stem="dbnet",
    )
    assert build == [
        [
            "trtexec",
            "--onnx=dbnet.tensorrt.onnx",
            "--saveEngine=dbnet.tensorrt.engine",
            "--fp16",
            "--minShapes=input:1x3x640x640",
            "--optShapes=input:1x3x1280x1280",
            "--maxShapes=input:1x3x4096x4096",
        ]
    ]
    assert compare == [["polygraphy", "run", "dbnet.tensorrt.onnx", "--trt", "--onnxrt", "--fp16",
                        "--input-shapes", "input:[1,3,1280,1280]",
                        "--trt-min-shapes", "input:[1,3,640,640]", "--trt-opt-shapes", "input:[1,3,1280,1280]",
                        "--trt-max-shapes", "input:[1,3,4096,4096]", "--atol", "0.01", "--rtol", "0.01"]]


def test_ocrnet_seed_workspace_uses_mempoolsize(tmp_path: Path, conv_model, options) -> None:
    """The seed's --workspace=15000 becomes --memPoolSize=workspace:15000M."""
    build, compare = _emit(conv_model(dims=(1, 3, 1024, 2048)), tmp_path,
                           options(precision="fp16", target=TensorRTOptions(workspace_mb=15000)))
    assert build == [["trtexec", "--onnx=m.tensorrt.onnx", "--saveEngine=m.tensorrt.engine", "--fp16",
                      "--memPoolSize=workspace:15000M"]]
    assert not any(a.startswith("--workspace") for a in build[0])
    assert compare[0][-6:] == ["--pool-limit", "workspace:15000M", "--atol", "0.01", "--rtol", "0.01"]
    assert "--input-shapes" not in compare[0]  # static model: shapes come from the graph


def test_static_point_uses_shapes(tmp_path: Path, conv_model, options) -> None:
    build, compare = _emit(conv_model(), tmp_path, options("x:1,3,1024,2048"))
    assert build[0][3:] == ["--shapes=x:1x3x1024x2048"]
    assert compare[0][5:] == ["--input-shapes", "x:[1,3,1024,2048]", "--atol", "0.0001", "--rtol", "0.0001"]


def test_batch_sizes_widen_a_dynamic_batch(tmp_path: Path, conv_model, options) -> None:
    build, _ = _emit(conv_model(dims=("N", 3, 512, 1024)), tmp_path, options("x:1,3,512,1024", batch_sizes=(1, 4, 8)))
    assert build[0][3:] == ["--minShapes=x:1x3x512x1024", "--optShapes=x:8x3x512x1024", "--maxShapes=x:8x3x512x1024"]


def test_int8_with_a_given_calibration_cache(tmp_path: Path, conv_model, options) -> None:
    """--calib-cache: the cache is copied into the build folder and read there; no calibration step."""
    given = tmp_path / "cal ib.cache"
    given.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    out = tmp_path / "out"
    out.mkdir()
    build, compare = _emit(conv_model(dims=(1, 3, 64, 64)), out,
                           options(precision="int8", target=TensorRTOptions(calib_cache=given)))
    assert build[0][3:] == ["--int8", "--fp16", "--calib=calib.cache"]
    assert compare[0][5:10] == ["--fp16", "--int8", "--calibration-cache", "calib.cache", "--atol"]
    assert (out / "calib.cache").read_bytes() == given.read_bytes()
    assert "polygraphy convert" not in (out / "build.sh").read_text()
    build, _ = _emit(conv_model(dims=(1, 3, 64, 64)), tmp_path, options(precision="int8"))
    assert "timing only" in (tmp_path / "build.sh").read_text()


def test_errors(tmp_path: Path, conv_model, options) -> None:
    with pytest.raises(SegcError, match=r"needs a shape for input 'x'"):
        _emit(conv_model(), tmp_path, options())
    with pytest.raises(SegcError, match="--workspace-mb must be positive"):
        tensorrt_options({"workspace_mb": 0})
    with pytest.raises(SegcError, match="--calib-cache .*: no such file"):
        tensorrt_options({"calib_cache": str(tmp_path / "none.cache")})
    with pytest.raises(SegcError, match="unknown precision 'fp8'"):
        get_target("tensorrt").check(conv_model(), options(precision="fp8"))


def test_scripts_in_awkward_folder(nasty_dir: Path, conv_model, options, bash_syntax_ok, fake_tools, fake_log) -> None:
    build, compare = _emit(
        conv_model(),
        nasty_dir,
        options("x:1,3,64~128,64~128", precision="fp16", target=TensorRTOptions(workspace_mb=64)),
    )
    for script in ("build.sh", "compare_tensorrt.sh"):
        bash_syntax_ok(nasty_dir / script)
    env, log = fake_tools("trtexec", "polygraphy")
    for script in ("build.sh", "compare_tensorrt.sh"):
        proc = subprocess.run(["bash", str(nasty_dir / script)], capture_output=True, text=True, env=env, cwd="/")
        assert proc.returncode == 0, proc.stderr
    assert fake_log(log) == build + compare


def test_compare_script_without_polygraphy(tmp_path: Path, conv_model, options) -> None:
    _emit(conv_model(dims=(1, 3, 8, 8)), tmp_path, options())
    proc = subprocess.run(
        ["bash", str(tmp_path / "compare_tensorrt.sh")], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )
    assert proc.returncode == 127 and "compare_tensorrt.sh: polygraphy not found" in proc.stderr


def test_workspace_from_the_recipe_and_the_command_line() -> None:
    """OCRNet's recipe asks for the seed's 15000 MiB (TargetRecipe.flags); --workspace-mb overrides it."""
    from segc.cli import build_parser
    from segc.compile_cmd import build_options
    from segc.recipe import get_recipe

    recipe, target = get_recipe("ocrnet_hrnetw18"), get_target("tensorrt")

    def workspace(*flags: str) -> int | None:
        args = build_parser().parse_args(["compile", "m.onnx", "--target", "tensorrt", *flags])
        options = build_options(args, recipe, target, [], [], [], "")
        assert options.precision == "fp16"  # the recipe's, too
        return own_options(options, TensorRTOptions).workspace_mb

    assert workspace() == 15000
    assert workspace("--workspace-mb", "64") == 64
