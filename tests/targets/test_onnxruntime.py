"""onnxruntime target: optimised copy, smoke build.sh that really runs, legality data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from segc.errors import SegcError
from segc.targets.base import get_target
from segc.targets.buildscript import parse_steps
from segc.targets.legality import load_profile
from segc.targets.onnxruntime import opt_model_path


def _emit(model: onnx.ModelProto, outdir: Path, opts):
    path = outdir / "m.onnxruntime.onnx"
    onnx.save(model, path)
    return path, get_target("onnxruntime").emit(model, path, outdir, opts)


def test_registered_with_default_passes() -> None:
    target = get_target("onnxruntime")
    assert target.pipeline(None) == ["simplify", "cleanup"]


def test_opt_path_name() -> None:
    assert opt_model_path(Path("o/dbnet.onnxruntime.onnx")) == Path("o/dbnet.onnxruntime.opt.onnx")


def test_emit_writes_optimised_copy_that_matches(tmp_path: Path, conv_model, options) -> None:
    model = conv_model()
    path, arts = _emit(model, tmp_path, options("x:1,3,8~32,8~32", opt=(1, 3, 16, 24)))
    opt = tmp_path / "m.onnxruntime.opt.onnx"
    assert [(a.path, a.kind) for a in arts] == [(opt, "model"), (tmp_path / "build.sh", "script")]
    onnx.checker.check_model(onnx.load(opt))
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 24)).astype(np.float32)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    argv = parse_steps((tmp_path / "build.sh").read_text())
    assert len(argv) == 1 and argv[0][:2] == ["python3", "-c"]
    assert argv[0][3:] == ["m.onnxruntime.opt.onnx", '{"x": [1, 3, 16, 24]}']


def test_build_sh_runs_from_anywhere(nasty_dir: Path, conv_model, options, bash_syntax_ok) -> None:
    _emit(conv_model(), nasty_dir, options("x:1,3,8~32,8~32", opt=(1, 3, 16, 16)))
    script = nasty_dir / "build.sh"
    bash_syntax_ok(script)
    # python3 on PATH is this interpreter (it has onnxruntime and numpy)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd="/", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "y: float32 [1, 4, 16, 16]" in proc.stdout
    assert "ran once on onnxruntime" in proc.stdout


def test_build_sh_without_onnxruntime_says_so(tmp_path: Path, conv_model, options) -> None:
    _emit(conv_model(dims=(1, 3, 8, 8)), tmp_path, options())
    fake = tmp_path / "bin"
    fake.mkdir()
    # a python3 that has no onnxruntime: the real one with site-packages switched off
    (fake / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} -S -I "$@"\n')
    (fake / "python3").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:/usr/bin:/bin")
    proc = subprocess.run(["bash", str(tmp_path / "build.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 127
    assert "not found (pip install" in proc.stderr


def test_check_accepts_standard_graph(conv_model, options) -> None:
    assert get_target("onnxruntime").check(conv_model(), options("x:1,3,8~32,8~32")) == []


def test_check_flags_vendor_ops(deform_model, single_node_model, options) -> None:
    target = get_target("onnxruntime")
    assert target.check(deform_model(), options()) == []  # DeformConv has a CPU kernel
    v = target.check(deform_model(op="DeformableConv2D", data_format="NCHW"), options())
    assert [(x.node, x.op, x.fixed_by) for x in v] == [("dcn", "DeformableConv2D", "rewrite_deform_conv")]
    v = target.check(single_node_model("FancyOp"), options())
    assert [(x.op, x.fixed_by) for x in v] == [("FancyOp", None)]
    assert "not in onnxruntime (CPU execution provider)'s operator list" in v[0].reason


def test_check_opset_too_new(conv_model, options) -> None:
    v = get_target("onnxruntime").check(conv_model(opset=27), options())
    assert [(x.node, x.op) for x in v] == [("<model>", "opset")]


def test_function_ops_are_legal(single_node_model, options) -> None:
    # HardSwish has no CPU kernel but onnxruntime expands its function body
    model = single_node_model("HardSwish", opset=17)
    assert get_target("onnxruntime").check(model, options()) == []
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_profile_matches_installed_runtime() -> None:
    """The JSON was generated from onnxruntime's kernel registry; keep it honest."""
    from onnxruntime.capi import _pybind_state as C

    kernels = {k.op_name for k in C.get_all_opkernel_def() if k.provider == "CPUExecutionProvider" and k.domain == ""}
    listed = set(load_profile("onnxruntime").data["ops"]["list"])
    assert listed <= kernels
    assert kernels - listed <= {"MemcpyFromHost", "MemcpyToHost"}


def test_emit_reports_unloadable_model(tmp_path: Path, single_node_model, options) -> None:
    model = single_node_model("FancyOp")
    with pytest.raises(SegcError, match="onnxruntime cannot load the model"):
        _emit(model, tmp_path, options())
