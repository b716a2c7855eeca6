"""Modulated deformable convolution (DCNv2) in pure PyTorch, exportable to ONNX ``DeformConv``.

Why this module exists: DBNet's deformable ResNet-50 (``dbnet_r50_dcn``) was silently replaced
by a plain backbone in the hand-made pipeline because no tool carried the deformable
convolution through to the vendors (docs/seed_pipelines.md, section 6). segc keeps it: the layer below runs in
plain PyTorch (so it needs no compiled extension such as mmcv or torchvision, and can be
fine-tuned), and it exports as ONE standard ONNX ``DeformConv`` node (opset 19, domain "")
with both of torch's exporters, which onnxruntime's CPU provider runs and the segc passes can
later rewrite into a vendor's own op (e.g. Ascend ``DeformableConv2D``).

Layouts (torchvision / ONNX DeformConv / mmcv / MhLiao-DB, all the same)::

    x       [N, C, H, W]
    weight  [O, C/groups, kh, kw]
    offset  [N, 2*G*kh*kw, Ho, Wo]   channel = ((g*kh + i)*kw + j)*2 + {0: dy, 1: dx}
    mask    [N, G*kh*kw, Ho, Wo]     channel = (g*kh + i)*kw + j      (already sigmoided)

where G is the number of offset (deformable) groups: input channel c uses offset group
``c // (C/G)``.  Tap (i, j) of output pixel (oy, ox) samples the input at

    y = oy*stride_h - pad_h + i*dil_h + dy,   x = ox*stride_w - pad_w + j*dil_w + dx

bilinearly, with zero padding: each of the four integer corners contributes only when it lies
inside the image.  That is exactly ONNX's reference (GridSample, align_corners=1, zeros
padding) and torchvision's rule "zero if y <= -1 or y >= H, else use the in-bounds corners".

How the three execution paths are chosen (``deform_conv2d``)::

    eager / training / torch.jit.trace   -> _deform_conv2d_torch   (gather + one matmul)
    torch.onnx.export(dynamo=False)      -> torch.ops.segc.deform_conv2d -> DeformConv
    torch.onnx.export(dynamo=True)       -> torch.onnx.ops.symbolic("DeformConv", ...)

The dynamo path uses ``torch.onnx.ops.symbolic`` (torch >= 2.8): it records the ONNX node
straight into the FX graph, so callers need no ``custom_translation_table``. Both export
paths refuse opsets below 19 with a ``SegcError`` (see ``require_deform_conv_opset``).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from segc.errors import SegcError

_dynamo_exporter_flags: ModuleType | None
try:  # private, read only to recognise the strict fallback of the dynamo exporter
    from torch.onnx._internal.exporter import _flags

    _dynamo_exporter_flags = _flags
except ImportError:  # pragma: no cover - other torch versions
    _dynamo_exporter_flags = None

__all__ = [
    "DEFORM_CONV_MIN_OPSET",
    "ModulatedDeformConv2d",
    "deform_conv2d",
    "deform_conv2d_output_size",
    "export_onnx",
    "require_deform_conv_opset",
]

#: ONNX introduced ``DeformConv`` in opset 19; an older model cannot express the layer.
DEFORM_CONV_MIN_OPSET = 19

IntPair = int | Sequence[int]


def _is_tracing() -> bool:
    """``torch.jit.is_tracing()``: public and documented, but not in torch.jit's ``__all__``."""
    return bool(torch.jit.is_tracing())  # type: ignore[attr-defined]


def _pair(value: IntPair, name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence to ``(h, w)``, as nn.Conv2d does."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise SegcError(f"deform_conv2d: {name} must be an int or a pair, got {value!r}")
    return items[0], items[1]


def deform_conv2d_output_size(
    size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    """Output (Ho, Wo) of a convolution: what the offset/mask spatial dims must equal."""
    ho, wo = (
        (size[a] + 2 * padding[a] - dilation[a] * (kernel_size[a] - 1) - 1) // stride[a] + 1
        for a in range(2)
    )
    return ho, wo


def require_deform_conv_opset(opset: int | None) -> None:
    """Raise the user-facing SegcError when ``opset`` (None: unknown, allowed) has no DeformConv.

    Exporters of models that contain this layer call it before exporting, so the user gets
    one line instead of a torch exporter traceback.
    """
    if opset is not None and opset < DEFORM_CONV_MIN_OPSET:
        raise SegcError(
            f"DeformConv needs ONNX opset {DEFORM_CONV_MIN_OPSET} or newer, but the export asked "
            f"for opset {opset}; export with opset_version={DEFORM_CONV_MIN_OPSET} or higher"
        )


def _check_inputs(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> None:
    """Reject inconsistent shapes with one clear line instead of a reshape traceback.

    Channel counts are always static; the spatial check only runs when the sizes are plain
    ints (under torch.export they may be symbolic, and the offset's own dims are used).
    """
    if x.dim() != 4 or weight.dim() != 4 or offset.dim() != 4:
        raise SegcError(
            "deform_conv2d: x, weight and offset must be 4-D "
            f"(got {x.dim()}-D, {weight.dim()}-D, {offset.dim()}-D)"
        )
    n, c = x.shape[0], x.shape[1]
    out_c, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    if groups < 1 or offset_groups < 1:
        raise SegcError("deform_conv2d: groups and offset_groups must be >= 1")
    if c != c_per_group * groups or out_c % groups != 0:
        raise SegcError(
            f"deform_conv2d: weight {tuple(weight.shape)} does not fit {c} input channels "
            f"with groups={groups}"
        )
    if c % offset_groups != 0:
        raise SegcError(
            f"deform_conv2d: {c} input channels are not divisible by offset_groups={offset_groups}"
        )
    if offset.shape[1] != 2 * offset_groups * taps:
        raise SegcError(
            f"deform_conv2d: offset has {offset.shape[1]} channels, expected "
            f"2*offset_groups*kh*kw = {2 * offset_groups * taps}"
        )
    if mask is not None and (mask.dim() != 4 or mask.shape[1] != offset_groups * taps):
        raise SegcError(
            f"deform_conv2d: mask shape {tuple(mask.shape)} does not have "
            f"offset_groups*kh*kw = {offset_groups * taps} channels"
        )
    if bias is not None and tuple(bias.shape) != (out_c,):
        raise SegcError(f"deform_conv2d: bias shape {tuple(bias.shape)} is not ({out_c},)")
    sizes = (x.shape[2], x.shape[3], offset.shape[0], offset.shape[2], offset.shape[3], n)
    if all(isinstance(s, int) for s in sizes):
        expect = deform_conv2d_output_size(
            (x.shape[2], x.shape[3]), (kh, kw), stride, padding, dilation
        )
        got = (offset.shape[2], offset.shape[3])
        if expect[0] < 1 or expect[1] < 1:
            raise SegcError(f"deform_conv2d: input {tuple(x.shape)} is smaller than the kernel")
        if got != expect or offset.shape[0] != n:
            raise SegcError(
                f"deform_conv2d: offset {tuple(offset.shape)} does not match the output "
                f"[{n}, *, {expect[0]}, {expect[1]}] of this convolution"
            )
        if mask is not None and (mask.shape[0] != n or tuple(mask.shape[2:]) != expect):
            raise SegcError(
                f"deform_conv2d: mask {tuple(mask.shape)} does not match the output "
                f"[{n}, *, {expect[0]}, {expect[1]}] of this convolution"
            )


# --------------------------------------------------------------------------------------------
# The PyTorch computation (eager, training, and the values of the legacy export op)
# --------------------------------------------------------------------------------------------


def _sample_columns(
    x: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    offset_groups: int,
) -> Tensor:
    """Bilinearly sample every kernel tap: the deformable analogue of im2col.

    Returns columns ``[N, G, Ho*Wo, kh*kw, C/G]`` (already multiplied by the mask), i.e.
    pixel-major and channels-last, so that in the common case (one offset group, one conv
    group) they are already the ``[N, L, K*C]`` matrix of the final matmul.

    Why channels-last: every sample point reads all C/G channels at one pixel, so the image
    is laid out as rows of channels ``[N*G*H*W, C/G]`` and each bilinear corner is ONE
    ``index_select`` of whole rows (contiguous copies; about 3x faster than a channel-major
    ``gather`` with a broadcast index).  Corners outside the image get coefficient 0 (zero
    padding) and a clamped, harmless row index.  Gradients reach x (index_select), the
    offset (through the fractional bilinear weights) and the mask.
    """
    n, c, h, w = x.shape
    kh, kw = kernel_size
    taps = kh * kw
    out_h, out_w = offset.shape[2], offset.shape[3]
    g = offset_groups
    c_per_og = c // g
    dev, dt = x.device, offset.dtype

    # Undeformed sampling grid: tap (i, j) of output (p, q) sits at
    # (p*sh - ph + i*dh, q*sw - pw + j*dw).  Shapes broadcast to [Ho, Wo, K].
    tap_y = (torch.arange(kh, device=dev, dtype=dt) * dilation[0]).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=dev, dtype=dt) * dilation[1]).repeat(kh)
    out_y = torch.arange(out_h, device=dev, dtype=dt) * stride[0] - padding[0]
    out_x = torch.arange(out_w, device=dev, dtype=dt) * stride[1] - padding[1]
    base_y = out_y.view(out_h, 1, 1) + tap_y.view(1, 1, taps)
    base_x = out_x.view(1, out_w, 1) + tap_x.view(1, 1, taps)

    # offset channels are interleaved (dy, dx) per tap per offset group; move the taps
    # last so that the sample points come out in (pixel, tap) order: [N, G, Ho, Wo, K].
    off = offset.reshape(n, g, taps, 2, out_h, out_w).permute(0, 1, 3, 4, 5, 2)
    pos_y = off[:, :, 0] + base_y
    pos_x = off[:, :, 1] + base_x

    y0f = torch.floor(pos_y)
    x0f = torch.floor(pos_x)
    frac_y = pos_y - y0f  # differentiable w.r.t. the offset; floor has zero gradient
    frac_x = pos_x - x0f
    y0 = y0f.to(torch.long)
    x0 = x0f.to(torch.long)

    modulation = None
    if mask is not None:
        modulation = mask.reshape(n, g, taps, out_h, out_w).permute(0, 1, 3, 4, 2)

    # Rows of channels; row (b*G + og)*H*W + pixel is image b, offset group og.
    rows = x.reshape(n, g, c_per_og, h * w).transpose(2, 3).reshape(n * g * h * w, c_per_og)
    image_base = (torch.arange(n * g, device=dev) * (h * w)).view(n, g, 1, 1, 1)
    points = n * g * out_h * out_w * taps
    columns: Tensor | None = None
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        cy = y0 + dy
        cx = x0 + dx
        weight_y = frac_y if dy else 1.0 - frac_y
        weight_x = frac_x if dx else 1.0 - frac_x
        inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
        coeff = weight_y * weight_x * inside.to(dt)
        if modulation is not None:
            coeff = coeff * modulation  # fold the mask in on the small [N,G,Ho,Wo,K] tensor
        index = image_base + cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)
        values = rows.index_select(0, index.reshape(points))
        coeff = coeff.reshape(points, 1).to(x.dtype)
        columns = values * coeff if columns is None else torch.addcmul(columns, values, coeff)
    assert columns is not None
    return columns.reshape(n, g, out_h * out_w, taps, c_per_og)


def _deform_conv2d_torch(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Vectorised DCNv2: deformable im2col, then one grouped matmul (no per-pixel loops).

    Columns [N, G, L, K, C/G] are regrouped to [N, groups, L, K*Cg] (a free view when
    G == groups == 1, the DBNet case), the weight to [groups, O/groups, K*Cg] in the same
    (tap, channel) order, and one batched matmul gives [N, groups, L, O/groups].
    """
    n = x.shape[0]
    out_c, c_per_group, kh, kw = weight.shape
    taps = kh * kw
    out_h, out_w = offset.shape[2], offset.shape[3]
    pixels = out_h * out_w
    columns = _sample_columns(
        x, offset, mask, (kh, kw), stride, padding, dilation, offset_groups
    )  # [N, G, L, K, C/G]
    if offset_groups != 1:
        # channel c = og*(C/G) + cc: bring the offset groups next to their channels.
        columns = columns.permute(0, 2, 3, 1, 4)  # [N, L, K, G, C/G] == [N, L, K, C]
    columns = columns.reshape(n, pixels, taps, groups, c_per_group)
    if groups != 1:
        columns = columns.permute(0, 3, 1, 2, 4)  # [N, groups, L, K, Cg]
    columns = columns.reshape(n, groups, pixels, taps * c_per_group)
    kernel = weight.reshape(groups, out_c // groups, c_per_group, taps).transpose(2, 3)
    kernel = kernel.reshape(groups, out_c // groups, taps * c_per_group)
    out = torch.matmul(columns, kernel.transpose(1, 2).unsqueeze(0))  # [N, groups, L, O/g]
    out = out.permute(0, 1, 3, 2).reshape(n, out_c, out_h, out_w)
    if bias is not None:
        out = out + bias.view(1, out_c, 1, 1)
    return out


# --------------------------------------------------------------------------------------------
# Export paths
# --------------------------------------------------------------------------------------------


def _onnx_attributes(
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> dict[str, Any]:
    """The ONNX DeformConv attributes; pads are [top, left, bottom, right] (symmetric here)."""
    return {
        "dilations": list(dilation),
        "group": int(groups),
        "kernel_shape": [int(kernel_size[0]), int(kernel_size[1])],
        "offset_group": int(offset_groups),
        "pads": [padding[0], padding[1], padding[0], padding[1]],
        "strides": list(stride),
    }


# The legacy (TorchScript) exporter traces the forward and maps each recorded op through a
# symbolic function.  An autograd.Function would be recorded with its whole body as a
# sub-block, which the exporter's peephole pass cannot handle unless every caller passes
# autograd_inlining=False; a torch.library custom op is recorded as ONE opaque node instead,
# and register_custom_op_symbolic maps that node to DeformConv.  The op is only called while
# the legacy exporter traces; eager and training use the plain ops (real autograd).
_LEGACY_OP_NAME = "segc::deform_conv2d"
_LEGACY_OP_SCHEMA = (
    "deform_conv2d(Tensor x, Tensor weight, Tensor offset, Tensor? bias, Tensor? mask, "
    "int[] stride, int[] padding, int[] dilation, int groups, int offset_groups) -> Tensor"
)


def _legacy_op_impl(
    x: Tensor,
    weight: Tensor,
    offset: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Real values for the traced node (the exporter runs the model once while tracing)."""
    return _deform_conv2d_torch(
        x, offset, weight, bias, mask,
        (stride[0], stride[1]), (padding[0], padding[1]), (dilation[0], dilation[1]),
        groups, offset_groups,
    )


def _legacy_op_meta(
    x: Tensor,
    weight: Tensor,
    offset: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Shape-only kernel so meta / fake tensors can flow through the op too."""
    return x.new_empty((x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]))


def _define_legacy_op() -> tuple[Any, torch.library.Library | None]:
    """Define ``torch.ops.segc.deform_conv2d`` once (a module reload must not redefine it).

    The low-level ``torch.library.Library`` API is used rather than ``@custom_op``: the
    latter imports torch._dynamo on first call, which costs seconds on every export.
    "FRAGMENT" lets other segc modules add their own ops to the ``segc`` namespace.
    The op has no autograd kernel on purpose: only the exporter's trace calls it.
    """
    try:
        # Already defined by an earlier import of this module (importlib.reload keeps the
        # module's globals, so the Library that owns the kernels is still there: keep it).
        return torch.ops.segc.deform_conv2d, globals().get("_LEGACY_LIBRARY")
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("segc", "FRAGMENT")
    library.define(_LEGACY_OP_SCHEMA)
    library.impl("deform_conv2d", _legacy_op_impl, "CompositeExplicitAutograd")
    library.impl("deform_conv2d", _legacy_op_meta, "Meta")
    return torch.ops.segc.deform_conv2d, library


def _legacy_symbolic(
    g: Any,
    x: Any,
    weight: Any,
    offset: Any,
    bias: Any,
    mask: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: Any,
    offset_groups: Any,
) -> Any:
    """Emit ``DeformConv(X, W, offset, B, mask)``; an absent B before a present mask is ""."""
    from torch.onnx import symbolic_helper as sh

    require_deform_conv_opset(int(g.opset))
    sizes = weight.type().sizes()
    if sizes is None or len(sizes) != 4 or sizes[2] is None or sizes[3] is None:
        raise SegcError("DeformConv export: the weight's kernel size must be static")
    attrs = _onnx_attributes(
        (int(sizes[2]), int(sizes[3])),
        tuple(sh._get_const(stride, "is", "stride")),
        tuple(sh._get_const(padding, "is", "padding")),
        tuple(sh._get_const(dilation, "is", "dilation")),
        int(sh._get_const(groups, "i", "groups")),
        int(sh._get_const(offset_groups, "i", "offset_groups")),
    )
    inputs = [x, weight, offset, bias, mask]
    while sh._is_none(inputs[-1]):
        inputs.pop()  # trailing optional inputs are simply left out
    inputs = [sh._optional_input_placeholder_tensor(g) if sh._is_none(v) else v for v in inputs]
    return g.op(
        "DeformConv",
        *inputs,
        dilations_i=attrs["dilations"],
        group_i=attrs["group"],
        kernel_shape_i=attrs["kernel_shape"],
        offset_group_i=attrs["offset_group"],
        pads_i=attrs["pads"],
        strides_i=attrs["strides"],
    )


# The Library object must stay referenced, or its registrations are dropped.
_legacy_op, _LEGACY_LIBRARY = _define_legacy_op()
# Registered at opset 1 so that EVERY target opset reaches _legacy_symbolic, which then
# refuses opsets below 19 with a SegcError (the exporter lets it propagate unchanged).
torch.onnx.register_custom_op_symbolic(_LEGACY_OP_NAME, _legacy_symbolic, 1)  # type: ignore[attr-defined]  # not in __all__


def _dynamo_target_opset() -> int | None:
    """The opset that a running ``torch.onnx.export(..., dynamo=True)`` call was given.

    torch.export traces the forward before the opset is used, and offers no public way to
    read it; the exporter's entry frame (``export_compat``) holds it as a local, so we look
    it up there to fail early with a clear SegcError instead of emitting a DeformConv node
    into an opset-18 model that no runtime accepts.  None when it cannot be found.
    """
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "export_compat" and "onnx" in code.co_filename:
            value = frame.f_locals.get("opset_version")
            return int(value) if isinstance(value, int) else None
        frame = frame.f_back
    return None


def _deform_conv2d_dynamo(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> Tensor:
    """Record one ONNX ``DeformConv`` node in the FX graph torch.export builds.

    ``torch.onnx.ops.symbolic`` is a real torch op (it returns zeros when run), which the
    dynamo exporter turns into exactly the node named here, keeping symbolic H/W.
    """
    require_deform_conv_opset(_dynamo_target_opset())
    shape = [x.shape[0], weight.shape[0], offset.shape[2], offset.shape[3]]
    return torch.onnx.ops.symbolic(
        "DeformConv",
        [x, weight, offset, bias, mask],
        _onnx_attributes(
            (int(weight.shape[2]), int(weight.shape[3])),
            stride, padding, dilation, groups, offset_groups,
        ),
        dtype=x.dtype,
        shape=shape,
        version=DEFORM_CONV_MIN_OPSET,
    )


def deform_conv2d(
    x: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: IntPair = (1, 1),
    padding: IntPair = (0, 0),
    dilation: IntPair = (1, 1),
    groups: int = 1,
    offset_groups: int = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Modulated deformable convolution (DCNv2; DCNv1 when ``mask`` is None).

    Args:
        x: input [N, C, H, W].
        offset: [N, 2*offset_groups*kh*kw, Ho, Wo], interleaved (dy, dx) per tap.
        weight: [O, C/groups, kh, kw].
        bias: [O] or None.
        stride, padding, dilation: int or (h, w); padding is symmetric, in pixels.
        groups: convolution groups (as nn.Conv2d).
        offset_groups: deformable groups; input channels split into this many blocks,
            each with its own offsets and mask.
        mask: [N, offset_groups*kh*kw, Ho, Wo] modulation (already sigmoided) or None.

    Returns:
        [N, O, Ho, Wo].  During ``torch.onnx.export`` the call becomes one ONNX
        ``DeformConv`` node (opset >= 19; lower opsets raise ``SegcError``).
    """
    stride_hw = _pair(stride, "stride")
    padding_hw = _pair(padding, "padding")
    dilation_hw = _pair(dilation, "dilation")
    if not _is_tracing():
        # Under tracing the sizes are traced tensors: comparing them would bake constants
        # into the trace (TracerWarning). The legacy exporter's own run checks nothing, but
        # the forward it traces runs the real computation, which fails on bad shapes anyway.
        _check_inputs(
            x, offset, weight, bias, mask, stride_hw, padding_hw, dilation_hw, groups,
            offset_groups,
        )
    args = (stride_hw, padding_hw, dilation_hw, int(groups), int(offset_groups))
    mode = _execution_mode()
    if mode == "legacy-export":
        return _legacy_op(
            x, weight, offset, bias, mask,
            list(stride_hw), list(padding_hw), list(dilation_hw), int(groups), int(offset_groups),
        )
    if mode == "dynamo-export":
        return _deform_conv2d_dynamo(x, offset, weight, bias, mask, *args)
    if mode == "dynamo-strict-export":
        raise SegcError(
            "DeformConv cannot be exported through torch.export(strict=True); the exporter "
            "only falls back to strict mode when the non-strict capture failed: fix that error"
        )
    return _deform_conv2d_torch(x, offset, weight, bias, mask, *args)


def _execution_mode() -> str:
    """Which of the paths in the module docstring this call takes.

    ``torch.onnx.is_in_onnx_export()`` is True inside both exporters when the forward runs as
    Python (legacy tracing, torch.export non-strict).  Under dynamo (torch.export strict,
    torch.compile) dynamo folds it to False, so the dynamo exporter's own flag is read: if
    it says an ONNX export is running, the strict fallback is refused rather than silently
    decomposed into gathers (the DeformConv node would be lost).
    """
    if torch.onnx.is_in_onnx_export():
        return "legacy-export" if _is_tracing() else "dynamo-export"
    if torch.compiler.is_compiling() and _dynamo_exporter_flags is not None:
        if getattr(_dynamo_exporter_flags, "_is_onnx_exporting", False):
            return "dynamo-strict-export"
    return "eager"


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 layer with mmcv's / MhLiao-DB's constructor; offsets and mask come from outside.

    The caller (e.g. DBNet's deformable bottleneck) predicts ``offset`` and ``mask`` with its
    own conv and applies the sigmoid to the mask, so state dicts of those code bases map onto
    ``weight`` / ``bias`` here unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise SegcError(
                f"ModulatedDeformConv2d: channels {in_channels}->{out_channels} are not "
                f"divisible by groups={groups}"
            )
        if in_channels % deformable_groups:
            raise SegcError(
                f"ModulatedDeformConv2d: {in_channels} input channels are not divisible by "
                f"deformable_groups={deformable_groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias: nn.Parameter | None
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Same initialisation as nn.Conv2d (kaiming-uniform, a=sqrt(5))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None) -> Tensor:
        return deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            offset_groups=self.deformable_groups,
            mask=mask,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deformable_groups={self.deformable_groups}, "
            f"bias={self.bias is not None}"
        )


def export_onnx(
    model: nn.Module,
    args: tuple[Any, ...],
    path: str | os.PathLike[str],
    *,
    opset: int = DEFORM_CONV_MIN_OPSET,
    dynamo: bool = False,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    dynamic_shapes: Any = None,
) -> Path:
    """``torch.onnx.export`` for models with deformable convolutions, with segc's errors.

    Why a wrapper: the opset is checked before any tracing, and the dynamo exporter wraps
    every exception raised inside the model (ours included) in its own TorchExportError;
    here the SegcError in that chain is re-raised as itself, so the CLI prints one line.
    ``dynamic_axes`` serves the legacy exporter; the dynamo exporter takes ``dynamic_shapes``
    (torch.export.Dim per axis) and converts ``dynamic_axes`` itself when only those are given.
    The dynamo model is written as one self-contained file (external_data=False).
    """
    require_deform_conv_opset(opset)
    target = Path(path)
    try:
        if dynamo:
            torch.onnx.export(
                model, args, str(target), dynamo=True, opset_version=opset,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes if dynamic_shapes is None else None,
                dynamic_shapes=dynamic_shapes, external_data=False, verbose=False,
            )
        else:
            with warnings.catch_warnings():
                # The legacy exporter warns that it is deprecated on every call.
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(
                    model, args, str(target), dynamo=False, opset_version=opset,
                    input_names=list(input_names) if input_names else None,
                    output_names=list(output_names) if output_names else None,
                    dynamic_axes=dynamic_axes,
                )
    except SegcError:
        raise
    except Exception as exc:
        cause = _find_segc_error(exc)
        if cause is not None:
            raise SegcError(str(cause)) from exc
        raise
    return target


def _find_segc_error(exc: BaseException) -> SegcError | None:
    """The first SegcError in an exception's cause/context chain (cycle-safe)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, SegcError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
