"""The pass framework end to end: registry, contracts, each/end verification, bisection, CLI exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.cli import main
from segc.errors import SegcError
from segc.ortrun import SESSION_STATS
from segc.passbase import (Contract, GraphPass, OptionKind, PassContext, PassOption, PassResult, get_pass,
                           register_pass, unregister_pass)
from segc.pipeline import DumpInstrument, PassSpec, run_pipeline
from segc.verify import Verifier


def conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 8, 1, 1)).astype(np.float32), "w2")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["a"], ["b"], name="relu"),
         helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 16, 16])], [w1, w2])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


class AddIdentity(GraphPass):
    """Harmless but real change: an Identity between input and first consumer."""

    name = "test_add_identity"
    contract = Contract.EXACT

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        x = graph.inputs[0]
        mid = gs.Variable("x_id", dtype=np.float32)
        consumers = list(x.outputs)
        graph.nodes.append(gs.Node("Identity", inputs=[x], outputs=[mid]))
        for node in consumers:
            node.inputs[0] = mid
        return PassResult(changed=True)


class ScaleWeights(GraphPass):
    """The deliberately wrong pass: claims exactness, scales a weight by 1.1."""

    name = "test_scale_weights"
    contract = Contract.EXACT
    options = {"factor": PassOption(OptionKind.FLOAT, "scale", default=1.1)}

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        conv = next(n for n in graph.nodes if n.op == "Conv")
        w = conv.inputs[1]
        w.values = (w.values * ctx.option("factor")).astype(np.float32)
        return PassResult(changed=True, stats={"scaled": 1})


class NudgeWeights(GraphPass):
    """An approximate pass: perturbs the first Conv's weights by ``noise`` standard deviations."""

    name = "test_nudge_weights"
    contract = Contract.APPROXIMATE
    options = {"noise": PassOption(OptionKind.FLOAT, "relative noise", default=1e-3)}

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        w = next(n for n in graph.nodes if n.op == "Conv").inputs[1]
        noise = np.random.default_rng(7).standard_normal(w.values.shape) * w.values.std()
        w.values = (w.values + ctx.option("noise") * noise).astype(np.float32)
        return PassResult(changed=True)


class ExposeRelu(GraphPass):
    name = "test_expose_relu"
    contract = Contract.OUTPUTS

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        relu = next(n for n in graph.nodes if n.op == "Relu")
        out = relu.outputs[0]
        out.dtype = np.float32
        graph.outputs = [out]
        return PassResult(changed=True)


class Crash(GraphPass):
    name = "test_crash"
    contract = Contract.EXACT

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")


TEST_PASSES = [AddIdentity, ScaleWeights, NudgeWeights, ExposeRelu, Crash]


@pytest.fixture(autouse=True)
def test_passes():
    for cls in TEST_PASSES:
        register_pass(cls)
    yield
    for cls in TEST_PASSES:
        unregister_pass(cls.name)


def specs(*names: str) -> list[PassSpec]:
    return [PassSpec(n) for n in names]


def test_registry_rejects_duplicates_and_suggests_names() -> None:
    class Again(GraphPass):
        name = "test_add_identity"

    with pytest.raises(ValueError, match="registered twice"):
        register_pass(Again)
    with pytest.raises(SegcError, match="did you mean test_add_identity"):
        get_pass("test_add_identiti")
    with pytest.raises(ValueError, match="no pass name"):
        register_pass(type("Nameless", (GraphPass,), {}))


def test_apply_never_mutates_its_input() -> None:
    model = conv_model()
    before = model.SerializeToString()
    out, result = ScaleWeights().apply(model, PassContext())
    assert result.changed and model.SerializeToString() == before and out is not model


def test_each_mode_names_the_wrong_pass() -> None:
    result = run_pipeline(conv_model(), specs("test_add_identity", "test_scale_weights", "cleanup"), verify="each")
    assert result.failed_pass == "test_scale_weights"
    assert result.passes_before("test_scale_weights") == ["test_add_identity"]
    statuses = [r.status for r in result.records]
    assert statuses[:2] == ["ok", "failed"] and statuses[2] == "pending"  # cleanup never ran
    assert "max abs error" in result.records[1].verdict.reasons[0]


def test_end_mode_bisects_to_the_same_pass() -> None:
    result = run_pipeline(conv_model(), specs("test_add_identity", "cleanup", "test_add_identity", "test_scale_weights",
                                              "cleanup"), verify="end")
    assert result.failed_pass == "test_scale_weights"
    assert result.bisect_probes, "bisection must probe prefixes"
    assert all(not p["ok"] for p in result.bisect_probes if "test_scale_weights" in p["passes"])
    assert all(p["ok"] for p in result.bisect_probes if "test_scale_weights" not in p["passes"])


def test_end_mode_with_unchanged_passes_in_between() -> None:
    """Unchanged passes must not shift which model a bisection probe judges."""
    result = run_pipeline(conv_model(), specs("test_add_identity", "test_expose_relu", "cleanup", "cleanup",
                                              "test_scale_weights"), verify="end")
    assert [r.changed for r in result.records] == [True, True, True, False, True]
    assert result.failed_pass == "test_scale_weights"
    good = run_pipeline(
        conv_model(), specs("test_add_identity", "cleanup", "cleanup", "test_scale_weights"), verify="end"
    )
    assert good.failed_pass == "test_scale_weights" and not good.end_verdict.ok
    final = run_pipeline(conv_model(), specs("test_scale_weights", "cleanup", "test_add_identity"), verify="end")
    assert final.failed_pass == "test_scale_weights"


def test_end_mode_passes_good_pipelines_with_one_comparison() -> None:
    SESSION_STATS.reset()
    result = run_pipeline(conv_model(), specs("test_add_identity", "cleanup"), verify="end")
    assert result.ok and result.end_verdict is not None and result.end_verdict.ok
    assert SESSION_STATS.sessions == 2  # input + final state, nothing in between


def test_one_session_per_state_and_one_run_per_shape() -> None:
    SESSION_STATS.reset()
    verifier = Verifier()
    # whole-model checks (each-full): each state one session; `each` checks at the boundary (test_boundary_verify)
    result = run_pipeline(
        conv_model(), specs("test_add_identity", "cleanup", "cleanup"), verify="each-full", verifier=verifier
    )
    assert result.ok
    assert {r.verified_by for r in result.records if r.changed} == {"whole"}
    changed = sum(r.changed for r in result.records)
    assert changed == 2  # the second cleanup finds nothing
    assert SESSION_STATS.sessions == changed + 1
    # a model without a recipe costs one more run: the probe that picks photo-like or text inputs
    assert verifier.probe_runs == 1
    assert SESSION_STATS.runs == SESSION_STATS.sessions * len(verifier.feed_labels) + verifier.probe_runs


def test_approximate_contract_uses_the_budget() -> None:
    assert run_pipeline(conv_model(), specs("test_nudge_weights"), verify="each").ok
    broken = run_pipeline(conv_model(), [PassSpec("test_nudge_weights", {"noise": 1.0})], verify="each")
    assert broken.failed_pass == "test_nudge_weights"
    assert any("cosine" in r or "agreement" in r for r in broken.records[0].verdict.reasons)


def test_outputs_contract_compares_the_exposed_tensor() -> None:
    result = run_pipeline(conv_model(), specs("test_expose_relu"), verify="each")
    assert result.ok, result.failure
    verdict = result.records[0].verdict
    assert [m.output for m in verdict.metrics] == ["b"] and verdict.metrics[0].max_abs == 0


def test_crashing_pass_is_named() -> None:
    result = run_pipeline(conv_model(), specs("cleanup", "test_crash"), verify="none")
    assert result.failed_pass == "test_crash" and "boom" in result.failure
    assert result.records[1].status == "error"


def test_unknown_option_is_a_usage_error() -> None:
    with pytest.raises(SegcError, match="has no option nope"):
        run_pipeline(conv_model(), [PassSpec("cleanup", {"nope": 1})])


def test_dump_dir(tmp_path: Path) -> None:
    run_pipeline(
        conv_model(), specs("test_add_identity", "cleanup"), verify="none", instruments=[DumpInstrument(tmp_path)]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_test_add_identity.onnx", "01_cleanup.onnx"]


@pytest.mark.parametrize("mode", ["each", "end"])
def test_cli_exits_1_and_the_report_names_the_pass(tmp_path: Path, mode: str, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(conv_model().SerializeToString())
    out = tmp_path / "out"
    code = main(["compile", str(src), "--target", "onnxruntime", "-o", str(out), "--verify", mode,
                 "--passes", "test_add_identity,test_scale_weights,cleanup"])
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["failed_pass"] == "test_scale_weights"
    assert report["ran_before_failure"] == ["test_add_identity"]
    assert "test_scale_weights" in (out / "report.md").read_text()
    assert "test_scale_weights" in capsys.readouterr().err


class NoisyButDeclared(ScaleWeights):
    """A pass that declares its own, looser exact tolerance (like a DCN decomposition)."""

    name = "test_noisy_declared"

    @classmethod
    def tolerance_for(cls, options):
        return {"rtol": 1e-2}


def test_a_pass_may_declare_looser_exact_tolerance_but_the_user_wins() -> None:
    from segc.metrics import Tolerances

    register_pass(NoisyButDeclared)
    try:
        nudge = [PassSpec("test_noisy_declared", {"factor": 1.002})]
        assert run_pipeline(conv_model(), [PassSpec("test_scale_weights", {"factor": 1.002})]).failed_pass
        assert run_pipeline(conv_model(), nudge).ok
        strict = Verifier(tolerances=Tolerances.parse(["rtol=1e-4"]))
        assert run_pipeline(conv_model(), nudge, verifier=strict).failed_pass == "test_noisy_declared"
        assert run_pipeline(conv_model(), nudge, verify="end").ok
    finally:
        unregister_pass("test_noisy_declared")
