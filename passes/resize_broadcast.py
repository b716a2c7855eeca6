"""resize_broadcast: a Resize of a 1x1 map is a broadcast; make it an Expand.

What
    A Resize (or Upsample) whose input is provably ``N x C x 1 x 1`` and which leaves N and C
    alone becomes ``Expand(x, shape)``: with the Resize's own ``sizes`` as the shape (they are
    ``[N, C, H, W]``), or, for constant scales, the constant ``[1, 1, floor(sh), floor(sw)]``.

Why
    The global-pooling branch of ASPP (DeepLabv3) and PSP heads pools to 1x1 and resizes back
    with ``F.interpolate(g, size=f.shape[2:])``. Those sizes come from another tensor's shape,
    so Ascend ATC refuses the Resize for a shape range, and no divisibility helps: the ratio
    ``H / 1`` is never a constant. But every sampling position of every mode reads the one
    source pixel (the weights of linear/cubic sum to one, nearest picks it), so the output is
    the input broadcast: no Resize, no runtime Resize parameters. ``Expand`` is in the Ascend,
    TensorRT and onnxruntime operator lists (targets/*.json).

Exactness
    nearest: bit-exact. linear/cubic: the same value up to float rounding of
    ``x*w0 + x*w1`` (``w0 + w1 = 1``), i.e. the ``exact`` contract's reassociation.
    ``tf_crop_and_resize`` is left alone (it writes ``extrapolation_value`` outside the roi),
    and so is a Resize with ``axes`` (opset 18) or one that touches N or C.

Before / after (PSP pooling branch, legacy exporter)::

    f ─┬─ GlobalAveragePool ─ Conv ─ g [N,C,1,1] ─ Resize(roi, -, sizes) ─ Concat(f, .)
       └─ Shape ─ Slice[2:4] ─┐                              │
          Shape(g) ─ Slice[0:2] ─ Concat ─────── sizes ──────┘
    ==>
    f ─┬─ GlobalAveragePool ─ Conv ─ g ─ Expand(g, sizes) ─ Concat(f, .)
       └─ Shape ─ Slice[2:4] ─┐          │
          Shape(g) ─ Slice[0:2] ─ Concat ┘
"""

from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from segc.passbase import Contract, GraphPass, PassContext, PassResult, register_pass
from segc.onnx_graph import constant_array
from segc.passes._shape_expr import ShapeAnalysis, topo_nodes
from segc.passes._sym_poly import as_int


def _text(value: object) -> object:
    return value.decode() if isinstance(value, bytes) else value


@register_pass
class ResizeBroadcast(GraphPass):
    """Resize/Upsample of a provably 1x1 map -> Expand (see the module docstring).

    Stats: ``resizes`` (all Resize/Upsample), ``rewritten``; ``notes`` names each one.
    """

    name = "resize_broadcast"
    contract = Contract.EXACT
    summary = "Resize of a provably NxCx1x1 map (ASPP/PSP pooling branches) -> Expand: no Resize parameters left"
    runs_after = ("simplify",)
    order_reason = "simplify folds the shape chains that prove a map is 1x1"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        resizes = [
            n for n in topo_nodes(graph) if n.op in ("Resize", "Upsample") and (n.domain or "") in ("", "ai.onnx")
        ]
        stats = {"resizes": len(resizes), "rewritten": 0}
        if not resizes:
            return PassResult(changed=False, stats=stats)
        analysis = ShapeAnalysis(graph).run()
        notes: list[str] = []
        plans = [(node, shape) for node in resizes if (shape := self._target_shape(node, analysis)) is not None]
        for node, shape in plans:
            src = node.inputs[0]
            node.op = "Expand"
            node.attrs.clear()
            node.inputs.clear()
            node.inputs.extend([src, shape])
            stats["rewritten"] += 1
            notes.append(
                f"Resize {node.name!r}: input {src.name!r} is 1x1 -> Expand to "
                f"{shape.name if not isinstance(shape, gs.Constant) else np.asarray(shape.values).tolist()}"
            )
        return PassResult(changed=bool(plans), stats=stats, notes=notes)

    @staticmethod
    def _target_shape(node: gs.Node, analysis: ShapeAnalysis) -> gs.Tensor | None:
        """The Expand shape that reproduces this Resize, or None when it is not a broadcast."""
        if node.op == "Upsample" and analysis.opset < 9:
            return None  # scales as an attribute: leave such old graphs to simplify
        if node.attrs.get("axes") is not None:
            return None
        if _text(node.attrs.get("coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize":
            return None
        if _text(node.attrs.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            return None
        shape = analysis.shape(node.inputs[0])
        if shape is None or len(shape) < 3 or any(as_int(d) != 1 for d in shape[2:]):
            return None
        scales_t, sizes_t = analysis.resize_operands(node)
        if sizes_t is not None:
            value = analysis.value(sizes_t)
            if value is None or len(value.elems) != len(shape):
                return None
            for axis in (0, 1):
                e = value.elems[axis]
                if e is None or e != shape[axis]:
                    return None  # sizes change N or C (or cannot be shown not to)
            arr = constant_array(sizes_t)
            if arr is not None and arr.dtype != np.int64:
                return None
            return sizes_t  # int64 [N, C, H, W]: exactly Expand's shape
        if scales_t is None:
            return None
        scales = constant_array(scales_t)
        if scales is None or scales.size != len(shape) or np.any(scales[:2] != 1) or np.any(scales[2:] <= 0):
            return None
        out = [1, 1] + [max(1, math.floor(float(s))) for s in scales.reshape(-1)[2:]]
        if any(math.floor(float(s)) < 1 for s in scales.reshape(-1)[2:]):
            return None  # a downscale of 1x1 to 0 pixels: not a broadcast
        name = f"{node.name or node.outputs[0].name}_shape"
        return gs.Constant(name if name not in analysis.graph.tensors() else f"{name}_1", np.array(out, dtype=np.int64))


def broadcast_shape(node: gs.Node, analysis: ShapeAnalysis) -> gs.Tensor | None:
    """The Expand shape reproducing Resize ``node`` when it is a 1x1 broadcast, else None."""
    return ResizeBroadcast._target_shape(node, analysis)
