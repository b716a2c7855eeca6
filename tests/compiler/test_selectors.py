"""Selectors on a small hand-built graph whose structure exercises every part of the grammar.

    x -> Conv "stem" -> Relu (unnamed) r --+--> Conv "/stage4/branch1/Conv" -> b1
                                           +--> MaxPool "pool" -> p
    p  -> Resize "/stage4/fuse_layers/Resize" (scales) -> up
    p  -> Resize "/stage4/Resize_sized" (sizes = Shape(sc)) -> up2
    x  -> Conv "side_conv" -> sc -> Shape (unnamed)          (a shape side chain)
    b1 -> Split "split" -> s0, s1;  s1 -> Conv "aux/cls" -> output2
    [b1, up, up2] -> Concat "cat" -> Conv "head/cls" -> output1
"""

from __future__ import annotations

import random

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.errors import SegcError
from segc.selectors import as_selector_list, node_label, select_many, select_nodes, select_ordered, select_tensors


def _weight(name: str, cout: int, cin: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.full((cout, cin, 1, 1), 0.1, np.float32), name)


def _nodes() -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", "W1"], ["s"], name="stem"),
        helper.make_node("Relu", ["s"], ["r"]),  # unnamed on purpose
        helper.make_node("Conv", ["r", "W2"], ["b1"], name="/stage4/branch1/Conv"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["up"], name="/stage4/fuse_layers/Resize", mode="linear"),
        helper.make_node("Conv", ["x", "W3"], ["sc"], name="side_conv"),
        helper.make_node("Shape", ["sc"], ["shp"]),
        helper.make_node("Resize", ["p", "", "", "shp"], ["up2"], name="/stage4/Resize_sized", mode="linear"),
        helper.make_node("Split", ["b1"], ["s0", "s1"], name="split", axis=1, num_outputs=2),
        helper.make_node("Conv", ["s1", "W5"], ["output2"], name="aux/cls"),
        helper.make_node("Concat", ["b1", "up", "up2"], ["c"], name="cat", axis=1),
        helper.make_node("Conv", ["c", "W4"], ["output1"], name="head/cls"),
    ]


def _model(nodes: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes if nodes is not None else _nodes(),
        "sel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("output2", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        initializer=[
            _weight("W1", 4, 4), _weight("W2", 4, 4), _weight("W3", 4, 4), _weight("W4", 3, 12), _weight("W5", 3, 2),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.fixture()
def graph() -> gs.Graph:
    return gs.import_onnx(_model())


def names(items) -> list[str]:
    return [node_label(i) if isinstance(i, gs.Node) else i.name for i in items]


def test_model_is_valid_and_runs() -> None:
    from segc.ortrun import run_model

    onnx.checker.check_model(_model(), full_check=True)
    out = run_model(_model(), {"x": np.ones((1, 4, 8, 8), np.float32)})
    assert out["output1"].shape == (1, 3, 8, 8)


# ------------------------------------------------------------------ names
def test_exact_node_and_tensor_names(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "stem")) == ["stem"]
    assert names(select_tensors(graph, "stem")) == ["s"]  # a node stands for its first output
    assert names(select_nodes(graph, "output1")) == ["head/cls"]  # a tensor stands for its producer
    assert names(select_tensors(graph, "output1")) == ["output1"]
    assert names(select_tensors(graph, " r ")) == ["r"]  # surrounding spaces are ignored


def test_atc_output_index(graph: gs.Graph) -> None:
    assert names(select_tensors(graph, "head/cls:0")) == ["output1"]
    assert names(select_tensors(graph, "split:1")) == ["s1"]
    assert names(select_nodes(graph, "split:1")) == ["split"]
    with pytest.raises(SegcError, match="no output 2"):
        select_tensors(graph, "split:2")
    with pytest.raises(SegcError, match="is a tensor"):
        select_tensors(graph, "output1:0")


def test_glob_over_node_names_then_tensor_names(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "*/fuse_layers/*")) == ["/stage4/fuse_layers/Resize"]
    stage4 = ["/stage4/branch1/Conv", "/stage4/fuse_layers/Resize", "/stage4/Resize_sized"]
    assert names(select_nodes(graph, "/stage4/*")) == stage4
    # no node is called output*, so the pattern falls back to tensor names
    assert names(select_tensors(graph, "output?")) == ["output2", "output1"]
    assert names(select_nodes(graph, "output*")) == ["aux/cls", "head/cls"]


def test_regex(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "re:Resize$")) == ["/stage4/fuse_layers/Resize"]
    assert names(select_nodes(graph, "re:^/stage4/.*Resize")) == ["/stage4/fuse_layers/Resize", "/stage4/Resize_sized"]
    with pytest.raises(SegcError, match="bad regular expression"):
        select_nodes(graph, "re:(")


# ------------------------------------------------------------------ op types and positions
def test_op_type_and_positions(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "Relu")) == ["<Relu -> r>"]  # unnamed nodes are selectable
    assert names(select_tensors(graph, "Relu[0]")) == ["r"]
    assert names(select_nodes(graph, "Conv[0]")) == ["stem"]
    assert names(select_nodes(graph, "Conv[-1]")) == ["head/cls"]
    assert len(select_nodes(graph, "Conv[*]")) == 5
    assert names(select_nodes(graph, "Conv[1:3]")) == ["/stage4/branch1/Conv", "side_conv"]
    assert names(select_nodes(graph, "Conv[::2]")) == ["stem", "side_conv", "head/cls"]
    assert names(select_tensors(graph, "Split[0]:1")) == ["s1"]


@pytest.mark.parametrize(
    "selector, message",
    [
        ("Conv[9]", "out of range; the graph has 5 Conv"),
        ("Conv[x]", "bad position"),
        ("Conv[7:9]", "is empty"),
        ("Conv[1:2:3:4]", "bad slice"),
        ("Softmax[0]", "no Softmax node"),
    ],
)
def test_position_errors(graph: gs.Graph, selector: str, message: str) -> None:
    with pytest.raises(SegcError, match=message):
        select_nodes(graph, selector)


def test_positions_follow_topology_not_file_order() -> None:
    reference = names(select_nodes(gs.import_onnx(_model()), "Conv[*]"))
    rng = random.Random(0)
    for _ in range(5):
        shuffled = _nodes()
        rng.shuffle(shuffled)
        g = gs.import_onnx(_model(shuffled))
        got = names(select_nodes(g, "Conv[*]"))
        # topological: stem before branch1 before head/cls, branch1 before aux/cls
        branch = "/stage4/branch1/Conv"
        for a, b in [("stem", branch), (branch, "head/cls"), (branch, "aux/cls")]:
            assert got.index(a) < got.index(b)
        assert sorted(got) == sorted(reference)
        assert names(select_nodes(g, "Conv[0]"))[0] in ("stem", "side_conv")  # the two roots


# ------------------------------------------------------------------ relations
def test_direct_feeding(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "Resize>Concat")) == ["/stage4/fuse_layers/Resize", "/stage4/Resize_sized"]
    assert names(select_nodes(graph, "Resize > Concat")) == names(select_nodes(graph, "Resize>Concat"))
    assert names(select_nodes(graph, "Conv>Concat")) == ["/stage4/branch1/Conv"]
    assert names(select_nodes(graph, "MaxPool>Resize>Concat")) == ["pool"]
    assert names(select_nodes(graph, "Split:1>Conv")) == ["split"]
    assert names(select_tensors(graph, "Split:1>Conv")) == ["s1"]
    with pytest.raises(SegcError, match="feeds"):
        select_nodes(graph, "Split:0>Conv")  # output 0 of the split feeds nothing
    with pytest.raises(SegcError, match="no 'Resize' node feeds a 'Conv' node"):
        select_nodes(graph, "Resize>Conv")
    with pytest.raises(SegcError, match="op types present: .*Concat"):
        select_nodes(graph, "Resize>Softmax")
    with pytest.raises(SegcError, match="empty operand"):
        select_nodes(graph, "Resize>")


def test_before_names_the_head_classifier(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "Conv before output1")) == ["head/cls"]
    assert names(select_nodes(graph, "Conv before output2")) == ["aux/cls"]
    assert names(select_tensors(graph, "Conv before output2")) == ["output2"]
    # a node anchor starts at its inputs: the Conv feeding the classifier, not the classifier
    assert names(select_nodes(graph, "Conv before head/cls")) == ["/stage4/branch1/Conv"]
    assert names(select_nodes(graph, "Resize before Conv[-1]")) == [
        "/stage4/fuse_layers/Resize",
        "/stage4/Resize_sized",
    ]


def test_before_ignores_shape_side_chains(graph: gs.Graph) -> None:
    # Resize_sized takes its sizes from Shape(side_conv); only its data input is followed
    assert names(select_nodes(graph, "Conv before /stage4/Resize_sized")) == ["stem"]
    assert names(select_nodes(graph, "Conv before up2")) == ["stem"]


def test_after(graph: gs.Graph) -> None:
    assert names(select_nodes(graph, "Resize after stem")) == ["/stage4/fuse_layers/Resize", "/stage4/Resize_sized"]
    assert names(select_nodes(graph, "Conv after Relu")) == ["/stage4/branch1/Conv"]
    assert names(select_nodes(graph, "Conv after split:1")) == ["aux/cls"]
    with pytest.raises(SegcError, match="no 'Resize' node lies after"):
        select_nodes(graph, "Resize after side_conv")  # only reaches a Resize through its sizes


def test_relation_errors(graph: gs.Graph) -> None:
    with pytest.raises(SegcError, match="one 'A before T'"):
        select_nodes(graph, "Conv before output1 after stem")
    with pytest.raises(SegcError, match="no 'MaxPool' node lies before"):
        select_nodes(graph, "MaxPool before output2")


# ------------------------------------------------------------------ errors and many
def test_nothing_matched_lists_closest_names_and_ops(graph: gs.Graph) -> None:
    with pytest.raises(SegcError) as info:
        select_nodes(graph, "stme")
    msg = str(info.value)
    assert "matches nothing" in msg and "stem" in msg and "op types present: Concat, Conv" in msg
    with pytest.raises(SegcError, match="matches nothing"):
        select_tensors(graph, "Conv_1380:0")  # a legacy numbered name that this export lacks
    with pytest.raises(SegcError, match="closest names: .*cat"):
        select_nodes(graph, "Resize>cta")
    with pytest.raises(SegcError, match="empty selector"):
        select_nodes(graph, "  ")
    with pytest.raises(SegcError, match="graph input or constant"):
        select_nodes(graph, "x")


def test_select_many_dedupes_in_graph_order(graph: gs.Graph) -> None:
    got = select_many(graph, ["Resize[-1]", "*/fuse_layers/*", "Resize[*]", "stem"])
    assert names(got) == ["stem", "/stage4/fuse_layers/Resize", "/stage4/Resize_sized"]
    assert names(select_many(graph, "output1;output2;Conv before output1", kind="tensors")) == ["output2", "output1"]
    with pytest.raises(ValueError):
        select_many(graph, ["stem"], kind="edges")  # type: ignore[arg-type]
    with pytest.raises(SegcError):
        select_many(graph, ["stem", "nonexistent_node"])


def test_select_ordered_keeps_user_order(graph: gs.Graph) -> None:
    assert names(select_ordered(graph, ["output1", "output2", "head/cls:0"])) == ["output1", "output2"]
    assert names(select_ordered(graph, ["Conv[-1]", "stem"], kind="nodes")) == ["head/cls", "stem"]


def test_selectors_do_not_modify_the_graph(graph: gs.Graph) -> None:
    before = [n.name for n in graph.nodes]
    select_nodes(graph, "Conv before output1")
    select_nodes(graph, "Conv[-1]")
    assert [n.name for n in graph.nodes] == before


def test_as_selector_list() -> None:
    assert as_selector_list(None) == []
    assert as_selector_list(["a", " b ", ""]) == ["a", "b"]
    assert as_selector_list("Conv_1380:0;Conv_1453:0") == ["Conv_1380:0", "Conv_1453:0"]
    assert as_selector_list("Resize[2:5],Conv[-1], x") == ["Resize[2:5]", "Conv[-1]", "x"]
    assert as_selector_list("re:a{1,3};b") == ["re:a{1,3}", "b"]


def test_identity_and_cast_count_as_no_step() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="near"),
        helper.make_node("Identity", ["a"], ["a_id"]),
        helper.make_node("Cast", ["a_id"], ["a_c"], to=TensorProto.FLOAT),
        helper.make_node("Relu", ["x"], ["b"], name="far_input"),
        helper.make_node("Relu", ["b"], ["b2"], name="also_near"),
        helper.make_node("Add", ["a_c", "b2"], ["y"], name="add"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "z", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    g = gs.import_onnx(model)
    assert names(select_nodes(g, "Relu before add")) == ["near", "also_near"]
    assert names(select_nodes(g, "Add after near")) == ["add"]
