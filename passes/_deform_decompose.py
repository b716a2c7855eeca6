"""Deformable convolution in standard ONNX ops only: sampling grid, GridSample, one Conv.

Why: TensorRT without plugins, MagicMind, older onnxruntime builds and most NPUs have no
deformable conv, but all run GridSample (opset 16) and Conv. DCNv2 is a bilinear gather
followed by an ordinary convolution over the gathered taps, so it decomposes exactly:

    x [N,C,H,W]   offset [N,2GK,Ho,Wo]   mask [N,GK,Ho,Wo]        (G groups, K = kh*kw taps)

    dy, dx   = offset channels 2c, 2c+1                  [N, GK, Ho, Wo]   (c = g*K + k)
    py       = dy + (i_k*dil_h - pad_top)  + oy*stride_h   oy = Range(Ho) from Shape(offset)
    px       = dx + (j_k*dil_w - pad_left) + ox*stride_w   ox = Range(Wo)
    grid     = ((2*px+1)/W - 1, (2*py+1)/H - 1)          [N*G, K*Ho, Wo, 2]  (taps stacked on H)
    sampled  = GridSample(x as [N*G, C/G, H, W], grid)   [N*G, C/G, K*Ho, Wo]
    columns  = sampled * mask as [N*G, 1, K*Ho, Wo]  ->  reshape [N, C*K, Ho, Wo]
    y        = Conv1x1(columns, W as [O, C/group*K, 1, 1], B, group)

As a graph (one deformable conv)::

    before:  x, offset, mask --> DeformConv(W, B) --> y

    after:   offset --> Slice dy, Slice dx --> + tap offsets + Range(Ho|Wo)*stride --> normalise
             x --> Shape --> H, W ----------------------------------------------------^
                   grid = Concat(gx, gy) --> Reshape [N*G, K*Ho, Wo, 2]
             x --> (Reshape [N*G, C/G, H, W]) --> GridSample(grid) --> * mask
               --> Reshape [N, C*K, Ho, Wo] --> Conv 1x1 (W reshaped, B, group) --> y

Every sampling grid is computed at run time from Shape and Range, so the graph stays valid
for any H and W (DBNet's dynamic-shape deployment). One GridSample serves all taps of all
deformable groups: the K tap grids are stacked along the grid's H axis and the groups folded
into the batch, which is the per-tap GridSample of the textbook decomposition without K
separate nodes.

Coordinates: DeformConv samples pixel index p (pixel centres at integers, zero outside,
bilinear between the four neighbours: ONNX's reference and torchvision agree). GridSample
with align_corners=0 and normalised coordinate g = (2p + 1)/size - 1 addresses exactly pixel
p, with the same zero padding per corner. align_corners=1 with g = 2p/(size-1) - 1 would too,
but divides by zero on a one-pixel-wide map, so segc uses align_corners=0.

Column order: channel (c, k) of ``columns`` is c*K + k, the same order as W.reshape(O, -1),
so the weight is only reshaped (once, at compile time when constant).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from segc.passes._deform_forms import DeformSpec, EmitContext, UnsupportedDeform
from segc.onnx_graph import constant_array
from segc.passes._graph_build import element_dtype

#: GridSample exists from opset 16; its mode is spelled "bilinear" until 19, "linear" from 20.
GRID_SAMPLE_MIN_OPSET = 16


def emit_decomposed(ctx: EmitContext, spec: DeformSpec) -> gs.Node:
    """Write the GridSample decomposition of ``spec`` into ``spec.output``; returns the Conv."""
    b = ctx.builder
    p = spec.name
    channels = spec.in_channels
    if channels is None:
        raise UnsupportedDeform("input channel count unknown (weight shape not static)")
    groups, taps = spec.offset_group, spec.taps
    if channels % groups:
        raise UnsupportedDeform(f"{channels} channels not divisible by offset_group {groups}")
    kh, kw = spec.kernel
    dtype = element_dtype(spec.weight, spec.x)

    # offsets split into dy / dx (and the mask), each [N, G*K, Ho, Wo]
    ctx.request(spec.dy)
    ctx.request(spec.dx)
    if spec.mask is not None:
        ctx.request(spec.mask)
    built = ctx.assembler.build()
    dy, dx = built[0], built[1]
    mask = built[2] if spec.mask is not None else None

    # run-time sizes: Ho, Wo from the offsets, H, W from x
    off_shape = b.op("Shape", [dy], f"{p}/offset_shape")
    x_shape = b.op("Shape", [spec.x], f"{p}/x_shape")
    out_h = b.op("Gather", [off_shape, b.ints(f"{p}/i2", 2)], f"{p}/out_h", {"axis": 0})  # scalar
    out_w = b.op("Gather", [off_shape, b.ints(f"{p}/i3", 3)], f"{p}/out_w", {"axis": 0})
    out_h1 = b.op("Slice", [off_shape, b.ints(f"{p}/s2", [2]), b.ints(f"{p}/e3", [3])], f"{p}/out_h1")  # [1]
    out_w1 = b.op("Slice", [off_shape, b.ints(f"{p}/s3", [3]), b.ints(f"{p}/e4", [4])], f"{p}/out_w1")

    def size_as_float(index: int, label: str) -> gs.Tensor:
        dim = b.op("Gather", [x_shape, b.ints(f"{p}/{label}_i", index)], f"{p}/{label}", {"axis": 0})
        return b.op("Cast", [dim], f"{p}/{label}_f", {"to": _onnx_float(dtype)}, dtype=dtype)

    in_h = size_as_float(2, "in_h")
    in_w = size_as_float(3, "in_w")

    def output_coords(count: gs.Tensor, stride: int, shape: list[int], label: str) -> gs.Tensor:
        """oy*stride (or ox*stride) as a float tensor broadcastable to [N, GK, Ho, Wo]."""
        steps = b.op("Range", [b.ints(f"{p}/zero", 0), count, b.ints(f"{p}/one", 1)], f"{p}/{label}_range")
        steps = b.op("Cast", [steps], f"{p}/{label}_f", {"to": _onnx_float(dtype)}, dtype=dtype)
        if stride != 1:
            steps = b.op(
                "Mul",
                [steps, b.const(f"{p}/{label}_stride", np.asarray(stride, dtype=dtype))],
                f"{p}/{label}_strided",
                dtype=dtype,
            )
        return b.op("Reshape", [steps, b.ints(f"{p}/{label}_shape", shape)], f"{p}/{label}", dtype=dtype)

    rows = output_coords(out_h, spec.strides[0], [1, 1, -1, 1], "oy")
    cols = output_coords(out_w, spec.strides[1], [1, 1, 1, -1], "ox")

    # per-channel tap position relative to the output pixel: [1, G*K, 1, 1]
    tap_i = np.repeat(np.arange(kh), kw)
    tap_j = np.tile(np.arange(kw), kh)
    tap_y = np.tile(tap_i * spec.dilations[0] - spec.pads[0], groups).astype(dtype).reshape(1, groups * taps, 1, 1)
    tap_x = np.tile(tap_j * spec.dilations[1] - spec.pads[1], groups).astype(dtype).reshape(1, groups * taps, 1, 1)

    def normalised(delta: gs.Tensor, taps_at: np.ndarray, base: gs.Tensor, size: gs.Tensor, label: str) -> gs.Tensor:
        """(2*(delta + tap + base) + 1) / size - 1: GridSample's align_corners=0 coordinate."""
        pos = b.op("Add", [delta, b.const(f"{p}/{label}_tap", taps_at)], f"{p}/{label}_tap_add", dtype=dtype)
        pos = b.op("Add", [pos, base], f"{p}/{label}_pos", dtype=dtype)
        twice = b.op("Mul", [pos, b.const(f"{p}/two", np.asarray(2, dtype=dtype))], f"{p}/{label}_x2", dtype=dtype)
        shifted = b.op(
            "Add", [twice, b.const(f"{p}/one_f", np.asarray(1, dtype=dtype))], f"{p}/{label}_p1", dtype=dtype
        )
        scaled = b.op("Div", [shifted, size], f"{p}/{label}_div", dtype=dtype)
        return b.op(
            "Sub", [scaled, b.const(f"{p}/one_f", np.asarray(1, dtype=dtype))], f"{p}/{label}_norm", dtype=dtype
        )

    grid_y = normalised(dy, tap_y, rows, in_h, "gy")
    grid_x = normalised(dx, tap_x, cols, in_w, "gx")

    # grid [N, GK, Ho, Wo, 2] (x first) -> [N*G, K*Ho, Wo, 2]
    last = [0, 0, 0, 0, 1]
    gx5 = b.op("Reshape", [grid_x, b.ints(f"{p}/gx5", last)], f"{p}/grid_x5", dtype=dtype)
    gy5 = b.op("Reshape", [grid_y, b.ints(f"{p}/gy5", last)], f"{p}/grid_y5", dtype=dtype)
    grid5 = b.op("Concat", [gx5, gy5], f"{p}/grid5", {"axis": -1}, dtype=dtype)
    taps_h = b.op("Mul", [out_h1, b.ints(f"{p}/k", [taps])], f"{p}/taps_h")
    grid_shape = b.op("Concat", [b.ints(f"{p}/minus1", [-1]), taps_h, out_w1, b.ints(f"{p}/two_i", [2])],
                      f"{p}/grid_shape", {"axis": 0})
    grid = b.op("Reshape", [grid5, grid_shape], f"{p}/grid", dtype=dtype)

    x = spec.x
    if groups > 1:  # fold deformable groups into the batch: [N*G, C/G, H, W]
        x = b.op("Reshape", [x, b.ints(f"{p}/x_groups", [-1, channels // groups, 0, 0])], f"{p}/x_grouped", dtype=dtype)
    mode = "linear" if ctx.opset >= 20 else "bilinear"
    sampled = b.op("GridSample", [x, grid], f"{p}/grid_sample",
                   {"mode": mode, "padding_mode": "zeros", "align_corners": 0}, dtype=dtype)

    if mask is not None:
        mask_shape = b.op("Concat", [b.ints(f"{p}/minus1", [-1]), b.ints(f"{p}/one_i", [1]), taps_h, out_w1],
                          f"{p}/mask_shape", {"axis": 0})
        mask_r = b.op("Reshape", [mask, mask_shape], f"{p}/mask_taps", dtype=dtype)
        sampled = b.op("Mul", [sampled, mask_r], f"{p}/modulated", dtype=dtype)

    col_shape = b.op("Concat", [b.ints(f"{p}/minus1", [-1]), b.ints(f"{p}/ck", [channels * taps]), out_h1, out_w1],
                     f"{p}/columns_shape", {"axis": 0})
    columns = b.op("Reshape", [sampled, col_shape], f"{p}/columns", dtype=dtype)

    weight_values = constant_array(spec.weight)
    if weight_values is not None:
        kernel: gs.Tensor = b.const(f"{p}/weight_1x1", weight_values.reshape(weight_values.shape[0], -1, 1, 1))
    else:
        kernel = b.op("Reshape", [spec.weight, b.ints(f"{p}/w_shape", [0, -1, 1, 1])], f"{p}/weight_1x1", dtype=dtype)
    inputs: list[gs.Tensor | None] = [columns, kernel]
    if spec.bias is not None:
        inputs.append(spec.bias)
    b.op("Conv", inputs, p, {"kernel_shape": [1, 1], "group": spec.group}, outputs=[spec.output])
    return b.graph.nodes[-1]


def _onnx_float(dtype: np.dtype) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
