"""What the verifier feeds a model: which shapes, and which values.

Shapes. A static model is checked at its one shape. A dynamic one is checked at the minimum
and optimum of its range and at one more shape inside it that is neither (so a graph that
only works at "round" sizes is caught; on a range's ``/M`` grid, an odd multiple of M, since
sizes off the grid are outside what the build accepts), all within a pixel budget: a 4096x4096 DBNet input
would take minutes per run on a CPU and prove no more than 672x704 does.

Values. Seeded random images in the model's real value range: smooth pixel fields in
[0, 255] (coarse noise upsampled plus fine noise, closer to photographs than white noise, so
argmax maps are not a coin toss at every pixel), normalised as the model's recipe says. A
text detector (recipe task ``text_detection``) gets pages of rendered words on that
textured background instead (segc.text_images). Inputs that are not images (Resize scales,
Reshape shapes, indices...) get valid values from segc.input_roles. Or the user's own data,
which always wins: ``.npy`` (one input), ``.npz`` (by input name) or a folder of images,
preprocessed with the recipe's normalisation.
"""

from __future__ import annotations

import zipfile
import zlib

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from segc.errors import SegcError, first_line
from segc.onnx_graph import input_dims, real_inputs
from segc.input_roles import InputRole, Role, derive_value, input_roles, static_shapes, underivable
from segc.recipe import InputSpec, Recipe
from segc.shapes import ShapeRange
from segc.text_images import text_pixels

DEFAULT_PIXEL_BUDGET = 2_200_000  # covers the seeds' 1x3x1024x2048 in one run
DEFAULT_SPATIAL = (256, 256)  # for a dynamic model with no range, recipe or user data
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

Shape = tuple[int, ...]
ShapeSet = dict[str, Shape]  # input name -> concrete shape


class Feed:
    """One set of inputs: a label for reports and the arrays by input name.

    The arrays may be made on first use (``make``, with their ``shapes`` known up front): a
    check on synthesized boundary inputs (segc.boundary_synth) needs only the shapes, and
    rendering three pages of text for DBNet took 0.3 s of a 2.6 s compile."""

    __slots__ = ("label", "_arrays", "_make", "_shapes")

    def __init__(self, label: str, arrays: dict[str, np.ndarray] | None = None, *, shapes: ShapeSet | None = None,
                 make: Callable[[], dict[str, np.ndarray]] | None = None) -> None:
        if arrays is None and (make is None or shapes is None):
            raise ValueError("a Feed needs its arrays, or their shapes and a way to make them")
        self.label = label
        self._arrays = arrays
        self._make = make
        self._shapes = dict(shapes) if shapes is not None else None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            assert self._make is not None
            self._arrays, self._make = self._make(), None
        return self._arrays

    @property
    def shapes(self) -> ShapeSet:
        if self._shapes is None:
            self._shapes = {k: tuple(int(d) for d in v.shape) for k, v in self.arrays.items()}
        return self._shapes

    @property
    def shape_key(self) -> tuple[tuple[str, Shape], ...]:
        return tuple(sorted(self.shapes.items()))

    def __repr__(self) -> str:
        return f"Feed({self.label!r}, {'made' if self._arrays is not None else 'not made yet'})"


def _pixels(shape: Shape) -> int:
    return int(np.prod(shape[:1] + shape[2:])) if len(shape) >= 3 else int(np.prod(shape))


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, (value // multiple) * multiple)


def _shapes_for_input(dims: list[int | str | None], rng: ShapeRange | None, recipe: Recipe | None,
                      multiple: int, budget: int) -> list[Shape]:
    if all(isinstance(d, int) for d in dims):
        return [tuple(d for d in dims if isinstance(d, int))]
    if rng is not None:
        shapes = [rng.min]
        if rng.opt != rng.min:
            shapes.append(rng.opt)
        # one more shape: step past the minimum by different amounts in each dynamic axis; on a
        # range's /M grid, an odd multiple of M (a size the grid allows but no power of two hits)
        other = list(rng.min)
        for k, axis in enumerate(a for a in rng.dynamic_axes if a >= 2):
            step = rng.step(axis)
            if step > 1:
                q = rng.min[axis] // step + 1 + k
                q += 1 - q % 2  # odd
                while q * step > rng.max[axis] and q > 1:
                    q -= 2
                other[axis] = max(rng.min[axis], q * step)
            else:
                other[axis] = min(rng.max[axis], rng.min[axis] + multiple * (k + 1))
        if tuple(other) not in shapes:
            shapes.append(tuple(other))
        kept = [shapes[0]] + [s for s in shapes[1:] if _pixels(s) <= budget]
        return kept
    # no range: the recipe's seed shape where it fits, else a default, plus a second shape
    base: list[int] = []
    seed = recipe.seed_shape if recipe and len(recipe.seed_shape) == len(dims) else None
    for i, d in enumerate(dims):
        if isinstance(d, int):
            base.append(d)
        elif i == 0:
            base.append(1)
        elif seed is not None:
            base.append(seed[i])
        else:
            base.append(DEFAULT_SPATIAL[min(i - 2, 1)] if i >= 2 else 1)
    while _pixels(tuple(base)) > budget and len(base) >= 4:
        base[2] = _round_to(base[2] // 2, multiple)
        base[3] = _round_to(base[3] // 2, multiple)
    shapes = [tuple(base)]
    second = list(base)
    for k, i in enumerate(i for i, d in enumerate(dims) if not isinstance(d, int) and i >= 2):
        second[i] = base[i] + multiple * (k + 1)
    if dims and not isinstance(dims[0], int):
        second[0] = 2  # a dynamic batch is checked above 1 too: batched builds must be right
    if tuple(second) != tuple(base) and _pixels(tuple(second)) <= budget:
        shapes.append(tuple(second))
    return shapes


def verification_shapes(model: onnx.ModelProto, ranges: dict[str, ShapeRange], recipe: Recipe | None = None,
                        budget: int = DEFAULT_PIXEL_BUDGET) -> list[ShapeSet]:
    """The input shapes a model state is checked at (see module docstring)."""
    multiple = recipe.spatial_multiple if recipe else 32
    per_input: dict[str, list[Shape]] = {}
    for vi in real_inputs(model):
        dims = input_dims(vi)
        rng = ranges.get(vi.name)
        if rng is not None and len(rng.min) != len(dims):
            raise SegcError(f"--input-shape {rng.atc()!r} has {len(rng.min)} dims, input {vi.name!r} has {len(dims)}")
        if rng is not None and all(isinstance(d, int) for d in dims) and rng.is_static:
            per_input[vi.name] = [rng.min]  # a static override of a static input: trust the user
            continue
        per_input[vi.name] = _shapes_for_input(dims, rng, recipe, multiple, budget)
    # a model without inputs (a constant generator) is still checked: once, with nothing to feed
    count = max((len(v) for v in per_input.values()), default=1)
    sets = [{name: shapes[min(i, len(shapes) - 1)] for name, shapes in per_input.items()} for i in range(count)]
    _refuse_unrunnable(sets)
    return sets


MAX_FEED_BYTES = 2 << 30  # inputs alone over 2 GiB: activations would be many times that


def _refuse_unrunnable(sets: list[ShapeSet]) -> None:
    """A static shape too large to run on this machine is a usage error, not an OOM kill later."""
    for shapes in sets:
        total = sum(4 * int(np.prod(shape, dtype=np.float64)) for shape in shapes.values())
        if total > MAX_FEED_BYTES:
            listed = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
            raise SegcError(f"verifying at {listed} needs {total / 2**30:.0f} GiB for the inputs alone: "
                            "give a smaller --input-shape (or a range), or --verify none")


def _elem_type(vi: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


def smooth_pixels(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """An NCHW float32 field of pixel values in [0, 255] with image-like spatial structure."""
    n, c, h, w = shape
    ch, cw = max(1, h // 16), max(1, w // 16)
    coarse = rng.uniform(0, 255, size=(n, c, ch, cw)).astype(np.float32)
    rows = np.minimum((np.arange(h) * ch) // h, ch - 1)
    cols = np.minimum((np.arange(w) * cw) // w, cw - 1)
    field = coarse[:, :, rows][:, :, :, cols]
    field += rng.normal(0, 12, size=shape).astype(np.float32)
    return np.clip(field, 0, 255)


def random_feed(
    model: onnx.ModelProto, shapes: ShapeSet, recipe: Recipe | None, seed: int, *, text: bool = False
) -> Feed:
    """Seeded inputs for one shape set, in each input's real value range.

    Image inputs are smooth photo-like fields, or pages of rendered words for a text
    detector (its recipe says so, or ``text``: the Verifier found the model silent on photos).

    Inputs that feed shape-like or index operands get valid values (segc.input_roles); one
    segc cannot derive is a usage error naming it and how to feed it (raised when the arrays
    are first read: they are made on first use, the label and shapes now).
    """
    inputs = real_inputs(model)
    roles = input_roles(model, [vi.name for vi in inputs])
    texts = text or (recipe is not None and recipe.task == "text_detection")
    kind = "random"
    for vi in inputs:
        shape = shapes[vi.name]
        if roles[vi.name].role is Role.DATA and len(shape) == 4 and shape[1] == 3 and _elem_type(vi).kind == "f" \
                and texts:
            kind = "text"
    label = ";".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
    # what the arrays need, and nothing of the model (a Feed lives as long as the Verifier)
    typed = [(vi.name, _elem_type(vi)) for vi in inputs]
    data_shapes = {r.data: shapes[r.data] for r in roles.values() if r.data and r.data in shapes}
    if any(r.role is not Role.DATA and r.data and r.data not in data_shapes for r in roles.values()):
        data_shapes = {**static_shapes(model), **data_shapes}
    return Feed(f"{kind}[{label}]", shapes={vi.name: tuple(shapes[vi.name]) for vi in inputs},
                make=lambda: _random_arrays(typed, roles, dict(shapes), data_shapes, recipe, seed, texts))


def _random_arrays(inputs: list[tuple[str, np.dtype]], roles: dict[str, InputRole], shapes: ShapeSet,
                   data_shapes: dict[str, Shape], recipe: Recipe | None, seed: int,
                   text: bool) -> dict[str, np.ndarray]:
    """The arrays :func:`random_feed` promises (see there)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    image = next(
        (shapes[name] for name, _ in inputs if roles[name].role is Role.DATA and len(shapes[name]) == 4), None
    )
    for name, dtype in inputs:
        shape = shapes[name]
        spec = recipe.input(name) if recipe else None
        role = roles[name]
        if role.role is not Role.DATA:
            data_shape = data_shapes.get(role.data) if role.data else None
            value = derive_value(role, shape, dtype, data_shape, image, rng)
            if value is None:
                raise underivable(role)
            arrays[name] = value
            continue
        if len(shape) == 4 and shape[1] == 3 and dtype.kind == "f":
            spec = spec or InputSpec(name=name)  # ImageNet normalisation: the common case
            pixels = smooth_pixels(rng, shape)
            if text:
                pixels = text_pixels(rng, shape, background=pixels)  # what a text detector responds to
            arrays[name] = spec.normalise(pixels).astype(dtype)
        elif dtype.kind == "f":
            arrays[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            arrays[name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            arrays[name] = np.zeros(shape, dtype=dtype)
    return arrays


def load_user_feeds(path: str | Path, model: onnx.ModelProto, recipe: Recipe | None,
                    default_shapes: ShapeSet | None, limit: int = 4) -> list[Feed]:
    """Feeds from ``.npy`` / ``.npz`` / a folder of images (preprocessed by the recipe)."""
    path = Path(path)
    inputs = real_inputs(model)
    names = [vi.name for vi in inputs]
    if not path.exists():
        raise SegcError(f"--verify-inputs {path}: no such file or folder")
    if path.is_dir():
        return _image_feeds(path, inputs, recipe, default_shapes, limit)
    try:
        if path.suffix == ".npy":
            if len(names) != 1:
                raise SegcError(
                    f"--verify-inputs {path}: a .npy gives one array but the model has inputs {names}; use .npz"
                )
            arrays = {names[0]: np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        else:
            raise SegcError(f"--verify-inputs {path}: expected a .npy, a .npz or a folder of images")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # empty or corrupt files
        raise SegcError(f"--verify-inputs {path}: cannot read it: {first_line(exc)}") from None
    missing = [n for n in names if n not in arrays]
    if missing:
        raise SegcError(f"--verify-inputs {path}: no array for input(s) {missing}; it has {sorted(arrays)}")
    feed = {vi.name: np.asarray(arrays[vi.name]).astype(_elem_type(vi)) for vi in inputs}
    return [Feed(label=path.name, arrays=feed)]


def _image_feeds(folder: Path, inputs: list[onnx.ValueInfoProto], recipe: Recipe | None,
                 default_shapes: ShapeSet | None, limit: int) -> list[Feed]:
    from PIL import Image

    if len(inputs) != 1:
        raise SegcError(f"--verify-inputs {folder}: images can feed a model with one input, this one has {len(inputs)}")
    vi = inputs[0]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise SegcError(f"--verify-inputs {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
    if not default_shapes or vi.name not in default_shapes:
        raise SegcError(f"--verify-inputs {folder}: cannot tell which size to resize images to; give --input-shape")
    n, _, h, w = default_shapes[vi.name]
    spec = (recipe.input(vi.name) if recipe else None) or InputSpec(name=vi.name)
    feeds = []
    for f in files:
        try:
            img = Image.open(f).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        except OSError as exc:
            raise SegcError(f"--verify-inputs {f}: not a readable image: {exc}") from None
        pixels = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None]
        batch = np.repeat(pixels, n, axis=0)
        feeds.append(Feed(label=f.name, arrays={vi.name: spec.normalise(batch).astype(_elem_type(vi))}))
    return feeds
