"""Labelled datasets as the seed guides laid them out: Cityscapes val, icdar2015 test, a folder.

``--dataset KIND:ROOT`` names one. Everything is checked before any image is preprocessed
or any model runs (a missing gtFine, a label whose size differs from its image, an empty
folder, a gt line without 8 coordinates), so a mistake is one error line, exit 2, not a
crash an hour into a 500-image run.

Layouts (docs/design.md, "Datasets"):

    cityscapes:ROOT   ROOT/leftImg8bit/val/<city>/<stem>_leftImg8bit.png
                      ROOT/gtFine/val/<city>/<stem>_gtFine_labelIds.png
    icdar2015:ROOT    ROOT/test_images/<stem>.jpg
                      ROOT/test_gts/gt_<stem>.txt   x1,y1,...,x4,y4,transcription ("###": don't care)
    folder:ROOT       ROOT/*.png|jpg|jpeg|bmp       (no labels: segc data only)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segc.errors import SegcError

KINDS = ("cityscapes", "icdar2015", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DONT_CARE = "###"


@dataclass(frozen=True)
class TextBox:
    """One ground-truth quadrilateral; ``dont_care`` for icdar2015's ``###`` transcriptions."""

    points: tuple[tuple[float, float], ...]
    dont_care: bool = False


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    label: Path | None = None  # Cityscapes labelIds PNG
    boxes: tuple[TextBox, ...] | None = None  # icdar2015 ground truth


@dataclass(frozen=True)
class Dataset:
    kind: str
    root: Path
    samples: tuple[Sample, ...]

    @property
    def task(self) -> str | None:
        return {"cityscapes": "segmentation", "icdar2015": "text_detection"}.get(self.kind)


def load_dataset(text: str, *, need_labels: bool = False) -> Dataset:
    """Parse ``KIND:ROOT`` and check the whole dataset; SegcError (one line) on any problem."""
    kind, sep, root_text = text.partition(":")
    if not sep or kind not in KINDS or not root_text:
        raise SegcError(f"--dataset {text!r}: expected KIND:ROOT with KIND one of {', '.join(KINDS)}")
    root = Path(root_text)
    if not root.is_dir():
        raise SegcError(f"--dataset {text}: {root} is not a folder")
    if kind == "cityscapes":
        samples = _cityscapes(root)
    elif kind == "icdar2015":
        samples = _icdar2015(root)
    else:
        if need_labels:
            raise SegcError(
                f"--dataset {text}: a plain folder has no labels to evaluate against; use cityscapes: or icdar2015:"
            )
        samples = tuple(Sample(p.stem, p) for p in _images(root, f"--dataset {text}"))
    _unique_stems(samples, root)
    return Dataset(kind, root, samples)


def _images(folder: Path, what: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SegcError(f"{what}: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def _cityscapes(root: Path) -> tuple[Sample, ...]:
    from PIL import Image

    images_dir, labels_dir = root / "leftImg8bit" / "val", root / "gtFine" / "val"
    if not images_dir.is_dir():
        raise SegcError(f"cityscapes dataset {root}: no leftImg8bit/val folder")
    if not labels_dir.is_dir():
        raise SegcError(f"cityscapes dataset {root}: no gtFine/val folder (the labels)")
    suffix = "_leftImg8bit.png"
    images = sorted(images_dir.glob(f"*/*{suffix}"))
    if not images:
        raise SegcError(f"cityscapes dataset {root}: no <city>/*{suffix} images under leftImg8bit/val")
    samples = []
    for image in images:
        stem = image.name[: -len(suffix)]
        label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise SegcError(f"cityscapes dataset {root}: {image.name} has no label {label.relative_to(root)}")
        try:
            with Image.open(image) as a, Image.open(label) as b:
                isize, lsize, lmode = a.size, b.size, b.mode
        except OSError as exc:
            raise SegcError(f"cityscapes dataset {root}: cannot read {image.name} or its label: {exc}") from None
        if isize != lsize:
            raise SegcError(f"cityscapes dataset {root}: label {label.name} is {lsize[0]}x{lsize[1]} but its image is "
                            f"{isize[0]}x{isize[1]}")
        if lmode not in ("L", "P", "I"):
            raise SegcError(
                f"cityscapes dataset {root}: label {label.name} is {lmode}, not a single-channel label-id PNG"
            )
        samples.append(Sample(stem, image, label=label))
    return tuple(samples)


def _icdar2015(root: Path) -> tuple[Sample, ...]:
    images_dir, gts_dir = root / "test_images", root / "test_gts"
    if not images_dir.is_dir():
        raise SegcError(f"icdar2015 dataset {root}: no test_images folder")
    if not gts_dir.is_dir():
        raise SegcError(f"icdar2015 dataset {root}: no test_gts folder (the ground truth)")
    samples = []
    for image in _images(images_dir, f"icdar2015 dataset {root}"):
        gt = gts_dir / f"gt_{image.stem}.txt"
        if not gt.is_file():
            raise SegcError(f"icdar2015 dataset {root}: {image.name} has no ground truth test_gts/{gt.name}")
        samples.append(Sample(image.stem, image, boxes=parse_icdar_gt(gt)))
    return tuple(samples)


def parse_icdar_gt(path: Path) -> tuple[TextBox, ...]:
    """icdar2015's ``x1,y1,x2,y2,x3,y3,x4,y4,transcription`` lines (UTF-8, often with a BOM)."""
    boxes = []
    for no, line in enumerate(path.read_text(encoding="utf-8-sig", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(",")
        numbers = []
        for f in fields:
            try:
                numbers.append(float(f))
            except ValueError:
                break
        if len(numbers) < 8:
            raise SegcError(
                f"icdar2015 ground truth {path.name} line {no}: expected 8 coordinates and a transcription, "
                f"got {len(numbers)} number{'s' if len(numbers) != 1 else ''}"
            )
        text = ",".join(fields[8:])
        pts = tuple((numbers[i], numbers[i + 1]) for i in range(0, 8, 2))
        boxes.append(TextBox(pts, dont_care=text.strip() == DONT_CARE))
    return tuple(boxes)


def _unique_stems(samples: tuple[Sample, ...], root: Path) -> None:
    seen: set[str] = set()
    for s in samples:
        if s.stem in seen:
            raise SegcError(f"dataset {root}: two images named {s.stem!r} (output files are named after the stem)")
        seen.add(s.stem)
