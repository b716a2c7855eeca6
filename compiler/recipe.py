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

    def normalise(self, pixels: "Any") -> "Any":
        """Map an NCHW float array of RGB pixels in [0, 255] to the network's input."""
        import numpy as np

        x = np.asarray(pixels, dtype=np.float32)
        if self.channel_order.upper() == "BGR":
            x = x[:, ::-1]
        if self.pixel_scale != 255.0:
            x = x * (self.pixel_scale / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


@dataclass(frozen=True)
class TargetRecipe:
    """The pipeline and options one target should use for this model."""

    passes: tuple[str, ...] | None = None  # None: the target's default pipeline
    options: dict[str, Any] = field(default_factory=dict)  # pass name -> {option: value}
    extra: dict[str, Any] = field(default_factory=dict)  # target-level settings (batch, precision...)


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

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    def for_target(self, target: str) -> TargetRecipe:
        return self.targets.get(target, TargetRecipe())


def get_recipe(name: str) -> Recipe:
    """Look a recipe up by name; raises SegcError listing the known ones."""
    from segc.errors import SegcError

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
