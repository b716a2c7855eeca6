"""Which node first makes two graphs differ: ``segc verify REF CAND --localize``.

Comparing only the outputs says *that* a candidate differs, not *where*. Both graphs are
run once with every intermediate tensor they share exposed as an output (same name, same
shape at run time), and each shared tensor is compared with the same metrics the verifier
uses. Walking the reference's nodes in topological order, the first one whose output
diverges beyond the tolerance is where the difference starts: everything downstream of it
inherits the error, so "the first" names the cause and the k worst only show the damage.

This is what Polygraphy's ``--mark all`` comparison and Ascend's msprobe compare do on the
device; here it runs in onnxruntime, between any two graphs that keep tensor names, e.g. a
fp32 graph and its fp16 emulation (``segc.fp16_emulation``), which is how the keep-set search
finds its layers.

Diverges means: NaN/Inf at different positions, or for ``exact`` a max error above
``atol + rtol * max|ref|``, or for ``approximate`` a cosine below the budget. Integer
tensors (shape arithmetic) diverge on any difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from segc.metrics import OutputMetrics, Tolerances, compare_output
from segc.ortrun import SessionConfig, make_session, run_session
from segc.passbase import Contract
from segc.verify import expose_tensors
from segc.verify_inputs import Feed


@dataclass
class TensorDivergence:
    """How one shared tensor (the output of ``node``) compares between the two graphs."""

    node: str
    op: str
    tensor: str
    index: int  # position of ``node`` in the reference's topological order
    cosine: float | None
    max_abs: float | None
    max_rel: float | None
    nonfinite_mismatch: int
    diverges: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Localization:
    """The result: the first divergent node (or None), the k worst, and what was compared."""

    feed: str
    contract: str
    compared: int  # shared tensors compared
    skipped: list[str] = field(default_factory=list)  # shared names whose shapes differed
    first_divergence: TensorDivergence | None = None
    worst: list[TensorDivergence] = field(default_factory=list)
    tensors: list[TensorDivergence] = field(default_factory=list)  # every compared one, in topological order

    def to_dict(self, with_all: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "feed": self.feed,
            "contract": self.contract,
            "compared": self.compared,
            "skipped_shape_mismatch": self.skipped,
            "first_divergence": self.first_divergence.to_dict() if self.first_divergence else None,
            "worst": [w.to_dict() for w in self.worst],
        }
        if with_all:
            out["tensors"] = [t.to_dict() for t in self.tensors]
        return out


def produced_tensors(model: onnx.ModelProto) -> dict[str, tuple[int, onnx.NodeProto]]:
    """Tensor name -> (topological index, producing node), for every node output."""
    out: dict[str, tuple[int, onnx.NodeProto]] = {}
    for i, node in enumerate(model.graph.node):
        for name in node.output:
            if name:
                out[name] = (i, node)
    return out


def shared_tensors(ref: onnx.ModelProto, cand: onnx.ModelProto) -> list[str]:
    """Names produced by a node in both graphs, in the reference's topological order."""
    ref_p, cand_p = produced_tensors(ref), produced_tensors(cand)
    return sorted((n for n in ref_p if n in cand_p), key=lambda n: ref_p[n][0])


def run_exposing(model: onnx.ModelProto, names: list[str], feed: Feed,
                 config: SessionConfig | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` once with ``names`` exposed as outputs; returns every output by name."""
    outputs = {o.name for o in model.graph.output}
    missing = [n for n in names if n not in outputs]
    exposed = expose_tensors(model, missing) if missing else model
    session = make_session(exposed, config or SessionConfig())
    return run_session(session, feed.arrays)


def diverges(m: OutputMetrics, contract: Contract, tol: Tolerances) -> bool:
    """The rule of the module docstring, on one tensor's metrics."""
    if m.nonfinite_mismatch:
        return True
    if m.dtype[0] in "iub":
        return bool(m.max_abs)
    if m.max_abs is None:
        return False
    if contract is Contract.APPROXIMATE:
        return m.cosine is not None and m.cosine < tol.cosine
    return m.max_abs > tol.atol + tol.rtol * (m.ref_scale or 0.0)


def compare_runs(ref: onnx.ModelProto, names: list[str], ref_out: dict[str, np.ndarray],
                 cand_out: dict[str, np.ndarray], feed: str, contract: Contract, tol: Tolerances,
                 k: int = 5, alias: dict[str, str] | None = None) -> Localization:
    """Judge each shared tensor of two finished runs (see ``localize``); ``alias`` maps a
    reference tensor to the candidate tensor that carries its value, when that has another name."""
    producers = produced_tensors(ref)
    alias = alias or {}
    result = Localization(feed=feed, contract=contract.value, compared=0)
    for name in names:
        other = alias.get(name, name)
        if name not in ref_out or other not in cand_out:
            continue
        a, b = ref_out[name], cand_out[other]
        if a.shape != b.shape:
            result.skipped.append(name)
            continue
        m = compare_output(name, feed, a, b)
        index, node = producers[name]
        t = TensorDivergence(node=node.name or f"{node.op_type}#{index}", op=node.op_type, tensor=name, index=index,
                             cosine=m.cosine, max_abs=m.max_abs, max_rel=m.max_rel,
                             nonfinite_mismatch=m.nonfinite_mismatch, diverges=diverges(m, contract, tol))
        result.tensors.append(t)
        result.compared += 1
        if t.diverges and result.first_divergence is None:
            result.first_divergence = t
    bad = [t for t in result.tensors if t.diverges]
    # worst first: NaN/Inf mismatches, then the lowest cosine, then the largest relative error
    bad.sort(key=lambda t: (-t.nonfinite_mismatch, t.cosine if t.cosine is not None else 1.0, -(t.max_rel or 0.0)))
    result.worst = bad[:k]
    return result


def qdq_alias(model: onnx.ModelProto) -> dict[str, str]:
    """In a QDQ graph, tensor -> the DequantizeLinear output that carries its int8 value.

    onnxruntime's quantiser may also drop a Relu after a Conv and let the Conv write the Relu's
    output name, the clamp then done by the QuantizeLinear: the name is shared, but only the
    value after Quantize/Dequantize is the Relu's. Comparing that one keeps the layers honest.
    """
    dq_of = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input}
    return {n.input[0]: dq_of[n.output[0]] for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input and n.output and n.output[0] in dq_of}


def localize(ref: onnx.ModelProto, cand: onnx.ModelProto, feed: Feed, *, contract: Contract = Contract.EXACT,
             tolerances: Tolerances | None = None, k: int = 5, config: SessionConfig | None = None) -> Localization:
    """Run both graphs on ``feed`` exposing their shared tensors; name the first divergent node.

    A QDQ candidate (int8 emulation) is compared at the dequantised value of each tensor
    (``qdq_alias``), which is what its consumers read.
    """
    tol = tolerances or Tolerances()
    names = shared_tensors(ref, cand)
    alias = qdq_alias(cand)
    ref_out = run_exposing(ref, names, feed, config)
    cand_names = list(dict.fromkeys(alias.get(n, n) for n in names))
    cand_out = run_exposing(cand, cand_names, feed, config)
    return compare_runs(ref, names, ref_out, cand_out, feed.label, contract, tol, k, alias)
