"""fp16 checked in onnxruntime: emulate a target's fp16 build, judge it, find the layers to keep fp32.

A vendor's fp16 build computes each layer in fp16 and stores its output as fp16; a layer
kept in fp32 computes in fp32, and its fp16 neighbours convert at the boundary. The
emulation rounds a float tensor to fp16 (a Cast to FLOAT16 and back) exactly where the
vendor would: wherever its producer or its consumer is an fp16 layer. Weights are tensors
too, so an fp16 layer sees its weights rounded and a kept layer sees them in fp32::

    before                         after (conv fp16, mul kept fp32)
    x ─ Conv(W) ─ t ─ Mul ─ y      x ─ r ─ Conv(r(W)) ─ t ─ r ─ Mul ─ r' ...
                                   r = Cast(FLOAT16) ─ Cast(FLOAT)

The rounded copy gets a new name (``t__fp16``), so every original tensor keeps its name and
its unrounded value, and ``segc.localize`` compares it with the fp32 graph node by node. A
graph output an fp16 layer produces is rounded under its own name (the layer writes
``y__raw``). onnxruntime's Cast turns a finite value beyond 65504 into Inf, as the device
does; the overflow count of a layer is the number of finite values beyond 65504 at its
rounding points (its output, or an fp32 input it converts).

The keep-set search is **greedy**: while the emulation overflows, every overflowing layer is
kept fp32 (which may move the overflow to its consumer, the layer that scales the values
back down; the next round keeps that one too); while it only misses the cosine/agreement
budget, the layer with the largest *local* error (its output's cosine drop minus the worst
drop among its inputs: the error it adds, not the error it inherits) is kept, one per round,
up to ``max_keep`` layers. A kept layer that still adds the largest error is losing it to
the fp16 rounding of its inputs (``(x + 1000) - 1000``: the Sub is exact, the Add's fp16
output is not), so then its fp16 producers are kept instead. Each round is a fresh emulation; the final set is
verified again on every verification input.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from segc.modelio import tensor_array
from segc.metrics import Tolerances, Verdict, compare_output, judge
from segc.passbase import Contract

if TYPE_CHECKING:
    from segc.verify_inputs import Feed

# segc.localize (onnxruntime runs, the verifier) is imported by the functions that run the
# model: every compile loads this module (emulate_fp16 registers, fp32_layers reads the
# report's keep-set), and one without fp16 must not pay for the verifier (issue 11)

FP16_MAX = 65504.0
FP32_LAYERS_KEY = "segc.fp32_layers"  # model metadata: JSON list of node names kept fp32
FP16_BUDGET = Tolerances(cosine=0.999, agreement=0.99)  # fp16 is 11 bits of mantissa: this is loose
WEIGHT_LIKE = ("Constant",)  # producers whose outputs are weights, not layers
# inputs that are parameters of the op, not data: the device does not round them
NON_DATA_INPUTS = {"Resize": {1, 2, 3}, "Upsample": {1}, "Pad": {1, 2}, "Clip": set()}


@dataclass
class LayerFigures:
    """One layer of the emulation against fp32."""

    node: str
    op: str
    precision: str  # fp16 | fp32 (kept)
    cosine: float | None
    max_abs: float | None
    overflow: int  # finite values beyond 65504 at this layer's rounding points
    fp32_beyond: int = 0  # values of this layer's output beyond 65504 in the fp32 graph itself
    local_drop: float = 0.0  # cosine drop this layer adds (the greedy sensitivity)


@dataclass
class Emulation:
    """One emulation run: per-layer figures, output metrics and the judgement."""

    kept: list[str]
    verdict: Verdict
    layers: list[LayerFigures] = field(default_factory=list)

    @property
    def overflow(self) -> int:
        return sum(layer.overflow for layer in self.layers)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.overflow

    def summary(self) -> dict[str, Any]:
        s = self.verdict.summary()
        return {"kept": self.kept, "ok": self.ok, "overflow": self.overflow, "cosine": s["cosine"],
                "agreement": s["agreement"], "max_abs": s["max_abs"], "reasons": self.verdict.reasons[:5]}


@dataclass
class Fp16Plan:
    """The answer: what the fp16 build keeps in fp32 and the figures that justify it."""

    first: Emulation  # everything fp16
    final: Emulation  # with ``keep`` in fp32, on every verification input
    keep: list[str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    budget: Tolerances = field(default_factory=lambda: FP16_BUDGET)
    search: str = "greedy"

    @property
    def ok(self) -> bool:
        return self.final.ok

    def to_stats(self) -> dict[str, Any]:
        return {
            "search": self.search,
            "budget": {"cosine": self.budget.cosine, "agreement": self.budget.agreement},
            "all_fp16": self.first.summary(),
            "kept_fp32": self.keep,
            "final": self.final.summary(),
            "rounds": self.rounds,
            "layers": [asdict(layer) for layer in self.first.layers],
            "layers_final": [asdict(layer) for layer in self.final.layers],
        }


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every node has a name (the keep-set is a list of node names)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    used = {n.name for n in out.graph.node if n.name}
    for i, node in enumerate(out.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return out


def float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of every FLOAT tensor (inputs, initializers, node outputs by shape inference)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - fall back to what the model declares
        inferred = model
    names = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(vi.name)
    return names


@dataclass
class _Rewrite:
    model: onnx.ModelProto
    rounding_points: dict[str, list[str]]  # rounded tensor -> layers its overflow is charged to
    weights: dict[str, np.ndarray]  # rounded initializers (overflow counted in numpy)


def emulate(model: onnx.ModelProto, keep: set[str]) -> _Rewrite:
    """The fp16 emulation of ``model`` (named nodes) with the layers in ``keep`` in fp32."""
    floats = float_tensors(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: n for n in g.node for o in n.output if o}
    layers = {n.name for n in g.node if n.op_type not in WEIGHT_LIKE}
    fp16 = layers - keep
    inits = {t.name: t for t in g.initializer}
    # graph outputs an fp16 layer writes: the layer writes <y>__raw, the rounding writes <y>
    outputs = {o.name for o in g.output}
    renamed: dict[str, str] = {}
    for node in g.node:
        for i, name in enumerate(node.output):
            if name in outputs and node.name in fp16 and name in floats:
                renamed[name] = node.output[i] = f"{name}__raw"
                producer[renamed[name]] = node
                floats.add(renamed[name])
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    cast_nodes: list[onnx.NodeProto] = []
    rounded: dict[str, str] = {}
    charged: dict[str, list[str]] = {}

    def round_of(name: str, target: str | None = None) -> str:
        if name not in rounded:
            half = f"{name}__half"
            rounded[name] = target or f"{name}__fp16"
            cast_nodes.append(helper.make_node("Cast", [name], [half], name=f"{name}__to_fp16", to=TensorProto.FLOAT16))
            cast_nodes.append(
                helper.make_node("Cast", [half], [rounded[name]], name=f"{name}__to_fp32", to=TensorProto.FLOAT)
            )
        return rounded[name]

    for node in g.node:
        if node.op_type in WEIGHT_LIKE:
            continue
        skip = NON_DATA_INPUTS.get(node.op_type, set())
        for i, name in enumerate(node.input):
            if not name or i in skip or name not in floats:
                continue
            src = producer.get(name)
            src_fp16 = src is not None and src.name in fp16
            if node.name in fp16 or src_fp16:
                node.input[i] = round_of(name)
                who = [src.name] if src is not None and src_fp16 else [node.name]
                charged.setdefault(name, [])
                charged[name] += [w for w in who if w not in charged[name]]
    for original, raw in renamed.items():
        round_of(raw, target=original)
        charged.setdefault(raw, [producer[raw].name])
    g.node.extend(cast_nodes)
    weights = {n: tensor_array(inits[n]) for n in charged if n in inits}
    sorted_model = _toposort(out)
    return _Rewrite(sorted_model, charged, weights)


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in dependency order (the Cast pairs were appended at the end)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # a cycle or a missing tensor: leave the rest as they were
            ordered += rest
            break
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def _overflow(values: np.ndarray) -> int:
    v = np.asarray(values)
    if v.dtype.kind != "f":
        return 0
    return int(np.count_nonzero(np.isfinite(v) & (np.abs(v) > FP16_MAX)))


def run_emulation(model: onnx.ModelProto, keep: set[str], feed: Feed, budget: Tolerances,
                  ref_out: dict[str, np.ndarray] | None = None) -> Emulation:
    """Emulate with ``keep`` in fp32, run on ``feed`` and compare with the fp32 graph."""
    from segc.localize import compare_runs, produced_tensors, run_exposing, shared_tensors

    rw = emulate(model, keep)
    shared = shared_tensors(model, rw.model)
    if ref_out is None:
        ref_out = run_exposing(model, shared, feed)
    produced = produced_tensors(rw.model)
    points = [n for n in rw.rounding_points if n in produced]
    emu_out = run_exposing(rw.model, list(dict.fromkeys(shared + points)), feed)
    outputs = [o.name for o in model.graph.output]
    metrics = [compare_output(o, feed.label, ref_out[o], emu_out[o]) for o in outputs]
    verdict = judge(Contract.APPROXIMATE, metrics, budget)
    loc = compare_runs(model, shared, ref_out, emu_out, feed.label, Contract.APPROXIMATE, budget, k=0)
    by_node = {t.node: t for t in loc.tensors}  # a node's first output stands for it
    over: dict[str, int] = {}
    for name, who in rw.rounding_points.items():
        values = rw.weights.get(name, feed.arrays.get(name, emu_out.get(name)))
        count = 0 if values is None else _overflow(values)
        for w in who:
            over[w] = over.get(w, 0) + count
    drop = {t.tensor: (1.0 - t.cosine if t.cosine is not None else 0.0) + (1.0 if t.nonfinite_mismatch else 0.0)
            for t in loc.tensors}
    layers = []
    for node in model.graph.node:
        if node.op_type in WEIGHT_LIKE:
            continue
        t = by_node.get(node.name)
        own = max((drop.get(o, 0.0) for o in node.output), default=0.0)
        inherited = max((drop.get(i, 0.0) for i in node.input), default=0.0)
        layers.append(LayerFigures(node=node.name, op=node.op_type, precision="fp32" if node.name in keep else "fp16",
                                   cosine=t.cosine if t else None, max_abs=t.max_abs if t else None,
                                   overflow=over.get(node.name, 0), local_drop=max(0.0, own - inherited),
                                   fp32_beyond=sum(_overflow(ref_out[o]) for o in node.output if o in ref_out)))
    return Emulation(kept=sorted(keep), verdict=verdict, layers=layers)


def plan_fp16(model: onnx.ModelProto, feeds: list[Feed], budget: Tolerances | None = None,
              max_keep: int = 16) -> Fp16Plan:
    """Emulate all-fp16; when it overflows or misses ``budget``, search the keep-set (greedy)."""
    from segc.localize import run_exposing, shared_tensors

    budget = budget or FP16_BUDGET
    model = name_nodes(model)
    feed = feeds[0]
    ref_out = run_exposing(model, shared_tensors(model, emulate(model, set()).model), feed)
    keep: set[str] = set()
    producer = {o: n.name for n in model.graph.node if n.op_type not in WEIGHT_LIKE for o in n.output}
    inputs_from = {n.name: list(dict.fromkeys(producer[i] for i in n.input if i in producer)) for n in model.graph.node}
    first = current = run_emulation(model, keep, feed, budget, ref_out)
    rounds: list[dict[str, Any]] = []
    while not current.ok and len(keep) < max_keep:
        overflowing = [layer.node for layer in current.layers if layer.overflow and layer.node not in keep]
        if overflowing:
            added, why = overflowing[: max_keep - len(keep)], "overflow beyond 65504"
        else:
            candidates = [layer for layer in current.layers if layer.node not in keep and layer.local_drop > 0]
            # a kept layer that still adds error reads inputs its fp16 producers rounded: keep those
            persisting = [layer for layer in current.layers if layer.node in keep and layer.local_drop > 0
                          and [p for p in inputs_from.get(layer.node, []) if p not in keep]]
            best = max(candidates, key=lambda layer: layer.local_drop, default=None)
            worst_kept = max(persisting, key=lambda layer: layer.local_drop, default=None)
            if worst_kept is not None and (best is None or worst_kept.local_drop > best.local_drop):
                added = [p for p in inputs_from[worst_kept.node] if p not in keep][: max_keep - len(keep)]
                why = (
                    f"kept {worst_kept.node} still drops cosine by {worst_kept.local_drop:.3g}: "
                    "its inputs are rounded by these"
                )
            elif best is not None:
                added, why = [best.node], f"largest local cosine drop {best.local_drop:.3g}"
            else:
                break
        keep.update(added)
        current = run_emulation(model, keep, feed, budget, ref_out)
        rounds.append({"kept": added, "why": why, "cosine": current.verdict.summary()["cosine"],
                       "overflow": current.overflow, "ok": current.ok})
    final = current
    for other in feeds[1:]:  # the final set, verified on every input
        check = run_emulation(model, keep, other, budget)
        final.verdict.metrics += check.verdict.metrics
        final.verdict.reasons += check.verdict.reasons
        final.verdict.ok = final.verdict.ok and check.verdict.ok
        for mine, theirs in zip(final.layers, check.layers, strict=False):
            mine.overflow += theirs.overflow
    return Fp16Plan(first=first, final=final, keep=sorted(keep), rounds=rounds, budget=budget)


def fp32_layers(model: onnx.ModelProto) -> tuple[str, ...]:
    """The keep-set ``emulate_fp16`` stored in the model's metadata (empty when none)."""
    for prop in model.metadata_props:
        if prop.key == FP32_LAYERS_KEY:
            try:
                return tuple(str(n) for n in json.loads(prop.value))
            except (ValueError, TypeError):
                return ()
    return ()


def figures_markdown(stats: dict[str, Any]) -> list[str]:
    """The per-layer table of report.md (layers with overflow, kept, or a visible drop)."""
    lines = ["", "## fp16 emulation", ""]
    first, final = stats["all_fp16"], stats["final"]
    lines.append(
        f"- all fp16: cosine {_f(first['cosine'])}, agreement {_f(first['agreement'])}, max abs "
        f"{_f(first['max_abs'])}, overflowing values {first['overflow']}; {'meets' if first['ok'] else 'misses'} "
        f"the budget (cosine >= {stats['budget']['cosine']}, agreement >= {stats['budget']['agreement']}, no overflow)"
        + (f": {first['reasons'][0]}" if first["reasons"] else "")
    )
    if stats["kept_fp32"]:
        lines.append(f"- kept fp32 ({stats['search']} search): {', '.join(stats['kept_fp32'])}; then cosine "
                     f"{_f(final['cosine'])}, agreement {_f(final['agreement'])}, overflow {final['overflow']}; "
                     f"{'meets' if final['ok'] else 'MISSES'} the budget")
    else:
        lines.append("- nothing kept in fp32: the build is plain fp16")
    lines += [
        "",
        "| layer | op | precision | cosine (all fp16) | max abs (all fp16) | overflow (all fp16) | fp32 values > "
        "65504 |",
        "|---|---|---|---|---|---|---|",
    ]
    final_prec = {row["node"]: row["precision"] for row in stats["layers_final"]}
    rows = [r for r in stats["layers"] if r["overflow"] or r["fp32_beyond"] or final_prec.get(r["node"]) == "fp32"
            or (r["cosine"] is not None and r["cosine"] < 0.99999)]
    for r in rows[:40]:
        lines.append(f"| {r['node']} | {r['op']} | {final_prec.get(r['node'], 'fp16')} | {_f(r['cosine'])} | "
                     f"{_f(r['max_abs'])} | {r['overflow']} | {r['fp32_beyond']} |")
    if len(rows) > 40:
        lines.append(f"| ... {len(rows) - 40} more in report.json | | | | | | |")
    return lines


def _f(x: Any) -> str:
    return "-" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))
