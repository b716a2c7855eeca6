"""Cityscapes mIoU as the seed guides measured it: 19 train classes, sums over the dataset.

Label ids become train ids with cityscapesscripts' label table (below); every other id is
255 and ignored. Intersections and unions are summed over the whole dataset before dividing
(mmsegmentation's IoUMetric, cityscapesscripts' evalPixelLevelSemanticLabeling), not averaged
per image; a class whose union is empty is left out of the mean. Predictions are brought to
the label's size first: label maps by nearest, logits bilinearly (DeepLabv2's guide:
align_corners) before the argmax, as the guides' scripts did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The 19 evaluated classes in train-id order, and the label id each comes from. Source:
#: https://github.com/mcordts/cityscapesScripts, cityscapesscripts/helpers/labels.py (the
#: ``labels`` table: id, trainId); tests compare it with the package when it is installed.
CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
TRAIN_ID_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
IGNORE = 255


def _lookup() -> np.ndarray:
    lut = np.full(256, IGNORE, np.uint8)
    for train_id, label_id in enumerate(TRAIN_ID_LABEL_IDS):
        lut[label_id] = train_id
    return lut


LABEL_TO_TRAIN = _lookup()


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """A labelIds map (any integer dtype) as train ids, 255 where the class is not evaluated."""
    ids = np.asarray(label_ids)
    out = np.full(ids.shape, IGNORE, np.uint8)
    inside = (ids >= 0) & (ids < 256)
    out[inside] = LABEL_TO_TRAIN[ids[inside].astype(np.int64)]
    return out


def _axis(n_out: int, n_in: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D linear interpolation (ONNX Resize's coordinate modes:
    align_corners, else half_pixel, which is also OpenCV's and PyTorch's default)."""
    if align_corners:
        x = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    else:
        x = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def upsample_logits(logits: np.ndarray, size: tuple[int, int], align_corners: bool = False) -> np.ndarray:
    """[C, h, w] -> [C, H, W] bilinear; separable, so memory stays at one full-size copy."""
    c, h, w = logits.shape
    if (h, w) == size:
        return logits.astype(np.float32, copy=False)
    y0, y1, wy = _axis(size[0], h, align_corners)
    x0, x1, wx = _axis(size[1], w, align_corners)
    rows = logits[:, y0, :] * (1 - wy)[None, :, None] + logits[:, y1, :] * wy[None, :, None]
    return np.asarray(rows[:, :, x0] * (1 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :])


def nearest_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [H, W] nearest (ONNX/PyTorch 'nearest' with half-pixel centres)."""
    h, w = labels.shape
    if (h, w) == size:
        return labels
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return np.asarray(labels[ys][:, xs])


def prediction_at(output: np.ndarray, kind: str, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """One image's model output ([C,h,w] logits or [1,h,w]/[h,w] labels) as train ids at ``size``."""
    if kind == "labels":
        labels = output.reshape(output.shape[-2:]) if output.ndim == 3 else output
        return nearest_labels(np.asarray(labels).astype(np.int64), size)
    if output.ndim != 3:
        raise ValueError(f"logits must be [C, H, W] per image, got {output.shape}")
    return np.asarray(np.argmax(upsample_logits(output.astype(np.float32, copy=False), size, align_corners), axis=0))


@dataclass
class SegCounts:
    """Dataset-wide sums; ``add`` one image at a time."""

    num_classes: int = 19
    intersect: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    correct: int = 0
    valid: int = 0
    images: int = 0

    def __post_init__(self) -> None:
        self.intersect = np.zeros(self.num_classes, np.int64)
        self.union = np.zeros(self.num_classes, np.int64)

    def add(self, pred: np.ndarray, gt_train: np.ndarray) -> None:
        """``pred``: train ids; ``gt_train``: train ids with 255 ignored (pixels there never count)."""
        k = self.num_classes
        mask = gt_train != IGNORE
        p = pred[mask].astype(np.int64)
        g = gt_train[mask].astype(np.int64)
        p = np.where((p >= 0) & (p < k), p, k)  # an out-of-range prediction is wrong for every class
        hit = p == g
        inter = np.bincount(g[hit], minlength=k + 1)[:k]
        area_p = np.bincount(p, minlength=k + 1)[:k]
        area_g = np.bincount(g, minlength=k + 1)[:k]
        self.intersect += inter
        self.union += area_p + area_g - inter
        self.correct += int(hit.sum())
        self.valid += int(mask.sum())
        self.images += 1


@dataclass(frozen=True)
class SegResult:
    """Percent, as the guides print them; ``per_class`` IoU is None where the union is empty."""

    miou: float
    aacc: float
    per_class: dict[str, float | None]
    images: int

    def to_dict(self) -> dict[str, object]:
        return {"miou": self.miou, "aacc": self.aacc, "per_class": dict(self.per_class), "images": self.images}


def summarise(counts: SegCounts, names: tuple[str, ...] = CLASS_NAMES) -> SegResult:
    names = names if len(names) == counts.num_classes else tuple(f"class {i}" for i in range(counts.num_classes))
    per: dict[str, float | None] = {}
    for i, name in enumerate(names):
        per[name] = 100.0 * counts.intersect[i] / counts.union[i] if counts.union[i] else None
    present = [v for v in per.values() if v is not None]
    miou = float(np.mean(present)) if present else float("nan")
    aacc = 100.0 * counts.correct / counts.valid if counts.valid else float("nan")
    return SegResult(miou, aacc, per, counts.images)
