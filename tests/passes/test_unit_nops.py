"""The linear-time unit-operand and duplicate-initializer rewrites (segc.passes._unit_nops)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes._onnxsim_core import SKIPPED_OPTIMIZERS
from segc.passes._unit_nops import eliminate_unit_nops
from segc.passes.simplify import Simplify

F = TensorProto.FLOAT


def model_of(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x_shape: list[Any],
             outputs: list[onnx.ValueInfoProto] | None = None,
             value_info: list[onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                          outputs or [helper.make_tensor_value_info("y", F, None)], inits,
                          value_info=value_info or [])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def const(name: str, value: Any, dtype: Any = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def same_function(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...], feed: str = "x") -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ra, rb = run_model(a, {feed: x}), run_model(b, {feed: x})
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k].shape == rb[k].shape and ra[k].dtype == rb[k].dtype
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-6, atol=1e-6)


def rewritten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Any]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stats = eliminate_unit_nops(out.graph)
    return out, stats


@pytest.mark.parametrize(("op", "value", "index"), [
    ("Add", 0.0, 0), ("Add", 0.0, 1), ("Mul", 1.0, 0), ("Mul", 1.0, 1),
    ("Sub", 0.0, 1), ("Div", 1.0, 1), ("Pow", 1.0, 1),
])
def test_each_unit_rule_removes_the_node(op: str, value: float, index: int) -> None:
    inputs = ["x", "u"] if index == 1 else ["u", "x"]
    model = model_of([helper.make_node(op, inputs, ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                     [const("u", [[value]])], [1, 4, 3, 5])
    out, stats = rewritten(model)
    assert ops(out) == ["Relu"] and stats.unit_nodes == 1
    assert list(out.graph.node[0].input) == ["x"]
    assert not out.graph.initializer  # the unit constant is read by nothing and goes
    same_function(model, out, (1, 4, 3, 5))


@pytest.mark.parametrize(("op", "value"), [("Sub", 0.0), ("Div", 1.0), ("Pow", 1.0)])
def test_constant_first_is_no_unit_for_sub_div_pow(op: str, value: float) -> None:
    model = model_of([helper.make_node(op, ["u", "x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                     [const("u", value)], [1, 4])
    out, stats = rewritten(model)
    assert ops(out) == [op, "Relu"] and stats.unit_nodes == 0


def test_and_or_units_on_bool() -> None:
    b = TensorProto.BOOL
    g = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["c"], to=b), helper.make_node("And", ["c", "t"], ["a"]),
         helper.make_node("Or", ["f", "a"], ["o"]), helper.make_node("Cast", ["o"], ["y"], to=F)],
        "g", [helper.make_tensor_value_info("x", F, [2, 3])], [helper.make_tensor_value_info("y", F, [2, 3])],
        [const("t", [True, True, True], np.bool_), const("f", False, np.bool_)],
        value_info=[helper.make_tensor_value_info("c", b, [2, 3]), helper.make_tensor_value_info("a", b, [2, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out, stats = rewritten(model)
    assert ops(out) == ["Cast", "Cast"] and stats.unit_nodes == 2
    same_function(model, out, (2, 3))


def test_not_all_units_stays() -> None:
    model = model_of([helper.make_node("Mul", ["x", "u"], ["y"])], [const("u", [1.0, 2.0])], [1, 2])
    assert ops(rewritten(model)[0]) == ["Mul"]


def test_broadcast_that_would_change_the_shape_is_kept() -> None:
    """Add(x[4], zeros[3,4]) is [3,4], not x: removing it would change the output's shape."""
    model = model_of([helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
                     [const("z", np.zeros((3, 4)))], [4])
    out, stats = rewritten(model)
    assert ops(out) == ["Add", "Relu"] and stats.unit_nodes == 0
    same_function(model, out, (4,))


def test_broadcast_against_a_symbolic_or_unknown_dim_is_kept() -> None:
    """zeros[4] against x[N, W]: W may be 1, and then the output is [N, 4]."""
    sym = model_of([helper.make_node("Add", ["x", "z"], ["y"])], [const("z", np.zeros(4))], ["N", "W"])
    assert ops(rewritten(sym)[0]) == ["Add"]
    unknown = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["y"])],
                       [const("z", np.zeros(1))], [2, 4])  # no value_info for r: rank unknown
    assert ops(rewritten(unknown)[0]) == ["Relu", "Add"]
    scalar = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["y"])],
                      [const("z", 0.0)], [2, 4])  # a scalar never changes the shape
    assert ops(rewritten(scalar)[0]) == ["Relu"]


def test_a_graph_output_keeps_its_name() -> None:
    """Relu -> Add(0) -> y: the Relu now writes y; y's readers and the graph's output are the same."""
    model = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["y"]),
                      helper.make_node("Neg", ["r"], ["n"])], [const("z", 0.0)], [2, 3],
                     outputs=[helper.make_tensor_value_info("y", F, [2, 3]),
                              helper.make_tensor_value_info("n", F, [2, 3])],
                     value_info=[helper.make_tensor_value_info("r", F, [2, 3])])
    out, stats = rewritten(model)
    assert stats.unit_nodes == 1 and ops(out) == ["Relu", "Neg"]
    assert [o.name for o in out.graph.output] == ["y", "n"]
    assert list(out.graph.node[0].output) == ["y"] and list(out.graph.node[1].input) == ["y"]
    assert "r" not in {vi.name for vi in out.graph.value_info}
    same_function(model, out, (2, 3))


def test_graph_input_to_graph_output_is_kept() -> None:
    """y = x + 0 with x a graph input: neither name may change, so the Add stays."""
    model = model_of([helper.make_node("Add", ["x", "z"], ["y"])], [const("z", 0.0)], [2, 3],
                     outputs=[helper.make_tensor_value_info("y", F, [2, 3])])
    out, stats = rewritten(model)
    assert ops(out) == ["Add"] and stats.unit_nodes == 0


def test_chained_units_all_go() -> None:
    model = model_of([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "z"], ["a"]),
                      helper.make_node("Mul", ["o", "a"], ["m"]), helper.make_node("Div", ["m", "o"], ["y"])],
                     [const("z", 0.0), const("o", 1.0)], [2, 3],
                     outputs=[helper.make_tensor_value_info("y", F, [2, 3])],
                     value_info=[helper.make_tensor_value_info(n, F, [2, 3]) for n in ("r", "a", "m")])
    out, stats = rewritten(model)
    assert ops(out) == ["Relu"] and stats.unit_nodes == 3 and list(out.graph.node[0].output) == ["y"]
    same_function(model, out, (2, 3))


def test_concat_drops_empty_constants_and_a_single_input_concat() -> None:
    model = model_of([helper.make_node("Relu", ["x"], ["r"]),
                      helper.make_node("Concat", ["r", "e", "r"], ["c"], axis=1),
                      helper.make_node("Concat", ["e", "c", "e"], ["d"], axis=1),
                      helper.make_node("Relu", ["d"], ["y"])],
                     [const("e", np.zeros((1, 0)))], [1, 3])
    out, stats = rewritten(model)
    assert ops(out) == ["Relu", "Concat", "Relu"] and stats.empty_concat_inputs == 3 and stats.unit_nodes == 1
    assert list(out.graph.node[1].input) == ["r", "r"] and list(out.graph.node[2].input) == ["c"]
    same_function(model, out, (1, 3))


def test_concat_keeps_a_constant_empty_off_its_axis() -> None:
    """[0,3] ++ [0,5] on axis 1 is [0,8]: the first input is empty but not along the axis."""
    model = model_of([helper.make_node("Concat", ["e", "x"], ["y"], axis=1)], [const("e", np.zeros((0, 3)))], [0, 5])
    assert ops(rewritten(model)[0]) == ["Concat"] and len(rewritten(model)[0].graph.node[0].input) == 2


def test_duplicate_initializers_merge_by_value() -> None:
    a, b, c = const("a", [1.0, 2.0]), const("b", [1.0, 2.0]), const("c", [1.0, 3.0])
    listed = helper.make_tensor("d", F, [2], [1.0, 2.0])  # same values in float_data, not raw_data
    negzero, zero = const("nz", [-0.0, 0.0]), const("pz", [0.0, 0.0])
    nodes = [helper.make_node("Mul", ["x", n], [f"o{n}"]) for n in ("a", "b", "c", "d", "nz", "pz")]
    nodes.append(helper.make_node("Sum", [f"o{n}" for n in ("a", "b", "c", "d", "nz", "pz")], ["y"]))
    model = model_of(nodes, [a, b, c, listed, negzero, zero], [2])
    out, stats = rewritten(model)
    assert stats.duplicate_initializers == 2
    assert [t.name for t in out.graph.initializer] == ["a", "c", "nz", "pz"]  # -0.0 is not 0.0 (Div would differ)
    assert [n.input[1] for n in out.graph.node[:6]] == ["a", "a", "c", "a", "nz", "pz"]
    same_function(model, out, (2,))


def test_duplicates_among_weights_kept_on_disk_merge(tmp_path: Path) -> None:
    """Weights left in the input file (segc.lazy_load) merge with each other and with equal
    weights held in memory; equal first bytes alone never merge two weights."""
    from segc.modelio import disk_tensor, load_model_and_files

    rng = np.random.default_rng(7)
    w = rng.standard_normal(8192).astype(np.float32)
    late = w.copy()
    late[-1] += 1  # the same first bytes, another weight
    names = ("w1", "w2", "w3", "late", "other")
    values = (w, w, w, late, rng.standard_normal(8192).astype(np.float32))
    nodes = [helper.make_node("Mul", ["x", n], [f"o{n}"]) for n in names]
    nodes.append(helper.make_node("Sum", [f"o{n}" for n in names], ["y"]))
    path = tmp_path / "d.onnx"
    onnx.save(model_of(nodes, [const(n, v) for n, v in zip(names, values, strict=True)], [8192]), str(path))
    model, _ = load_model_and_files(path, lazy=True)
    assert all(disk_tensor(t) is not None for t in model.graph.initializer)
    inline = numpy_helper.from_array(w, "w3")  # a weight onnx-simplifier returned with its values
    model.graph.initializer[2].CopyFrom(inline)
    out, stats = rewritten(model)
    assert stats.duplicate_initializers == 2
    assert [t.name for t in out.graph.initializer] == ["w1", "late", "other"]
    same_function(onnx.load(str(path)), out, (8192,))


def test_duplicate_initializer_that_is_a_graph_input_stays() -> None:
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("b", F, [2])], [helper.make_tensor_value_info("y", F, [2])],
                          [const("a", [1.0, 2.0]), const("b", [1.0, 2.0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    out, stats = rewritten(model)
    assert stats.duplicate_initializers == 0 and len(out.graph.initializer) == 2


def test_nothing_to_do_leaves_the_graph_byte_identical_and_is_idempotent() -> None:
    model = model_of([helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Mul", ["a", "w"], ["y"])],
                     [const("w", [2.0, 3.0])], [2])
    out, stats = rewritten(model)
    assert (stats.unit_nodes, stats.duplicate_initializers, stats.empty_concat_inputs) == (0, 0, 0)
    assert out.SerializeToString() == model.SerializeToString()
    busy = model_of([helper.make_node("Add", ["x", "z"], ["a"]), helper.make_node("Mul", ["a", "w"], ["y"])],
                    [const("z", 0.0), const("w", [2.0, 3.0]), const("w2", [2.0, 3.0])], [2])
    once, first = rewritten(busy)
    twice, second = rewritten(once)
    assert first.unit_nodes == 1 and (second.unit_nodes, second.duplicate_initializers) == (0, 0)
    assert twice.SerializeToString() == once.SerializeToString()


def test_a_name_a_subgraph_reads_is_never_renamed() -> None:
    then = helper.make_graph([helper.make_node("Relu", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", F, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", F, [2])])
    model = model_of([helper.make_node("Add", ["x", "z"], ["a"]),
                      helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                     [const("z", np.zeros(2)), const("cond", True, np.bool_)], [2],
                     outputs=[helper.make_tensor_value_info("y", F, [2])])
    out, stats = rewritten(model)
    assert stats.unit_nodes == 0 and ops(out) == ["Add", "If"]


def test_onnxsim_no_longer_runs_them_and_simplify_still_rewrites() -> None:
    """Skipped in onnx-simplifier (quadratic there), done by segc's simplify: nothing is lost."""
    assert {"eliminate_nop_with_unit", "eliminate_duplicate_initializer"} <= set(SKIPPED_OPTIMIZERS)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    model = model_of([helper.make_node("Conv", ["x", "w1"], ["c1"]), helper.make_node("Relu", ["c1"], ["r1"]),
                      helper.make_node("Conv", ["r1", "w2"], ["c2"]), helper.make_node("Relu", ["c2"], ["r2"]),
                      helper.make_node("Mul", ["one", "r2"], ["m"]), helper.make_node("Sigmoid", ["m"], ["s"]),
                      helper.make_node("Add", ["s", "zero"], ["y"])],
                     [const("w1", w), const("w2", w), const("one", np.ones((4, 1, 1))), const("zero", 0.0)],
                     ["N", 4, "H", "W"], outputs=[helper.make_tensor_value_info("y", F, ["N", 4, "H", "W"])])
    out, result = Simplify().apply(model, PassContext())
    assert result.changed and ops(out) == ["Conv", "Relu", "Conv", "Relu", "Sigmoid"]
    assert result.stats["unit_nodes_removed"] == 2 and result.stats["duplicate_initializers"] == 1
    assert len(out.graph.initializer) == 1 and [o.name for o in out.graph.output] == ["y"]
    same_function(model, out, (2, 4, 5, 7))


@pytest.mark.slow
def test_seed_model_compiles_with_the_same_nodes_as_onnxsim_alone(seed_onnx: Callable[..., Path]) -> None:
    """On a seed export, segc's simplify ends with no more nodes than onnx-simplifier with all its passes."""
    from segc.passes import _onnxsim_core as core

    model = onnx.load(str(seed_onnx("dbnet_r50", shape=(1, 3, 64, 64), dynamic=True)))
    out, result = Simplify().apply(model, PassContext())
    full = onnx.load_from_string(core.core().simplify(core.executor(), model.SerializeToString(), ["fuse_attention"],
                                                      True, True, 1 << 30, None, None, True, False, False,
                                                      None, None, None))
    assert result.changed and len(out.graph.node) <= len(full.graph.node)
    assert len(out.graph.initializer) <= len(full.graph.initializer)
    same_function(model, out, (1, 3, 64, 96), feed="input")
