"""Channel provenance: where each channel of a tensor comes from, and how to rebuild a layout.

Deformable convolutions differ between runtimes mostly in *channel layout*: ONNX
``DeformConv`` and mmcv take interleaved (dy, dx) offset pairs plus a separate mask, Ascend's
``DeformableConv2D`` one tensor [all dx, all dy, all masks]. Converting between them is a
channel permutation, and in real models (DBNet, mmdet) those channels are computed by one
ordinary Conv, then sliced, and the mask part passed through a Sigmoid::

    x -> Conv(27 ch) -+- Slice[0:18] ----------- offset
                      +- Slice[18:27] - Sigmoid - mask

A permutation of a Conv's output channels is free: permute its weight rows and bias. So
instead of adding runtime Gather/Concat ops in front of the vendor op, this module traces
every wanted channel back through Slice / Split / Concat / Gather / Identity and elementwise
Sigmoid to its *root* tensor, and rebuilds the wanted layout from the root:

    trace(offset, 5)  ->  Source(root=Conv output, channel=5, chain=())
    trace(mask, 2)    ->  Source(root=Conv output, channel=20, chain=("Sigmoid",))

``ChannelAssembler`` then emits, per root that is a plain Conv with constant weights, ONE new
Conv whose output channels are exactly the wanted ones in the wanted order, sliced into runs
that share a chain (re-applying the Sigmoid where needed). Roots that are not such a Conv
(a graph input, a grouped conv, anything opaque) fall back to a runtime Slice or Gather.
Both paths compute the same numbers; the Conv path leaves no reorder ops for the vendor
compiler to schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from segc.onnx_graph import constant_array
from segc.passes._graph_build import GraphBuilder, input_at

#: Elementwise unary ops we may move after a channel selection (they commute with it).
CHAIN_OPS = frozenset({"Sigmoid"})

ChannelPick = tuple[gs.Tensor, int]


@dataclass(frozen=True)
class Source:
    """Channel ``channel`` of ``root``, then the unary ops of ``chain`` applied in order."""

    root: gs.Tensor
    channel: int
    chain: tuple[str, ...] = ()


def channel_count(tensor: gs.Tensor, _depth: int = 0) -> int | None:
    """Static size of axis 1 when it can be known.

    From shape information when present, else from the producer: a Conv's constant weight,
    or the channel ops this module traces through (a rewritten graph has no shape info on
    the tensors an earlier rewrite created, e.g. Concat(Slice(conv), Sigmoid(Slice(conv)))).
    """
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values)
        return int(values.shape[1]) if values.ndim >= 2 else None
    shape = tensor.shape
    if shape is not None and len(shape) >= 2 and isinstance(shape[1], (int, np.integer)) and int(shape[1]) >= 0:
        return int(shape[1])
    if len(tensor.inputs) != 1 or _depth > 64:
        return None
    node = tensor.inputs[0]
    if node.op == "Conv":
        weight = constant_array(input_at(node, 1))
        return int(weight.shape[0]) if weight is not None else None
    if node.op in CHAIN_OPS or node.op == "Identity":
        source = input_at(node, 0)
        return channel_count(source, _depth + 1) if source is not None else None
    if node.op == "Concat":
        if not _channel_axis(int(node.attrs.get("axis", 0)), tensor):
            return None
        counts = [channel_count(t, _depth + 1) for t in node.inputs]
        return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
    selector = _SELECTORS.get(node.op)
    if selector is not None:
        selected = selector(node, tensor, _depth + 1)
        return len(selected[1]) if selected is not None else None
    return None


def _channel_axis(axis: int, tensor: gs.Tensor) -> bool:
    """True when ``axis`` names axis 1 of a (assumed 4-D unless known) tensor."""
    rank = len(tensor.shape) if tensor.shape is not None else 4
    return axis == 1 or axis + rank == 1


Selection = tuple[gs.Tensor, list[int]]  # (input tensor, the input channels copied, in order)


def _slice_selection(node: gs.Node, out: gs.Tensor, depth: int) -> Selection | None:
    data = input_at(node, 0)
    if data is None:
        return None
    if len(node.inputs) > 1:
        params = [constant_array(input_at(node, i)) for i in range(1, 5)]
        if any(input_at(node, i) is not None and params[i - 1] is None for i in range(1, 5)):
            return None  # starts/ends/axes/steps computed at run time
        starts, ends, axes, steps = params
    else:  # opset < 10: attributes
        starts = np.asarray(node.attrs.get("starts", []))
        ends = np.asarray(node.attrs.get("ends", []))
        axes = np.asarray(node.attrs["axes"]) if "axes" in node.attrs else None
        steps = None
    if starts is None or ends is None:
        return None
    start_list = [int(v) for v in np.ravel(starts)]
    end_list = [int(v) for v in np.ravel(ends)]
    axis_list = [int(v) for v in np.ravel(axes)] if axes is not None else list(range(len(start_list)))
    step_list = [int(v) for v in np.ravel(steps)] if steps is not None else [1] * len(start_list)
    if len(axis_list) != 1 or not _channel_axis(axis_list[0], data):
        return None  # slices other axes too: not a pure channel selection
    dim = channel_count(data, depth)
    if dim is None:
        return None
    # ONNX Slice clamps starts/ends exactly as Python's slice.indices does
    return data, list(range(*slice(start_list[0], end_list[0], step_list[0]).indices(dim)))


def _split_selection(node: gs.Node, out: gs.Tensor, depth: int) -> Selection | None:
    data = input_at(node, 0)
    if data is None or not _channel_axis(int(node.attrs.get("axis", 0)), data):
        return None
    index = next((i for i, t in enumerate(node.outputs) if t is out), None)
    if index is None:
        return None
    sizes_const = constant_array(input_at(node, 1))
    if sizes_const is not None:
        sizes = [int(v) for v in np.ravel(sizes_const)]
    elif "split" in node.attrs:
        sizes = [int(v) for v in node.attrs["split"]]
    else:
        dim = channel_count(data, depth)
        parts = len(node.outputs)
        if dim is None or parts == 0:
            return None
        chunk = -(-dim // parts)  # equal parts; opset 18's last chunk may be smaller
        sizes = [max(0, min(chunk, dim - i * chunk)) for i in range(parts)]
    if index >= len(sizes):
        return None
    first = sum(sizes[:index])
    return data, list(range(first, first + sizes[index]))


def _gather_selection(node: gs.Node, out: gs.Tensor, depth: int) -> Selection | None:
    data = input_at(node, 0)
    indices = constant_array(input_at(node, 1))
    if data is None or indices is None or indices.ndim != 1:
        return None
    if not _channel_axis(int(node.attrs.get("axis", 0)), data):
        return None
    picked = [int(v) for v in indices]
    if any(v < 0 for v in picked):
        dim = channel_count(data, depth)
        if dim is None:
            return None
        picked = [v + dim if v < 0 else v for v in picked]
    return data, picked


_SELECTORS = {"Slice": _slice_selection, "Split": _split_selection, "Gather": _gather_selection}


def _through_concat(node: gs.Node, out: gs.Tensor, ch: int) -> ChannelPick | None:
    if not _channel_axis(int(node.attrs.get("axis", 0)), out):
        return None
    remaining = ch
    for source in node.inputs:
        count = channel_count(source)
        if count is None:
            return None
        if remaining < count:
            return source, remaining
        remaining -= count
    return None


def trace(tensor: gs.Tensor, channel: int, follow: bool = True) -> Source:
    """The root channel that ``tensor[:, channel]`` is a copy (or a Sigmoid...) of.

    With ``follow`` False the tensor itself is the root (the reference lowering uses that:
    it must not touch weights, only reorder at run time).
    """
    applied: list[str] = []  # collected consumer-first; reversed at the end
    while follow and len(tensor.inputs) == 1:
        node = tensor.inputs[0]
        if node.op == "Identity" and input_at(node, 0) is not None:
            tensor = node.inputs[0]
            continue
        if node.op in CHAIN_OPS and len(node.inputs) == 1 and len(node.outputs) == 1:
            applied.append(node.op)
            tensor = node.inputs[0]
            continue
        if node.op == "Concat":
            mapped = _through_concat(node, tensor, channel)
        else:
            selector = _SELECTORS.get(node.op)
            selected = selector(node, tensor, 0) if selector is not None else None
            mapped = (
                (selected[0], selected[1][channel]) if selected is not None and channel < len(selected[1]) else None
            )
        if mapped is None:
            break
        tensor, channel = mapped
    return Source(tensor, channel, tuple(reversed(applied)))


def permutable_conv(root: gs.Tensor) -> gs.Node | None:
    """The Conv producing ``root`` when its output channels can be re-selected by weights.

    Requires constant weight (and bias), group 1 (a grouped conv ties each output channel to
    its input block) and that ``root`` is the Conv's only output.
    """
    if len(root.inputs) != 1:
        return None
    node = root.inputs[0]
    if node.op != "Conv" or (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1:
        return None
    if int(node.attrs.get("group", 1)) != 1:
        return None
    if constant_array(input_at(node, 1)) is None:
        return None
    if input_at(node, 2) is not None and constant_array(input_at(node, 2)) is None:
        return None
    return node


@dataclass
class _Run:
    """Consecutive wanted channels with the same root and chain."""

    root: gs.Tensor
    chain: tuple[str, ...]
    channels: list[int]
    start: int = 0  # position of the first channel in the selected root (after permutation)


@dataclass
class AssemblyStats:
    conv_permuted: int = 0  # new Convs with re-selected output channels
    conv_reused: int = 0  # roots used as they are (wanted channels == all channels in order)
    runtime_selects: int = 0  # runtime Slice/Gather ops on a non-Conv root
    chain_ops: int = 0  # Sigmoids re-applied after a selection
    concats: int = 0


@dataclass
class ChannelAssembler:
    """Builds tensors whose channels are given ``Source`` lists (see module docstring).

    Usage: ``h = asm.request(sources)`` (or ``request_whole(tensor)`` when an existing tensor
    already has the wanted channels) for each wanted tensor, then ``asm.build()`` returns the
    tensors in request order. Requests are built together so that one permuted Conv serves
    all of them (offsets and mask from the same producer).
    """

    builder: GraphBuilder
    prefix: str
    permute_convs: bool = True
    slice_inputs: bool = True  # opset >= 10: Slice takes inputs (else use Gather)
    stats: AssemblyStats = field(default_factory=AssemblyStats)
    _requests: list[list[_Run] | gs.Tensor] = field(default_factory=list)

    def request(self, sources: Sequence[Source]) -> int:
        runs: list[_Run] = []
        for source in sources:
            if runs and runs[-1].root is source.root and runs[-1].chain == source.chain:
                runs[-1].channels.append(source.channel)
            else:
                runs.append(_Run(source.root, source.chain, [source.channel]))
        self._requests.append(runs)
        return len(self._requests) - 1

    def request_whole(self, tensor: gs.Tensor) -> int:
        """A request that ``tensor`` already satisfies as it is (no op is added)."""
        self._requests.append(tensor)
        return len(self._requests) - 1

    def build(self) -> list[gs.Tensor]:
        selected = self._select_roots()
        results: list[gs.Tensor] = []
        for runs in self._requests:
            if isinstance(runs, gs.Tensor):
                results.append(runs)
                continue
            parts = [self._materialise(run, selected) for run in runs]
            if len(parts) == 1:
                results.append(parts[0])
            else:
                self.stats.concats += 1
                results.append(self.builder.op("Concat", parts, f"{self.prefix}/concat", {"axis": 1},
                                               dtype=parts[0].dtype))
        return results

    # internals -------------------------------------------------------------------------------

    def _select_roots(self) -> dict[int, gs.Tensor]:
        """For each Conv root: one Conv computing exactly the wanted channels, in order."""
        by_root: dict[int, list[_Run]] = {}
        for runs in self._requests:
            if isinstance(runs, gs.Tensor):
                continue
            for run in runs:
                if self.permute_convs and permutable_conv(run.root) is not None:
                    by_root.setdefault(id(run.root), []).append(run)
        selected: dict[int, gs.Tensor] = {}
        for runs in by_root.values():
            root = runs[0].root
            conv = permutable_conv(root)
            assert conv is not None
            wanted: list[int] = []
            for run in runs:
                run.start = len(wanted)
                wanted.extend(run.channels)
            weight = constant_array(input_at(conv, 1))
            assert weight is not None
            if wanted == list(range(weight.shape[0])):
                selected[id(root)] = root
                self.stats.conv_reused += 1
                continue
            bias = constant_array(input_at(conv, 2))
            order = np.asarray(wanted, dtype=np.int64)
            inputs: list[gs.Tensor | np.ndarray | None] = [
                conv.inputs[0],
                self.builder.const(f"{self.prefix}/offset_conv_w", weight[order]),
            ]
            if bias is not None:
                inputs.append(self.builder.const(f"{self.prefix}/offset_conv_b", bias[order]))
            selected[id(root)] = self.builder.op(
                "Conv", inputs, f"{self.prefix}/offset_conv", dict(conv.attrs), dtype=root.dtype
            )
            self.stats.conv_permuted += 1
        return selected

    def _materialise(self, run: _Run, selected: dict[int, gs.Tensor]) -> gs.Tensor:
        if id(run.root) in selected:
            source = selected[id(run.root)]
            channels = list(range(run.start, run.start + len(run.channels)))
        else:
            source = run.root
            channels = run.channels
        tensor = self._select(source, channels, own=id(run.root) in selected)
        for op in run.chain:
            self.stats.chain_ops += 1
            tensor = self.builder.op(op, [tensor], f"{self.prefix}/{op.lower()}", dtype=tensor.dtype)
        return tensor

    def _select(self, source: gs.Tensor, channels: list[int], own: bool) -> gs.Tensor:
        """``source[:, channels]`` with the cheapest op: nothing, a Slice, or a Gather.

        ``own`` marks a root whose channels were already put in order by ``_select_roots``:
        slicing it is a plain split, not a runtime reorder, and is not counted as one.
        """
        count = channel_count(source)
        if count is not None and channels == list(range(count)):
            return source
        step = channels[1] - channels[0] if len(channels) > 1 else 1
        arithmetic = step > 0 and all(b - a == step for a, b in zip(channels, channels[1:], strict=False))
        if not own:
            self.stats.runtime_selects += 1
        if arithmetic and self.slice_inputs:
            return self.builder.op(
                "Slice",
                [source,
                 self.builder.ints(f"{self.prefix}/starts", [channels[0]]),
                 self.builder.ints(f"{self.prefix}/ends", [channels[-1] + 1]),
                 self.builder.ints(f"{self.prefix}/axes", [1]),
                 self.builder.ints(f"{self.prefix}/steps", [step])],
                f"{self.prefix}/slice", dtype=source.dtype,
            )
        return self.builder.op(
            "Gather", [source, self.builder.ints(f"{self.prefix}/channels", channels)],
            f"{self.prefix}/gather", {"axis": 1}, dtype=source.dtype,
        )
