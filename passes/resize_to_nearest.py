"""resize_to_nearest: switch chosen linear/cubic Resizes to nearest-neighbour.

What: set ``mode="nearest"`` on the Resize (or old ``Upsample``) nodes the user names with
selectors or a preset. Why: bilinear upsampling of wide feature maps is a large share of
HRNet's run time on NPUs; the OCRNet (Ascend) and 3D_HRNet guides switched chosen Resizes to
nearest and accepted under one point of mIoU (docs/seed_pipelines.md, sections 1, 4). The numerics change on purpose,
so the contract is ``approximate`` and the verifier judges the price (cosine, label agreement).

    x1 [N,96,H/8,W/8] -> Resize(mode=linear,  coord=align_corners) --+
    x2 [...H/16...]   -> Resize(mode=linear,  ...)                 --+-> Concat -> head
    x3 [...H/32...]   -> Resize(mode=linear,  ...)                 --+
    x0 [N,48,H/4,W/4] ------------------------------------------------+
                                   ==>
    x1 -> Resize(mode=nearest, coord=align_corners, nearest_mode=round_prefer_floor) -> Concat
    ...

Like the guides, the coordinate transformation is left alone by default (option
``coordinate_mode`` overrides it). ``nearest_mode`` however is *set*, because the value the
exporter left there was never used by a linear Resize and is often wrong for nearest: the
PyTorch exporter writes ``nearest_mode=floor`` on every Resize, and ``floor`` under
``half_pixel``/``align_corners`` coordinates picks the source pixel to the upper-left of the
sampling point, shifting the map by up to one source pixel. The pass therefore picks:

* ``asymmetric``: ``floor``, which is pixel replication for integer factors (PyTorch's
  ``nearest``, what every backend computes the same way);
* every other coordinate mode: ``round_prefer_floor``, the source pixel nearest to the very
  point the linear mode interpolated around (for integer factors under ``half_pixel`` it is
  again pixel replication, i.e. PyTorch's ``nearest-exact``).

Option ``nearest_mode`` overrides the choice. ``antialias`` (opset 18) applies to linear and
cubic only and is dropped. In opset 10 (whose Resize has neither attribute) only ``mode``
changes.

Presets:

* ``hrnet_branches``: the Resizes that upsample HRNet's lower-resolution branches right before
  the backbone's final Concat, found structurally: a Concat with >= 3 inputs where all but one
  come (through Cast/Identity) from upsampling Resizes. The remaining input is the
  full-resolution branch, passed directly (HRNet-Seg) or through a Resize to its own size
  (mmseg's ``resize_concat``, recognised because its ``sizes`` are computed from its own
  input's Shape).
* ``hrnet_fuse``: the Resizes inside HRNet's fuse layers (a Resize feeding an Add).
* ``all``: every Resize/Upsample.

Presets match the structure whatever the current mode, so a second run finds the same nodes
already nearest and reports ``changed=False``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from segc.errors import SegcError
from segc.onnx_graph import graph_opset, resize_operands
from segc.passbase import Contract, GraphPass, OptionKind, PassContext, PassOption, PassResult, register_pass
from segc.selectors import as_selector_list, node_label, select_many

RESIZE_OPS = ("Resize", "Upsample")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
_PASS_THROUGH = ("Cast", "Identity")  # ops a preset looks through between a Resize and its consumer
_SHAPE_TRACE_LIMIT = 64  # nodes visited when tracing where a Resize's sizes come from


def default_nearest_mode(coordinate_mode: str) -> str:
    """The nearest_mode that samples the source pixel the linear mode centred on (see module doc)."""
    return "floor" if coordinate_mode == "asymmetric" else "round_prefer_floor"


def _is_resize(node: gs.Node) -> bool:
    return node.op in RESIZE_OPS and node.domain in ("", "ai.onnx", None)


def _mode(node: gs.Node) -> str:
    # Resize's default mode is nearest; Upsample's too
    return str(node.attrs.get("mode", "nearest"))


def _source(tensor: gs.Tensor) -> gs.Node | None:
    """The node producing ``tensor``, looking through Cast/Identity."""
    node = tensor.inputs[0] if tensor.inputs else None
    while node is not None and node.op in _PASS_THROUGH and node.inputs:
        t = node.inputs[0]
        node = t.inputs[0] if t.inputs else None
    return node


def _consumers(node: gs.Node) -> list[gs.Node]:
    """Nodes reading ``node``'s first output, looking through Cast/Identity."""
    out: list[gs.Node] = []
    stack = [node.outputs[0]] if node.outputs else []
    while stack:
        t = stack.pop()
        for c in t.outputs:
            if c.op in _PASS_THROUGH and c.outputs:
                stack.append(c.outputs[0])
            else:
                out.append(c)
    return out


def _shape_sources(tensor: gs.Tensor) -> list[gs.Tensor]:
    """Tensors whose Shape the value of ``tensor`` is computed from (a bounded upstream walk)."""
    found: list[gs.Tensor] = []
    stack, seen = [tensor], {id(tensor)}
    visited = 0
    while stack and visited < _SHAPE_TRACE_LIMIT:
        t = stack.pop()
        node = t.inputs[0] if t.inputs else None
        if node is None:
            continue
        visited += 1
        if node.op == "Shape":
            if all(node.inputs[0] is not f for f in found):
                found.append(node.inputs[0])
            continue
        for i in node.inputs:
            if id(i) not in seen and not isinstance(i, gs.Constant):
                seen.add(id(i))
                stack.append(i)
    return found


def is_identity_resize(node: gs.Node, opset: int, reference: gs.Tensor | None = None) -> bool:
    """True when the Resize provably keeps its input's size.

    mmseg's ``resize_concat`` resizes every branch, the full-resolution one included, to the
    size of ``reference`` (the full-resolution branch, read at run time with ``Shape``); the
    Resize whose data input *is* the reference changes nothing. With static shapes the same
    fact shows as constant scales of 1 or equal input/output shapes.
    """
    data, out = node.inputs[0], node.outputs[0]
    if reference is not None and data is reference:
        return True
    scales, sizes = resize_operands(node, opset)
    if isinstance(sizes, gs.Constant) and _static(data.shape) and list(sizes.values.tolist()) == list(data.shape):
        return True
    if isinstance(scales, gs.Constant) and scales.values.size and np.all(scales.values == 1):
        return True
    return _same_spatial_size(data.shape, out.shape)


def _same_spatial_size(a: Any, b: Any) -> bool:
    """Known, equal H and W (a dynamic batch dim does not make a Resize less of an identity)."""
    if a is None or b is None or len(a) != len(b) or len(a) < 3:
        return False
    spatial = list(a[2:]) + list(b[2:])
    return all(isinstance(d, int) and d > 0 for d in spatial) and list(a[2:]) == list(b[2:])


def _size_reference(resizes: list[gs.Node], opset: int) -> gs.Tensor | None:
    """The one tensor whose Shape every Resize's ``sizes`` is computed from, if there is one."""
    common: list[gs.Tensor] | None = None
    for node in resizes:
        _, sizes = resize_operands(node, opset)
        if sizes is None:
            return None
        sources = _shape_sources(sizes)
        common = sources if common is None else [t for t in common if any(t is s for s in sources)]
    return common[0] if common is not None and len(common) == 1 else None


def _static(shape: Any) -> bool:
    return shape is not None and len(shape) > 0 and all(isinstance(d, int) and d > 0 for d in shape)


def _without_full_resolution(resizes: list[gs.Node]) -> list[gs.Node]:
    """Drop the Resize of the full-resolution branch when identity could not be proved.

    After simplification of a dynamic-batch export the output sizes of mmseg's
    ``resize_concat`` are unknown, but the input sizes are not: the branch with the strictly
    largest H*W is the one every other branch is resized to, so its own Resize is a no-op.
    """
    areas = []
    for node in resizes:
        shape = node.inputs[0].shape
        if shape is None or len(shape) < 4 or not all(isinstance(d, int) and d > 0 for d in shape[2:]):
            return resizes
        areas.append(int(np.prod(shape[2:])))
    top = max(areas)
    if areas.count(top) != 1:
        return resizes
    return [n for n, a in zip(resizes, areas, strict=False) if a != top]


def hrnet_branch_resizes(graph: gs.Graph) -> list[gs.Node]:
    """Upsampling Resizes feeding a Concat of >= 3 inputs of which all but one are such Resizes."""
    opset = graph_opset(graph)
    found: list[gs.Node] = []
    for concat in graph.nodes:
        if concat.op != "Concat" or len(concat.inputs) < 3:
            continue
        sources = [_source(t) for t in concat.inputs]
        resizes = [s for s in sources if s is not None and _is_resize(s)]
        reference = _size_reference(resizes, opset)
        ups = [s for s in resizes if not is_identity_resize(s, opset, reference)]
        if len(ups) == len(concat.inputs):
            ups = _without_full_resolution(ups)
        if len(ups) == len(concat.inputs) - 1:
            found.extend(u for u in ups if all(u is not f for f in found))
    return found


def hrnet_fuse_resizes(graph: gs.Graph) -> list[gs.Node]:
    """Resizes whose output is added to another branch (HRNet's fuse layers)."""
    return [n for n in graph.nodes if _is_resize(n) and any(c.op == "Add" for c in _consumers(n))]


def all_resizes(graph: gs.Graph) -> list[gs.Node]:
    return [n for n in graph.nodes if _is_resize(n)]


PRESETS: dict[str, Callable[[gs.Graph], list[gs.Node]]] = {
    "hrnet_branches": hrnet_branch_resizes,
    "hrnet_fuse": hrnet_fuse_resizes,
    "all": all_resizes,
}


@register_pass
class ResizeToNearest(GraphPass):
    name = "resize_to_nearest"
    contract = Contract.APPROXIMATE
    summary = "switch chosen linear/cubic Resize nodes to nearest (speed for a little accuracy)"
    options = {
        "select": PassOption(OptionKind.STR_LIST, "selectors of the Resize nodes to switch, e.g. 'Resize>Concat' or "
                             "'*/fuse_layers/*'", split=as_selector_list),
        "preset": PassOption(OptionKind.STR_LIST,
                             f"named choice of Resizes: {', '.join(PRESETS)} (several: comma-separated)",
                             split=as_selector_list),
        "coordinate_mode": PassOption(OptionKind.CHOICE, "set coordinate_transformation_mode; default: keep",
                                      choices=COORDINATE_MODES),
        "nearest_mode": PassOption(OptionKind.CHOICE,
                                   "set nearest_mode; default: floor for asymmetric, else round_prefer_floor",
                                   choices=NEAREST_MODES),
    }

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        opset = graph_opset(graph)
        coord_override: str | None = ctx.option("coordinate_mode")
        nearest_override: str | None = ctx.option("nearest_mode")
        if (coord_override or nearest_override) and opset < 11:
            raise SegcError(
                f"resize_to_nearest: opset {opset} Resize has no coordinate_transformation_mode/nearest_mode; drop "
                "those options"
            )
        if coord_override == "half_pixel_symmetric" and opset < 19:
            raise SegcError(
                f"resize_to_nearest: coordinate_mode half_pixel_symmetric needs opset >= 19 (model has {opset})"
            )

        chosen = self._choose(graph, ctx)
        resizes = [n for n in chosen if _is_resize(n)]
        notes: list[str] = []
        if len(resizes) < len(chosen):
            notes.append(f"ignored {len(chosen) - len(resizes)} selected node(s) that are not Resize/Upsample")
        if not resizes:
            raise SegcError("resize_to_nearest: the selection contains no Resize or Upsample node")

        switched: list[str] = []
        switched_nodes: list[gs.Node] = []
        modes_before: dict[str, int] = {}
        already = 0
        for node in resizes:
            mode = _mode(node)
            if mode == "nearest":
                already += 1
                continue
            modes_before[mode] = modes_before.get(mode, 0) + 1
            node.attrs["mode"] = "nearest"
            node.attrs.pop("antialias", None)  # linear/cubic only
            if node.op == "Resize" and opset >= 11:
                if coord_override:
                    node.attrs["coordinate_transformation_mode"] = coord_override
                coord = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
                node.attrs["nearest_mode"] = nearest_override or default_nearest_mode(coord)
            switched.append(node_label(node))
            switched_nodes.append(node)

        if switched:
            coords = sorted(
                {
                    str(n.attrs.get("coordinate_transformation_mode", "half_pixel"))
                    for n in switched_nodes
                    if n.op == "Resize"
                }
            )
            if opset >= 11 and coords:
                picked = nearest_override or ", ".join(f"{c}->{default_nearest_mode(c)}" for c in coords)
                coord_note = f"set to {coord_override}" if coord_override else "kept"
                notes.append(f"coordinate mode {coord_note}; nearest_mode: {picked}")
        return PassResult(
            changed=bool(switched),
            stats={
                "switched": len(switched),
                "nodes": switched,
                "already_nearest": already,
                "modes_before": modes_before,
            },
            notes=notes,
        )

    def _choose(self, graph: gs.Graph, ctx: PassContext) -> list[gs.Node]:
        selectors: list[str] = ctx.option("select") or []
        presets: list[str] = ctx.option("preset") or []
        if not selectors and not presets:
            raise SegcError(
                "resize_to_nearest needs option 'select' (selectors of Resize nodes, e.g. 'Resize>Concat') "
                f"or 'preset' ({', '.join(PRESETS)})"
            )
        chosen: list[gs.Node] = list(select_many(graph, selectors, kind="nodes")) if selectors else []
        for preset in presets:
            if preset not in PRESETS:
                raise SegcError(f"resize_to_nearest: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
            nodes = PRESETS[preset](graph)
            if not nodes:
                raise SegcError(
                    f"resize_to_nearest: preset {preset!r} found no matching Resize in this graph; "
                    "name the Resizes with 'select' instead"
                )
            chosen.extend(n for n in nodes if all(n is not c for c in chosen))
        return chosen
