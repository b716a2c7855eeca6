"""How a ranged build copes with Resizes sized from other tensors: fold, broadcast or gears.

Ascend ATC wants constant Resize parameters. segc folds what it can prove (on the range's
``/M`` grid if it has one), rewrites 1x1 broadcasts, and otherwise builds static gears.
TensorRT tunes for the chosen optimum, else the middle of the range on its grid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from segc.recipe import get_recipe
from segc.passbase import PassContext, get_pass, load_builtin_passes
from segc.shapes import parse_shape_range
from segc.targets.ascend import RouteKind, choose_route, dim_gears, plan_gears
from segc.targets.base import get_target
from segc.targets.buildscript import parse_steps

load_builtin_passes()


def strided_resize(pooled: bool = False) -> onnx.ModelProto:
    """x -> Conv s2 -> Conv s2 -> c; y = x + Resize(c, sizes=Shape(x)), HRNet's fuse step.

    ``pooled``: c is GlobalAveragePool(x) instead (the ASPP/PSP branch: a 1x1 map)."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3, 3, 3], rng.standard_normal(81).astype(np.float32).tolist())
    if pooled:
        body = [helper.make_node("GlobalAveragePool", ["x"], ["c"], name="pool")]
    else:
        body = [helper.make_node("Conv", ["x", "w"], ["c1"], name="down1", pads=[1, 1, 1, 1], strides=[2, 2]),
                helper.make_node("Conv", ["c1", "w"], ["c"], name="down2", pads=[1, 1, 1, 1], strides=[2, 2])]
    nodes = body + [
        helper.make_node("Shape", ["x"], ["sz"], name="shape"),
        helper.make_node("Resize", ["c", "", "", "sz"], ["r"], name="fuse_up", mode="linear"),
        helper.make_node("Add", ["x", "r"], ["y"], name="add"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)


def _build(model: onnx.ModelProto, outdir: Path, opts) -> list[list[str]]:
    path = outdir / "m.ascend.onnx"
    onnx.save(model, path)
    get_target("ascend").emit(model, path, outdir, opts)
    return parse_steps((outdir / "build.sh").read_text())


def test_unprovable_sizes_take_gears_not_an_error(tmp_path: Path, options) -> None:
    model, opts = strided_resize(), options("x:1,3,64~256,64~256")
    assert get_target("ascend").check(model, opts) == []
    assert opts.target.shape_route.startswith("gears: Resize fuse_up")
    assert "multiples of 4 (the model's total stride)" in opts.target.shape_route
    assert "--input-shape x:1,3,64~256/4,64~256/4" in opts.target.shape_route
    (argv,) = _build(model, tmp_path, opts)
    assert "--input_format=NCHW" in argv and "--input_shape=x:1,3,-1,-1" in argv
    gears = next(a for a in argv if a.startswith("--dynamic_image_size=")).split("=", 1)[1].split(";")
    assert len(gears) == 16 and gears[0] == "64,64" and gears[-1] == "256,256"
    assert all(int(v) % 4 == 0 for g in gears for v in g.split(","))
    assert "gears" in (tmp_path / "build.sh").read_text()


def test_on_the_grid_the_fold_is_the_fix_and_then_a_ranged_build(tmp_path: Path, options) -> None:
    model, opts = strided_resize(), options("x:1,3,64~256/4,64~256/4")
    found = get_target("ascend").check(model, opts)
    assert [(v.node, v.fixed_by) for v in found] == [("fuse_up", "fold_resize_scales")]  # it can fold: it is named
    folded, res = get_pass("set_shape_range")().apply(
        model, PassContext(options={"ranges": ["x:1,3,64~256/4,64~256/4"]})
    )
    assert res.stats["resizes_folded"] == 1
    opts = options("x:1,3,64~256/4,64~256/4")
    assert get_target("ascend").check(folded, opts) == []
    assert choose_route(folded, opts).kind is RouteKind.RANGE
    (argv,) = _build(folded, tmp_path, opts)
    assert "--input_shape=x:1,3,64~256,64~256" in argv  # ATC has no /M syntax
    assert "dims 2, 3 of x must be multiples of 4" in (tmp_path / "build.sh").read_text()


def test_a_1x1_resize_names_resize_broadcast(options) -> None:
    found = get_target("ascend").check(strided_resize(pooled=True), options("x:1,3,64~256,64~256"))
    assert [(v.node, v.fixed_by) for v in found] == [("fuse_up", "resize_broadcast")]


def test_gear_flags_for_batch_and_for_mixed_dims() -> None:
    assert dim_gears(1, 8, 1, None, 4) == [1, 2, 4, 8]
    assert dim_gears(512, 2048, 32, 1024, 4) == [512, 800, 1024, 2048]  # ends, the optimum, a geometric step
    batch = plan_gears([parse_shape_range("x:1~8,3,64,64")], 32)
    assert batch is not None and batch.gear_flag == "--dynamic_batch_size=1,2,4,8"
    assert batch.input_shape == "--input_shape=x:-1,3,64,64" and batch.input_format == "NCHW"
    mixed = plan_gears([parse_shape_range("x:1~2,3,64~128/32,64")], 32)
    assert mixed is not None and mixed.input_format == "ND"
    assert mixed.gear_flag == "--dynamic_dims=1,64;1,96;1,128;2,64;2,96;2,128"
    assert plan_gears([parse_shape_range("x:1,3,64~70,64")], 32) is None  # one grid point: no gears


# -- TensorRT optimum -----------------------------------------------------------------------
def _trt(tmp_path: Path, conv_model, opts) -> list[str]:
    model = conv_model()
    path = tmp_path / "m.tensorrt.onnx"
    onnx.save(model, path)
    get_target("tensorrt").emit(model, path, tmp_path, opts)
    (argv,) = parse_steps((tmp_path / "build.sh").read_text())
    return argv


def test_trt_opt_is_the_middle_on_the_grid(tmp_path: Path, conv_model, options) -> None:
    argv = _trt(tmp_path, conv_model, options("x:1,3,64~256/32,64~320/32"))
    assert "--optShapes=x:1x3x160x192" in argv and "--minShapes=x:1x3x64x64" in argv
    assert "must be multiples of 32" in (tmp_path / "build.sh").read_text()


def test_trt_opt_keeps_a_chosen_one_and_takes_the_recipes(tmp_path: Path, conv_model, options) -> None:
    assert "--optShapes=x:1x3x64x96" in _trt(tmp_path, conv_model, options("x:1,3,64~256,64~256", opt=(1, 3, 64, 96)))
    model = conv_model(name="input")
    path = tmp_path / "db.tensorrt.onnx"
    onnx.save(model, path)
    opts = options("input:1,3,640~4096,640~4096", recipe=get_recipe("dbnet_r50"))
    get_target("tensorrt").emit(model, path, tmp_path, opts)
    (argv,) = parse_steps((tmp_path / "build.sh").read_text())
    assert "--optShapes=input:1x3x1280x1280" in argv


def test_without_a_range_the_violation_names_no_fix_that_cannot_apply(options) -> None:
    (v,) = get_target("ascend").check(strided_resize(), options())
    assert v.fixed_by is None and "segc builds ATC gears" in v.reason and "/4" in v.reason
    (b,) = get_target("ascend").check(strided_resize(pooled=True), options())
    assert b.fixed_by == "resize_broadcast"
