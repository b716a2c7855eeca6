"""expand_functions: ops a vendor lacks become their ONNX function bodies, verified in onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from segc.cli import main
from segc.passbase import PassContext
from segc.passes.expand_functions import ExpandFunctions, has_function
from segc.targets.base import BuildOptions, get_target
from segc.targets.legality import FUNCTION_FIX


def one_op(op: str, opset: int, dims=(1, 3, 8, 10), **attrs) -> onnx.ModelProto:
    g = h.make_graph(
        [
            h.make_node("Relu", ["x"], ["r"], name="pre"),
            h.make_node(op, ["r" if op != "Gelu" else "x"], ["y"], name="fn", **attrs),
        ],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, list(dims))],
        [h.make_tensor_value_info("y", T.FLOAT, list(dims))],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=9)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def expand(model: onnx.ModelProto, **options):
    return ExpandFunctions().apply(model, PassContext(options=options, target=options.pop("target", None)))


X = np.random.default_rng(3).normal(scale=3.0, size=(1, 3, 8, 10)).astype(np.float32)


@pytest.mark.parametrize("op,opset,attrs", [
    ("Gelu", 20, {}),
    ("Gelu", 20, {"approximate": "tanh"}),
    ("HardSigmoid", 18, {"alpha": 0.3, "beta": 0.4}),
    ("HardSigmoid", 11, {}),  # the body is written for opset 18; it fits an opset-11 graph once CastLike folds
    ("HardSwish", 18, {}),
    ("Mish", 18, {}),
    ("Celu", 12, {"alpha": 0.7}),
])
def test_expanded_graph_is_equivalent_in_onnxruntime(op: str, opset: int, attrs: dict) -> None:
    model = one_op(op, opset, **attrs)
    out, result = expand(model, ops=[op])
    assert result.changed and result.stats["by_op"] == {op: 1}
    onnx.checker.check_model(out, full_check=True)
    types = [n.op_type for n in out.graph.node]
    assert op not in types and "CastLike" not in types
    np.testing.assert_allclose(run(out, X), run(model, X), rtol=1e-5, atol=1e-6)


def test_input_model_is_not_modified() -> None:
    model = one_op("Gelu", 20)
    before = model.SerializeToString()
    expand(model, ops=["Gelu"])
    assert model.SerializeToString() == before


def test_nothing_to_do_and_idempotent() -> None:
    plain = one_op("Sigmoid", 18)
    out, result = expand(plain, target="ascend")
    assert not result.changed and out is plain
    once, first = expand(one_op("Gelu", 20), target="ascend")
    twice, second = expand(once, target="ascend")
    assert first.changed and not second.changed and twice is once


def test_default_ops_come_from_the_target_profile() -> None:
    """Ascend's list lacks Gelu: expanded; MagicMind's list is partial: an unlisted op is left alone."""
    model = one_op("Gelu", 20)
    assert expand(model, target="ascend")[1].changed
    assert not expand(model, target="magicmind")[1].changed
    assert not expand(model, target="tensorrt")[1].changed  # TensorRT parses Gelu itself


def test_a_body_that_does_not_fit_the_opset_is_left_with_the_reason() -> None:
    """LayerNormalization's body (opset 17) passes ReduceMean's axes as an attribute,
    which opset 18 moved to an input."""
    dims = (1, 4, 6)
    nodes = [h.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln", axis=-1)]
    inits = [
        onnx.numpy_helper.from_array(np.ones(6, np.float32), "s"),
        onnx.numpy_helper.from_array(np.zeros(6, np.float32), "b"),
    ]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, list(dims))],
        [h.make_tensor_value_info("y", T.FLOAT, list(dims))],
        inits,
    )
    fits = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9)
    out, result = expand(fits, ops=["LayerNormalization"])
    assert result.changed
    x = np.random.default_rng(0).normal(size=dims).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(fits, x), rtol=1e-5, atol=1e-5)
    newer = h.make_model(g, opset_imports=[h.make_opsetid("", 18)], ir_version=9)
    out, result = expand(newer, ops=["LayerNormalization"])
    assert not result.changed and "ReduceMean" in result.notes[0]


def test_unknown_op_is_a_usage_error() -> None:
    from segc.errors import SegcError

    with pytest.raises(SegcError, match="no function body for Conv"):
        expand(one_op("Gelu", 20), ops=["Conv"])


def test_legality_names_the_pass_for_function_ops() -> None:
    assert has_function("Gelu", 20) and not has_function("Conv", 20)
    found = get_target("ascend").check(one_op("Gelu", 20), BuildOptions())
    gelu = [v for v in found if v.op == "Gelu"]
    assert gelu and gelu[0].fixed_by == FUNCTION_FIX


def test_compile_for_ascend_adds_the_pass_and_verifies(tmp_path: Path, capsys) -> None:
    """A dynamo-style opset-20 graph with Gelu: expanded, converted to opset 18, verified, built."""
    src = tmp_path / "m.onnx"
    onnx.save(one_op("Gelu", 20), src)
    code = main(["compile", str(src), "--target", "ascend", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    added = [a["pass"] for a in report["legalisation"]["added"]]
    assert added == ["expand_functions", "convert_opset"]
    rec = next(p for p in report["passes"] if p["name"] == "expand_functions")
    assert rec["status"] == "ok" and rec["changed"]
    built = onnx.load(tmp_path / "o" / "m.ascend.onnx")
    assert "Gelu" not in {n.op_type for n in built.graph.node}
    assert [o.version for o in built.opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_seed_model_has_nothing_to_expand(seed_onnx) -> None:
    """DBNet (opset 10, standard ops only) for Ascend: the pass finds nothing and changes nothing."""
    model = onnx.load(seed_onnx("dbnet_r50", shape=(1, 3, 128, 128)))  # the seed tests' export, shared
    out, result = expand(model, target="ascend")
    assert not result.changed and out is model
