"""A target brings its own flags: a new target is one module-like class and a profile, no cli.py edit.

The throwaway target ``toyvendor`` below is registered for one test (its profile is a JSON file
in tmp); ``segc compile --help`` then shows its flag, the flag's value reaches its emitter as its
own typed options, and the flags of other targets are usage errors naming their owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from segc.cli import main
from segc.errors import SegcError
from segc.outdir import write_text
from segc.targets import base
from segc.targets.base import Artefact, BuildOptions, Target, TargetFlag, TargetOptions, own_options

TOY = "toyvendor"


@dataclass(frozen=True)
class ToyOptions(TargetOptions):
    level: int = 1
    tuning: str | None = None


def toy_target(profile: Path) -> type[Target]:
    class ToyTarget(Target):
        name = TOY
        description = "a throwaway vendor for this test"
        default_passes = ("cleanup",)
        flags = (TargetFlag("--toy-level", "optimisation level of the toy compiler", kind="int", metavar="N"),
                 TargetFlag("--toy-tuning", "tuning file", kind="path"))
        profile_path = profile

        def target_options(self, values: Mapping[str, Any]) -> ToyOptions:
            level = values.get("toy_level")
            if level is not None and level not in (1, 2, 3):
                raise SegcError(f"--toy-level must be 1, 2 or 3, got {level}")
            return ToyOptions(level=1 if level is None else level, tuning=values.get("toy_tuning"))

        def emit(self, model: onnx.ModelProto, model_path: Path, outdir: Path, options: BuildOptions) -> list[Artefact]:
            own = own_options(options, ToyOptions)
            path = Path(outdir) / "toy.json"
            write_text(path, json.dumps({"level": own.level, "tuning": own.tuning, "precision": options.precision}))
            return [Artefact(path, "data")]

    return ToyTarget


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Target]]:
    profile = tmp_path / "toyvendor.json"
    profile.write_text(json.dumps({"target": TOY, "opset": {"min": 7, "max": 26},
                                   "ops": {"list": ["Relu", "Sigmoid"], "partial": False}}))
    cls = toy_target(profile)
    base.all_targets()  # the built-in targets first, then the toy beside them
    monkeypatch.setitem(base._TARGETS, TOY, cls)
    yield cls


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Sigmoid", ["r"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return path


def test_help_lists_the_new_targets_flag_and_name(toy: type[Target], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["compile", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width
    assert "options for toyvendor:" in text and "--toy-level N" in text
    assert "toyvendor: optimisation level of the toy compiler" in text
    assert "toyvendor: a throwaway vendor for this test" in text  # --target's help, from the registry


def test_the_flag_reaches_the_emitter_typed(toy: type[Target], model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(model_file), "--target", TOY, "--toy-level", "3", "-o", str(out)]) == 0
    assert json.loads((out / "toy.json").read_text()) == {"level": 3, "tuning": None, "precision": "fp32"}
    report = json.loads((out / "report.json").read_text())
    assert report["build"]["target_options"] == {"level": 3, "tuning": None}


def test_its_own_bad_value_and_other_targets_flags_are_usage_errors(
        toy: type[Target], model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(model_file), "--target", TOY, "--toy-level", "7", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "segc: error: --toy-level must be 1, 2 or 3, got 7"
    assert main(["compile", str(model_file), "--target", TOY, "--workspace-mb", "64", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "segc: error: --workspace-mb is an option of target tensorrt, not of toyvendor"
    assert main(["compile", str(model_file), "--target", "tensorrt", "--toy-level", "2", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "segc: error: --toy-level is an option of target toyvendor, not of tensorrt"
    assert not out.exists()


def test_batch_manifest_takes_the_targets_keys(toy: type[Target], model_file: Path, tmp_path: Path) -> None:
    """A manifest key of a target's own flag: per_target for that target only, and from [defaults]
    only into the cells of the targets that own it."""
    from segc.batch_manifest import expand, parse_manifest

    data: dict[str, Any] = {"targets": [TOY, "onnxruntime"], "defaults": {"toy_level": 2},
                            "model": [{"path": str(model_file)}]}
    cells = {c.target: c.compile_flags for c in expand(parse_manifest(data, tmp_path / "fleet.toml"))}
    assert cells[TOY] == ("--toy-level", "2") and cells["onnxruntime"] == ()
    bad = {**data, "model": [{"path": str(model_file), "per_target": {"onnxruntime": {"toy_level": 3}}}]}
    with pytest.raises(SegcError, match="`toy_level` is an option of target toyvendor, not of onnxruntime"):
        parse_manifest(bad, tmp_path / "fleet.toml")
    with pytest.raises(SegcError, match="`toy_level` must be an integer"):
        parse_manifest({**data, "defaults": {"toy_level": "high"}}, tmp_path / "fleet.toml")


def test_two_targets_declaring_one_flag_differently_is_a_bug(toy: type[Target],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    class Clash(Target):
        name = "clash"
        flags = (TargetFlag("--toy-level", "as a string", kind="str"),)

    monkeypatch.setitem(base._TARGETS, "clash", Clash)
    with pytest.raises(ValueError, match="declare --toy-level differently"):
        base.target_flags()
