"""DB's postprocessing: a text probability map to quadrilaterals in image coordinates.

What MhLiao/DB's SegDetectorRepresenter does for icdar2015 (``--box_thresh 0.6``, polygon
mode off), written from its description: binarise the map at 0.3; one candidate per outer
contour (at most 1000); its minimum-area rectangle, dropped when the short side is under
3 px; the mean probability inside the rectangle, dropped under 0.6; the rectangle grown by
the Vatti offset D = area * 1.5 / perimeter (pyclipper, round joins) because the network
predicts the *shrunk* text kernel; the grown shape's rectangle again (short side >= 5);
scaled from the map to the original image and clipped to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DBParams:
    thresh: float = 0.3
    box_thresh: float = 0.6
    unclip_ratio: float = 1.5
    max_candidates: int = 1000
    min_size: int = 3


@dataclass(frozen=True)
class TextDetection:
    points: tuple[tuple[float, float], ...]  # 4 corners, clockwise from the top-left
    score: float


def _rect(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-area rectangle's corners (top-left first, clockwise) and its short side."""
    import cv2

    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    corners = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left, right = sorted(corners[:2], key=lambda p: p[1]), sorted(corners[2:], key=lambda p: p[1])
    ordered = np.array([left[0], right[0], right[1], left[1]], np.float32)
    return ordered, float(min(rect[1]))


def _mean_inside(prob: np.ndarray, box: np.ndarray) -> float:
    import cv2

    h, w = prob.shape
    x0, x1 = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1)), int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    y0, y1 = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1)), int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    cv2.fillPoly(mask, [np.round(box - [x0, y0]).astype(np.int32)], 1)
    patch = prob[y0:y1 + 1, x0:x1 + 1]
    return float(patch[mask > 0].mean()) if mask.any() else 0.0


def _unclip(box: np.ndarray, ratio: float) -> np.ndarray | None:
    import pyclipper
    from shapely.geometry import Polygon

    poly = Polygon(box)
    if poly.length == 0:
        return None
    distance = poly.area * ratio / poly.length
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(p) for p in np.round(box).astype(np.int64).tolist()], pyclipper.JT_ROUND,
                   pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(distance)
    if len(grown) != 1:
        return None
    return np.asarray(grown[0], np.float32)


def detect_text(prob: np.ndarray, image_hw: tuple[int, int], params: DBParams = DBParams()) -> list[TextDetection]:
    """``prob``: [H, W] map for an image whose original size is ``image_hw``."""
    import cv2

    prob = np.asarray(prob, np.float32)
    h, w = prob.shape
    dest_h, dest_w = image_hw
    bitmap = (prob > params.thresh).astype(np.uint8) * 255
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for contour in contours[: params.max_candidates]:
        box, short = _rect(contour.reshape(-1, 2))
        if short < params.min_size:
            continue
        score = _mean_inside(prob, box)
        if score < params.box_thresh:
            continue
        grown = _unclip(box, params.unclip_ratio)
        if grown is None:
            continue
        box, short = _rect(grown)
        if short < params.min_size + 2:
            continue
        xs = np.clip(np.round(box[:, 0] / w * dest_w), 0, dest_w)
        ys = np.clip(np.round(box[:, 1] / h * dest_h), 0, dest_h)
        found.append(TextDetection(tuple((float(x), float(y)) for x, y in zip(xs, ys, strict=False)), score))
    return found
