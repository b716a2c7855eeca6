"""``emulate_fp16``: the target's fp16 build checked in onnxruntime before any device runs it.

``--precision fp16`` adds this pass last. It does not change the graph the vendor gets (the
vendor converts to fp16 itself); it emulates that conversion (``segc.fp16_emulation``:
weights and activations rounded to fp16 at every layer boundary), judges the emulation
against the fp32 graph by its own budget (approximate contract: cosine 0.999, label
agreement 0.99, no value beyond fp16's 65504), and when it misses, searches a small set of
layers to keep in fp32 (greedy) and verifies the emulation again with them kept. The set is
stored in the model's metadata (``segc.fp32_layers``) where the targets read it; the
per-layer figures go into the pass's stats (report.json) and report.md.

A graph with unnamed nodes gets names first (the keep-set is a list of node names, and
TensorRT and ATC name their layers after the ONNX node names); that is the only change it
makes to the graph, and it is verified like any other.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

from segc.fp16_emulation import FP16_BUDGET, FP32_LAYERS_KEY, name_nodes, plan_fp16
from segc.metrics import Tolerances
from segc.passbase import Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, register_pass

SEARCH_PIXELS = 512 * 512  # every intermediate tensor is exposed: keep the inputs small


class Fp16BudgetMissed(RuntimeError):
    """Even with ``max_keep`` layers in fp32 the emulation misses its budget."""


@register_pass
class EmulateFp16(ModelPass):
    name = "emulate_fp16"
    contract = Contract.APPROXIMATE
    summary = "emulate the target's fp16 in onnxruntime, judge it, and pick the layers to keep fp32 (--precision fp16)"
    options = {
        "cosine": PassOption(OptionKind.FLOAT, "minimum cosine of every output against fp32",
                             default=FP16_BUDGET.cosine),
        "agreement": PassOption(OptionKind.FLOAT, "minimum argmax label agreement", default=FP16_BUDGET.agreement),
        "max_keep": PassOption(OptionKind.INT, "most layers the search may keep in fp32", default=16),
        "pixel_budget": PassOption(OptionKind.INT, "largest N*H*W emulated at", default=SEARCH_PIXELS),
        "seed": PassOption(OptionKind.INT, "seed of the random inputs", default=0),
        "max_inputs": PassOption(OptionKind.INT, "most input shapes the final keep-set is verified at "
                                 "(the search uses the first)", default=2),
    }
    runs_after = ("cleanup",)
    order_reason = "it judges the fp16 build of the final graph"

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        named = name_nodes(model)
        changed = any(a.name != b.name for a, b in zip(model.graph.node, named.graph.node, strict=False))
        budget = Tolerances(cosine=ctx.option("cosine"), agreement=ctx.option("agreement"))
        from segc.verify import Verifier  # here: every compile registers this pass, few run it (issue 11)

        verifier = Verifier(recipe=ctx.recipe, seed=ctx.option("seed"), pixel_budget=ctx.option("pixel_budget"))
        feeds = verifier.feeds_for(named)[: max(1, ctx.option("max_inputs"))]
        plan = plan_fp16(named, feeds, budget, max_keep=ctx.option("max_keep"))
        stats = plan.to_stats()
        final = stats["final"]
        if not plan.ok:
            raise Fp16BudgetMissed(
                f"fp16 emulation misses its budget even with {len(plan.keep)} layers kept fp32 "
                f"({', '.join(plan.keep) or 'none'}): "
                f"{'; '.join(final['reasons'][:2]) or 'overflow ' + str(final['overflow'])}; "
                f"build fp32, or loosen with --option emulate_fp16.cosine=... / max_keep=..."
            )
        ctx.metadata[FP32_LAYERS_KEY] = json.dumps(plan.keep)
        first = stats["all_fp16"]
        notes = [f"all fp16: cosine {_f(first['cosine'])}, overflowing values {first['overflow']}"
                 + (f"; kept fp32 ({plan.search}): {', '.join(plan.keep)}; then cosine {_f(final['cosine'])}, "
                    f"overflow {final['overflow']}" if plan.keep else "; fits fp16, nothing kept")]
        if changed:
            notes.append("named the unnamed nodes (the keep-set names layers)")
        return (named if changed else model), PassResult(changed=changed, stats={"fp16": stats}, notes=notes)


def precision_passes(names: list[str], options: dict[str, dict[str, Any]], precision: str | None,
                     calib_images: str | None = None, calib_samples: int | None = None) -> list[str]:
    """The planner's one call: the precision check the build precision asks for, last, for every target.

    ``--precision fp16`` appends ``emulate_fp16``; ``--precision int8`` with ``--calib-images``
    appends ``emulate_int8`` (and gives it the folder and ``--calib-samples``).
    """
    if precision == "fp16" and "emulate_fp16" not in names:
        return [*names, "emulate_fp16"]
    if precision == "int8" and calib_images and "emulate_int8" not in names:
        options.setdefault("emulate_int8", {})["calib_images"] = str(calib_images)
        if calib_samples is not None:
            options["emulate_int8"]["samples"] = int(calib_samples)
        return [*names, "emulate_int8"]
    return names

def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.6f}"
