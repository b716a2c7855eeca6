"""Shape-analysis handlers for spatial ops: convolution, pooling, padding, depth/space moves, Resize/Upsample."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import onnx_graphsurgeon as gs
from segc.onnx_graph import is_absent
from segc.passes._shape_expr import ShapeAnalysis
from segc.passes._shape_table import HANDLERS
from segc.passes._sym_poly import (
    Poly,
    SymValue,
    as_int,
)


def _conv_like(sa: ShapeAnalysis, node: gs.Node, spatial: Sequence[Poly], kernel: Sequence[int]) -> list[Poly] | None:
    n = len(spatial)
    strides = list(node.attrs.get("strides", [1] * n))
    dil = list(node.attrs.get("dilations", [1] * n))
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    out = []
    for i, d in enumerate(spatial):
        k_eff = dil[i] * (kernel[i] - 1) + 1
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append((d * Fraction(1, strides[i])).ceil())
            continue
        span = d - k_eff if auto == "VALID" else d + pads[i] + pads[i + n] - k_eff
        q = span * Fraction(1, strides[i])
        if ceil_mode and not q.is_integer_valued():
            return None  # ceil_mode's "last window must start inside" rule is not modelled
        out.append((q.ceil() if ceil_mode else q.floor()) + 1)
    return out


@HANDLERS.register("Conv", "DeformConv")
def conv(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    w = sa.shape(node.inputs[1])
    if s is None or w is None or len(s) < 3:
        sa.record(node.outputs[0], None, why=f"Conv {node.name!r} input rank unknown")
        return
    kernel = node.attrs.get("kernel_shape") or [as_int(d) for d in w[2:]]
    if any(k is None for k in kernel):
        sa.record(node.outputs[0], None)
        return
    spatial = _conv_like(sa, node, s[2:], kernel)
    sa.record(node.outputs[0], None if spatial is None else (s[0], w[0], *spatial))


@HANDLERS.register("ConvTranspose")
def conv_transpose(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    w = sa.shape(node.inputs[1])
    if s is None or w is None:
        sa.record(node.outputs[0], None)
        return
    n = len(s) - 2
    group = int(node.attrs.get("group", 1))
    channels = w[1] * group
    if "output_shape" in node.attrs:
        sa.record(node.outputs[0], (s[0], channels, *(Poly.const(d) for d in node.attrs["output_shape"][-n:])))
        return
    kernel = node.attrs.get("kernel_shape") or [as_int(d) for d in w[2:]]
    strides = list(node.attrs.get("strides", [1] * n))
    dil = list(node.attrs.get("dilations", [1] * n))
    pads = list(node.attrs.get("pads", [0] * (2 * n)))
    opad = list(node.attrs.get("output_padding", [0] * n))
    auto = node.attrs.get("auto_pad", "NOTSET")
    out = []
    for i, d in enumerate(s[2:]):
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out.append(d * strides[i])
        else:
            out.append(strides[i] * (d - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - pads[i] - pads[i + n])
    sa.record(node.outputs[0], (s[0], channels, *out))


POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@HANDLERS.register(*POOL_OPS)
def pool(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None or "kernel_shape" not in node.attrs:
        sa.record(node.outputs[0], None)
        return
    spatial = _conv_like(sa, node, s[2:], list(node.attrs["kernel_shape"]))
    shape = None if spatial is None else (s[0], s[1], *spatial)
    for out in node.outputs:
        sa.record(out, shape)


@HANDLERS.register("Pad")
def pad(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None)
        return
    pads = node.attrs.get("pads") if sa.opset < 11 else sa.ints(node.inputs[1])
    if pads is None:
        sa.record(node.outputs[0], None)
        return
    axes = list(range(len(s)))
    if len(node.inputs) > 3 and not is_absent(node.inputs[3]):
        ax = sa.ints(node.inputs[3])
        if ax is None:
            sa.record(node.outputs[0], None)
            return
        axes = [a + len(s) if a < 0 else a for a in ax]
    n = len(axes)
    out = list(s)
    for i, a in enumerate(axes):
        out[a] = s[a] + pads[i] + pads[i + n]
    sa.record(node.outputs[0], tuple(out))


@HANDLERS.register("DepthToSpace")
def depth_to_space(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    bs = int(node.attrs.get("blocksize", 1))
    c = None if s is None else s[1].exact_div(bs * bs)
    if s is None or c is None:
        sa.record(node.outputs[0], None)
        return
    sa.record(node.outputs[0], (s[0], c, s[2] * bs, s[3] * bs))


@HANDLERS.register("SpaceToDepth")
def space_to_depth(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    bs = int(node.attrs.get("blocksize", 1))
    if s is None:
        sa.record(node.outputs[0], None)
        return
    h, w = s[2].exact_div(bs), s[3].exact_div(bs)
    if h is None or w is None:
        sa.record(node.outputs[0], None)
        return
    sa.record(node.outputs[0], (s[0], s[1] * (bs * bs), h, w))


@HANDLERS.register("Resize", "Upsample")
def resize(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    if s is None:
        sa.record(node.outputs[0], None)
        return
    axes = node.attrs.get("axes")
    axes = list(range(len(s))) if axes is None else [a + len(s) if a < 0 else a for a in axes]
    policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
    if node.op == "Upsample" and sa.opset < 9:
        attr_scales = tuple(Poly.const(Fraction(float(x))) for x in node.attrs.get("scales", []))
        scales_v: SymValue | None = SymValue("f32", attr_scales)
        sizes_t = None
    else:
        scales_t, sizes_t = sa.resize_operands(node)
        scales_v = sa.value(scales_t) if scales_t is not None else None
    out = list(s)
    if sizes_t is not None:
        sv = sa.value(sizes_t)
        if sv is None or len(sv.elems) != len(axes) or policy != "stretch":
            sa.record(node.outputs[0], None)
            return
        for a, e in zip(axes, sv.elems, strict=True):
            out[a] = e if e is not None else sa.fresh_dim(node.outputs[0], a)
    elif scales_v is not None and len(scales_v.elems) == len(axes):
        for a, e in zip(axes, scales_v.elems, strict=True):
            out[a] = (s[a] * e).floor() if e is not None else sa.fresh_dim(node.outputs[0], a)
    else:
        sa.record(node.outputs[0], None)
        return
    sa.record(node.outputs[0], tuple(out))


@HANDLERS.register(*GLOBAL_POOL_OPS)
def global_pool(sa: ShapeAnalysis, node: gs.Node) -> None:
    s = sa.shape(node.inputs[0])
    sa.record(node.outputs[0], None if s is None else s[:2] + tuple(Poly.const(1) for _ in s[2:]))
