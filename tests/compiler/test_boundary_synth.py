"""The synthesized route of boundary verification (segc.boundary_synth): it compares something,
at the real shapes, catches a broken exact pass, and never fails a pass on its own.

Graphs here are small but shaped like DBNet's neck: strided convolutions (so sizes at odd
input sizes round), and a Resize whose ``sizes`` come from a Shape chain (a value that must be
real, not random)::

    x[1,3,H,W] -> Conv s2 -> c1 -> Conv s2 -> c2 -> Resize(sizes = Shape(c1)) -> up
                                   c1, up -> Add -> s -> Conv -> y
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from segc.boundary_synth import LeafKind, NoSynth, ShapeOracle, feed_shapes, leaf_values, plan
from segc.boundary_verify import BoundaryChecker, CheckOutcome, InputsFrom, RegionRun, Region, _PassCheck, find_region
from segc.graph_view import GraphView
from segc.ortrun import SESSION_STATS, run_model
from segc.passbase import Contract
from segc.shapes import ShapeRange
from segc.verify import Verifier, expose_tensors

# a range with odd sizes: its minimum 1x3x33x35 already rounds at every strided conv
RANGES = {"x": ShapeRange("x", (1, 3, 33, 35), (1, 3, 64, 64), (1, 3, 48, 56))}


def neck() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w1", (8, 3, 3, 3)), ("w2", (8, 8, 3, 3)), ("w3", (4, 8, 1, 1)))]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "two"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero"))
    inits.append(numpy_helper.from_array(np.array([4], np.int64), "four"))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv1"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv2"),
        helper.make_node("Shape", ["c1"], ["shape_c1"], name="shape"),
        helper.make_node("Slice", ["shape_c1", "zero", "four"], ["sizes"], name="slice"),
        helper.make_node("Resize", ["c2", "", "", "sizes"], ["up"], mode="nearest", name="resize"),
        helper.make_node("Add", ["up", "c1"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "w3"], ["y"], kernel_shape=[1, 1], name="conv3"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, None, None])
    model = helper.make_model(helper.make_graph(nodes, "neck", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    found: onnx.NodeProto = next(n for n in model.graph.node if n.name == name)
    return found


def _swap_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """A correct rewrite: Add(up, c1) -> Add(c1, up)."""
    after = _copy(model)
    add = _node(after, "add")
    add.input[0], add.input[1] = "c1", "up"
    return after


def _fold_sizes(model: onnx.ModelProto) -> onnx.ModelProto:
    """fold_resize_scales done wrong: sizes replaced by scales 2, right only where c1's size is even."""
    after = _copy(model)
    after.graph.initializer.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    resize = _node(after, "resize")
    resize.input[2], resize.input[3] = "scales", ""
    return after


def _checker() -> tuple[Verifier, BoundaryChecker]:
    verifier = Verifier(ranges=RANGES)
    return verifier, BoundaryChecker(verifier)


def _explicit_nearest_mode(model: onnx.ModelProto) -> onnx.ModelProto:
    """A correct rewrite of the Resize: its default nearest_mode written out."""
    after = _copy(model)
    _node(after, "resize").attribute.append(helper.make_attribute("nearest_mode", "round_prefer_floor"))
    return after


def _checked_right(after: onnx.ModelProto) -> tuple[CheckOutcome, Verifier]:
    """A right rewrite of the neck, checked with the session counts reset first."""
    verifier, checker = _checker()
    state = verifier.initial_state(neck(), defer=True)
    SESSION_STATS.reset()
    out = checker.check(state, after, "after", Contract.EXACT, None)
    assert out.verdict.ok, out.verdict.reasons
    return out, verifier


def test_a_correct_rewrite_is_checked_on_synthesized_inputs_without_the_upstream_run() -> None:
    before = neck()
    out, verifier = _checked_right(_explicit_nearest_mode(before))
    assert out.verified_by.value == "boundary" and out.inputs_from is InputsFrom.SYNTHESIZED
    # the graph before's cone (the Resize), the region, and the Slice its sizes come from (the
    # Shape read is the shape analysis's): no run of the convolutions upstream
    assert SESSION_STATS.sessions == 3 and SESSION_STATS.runs == 3 * 3
    feeds = verifier.feeds_for(before)
    assert len({f.shape_key for f in feeds}) == 3
    # something was compared, at each verification shape (a Resize to a computed size is not
    # shape-blind), at the real shape of up there
    real = _real_values(before, ["up"], verifier)
    assert [m.output for m in out.verdict.metrics] == ["up"] * 3
    for m, feed in zip(out.verdict.metrics, feeds, strict=True):
        assert m.feed == feed.label and m.compared == real[feed.label]["up"].size > 0
        assert tuple(m.shape) == tuple(m.ref_shape) == real[feed.label]["up"].shape


def test_a_shape_blind_rewrite_is_checked_at_the_smallest_shape_alone() -> None:
    """Add(up, c1) -> Add(c1, up): elementwise on two made-up activations, the same function at
    every shape (segc.shape_blind), so one shape is run, the smallest."""
    before = neck()
    out, verifier = _checked_right(_swap_add(before))
    assert SESSION_STATS.sessions == 2 and SESSION_STATS.runs == 2
    smallest = min(verifier.feeds_for(before), key=lambda f: int(np.prod(feed_shapes(f)["x"])))
    assert [(m.output, m.feed) for m in out.verdict.metrics] == [("s", smallest.label)]
    assert out.verdict.metrics[0].compared > 0
    assert any("alone" in w and "shape-blind" in w for w in out.verdict.warnings), out.verdict.warnings


def _real_values(model: onnx.ModelProto, names: list[str], verifier: Verifier) -> dict[str, dict[str, np.ndarray]]:
    exposed = expose_tensors(model, names)
    return {f.label: run_model(exposed, f.arrays) for f in verifier.feeds_for(model)}


def test_synthesized_leaves_have_the_real_shapes_and_shape_values_the_real_values() -> None:
    """Every made-up tensor has the shape it has in a real run, at every verification shape
    (odd ones included, where a strided conv rounds), and shape-derived values are exact."""
    before = neck()
    after = _fold_sizes(before)
    region = find_region(before, after)
    assert isinstance(region, Region)
    b = region.boundary
    p = plan(before, GraphView.from_onnx(before.graph), b, after, GraphView.from_onnx(after.graph),
             ShapeOracle(before))
    assert not isinstance(p, NoSynth), p
    kinds = {leaf.name: leaf.kind for leaf in p.leaves}
    assert kinds["c2"] is LeafKind.RANDOM and kinds["sizes"] is LeafKind.SHAPE_VALUE
    verifier, checker = _checker()
    oracle = ShapeOracle(before)
    real = _real_values(before, ["c2", "sizes", "up"], verifier)
    for index, feed in enumerate(verifier.feeds_for(before)):
        values = leaf_values(p, feed, index, 0, oracle, {"sizes": real[feed.label]["sizes"]})
        assert not isinstance(values, NoSynth), values
        assert values["c2"].shape == real[feed.label]["c2"].shape
        assert oracle.shape(feed_shapes(feed), "up") == real[feed.label]["up"].shape
        shape_values = checker._shape_values(before, GraphView.from_onnx(before.graph), p, [feed], oracle,
                                             verifier.config)
        assert not isinstance(shape_values, NoSynth)
        assert shape_values[0]["sizes"].tolist() == real[feed.label]["sizes"].tolist()
    odd = [f for f in verifier.feeds_for(before) if any(d % 2 for d in feed_shapes(f)["x"][2:])]
    assert odd, "the range must give an odd shape, where rounding shows"


def test_a_broken_exact_pass_fails_on_synthesized_inputs_and_is_confirmed_on_real_ones() -> None:
    before = neck()
    after = _fold_sizes(before)
    verifier, checker = _checker()
    state = verifier.initial_state(before, defer=True)
    region = find_region(before, after)
    assert isinstance(region, Region)
    view = GraphView.from_onnx(after.graph)
    synth = checker._run_synthesized(_PassCheck(state, after, view, verifier.feeds_for(before), Contract.EXACT, None),
                                     region.boundary)
    assert isinstance(synth, RegionRun) and not synth.verdict.ok
    assert any("shape" in r for r in synth.verdict.reasons), synth.verdict.reasons  # odd sizes: 2 * 9 != 17
    out = checker.check(state, after, "after", Contract.EXACT, None)
    assert not out.verdict.ok and out.inputs_from is InputsFrom.REFERENCE
    assert out.inputs_note is not None and "failed" in out.inputs_note


def test_a_wrong_value_is_caught_on_synthesized_inputs() -> None:
    """A changed weight inside the region: same shapes, other values."""
    before = neck()
    after = _copy(before)
    _node(after, "add").op_type = "Sub"
    verifier, checker = _checker()
    state = verifier.initial_state(before, defer=True)
    region = find_region(before, after)
    assert isinstance(region, Region)
    check = _PassCheck(state, after, GraphView.from_onnx(after.graph), verifier.feeds_for(before), Contract.EXACT, None)
    synth = checker._run_synthesized(check, region.boundary)
    assert isinstance(synth, RegionRun) and not synth.verdict.ok
    assert all(m.compared > 0 for m in synth.metrics)


def test_a_rewrite_right_only_on_real_values_is_decided_on_them() -> None:
    """Relu(Relu(v)) -> Relu(v) with the second Relu as Identity: wrong on made-up (negative)
    inputs, right on every real one; the reference route decides, and the pass is ok."""
    before = neck()
    before.graph.node.insert(1, helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    _node(before, "conv2").input[0] = "r1"
    before.graph.node.insert(2, helper.make_node("Relu", ["r1"], ["r2"], name="relu2"))
    _node(before, "conv2").input[0] = "r2"
    after = _copy(before)
    _node(after, "relu2").op_type = "Identity"
    verifier, checker = _checker()
    out = checker.check(verifier.initial_state(before, defer=True), after, "after", Contract.EXACT, None)
    assert out.verdict.ok, out.verdict.reasons
    assert out.inputs_from is InputsFrom.REFERENCE and out.inputs_note and "failed" in out.inputs_note


def test_an_integer_computed_from_the_image_is_never_made_up() -> None:
    before = neck()
    table = numpy_helper.from_array(np.arange(8 * 5, dtype=np.float32).reshape(8, 5), "table")
    before.graph.initializer.append(table)
    before.graph.node.extend([
        helper.make_node("ArgMax", ["c1"], ["idx"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Gather", ["table", "idx"], ["g"], axis=0, name="gather"),
    ])
    before.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    after = _copy(before)
    _node(after, "gather").attribute[0].i = 0  # the same function, a changed node (axis spelled out)
    gather = _node(after, "gather")
    del gather.attribute[:]
    verifier, checker = _checker()
    out = checker.check(verifier.initial_state(before, defer=True), after, "after", Contract.EXACT, None)
    assert out.verdict.ok and out.inputs_from is InputsFrom.REFERENCE
    assert out.inputs_note is not None and "'idx'" in out.inputs_note and "real value" in out.inputs_note
