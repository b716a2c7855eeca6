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
would import torch), and it is handed the input file itself when the model is still that
file (``_OnnxsimInput``). The folding engine was chosen by measurement
(bench/compile_floor.py): onnxruntime's basic optimisation written out with
``SessionOptions.optimized_model_filepath`` is the one alternative that keeps symbolic dims
and emits only standard ops, but it leaves more nodes (ocrnet_hrnetw18: 1062 against
onnx-simplifier's 944; dbnet_r50: 239 against 243) and saved about 1.2 s of 4.4 s on dbnet_r50
(load average 11, in process), while adding Microsoft opset domains to the model; the
vendor tools' op lists are written against onnx-simplifier's output. So onnx-simplifier
stays, paid for only in what it does, less two of its onnx-optimizer passes that are
quadratic in graph size: the same rewrites run after it in linear time
(``segc.passes._unit_nops``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx

from segc.errors import SegcError, first_line
from segc.modelio import has_disk_tensors, tensor_nbytes, weight_bytes
from segc.passbase import (Contract, ModelPass, OptionKind, PassContext, PassOption, PassResult, carry_model_fields,
                           register_pass)
from segc.passes._onnxsim_core import FoldSettings, simplify_bytes, simplify_file
from segc.passes._unit_nops import eliminate_unit_nops

GROWTH_ALLOWANCE = 1.02  # folding may legitimately add a little (e.g. a folded shape constant)
GROWTH_SLACK = 4096  # bytes: small constants never count as growth

# onnx-simplifier takes the whole model as one protobuf message, and protobuf cannot hold
# more than 2 GiB: above that segc keeps the weights on disk (segc.modelio.ON_DISK_MIN) and
# this pass leaves the graph as it is rather than fail the compile. The vendor tools fold
# constants themselves.
_OVER_LIMIT_NOTE = ("model over protobuf's 2 GiB limit: onnx-simplifier cannot take it, so constant folding and "
                    "its shape inference were skipped (the graph is left as it was)")


@register_pass
class Simplify(ModelPass):
    name = "simplify"
    contract = Contract.EXACT
    summary = "onnx-simplifier with shape inference; keeps dynamic dims, never grows the model"
    options = {"fold_constants": PassOption(OptionKind.BOOL, "fold constant subgraphs", default=True)}

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        notes: list[str] = []
        if has_disk_tensors(model):
            return model, PassResult(changed=False, stats={"skipped": True}, notes=[_OVER_LIMIT_NOTE])
        size_before = weight_bytes(model)
        attempts = [FoldSettings()]
        if not ctx.option("fold_constants"):
            attempts = [FoldSettings(constant_folding=False)]
        else:
            biggest = max((tensor_nbytes(t) for t in model.graph.initializer), default=0)
            attempts += [FoldSettings(tensor_size_threshold=max(biggest, 1024)), FoldSettings(constant_folding=False)]
        source = _OnnxsimInput(model, ctx.source)
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
            "input": source.route,
            "duplicate_initializers": nops.duplicate_initializers,
            "unit_nodes_removed": nops.unit_nodes,
            "empty_concat_inputs": nops.empty_concat_inputs,
        }
        return (simplified if changed else model), PassResult(changed=changed, stats=stats, notes=notes)


def _new_domains(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Op domains ``after`` uses that ``before`` did not (contrib ops from a fusion)."""
    def domains(m: onnx.ModelProto) -> set[str]:
        return {n.domain for n in m.graph.node if n.domain not in ("", "ai.onnx")}
    return sorted(domains(after) - domains(before))


class _OnnxsimInput:
    """How the model reaches onnx-simplifier's C++ core, chosen once for all attempts.

    Handing the core the file the model was read from (``simplify_path``) skips a Python
    ``SerializeToString`` of the whole model, measured at 2.1 s on hrnet_w48_ocr,
    and 0.7 GiB peak for onnx-simplifier given the file against 1.5 GiB given a ModelProto.
    The result is read back with one ``onnx.load``. When there is no such file (an earlier pass changed the model, or
    its outputs lack a shape field onnxsim insists on) the model is serialised once and those
    bytes serve every retry (``simplify``, in memory).
    """

    def __init__(self, model: onnx.ModelProto, source: Path | None) -> None:
        self.model = model
        self.path = source if source is not None and not _missing_output_shapes(model) else None
        self.route = "file" if self.path is not None else "bytes"
        self._bytes: bytes | None = None

    def simplify(self, settings: FoldSettings, notes: list[str]) -> onnx.ModelProto | None:
        try:
            if self.path is not None:
                with tempfile.TemporaryDirectory(prefix="segc-onnxsim-") as tmp:
                    out = Path(tmp) / "simplified.onnx"
                    simplify_file(self.path, out, settings)
                    simplified = onnx.load(str(out))
            else:
                if self._bytes is None:
                    self._bytes = _with_output_shapes(self.model).SerializeToString()
                result = simplify_bytes(self._bytes, settings)
                if not result:
                    raise ValueError("the simplified model is larger than 2 GiB")
                simplified = onnx.load_from_string(result)
        except SegcError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxsim raises bare RuntimeErrors from C++
            first = first_line(exc)
            notes.append(f"onnx-simplifier could not process the model: {first[:300]}")
            return None
        return simplified


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
