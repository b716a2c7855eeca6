"""resize_broadcast: Resize of a 1x1 map -> Expand, exact in onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.ortrun import run_model
from segc.passbase import PassContext, get_pass, load_builtin_passes

sys.path.insert(0, str(Path(__file__).parent))  # --import-mode=importlib adds no test folders
from resize_heads import TinyPSP, export  # noqa: E402

load_builtin_passes()


def pooled_branch(mode: str = "linear", ctm: str = "half_pixel", kernel: int | None = None) -> onnx.ModelProto:
    """x -> GlobalAveragePool -> Resize(sizes = [N, C] ++ Shape(x)[2:]) -> Concat(x, .)

    ``kernel`` swaps the global pool for a 2x2 AveragePool (then the input is not 1x1)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    pool = (helper.make_node("GlobalAveragePool", ["x"], ["g"]) if kernel is None
            else helper.make_node("AveragePool", ["x"], ["g"], kernel_shape=[kernel, kernel], strides=[kernel, kernel]))
    nodes = [
        pool,
        helper.make_node("Shape", ["g"], ["gs"]),
        helper.make_node("Slice", ["gs", "s0", "s2"], ["nc"]),
        helper.make_node("Shape", ["x"], ["xs"]),
        helper.make_node("Slice", ["xs", "s2", "s4"], ["hw"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node(
            "Resize", ["g", "", "", "sizes"], ["r"], mode=mode, coordinate_transformation_mode=ctm, name="up"
        ),
        helper.make_node("Concat", ["x", "r"], ["y"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s2", 2), ("s4", 4))]
    graph = helper.make_graph(nodes, "psp", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _apply(model: onnx.ModelProto):
    return get_pass("resize_broadcast")().apply(model, PassContext())


def _same(a: onnx.ModelProto, b: onnx.ModelProto, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    ra, rb = run_model(a, {"x": x}), run_model(b, {"x": x})
    for k in ra:
        assert ra[k].shape == rb[k].shape
        np.testing.assert_allclose(ra[k], rb[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_rewrites_to_expand_and_matches_at_two_shapes(mode: str) -> None:
    model = pooled_branch(mode)
    out, res = _apply(model)
    assert res.changed and res.stats["rewritten"] == 1
    ops = [n.op_type for n in out.graph.node]
    assert "Resize" not in ops and "Expand" in ops
    for shape in ((1, 4, 8, 8), (1, 4, 7, 13)):  # an even and an odd size
        _same(model, out, shape)


def test_nothing_to_do_when_the_input_is_not_1x1() -> None:
    model = pooled_branch(kernel=2)
    out, res = _apply(model)
    assert not res.changed and out is model and res.stats == {"resizes": 1, "rewritten": 0}


def test_crop_and_resize_is_not_a_broadcast() -> None:
    model = pooled_branch(ctm="tf_crop_and_resize")
    _, res = _apply(model)
    assert not res.changed


def test_idempotent() -> None:
    once, first = _apply(pooled_branch())
    twice, second = _apply(once)
    assert first.changed and not second.changed and twice is once


def test_constant_scales_become_a_constant_shape() -> None:
    model = pooled_branch()
    g = model.graph
    resize = next(n for n in g.node if n.op_type == "Resize")
    del resize.input[:]
    resize.input.extend(["g", "", "sc"])
    g.initializer.append(numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "sc"))
    del g.node[-1]
    g.node.append(helper.make_node("Identity", ["r"], ["y"]))
    out, res = _apply(model)
    assert res.changed
    expand = next(n for n in out.graph.node if n.op_type == "Expand")
    shape = next(t for t in out.graph.initializer if t.name == expand.input[1])
    assert numpy_helper.to_array(shape).tolist() == [1, 1, 4, 4]
    _same(model, out, (1, 4, 5, 9))


def test_torch_psp_branch(tmp_path: Path) -> None:
    model = onnx.load(export(TinyPSP(), tmp_path / "psp.onnx", (1, 3, 64, 96)))
    out, res = _apply(model)
    assert res.stats["rewritten"] == 1
    assert not any(n.op_type == "Resize" for n in out.graph.node)
    for shape in ((1, 3, 64, 96), (1, 3, 50, 78)):
        _same(model, out, shape)
