"""segc evaluate on Cityscapes layouts: mIoU against cityscapesscripts' own evaluator and numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from segc import seg_metrics
from segc.cli import main
from tests.compiler.datagen import PLAIN_RECIPE, TRAIN_TO_ID, make_cityscapes, save, seg_model

FIXED = 'resize = "fixed"\nsize = [32, 64]'


def recipe(tmp_path: Path, kind: str = "logits", resize: str = FIXED, extra: str = "") -> Path:
    path = tmp_path / f"{kind}.toml"
    path.write_text(PLAIN_RECIPE.format(task="segmentation", resize=resize, kind=kind) + extra)
    return path


def frames(n: int = 3, seed: int = 0) -> dict:
    """Predictions right on ~70 % of the pixels; labels include ignored ids (0, 9, 14...)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        gt_train = rng.integers(0, 19, (32, 64))
        pred = np.where(rng.random((32, 64)) < 0.7, gt_train, rng.integers(0, 19, (32, 64)))
        label_ids = np.asarray(TRAIN_TO_ID)[gt_train]
        label_ids = np.where(rng.random((32, 64)) < 0.1, rng.choice([0, 4, 9, 14, 29]), label_ids)
        if i == 0:
            pred[:, :8] = 18  # bicycle over road: bicycle is never in gt on this image
            label_ids[:, :8] = 7
        out[f"frankfurt_{i:06d}_000{i}"] = (pred.astype(np.uint8), label_ids.astype(np.uint8))
    return out


def numpy_miou(data: dict) -> tuple[float, float, dict[int, float]]:
    """Independent: one 19x19 confusion matrix over every valid pixel, IoU = tp / (row + col - tp)."""
    conf = np.zeros((19, 19), np.int64)
    lut = {lid: t for t, lid in enumerate(TRAIN_TO_ID)}
    for pred, label_ids in data.values():
        for p, lid in zip(pred.ravel(), label_ids.ravel(), strict=False):
            if int(lid) in lut:
                conf[lut[int(lid)], int(p)] += 1
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    ious = {c: 100 * tp[c] / union[c] for c in range(19) if union[c]}
    return float(np.mean(list(ious.values()))), 100 * tp.sum() / conf.sum(), ious


def evaluate(argv: list[str], out: Path) -> dict:
    assert main([*argv, "-o", str(out), "--json"]) == 0
    return json.loads((out / "report.json").read_text())


def test_label_table_matches_cityscapesscripts() -> None:
    labels = pytest.importorskip("cityscapesscripts.helpers.labels")
    for lab in labels.labels:
        if 0 <= lab.id < 256:
            assert seg_metrics.LABEL_TO_TRAIN[lab.id] == (255 if lab.trainId in (255, -1) else lab.trainId), lab
    names = {lab.trainId: lab.name for lab in labels.labels if 0 <= lab.trainId < 19}
    assert tuple(names[i] for i in range(19)) == seg_metrics.CLASS_NAMES


def test_miou_matches_numpy_and_cityscapesscripts(tmp_path: Path, capsys) -> None:
    data = frames()
    root = make_cityscapes(tmp_path / "cs", data)
    model = save(seg_model(), tmp_path / "m.onnx")
    preds = tmp_path / "preds"
    report = evaluate(["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe(tmp_path)),
                       "--save-predictions", str(preds)], tmp_path / "ev")
    m = report["model"]["metrics"]
    assert {k: report[k] for k in ("miou", "aacc", "per_class")} == {k: m[k] for k in ("miou", "aacc", "per_class")}
    miou, aacc, ious = numpy_miou(data)
    assert m["miou"] == pytest.approx(miou, abs=1e-9) and m["aacc"] == pytest.approx(aacc, abs=1e-9)
    assert m["per_class"]["road"] == pytest.approx(ious[0])
    # the saved predictions are the model's: train ids named after the stem
    stem = next(iter(data))
    np.testing.assert_array_equal(np.asarray(Image.open(preds / f"{stem}.png")), data[stem][0])
    assert (tmp_path / "ev" / "report.md").read_text().count("|") > 19 * 2
    assert (tmp_path / "ev" / "per_class_iou.png").stat().st_size > 1000

    # cityscapesscripts' evaluator on the same files (predictions as label ids)
    ev = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    pred_files, gt_files = [], []
    for stem, (pred, _) in data.items():
        f = tmp_path / "csid" / f"{stem}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(np.asarray(TRAIN_TO_ID, np.uint8)[pred]).save(f)
        pred_files.append(str(f))
        gt_files.append(str(next(root.rglob(f"{stem}_gtFine_labelIds.png"))))
    ev.args.evalInstLevelScore = False
    ev.args.quiet = True
    ev.args.JSONOutput = False
    result = ev.evaluateImgLists(pred_files, gt_files, ev.args)
    capsys.readouterr()
    assert m["miou"] == pytest.approx(100 * result["averageScoreClasses"], abs=1e-9)
    for name, v in result["classScores"].items():
        if name in m["per_class"] and not np.isnan(v):
            assert m["per_class"][name] == pytest.approx(100 * v)


def test_labels_output_and_strided_logits(tmp_path: Path) -> None:
    data = frames(2, seed=3)
    root = make_cityscapes(tmp_path / "cs", data)
    labels = evaluate(["evaluate", str(save(seg_model("labels"), tmp_path / "l.onnx")), "--dataset",
                       f"cityscapes:{root}", "--recipe", str(recipe(tmp_path, "labels"))], tmp_path / "a")
    assert labels["model"]["metrics"]["miou"] == pytest.approx(numpy_miou(data)[0])

    # logits at 1/2, upsampled to the label size with align_corners, checked against torch
    torch = pytest.importorskip("torch")
    strided = save(seg_model(stride=2), tmp_path / "s.onnx")
    preds = tmp_path / "p"
    evaluate(["evaluate", str(strided), "--dataset", f"cityscapes:{root}", "--save-predictions", str(preds),
              "--recipe", str(recipe(tmp_path, extra="align_corners = true\n"))], tmp_path / "b")
    sess = ort.InferenceSession(str(strided))
    stem = next(iter(data))
    rgb = np.asarray(Image.open(next(root.rglob(f"{stem}_leftImg8bit.png"))).convert("RGB"), np.float32)
    logits = sess.run(None, {"x": rgb.transpose(2, 0, 1)[None]})[0]
    up = torch.nn.functional.interpolate(torch.from_numpy(logits), size=(32, 64), mode="bilinear", align_corners=True)
    np.testing.assert_array_equal(np.asarray(Image.open(preds / f"{stem}.png")), up.argmax(1)[0].numpy())


@pytest.mark.parametrize("align", [False, True])
def test_upsample_logits_is_torch_bilinear(align: bool) -> None:
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((3, 5, 7)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(20, 33), mode="bilinear",
                                           align_corners=align)[0].numpy()
    np.testing.assert_allclose(seg_metrics.upsample_logits(x, (20, 33), align), want, atol=1e-5)


def test_from_outputs_equals_onnxruntime_and_budget_gate(tmp_path: Path) -> None:
    data = frames(3, seed=5)
    root = make_cityscapes(tmp_path / "cs", data)
    model = save(seg_model(), tmp_path / "m.onnx")
    rec = str(recipe(tmp_path))
    ref = evaluate(["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec], tmp_path / "ref")

    # a device run: segc data's inputs through a runner that writes <stem>_0.bin
    inputs, outs = tmp_path / "inputs", tmp_path / "device"
    assert main(["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec, "-o", str(inputs)]) == 0
    outs.mkdir()
    sess = ort.InferenceSession(str(model))
    for b in (inputs / "bin").glob("*.bin"):
        y = sess.run(None, {"x": np.fromfile(b, "<f4").reshape(1, 3, 32, 64)})[0]
        y.astype("<f4").tofile(outs / f"{b.stem}_0.bin")
    dev = evaluate(["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec, "--from-outputs",
                    str(outs)], tmp_path / "dev")
    assert dev["model"]["metrics"] == ref["model"]["metrics"]

    # B: class 13 (car) never predicted (its bias sunk): car pixels go to the tie winner 12
    # (rider; logits 2c*13 - c^2 tie at 12 and 14, argmax takes the first)
    worse = seg_model()
    b = next(t for t in worse.graph.initializer if t.name == "b")
    bias = np.frombuffer(b.raw_data, np.float32).copy() if b.raw_data else np.asarray(b.float_data, np.float32)
    bias[13] = -1e6
    b.ClearField("float_data")
    b.raw_data = bias.tobytes()
    worse_path = save(worse, tmp_path / "worse.onnx")
    want_b, _, ious_b = numpy_miou({k: (np.where(p == 13, 12, p), lab) for k, (p, lab) in data.items()})
    drop = ref["model"]["metrics"]["miou"] - want_b
    argv = ["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec, "--compare", str(worse_path)]
    assert main([*argv, "-o", str(tmp_path / "c1"), "--budget", f"miou_drop={drop + 0.1}"]) == 0
    assert main([*argv, "-o", str(tmp_path / "c2"), "--budget", f"miou_drop={drop - 0.1}"]) == 1
    report = json.loads((tmp_path / "c2" / "report.json").read_text())
    assert report["compare"]["metrics"]["miou"] == pytest.approx(want_b)
    assert report["compare"]["drop"]["per_class"]["rider"] == pytest.approx(
        ref["model"]["metrics"]["per_class"]["rider"] - ious_b[12])
    assert report["budget"]["exceeded"] is True
    assert report["compare"]["metrics"]["per_class"]["car"] == 0.0


def one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segc: error:"), err
    return err[0]


def test_bad_evaluate_arguments(tmp_path: Path, capsys) -> None:
    root = make_cityscapes(tmp_path / "cs", frames(1))
    model = str(save(seg_model(), tmp_path / "m.onnx"))
    rec = str(recipe(tmp_path))
    base = ["evaluate", model, "--dataset", f"cityscapes:{root}", "--recipe", rec, "-o", str(tmp_path / "o")]
    assert "needs --compare" in one_error(capsys, [*base, "--budget", "miou_drop=1"])
    assert "expected miou_drop=VALUE" in one_error(capsys, [*base, "--budget", "hmean_drop=1", "--compare", model])
    assert "not a number" in one_error(capsys, [*base, "--budget", "miou_drop=x", "--compare", model])
    assert "no labels" in one_error(capsys, ["evaluate", model, "--dataset", f"folder:{root}", "--recipe", rec])
    assert "no such folder" in one_error(capsys, [*base, "--from-outputs", str(tmp_path / "none")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no frankfurt_000000_0000_0.bin or .npy" in one_error(capsys, [*base, "--from-outputs", str(empty)])
    (empty / "frankfurt_000000_0000_0.bin").write_bytes(bytes(12))
    assert "do not fit output" in one_error(capsys, [*base, "--from-outputs", str(empty)])
    det = tmp_path / "det.toml"
    det.write_text(PLAIN_RECIPE.format(task="text_detection", resize=FIXED, kind="probability"))
    assert "is for segmentation" in one_error(capsys, ["evaluate", model, "--dataset", f"cityscapes:{root}",
                                                        "--recipe", str(det)])


def test_batched_device_outputs(tmp_path: Path) -> None:
    """--batch 2: one output file per batch (named after its first image), the padding slot unused."""
    data = frames(3, seed=11)
    root = make_cityscapes(tmp_path / "cs", data)
    model = save(seg_model(dims=("N", 3, "H", "W")), tmp_path / "m.onnx")
    rec = str(recipe(tmp_path))
    inputs, outs = tmp_path / "inputs", tmp_path / "device"
    assert main(["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec, "-o", str(inputs),
                 "--batch", "2"]) == 0
    outs.mkdir()
    sess = ort.InferenceSession(str(model))
    for b in (inputs / "bin").glob("*.bin"):
        sess.run(None, {"x": np.fromfile(b, "<f4").reshape(2, 3, 32, 64)})[0].tofile(outs / f"{b.stem}_0.bin")
    dev = evaluate(["evaluate", str(model), "--dataset", f"cityscapes:{root}", "--recipe", rec, "--from-outputs",
                    str(outs), "--batch", "2"], tmp_path / "dev")
    assert dev["model"]["metrics"]["miou"] == pytest.approx(numpy_miou(data)[0])
    assert dev["model"]["metrics"]["images"] == 3
