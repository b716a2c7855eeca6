"""segc data: the .bin files are the recipe's preprocessing, byte for byte; bad datasets exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segc.cli import main
from tests.compiler.datagen import make_cityscapes, make_icdar, save, seg_model, text_model, write_png

SEG_TOML = """
task = "segmentation"
[input]
name = "x"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
pixel_scale = 255
channel_order = "bgr"
resize = "fixed"
size = [24, 40]
interpolation = "bicubic"
[output]
kind = "logits"
"""


def one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segc: error:"), err
    return err[0]


def frames(n: int, h: int = 32, w: int = 64) -> dict:
    rng = np.random.default_rng(n)
    return {f"aachen_{i:06d}_000019": (rng.integers(0, 19, (h, w)).astype(np.uint8),
                                       rng.integers(0, 34, (h, w)).astype(np.uint8)) for i in range(n)}


def expected_seg(path: Path) -> np.ndarray:
    """The TOML above, computed independently: PIL read, OpenCV bicubic, BGR, /255, ImageNet stats."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    rgb = cv2.resize(rgb, (40, 24), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    bgr = rgb[..., ::-1] / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)  # in the network's (BGR) order
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((bgr - mean) / std).transpose(2, 0, 1)[None].astype("<f4")


def test_cityscapes_bins_are_the_recipe_preprocessing(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", frames(3))
    model = save(seg_model(), tmp_path / "m.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text(SEG_TOML)
    out = tmp_path / "data"
    assert main(["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe), "-o", str(out)]) == 0
    images = sorted((root / "leftImg8bit" / "val" / "aachen").glob("*.png"))
    bins = sorted((out / "bin").glob("*.bin"))
    assert [b.stem for b in bins] == [p.name[: -len("_leftImg8bit.png")] for p in images]
    for image, b in zip(images, bins, strict=False):
        want = expected_seg(image)
        assert b.read_bytes() == want.tobytes()  # raw, little-endian float32, NCHW
        np.testing.assert_array_equal(np.load(out / "npy" / f"{b.stem}.npy"), want)
    info = (out / "inputs.info").read_text().splitlines()
    assert info[0].split()[0] == "0" and info[0].split()[2:] == ["40", "24"] and len(info) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"][0]["original_hw"] == [[32, 64]] and manifest["files"][0]["shape"] == [1, 3, 24, 40]


def test_batches_pad_the_last_file(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cs", frames(3))
    model = save(seg_model(dims=("N", 3, "H", "W")), tmp_path / "m.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text(SEG_TOML)
    out = tmp_path / "data"
    assert main(["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", str(recipe), "-o", str(out),
                 "--batch", "2"]) == 0
    images = sorted((root / "leftImg8bit" / "val" / "aachen").glob("*.png"))
    first, second = sorted((out / "bin").glob("*.bin"))
    assert first.read_bytes() == expected_seg(images[0]).tobytes() + expected_seg(images[1]).tobytes()
    assert second.read_bytes() == expected_seg(images[2]).tobytes() + bytes(4 * 3 * 24 * 40)


def test_db_keep_ratio_on_icdar(tmp_path: Path) -> None:
    """The zoo's DBNet recipe: short side 736, multiples of 32, DB's mean subtracted then /255."""
    root = make_icdar(tmp_path / "ic", {"img_1": ((72, 128), [([10, 10, 60, 10, 60, 30, 10, 30], "abc", True)])})
    model = text_model()
    model.graph.input[0].name = "input"
    model.graph.node[0].input[0] = "input"
    path = save(model, tmp_path / "db.onnx")
    out = tmp_path / "data"
    assert main(["data", str(path), "--dataset", f"icdar2015:{root}", "--recipe", "dbnet_r50", "-o", str(out)]) == 0
    rgb = np.asarray(Image.open(root / "test_images" / "img_1.png").convert("RGB"))
    resized = cv2.resize(rgb, (1312, 736), interpolation=cv2.INTER_LINEAR).astype(np.float32)  # 736/72*128 = 1308.4
    want = ((resized - np.array([122.67891434, 116.66876762, 104.00698793], np.float32)) / 255.0)
    want = want.transpose(2, 0, 1)[None].astype("<f4")
    assert (out / "bin" / "img_1.bin").read_bytes() == want.tobytes()


def test_plain_folder_uses_the_static_input(tmp_path: Path) -> None:
    write_png(tmp_path / "imgs" / "a.png", np.full((10, 20, 3), 200, np.uint8))
    model = save(seg_model(dims=(1, 3, 16, 16)), tmp_path / "m.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text('task = "segmentation"\n[input]\nname = "x"\n')
    out = tmp_path / "o"
    assert (
        main(["data", str(model), "--dataset", f"folder:{tmp_path / 'imgs'}", "--recipe", str(recipe), "-o", str(out)])
        == 0
    )
    arr = np.fromfile(out / "bin" / "a.bin", "<f4").reshape(1, 3, 16, 16)
    assert np.all(arr == 200.0)


def _gt_line_with_7(root: Path) -> None:
    (root / "test_gts" / "gt_img_1.txt").write_text("1,2,3,4,5,6,7,word\n")


@pytest.mark.parametrize("kind, breakage, fragment", [
    ("cityscapes", lambda r: __import__("shutil").rmtree(r / "gtFine"), "no gtFine/val"),
    ("cityscapes", lambda r: write_png(next((r / "gtFine").rglob("*.png")), np.zeros((5, 5), np.uint8)),
     "is 5x5 but its image is 64x32"),
    ("cityscapes", lambda r: next((r / "gtFine").rglob("*.png")).unlink(), "has no label"),
    ("icdar2015", _gt_line_with_7, "expected 8 coordinates and a transcription, got 7 numbers"),
    ("icdar2015", lambda r: [p.unlink() for p in (r / "test_images").iterdir()], "no images"),
    ("icdar2015", lambda r: (r / "test_gts" / "gt_img_1.txt").unlink(), "has no ground truth"),
    ("folder", lambda r: None, "no images"),
])
def test_malformed_datasets_are_one_line(tmp_path: Path, capsys, kind, breakage, fragment) -> None:
    if kind == "cityscapes":
        root = make_cityscapes(tmp_path / "d", frames(1))
    elif kind == "icdar2015":
        root = make_icdar(tmp_path / "d", {"img_1": ((40, 40), [([1, 1, 20, 1, 20, 10, 1, 10], "a", True)])})
    else:
        root = tmp_path / "d"
        root.mkdir()
    breakage(root)
    model = save(seg_model(dims=(1, 3, 16, 16)), tmp_path / "m.onnx")
    recipe = tmp_path / "r.toml"
    recipe.write_text('task = "segmentation"\n[input]\nname = "x"\n')
    out = tmp_path / "o"
    line = one_error(
        capsys, ["data", str(model), "--dataset", f"{kind}:{root}", "--recipe", str(recipe), "-o", str(out)]
    )
    assert fragment in line
    assert not out.exists()  # checked before anything is written


def test_bad_arguments(tmp_path: Path, capsys) -> None:
    model = save(seg_model(), tmp_path / "m.onnx")
    root = make_cityscapes(tmp_path / "cs", frames(1))
    recipe = tmp_path / "r.toml"
    recipe.write_text('task = "segmentation"\n[input]\nname = "x"\n')
    assert "expected KIND:ROOT" in one_error(capsys, ["data", str(model), "--dataset", str(root), "--recipe",
                                                      "ocrnet_hrnetw18", "-o", "x"])
    assert "names no recipe" in one_error(capsys, ["data", str(model), "--dataset", f"cityscapes:{root}", "-o", "x"])
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(SEG_TOML)
    assert "has a fixed batch of 1" in one_error(capsys, ["data", str(model), "--dataset", f"cityscapes:{root}",
                                                          "--recipe", str(fixed), "--batch", "2", "-o", "x"])
    assert "describes input(s) input, but the model's inputs are x" in one_error(
        capsys, ["data", str(model), "--dataset", f"cityscapes:{root}", "--recipe", "dbnet_r50", "-o", "x"])
    assert "dynamic H and W" in one_error(capsys, ["data", str(model), "--dataset", f"cityscapes:{root}",
                                                    "--recipe", str(recipe), "-o", str(tmp_path / "o")])
