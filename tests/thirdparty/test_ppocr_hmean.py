"""The real PP-OCRv4 text detector (rapidocr-onnxruntime's ONNX) scores a high hmean with segc evaluate.

A trained detector on clean rendered text finds every word; if segc's preprocessing, DB
postprocessing, scaling back to the image or icdar matching were wrong, the figure would
collapse. The pages are written in icdar2015's layout with each word's drawn box as its
ground truth; a second ground truth moved off the words scores near zero, so the high
figure is not the matcher being lenient. Preprocessing as rapidocr does it: OpenCV's BGR
image, ImageNet statistics on pixels / 255, short side 736, sides multiples of 32.
"""

from __future__ import annotations

import json
from pathlib import Path

import harness
import numpy as np

from segc.cli import main

RECIPE = """
task = "text_detection"
[input]
name = "x"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
pixel_scale = 255
channel_order = "bgr"
resize = "keep_ratio"
multiple = 32
limit_side = 736
"""


def write_pages(root: Path, n: int, shift: int = 0) -> None:
    """``n`` pages of words at several sizes; gt is each word's text box, moved ``shift`` px down."""
    from PIL import Image, ImageDraw, ImageFont

    (root / "test_images").mkdir(parents=True)
    (root / "test_gts").mkdir()
    rng = np.random.default_rng(0)
    letters = list("ABCDEFGHJKLMNPRSTUVWXYZabdeghkmnpqrstuwxyz0123456789")
    for i in range(1, n + 1):
        w, h = 640, 480
        page = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(215, 256, 3)))
        draw = ImageDraw.Draw(page)
        lines, y = [], 20
        while y < h - 60:
            font = ImageFont.load_default(size=int(rng.integers(24, 44)))
            x, bottom = int(rng.integers(10, 60)), y
            for _ in range(int(rng.integers(1, 3))):
                word = "".join(rng.choice(letters, int(rng.integers(4, 9))))
                left, top, right, bottom = draw.textbbox((x, y), word, font=font)
                if right > w - 10:
                    break
                draw.text((x, y), word, font=font, fill=tuple(int(v) for v in rng.integers(0, 70, 3)))
                t, b = top + shift, bottom + shift
                lines.append(f"{left},{t},{right},{t},{right},{b},{left},{b},{word}")
                x = right + int(rng.integers(40, 120))
            y = bottom + int(rng.integers(20, 45))
        page.save(root / "test_images" / f"img_{i}.jpg", quality=95)
        (root / "test_gts" / f"gt_img_{i}.txt").write_text("\n".join(lines) + "\n")


def test_ppocrv4_detector_scores_high_hmean(thirdparty_model, tmp_path: Path) -> None:
    model = thirdparty_model(harness.MODELS_BY_NAME["ppocrv4_det"])
    recipe = tmp_path / "ppocr.toml"
    recipe.write_text(RECIPE)
    figures = {}
    for shift in (0, 40):
        root = tmp_path / f"ic_{shift}"
        write_pages(root, 3, shift)
        out = tmp_path / f"ev_{shift}"
        assert main(["evaluate", str(model), "--dataset", f"icdar2015:{root}", "--recipe", str(recipe),
                     "-o", str(out)]) == 0
        figures[shift] = json.loads((out / "report.json").read_text())["model"]["metrics"]
    good, off = figures[0], figures[40]
    assert good["gt_care"] >= 20
    assert good["hmean"] >= 0.9, good
    assert off["hmean"] <= 0.2, off
