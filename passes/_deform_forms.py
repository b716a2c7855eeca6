"""The three op spellings of a modulated deformable convolution, read into one description.

segc meets DCNv2 as one of three ops; they compute the same function but spell it apart:

=========  =====================================  =========================================
form       op (domain)                            offsets / mask inputs
=========  =====================================  =========================================
onnx       DeformConv ("" opset 19)               X, W, offset, B, mask: offset channel
                                                  2*(g*K+k) is dy, 2*(g*K+k)+1 is dx
ascend     DeformableConv2D ("" , Huawei CANN)    x, filter, offsets[, bias]: offsets is
                                                  [dx (G*K) | dy (G*K) | mask (G*K)]
mmcv       MMCVModulatedDeformConv2d ("mmcv")     input, offset, mask, weight[, bias]:
                                                  offset/mask laid out as ONNX's
=========  =====================================  =========================================

(K = kh*kw taps, G = deformable/offset groups; the mask is already sigmoided in all three:
Ascend's kernel multiplies the sampled value by the raw mask channel, as MindSpore's CPU
reference of the same op shows.)

Attribute facts, from the vendors' parsers:

* Ascend's ONNX parser plugin for ``DeformableConv2D`` accepts ``strides`` / ``dilations``
  with 1 or 2 elements (it expands them to NCHW ``[1, 1, h, w]`` itself and rejects 4),
  ``pads`` with 1 or 2 elements (``[ph, pw]`` -> top = bottom = ph, left = right = pw), an
  int ``groups`` (defaulting to 0 when absent, so it must be written), ``deformable_groups``,
  a string ``data_format`` that defaults to NHWC (so "NCHW" must be written) and
  ``modulated``, which the op spec calls a Bool but the parser reads as an INT attribute
  (ONNX has no bool attribute), so segc writes ``modulated=1``. The plugin is registered
  for default-domain opsets 9..16 only (9..13 in older CANN).
* mmcv / mmdeploy's TensorRT plugin ``MMCVModulatedDeformConv2d`` takes ``stride``,
  ``padding``, ``dilation`` as (h, w) pairs and ints ``groups``, ``deform_groups``.

``DeformSpec`` is the form-free description: the operands, the geometry, and for every
(group, tap) which input channel holds dy, dx and the mask. The emitters build any form
from a spec, using ``ChannelAssembler`` to lay the channels out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from segc.passes._channel_select import ChannelAssembler, ChannelPick, Source, channel_count, trace
from segc.onnx_graph import constant_array
from segc.passes._graph_build import GraphBuilder, element_dtype, input_at

FORMS = ("onnx", "ascend", "mmcv", "decomposed")
OP_FORMS = {
    ("DeformConv", ""): "onnx",
    ("DeformableConv2D", ""): "ascend",
    ("MMCVModulatedDeformConv2d", "mmcv"): "mmcv",
}

#: Default-domain opsets Ascend's ONNX parser registers DeformableConv2D for (newest CANN).
ASCEND_PARSER_OPSETS = range(9, 17)


class UnsupportedDeform(Exception):
    """This node cannot be described (unknown kernel size, 3-D, NHWC...): leave it, say why."""


def node_form(node: gs.Node) -> str | None:
    """'onnx' / 'ascend' / 'mmcv' for a deformable conv node, else None."""
    domain = node.domain or ""
    if domain == "ai.onnx":
        domain = ""
    return OP_FORMS.get((node.op, domain))


@dataclass
class DeformSpec:
    """A 2-D deformable convolution, independent of how it is spelled.

    ``pads`` are in ONNX order (top, left, bottom, right). ``dy``/``dx``/``mask`` list, for
    channel g*K + k (group g, tap k = i*kw + j), the input tensor and channel that holds it;
    ``mask`` is None for DCNv1 (no modulation).
    """

    node: gs.Node
    form: str
    x: gs.Tensor
    weight: gs.Tensor
    bias: gs.Tensor | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]
    dilations: tuple[int, int]
    group: int
    offset_group: int
    dy: list[ChannelPick]
    dx: list[ChannelPick]
    mask: list[ChannelPick] | None
    output: gs.Variable
    name: str = "deform_conv"  # the node's name when read (the replacement keeps it)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def symmetric_pads(self) -> bool:
        top, left, bottom, right = self.pads
        return top == bottom and left == right

    @property
    def in_channels(self) -> int | None:
        weight = constant_array(self.weight)
        shape = weight.shape if weight is not None else self.weight.shape
        if shape is None or len(shape) != 4 or not isinstance(shape[1], (int, np.integer)):
            return None
        return int(shape[1]) * self.group


# decoding -----------------------------------------------------------------------------------


def _pair(values: object, name: str, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """A (h, w) pair from a 1-, 2- or NCHW 4-element list attribute."""
    if values is None:
        if default is None:
            raise UnsupportedDeform(f"no {name} attribute")
        return default
    items = [int(v) for v in np.ravel(np.asarray(values))]
    if len(items) == 1:
        return (items[0], items[0])
    if len(items) == 2:
        return (items[0], items[1])
    if len(items) == 4:
        return (items[2], items[3])  # Ascend's internal NCHW spelling [1, 1, h, w]
    raise UnsupportedDeform(f"{name} has {len(items)} elements")


def _kernel(weight: gs.Tensor, attr: object) -> tuple[int, int]:
    if attr is not None:
        items = [int(v) for v in np.ravel(np.asarray(attr))]
        if len(items) != 2:
            raise UnsupportedDeform(f"kernel_shape {items} is not 2-D")
        return (items[0], items[1])
    values = constant_array(weight)
    shape = values.shape if values is not None else weight.shape
    if shape is None or len(shape) != 4:
        raise UnsupportedDeform("weight is not a 4-D tensor of known shape (only 2-D deformable convs are handled)")
    if not all(isinstance(d, (int, np.integer)) for d in shape[2:]):
        raise UnsupportedDeform("kernel size unknown (weight shape not static)")
    return (int(shape[2]), int(shape[3]))


def _interleaved(
    offset: gs.Tensor, mask: gs.Tensor | None, groups: int, taps: int
) -> tuple[list[ChannelPick], list[ChannelPick], list[ChannelPick] | None]:
    n = groups * taps
    dy = [(offset, 2 * c) for c in range(n)]
    dx = [(offset, 2 * c + 1) for c in range(n)]
    masks = [(mask, c) for c in range(n)] if mask is not None else None
    return dy, dx, masks


def decode(node: gs.Node) -> DeformSpec:
    """Read any of the three forms into a ``DeformSpec`` (raises UnsupportedDeform)."""
    form = node_form(node)
    if form is None:
        raise UnsupportedDeform(f"{node.op} is not a deformable convolution")
    if len(node.outputs) != 1:
        raise UnsupportedDeform("expected one output")
    attrs = node.attrs
    if form == "onnx":
        x, weight, offset = input_at(node, 0), input_at(node, 1), input_at(node, 2)
        bias, mask = input_at(node, 3), input_at(node, 4)
        if x is None or weight is None or offset is None:
            raise UnsupportedDeform("missing X, W or offset")
        kernel = _kernel(weight, attrs.get("kernel_shape"))
        pads_attr = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
        if len(pads_attr) != 4:
            raise UnsupportedDeform(f"pads {pads_attr} are not 2-D")
        pads = (pads_attr[0], pads_attr[1], pads_attr[2], pads_attr[3])
        strides = _pair(attrs.get("strides"), "strides", (1, 1))
        dilations = _pair(attrs.get("dilations"), "dilations", (1, 1))
        group = int(attrs.get("group", 1))
        offset_group = int(attrs.get("offset_group", 1))
        dy, dx, masks = _interleaved(offset, mask, offset_group, kernel[0] * kernel[1])
    elif form == "mmcv":
        x, offset, mask, weight = (input_at(node, i) for i in range(4))
        bias = input_at(node, 4)
        if x is None or offset is None or mask is None or weight is None:
            raise UnsupportedDeform("missing input, offset, mask or weight")
        kernel = _kernel(weight, None)
        ph, pw = _pair(attrs.get("padding"), "padding", (0, 0))
        pads = (ph, pw, ph, pw)
        strides = _pair(attrs.get("stride"), "stride", (1, 1))
        dilations = _pair(attrs.get("dilation"), "dilation", (1, 1))
        group = int(attrs.get("groups", 1))
        offset_group = int(attrs.get("deform_groups", 1))
        dy, dx, masks = _interleaved(offset, mask, offset_group, kernel[0] * kernel[1])
    else:  # ascend
        x, weight, offsets, bias = (input_at(node, i) for i in range(4))
        if x is None or weight is None or offsets is None:
            raise UnsupportedDeform("missing x, filter or offsets")
        data_format = attrs.get("data_format", "NCHW")
        if isinstance(data_format, bytes):
            data_format = data_format.decode()
        if data_format not in ("NCHW", ""):
            # an ONNX graph is NCHW; a node that says otherwise has a layout we cannot vouch for
            raise UnsupportedDeform(f"data_format {data_format!r} (only NCHW graphs are handled)")
        kernel = _kernel(weight, None)
        strides = _pair(attrs.get("strides"), "strides", (1, 1))
        dilations = _pair(attrs.get("dilations"), "dilations", (1, 1))
        pads_raw = [int(v) for v in np.ravel(np.asarray(attrs.get("pads", [0, 0])))]
        if len(pads_raw) == 1:
            pads = (pads_raw[0],) * 4
        elif len(pads_raw) == 2:
            pads = (pads_raw[0], pads_raw[1], pads_raw[0], pads_raw[1])
        elif len(pads_raw) == 4:  # the op spec's (top, bottom, left, right)
            pads = (pads_raw[0], pads_raw[2], pads_raw[1], pads_raw[3])
        else:
            raise UnsupportedDeform(f"pads {pads_raw}")
        group = int(attrs.get("groups", 1)) or 1  # the parser's default 0 means "not written"
        offset_group = int(attrs.get("deformable_groups", 1))
        n = offset_group * kernel[0] * kernel[1]
        dx = [(offsets, c) for c in range(n)]
        dy = [(offsets, n + c) for c in range(n)]
        masks = [(offsets, 2 * n + c) for c in range(n)] if int(attrs.get("modulated", 1)) else None
    return DeformSpec(
        node=node, form=form, x=x, weight=weight, bias=bias, kernel=kernel, strides=strides, pads=pads,
        dilations=dilations, group=group, offset_group=offset_group, dy=dy, dx=dx, mask=masks,
        output=node.outputs[0], name=node.name or "deform_conv",
    )


# canonical attributes -----------------------------------------------------------------------


def ascend_attrs(spec: DeformSpec, pads_hw: tuple[int, int]) -> dict[str, object]:
    """Exactly what Ascend's parser needs (see module docstring), in 2-element spelling."""
    return {
        "strides": [spec.strides[0], spec.strides[1]],
        "pads": [pads_hw[0], pads_hw[1]],
        "dilations": [spec.dilations[0], spec.dilations[1]],
        "groups": spec.group,
        "deformable_groups": spec.offset_group,
        "data_format": "NCHW",
        "modulated": 1,
    }


def mmcv_attrs(spec: DeformSpec, pads_hw: tuple[int, int]) -> dict[str, object]:
    return {
        "stride": [spec.strides[0], spec.strides[1]],
        "padding": [pads_hw[0], pads_hw[1]],
        "dilation": [spec.dilations[0], spec.dilations[1]],
        "groups": spec.group,
        "deform_groups": spec.offset_group,
    }


def onnx_attrs(spec: DeformSpec) -> dict[str, object]:
    return {
        "dilations": [spec.dilations[0], spec.dilations[1]],
        "group": spec.group,
        "kernel_shape": [spec.kernel[0], spec.kernel[1]],
        "offset_group": spec.offset_group,
        "pads": list(spec.pads),
        "strides": [spec.strides[0], spec.strides[1]],
    }


def canonical_attrs(spec: DeformSpec, form: str) -> dict[str, object]:
    """The attributes this pass writes for ``form`` when the node needs no explicit Pad."""
    if form == "ascend":
        return ascend_attrs(spec, (spec.pads[0], spec.pads[1]))
    if form == "mmcv":
        return mmcv_attrs(spec, (spec.pads[0], spec.pads[1]))
    return onnx_attrs(spec)


def same_attrs(actual: dict[str, object], wanted: dict[str, object]) -> bool:
    """Attribute dicts equal after normalising numpy / bytes spellings."""
    def norm(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, (list, tuple, np.ndarray)):
            return [int(v) for v in np.ravel(np.asarray(value))]
        if isinstance(value, (bool, np.integer)):
            return int(value)
        return value

    return set(actual) == set(wanted) and all(norm(actual[k]) == norm(wanted[k]) for k in wanted)


# emitting -----------------------------------------------------------------------------------


@dataclass
class EmitContext:
    """What an emitter needs besides the spec."""

    builder: GraphBuilder
    assembler: ChannelAssembler
    follow: bool  # trace channels through Slice/Concat/Sigmoid to their producer
    opset: int

    def sources(self, picks: list[ChannelPick]) -> list[Source]:
        return [trace(t, c, self.follow) for t, c in picks]

    def request(self, picks: list[ChannelPick]) -> int:
        """Ask the assembler for a tensor with these channels, in this order.

        When the picks are exactly all channels of one existing tensor, in order (mmcv's
        offset and mask are ONNX's), that tensor is used as it is: the graph keeps its own
        Slice/Sigmoid nodes and nothing is rebuilt.
        """
        tensor = picks[0][0]
        if all(t is tensor and c == i for i, (t, c) in enumerate(picks)) and channel_count(tensor) == len(picks):
            return self.assembler.request_whole(tensor)
        return self.assembler.request(self.sources(picks))


def _ones_like_channels(ctx: EmitContext, like: gs.Tensor, channels: int, dtype: np.dtype, prefix: str) -> gs.Tensor:
    """A [N, channels, Ho, Wo] tensor of ones shaped after ``like`` (DCNv1 has no mask)."""
    b = ctx.builder
    shape = b.op("Shape", [like], f"{prefix}/ones_shape")
    dims = b.op(
        "Concat",
        [
            b.op("Slice", [shape, b.ints(f"{prefix}/s0", [0]), b.ints(f"{prefix}/e0", [1])], f"{prefix}/ones_n"),
            b.ints(f"{prefix}/ones_c", [channels]),
            b.op("Slice", [shape, b.ints(f"{prefix}/s2", [2]), b.ints(f"{prefix}/e2", [4])], f"{prefix}/ones_hw"),
        ],
        f"{prefix}/ones_dims",
        {"axis": 0},
    )
    return b.op("ConstantOfShape", [dims], f"{prefix}/ones",
                {"value": gs.Constant(b.fresh(f"{prefix}/one"), np.ones([1], dtype=dtype))}, dtype=dtype)


def _padded_input(ctx: EmitContext, spec: DeformSpec) -> tuple[gs.Tensor, tuple[int, int]]:
    """x and the symmetric (ph, pw) to declare; asymmetric pads become an explicit Pad.

    Zero-padding x by (top, left, bottom, right) and sampling with pads 0 is the same
    function: a sampling point p in the original frame is p + (top, left) in the padded one,
    and the bilinear corners that fall in the added border read zeros either way.
    """
    if spec.symmetric_pads:
        return spec.x, (spec.pads[0], spec.pads[1])
    top, left, bottom, right = spec.pads
    pads = [0, 0, top, left, 0, 0, bottom, right]
    b = ctx.builder
    if ctx.opset >= 11:
        x = b.op(
            "Pad",
            [spec.x, b.ints(f"{spec.name}/pads", pads)],
            f"{spec.name}/pad",
            {"mode": "constant"},
            dtype=spec.x.dtype,
        )
    else:
        x = b.op("Pad", [spec.x], f"{spec.name}/pad", {"mode": "constant", "pads": pads}, dtype=spec.x.dtype)
    return x, (0, 0)


def emit_onnx(ctx: EmitContext, spec: DeformSpec) -> gs.Node:
    """Write ONNX ``DeformConv`` into ``spec.output``."""
    interleaved = [pick for pair in zip(spec.dy, spec.dx, strict=False) for pick in pair]
    ctx.request(interleaved)
    if spec.mask is not None:
        ctx.request(spec.mask)
    built = ctx.assembler.build()
    offset, mask = built[0], (built[1] if spec.mask is not None else None)
    inputs: list[gs.Tensor | None] = [spec.x, spec.weight, offset, spec.bias, mask]
    while inputs[-1] is None:
        inputs.pop()
    ctx.builder.op("DeformConv", inputs, spec.name, onnx_attrs(spec), outputs=[spec.output])
    return ctx.builder.graph.nodes[-1]


def emit_ascend(ctx: EmitContext, spec: DeformSpec) -> gs.Node:
    """Write Ascend ``DeformableConv2D`` (offsets [dx | dy | mask]) into ``spec.output``."""
    x, pads_hw = _padded_input(ctx, spec)
    n = spec.offset_group * spec.taps
    if spec.mask is not None:
        ctx.request(spec.dx + spec.dy + spec.mask)
        offsets = ctx.assembler.build()[0]
    else:
        ctx.request(spec.dx + spec.dy)
        xy = ctx.assembler.build()[0]
        ones = _ones_like_channels(ctx, xy, n, element_dtype(spec.weight, spec.x), spec.name)
        offsets = ctx.builder.op("Concat", [xy, ones], f"{spec.name}/offsets", {"axis": 1}, dtype=xy.dtype)
    inputs: list[gs.Tensor | None] = [x, spec.weight, offsets]
    if spec.bias is not None:
        inputs.append(spec.bias)
    ctx.builder.op("DeformableConv2D", inputs, spec.name, ascend_attrs(spec, pads_hw), outputs=[spec.output])
    return ctx.builder.graph.nodes[-1]


def emit_mmcv(ctx: EmitContext, spec: DeformSpec) -> gs.Node:
    """Write mmcv's ``MMCVModulatedDeformConv2d`` (domain "mmcv") into ``spec.output``."""
    x, pads_hw = _padded_input(ctx, spec)
    interleaved = [pick for pair in zip(spec.dy, spec.dx, strict=False) for pick in pair]
    ctx.request(interleaved)
    if spec.mask is not None:
        ctx.request(spec.mask)
    built = ctx.assembler.build()
    offset = built[0]
    if spec.mask is not None:
        mask = built[1]
    else:  # DCNv1: the plugin always modulates, so give it ones (N, H, W copied from offset)
        mask = _ones_like_channels(
            ctx, offset, spec.offset_group * spec.taps, element_dtype(spec.weight, spec.x), spec.name
        )
    inputs: list[gs.Tensor | None] = [x, offset, mask, spec.weight]
    if spec.bias is not None:
        inputs.append(spec.bias)
    ctx.builder.op("MMCVModulatedDeformConv2d", inputs, spec.name, mmcv_attrs(spec, pads_hw),
                   outputs=[spec.output], domain="mmcv")
    return ctx.builder.graph.nodes[-1]
