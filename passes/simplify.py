"""simplify: onnx-simplifier (constant folding + shape inference), kept on a leash.

onnx-simplifier is what every seed pipeline ran first, and the tool users complain about
most: it can freeze dynamic dimensions, and folding a broadcast can turn a small graph into a
huge one. segc runs it with shape inference and no input-shape overrides, then checks the
two properties it must keep:

- every symbolic input and output dimension stays symbolic (otherwise the result is thrown
  away and the pass reports why);
- the model does not grow: if it does, onnx-simplifier runs again with a tensor-size
  threshold no larger than the biggest initializer the model already had, and if it still
  grows, without constant folding.

Ops onnx-simplifier does not know (vendor ops) make it fail: the pass then leaves the graph
alone and says so; it does not guess.

Only onnx-simplifier's C++ core is used (``segc.passes._onnxsim_core``: its Python package
would import torch), and it gets the model without the weights it cannot use
(``_OnnxsimInput``). The folding engine was chosen by measurement
(bench/compile_floor.py): onnxruntime's basic optimisation written out with
``SessionOptions.optimized_model_filepath`` is the one alternative that keeps symbolic dims
and emits only standard ops, but it leaves more nodes (ocrnet_hrnetw18: 1062 against
onnx-simplifier's 944; dbnet_r50: 239 against 243) and saved about 1.2 s of 4.4 s on dbnet_r50
(load average 11, in process), while adding Microsoft opset domains to the model; the
vendor tools' op lists are written against onnx-simplifier's output. So onnx-simplifier
stays, paid for only in what it does, less two of its onnx-optimizer passes that are
quadratic in graph size: the same rewrites run after it in linear time
(``segc.passes._unit_nops``). The rest of its core still grows faster than the graph, so a
graph of over 4096 nodes goes to it in segments of at least 2048, cut where the result is the
same node for node (``segc.passes._simplify_segments``; the ``segments`` stat says how many).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import onnx

from segc.errors import SegcError, first_line
from segc import modelio
from segc.modelio import copy_fields_except, disk_tensor, inline_copy, tensor_nbytes, weight_bytes
from segc.passbase import (Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, carry_model_fields,
                           register_pass)
from segc.passes._onnxsim_core import FoldSettings, simplify_bytes
from segc.passes._simplify_segments import SegmentPlan, plan_segments, simplify_in_segments
from segc.passes._unit_nops import eliminate_unit_nops

GROWTH_ALLOWANCE = 1.02  # folding may legitimately add a little (e.g. a folded shape constant)
GROWTH_SLACK = 4096  # bytes: small constants never count as growth

# onnx-simplifier takes the model as one protobuf message, and protobuf cannot hold more than
# 2 GiB. Weights it cannot use are left out (_OnnxsimInput), so a model over 2 GiB simplifies
# like any other; if what it must get is still over the limit, this pass leaves the graph as
# it is rather than fail the compile. The vendor tools fold constants themselves.
_OVER_LIMIT_NOTE = ("the weights onnx-simplifier would need exceed protobuf's 2 GiB limit, so constant folding and "
                    "its shape inference were skipped (the graph is left as it was)")


@register_pass
class Simplify(ModelPass):
    name = "simplify"
    contract = Contract.EXACT
    summary = "onnx-simplifier with shape inference; keeps dynamic dims, never grows the model"
    options = {"fold_constants": PassOption(OptionKind.BOOL, "fold constant subgraphs", default=True)}

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        notes: list[str] = []
        source = _OnnxsimInput(model)
        if source.inline_bytes() > modelio.PROTOBUF_LIMIT:  # read when called: tests lower the limit
            return model, PassResult(changed=False, stats={"skipped": True}, notes=[_OVER_LIMIT_NOTE])
        size_before = weight_bytes(model)
        attempts = [FoldSettings()]
        if not ctx.option("fold_constants"):
            attempts = [FoldSettings(constant_folding=False)]
        else:
            biggest = max((tensor_nbytes(t) for t in model.graph.initializer), default=0)
            attempts += [FoldSettings(tensor_size_threshold=max(biggest, 1024)), FoldSettings(constant_folding=False)]
        for settings in attempts:
            simplified = source.simplify(settings, notes)
            if simplified is None:
                return model, PassResult(changed=False, stats={"skipped": True}, notes=notes)
            added = _new_domains(model, simplified)
            if added:
                notes.append(f"onnx-simplifier wrote ops of domain {', '.join(added)}, which the input did not use "
                             "and vendor parsers do not take: result discarded")
                return model, PassResult(changed=False, stats={"skipped": True}, notes=notes)
            frozen = _frozen_dims(model, simplified)
            if frozen:
                notes.append(f"onnx-simplifier froze dynamic dimensions ({', '.join(frozen)}): result discarded")
                return model, PassResult(changed=False, stats={"skipped": True}, notes=notes)
            size_after = weight_bytes(simplified)
            if size_after <= size_before * GROWTH_ALLOWANCE + GROWTH_SLACK:
                break
            notes.append(
                f"folding with {settings.describe()} grew the model {size_before} -> {size_after} bytes; retrying"
            )
        else:
            notes.append("every attempt grew the model: graph left as it was")
            return model, PassResult(changed=False, stats={"skipped": True}, notes=notes)

        carry_model_fields(model, simplified)
        nops = eliminate_unit_nops(simplified.graph)  # the two onnx-optimizer passes onnxsim skips
        changed = not _same_structure(simplified, model)
        stats = {
            "nodes_before": len(model.graph.node),
            "nodes_after": len(simplified.graph.node),
            "weight_bytes_before": size_before,
            "weight_bytes_after": size_after,
            "settings": settings.describe(),
            "weights_left_out": len(source.opaque),
            "segments": source.segments,
            "duplicate_initializers": nops.duplicate_initializers,
            "unit_nodes_removed": nops.unit_nodes,
            "empty_concat_inputs": nops.empty_concat_inputs,
        }
        return (simplified if changed else model), PassResult(changed=changed, stats=stats, notes=notes)


def _whole_result(result: bytes) -> bytes:
    """The core's result; it returns nothing for a result it could not serialise."""
    if not result:
        raise ValueError("the simplified model is larger than 2 GiB")
    return result


def _new_domains(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Op domains ``after`` uses that ``before`` did not (contrib ops from a fusion)."""
    def domains(m: onnx.ModelProto) -> set[str]:
        return {n.domain for n in m.graph.node if n.domain not in ("", "ai.onnx")}
    return sorted(domains(after) - domains(before))


class _OnnxsimInput:
    """The model as onnx-simplifier's C++ core gets it: serialised once for every attempt,
    without the weights it has no use for.

    A weight that only feeds Conv, ConvTranspose or DeformConv as their weight operand, beside a value
    computed at run time (:func:`_opaque_weights`), can take part in no fold and in no
    rewrite of onnx-simplifier that reads values: it goes to the core as a graph
    input of the same type and dims, and comes back by name afterwards. On hrnet_w48_ocr
    that is every weight, and the core then parses, shape-infers and writes kilobytes instead
    of 268 MiB::

        model:    x -> Conv(W) -> ...         W: 70 MB (in memory, or kept on disk)
        to core:  x, W: float[480,720,3,3]    graph inputs, no data
                  x -> Conv(W) -> ...
        result:   the core's nodes; W as it was (the same reference, or the same bytes)

    Other weights kept on disk (``segc.modelio.disk_tensor``) are read for the call.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.opaque = _opaque_weights(model)
        self._bytes: bytes | None = None
        self._plan: SegmentPlan | None = None
        self._core: onnx.ModelProto | None = None  # kept only when it goes in segments
        self.segments = 1  # how many the last result was simplified in

    def inline_bytes(self) -> int:
        """Weight bytes the core gets (all but the opaque ones)."""
        return sum(tensor_nbytes(t) for t in self.model.graph.initializer if t.name not in self.opaque)

    def simplify(self, settings: FoldSettings, notes: list[str]) -> onnx.ModelProto | None:
        try:
            if self._bytes is None:
                core = _with_output_shapes(self._to_core())
                self._plan = plan_segments(core.graph)
                self._core = core if self._plan is not None else None
                self._bytes = core.SerializeToString()
            simplified = None
            if self._core is not None and self._plan is not None:
                simplified = simplify_in_segments(self._core, self._plan, lambda segment: onnx.load_from_string(
                    _whole_result(simplify_bytes(_with_output_shapes(segment).SerializeToString(), settings))))
            self.segments = len(self._plan.cuts) + 1 if simplified is not None and self._plan is not None else 1
            if simplified is None:
                simplified = onnx.load_from_string(_whole_result(simplify_bytes(self._bytes, settings)))
        except SegcError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxsim raises bare RuntimeErrors from C++
            first = first_line(exc)
            notes.append(f"onnx-simplifier could not process the model: {first[:300]}")
            return None
        self._restore(simplified)
        return simplified

    def _to_core(self) -> onnx.ModelProto:
        graph = self.model.graph
        out = onnx.ModelProto()
        copy_fields_except(self.model, out, "graph")
        copy_fields_except(graph, out.graph, "initializer")
        listed = {i.name for i in graph.input}
        for t in graph.initializer:
            if t.name in self.opaque:
                if t.name not in listed:
                    out.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
            elif disk_tensor(t) is not None:
                out.graph.initializer.append(inline_copy(t))
            else:
                out.graph.initializer.append(t)
        return out

    def _restore(self, simplified: onnx.ModelProto) -> None:
        """The opaque weights back into ``simplified``, in the input's order, where a node
        still reads them (onnx-simplifier drops unused initializers; so is this)."""
        if not self.opaque:
            return
        graph = simplified.graph
        listed = {i.name for i in self.model.graph.input}
        inputs = [i for i in graph.input if i.name not in self.opaque or i.name in listed]
        del graph.input[:]
        graph.input.extend(inputs)
        read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        for t in self.model.graph.initializer:
            if t.name in self.opaque and t.name in read:
                graph.initializer.append(t)


# (op, operand) pairs whose operand is a weight onnx-simplifier never reads the values of when
# the op's first input is computed at run time: the op cannot fold, and no onnx-optimizer
# rewrite it runs changes such a weight (BatchNormalization fusion does: see below). Not
# MatMul's: onnx-simplifier turns MatMul + Add into Gemm only when the weight is an
# initializer (segformer: 297 nodes with its weights, 285 without), and segc's result must
# be onnx-simplifier's, node for node.
_WEIGHT_OPERANDS = {("Conv", 1), ("ConvTranspose", 1), ("DeformConv", 1)}
_SHAPE_ONLY = {"Shape", "Size"}  # their outputs may fold whatever feeds them


def _opaque_weights(model: onnx.ModelProto) -> set[str]:
    """Initializers onnx-simplifier can take as graph inputs without changing its result.

    A weight qualifies when every reader is in :data:`_WEIGHT_OPERANDS` and (1) the reader's
    first input may not be a constant (an over-approximation: initializers, Constant, Shape
    and Size outputs, and whatever is computed from those alone), so the reader never folds;
    (2) a Conv's output does not feed a BatchNormalization (onnx-optimizer's
    fuse_bn_into_conv rewrites the weight; ConvTranspose is held to the same rule, DeformConv
    is matched by no rewrite). It is not a graph output and no subgraph reads it.
    tests/passes/test_simplify.py checks that the result is node for node what
    onnx-simplifier gives with every weight, on the seed models and third-party ones.
    """
    graph = model.graph
    outputs = {o.name for o in graph.output}
    constant = {t.name for t in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    nested: set[str] = set()
    for node in graph.node:
        if node.op_type in _SHAPE_ONLY or all(not n or n in constant for n in node.input):
            constant.update(node.output)  # Constant, ConstantOfShape of a constant, ... too
        for k, name in enumerate(node.input):
            readers[name].append((node, k))
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                nested.update(_names_read(attr))
    opaque = set()
    for t in graph.initializer:
        if t.name in outputs or t.name in nested or not readers.get(t.name):
            continue
        if all(_weight_operand(node, k, constant, readers) for node, k in readers[t.name]):
            opaque.add(t.name)
    return opaque


def _weight_operand(node: onnx.NodeProto, k: int, constant: set[str],
                    readers: dict[str, list[tuple[onnx.NodeProto, int]]]) -> bool:
    if node.domain not in ("", "ai.onnx") or (node.op_type, k) not in _WEIGHT_OPERANDS:
        return False
    if not node.input or node.input[0] in constant or node.input[k] == node.input[0]:
        return False
    if node.op_type == "DeformConv":
        return True  # no onnx-optimizer rewrite matches it
    return not any(r.op_type == "BatchNormalization" for o in node.output for r, _ in readers.get(o, []))


def _names_read(attr: onnx.AttributeProto) -> set[str]:
    """Every name any node of a graph attribute reads (outer values a body captures)."""
    names: set[str] = set()
    stack = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    while stack:
        g = stack.pop()
        for n in g.node:
            names.update(n.input)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    stack.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(a.graphs)
    return names


def _same_structure(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """What 'unchanged' means: same nodes, graph I/O and weights; shape annotations don't count.

    Weights are compared one tensor at a time by name, type, dims and bytes (a memcmp), so
    neither a whole-graph serialisation (seconds on a 300 MB model) nor a second copy of
    every weight is ever held.
    """
    ga, gb = a.graph, b.graph
    if len(ga.node) != len(gb.node) or len(ga.initializer) != len(gb.initializer):
        return False
    if any(x.SerializeToString(deterministic=True) != y.SerializeToString(deterministic=True)
           for x, y in zip((*ga.node, *ga.input, *ga.output), (*gb.node, *gb.input, *gb.output), strict=False)):
        return False
    if len(ga.input) != len(gb.input) or len(ga.output) != len(gb.output):
        return False
    other = {t.name: t for t in gb.initializer}
    for t in ga.initializer:
        u = other.get(t.name)
        if u is None or u.data_type != t.data_type or list(u.dims) != list(t.dims):
            return False
        if (t.raw_data or t.SerializeToString()) != (u.raw_data or u.SerializeToString()):
            return False
    return True


def _missing_output_shapes(model: onnx.ModelProto) -> bool:
    return any(not o.type.tensor_type.HasField("shape") for o in model.graph.output)


def _with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnx-simplifier rejects outputs whose type has no shape field; give them an empty one."""
    if not _missing_output_shapes(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for o in out.graph.output:
        if not o.type.tensor_type.HasField("shape"):
            o.type.tensor_type.shape.SetInParent()
    return out


def _dims(values: Any) -> dict[str, list[int | str | None]]:
    out = {}
    for vi in values:
        dims: list[int | str | None] = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None))
        out[vi.name] = dims
    return out


def _frozen_dims(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Input/output dims that were symbolic (or unknown) before and are fixed numbers after."""
    frozen = []
    for group in ("input", "output"):
        old = _dims(getattr(before.graph, group))
        new = _dims(getattr(after.graph, group))
        for name, dims in old.items():
            for i, (a, b) in enumerate(zip(dims, new.get(name, dims), strict=False)):
                if isinstance(a, str) and isinstance(b, int) and b > 0:
                    frozen.append(f"{name}[{i}] {a}->{b}")
    return frozen
