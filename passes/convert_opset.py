"""convert_opset: move the graph to the default-domain opset a vendor parser accepts.

Exporters write the newest opset they know (DeformConv needs 19), while parsers lag: ATC's
ONNX parser registers ``DeformableConv2D`` for opsets 9-16 only, and its op list stops at 18.
Once the standard DeformConv has been rewritten to the vendor op nothing needs 19 any more,
so the graph can be converted down with onnx's version converter (vendor ops parked, see
passes/_opset.py).

    opset_import {"": 19}                 opset_import {"": 16}
    Resize-19, Conv-11, DeformableConv2D  ==>  Resize-13, Conv-11, DeformableConv2D
"""

from __future__ import annotations

import onnx

from segc.errors import SegcError
from segc.modelio import MAX_OPSET, MIN_OPSET
from segc.passbase import Contract, GraphPass, PassContext, PassResult, carry_model_fields, register_pass
from segc.onnx_graph import default_opset
from segc.passes._opset import convert_model_opset


@register_pass
class ConvertOpset(GraphPass):
    name = "convert_opset"
    contract = Contract.EXACT
    summary = "convert the graph to another default-domain opset (onnx version converter; vendor ops kept)"
    options = {"version": "the opset to convert to (required)", "only_down": "convert only if the graph is newer (default true)"}

    def run(self, graph, ctx):  # pragma: no cover - apply is overridden
        raise NotImplementedError

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        version = ctx.option("version")
        if not isinstance(version, int) or not MIN_OPSET <= version <= MAX_OPSET:
            raise SegcError(f"convert_opset needs option version, a whole number from {MIN_OPSET} to {MAX_OPSET} (got {version!r})")
        current = default_opset(model) or 1
        if current == version or (current < version and ctx.option("only_down", True)):
            return model, PassResult(changed=False, stats={"opset": current})
        out = convert_model_opset(model, version, who="convert_opset")
        carry_model_fields(model, out)
        out.ir_version = model.ir_version
        return out, PassResult(changed=True, stats={"from": current, "to": version})
