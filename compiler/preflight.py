"""Checks of the command line that need no pass: contradictions, no-ops and selectors.

Everything here runs before the first pass, so a typo costs a second, not the pipeline
(docs/design.md, "The pipeline", step 2). Contradictions and settings no target could use are errors
(exit 2); a setting this target merely ignores is a warning the summary repeats.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx

from segc.errors import SegcError
from segc.shapes import parse_shape_range
from segc.targets.base import Target, target_values

if TYPE_CHECKING:
    from segc.pipeline import PassSpec


def validate_cli(args: argparse.Namespace, target: Target) -> list[str]:
    """Contradictions and no-ops of the command line: errors, or warnings where harmless."""
    warnings: list[str] = []
    if args.pixel_budget is not None and args.pixel_budget <= 0:
        raise SegcError(f"--pixel-budget must be a positive number of pixels, got {args.pixel_budget}")
    if args.batch:
        for text in args.input_shape:
            rng = parse_shape_range(text)
            if rng.min and rng.min[0] != rng.max[0]:
                raise SegcError(
                    f"--batch {','.join(args.batch)} and the batch range in --input-shape {text!r} contradict: "
                    "give the batch sizes once (--batch for per-batch builds, or a range in --input-shape)"
                )
    if target.name == "onnxruntime" and args.precision in ("fp16", "int8"):
        raise SegcError(f"--precision {args.precision}: the onnxruntime target runs the model at its own precision and "
                        "does not quantise or convert; drop --precision (or build for tensorrt, magicmind or ascend)")
    target_values(args, target)  # a flag of another target is an error here, before the model is read further
    if args.calib_images is not None and args.precision != "int8":
        warnings.append("--calib-images is used by --precision int8 only; ignored")
    if args.allow_unlisted_ops:
        from segc.targets.legality import load_profile

        if not load_profile(target.name).data.get("ops", {}).get("partial", False):
            warnings.append(
                f"--allow-unlisted-ops does nothing for {target.name}: its operator list is complete, so a missing op "
                "is an error"
            )
    if args.no_prune and not args.outputs:
        warnings.append("--no-prune without --outputs does nothing")
    return warnings


def validate_selectors(model: onnx.ModelProto, args: argparse.Namespace) -> None:
    """``--outputs`` and ``--nearest-resize`` must match something in the input model, now.

    A selector is resolved by its pass much later; a typo would cost the passes before it.
    """
    if not args.outputs and not args.nearest_resize:
        return
    from segc.gs_import import import_graph

    from segc.selectors import select_many

    graph = import_graph(model)
    if args.outputs:
        select_many(graph, args.outputs, kind="tensors")
    if args.nearest_resize:
        select_many(graph, args.nearest_resize, kind="nodes")


def validate_pass_plan(specs: Sequence[PassSpec], where: str) -> None:
    """Every pass's options coerced to their declared types, and the declared order kept.

    Options come from the target, the recipe (models/recipes.py, a recipe file) and
    ``--option``; all of them meet the same :class:`segc.passbase.PassOption` here, so
    ``--option simplify.fold_constants=maybe`` is one line naming the valid values, before
    the model is touched. ``where`` names the list in an order error (``--passes``).
    """
    from segc.pass_order import check_order
    from segc.passbase import get_pass

    for spec in specs:
        get_pass(spec.name).resolve_options(spec.options)
    check_order([s.name for s in specs], where)
