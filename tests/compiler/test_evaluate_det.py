"""Text detection: icdar2015 matching on hand-made cases, DB postprocessing, segc evaluate end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from segc.cli import main
from segc.datasets import TextBox
from segc.db_postprocess import detect_text
from segc.det_metrics import DetCounts, summarise
from tests.compiler.datagen import PLAIN_RECIPE, make_icdar, save, shrink, text_model



def box(x: float, y: float, w: float, h: float) -> list[tuple[float, float]]:
    return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def rotated(cx: float, cy: float, side: float, angle_deg: float, shift: float = 0.0) -> list[tuple[float, float]]:
    """A square of ``side`` rotated by ``angle_deg``, moved ``shift`` along its own x axis."""
    a = np.deg2rad(angle_deg)
    u, v = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
    c = np.array([cx, cy]) + shift * u
    return [tuple(c + sx * side / 2 * u + sy * side / 2 * v) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]


def score(gts, dets) -> tuple[float, float, float]:
    counts = DetCounts()
    counts.add(gts, dets)
    r = summarise(counts)
    return r.precision, r.recall, r.hmean


def test_hand_made_hmean_cases() -> None:
    g1, g2 = TextBox(tuple(box(0, 0, 40, 10))), TextBox(tuple(box(100, 0, 40, 10)))
    assert score([g1, g2], [box(0, 0, 40, 10), box(100, 0, 40, 10)]) == (1.0, 1.0, 1.0)  # perfect
    p, r, h = score([g1, g2], [box(1, 0, 40, 10)])  # half: one of two found, IoU 39/41
    assert (p, r) == (1.0, 0.5) and h == pytest.approx(2 / 3)
    assert score([g1, g2], [box(300, 300, 40, 10)]) == (0.0, 0.0, 0.0)  # none
    # IoU exactly 0.5 is not a match (strictly greater): 40x10 vs shifted by 40/3
    assert score([g1], [box(40 / 3, 0, 40, 10)])[1] == 0.0
    # two detections on one gt: one match, the other a false positive
    assert score([g1], [box(0, 0, 40, 10), box(0, 0, 40, 10)])[:2] == (0.5, 1.0)


def test_dont_care() -> None:
    care, dc = TextBox(tuple(box(0, 0, 40, 10))), TextBox(tuple(box(100, 0, 40, 10)), dont_care=True)
    # a detection on the ### region counts nowhere; the ### gt is not missed
    assert score([care, dc], [box(0, 0, 40, 10), box(100, 0, 40, 10)]) == (1.0, 1.0, 1.0)
    # a detection mostly (> 50 % of its area) inside don't care is dropped; 40 % inside is a false positive
    assert score([care, dc], [box(0, 0, 40, 10), box(84, 0, 40, 10)])[0] == 1.0
    assert score([care, dc], [box(0, 0, 40, 10), box(76, 0, 40, 10)])[0] == 0.5
    assert score([dc], [box(100, 0, 40, 10)]) == (0.0, 0.0, 0.0)  # nothing to count


def test_rotated_boxes() -> None:
    gt = TextBox(tuple(rotated(50, 50, 20, 30)))
    assert score([gt], [rotated(50, 50, 20, 30)]) == (1.0, 1.0, 1.0)
    # shifted along its own axis by a quarter: intersection 3/4, union 5/4, IoU 0.6 -> match
    assert score([gt], [rotated(50, 50, 20, 30, shift=5)])[1] == 1.0
    # by a half: IoU 1/3 -> no match; and the axis-aligned box of the same centre: IoU < 0.5 at 45 degrees
    assert score([gt], [rotated(50, 50, 20, 30, shift=10)])[1] == 0.0
    assert score([TextBox(tuple(rotated(50, 50, 20, 45)))], [box(40, 40, 20, 20)])[1] == 1.0  # IoU 0.707


def test_db_postprocess_recovers_the_text_box() -> None:
    """The shrunk kernel of a 100x24 box, grown back by unclip 1.5, then scaled 2x to the image."""
    import cv2

    prob = np.zeros((100, 200), np.float32)
    gt = np.array(box(40, 30, 100, 24), np.float32)
    cv2.fillPoly(prob, [np.round(shrink(gt)).astype(np.int32)], 0.9)
    prob[80:82, 10:12] = 0.9  # too small: short side under 3
    prob[70:90, 150:190] = 0.45  # above 0.3 but its mean score is under 0.6
    found = detect_text(prob, (200, 400))
    assert len(found) == 1 and found[0].score == pytest.approx(0.9)
    p, r, _ = score([TextBox(tuple(map(tuple, gt * 2)))], [found[0].points])
    assert (p, r) == (1.0, 1.0)
    xs = [x for x, _ in found[0].points]
    # grown beyond the kernel (x 100..260 at 2x) by D = 80*8.4*1.5/176.8 = 3.8 px a side (7.6 at 2x)
    assert 88 <= min(xs) <= 94 and 266 <= max(xs) <= 272


PAGES = {
    "img_1": ((120, 200), [([20, 20, 120, 20, 120, 44, 20, 44], "hello", True),
                           ([30, 70, 170, 70, 170, 100, 30, 100], "world,again", True),
                           ([140, 10, 190, 10, 190, 30, 140, 30], "###", True)]),
    "img_2": ((100, 160), [([20, 20, 140, 20, 140, 50, 20, 50], "found", True),
                           ([20, 60, 140, 60, 140, 90, 20, 90], "missed", False)]),
    "img_3": ((160, 160), [([*map(int, np.round(np.array(rotated(80, 80, 60, 30)).ravel()))], "tilted", False)]),
}


def det_recipe(tmp_path: Path) -> str:
    path = tmp_path / "det.toml"
    path.write_text(PLAIN_RECIPE.format(task="text_detection", kind="probability",
                                        resize='resize = "keep_ratio"\nmultiple = 32\nlimit_side = 96'))
    return str(path)


def test_evaluate_icdar_end_to_end(tmp_path: Path) -> None:
    import cv2

    root = make_icdar(tmp_path / "ic", PAGES)
    # the rotated square is drawn by hand: its kernel is the square shrunk on both axes
    img = cv2.imread(str(root / "test_images" / "img_3.png"))
    pts = np.array(rotated(80, 80, 60, 30), np.float32)
    kernel = pts.mean(0) + (pts - pts.mean(0)) * 0.6
    cv2.fillPoly(img, [np.round(kernel).astype(np.int32)], (255, 255, 255))
    cv2.imwrite(str(root / "test_images" / "img_3.png"), img)
    model = save(text_model(), tmp_path / "det.onnx")
    rec = det_recipe(tmp_path)
    out = tmp_path / "ev"
    preds = tmp_path / "preds"
    assert main(["evaluate", str(model), "--dataset", f"icdar2015:{root}", "--recipe", rec, "-o", str(out),
                 "--save-predictions", str(preds)]) == 0
    top = json.loads((out / "report.json").read_text())
    m = top["model"]["metrics"]
    assert (top["precision"], top["recall"], top["hmean"]) == (m["precision"], m["recall"], m["hmean"])
    # 5 care gts (the ### one excluded), 4 of them drawn and found; the ### detection not counted
    assert (m["matched"], m["gt_care"], m["det_care"]) == (4, 5, 4)
    assert (m["precision"], m["recall"]) == (1.0, 0.8) and m["hmean"] == pytest.approx(2 * 0.8 / 1.8)
    assert len((preds / "res_img_1.txt").read_text().splitlines()) == 3

    # the same figures from a runner's .npy outputs of segc data's inputs
    inputs, dev = tmp_path / "in", tmp_path / "dev"
    assert main(["data", str(model), "--dataset", f"icdar2015:{root}", "--recipe", rec, "-o", str(inputs)]) == 0
    dev.mkdir()
    sess = ort.InferenceSession(str(model))
    for f in (inputs / "npy").glob("*.npy"):
        np.save(dev / f"{f.stem}_0.npy", sess.run(None, {"x": np.load(f)})[0])
    assert main(["evaluate", str(model), "--dataset", f"icdar2015:{root}", "--recipe", rec, "-o", str(tmp_path / "e2"),
                 "--from-outputs", str(dev)]) == 0
    assert json.loads((tmp_path / "e2" / "report.json").read_text())["model"]["metrics"] == m

    # a "compiled" model that loses the faint half of the map: hmean drop gate
    worse = text_model()
    worse.graph.node[0].output[0] = "raw"
    from onnx import helper

    worse.graph.node.append(helper.make_node("Mul", ["raw", "half"], ["prob"]))
    worse.graph.initializer.append(helper.make_tensor("half", 1, [], [0.5]))
    worse_path = save(worse, tmp_path / "worse.onnx")
    argv = ["evaluate", str(model), "--dataset", f"icdar2015:{root}", "--recipe", rec, "--compare", str(worse_path),
            "-o", str(tmp_path / "c")]
    assert main([*argv, "--budget", "hmean_drop=0.05"]) == 1  # everything under box_thresh 0.6: hmean 0
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["compare"]["metrics"]["hmean"] == 0.0 and report["budget"]["drop"] == pytest.approx(m["hmean"])
    assert main([*argv, "--budget", "hmean_drop=0.95"]) == 0
