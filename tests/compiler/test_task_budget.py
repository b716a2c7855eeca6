"""task_budget.judge_on_dataset: an approximate pass (Resize linear -> nearest) judged on mIoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main
from segc.errors import SegcError
from segc.recipe import get_recipe
from segc.task_budget import judge_on_dataset
from tests.compiler.datagen import PLAIN_RECIPE, save, seg_model
from tests.compiler.test_evaluate_seg import frames, make_cityscapes


def upsampling_model():
    """seg_model's logits at 1/2, then a linear Resize x2: what resize_to_nearest approximates."""
    m = seg_model(stride=2, dims=(1, 3, 32, 64))
    m.graph.node[0].output[0] = "low"
    m.graph.node.append(helper.make_node("Resize", ["low", "", "scales"], ["logits"], mode="linear"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, None))
    return m


def test_nearest_resize_judged_on_miou(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", frames(2, seed=21))
    rec = tmp_path / "r.toml"
    rec.write_text(PLAIN_RECIPE.format(task="segmentation", kind="logits", resize='resize = "fixed"\nsize = [32, 64]'))
    ref = save(upsampling_model(), tmp_path / "ref.onnx")
    out = tmp_path / "near"
    assert main(["compile", str(ref), "--target", "onnxruntime", "--recipe", str(rec), "--nearest-resize", "Resize[*]",
                 "-o", str(out), "--verify", "none"]) == 0
    cand = next(p for p in out.glob("*.onnx"))
    modes = [a.s for n in __import__("onnx").load(cand).graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "mode"]
    assert modes == [b"nearest"]
    recipe = get_recipe(str(rec))
    j = judge_on_dataset(ref, cand, f"cityscapes:{root}", recipe, "miou_drop=100")
    for path, value in ((ref, j.before), (cand, j.after)):
        assert main(["evaluate", str(path), "--dataset", f"cityscapes:{root}", "--recipe", str(rec),
                     "-o", str(tmp_path / path.stem)]) == 0
        assert json.loads((tmp_path / path.stem / "report.json").read_text())["model"]["metrics"]["miou"] == value
    # on this data nearest happens to be the better reconstruction (the model sees every other
    # pixel); either way the gate is the signed drop from reference to candidate
    assert j.drop == pytest.approx(j.before - j.after) and abs(j.drop) > 1
    better, worse = (ref, cand) if j.drop > 0 else (cand, ref)
    loss = abs(j.drop)
    assert judge_on_dataset(worse, better, f"cityscapes:{root}", recipe, "miou_drop=0").passed  # a gain passes
    assert not judge_on_dataset(better, worse, f"cityscapes:{root}", recipe, f"miou_drop={loss - 0.01}").passed
    assert judge_on_dataset(better, worse, f"cityscapes:{root}", recipe, f"miou_drop={loss + 0.01}").passed
    with pytest.raises(SegcError, match="expected miou_drop=VALUE"):
        judge_on_dataset(ref, cand, f"cityscapes:{root}", recipe, "hmean_drop=1")


def test_compile_judges_approximate_passes_on_the_dataset(tmp_path: Path, capsys) -> None:
    """``segc compile --verify-data KIND:ROOT --budget miou_drop=N``: the report carries mIoU before and after."""
    root = make_cityscapes(tmp_path / "cs", frames(2, seed=21))
    rec = tmp_path / "r.toml"
    rec.write_text(PLAIN_RECIPE.format(task="segmentation", kind="logits", resize='resize = "fixed"\nsize = [32, 64]'))
    ref = save(upsampling_model(), tmp_path / "ref.onnx")
    out = tmp_path / "near"
    code = main(["compile", str(ref), "--target", "onnxruntime", "--recipe", str(rec), "--nearest-resize", "Resize[*]",
                 "--verify-data", f"cityscapes:{root}", "--budget", "miou_drop=100", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    cand = next(p for p in out.glob("*.onnx"))
    j = judge_on_dataset(ref, cand, f"cityscapes:{root}", get_recipe(str(rec)), "miou_drop=100")
    assert report["task_metric"] == j.to_dict() and report["task_metric"]["passed"]
    # the synthetic budget did not decide: it was lifted for the approximate pass
    assert report["tolerances"]["agreement"] == 0 and report["tolerances"]["cosine"] == 0


@pytest.mark.parametrize("extra,fragment", [
    (["--budget", "miou_drop=1"], "go together"),
    (["--verify-data", "cityscapes:/nonexistent", "--budget", "miou_drop=1"], "needs a recipe"),
])
def test_compile_task_metric_usage_errors(tmp_path: Path, capsys, extra: list[str], fragment: str) -> None:
    ref = save(upsampling_model(), tmp_path / "ref.onnx")
    assert main(["compile", str(ref), "--target", "onnxruntime", "-o", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segc: error:") and fragment in err[0]
    assert not (tmp_path / "o").exists()
