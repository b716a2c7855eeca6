"""prune_outputs: make chosen tensors the graph outputs and drop what only fed the old ones.

What: the tensors named by the ``outputs`` selectors become the graph's outputs, in the order
given, under their own names; every node that only served the old outputs is deleted by the
cleanup that follows every pass. Why: the 3D_HRNet guide told ATC
``--out_nodes="Conv_1380:0;Conv_1453:0"`` to keep the two classifier convolutions and cut
the rest; those legacy numbers break with any other exporter or model version, so segc does
the cut in the graph itself, from selectors such as ``Conv before output2`` that name the
same convolution whatever the exporter numbered it, and every vendor then sees the same
graph. ATC's ``Node:0`` form is accepted for users who bring those names.

    x -> ... -> Conv "cls" -> logits -> Resize -> ArgMax -> output        (graph output)
                                                                   ==>  outputs="Conv before output"
    x -> ... -> Conv "cls" -> logits                                      (graph output "logits")

A selected tensor that already is an output stays one; outputs not selected stop being
outputs. Output names never change, so the verifier (contract ``outputs``) compares each kept
output with the tensor of the same name exposed in the graph before the pass.

Selectors mean what they match in the INPUT model: ``segc compile`` resolves them once,
before any pass (``pin_selectors``), to tensor names, and the verifier watches those tensors
through every pass. A pass that keeps a name but changes its value is caught at that pass:

    input:           ConvTranspose -> ct -> Add(bias) -> Sigmoid      'ConvTranspose before Sigmoid' = ct
    after simplify:  ConvTranspose(+bias) -> ct -> Sigmoid             ct now holds the biased sum
                     -> simplify fails: watched tensor ct differs from the graph before

An output's
element type and shape come from the tensor, or from ONNX shape inference when the exporter
recorded none for that intermediate tensor.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from segc.errors import SegcError, first_line
from segc.passbase import Contract, GraphPass, OptionKind, PassContext, PassOption, PassResult, register_pass
from segc.selectors import as_selector_list, select_ordered
from segc.gs_import import import_graph


class KeptTensorGone(RuntimeError):
    """A pinned output tensor was removed by an earlier pass: a pipeline failure, not a usage error."""


@register_pass
class PruneOutputs(GraphPass):
    name = "prune_outputs"
    contract = Contract.OUTPUTS
    summary = "make chosen tensors the graph outputs (e.g. the classifier convs) and drop what only fed the old ones"
    options = {
        "outputs": PassOption(OptionKind.STR_LIST, "selectors of the tensors to keep as outputs, in order; e.g. "
                              "'Conv before output1;Conv before output2' or ATC's 'Conv_1380:0'",
                              split=as_selector_list),
        "pinned": PassOption(OptionKind.BOOL, "true when 'outputs' are tensor names segc compile resolved on the "
                             "input model (set by segc, so a name an earlier pass removed is reported as such)",
                             default=False),
    }

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        selectors: list[str] = ctx.option("outputs") or []
        if not selectors:
            raise SegcError(
                "prune_outputs needs option 'outputs': selectors of the tensors to keep, e.g. 'Conv before output1'"
            )
        if ctx.option("pinned"):
            present = graph.tensors()
            gone = [n for n in selectors if n not in present]
            if gone:
                raise KeptTensorGone(
                    f"tensor(s) {gone} chosen by --outputs on the input model no longer exist after the "
                    f"passes before prune_outputs; --skip the pass that removed them or select other tensors"
                )
        wanted: list[gs.Tensor] = select_ordered(graph, selectors, kind="tensors")
        for t in wanted:
            if isinstance(t, gs.Constant):
                raise SegcError(f"prune_outputs: {t.name!r} is a constant (a weight), not a computed tensor")

        old = list(graph.outputs)
        if len(old) == len(wanted) and all(a is b for a, b in zip(old, wanted, strict=False)):
            return PassResult(
                changed=False, stats={"outputs": [t.name for t in old], "dropped": [], "nodes_removed": 0}
            )

        notes = _fill_types(graph, [t for t in wanted if t.dtype is None or t.shape is None])
        before = len(graph.nodes)
        graph.outputs = wanted
        # the base class cleans up again; doing it here lets the stats say what went
        graph.cleanup()
        kept = {id(t) for t in wanted}
        return PassResult(
            changed=True,
            stats={
                "outputs": [t.name for t in wanted],
                "dropped": [t.name for t in old if id(t) not in kept],
                "nodes_removed": before - len(graph.nodes),
            },
            notes=notes,
        )


def pin_selectors(model: onnx.ModelProto, selectors: str | list[str]) -> list[str]:
    """The tensor names ``selectors`` match in ``model`` (the input model, before any pass).

    Resolving late, on a graph that earlier passes rewrote, can pick another tensor
    (``Conv[-1]`` after a fusion) or a name whose meaning changed; resolving on the input
    gives names that mean what the user looked at. A bad selector fails here, before work.
    """
    wanted = as_selector_list(selectors)
    if not wanted:
        raise SegcError("--outputs needs at least one selector, e.g. 'Conv before output1'")
    graph = import_graph(model)
    tensors: list[gs.Tensor] = select_ordered(graph, wanted, kind="tensors")
    for t in tensors:
        if isinstance(t, gs.Constant):
            raise SegcError(f"--outputs: {t.name!r} is a constant (a weight), not a computed tensor")
    return [t.name for t in tensors]


def _fill_types(graph: gs.Graph, tensors: list[gs.Tensor]) -> list[str]:
    """Give ``tensors`` the element type and shape ONNX shape inference finds for them.

    Exporters record value_info for some intermediate tensors only; a graph output without
    a type is rejected by onnxruntime and by the vendor parsers. Inference runs on the whole
    graph (once, only when some selected tensor lacks its type).
    """
    if not tensors:
        return []
    model = gs.export_onnx(graph, do_type_check=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference gives up on some custom ops: keep what we know
        reason = first_line(exc)
        return [f"shape inference failed ({reason}); output types left as recorded"]
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    notes: list[str] = []
    for t in tensors:
        vi = infos.get(t.name)
        ttype = vi.type.tensor_type if vi is not None and vi.type.HasField("tensor_type") else None
        if ttype is None or ttype.elem_type == 0:
            notes.append(f"type of output {t.name!r} unknown after shape inference")
            continue
        if t.dtype is None:
            t.dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        if t.shape is None and ttype.HasField("shape"):
            t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in ttype.shape.dim]
    return notes
