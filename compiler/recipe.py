"""Recipes: what segc knows about one model beyond its graph.

A recipe says how the model's inputs are made (normalisation, channel order, value range),
which shapes and batch sizes the original deployment used, and which passes each target
should run. Recipes are plain data, importable without torch, so `segc compile` can use them
on a machine that never exports.

The exporter writes the recipe name into the ONNX metadata (key ``segc.recipe``) so that a
later `segc compile` finds it without being told.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECIPE_METADATA_KEY = "segc.recipe"


@dataclass(frozen=True)
class ResizeSpec:
    """How a dataset image is resized to the network input (segc data / segc evaluate).

    ``fixed``: every image to ``size`` (H, W), as the Cityscapes guides fed 1024x2048 or
    512x1024. ``keep_ratio``: the ``limit_type`` side ("short" or "long") scaled to
    ``limit_side``, the other by the same factor, then each side rounded up to a multiple of
    ``multiple`` (MhLiao/DB's ic15 test: short side 736, multiples of 32).
    """

    mode: str = "fixed"  # "fixed" | "keep_ratio"
    size: tuple[int, int] | None = None
    multiple: int = 32
    limit_side: int | None = None
    limit_type: str = "short"
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest" (OpenCV's)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of ``height`` x ``width`` is resized to."""
        import math

        if self.mode == "fixed":
            assert self.size is not None
            return self.size
        assert self.limit_side is not None
        side = min(height, width) if self.limit_type == "short" else max(height, width)
        scale = self.limit_side / side
        m = self.multiple
        return (max(m, math.ceil(height * scale / m) * m), max(m, math.ceil(width * scale / m) * m))


@dataclass(frozen=True)
class OutputSpec:
    """What the evaluated output holds: ``logits`` [N,C,h,w] (argmax after upsampling to the
    label size), ``labels`` (argmax inside the graph) or ``probability`` (DB's text map).
    ``name``: which output (default the last one: DeepLabv2's and HRNet-OCR's prediction)."""

    kind: str = "logits"
    name: str | None = None
    align_corners: bool = False  # how logits are upsampled (DeepLabv2: True)


@dataclass(frozen=True)
class InputSpec:
    """How one image input is produced from RGB pixels in [0, 255].

    With ``pixel_scale`` 255 (mmseg style) ``x = (pixels - mean) / std``; with ``pixel_scale``
    1 (PaddleSeg style, mean 0.5) ``x = (pixels / 255 - mean) / std``. ``channel_order`` is
    the order the network expects; BGR models get their channels flipped first.
    """

    name: str
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    pixel_scale: float = 255.0
    channel_order: str = "RGB"  # order the network expects; images are read as RGB
    layout: str = "NCHW"
    resize: ResizeSpec | None = None  # None: the model's static input size

    def normalise(self, pixels: "Any") -> "Any":
        """Map an NCHW float array of RGB pixels in [0, 255] to the network's input."""
        import numpy as np

        x = np.asarray(pixels, dtype=np.float32)
        if self.channel_order.upper() == "BGR":
            x = x[:, ::-1]
        if self.pixel_scale != 255.0:
            x = x / np.float32(255.0 / self.pixel_scale)  # pixels / 255, as the guides wrote it
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


@dataclass(frozen=True)
class TargetRecipe:
    """The pipeline and options one target should use for this model."""

    passes: tuple[str, ...] | None = None  # None: the target's default pipeline
    options: dict[str, Any] = field(default_factory=dict)  # pass name -> {option: value}
    precision: str | None = None  # the build precision unless --precision says otherwise
    # one static build per batch size (the command line's --batch wins), or a batch range
    batch_sizes: tuple[int, ...] = ()
    batch_range: tuple[int, int] | None = None
    # the target's own flags (TargetFlag.dest -> value), read as if given on the command line,
    # which wins: e.g. {"workspace_mb": 15000} for TensorRT
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """Everything segc needs to compile and verify one seed model."""

    name: str
    description: str
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    seed_shape: tuple[int, ...]  # the shape the seed pipeline exported at (N,C,H,W)
    batch_sizes: tuple[int, ...] = (1,)
    shape_range: str | None = None  # ATC syntax, e.g. "input:1,3,640~4096,640~4096"
    opt_shape: str | None = None  # e.g. "input:1,3,1280,1280"
    spatial_multiple: int = 32  # H and W must be multiples of this
    num_classes: int | None = None  # class-logit outputs get argmax agreement
    label_outputs: tuple[str, ...] = ()  # outputs that are label maps (argmax inside)
    # "segmentation" or "text_detection": text detectors are verified on rendered text
    # (segc.text_images), where smooth noise gives them no signal
    task: str = "segmentation"
    targets: dict[str, TargetRecipe] = field(default_factory=dict)
    output: OutputSpec | None = None  # for segc evaluate; None: from task / label_outputs

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def for_target(self, target: str) -> TargetRecipe:
        return self.targets.get(target, TargetRecipe())


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name, or load a ``.toml`` recipe file (segc.recipe_file).

    Raises SegcError listing the known ones."""
    from segc.errors import SegcError

    if name.lower().endswith(".toml"):
        from segc.recipe_file import load_recipe_file

        return load_recipe_file(name)

    known = all_recipes()
    if name not in known:
        raise SegcError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def all_recipes() -> dict[str, Recipe]:
    """All recipes shipped with segc (from segc.models.recipes, which needs no torch)."""
    try:
        from segc.models.recipes import RECIPES
    except ImportError:  # the model zoo is optional for compile
        return {}
    return dict(RECIPES)
