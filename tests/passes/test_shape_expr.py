"""The shape analysis' handler table: complete, free of duplicates, and honest about handler bugs."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from segc.passes._shape_expr import ShapeAnalysis
from segc.passes._shape_table import HANDLERS, DuplicateHandler, HandlerTable

# Every op the analysis modelled when it dispatched ``_op_<Op>`` methods by name, plus the op
# families it handled by set membership (unary, broadcasting, pools, global pools, reductions).
OLD_METHOD_OPS = (
    "Constant", "Shape", "Size", "Identity", "Cast", "CastLike", "Floor", "Ceil", "Neg", "Abs", "Gather", "Slice",
    "Unsqueeze", "Squeeze", "Concat", "Reshape", "ReduceProd", "ConstantOfShape", "Range", "Conv", "DeformConv",
    "ConvTranspose", "ArgMax", "ArgMin", "Transpose", "Flatten", "MatMul", "Gemm", "Split", "Pad", "Expand", "Tile",
    "DepthToSpace", "SpaceToDepth", "Resize", "Upsample",
)
OLD_FAMILY_OPS = (
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Cos", "Cosh",
    "Dropout", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "IsInf",
    "IsNaN", "LeakyRelu", "Log", "LogSoftmax", "LpNormalization", "Mish", "Neg", "Not", "PRelu", "Reciprocal",
    "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Softmax", "Softplus", "Softsign", "Sqrt",
    "Tan", "Tanh", "ThresholdedRelu", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
    "GroupNormalization", "LRN", "MeanVarianceNormalization", "QuantizeLinear", "DequantizeLinear", "Trilu",
    "CumSum", "BitwiseNot",
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "LessOrEqual",
    "Greater", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
)


def _one_node_graph(op: str, attrs: dict[str, object] | None = None, n_inputs: int = 1) -> tuple[gs.Graph, gs.Variable]:
    x = gs.Variable("x", dtype=np.float32, shape=[1, 3, 8, 8])
    extra = [gs.Variable(f"in{i}", dtype=np.float32, shape=[1, 3, 8, 8]) for i in range(1, n_inputs)]
    y = gs.Variable("y", dtype=np.float32, shape=None)
    node = gs.Node(op=op, name=f"the_{op.lower()}", attrs=dict(attrs or {}), inputs=[x, *extra], outputs=[y])
    return gs.Graph(nodes=[node], inputs=[x, *extra], outputs=[y], opset=17), y


@pytest.mark.parametrize("op", sorted(set(OLD_METHOD_OPS) | set(OLD_FAMILY_OPS)))
def test_every_op_the_old_dispatcher_modelled_is_still_modelled(op: str) -> None:
    """A node of the op reaches a handler: its output is never reported as "not modelled"."""
    graph, y = _one_node_graph(op)
    analysis = ShapeAnalysis(graph).run()
    assert "is not modelled" not in analysis.why_unknown.get(y.name, ""), analysis.why_unknown


def test_an_unmodelled_op_says_so() -> None:
    graph, y = _one_node_graph("NonMaxSuppression")
    analysis = ShapeAnalysis(graph).run()
    assert analysis.why_unknown[y.name] == "NonMaxSuppression 'the_nonmaxsuppression' is not modelled"


def test_the_table_holds_exactly_the_ops_the_old_dispatcher_modelled() -> None:
    assert HANDLERS.ops() == set(OLD_METHOD_OPS) | set(OLD_FAMILY_OPS)


def test_a_second_handler_for_an_op_is_refused() -> None:
    table = HandlerTable()

    @table.register("Foo", "Bar")
    def first(sa: ShapeAnalysis, node: gs.Node) -> None:
        return None

    def second(sa: ShapeAnalysis, node: gs.Node) -> None:
        return None

    with pytest.raises(DuplicateHandler, match=r"'Bar'.*second.*would replace.*first"):
        table.register("Baz", "Bar")(second)
    assert table.ops() == {"Foo", "Bar"} and table.get("Bar") is first  # the refused call added nothing
    with pytest.raises(DuplicateHandler):
        HANDLERS.register("Relu")(second)
    with pytest.raises(DuplicateHandler, match="twice"):
        HandlerTable().register("Qux", "Qux")(second)


def test_a_handler_that_raises_names_the_exception_type_in_the_reason() -> None:
    table = HandlerTable()

    @table.register("Relu")
    def buggy(sa: ShapeAnalysis, node: gs.Node) -> None:
        raise KeyError("axes")

    graph, y = _one_node_graph("Relu")
    analysis = ShapeAnalysis(graph, handlers=table).run()
    assert analysis.why_unknown[y.name] == "Relu 'the_relu' could not be analysed: KeyError: 'axes'"
    assert analysis.shape(y) is None  # nothing claimed about the output


def test_a_malformed_node_is_best_effort_with_the_reason_kept() -> None:
    graph, y = _one_node_graph("Transpose", {"perm": [0, 1, 2, 7]})
    analysis = ShapeAnalysis(graph).run()
    assert analysis.why_unknown[y.name].startswith("Transpose 'the_transpose' could not be analysed: IndexError: ")


def test_a_handler_bug_outside_the_best_effort_errors_is_not_swallowed() -> None:
    table = HandlerTable()

    @table.register("Relu")
    def buggy(sa: ShapeAnalysis, node: gs.Node) -> None:
        raise AttributeError("no such helper")

    graph, _ = _one_node_graph("Relu")
    with pytest.raises(AttributeError):
        ShapeAnalysis(graph, handlers=table).run()


def test_a_vendor_op_with_a_familiar_name_is_not_modelled() -> None:
    graph, y = _one_node_graph("Relu")
    graph.nodes[0].domain = "com.vendor"
    analysis = ShapeAnalysis(graph).run()
    assert analysis.why_unknown[y.name] == "com.vendor::Relu 'the_relu' is not modelled"
