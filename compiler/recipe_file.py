"""Recipes from TOML files: ``--recipe FILE.toml`` for a model segc's zoo does not know.

A zoo recipe is Python data (segc.models.recipes); a user's model needs the same facts
(how its inputs are made, what its output holds) without writing Python. The file maps onto
the same ``Recipe`` / ``InputSpec`` so compile, data and evaluate read one kind of object::

    task = "segmentation"            # or "text_detection"
    num_classes = 19                 # optional
    [input]
    name = "x"
    mean = [123.675, 116.28, 103.53] # per channel, after dividing by pixel_scale
    std = [58.395, 57.12, 57.375]
    pixel_scale = 1                  # 255: pixels / 255 first (PaddleSeg, HRNet)
    channel_order = "rgb"            # the order the network expects
    resize = "fixed"                 # with size = [H, W]; or "keep_ratio" with
    size = [1024, 2048]              #   multiple = 32, limit_side = 736 (short side)
    [output]
    kind = "labels"                  # "logits" | "labels" | "probability"

Every mistake is one line naming the file and the key (segc's exit-2 contract).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Callable

from segc.errors import SegcError, first_line
from segc.recipe import InputSpec, OutputSpec, Recipe, ResizeSpec

TASKS = ("segmentation", "text_detection")
KINDS = ("logits", "labels", "probability")
_TOP = {"name", "description", "task", "num_classes", "input", "output"}
_INPUT = {"name", "mean", "std", "pixel_scale", "channel_order", "resize", "size", "multiple", "limit_side",
          "limit_type", "interpolation"}
_OUTPUT = {"kind", "name", "align_corners"}


def load_recipe_file(path: str | Path) -> Recipe:
    """Read and validate a recipe file; raises SegcError with one line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise SegcError(f"recipe {path}: no such file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SegcError(f"recipe {path}: not valid TOML: {first_line(exc)}") from None
    return recipe_from_dict(data, source=str(path), default_name=path.stem)


def recipe_from_dict(data: dict[str, Any], *, source: str, default_name: str) -> Recipe:
    def fail(msg: str) -> SegcError:
        return SegcError(f"recipe {source}: {msg}")

    _unknown(data, _TOP, "", fail)
    task = data.get("task")
    if task not in TASKS:
        raise fail(f"task must be one of {', '.join(repr(t) for t in TASKS)}, got {task!r}")
    inp = data.get("input")
    if not isinstance(inp, dict):
        raise fail("missing [input] table")
    _unknown(inp, _INPUT, "input.", fail)
    out = data.get("output", {})
    if not isinstance(out, dict):
        raise fail("[output] must be a table")
    _unknown(out, _OUTPUT, "output.", fail)

    name = inp.get("name")
    if not isinstance(name, str) or not name:
        raise fail("input.name must be the model's input name (a string)")
    mean = _triple(inp, "mean", (0.0, 0.0, 0.0), fail)
    std = _triple(inp, "std", (1.0, 1.0, 1.0), fail)
    if any(v == 0 for v in std):
        raise fail("input.std must not contain 0")
    scale = inp.get("pixel_scale", 1)
    if not _number(scale) or scale <= 0:
        raise fail(f"input.pixel_scale must be a positive number, got {scale!r}")
    order = inp.get("channel_order", "rgb")
    if not isinstance(order, str) or order.lower() not in ("rgb", "bgr"):
        raise fail(f"input.channel_order must be \"rgb\" or \"bgr\", got {order!r}")
    resize = _resize(inp, fail)

    kind = out.get("kind", {"text_detection": "probability"}.get(task, "logits"))
    if kind not in KINDS:
        raise fail(f"output.kind must be one of {', '.join(repr(k) for k in KINDS)}, got {kind!r}")
    if task == "text_detection" and kind != "probability":
        raise fail("output.kind must be \"probability\" for task \"text_detection\"")
    out_name = out.get("name")
    if out_name is not None and not isinstance(out_name, str):
        raise fail("output.name must be a string")
    align = out.get("align_corners", False)
    if not isinstance(align, bool):
        raise fail("output.align_corners must be true or false")

    classes = data.get("num_classes", 19 if task == "segmentation" else None)
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise fail(f"num_classes must be a positive integer, got {classes!r}")
    # TOML's pixel_scale divides the pixels; InputSpec's is the value range (x * scale / 255)
    spec = InputSpec(name=name, mean=mean, std=std, pixel_scale=255.0 / float(scale),
                     channel_order=order.upper(), resize=resize)
    # the shape compile verifies a dynamic model at when no range is given
    size = resize.target_size(resize.limit_side or 1, resize.limit_side or 1) if resize else (512, 512)
    return Recipe(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", f"recipe file {source}")),
        inputs=(spec,),
        output_names=(out_name,) if out_name else (),
        seed_shape=(1, 3, *size),
        spatial_multiple=resize.multiple if resize else 1,
        num_classes=classes if task == "segmentation" else None,
        label_outputs=(out_name,) if kind == "labels" and out_name else (),
        task=task,
        output=OutputSpec(kind=kind, name=out_name, align_corners=align),
    )


def _resize(inp: dict[str, Any], fail: Callable[[str], SegcError]) -> ResizeSpec | None:
    mode = inp.get("resize")
    interp = inp.get("interpolation", "bilinear")
    if interp not in ("bilinear", "bicubic", "nearest"):
        raise fail(f"input.interpolation must be \"bilinear\", \"bicubic\" or \"nearest\", got {interp!r}")
    if mode is None:
        for key in ("size", "multiple", "limit_side"):
            if key in inp:
                raise fail(f"input.{key} needs input.resize")
        return None
    if mode == "fixed":
        size = inp.get("size")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise fail(f"input.size must be [H, W] of positive integers for resize = \"fixed\", got {size!r}")
        return ResizeSpec(mode="fixed", size=(size[0], size[1]), interpolation=interp)
    if mode == "keep_ratio":
        multiple = inp.get("multiple", 32)
        limit = inp.get("limit_side")
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise fail(f"input.multiple must be a positive integer, got {multiple!r}")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise fail(f"input.limit_side must be a positive integer for resize = \"keep_ratio\", got {limit!r}")
        limit_type = inp.get("limit_type", "short")
        if limit_type not in ("short", "long"):
            raise fail(f"input.limit_type must be \"short\" or \"long\", got {limit_type!r}")
        return ResizeSpec(mode="keep_ratio", multiple=multiple, limit_side=limit, limit_type=limit_type,
                          interpolation=interp)
    raise fail(f"input.resize must be \"fixed\" or \"keep_ratio\", got {mode!r}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _triple(
    inp: dict[str, Any], key: str, default: tuple[float, float, float], fail: Callable[[str], SegcError]
) -> tuple[float, float, float]:
    v = inp.get(key, list(default))
    if not isinstance(v, list) or len(v) != 3 or not all(_number(x) for x in v):
        raise fail(f"input.{key} must be 3 numbers (one per channel), got {v!r}")
    return (float(v[0]), float(v[1]), float(v[2]))


def _unknown(table: dict[str, Any], known: set[str], prefix: str, fail: Callable[[str], SegcError]) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise fail(f"unknown key {prefix}{extra[0]} (known: {', '.join(sorted(known))})")
