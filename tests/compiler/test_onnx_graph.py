"""segc.onnx_graph: one answer per graph fact, checked on small graphs built with onnx.helper."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper
from segc.errors import first_line
from segc.input_roles import Role, input_roles
from segc.onnx_graph import (
    ResizeSlots,
    constant_array,
    constant_shape,
    default_opset,
    graph_opset,
    is_absent,
    is_default_domain,
    real_input_names,
    real_inputs,
    resize_operands,
    resize_slots,
    unique_name,
)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[str],
           inits: list[onnx.TensorProto] | None = None, opsets: list[onnx.OperatorSetIdProto] | None = None,
           ) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, initializer=inits or [])
    opset_imports = opsets if opsets is not None else [helper.make_opsetid("", 13)]
    return helper.make_model(graph, opset_imports=opset_imports)


def _x(name: str = "x", dims: list[int] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims or [1, 3, 4, 4])


# opsets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("domain", ["", "ai.onnx"])
def test_default_opset_reads_either_spelling_of_the_default_domain(domain: str) -> None:
    opsets = [helper.make_opsetid("com.microsoft", 1), helper.make_opsetid(domain, 17)]
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_x()], ["y"], opsets=opsets)
    assert default_opset(m) == 17
    assert graph_opset(gs.import_onnx(m)) == 17


def test_default_opset_absent_is_none_not_a_number() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_x()], ["y"], opsets=[helper.make_opsetid("custom", 3)])
    assert default_opset(m) is None


def test_graph_opset_prefers_the_import_list_over_gs_opset_field() -> None:
    graph = gs.import_onnx(_model([helper.make_node("Relu", ["x"], ["y"])], [_x()], ["y"]))
    graph.opset = 9  # stale field: the import list is what export_onnx writes
    assert graph_opset(graph) == 13
    graph.import_domains = None
    assert graph_opset(graph) == 9


def test_is_default_domain() -> None:
    assert is_default_domain("") and is_default_domain("ai.onnx") and is_default_domain(None)
    assert not is_default_domain("com.microsoft")


# graph inputs --------------------------------------------------------------------------------


def test_real_inputs_leave_out_initializer_backed_inputs() -> None:
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Add", ["y", "z"], ["s"])],
               [_x(), helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 3, 1, 1]), _x("z")], ["s"], [w])
    assert real_input_names(m) == ["x", "z"]
    assert [vi.name for vi in real_inputs(m.graph)] == ["x", "z"]
    assert real_inputs(m)[0] is m.graph.input[0]


# constants -----------------------------------------------------------------------------------


def _constant(output: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], **attrs)


def _tensor(graph: gs.Graph, name: str) -> gs.Tensor:
    return graph.tensors()[name]


@pytest.mark.parametrize(("attrs", "expected", "dtype"), [
    ({"value": numpy_helper.from_array(np.array([1, 2], np.int64))}, [1, 2], np.int64),
    ({"value_ints": [4, 5, 6]}, [4, 5, 6], np.int64),
    ({"value_int": 7}, 7, np.int64),
    ({"value_floats": [0.5, 2.0]}, [0.5, 2.0], np.float32),
    ({"value_float": 1.5}, 1.5, np.float32),
])
def test_constant_array_reads_every_numeric_constant_spelling(attrs: dict[str, Any], expected: object,
                                                              dtype: type) -> None:
    m = _model([_constant("c", **attrs), helper.make_node("Identity", ["c"], ["y"])], [], ["y"])
    value = constant_array(_tensor(gs.import_onnx(m), "c"))
    assert value is not None and value.dtype == dtype and value.tolist() == expected


def test_constant_array_looks_through_identity_chains() -> None:
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    m = _model([helper.make_node("Identity", ["w"], ["i1"]), helper.make_node("Identity", ["i1"], ["i2"]),
                _constant("c", value_ints=[2, 3]), helper.make_node("Identity", ["c"], ["ci"]),
                helper.make_node("Add", ["i2", "x"], ["y"]), helper.make_node("Reshape", ["y", "ci"], ["r"])],
               [_x("x", [4])], ["r"], [w])
    graph = gs.import_onnx(m)
    chained = constant_array(_tensor(graph, "i2"))
    assert chained is not None and chained.tolist() == [0, 1, 2, 3]
    via_node = constant_array(_tensor(graph, "ci"))
    assert via_node is not None and via_node.tolist() == [2, 3]
    assert constant_shape(_tensor(graph, "i2")) == (4,) and constant_shape(_tensor(graph, "w")) == (4,)


def test_constant_array_is_none_for_computed_absent_and_string_tensors() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["y"], ["z"]),
                _constant("s", value_strings=["a"]), helper.make_node("Identity", ["s"], ["t"])],
               [_x()], ["z", "t"])
    graph = gs.import_onnx(m)
    for name in ("x", "y", "z", "s"):
        assert constant_array(_tensor(graph, name)) is None, name
        assert constant_shape(_tensor(graph, name)) is None, name
    assert constant_array(None) is None and constant_array(gs.Variable.empty()) is None


def test_constant_array_ignores_a_constant_op_of_another_domain() -> None:
    node = helper.make_node("Constant", [], ["c"], domain="vendor", value_ints=[1])
    m = _model([node, helper.make_node("Identity", ["c"], ["y"])], [], ["y"],
               opsets=[helper.make_opsetid("", 13), helper.make_opsetid("vendor", 1)])
    assert constant_array(_tensor(gs.import_onnx(m), "c")) is None


def test_is_absent() -> None:
    m = _model([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])],
               [_x(), helper.make_tensor_value_info("sizes", TensorProto.INT64, [4])], ["y"])
    node = gs.import_onnx(m).nodes[0]
    assert [is_absent(t) for t in node.inputs] == [False, True, True, False]
    assert is_absent(None) and not is_absent(gs.Constant("c", np.zeros(0, np.float32)))


# names ---------------------------------------------------------------------------------------


def test_unique_name_reserves_what_it_hands_out() -> None:
    taken = {"a", "a_1"}
    assert unique_name("b", taken) == "b"
    assert unique_name("a", taken) == "a_2"
    assert unique_name("a", taken) == "a_3"
    assert unique_name("b", taken) == "b_1"
    assert {"a_2", "a_3", "b", "b_1"} <= taken


# Resize operands -----------------------------------------------------------------------------


def test_resize_slots_per_op_version() -> None:
    assert resize_slots("Upsample", 7) == ResizeSlots(None, None, None, attr_scales=True)
    assert resize_slots("Upsample", 9) == ResizeSlots(None, 1, None)
    assert resize_slots("Resize", 10) == ResizeSlots(None, 1, None)
    assert resize_slots("Resize", 11) == ResizeSlots(1, 2, 3) == resize_slots("Resize", 19)
    with pytest.raises(ValueError, match="Relu"):
        resize_slots("Relu", 13)


def _resize_graph(inputs: list[str], opset: int, inits: list[onnx.TensorProto]) -> gs.Node:
    ins = [_x()] + [helper.make_tensor_value_info(n, TensorProto.INT64, [4]) for n in ("sizes_in",) if n in inputs]
    m = _model([helper.make_node("Resize", inputs, ["y"])], ins, ["y"], inits,
               opsets=[helper.make_opsetid("", opset)])
    return gs.import_onnx(m).nodes[0]


def test_resize_operands_opset_10_reads_scales_at_input_1() -> None:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = _resize_graph(["x", "scales"], 10, [scales])
    got = resize_operands(node, 10)
    assert got.scales is not None and got.scales.name == "scales" and got.sizes is None


def test_resize_operands_opset_13_empty_names_and_missing_trailing_inputs() -> None:
    node = _resize_graph(["x", "", "", "sizes_in"], 13, [])
    scales, sizes = resize_operands(node, 13)
    assert scales is None and sizes is not None and sizes.name == "sizes_in"
    scales_init = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
    only_scales = resize_operands(_resize_graph(["x", "", "s"], 13, [scales_init]), 13)
    assert only_scales.scales is not None and only_scales.scales.name == "s" and only_scales.sizes is None


def test_resize_operands_opset_11_empty_scales_constant_means_absent() -> None:
    empty = numpy_helper.from_array(np.zeros(0, np.float32), "no_scales")
    roi = numpy_helper.from_array(np.zeros(0, np.float32), "roi")
    node = _resize_graph(["x", "roi", "no_scales", "sizes_in"], 11, [empty, roi])
    scales, sizes = resize_operands(node, 11)
    assert scales is None and sizes is not None


def test_input_roles_follow_the_resize_version() -> None:
    """At opset 10 a Resize's input 1 is its scales (opset 11 moved them to 2, roi took 1)."""
    m = _model([helper.make_node("Resize", ["x", "s"], ["y"])],
               [_x(), helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])], ["y"],
               opsets=[helper.make_opsetid("", 10)])
    assert input_roles(m, ["s"])["s"].role is Role.RESIZE_SCALES
    m11 = _model([helper.make_node("Resize", ["x", "r", "s"], ["y"])],
                 [_x(), helper.make_tensor_value_info("r", TensorProto.FLOAT, [8]),
                  helper.make_tensor_value_info("s", TensorProto.FLOAT, [4])], ["y"],
                 opsets=[helper.make_opsetid("", 11)])
    roles = input_roles(m11, ["r", "s"])
    assert roles["r"].role is Role.RESIZE_ROI and roles["s"].role is Role.RESIZE_SCALES


# exception text ------------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "expected"), [
    (RuntimeError("  [ONNXRuntimeError] : 1 : FAIL  \nstack line\n"), "[ONNXRuntimeError] : 1 : FAIL"),
    (ValueError("\n\nsecond line first"), "second line first"),
    (KeyError(), "KeyError"),
    (RuntimeError("   \n  "), "RuntimeError"),
])
def test_first_line(exc: BaseException, expected: str) -> None:
    assert first_line(exc) == expected
