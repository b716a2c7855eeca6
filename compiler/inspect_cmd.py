"""``segc inspect`` and ``segc verify``: read-only commands (``segc passes``: ``segc.passes_cmd``)."""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from segc.errors import SegcError
from segc.metrics import VERIFY_INPUTS_FIX, Tolerances, Verdict
from segc.modelio import load_model
from segc.onnx_graph import default_opset, input_dims, real_inputs
from segc.passbase import Contract
from segc.shapes import parse_shape_range, ranges_from_metadata
from segc.verify import Verifier

if TYPE_CHECKING:
    from rich.console import Console


def _console() -> Console:
    from rich.console import Console

    # a pipe or CI log is not 80 columns wide; don't wrap tables and commands there
    return Console(highlight=False, width=None if sys.stdout.isatty() else 140)


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of every weight: initializers, and float tensors held in Constant nodes.

    paddle2onnx (and some other exporters) store weights as Constant nodes instead of
    initializers; counting only initializers reports such a model as "0 parameters". Integer
    Constants are shape arithmetic (axes, indices), not weights, so they are not counted.
    """
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                t = attr.t
                if t.data_type in (
                    onnx.TensorProto.FLOAT,
                    onnx.TensorProto.FLOAT16,
                    onnx.TensorProto.DOUBLE,
                    onnx.TensorProto.BFLOAT16,
                ):
                    total += int(np.prod(t.dims))
    return total


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """The facts ``segc inspect`` shows (also used by the benchmark)."""
    ops = collections.Counter(
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}" for n in model.graph.node
    )
    params = count_parameters(model)
    meta = {p.key: p.value for p in model.metadata_props}
    return {
        "ir_version": model.ir_version,
        "opset": default_opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [{"name": vi.name, "dims": input_dims(vi)} for vi in real_inputs(model)],
        "outputs": [{"name": vi.name, "dims": input_dims(vi)} for vi in model.graph.output],
        "nodes": len(model.graph.node),
        "parameters": params,
        "ops": dict(ops.most_common()),
        "metadata": meta,
        "shape_ranges": [r.atc() for r in ranges_from_metadata(meta)],
    }


def run_inspect(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    info = describe(model)
    info.update(_stride_info(model))
    if args.target:
        from segc.targets.base import BuildOptions, get_target

        from segc.targets.legality import group_violations

        target = get_target(args.target)
        info["target"] = target.name
        found = target.check(model, BuildOptions(shape_ranges=ranges_from_metadata(info["metadata"])))
        info["violations"] = [
            {"node": v.node, "op": v.op, "reason": v.reason, "fixed_by": v.fixed_by, "severity": v.severity.value}
            for v in found
        ]
        info["violation_summary"] = group_violations(found)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    con = _console()
    con.print(f"[bold]{Path(args.model).name}[/bold]: opset {info['opset']}, IR {info['ir_version']}, "
              f"{info['nodes']} nodes, {info['parameters']:,} parameters ({info['producer'] or 'unknown producer'})")
    for key in ("inputs", "outputs"):
        for t in info[key]:
            con.print(f"  {key[:-1]:6} {t['name']}: {t['dims']}")
    con.print("  ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
    for k, v in info["metadata"].items():
        con.print(f"  metadata {k} = {v}")
    con.print(f"  sizes: {info['stride_advice']}")
    if args.target:
        if not info["violations"]:
            con.print(f"target {info['target']}: nothing the compiler would reject")
        else:
            con.print(f"target {info['target']} (segc compile adds the fixing passes itself):")
        for line in info["violation_summary"]:
            fix = "" if "(fixed by pass" in line or "unconfirmed" in line else " -> no pass fixes this"
            con.print(f"  {line}{fix}", markup=False)
    return 0


def _stride_info(model: onnx.ModelProto) -> dict[str, Any]:
    """The total stride and the ``/M`` range advice (``fold_resize_scales.stride_advice``)."""
    from segc.passes.fold_resize_scales import stride_advice

    advice = stride_advice(model)
    return {"total_stride": advice.stride, "stride_advice": advice.text}


def run_verify(args: argparse.Namespace) -> int:
    ref_model = load_model(args.reference)
    cand_model = load_model(args.candidate)
    ref_inputs = {vi.name for vi in real_inputs(ref_model)}
    cand_inputs = {vi.name for vi in real_inputs(cand_model)}
    if ref_inputs != cand_inputs:
        raise SegcError(f"the models take different inputs: {sorted(ref_inputs)} vs {sorted(cand_inputs)}")
    ranges = {r.name: r for r in (parse_shape_range(s) for s in args.input_shape)}
    verifier = Verifier(ranges=ranges, tolerances=Tolerances.parse(args.tolerance), seed=args.seed,
                        user_inputs=args.verify_inputs)
    if getattr(args, "localize", False) and args.top < 1:
        raise SegcError(f"--top {args.top}: must be at least 1")
    reference = verifier.initial_state(ref_model)
    verdict = verifier.compare(reference, verifier.new_state(cand_model, "candidate"), Contract(args.contract))
    if getattr(args, "localize", False):
        return _print_localization(args, verifier, ref_model, cand_model, verdict)
    if args.json:
        print(json.dumps(verdict.to_dict(), indent=2, default=str))
    else:
        from rich.table import Table

        table = Table("output", "input", "max abs", "max rel", "cosine", "agreement")
        for m in verdict.metrics:
            table.add_row(
                m.output,
                m.feed,
                *(("-" if x is None else f"{x:.4g}") for x in (m.max_abs, m.max_rel, m.cosine, m.agreement)),
            )
        con = _console()
        con.print(table)
        for w in verdict.warnings:
            con.print(f"warning: {w}")
        for r in verdict.reasons:
            con.print(f"mismatch: {r}")
        for u in verdict.unverified:
            con.print(f"no signal: {u}")
        if verdict.status == "unverified":
            con.print(f"UNVERIFIED ({args.contract}): nothing differed, but the reference outputs carry no signal on "
                      f"these inputs; {VERIFY_INPUTS_FIX}")
        else:
            con.print(f"{'equivalent' if verdict.ok else 'NOT equivalent'} ({args.contract})")
    # "equivalent" must mean something was found equal: a check that proved nothing is not a pass
    return 0 if verdict.status == "ok" else 1


def _print_localization(args: argparse.Namespace, verifier: Verifier, ref_model: onnx.ModelProto,
                        cand_model: onnx.ModelProto, verdict: Verdict) -> int:
    """``--localize``: the first divergent shared tensor and the k worst (segc.localize)."""
    from segc.localize import localize

    feed = verifier.feeds_for(ref_model)[0]
    loc = localize(ref_model, cand_model, feed, contract=Contract(args.contract), tolerances=verifier.tolerances,
                   k=args.top, config=verifier.config)
    if args.json:
        print(json.dumps({**loc.to_dict(), "verdict": verdict.to_dict()}, indent=2, default=str))
    else:
        con = _console()
        con.print(f"{loc.compared} shared tensors compared at {loc.feed} ({loc.contract})", markup=False)
        first = loc.first_divergence
        if first is None:
            con.print("no shared tensor diverges beyond the tolerance", markup=False)
        else:
            con.print(f"first divergence: node {first.node} [{first.op}] -> {first.tensor}: cosine "
                      f"{_fmt4(first.cosine)}, max abs {_fmt4(first.max_abs)}", markup=False)
            for t in loc.worst:
                con.print(
                    f"  worst: #{t.index} {t.node} [{t.op}]: cosine {_fmt4(t.cosine)}, max abs {_fmt4(t.max_abs)}"
                    + (f", {t.nonfinite_mismatch} NaN/Inf mismatches" if t.nonfinite_mismatch else ""),
                    markup=False,
                )
        if loc.skipped:
            con.print(f"not compared (shapes differ): {', '.join(loc.skipped[:10])}", markup=False)
    return 0 if verdict.status == "ok" and loc.first_divergence is None else 1


def _fmt4(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"
