"""``emulate_int8``: the expected int8 drop, measured in onnxruntime before any device.

``--precision int8 --calib-images DIR`` adds this pass last, for every target. Like
``emulate_fp16`` it leaves the graph as it is (the vendor quantises); it preprocesses the
calibration images by the recipe, quantises a copy with onnxruntime's static QDQ quantisation
on them, and reports the QDQ model's outputs against fp32 (``segc.int8_calibration``). The
figures are an estimate for the report, not a gate: vendors pick their own int8 kernels.
"""

from __future__ import annotations

import onnx

from segc.int8_calibration import DEFAULT_SAMPLES, calibration_feeds, int8_drop
from segc.onnx_graph import real_input_names
from segc.passbase import Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, register_pass

from segc.passes.emulate_fp16 import SEARCH_PIXELS


@register_pass
class EmulateInt8(ModelPass):
    name = "emulate_int8"
    contract = Contract.APPROXIMATE
    summary = "measure the expected int8 drop: onnxruntime static QDQ on the calibration images (--precision int8)"
    options = {
        "calib_images": PassOption(OptionKind.STR, "folder of calibration images (--calib-images)"),
        "samples": PassOption(OptionKind.INT, "most images used", default=DEFAULT_SAMPLES),
    }
    runs_after = ("cleanup",)
    order_reason = "it judges the int8 build of the final graph"

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        folder = ctx.option("calib_images")
        if not folder:
            raise RuntimeError("emulate_int8 needs the option calib_images (--calib-images DIR)")
        # imported here: every compile registers this pass, few run it (issue 11)
        from segc.verify import Verifier
        from segc.verify_inputs import verification_shapes

        verifier = Verifier(recipe=ctx.recipe, pixel_budget=SEARCH_PIXELS)
        shapes = verification_shapes(model, verifier._ranges_for(model), ctx.recipe, SEARCH_PIXELS)
        inputs = real_input_names(model)
        shape = shapes[0][inputs[0]] if shapes and inputs and inputs[0] in shapes[0] else ()
        feeds = calibration_feeds(folder, model, ctx.recipe, tuple(shape), ctx.option("samples"))
        est = int8_drop(model, feeds)
        cos = "-" if est.cosine is None else f"{est.cosine:.6f}"
        agree = "" if est.agreement is None else f", label agreement {est.agreement:.4f}"
        notes = [
            f"int8 QDQ (onnxruntime, {est.samples} calibration images at {'x'.join(map(str, shape))}, "
            f"{est.quantized_nodes} tensors quantised): cosine {cos}{agree}, max abs {est.max_abs:.4g} against fp32"
        ]
        if est.first_divergence:
            first = est.first_divergence
            notes.append(
                f"int8: first layer below cosine 0.99: {first['node']} [{first['op']}] (cosine "
                f"{first['cosine']:.4f}); worst: "
                + ", ".join(f"{w['node']} {w['cosine']:.4f}" for w in est.worst_layers if w.get("cosine") is not None)
            )
        return model, PassResult(changed=False, stats={"int8": est.to_dict()}, notes=notes)
