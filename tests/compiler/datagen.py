"""Datasets and models made in the tests: Cityscapes and icdar2015 layouts with known contents.

The segmentation model reads the train id a pixel should get from its red channel
(R = 10 * train id): a 1x1 Conv whose class-c logit is 2c*R/10 - c^2, i.e. minus the squared
distance of R/10 to c up to a term shared by all classes, so argmax = round(R / 10). The
text model's probability is R / 255, so white filled polygons on black are "text".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# train id -> label id (cityscapesscripts labels.py), to write labelIds PNGs
TRAIN_TO_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]

PLAIN_RECIPE = """
task = "{task}"
[input]
name = "x"
mean = [0, 0, 0]
std = [1, 1, 1]
{resize}
[output]
kind = "{kind}"
"""


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def seg_model(kind: str = "logits", dims: tuple = (1, 3, "H", "W"), stride: int = 1) -> onnx.ModelProto:
    """``stride`` > 1: logits at 1/stride (nearest subsampling), as HRNet/DeepLab emit them."""
    c = np.arange(19, dtype=np.float32)
    w = np.zeros((19, 3, 1, 1), np.float32)
    w[:, 0, 0, 0] = 2 * c / 10
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits"], strides=[stride, stride])]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    if kind == "labels":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=1))
        out = helper.make_tensor_value_info("labels", TensorProto.INT64, None)
    g = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))], [out],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(-c * c, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def text_model() -> onnx.ModelProto:
    w = np.zeros((1, 3, 1, 1), np.float32)
    w[0, 0, 0, 0] = 1 / 255
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["prob"])],
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def make_cityscapes(root: Path, frames: dict[str, tuple[np.ndarray, np.ndarray]], city: str = "aachen") -> Path:
    """``frames``: stem -> (predicted train ids, ground-truth label ids), both HxW uint8."""
    for stem, (pred, label_ids) in frames.items():
        h, w = pred.shape
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = pred * 10
        rgb[..., 1] = (np.arange(w)[None, :] * 7 % 256).astype(np.uint8)  # ignored by the model
        write_png(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", rgb)
        write_png(root / "gtFine" / "val" / city / f"{stem}_gtFine_labelIds.png", label_ids.astype(np.uint8))
    return root


def make_icdar(root: Path, pages: dict[str, tuple[tuple[int, int], list[tuple[list[int], str, bool]]]]) -> Path:
    """``pages``: stem -> ((H, W), [(8 gt coordinates, transcription, draw it)]).

    A drawn box is painted white as its *shrunk* kernel (DB's model predicts the shrunk text
    region, which unclip ratio 1.5 grows back): the box's centre half in each direction.
    """
    import cv2

    (root / "test_images").mkdir(parents=True, exist_ok=True)
    (root / "test_gts").mkdir(parents=True, exist_ok=True)
    for stem, ((h, w), boxes) in pages.items():
        img = np.zeros((h, w, 3), np.uint8)
        lines = []
        for coords, text, draw in boxes:
            pts = np.asarray(coords, np.float32).reshape(4, 2)
            if draw:
                cv2.fillPoly(img, [np.round(shrink(pts)).astype(np.int32)], (255, 255, 255))
            lines.append(",".join(str(v) for v in coords) + "," + text)
        cv2.imwrite(str(root / "test_images" / f"{stem}.png"), img)
        (root / "test_gts" / f"gt_{stem}.txt").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    return root


def shrink(pts: np.ndarray) -> np.ndarray:
    """Move each edge of a rectangle inward: width keeps 80 %, height 35 % (about DB's kernel)."""
    centre = pts.mean(axis=0)
    u = (pts[1] - pts[0]) / 2  # half the first edge
    v = (pts[3] - pts[0]) / 2  # half the second edge
    return np.stack([centre - 0.8 * u - 0.35 * v, centre + 0.8 * u - 0.35 * v,
                     centre + 0.8 * u + 0.35 * v, centre - 0.8 * u + 0.35 * v])
