"""What each graph input is for, and a valid value for the inputs that are not data.

Seeded noise is right for an image or a feature map, and wrong for an input that says how
big something is: a Resize ``scales`` of N(0, 1) has negative entries and onnxruntime
refuses the model (``Scale value should be greater than 0``); 39 of the ONNX project's 57
multi-input Resize/GridSample backend cases failed that way. Each input is classified by
the operand it feeds (following Identity/Cast), and shape-like and index operands get a
value derived from the shape of the tensor they act on:

=====================  ===========================================================
operand                value given
=====================  ===========================================================
Resize/Upsample scales 1 for the batch and channel axes, 2 for the others
Resize sizes           the data's shape, spatial axes doubled (needs the data's shape)
Resize roi             [0, ..., 0, 1, ..., 1]: the whole input
Reshape shape          the data's own shape, else [1, ..., 1, -1]
Expand shape, Tile     all ones (a broadcast or tile that changes nothing)
ConstantOfShape        all ones
Slice starts/ends      0 / int64 max (the whole axis); axes 0..k-1; steps 1
TopK k                 1
Gather*/Scatter* index 0 (always in range)
GridSample grid        uniform in [-1, 1] (inside the image)
im_shape, scale_factor the image's H, W / ones (PaddleDetection's detector inputs, by name)
=====================  ===========================================================

An operand whose value needs a shape segc cannot know (``sizes`` of a tensor computed
inside the graph with no static shape) is a usage error naming the input and the fix
(``--verify-inputs data.npz`` with that key). The user's own data always wins.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from segc.errors import SegcError
from segc.onnx_graph import default_opset, is_default_domain, resize_slots


class Role(str, enum.Enum):
    """The operand a graph input feeds; DATA for everything seeded noise is right for."""

    DATA = "data"
    RESIZE_ROI = "roi"
    RESIZE_SCALES = "scales"
    RESIZE_SIZES = "sizes"
    RESHAPE_SHAPE = "reshape shape"
    ONES = "ones"  # Expand shape, Tile repeats, ConstantOfShape shape
    SLICE_STARTS = "slice starts"
    SLICE_ENDS = "slice ends"
    SLICE_AXES = "slice axes"
    SLICE_STEPS = "slice steps"
    TOPK_K = "k"
    INDICES = "indices"
    GRID = "grid"
    IM_SHAPE = "im_shape"
    SCALE_FACTOR = "scale_factor"


# op type -> {input index: role}; see the table in the module docstring. Resize and Upsample
# move their operands between opsets: ``_operand_roles`` asks ``resize_slots``.
_OPERANDS: dict[str, dict[int, Role]] = {
    "Reshape": {1: Role.RESHAPE_SHAPE},
    "Expand": {1: Role.ONES},
    "Tile": {1: Role.ONES},
    "ConstantOfShape": {0: Role.ONES},
    "Slice": {1: Role.SLICE_STARTS, 2: Role.SLICE_ENDS, 3: Role.SLICE_AXES, 4: Role.SLICE_STEPS},
    "TopK": {1: Role.TOPK_K},
    "Gather": {1: Role.INDICES},
    "GatherElements": {1: Role.INDICES},
    "GatherND": {1: Role.INDICES},
    "ScatterElements": {1: Role.INDICES},
    "ScatterND": {1: Role.INDICES},
    "GridSample": {1: Role.GRID},
}
_PASS_THROUGH = frozenset({"Identity", "Cast"})
_BY_NAME = {"im_shape": Role.IM_SHAPE, "scale_factor": Role.SCALE_FACTOR}  # PaddleDetection exports


@dataclass(frozen=True)
class InputRole:
    """One graph input's role; ``data`` is the tensor the operand acts on, ``node`` its consumer."""

    name: str
    role: Role
    op: str = ""
    node: str = ""
    data: str | None = None
    axes: tuple[int, ...] | None = None  # Resize's ``axes`` attribute (opset 18)

    @property
    def what(self) -> str:
        where = f" of {self.op} node {self.node!r}" if self.op else ""
        return f"the {self.role.value} operand{where}" if self.op else f"a {self.role.value} input"


def input_roles(model: onnx.ModelProto, inputs: list[str]) -> dict[str, InputRole]:
    """The role of each name in ``inputs`` (graph inputs), by the first non-data operand it feeds."""
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, i))
    opset = default_opset(model) or 1
    roles: dict[str, InputRole] = {}
    for name in inputs:
        roles[name] = _role_of(name, consumers, opset) or InputRole(name, _BY_NAME.get(name, Role.DATA))
    return roles


def _operand_roles(node: onnx.NodeProto, opset: int) -> dict[int, Role]:
    """{input index: role} of ``node``'s non-data operands at ``opset``."""
    if node.op_type in ("Resize", "Upsample") and is_default_domain(node.domain):
        slots = resize_slots(node.op_type, opset)
        found = {slots.roi: Role.RESIZE_ROI, slots.scales: Role.RESIZE_SCALES, slots.sizes: Role.RESIZE_SIZES}
        return {index: role for index, role in found.items() if index is not None}
    return _OPERANDS.get(node.op_type, {})


def _role_of(name: str, consumers: dict[str, list[tuple[onnx.NodeProto, int]]], opset: int) -> InputRole | None:
    seen: set[str] = set()
    frontier = [name]
    while frontier:
        tensor = frontier.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node, index in consumers.get(tensor, []):
            if node.op_type in _PASS_THROUGH:
                frontier.extend(node.output)
                continue
            role = _operand_roles(node, opset).get(index)
            if role is not None:
                axes = next((tuple(a.ints) for a in node.attribute if a.name == "axes"), None)
                return InputRole(name, role, node.op_type, node.name or f"-> {node.output[0]}", node.input[0], axes)
    return None


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Fully static shapes ONNX shape inference finds for intermediate tensors (best effort)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 - inference is a help here, not a requirement
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def derive_value(role: InputRole, shape: tuple[int, ...], dtype: np.dtype, data_shape: tuple[int, ...] | None,
                 image_shape: tuple[int, ...] | None, rng: np.random.Generator) -> np.ndarray | None:
    """A valid value of ``shape`` for a non-data input, or None when it needs a shape segc lacks."""
    n = int(np.prod(shape)) if shape else 1
    if role.role is Role.RESIZE_SCALES:
        rank = len(data_shape) if data_shape else n
        value: Sequence[float] = [
            1.0 if (role.axes is None and n == rank and i < min(2, rank - 1)) else 2.0 for i in range(n)
        ]
    elif role.role is Role.RESIZE_SIZES:
        if data_shape is None:
            return None
        axes = role.axes if role.axes is not None else tuple(range(len(data_shape)))
        if len(axes) != n:
            return None
        value = [data_shape[a] if (role.axes is None and i < min(2, len(data_shape) - 1)) else 2 * data_shape[a]
                 for i, a in enumerate(axes)]
    elif role.role is Role.RESIZE_ROI:
        value = [0.0] * (n // 2) + [1.0] * (n - n // 2)
    elif role.role is Role.RESHAPE_SHAPE:
        value = list(data_shape) if data_shape and len(data_shape) == n else [1] * (n - 1) + [-1]
    elif role.role in (Role.ONES, Role.SLICE_STEPS, Role.TOPK_K, Role.SCALE_FACTOR):
        value = [1] * n
    elif role.role is Role.SLICE_STARTS or role.role is Role.INDICES:
        value = [0] * n
    elif role.role is Role.SLICE_ENDS:
        value = [np.iinfo(np.int64).max if dtype == np.int64 else np.iinfo(np.int32).max] * n
    elif role.role is Role.SLICE_AXES:
        value = list(range(n))
    elif role.role is Role.GRID:
        return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
    elif role.role is Role.IM_SHAPE:
        if image_shape is None or len(image_shape) != 4 or not shape or shape[-1] != 2:
            return None
        return np.broadcast_to(np.array(image_shape[2:], dtype), shape).copy()
    else:
        return None
    return np.asarray(value).astype(dtype).reshape(shape)


def underivable(role: InputRole) -> SegcError:
    """The one-line usage error for an input segc cannot give a valid value."""
    return SegcError(f"input {role.name!r} is {role.what}, and segc cannot derive a valid value for it "
                     f"(the shape it acts on is unknown); give it with --verify-inputs data.npz "
                     f"(an array under key {role.name!r}, plus one per other input)")
