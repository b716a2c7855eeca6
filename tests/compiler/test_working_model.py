"""Consecutive graph passes share one graph-surgeon graph: one import, one export.

Each export copies every weight (hundreds of MiB on hrnet_w48_ocr), so the pipeline exports
only when something needs a proto: a verifier session, a dump, a whole-model pass, the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import Contract, GraphPass, PassContext, PassResult, register_pass, unregister_pass
from segc.pipeline import DumpInstrument, PassSpec, run_pipeline


def model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    m.metadata_props.add(key="origin", value="test")
    return m


class DoubleOutput(GraphPass):
    """y -> y * 2 (a real change each time it runs); stores how often it ran in metadata."""

    name = "test_double_output"
    contract = Contract.APPROXIMATE

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        y = graph.outputs[0]
        mid = gs.Variable(f"{y.name}_pre{len(graph.nodes)}", dtype=np.float32)
        producer = y.inputs[0]
        producer.outputs[0] = mid
        two = gs.Constant(f"two{len(graph.nodes)}", np.array([2.0], np.float32))
        graph.nodes.append(gs.Node("Mul", inputs=[mid, two], outputs=[y]))
        runs = int(ctx.model_metadata.get("test_doubled", "0")) + 1  # sees what the previous run stored
        ctx.metadata["test_doubled"] = str(runs)
        return PassResult(changed=True)


class Untouched(GraphPass):
    name = "test_untouched"
    contract = Contract.EXACT

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return PassResult(changed=False)


@pytest.fixture(autouse=True)
def _registered():
    register_pass(DoubleOutput)
    register_pass(Untouched)
    yield
    unregister_pass(DoubleOutput.name)
    unregister_pass(Untouched.name)


def _specs() -> list[PassSpec]:
    return [PassSpec("test_double_output"), PassSpec("test_untouched"), PassSpec("test_double_output")]


def test_a_run_of_graph_passes_imports_and_exports_once() -> None:
    m = model()
    result = run_pipeline(m, _specs(), verify="none")
    assert result.ok
    assert (result.graph_imports, result.graph_exports) == (1, 1)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run_model(result.model, {"x": x})["y"], 4 * run_model(m, {"x": x})["y"], rtol=1e-6)
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta == {"origin": "test", "test_doubled": "2"}  # carried fields, and metadata across the shared graph
    assert [p.key for p in m.metadata_props] == ["origin"] and len(m.graph.node) == 2  # the input is untouched


def test_a_dump_or_a_session_still_sees_every_state(tmp_path: Path) -> None:
    dumped = run_pipeline(model(), _specs(), verify="none", instruments=[DumpInstrument(tmp_path)])
    assert dumped.graph_exports == 2  # after each changing pass: what the dump writes is the model then
    first = onnx.load(str(tmp_path / DumpInstrument.file_name(0, "test_double_output")))
    assert [n.op_type for n in first.graph.node].count("Mul") == 1
    verified = run_pipeline(model(), _specs(), verify="each")
    assert verified.ok and verified.graph_exports == 2


class CountHolders(GraphPass):
    """Records how many references the test's input model has while the pipeline runs."""

    name = "test_count_holders"
    contract = Contract.EXACT
    watched: list[onnx.ModelProto] = []
    seen: list[int] = []

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        CountHolders.seen.append(sys.getrefcount(CountHolders.watched[0]))
        return PassResult(changed=False)


def test_a_handed_over_input_is_released_once_a_pass_replaced_it() -> None:
    """With ``HandOver`` the pipeline keeps no reference to the input after the first change
    (a caller that keeps its own, as this test does, is the only holder left)."""
    from segc.pipeline import HandOver

    register_pass(CountHolders)
    try:
        m = model()
        CountHolders.watched[:] = [m]
        CountHolders.seen.clear()
        alone = sys.getrefcount(m)  # this frame and the watch list
        specs = [PassSpec("test_count_holders"), PassSpec("test_double_output"), PassSpec("test_count_holders")]
        result = run_pipeline(HandOver(m), specs, verify="none")
        assert result.ok
        before, after = CountHolders.seen
        assert before > alone  # while it is still the working model, the pipeline holds it
        assert after == alone  # replaced: the pipeline let go of it
    finally:
        unregister_pass(CountHolders.name)
        CountHolders.watched.clear()


def test_an_exported_graph_is_freed_at_once() -> None:
    """A graph-surgeon graph is reference cycles holding the weights of the proto it came from:
    once exported it must be collected then, not whenever the cyclic collector next runs."""
    import gc

    from segc.pipeline import WorkingModel

    def live_graph_nodes() -> int:
        return sum(isinstance(o, gs.Node) for o in gc.get_objects())

    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # so only the pipeline's own collection can free it
    try:
        before = live_graph_nodes()
        working = WorkingModel(model())
        graph = working.graph()
        graph.nodes[0].name = "renamed"
        working.graph_changed()
        del graph
        assert live_graph_nodes() > before  # its nodes and tensors keep each other alive
        out = working.proto()
        assert out.graph.node[0].name == "renamed"
        assert live_graph_nodes() == before
    finally:
        if was_enabled:
            gc.enable()
