"""The graph view: order, reachability, convex regions and their boundary, bodies."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper
from segc.graph_view import GraphView


def _graph(nodes: list[onnx.NodeProto], outputs: tuple[str, ...] = ("y",)) -> onnx.GraphProto:
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                             [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2]) for o in outputs])


def _chain() -> onnx.GraphProto:
    """x -> A -> a -> B -> b -> C -> c -> D -> y ; a -> E -> e -> C (a side branch into C)."""
    return _graph([
        helper.make_node("Relu", ["x"], ["a"], name="A"),
        helper.make_node("Neg", ["a"], ["b"], name="B"),
        helper.make_node("Add", ["b", "e"], ["c"], name="C"),
        helper.make_node("Abs", ["c"], ["y"], name="D"),
        helper.make_node("Exp", ["a"], ["e"], name="E"),
    ])


def test_topological_order_is_stable_and_puts_producers_first() -> None:
    view = GraphView.from_onnx(_chain())
    assert view.topological() == [0, 1, 4, 2, 3]  # E (file position 4) must precede C
    assert view.producer("e") == 4 and view.producer("x") is None
    assert view.consumers("a") == [1, 4]


def test_reachability_excludes_the_sources() -> None:
    view = GraphView.from_onnx(_chain())
    assert view.downstream([1]) == {2, 3}
    assert view.upstream([2]) == {0, 1, 4}
    assert list(view.walk_upstream(2)) == [1, 4, 0]  # nearest layer first


def test_convex_region_takes_the_nodes_between_and_its_boundary() -> None:
    view = GraphView.from_onnx(_chain())
    region = view.convex({0, 2})  # A and C: B and E lie on paths between them
    assert region == {0, 1, 2, 4}
    b = view.boundary(region)
    assert b.inputs == ("x",) and b.outputs == ("c",)


def test_boundary_output_read_outside_and_graph_outputs() -> None:
    view = GraphView.from_onnx(_graph([
        helper.make_node("Relu", ["x"], ["a"], name="A"),
        helper.make_node("Neg", ["a"], ["y"], name="B"),
        helper.make_node("Abs", ["a"], ["z"], name="C"),
    ], outputs=("y", "z")))
    b = view.boundary({0, 1})
    assert b.inputs == ("x",)
    assert b.outputs == ("a", "y")  # a: read by C outside; y: a graph output
    assert view.boundary({0}, watched=["a"]).outputs == ("a",)


def test_if_body_reads_are_edges_of_the_if_node() -> None:
    then_g = helper.make_graph([helper.make_node("Neg", ["r"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Identity", ["r"], ["f"])], "else", [],
                               [helper.make_tensor_value_info("f", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="R"),
            helper.make_node("If", ["c"], ["y"], name="I", then_branch=then_g, else_branch=else_g),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    view = GraphView.from_onnx(graph)
    assert len(view) == 2  # the bodies' nodes are not nodes of the view
    assert view.has_edge(0, 1) and view.upstream([1]) == {0}
    assert view.boundary({1}).inputs == ("c", "r")  # r enters through the bodies
    gs_view = GraphView.from_gs(gs.import_onnx(helper.make_model(graph)))
    assert gs_view.has_edge(0, 1)


def test_value_edges_and_cycles() -> None:
    graph = gs.import_onnx(helper.make_model(_chain()))
    view = GraphView.from_gs(graph, value_inputs=lambda n: n.inputs[:1])  # only first inputs carry values
    assert view.predecessors(2, values_only=True) == [1] and view.predecessors(2) == [1, 4]
    assert view.consumers("e", values_only=True) == []
    cyclic = GraphView([["b"], ["a"], ["x"]], [["a"], ["b"], ["z"]])  # 0 <-> 1 (invalid), 2 apart
    assert not cyclic.is_acyclic()
    assert sorted(cyclic.topological()) == [0, 1, 2]


def _random_dag(seed: int, n: int = 60) -> GraphView:
    """``n`` nodes, each reading up to three earlier nodes' outputs (or ``x``), in shuffled file order."""
    import random

    rng = random.Random(seed)
    reads = [[f"t{j}" for j in rng.sample(range(i), min(i, rng.randint(0, 3)))] or ["x"] for i in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    return GraphView([reads[i] for i in order], [[f"t{i}"] for i in order])


def test_walks_agree_with_networkx_on_random_graphs() -> None:
    """The walks are written out (networkx cost each check 0.13 s to import): the same answers
    as networkx's stable sort, reachability and weak components, on random DAGs."""
    import networkx as nx

    for seed in range(20):
        view = _random_dag(seed)
        graph: nx.DiGraph[int] = nx.DiGraph()
        graph.add_nodes_from(range(len(view)))
        graph.add_edges_from((p, c) for p in range(len(view)) for c in view.successors(p))
        assert view.is_acyclic()
        assert view.topological() == list(nx.lexicographical_topological_sort(graph, key=int))
        assert view.downstream([3, 7]) == set().union(*(nx.descendants(graph, s) for s in (3, 7)))
        assert view.upstream([len(view) - 1]) == nx.ancestors(graph, len(view) - 1)
        some = set(range(0, len(view), 3))
        assert sorted(map(sorted, view.components(some))) == sorted(
            map(sorted, nx.weakly_connected_components(graph.subgraph(some))))
        walk = list(view.walk_upstream(len(view) - 1))
        assert len(walk) == len(set(walk)) and set(walk) == nx.ancestors(graph, len(view) - 1)
        hops = nx.single_source_shortest_path_length(graph.reverse(), len(view) - 1)
        assert [hops[n] for n in walk] == sorted(hops[n] for n in walk)  # nearest first
