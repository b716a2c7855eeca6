"""segc.recipe_file: TOML recipes map onto Recipe/InputSpec; every mistake is one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segc.cli import main
from segc.errors import SegcError
from segc.recipe import get_recipe
from segc.recipe_file import load_recipe_file

SEG = """
task = "segmentation"
[input]
name = "x"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
pixel_scale = 255
channel_order = "bgr"
resize = "fixed"
size = [64, 128]
[output]
kind = "labels"
name = "y"
"""

DET = """
task = "text_detection"
[input]
name = "input"
mean = [122.67891434, 116.66876762, 104.00698793]
std = [255, 255, 255]
resize = "keep_ratio"
multiple = 32
limit_side = 736
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_segmentation_recipe_maps_onto_inputspec(tmp_path: Path) -> None:
    r = get_recipe(str(write(tmp_path, SEG, "mine.toml")))
    assert r.name == "mine" and r.task == "segmentation" and r.num_classes == 19
    spec = r.input("x")
    assert spec is not None and spec.channel_order == "BGR" and spec.resize.size == (64, 128)
    assert r.output.kind == "labels" and r.output.name == "y" and r.label_outputs == ("y",)
    # pixel_scale = 255 divides first: (p/255 - 0.5)/0.5, with the channels flipped
    pixels = np.zeros((1, 3, 1, 1), np.float32)
    pixels[0, :, 0, 0] = [255.0, 0.0, 127.5]
    np.testing.assert_allclose(spec.normalise(pixels)[0, :, 0, 0], [0.0, -1.0, 1.0], atol=1e-6)


def test_keep_ratio_recipe_and_db_sizes(tmp_path: Path) -> None:
    r = load_recipe_file(write(tmp_path, DET))
    spec = r.inputs[0]
    assert r.output.kind == "probability" and spec.pixel_scale == 255.0
    # icdar2015 frames are 720x1280: short side 736, long side 1308.4 -> 1312 (multiple of 32)
    assert spec.resize.target_size(720, 1280) == (736, 1312)
    assert spec.resize.target_size(1000, 500) == (1472, 736)
    # the zoo's DBNet recipe says the same
    assert get_recipe("dbnet_r50").inputs[0].resize.target_size(720, 1280) == (736, 1312)


@pytest.mark.parametrize("edit, fragment", [
    (('task = "segmentation"', 'task = "detection"'), "task must be one of"),
    (('name = "x"\n', ''), "input.name"),
    (("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]"), "input.mean must be 3 numbers"),
    (("std = [0.5, 0.5, 0.5]", "std = [0.5, 0, 0.5]"), "input.std must not contain 0"),
    (('channel_order = "bgr"', 'channel_order = "rbg"'), "input.channel_order"),
    (('resize = "fixed"', 'resize = "stretch"'), "input.resize must be"),
    (("size = [64, 128]", "size = [64]"), "input.size must be [H, W]"),
    (('kind = "labels"', 'kind = "argmax"'), "output.kind must be one of"),
    (("pixel_scale = 255", "pixel_scale = 255\nmeen = 1"), "unknown key input.meen"),
    (("[output]", "[output\n"), "not valid TOML"),
])
def test_bad_recipe_files_are_one_line_errors(tmp_path: Path, capsys, edit, fragment) -> None:
    path = write(tmp_path, SEG.replace(*edit))
    with pytest.raises(SegcError, match=None) as info:
        load_recipe_file(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    # and through the command line: one line, exit 2, before any model is read
    assert main(["compile", str(tmp_path / "none.onnx"), "--target", "onnxruntime", "--recipe", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segc: error:")


def test_keep_ratio_needs_limit_side(tmp_path: Path) -> None:
    with pytest.raises(SegcError, match="limit_side must be a positive integer"):
        load_recipe_file(write(tmp_path, DET.replace("limit_side = 736\n", "")))
    with pytest.raises(SegcError, match="no such file"):
        get_recipe(str(tmp_path / "absent.toml"))


def test_compile_takes_a_recipe_file(tmp_path: Path) -> None:
    """``segc compile --recipe FILE.toml`` verifies with the file's normalisation."""
    from tests.compiler.test_cli import tiny

    model = tmp_path / "m.onnx"
    model.write_bytes(tiny().SerializeToString())
    recipe = write(tmp_path, SEG.replace('name = "y"', 'name = "y"').replace('kind = "labels"', 'kind = "logits"')
                   .replace("size = [64, 128]", "size = [16, 16]"))
    out = tmp_path / "out"
    assert main(["compile", str(model), "--target", "onnxruntime", "--recipe", str(recipe), "-o", str(out)]) == 0
    import json

    assert json.loads((out / "report.json").read_text())["recipe"] == "r"
