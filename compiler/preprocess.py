"""A recipe's preprocessing of one dataset image: read, resize, normalise, NCHW.

One function serves ``segc data`` (the files a device runner reads) and ``segc evaluate``
(the onnxruntime run), so the figure a user signs off on and the bytes the device gets come
from the same code. Images are read with OpenCV, as the seed pipelines did (MhLiao/DB,
mmcv), converted to RGB, resized with OpenCV's interpolation on the uint8 image, then
normalised by ``InputSpec.normalise`` (channel order, scale, mean, std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from segc.errors import SegcError
from segc.onnx_graph import real_inputs
from segc.recipe import InputSpec, Recipe

_CV2_INTERP = {"bilinear": 1, "bicubic": 2, "nearest": 0}  # cv2.INTER_LINEAR / INTER_CUBIC / INTER_NEAREST


@dataclass(frozen=True)
class ModelInput:
    """The model input a dataset is prepared for, and how."""

    name: str
    spec: InputSpec
    static_hw: tuple[int, int] | None  # the model's own H, W when they are fixed numbers
    dtype: np.dtype
    static_batch: int | None = None  # the model's N when it is a fixed number

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size becomes: the recipe's resize, else the model's."""
        if self.spec.resize is not None:
            return self.spec.resize.target_size(height, width)
        if self.static_hw is None:
            raise SegcError(f"input {self.name!r} has dynamic H and W and the recipe gives no resize; "
                            "give --recipe with [input] resize")
        return self.static_hw


@dataclass(frozen=True)
class Prepared:
    """One preprocessed image: ``array`` is [1, 3, H, W] in the model's input dtype."""

    array: np.ndarray
    original_hw: tuple[int, int]

    @property
    def input_hw(self) -> tuple[int, int]:
        return (int(self.array.shape[2]), int(self.array.shape[3]))


def model_input(model: onnx.ModelProto, recipe: Recipe) -> ModelInput:
    """The image input of ``model`` and the recipe's spec for it."""
    from onnx import helper

    inputs = real_inputs(model)
    if not inputs:
        raise SegcError("the model has no inputs")
    spec = next((s for s in recipe.inputs if any(vi.name == s.name for vi in inputs)), None)
    if spec is None:
        names = ", ".join(vi.name for vi in inputs)
        raise SegcError(f"recipe {recipe.name!r} describes input(s) {', '.join(s.name for s in recipe.inputs)}, "
                        f"but the model's inputs are {names}")
    vi = next(v for v in inputs if v.name == spec.name)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] not in (None, 3):
        raise SegcError(f"input {spec.name!r} is not an NCHW image input (shape {dims})")
    static = (dims[2], dims[3]) if dims[2] and dims[3] else None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    if dtype not in (np.float32, np.float16):
        raise SegcError(f"input {spec.name!r} is {dtype}; segc prepares float32 or float16 images")
    return ModelInput(spec.name, spec, static, dtype, dims[0] or None)


def read_rgb(path: Path) -> np.ndarray:
    """HWC uint8 RGB; SegcError when the file is not an image OpenCV reads."""
    import cv2

    data = np.fromfile(str(path), np.uint8)  # imdecode: non-ASCII paths work too
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise SegcError(f"{path}: not an image OpenCV can read")
    return np.ascontiguousarray(img[:, :, ::-1])


def preprocess(path: Path, target: ModelInput) -> Prepared:
    import cv2

    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    th, tw = target.size_for(h, w)
    interp = _CV2_INTERP[target.spec.resize.interpolation if target.spec.resize else "bilinear"]
    if (th, tw) != (h, w):
        rgb = cv2.resize(rgb, (tw, th), interpolation=interp)
    x = target.spec.normalise(rgb.transpose(2, 0, 1)[None].astype(np.float32))
    return Prepared(np.ascontiguousarray(x.astype(target.dtype)), (h, w))


def require_data_extra() -> None:
    """segc data / evaluate need the ``data`` extra; say so in one line instead of a traceback."""
    import importlib.util

    missing = [m for m in ("cv2", "pyclipper", "shapely") if importlib.util.find_spec(m) is None]
    if missing:
        raise SegcError(f"this command needs {', '.join(missing)}: pip install 'segc[data]'")


def recipe_for(model: onnx.ModelProto, name: str | None) -> Recipe:
    """``--recipe`` (a zoo name or a .toml file), else the one in the model's metadata."""
    from segc.recipe import RECIPE_METADATA_KEY, get_recipe

    if name:
        return get_recipe(name)
    meta = {p.key: p.value for p in model.metadata_props}
    if RECIPE_METADATA_KEY in meta:
        return get_recipe(meta[RECIPE_METADATA_KEY])
    raise SegcError("the model names no recipe in its metadata; give --recipe NAME or --recipe FILE.toml")
