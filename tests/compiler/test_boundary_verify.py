"""Verification at the boundary (segc.boundary_verify): sound where it checks, whole where it cannot.

The graphs: two independent chains from one input, so that a region in one chain stays small::

    x -> Mul a0 -> Relu a1 -> Mul a2 -> ... -> a9 = yA
    x -> Mul b0 -> Relu b1 -> Mul b2 -> ... -> b9 = yB

Each test edits the ModelProto as a pass would and asks the checker; the checker is never
told what changed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from segc.boundary_verify import (
    BoundaryChecker,
    CheckOutcome,
    NoRegion,
    Region,
    find_region,
)
from segc.ortrun import SESSION_STATS
from segc.passbase import Contract
from segc.verify import Verifier

N = 10


def chains() -> onnx.ModelProto:
    nodes, inits = [], []
    for side in "ab":
        prev = "x"
        for k in range(N):
            out = f"{side}{k}" if k < N - 1 else f"y{side.upper()}"
            if k % 2 == 0:
                inits.append(numpy_helper.from_array(np.array([1.0 + 0.1 * k], np.float32), f"s_{side}{k}"))
                nodes.append(helper.make_node("Mul", [prev, f"s_{side}{k}"], [out], name=f"{side}{k}"))
            else:
                nodes.append(helper.make_node("Relu", [prev], [out], name=f"{side}{k}"))
            prev = out
    graph = helper.make_graph(nodes, "chains", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4]) for n in ("yA", "yB")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    found: onnx.NodeProto = next(n for n in model.graph.node if n.name == name)
    return found


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    found: onnx.TensorProto = next(t for t in model.graph.initializer if t.name == name)
    return found


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _relu_as_max(model: onnx.ModelProto, name: str) -> None:
    """Relu(v) -> Max(v, 0): the same function, a different node (same output name)."""
    node = _node(model, name)
    zero = f"zero_{name}"
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), zero))
    new = helper.make_node("Max", [node.input[0], zero], list(node.output), name=name)
    node.CopyFrom(new)


def _check(before: onnx.ModelProto, after: onnx.ModelProto, contract: Contract = Contract.EXACT, *,
           full: bool = False) -> CheckOutcome:
    verifier = Verifier()
    state = verifier.initial_state(before, defer=True)
    return BoundaryChecker(verifier, full=full).check(state, after, "after test", contract, None)


def test_a_correct_rewrite_is_verified_at_its_boundary() -> None:
    before = chains()
    after = _copy(before)
    _relu_as_max(after, "a3")
    region = find_region(before, after)
    assert isinstance(region, Region)
    assert sorted(region.boundary.nodes) == [3] and region.boundary.inputs == ("a2", "zero_a3")
    assert region.boundary.outputs == ("a3",)
    out = _check(before, after)
    assert out.verdict.ok, out.verdict.reasons
    assert out.verified_by.value == "boundary" and out.region_nodes == 1
    assert [m.output for m in out.verdict.metrics] == ["a3"]


def test_a_change_far_from_the_rewrite_is_found_and_caught() -> None:
    """The pass rewrites a3 correctly and, elsewhere, changes a constant in place (same name)."""
    before = chains()
    after = _copy(before)
    _relu_as_max(after, "a3")
    _init(after, "s_b8").CopyFrom(numpy_helper.from_array(np.array([5.0], np.float32), "s_b8"))
    out = _check(before, after)
    assert out.verified_by.value == "boundary"
    assert not out.verdict.ok
    assert any(r.startswith("b8 ") for r in out.verdict.reasons), out.verdict.reasons


def test_a_break_downstream_in_the_same_chain_is_inside_the_convex_region() -> None:
    before = chains()
    after = _copy(before)
    _relu_as_max(after, "a1")
    _init(after, "s_a6").CopyFrom(numpy_helper.from_array(np.array([1.7], np.float32), "s_a6"))  # was 1.6
    region = find_region(before, after)
    assert isinstance(region, Region) and sorted(region.boundary.nodes) == [1, 2, 3, 4, 5, 6]
    out = _check(before, after)
    assert out.verified_by.value == "boundary" and not out.verdict.ok
    assert any(r.startswith("a6") for r in out.verdict.reasons), out.verdict.reasons


def test_a_changed_output_value_is_caught_and_a_correct_one_passes() -> None:
    before = chains()
    wrong = _copy(before)
    _node(wrong, "b9").op_type = "Sigmoid"
    out = _check(before, wrong)
    assert out.verified_by.value == "boundary" and not out.verdict.ok
    right = _copy(before)
    _relu_as_max(right, "b9")
    out = _check(before, right)
    assert out.verified_by.value == "boundary" and out.verdict.ok
    assert [m.output for m in out.verdict.metrics] == ["yB"]


def test_removing_dead_code_changes_no_node() -> None:
    before = chains()
    before.graph.node.append(helper.make_node("Neg", ["a4"], ["dead"], name="dead"))
    after = chains()
    out = _check(before, after)
    assert out.verdict.ok and out.verified_by.value == "boundary" and out.region_nodes == 0


def test_fallbacks_to_the_whole_model() -> None:
    before = chains()
    big = _copy(before)
    for k in range(0, N, 2):
        for side in "ab":
            _init(big, f"s_{side}{k}").CopyFrom(numpy_helper.from_array(np.array([1.0 + 0.1 * k], np.float32) * 1.0,
                                                                        f"s_{side}{k}"))
            _relu_as_max(big, f"{side}{k + 1}")
    assert isinstance(find_region(before, big), NoRegion)
    assert _check(before, big).verified_by.value == "whole"
    small = _copy(before)
    _relu_as_max(small, "a3")
    assert _check(before, small, Contract.APPROXIMATE).verified_by.value == "whole"
    assert _check(before, small, full=True).verified_by.value == "whole"
    renamed = _copy(before)
    renamed.graph.output[0].name = "yA2"
    _node(renamed, "a9").output[0] = "yA2"
    assert isinstance(find_region(before, renamed), NoRegion)
    newer = _copy(before)
    newer.opset_import[0].version = 14
    assert find_region(before, newer) == NoRegion("the opset changed")
    dangling = _copy(before)
    _node(dangling, "a5").input[0] = "nowhere"
    gone = find_region(before, dangling)
    assert isinstance(gone, NoRegion) and "not well formed" in gone.reason


def test_the_cache_serves_the_next_pass_without_a_reference_run() -> None:
    """Pass 1 rewrites a3, pass 2 rewrites it back: pass 2's boundary (a2 in, a3 out) is cached.

    On the reference route (synthesized inputs say nothing about real values, so a pass
    checked on them caches nothing)."""
    before = chains()
    mid = _copy(before)
    _relu_as_max(mid, "a3")
    verifier = Verifier()
    state = verifier.initial_state(before, defer=True)
    checker = BoundaryChecker(verifier, synthesize=False)
    first = checker.check(state, mid, "after 1", Contract.EXACT, None)
    assert first.verdict.ok
    SESSION_STATS.reset()
    second = checker.check(first.state, before, "after 2", Contract.EXACT, None)
    assert second.verdict.ok and second.verified_by.value == "boundary"
    assert SESSION_STATS.sessions == 1  # the region's own session; no run of the graph before
    # with synthesis on, a fully cached boundary still takes the cached values (one session, not two)
    checker = BoundaryChecker(verifier, synthesize=False)
    first = checker.check(verifier.initial_state(before, defer=True), mid, "after 1", Contract.EXACT, None)
    checker.synthesize = True
    SESSION_STATS.reset()
    second = checker.check(first.state, before, "after 2", Contract.EXACT, None)
    assert second.verdict.ok and second.inputs_from is not None and second.inputs_from.value == "reference"
    assert SESSION_STATS.sessions == 1


def test_the_pipeline_reports_how_each_pass_was_verified() -> None:
    from segc.pipeline import PassSpec, run_pipeline

    model = chains()
    _node(model, "a4").input[0] = "a3_copy"
    model.graph.node.append(helper.make_node("Identity", ["a3"], ["a3_copy"], name="copy"))
    each = run_pipeline(_copy(model), [PassSpec("cleanup")], verify="each")
    assert each.ok and each.records[0].changed
    record = each.records[0].to_dict()
    assert record["verified_by"] == "boundary" and record["region_nodes"] == 1  # a4, now reading a3
    assert record["boundary_inputs"] == "synthesized"
    full = run_pipeline(_copy(model), [PassSpec("cleanup")], verify="each-full")
    assert full.ok and full.records[0].to_dict()["verified_by"] == "whole"


def test_boundary_metrics_match_the_full_rule() -> None:
    from segc.boundary_verify import boundary_metrics
    from segc.metrics import compare_output

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 64, 8, 8)).astype(np.float32)
    cand = ref + np.float32(1e-3)
    fast, full = boundary_metrics("t", "f", ref, cand), compare_output("t", "f", ref, cand)
    assert fast.max_abs == full.max_abs and fast.ref_scale == full.ref_scale and fast.compared == full.compared
    nan = cand.copy()
    nan[0, 0, 0, 0] = np.nan
    assert boundary_metrics("t", "f", ref, nan).nonfinite_mismatch == 1  # NaN: the full rule counts it
    cut = boundary_metrics("t", "f", ref, cand[:, :32])
    assert cut.shape != cut.ref_shape


def test_distant_changes_are_checked_as_parts_while_the_values_between_are_unchanged() -> None:
    before = chains()
    exact = _copy(before)
    _relu_as_max(exact, "a1")
    _relu_as_max(exact, "a7")  # convex region: a1..a7; as parts: a1 and a7, bit-identical outputs
    region = find_region(before, exact)
    assert isinstance(region, Region) and region.parts is not None and sorted(region.parts.nodes) == [1, 7]
    out = _check(before, exact)
    assert out.verdict.ok and out.region_nodes == 2
    # a0 now differs in its last bits: a7's inputs after the pass are not the values before,
    # so the parts do not stand and the convex region a0..a7 is checked instead
    nudged = _copy(exact)
    _init(nudged, "s_a0").CopyFrom(numpy_helper.from_array(np.array([1.0000001], np.float32), "s_a0"))
    out = _check(before, nudged)
    assert out.verdict.ok and out.verified_by.value == "boundary" and out.region_nodes == 8


def test_boundary_metrics_of_a_scalar() -> None:
    from segc.boundary_verify import boundary_metrics

    m = boundary_metrics("s", "f", np.array(2.0, np.float32), np.array(2.5, np.float32))
    assert m.max_abs == 0.5 and m.ref_scale == 2.0 and m.compared == 1


def test_a_retyped_annotation_puts_its_producer_in_the_region() -> None:
    before = chains()
    before.graph.value_info.append(helper.make_tensor_value_info("a4", TensorProto.FLOAT, None))
    after = _copy(before)
    after.graph.value_info[0].type.tensor_type.elem_type = TensorProto.INT64
    region = find_region(before, after)
    assert isinstance(region, Region) and sorted(region.boundary.nodes) == [4]


def test_a_whole_check_keeps_one_session_alive_at_a_time() -> None:
    """Each session holds a run's worth of arena (GiBs on a large model): the whole check runs
    the graph before, closes it, then runs the graph after and closes it; outputs are kept."""
    from segc.verify import GraphState

    before = chains()
    after = _copy(before)
    _relu_as_max(after, "a3")
    verifier = Verifier()
    state = verifier.initial_state(before)
    assert state.session is not None
    opened: list[GraphState] = []
    real_open = GraphState.open

    def watching(self: GraphState) -> None:
        assert all(s.session is None for s in opened if s is not self), "two sessions alive at once"
        real_open(self)
        opened.append(self)

    GraphState.open = watching  # type: ignore[method-assign]
    try:
        outcome = BoundaryChecker(verifier, full=True).check(state, after, "after", Contract.EXACT, None)
    finally:
        GraphState.open = real_open  # type: ignore[method-assign]
    assert outcome.verdict.ok and outcome.verified_by.value == "whole"
    assert state.session is None and outcome.state.session is None
    assert all(v is not None for v in outcome.state.outputs.values()) and outcome.state.outputs


def test_the_pipeline_does_not_keep_the_input_state_under_verify_each() -> None:
    """Only --verify end compares with the input model at the end; under each/each-full its
    state (and session) must go once the next state is verified."""
    import gc

    from segc.pipeline import PassSpec, run_pipeline
    from segc.verify import GraphState

    live: list[int] = []

    class Count:
        needs_model = False

        def before_pass(self, record: object, model: object) -> None:
            pass

        def after_pass(self, record: object, model: object) -> None:
            gc.collect()
            live.append(sum(1 for o in gc.get_objects() if isinstance(o, GraphState) and o.session is not None))

    model = chains()
    _node(model, "a4").input[0] = "a3_copy"
    model.graph.node.append(helper.make_node("Identity", ["a3"], ["a3_copy"], name="copy"))
    result = run_pipeline(_copy(model), [PassSpec("cleanup")], verify="each-full", instruments=[Count()])
    assert result.ok and live == [0]


def test_boundary_metrics_see_one_ulp_and_equal_zeros() -> None:
    """The bit-equality shortcut must not hide a difference, nor call -0.0 and 0.0 different."""
    from segc.boundary_verify import boundary_metrics

    ref = np.linspace(-1, 1, 4096, dtype=np.float32).reshape(1, 4, 32, 32)
    cand = ref.copy()
    cand.flat[1000] = np.nextafter(cand.flat[1000], np.float32(2))
    assert boundary_metrics("t", "f", ref, cand).max_abs > 0
    assert boundary_metrics("t", "f", ref, ref.copy()).max_abs == 0
    zeros = np.zeros((3, 3), np.float32)
    assert boundary_metrics("t", "f", zeros, -zeros).max_abs == 0
    f16 = ref.astype(np.float16)
    bumped = f16.copy()
    bumped.flat[7] = np.nextafter(bumped.flat[7], np.float16(2))
    assert boundary_metrics("t", "f", f16, bumped).max_abs > 0


def test_a_bit_identical_boundary_output_is_cached_once() -> None:
    """The region's output equals the reference in every bit: the cache keeps the reference
    array, and the region's copy is dropped."""
    before = chains()
    after = _copy(before)
    _relu_as_max(after, "a3")
    verifier = Verifier()
    state = verifier.initial_state(before, defer=True)
    checker = BoundaryChecker(verifier, synthesize=False)  # (made-up inputs cache nothing)
    seen: dict[str, object] = {}
    real_carry = checker._carry

    def carry(*args: object, **kwargs: object) -> None:
        for label, values in checker._cache.values.items():
            seen[label] = values.get("a3")
        real_carry(*args, **kwargs)  # type: ignore[arg-type]

    checker._carry = carry  # type: ignore[method-assign]
    outcome = checker.check(state, after, "after", Contract.EXACT, None)
    assert outcome.verdict.ok and outcome.verified_by.value == "boundary"
    assert seen and all(checker._cache.values[label]["a3"] is ref for label, ref in seen.items())
