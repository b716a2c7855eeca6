"""simplify in segments (segc.passes._simplify_segments): where big graphs are cut, and that
the result is what onnx-simplifier gives on the whole graph, node for node.

The cut size is lowered in these tests (``SEGMENT_NODES``), so that graphs of tens of nodes
are cut as the 50k-node graphs of bench/run_bench.py are."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes import _simplify_segments as seg
from segc.passes.simplify import Simplify
from tests.onnxsim_parity import assert_same_graph, simplified_whole_and_in_segments

C = 4


def blocks(count: int, *, extra: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """``count`` residual blocks Conv -> BatchNormalization -> Relu -> Add (a cut may follow
    each Add), each with a shape-computed Resize folded by the core, and an empty Constant
    (a Resize's roi) in every block: repeats that the whole graph's core merges."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    cur = "x"
    for k in range(count):
        inits += [numpy_helper.from_array((rng.standard_normal((C, C, 1, 1)) * 0.3).astype(np.float32), f"w{k}"),
                  *(numpy_helper.from_array(v.astype(np.float32), f"{name}{k}") for name, v in
                    (("s", rng.uniform(0.5, 1.5, C)), ("b", rng.standard_normal(C) * 0.1),
                     ("m", rng.standard_normal(C) * 0.1), ("v", rng.uniform(0.5, 1.5, C))))]
        nodes += [
            helper.make_node("Conv", [cur, f"w{k}"], [f"c{k}"]),
            helper.make_node("BatchNormalization", [f"c{k}", f"s{k}", f"b{k}", f"m{k}", f"v{k}"], [f"n{k}"]),
            helper.make_node("Relu", [f"n{k}"], [f"r{k}"]),
            helper.make_node("Shape", [f"r{k}"], [f"shape{k}"]),
            helper.make_node("Constant", [], [f"roi{k}"], value=numpy_helper.from_array(np.zeros(0, np.float32))),
            helper.make_node("Resize", [f"r{k}", f"roi{k}", "", f"shape{k}"], [f"z{k}"], mode="nearest"),
            helper.make_node("Add", [f"z{k}", cur], [f"a{k}"]),
        ]
        cur = f"a{k}"
    nodes += [*(extra or []), helper.make_node("Identity", [cur], ["y"])]
    g = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 8, "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 8, "W"])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seg, "SEGMENT_NODES", 14)


def test_cut_after_residual_adds_only(small_segments: None) -> None:
    model = blocks(8)
    plan = seg.plan_segments(model.graph)
    assert plan is not None and len(plan.cuts) >= 2
    for cut in plan.cuts:
        node = model.graph.node[cut.after - 1]
        assert node.op_type == "Add" and cut.tensor == node.output[0]
        assert cut.after >= 14


def test_matches_onnx_simplifier_on_the_whole_graph_and_runs_the_same() -> None:
    model = blocks(8)
    cut, whole, result = simplified_whole_and_in_segments(model, 14)
    assert result.stats["segments"] >= 3
    assert_same_graph(cut, whole, core_names=True)
    ops = [n.op_type for n in cut.graph.node]
    assert "BatchNormalization" not in ops  # fused into the Conv before it, in every segment
    assert ops.count("Constant") <= 1  # the repeated roi is one, as in the whole graph's result
    x = np.random.default_rng(1).standard_normal((1, C, 8, 12)).astype(np.float32)
    np.testing.assert_allclose(run_model(cut, {"x": x})["y"], run_model(model, {"x": x})["y"], rtol=1e-4, atol=1e-5)


def test_nothing_to_cut_in_a_graph_of_ordinary_size() -> None:
    model = blocks(8)
    assert seg.plan_segments(model.graph) is None  # 57 nodes: far under 2 * SEGMENT_NODES
    out, result = Simplify().apply(model, PassContext())
    assert result.stats["segments"] == 1


def test_idempotent_in_segments(small_segments: None) -> None:
    once, first = Simplify().apply(blocks(8), PassContext())
    twice, second = Simplify().apply(once, PassContext())
    assert first.changed and not second.changed
    assert_same_graph(once, twice)


def test_no_cut_where_a_constant_or_a_second_value_crosses(small_segments: None) -> None:
    """A value read across the whole graph (the input's shape, read at the end) is alive at
    every place a cut could be: nothing is cut."""
    extra = [helper.make_node("Shape", ["x"], ["xs"]), helper.make_node("Reshape", ["a7", "xs"], ["y0"])]
    model = blocks(8, extra=extra)
    model.graph.node[-1].input[0] = "y0"
    shape_first = helper.make_node("Shape", ["x"], ["xs"])
    nodes = [shape_first, *[n for n in model.graph.node if n.output[0] != "xs"]]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert seg.plan_segments(model.graph) is None


def test_no_cut_after_an_op_the_optimizer_fuses_onward_or_into_a_repeat(small_segments: None) -> None:
    model = blocks(8)
    for node in model.graph.node:
        if node.op_type == "Add":
            node.op_type = "Sub"  # still a safe producer: cut
    assert seg.plan_segments(model.graph) is not None
    for node in model.graph.node:
        if node.op_type == "Sub":
            node.op_type = "Concat"  # fuse_consecutive_concats starts here: no cut
            node.attribute.append(helper.make_attribute("axis", 1))
    assert seg.plan_segments(model.graph) is None


def _chain(ops: list[str]) -> onnx.GraphProto:
    names = ["x", *(f"t{i}" for i in range(len(ops) - 1)), "y"]
    nodes = [helper.make_node(op, [names[i]], [names[i + 1]]) for i, op in enumerate(ops)]
    return helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])


def test_no_cut_between_two_of_one_unary_op(small_segments: None) -> None:
    """onnx-optimizer merges consecutive idempotent ops (Relu, Relu): such a pair is never cut."""
    assert seg.plan_segments(_chain(["Relu"] * 60)) is None
    mixed = seg.plan_segments(_chain(["Relu", "Sigmoid"] * 30))
    assert mixed is not None and len(mixed.cuts) >= 2


def test_no_cut_in_a_graph_out_of_order(small_segments: None) -> None:
    model = blocks(8)
    nodes = list(model.graph.node)
    nodes[0], nodes[1] = nodes[1], nodes[0]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert seg.plan_segments(model.graph) is None


def test_a_failing_segment_sends_the_whole_graph(small_segments: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = seg.simplify_in_segments

    def failing(model, plan, simplify):  # type: ignore[no-untyped-def]
        def first_fails(segment: onnx.ModelProto) -> onnx.ModelProto:
            calls.append(len(segment.graph.node))
            raise RuntimeError("the core refused a segment")
        return real(model, plan, first_fails)

    monkeypatch.setattr("segc.passes.simplify.simplify_in_segments", failing)
    out, result = Simplify().apply(blocks(8), PassContext())
    assert calls and result.changed and result.stats["segments"] == 1
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]


def test_segments_that_disagree_on_a_name_send_the_whole_graph(small_segments: None) -> None:
    model = blocks(8)
    plan = seg.plan_segments(model.graph)
    assert plan is not None
    clash = numpy_helper.from_array(np.zeros(1, np.float32), "made_up")  # (not a _v_ name: those are renumbered)

    def with_clash(segment: onnx.ModelProto) -> onnx.ModelProto:
        clash.float_data[:] = [float(len(segment.graph.node))]  # a different value per segment
        segment.graph.initializer.append(clash)
        return segment

    assert seg.simplify_in_segments(model, plan, with_clash) is None


@pytest.mark.slow
def test_seed_model_ocrnet_in_segments(seed_onnx) -> None:  # type: ignore[no-untyped-def]
    """ocrnet_hrnetw18's one cut (its head's last Relu: the branches meet before it), and the
    head's empty Resize roi, a repeat of one in the backbone that the whole graph merges."""
    from segc.modelio import load_model

    model = load_model(seed_onnx("ocrnet_hrnetw18", shape=(1, 3, 256, 512)), lazy=True)
    cut, whole, result = simplified_whole_and_in_segments(model, 5)
    assert result.stats["segments"] == 2
    assert_same_graph(cut, whole, core_names=True)


def test_made_up_names_are_numbered_on_past_the_inputs_own() -> None:
    """The core numbers its names from the same start in every call; joined, they must not
    clash with each other or with names an input simplified before already has."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["_v_0"]), helper.make_node("Neg", ["_v_0"], ["_v_1"]),
                           helper.make_node("Add", ["_v_1", "_v_5"], ["y"])], "g", [], [],
                          [numpy_helper.from_array(np.zeros(1, np.float32), "_v_5")])
    nxt = seg._renumber(g, original={"x", "y", "_v_5", "_v_3"}, start=3)
    assert [list(n.output) for n in g.node] == [["_v_4"], ["_v_6"], ["y"]]  # 3 and 5 are the input's
    assert list(g.node[2].input) == ["_v_6", "_v_5"] and nxt == 7
