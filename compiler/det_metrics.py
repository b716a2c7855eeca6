"""icdar2015 precision / recall / hmean, the protocol DB's evaluation follows.

Per image: ground-truth boxes whose transcription is ``###`` are don't care; a detection
whose area lies more than half inside a don't-care box is don't care too; neither counts.
The remaining pairs are matched one-to-one, greedily in order, at polygon IoU > 0.5
(shapely). Invalid or self-intersecting polygons are skipped, as icdar's script does.
Matches and care counts are summed over the dataset, then precision = matched / detections,
recall = matched / ground truths, hmean their harmonic mean (fractions, as DB prints them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from segc.datasets import TextBox

IOU_THRESHOLD = 0.5
DONT_CARE_OVERLAP = 0.5


@dataclass
class DetCounts:
    matched: int = 0
    gt_care: int = 0
    det_care: int = 0
    images: int = 0

    def add(self, gts: Sequence[TextBox], dets: Sequence[Sequence[tuple[float, float]]]) -> int:
        """One image; returns its number of matches."""
        from shapely.geometry import Polygon

        def valid(points: Sequence[tuple[float, float]]) -> Polygon | None:
            poly = Polygon(points)
            return poly if poly.is_valid and poly.area > 0 else None

        gt_polys = [(p, g.dont_care) for g in gts if (p := valid(g.points)) is not None]
        dont_care = [p for p, dc in gt_polys if dc]
        care_gt = [p for p, dc in gt_polys if not dc]
        care_det = []
        for points in dets:
            poly = valid(points)
            if poly is None:
                continue
            if any(poly.intersection(d).area / poly.area > DONT_CARE_OVERLAP for d in dont_care):
                continue
            care_det.append(poly)
        used_det: set[int] = set()
        matched = 0
        for g in care_gt:
            for j, d in enumerate(care_det):
                if j in used_det:
                    continue
                inter = g.intersection(d).area
                union = g.area + d.area - inter
                if union > 0 and inter / union > IOU_THRESHOLD:
                    used_det.add(j)
                    matched += 1
                    break
        self.matched += matched
        self.gt_care += len(care_gt)
        self.det_care += len(care_det)
        self.images += 1
        return matched


@dataclass(frozen=True)
class DetResult:
    precision: float
    recall: float
    hmean: float
    images: int
    matched: int
    gt_care: int
    det_care: int

    def to_dict(self) -> dict[str, object]:
        return {"precision": self.precision, "recall": self.recall, "hmean": self.hmean, "images": self.images,
                "matched": self.matched, "gt_care": self.gt_care, "det_care": self.det_care}


def summarise(counts: DetCounts) -> DetResult:
    recall = counts.matched / counts.gt_care if counts.gt_care else 0.0
    precision = counts.matched / counts.det_care if counts.det_care else 0.0
    hmean = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return DetResult(precision, recall, hmean, counts.images, counts.matched, counts.gt_care, counts.det_care)
