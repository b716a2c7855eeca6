"""fix_input_shapes: symbolic input dims become the static build's numbers, exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from segc.errors import SegcError
from tests.graphs import symbolic_chain
from segc.ortrun import run_model
from segc.passbase import PassContext
from segc.passes.fix_input_shapes import FixInputShapes, parse_fixed_shape
from segc.passes.simplify import Simplify


def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def fix(model: onnx.ModelProto, *shapes: str):
    return FixInputShapes().apply(model, PassContext(options={"shapes": list(shapes)}))


def test_fixes_symbolic_dims_and_infers_outputs() -> None:
    model = symbolic_chain()
    out, result = fix(model, "x:1,3,20,28")
    assert result.changed and result.stats["fixed"] == ["x[2] h->20", "x[3] w->28"]
    assert dims(out.graph.input[0]) == [1, 3, 20, 28]
    assert dims(out.graph.output[0]) == [1, 3, 40, 56]
    assert dims(model.graph.input[0]) == [1, 3, "h", "w"], "the input model is never modified"


def test_exact_in_onnxruntime_at_the_fixed_shape() -> None:
    model = symbolic_chain()
    out, _ = fix(model, "x:1,3,20,28")
    x = np.random.default_rng(0).standard_normal((1, 3, 20, 28)).astype(np.float32)
    np.testing.assert_array_equal(run_model(out, {"x": x})["y"], run_model(model, {"x": x})["y"])


def test_lets_simplify_fold_the_shape_chain() -> None:
    """Without the fix simplify must discard its result (it froze h, w); with it the chain folds."""
    model = symbolic_chain()
    kept, before = Simplify().apply(model, PassContext())
    assert any(n.op_type == "Shape" for n in kept.graph.node)
    fixed, _ = fix(model, "x:1,3,20,28")
    folded, after = Simplify().apply(fixed, PassContext())
    assert after.changed and [n.op_type for n in folded.graph.node] == ["Resize"]


def test_nothing_to_do_and_idempotent() -> None:
    model = symbolic_chain()
    out, _ = fix(model, "x:1,3,20,28")
    again, second = fix(out, "x:1,3,20,28")
    assert not second.changed and again is out
    keep, kept = fix(model, "x:-1,-1,-1,-1")
    assert not kept.changed and keep is model


def test_minus_one_keeps_a_dim() -> None:
    out, result = fix(symbolic_chain(), "x:-1,-1,20,-1")
    assert dims(out.graph.input[0])[:3] == [1, 3, 20] and result.stats["fixed"] == ["x[2] h->20"]
    assert not out.graph.input[0].type.tensor_type.shape.dim[3].HasField("dim_value")


@pytest.mark.parametrize("shape, fragment", [
    ("x:2,3,20,28", "dim 0 is 1 in the graph"),
    ("y:1,3,20,28", "not an input"),
    ("x:1,3,20", "has 4 dims"),
    ("x:1,3,0,4", "positive"),
    ("x1,3", "malformed"),
])
def test_bad_shapes_are_errors(shape: str, fragment: str) -> None:
    with pytest.raises(SegcError, match=fragment):
        fix(symbolic_chain(), shape)


def test_needs_an_option() -> None:
    with pytest.raises(SegcError, match="needs option shapes"):
        FixInputShapes().apply(symbolic_chain(), PassContext())


def test_parse() -> None:
    assert parse_fixed_shape("a:b:1,-1") == ("a:b", (1, -1))
