"""Regions whose check at one input shape stands for every shape (``--verify each``).

Why: a boundary check runs the changed region and the graph before's nodes for it at every
shape the model is verified at. On dbnet_r50 for Ascend, onnx-simplifier folds a
BatchNormalization into the ConvTranspose before it; both sides of that region at
1x3x1280x1280 (a 64-channel 320x320 map upsampled to 640x640) cost 0.35 s, at 672x704
another 0.10 s, about a fifth of the whole ``--verify each`` compile, to check again a
function already checked at 640x640.

A region is *shape-blind* when every node computes each output position from a window of
its inputs by one rule for every position, where only the window's distance to each border
(up to the kernel's reach) changes what it reads, never the tensor's size::

    size 160:  |B B i i i i ... i i i i B B|      B: a border pattern, i: interior
    size 320:  |B B i i i i ... ... ... i i i i B B|

The nodes allowed: elementwise ops (constants broadcast over channels only), inference
BatchNormalization, channel Concat, and windows with explicit or no padding that step by 1
(Conv, MaxPool, AveragePool) or scatter by any stride (ConvTranspose). Then a difference
between before and after at a position depends only on the values in its window and on its
border pattern, and an input at least twice the region's reach plus one in every spatial dim
has every border pattern and interior positions: random values there exercise every
position of a larger shape. Not blind: reading a shape (Shape, Resize, Reshape, Expand),
statistics over space (GlobalAveragePool, InstanceNormalization, Softmax), padding computed
from the size (``auto_pad`` SAME_*), windows striding by more than 1 (where the last window
falls depends on the size modulo the stride), ``ceil_mode``, a constant that varies along a
spatial dim (a positional table), and any input made from a shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import onnx

from segc.onnx_graph import is_default_domain

ELEMENTWISE = frozenset({
    "Abs", "Add", "Clip", "Div", "Elu", "Erf", "Exp", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "Log",
    "Max", "Min", "Mul", "Neg", "Pow", "PRelu", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt", "Sub",
    "Tanh",
})
WINDOWS = frozenset({"Conv", "MaxPool", "AveragePool"})  # stride 1 only
SIZE_FREE_PADDING = frozenset({"NOTSET", "VALID"})


def reach(model: onnx.ModelProto, nodes: Iterable[int], constants: dict[str, list[int]] | None = None) -> int | None:
    """The region's reach in positions (1 + what its windows add up to, scaled by its
    ConvTranspose strides) when ``nodes`` of ``model`` are shape-blind, else None.
    ``constants``: the dims of other inputs that hold the same value at every shape."""
    g = model.graph
    consts = {t.name: list(t.dims) for t in g.initializer} | (constants or {})
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = list(node.attribute[0].t.dims)
    spread, scale = 0, 1
    for i in nodes:
        node = g.node[i]
        if not is_default_domain(node.domain):
            return None
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Constant":
            continue
        if op in ELEMENTWISE:
            if not all(_channel_only(consts[n]) for n in node.input if n in consts):
                return None
        elif op == "BatchNormalization":
            if len(node.output) != 1 or attrs.get("training_mode", 0):
                return None
        elif op == "Concat":
            if attrs.get("axis") != 1:
                return None
        elif op in WINDOWS or op == "ConvTranspose":
            kernel = _kernel(node, attrs, consts)
            if kernel is None or attrs.get("auto_pad", b"NOTSET").decode() not in SIZE_FREE_PADDING:
                return None
            strides = list(attrs.get("strides", [1] * len(kernel)))
            if op == "ConvTranspose":
                if "output_shape" in attrs:
                    return None
                scale *= max(strides, default=1)
            elif any(s != 1 for s in strides) or attrs.get("ceil_mode", 0):
                return None
            dilations = list(attrs.get("dilations", [1] * len(kernel)))
            spread += max(((k - 1) * d for k, d in zip(kernel, dilations, strict=True)), default=0)
        else:
            return None
    return (1 + spread) * scale


def big_enough(shapes: Iterable[tuple[int, ...]], region_reach: int) -> bool:
    """Whether inputs of ``shapes`` have every border pattern and interior positions: each
    spatial dim (past batch and channel) at least twice the reach plus one."""
    least = 2 * region_reach + 1
    return all(d >= least for s in shapes if len(s) >= 3 for d in s[2:])


def _channel_only(dims: list[int]) -> bool:
    """A constant an elementwise op may broadcast in a shape-blind region: a scalar, or one
    that varies only along what lines up with the channel axis of an N-C-spatial tensor."""
    if math.prod(dims) <= 1:
        return True
    return len(dims) >= 3 and all(d == 1 for d in dims[-2:]) and math.prod(dims) == max(dims)


def _kernel(node: onnx.NodeProto, attrs: dict[str, object], consts: dict[str, list[int]]) -> list[int] | None:
    if "kernel_shape" in attrs:
        return [int(k) for k in attrs["kernel_shape"]]  # type: ignore[attr-defined]
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in consts:
        return consts[node.input[1]][2:]
    return None
