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
from segc.onnx_graph import default_opset
from segc.passbase import (Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, carry_model_fields,
                           register_pass)
from segc.passes._opset import convert_model_opset


@register_pass
class ConvertOpset(ModelPass):
    name = "convert_opset"
    contract = Contract.EXACT
    summary = "convert the graph to another default-domain opset (onnx version converter; vendor ops kept)"
    options = {"version": PassOption(OptionKind.INT, "the opset to convert to", required=True),
               "only_down": PassOption(OptionKind.BOOL, "convert only if the graph is newer", default=True)}

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        version = ctx.option("version")
        if version is None or not MIN_OPSET <= version <= MAX_OPSET:
            raise SegcError(
                f"convert_opset needs option version, a whole number from {MIN_OPSET} to {MAX_OPSET} (got {version!r})"
            )
        current = default_opset(model) or 1
        if current == version or (current < version and ctx.option("only_down")):
            return model, PassResult(changed=False, stats={"opset": current})
        out = convert_model_opset(model, version, who="convert_opset")
        carry_model_fields(model, out)
        out.ir_version = model.ir_version
        return out, PassResult(changed=True, stats={"from": current, "to": version})
