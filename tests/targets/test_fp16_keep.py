"""Acceptance: an intermediate that overflows fp16 is kept fp32 in every vendor's build.

The model scales activations beyond 65504 and back down (tests/passes/test_emulate_fp16.py,
``overflow_model``). ``segc compile --precision fp16`` must find the three layers the big
values pass through, keep exactly those in fp32 in the TensorRT, Ascend and MagicMind
outputs, and show that the emulation with them kept meets the budget. A model that fits
fp16 gets plain fp16 and no keep list.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import onnx
import pytest

from segc.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "passes"))
from test_emulate_fp16 import KEPT, overflow_model  # noqa: E402

FITS = ["conv_in", "relu_in", "conv_out"]


def compile_fp16(tmp_path: Path, target: str, scale: float = 1e5) -> tuple[Path, dict]:
    src = tmp_path / f"over_{int(scale)}.onnx"
    onnx.save(overflow_model(scale), src)
    out = tmp_path / f"{target}_{int(scale)}"
    assert (
        main(["compile", str(src), "--target", target, "--precision", "fp16", "-o", str(out), "--passes", "cleanup"])
        == 0
    )
    return out, json.loads((out / "report.json").read_text())


def _trtexec_line(out: Path) -> list[str]:
    line = next(ln for ln in (out / "build.sh").read_text().splitlines() if ln.startswith("trtexec "))
    return shlex.split(line)


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fp16")


def test_report_has_the_figures_and_the_kept_build_meets_the_budget(tmp_module: Path) -> None:
    out, report = compile_fp16(tmp_module, "tensorrt")
    stats = next(p for p in report["passes"] if p["name"] == "emulate_fp16")["stats"]["fp16"]
    assert not stats["all_fp16"]["ok"] and stats["all_fp16"]["overflow"] > 0
    assert stats["kept_fp32"] == KEPT and stats["final"]["ok"] and stats["final"]["overflow"] == 0
    assert stats["final"]["cosine"] >= stats["budget"]["cosine"]
    assert report["build"]["fp32_layers"] == KEPT
    md = (out / "report.md").read_text()
    assert "## fp16 emulation" in md and "| scale_up | Mul | fp32 |" in md


def test_tensorrt_obeys_the_keep_set(tmp_module: Path) -> None:
    out, _ = compile_fp16(tmp_module, "tensorrt")
    argv = _trtexec_line(out)
    assert "--fp16" in argv and "--precisionConstraints=obey" in argv
    assert f"--layerPrecisions={','.join(f'{n}:fp32' for n in KEPT)}" in argv
    assert not any(n in " ".join(argv) for n in FITS)


def test_ascend_keeps_dtype_for_those_nodes(tmp_module: Path) -> None:
    out, _ = compile_fp16(tmp_module, "ascend")
    assert (out / "keep_dtype.cfg").read_text().split() == KEPT
    atc = next(ln for ln in (out / "build.sh").read_text().splitlines() if ln.startswith("atc "))
    assert "--keep_dtype=keep_dtype.cfg" in atc and "--precision_mode=force_fp16" in atc


def test_magicmind_keeps_those_nodes_per_node(tmp_module: Path) -> None:
    out, _ = compile_fp16(tmp_module, "magicmind")
    program = (out / "build_magicmind.py").read_text()
    assert "PRECISION_MODE = 'force_float16'" in program
    assert f"KEEP_FP32 = {KEPT!r}" in program


def test_a_model_that_fits_gets_plain_fp16(tmp_module: Path) -> None:
    out, report = compile_fp16(tmp_module, "tensorrt", scale=10.0)
    argv = _trtexec_line(out)
    assert "--fp16" in argv and not any(
        a.startswith("--precisionConstraints") or a.startswith("--layerPrecisions") for a in argv
    )
    assert report["build"]["fp32_layers"] == []
    out, _ = compile_fp16(tmp_module, "ascend", scale=10.0)
    assert not (out / "keep_dtype.cfg").exists()
    out, _ = compile_fp16(tmp_module, "magicmind", scale=10.0)
    assert "PRECISION_MODE = 'force_float16'" in (out / "build_magicmind.py").read_text()
