"""set_shape_range: dynamic input dims, baked sizes fixed or named, ranges in the metadata.

The tiny graphs are "static exports" written with onnx.helper: every size in them is the
traced 16x16 one. After the pass they are run at the range's min, opt, max and an odd size
in between, against a hand-written dynamic twin of the same function (same weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segc.errors import SegcError
from segc.ortrun import run_model
from segc.passbase import Contract, PassContext, get_pass
from segc.shapes import OPT_SHAPE_KEY, SHAPE_RANGE_KEY, ranges_from_metadata

SetShapeRange = get_pass("set_shape_range")
H = W = 16  # the traced size of the tiny graphs
C = 4


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: dict[str, list[object]],
           in_shape: list[object], opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)  # traced value_info, as exporters write it


def _weights() -> dict[str, onnx.TensorProto]:
    rng = np.random.default_rng(0)
    return {"w": _init("w", (rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32))}


def traced_model() -> onnx.ModelProto:
    """Attention-like pooling plus an upsampling branch, every size baked at 16x16."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
        n("Reshape", ["feat", "flat_shape"], ["flat"], name="flatten_hw"),           # [1, C, H*W]
        n("Softmax", ["flat"], ["attn"], name="softmax", axis=2),
        n("Transpose", ["flat"], ["flat_t"], name="transpose", perm=[0, 2, 1]),
        n("MatMul", ["attn", "flat_t"], ["ctx"], name="context"),                   # [1, C, C]
        n("Resize", ["feat", "", "", "up_sizes"], ["up"], name="upsample", mode="nearest"),
        n("Slice", ["up", "starts", "ends", "axes"], ["crop"], name="crop"),           # [:, :, 1:2H, :]
        n("AveragePool", ["feat"], ["pooled"], name="global_pool", kernel_shape=[H, W]),
        n("Expand", ["feat", "expand_shape"], ["feat_e"], name="expand"),
        n("Add", ["feat_e", "pooled"], ["y"], name="add"),
    ]
    inits = [
        *_weights().values(),
        _init("flat_shape", np.array([1, C, H * W], np.int64)),
        _init("up_sizes", np.array([1, C, 2 * H, 2 * W], np.int64)),
        _init("starts", np.array([1], np.int64)),
        _init("ends", np.array([2 * H], np.int64)),
        _init("axes", np.array([2], np.int64)),
        _init("expand_shape", np.array([1, C, H, W], np.int64)),
    ]
    outs = {"ctx": [1, C, C], "crop": [1, C, 2 * H - 1, 2 * W], "y": [1, C, H, W]}
    return _model(nodes, inits, outs, [1, 3, H, W])


def dynamic_twin() -> onnx.ModelProto:
    """The same function written for any size (what a dynamic export would say)."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feat"], pads=[1, 1, 1, 1]),
        n("Reshape", ["feat", "flat_shape"], ["flat"]),
        n("Softmax", ["flat"], ["attn"], axis=2),
        n("Transpose", ["flat"], ["flat_t"], perm=[0, 2, 1]),
        n("MatMul", ["attn", "flat_t"], ["ctx"]),
        n("Resize", ["feat", "", "scales"], ["up"], mode="nearest"),
        n("Slice", ["up", "starts", "ends", "axes"], ["crop"]),
        n("GlobalAveragePool", ["feat"], ["pooled"]),
        n("Add", ["feat", "pooled"], ["y"]),
    ]
    inits = [
        *_weights().values(),
        _init("flat_shape", np.array([0, 0, -1], np.int64)),
        _init("scales", np.array([1, 1, 2, 2], np.float32)),
        _init("starts", np.array([1], np.int64)),
        _init("ends", np.array([2**62], np.int64)),
        _init("axes", np.array([2], np.int64)),
    ]
    return _model(nodes, inits, {"ctx": [1, C, C], "crop": [None] * 4, "y": [None] * 4}, [1, 3, "h", "w"])


RANGE = "x:1,3,8~40,8~40"
OPT = "x:1,3,16,24"


def apply(
    model: onnx.ModelProto, ranges: object = (RANGE,), opt: object = (OPT,)
) -> tuple[onnx.ModelProto, object, PassContext]:
    ctx = PassContext(options={"ranges": list(ranges) if not isinstance(ranges, str) else ranges, "opt": opt})
    out, result = SetShapeRange().apply(model, ctx)
    return out, result, ctx


def feed(h: int, w: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(h * 100 + w).standard_normal((1, 3, h, w)).astype(np.float32)}


# ----------------------------------------------------------------------------------------------


def test_registered_as_exact_with_options() -> None:
    assert SetShapeRange.contract is Contract.EXACT
    assert set(SetShapeRange.options) == {"ranges", "opt"}


def test_traced_sizes_fixed_and_verified_over_range() -> None:
    before = traced_model()
    after, result, ctx = apply(before)
    assert result.changed
    s = result.stats
    assert (s["reshapes_fixed"], s["resizes_fixed"], s["slices_fixed"], s["pools_fixed"], s["expands_fixed"]) == (
        1,
        1,
        1,
        1,
        1,
    )
    assert s["inputs_changed"] == 1 and s["dynamic_dims"] == 2
    assert any("flatten_hw" in note and "[1, 4, -1]" in note for note in result.notes)
    dims = [d.dim_param or d.dim_value for d in after.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "x_height", "x_width"]
    y_dims = [d.dim_param or d.dim_value for d in after.graph.output[2].type.tensor_type.shape.dim]
    assert y_dims == [1, C, "x_height", "x_width"]
    assert not any(vi.type.tensor_type.shape.dim for vi in after.graph.value_info)  # traced shapes gone
    # identical at the traced size
    a, b = run_model(before, feed(H, W)), run_model(after, feed(H, W))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # min, opt, an odd size in between, max: same as the dynamic twin
    twin = dynamic_twin()
    for h, w in [(8, 8), (16, 24), (21, 35), (40, 40)]:
        got, want = run_model(after, feed(h, w)), run_model(twin, feed(h, w))
        assert got["y"].shape == (1, C, h, w) and got["crop"].shape == (1, C, 2 * h - 1, 2 * w)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_metadata_records_range_and_opt() -> None:
    _, _, ctx = apply(traced_model())
    assert ctx.metadata[SHAPE_RANGE_KEY] == RANGE
    assert ctx.metadata[OPT_SHAPE_KEY] == OPT
    (r,) = ranges_from_metadata(ctx.metadata)
    assert r.min == (1, 3, 8, 8) and r.max == (1, 3, 40, 40) and r.opt == (1, 3, 16, 24)


def test_default_opt_is_minimum_and_string_option_accepted() -> None:
    _, _, ctx = apply(traced_model(), ranges=f"{RANGE}", opt=None)
    # a default optimum is not stored as a choice: each target picks its own (TensorRT a middle)
    assert ctx.metadata[OPT_SHAPE_KEY] == ""
    (r,) = ranges_from_metadata(ctx.metadata)
    assert r.opt == (1, 3, 8, 8) and not r.opt_given


def test_idempotent() -> None:
    once, first, _ = apply(traced_model())
    twice, second, ctx = apply(once)
    assert first.changed and second.changed is False and twice is once
    assert ctx.metadata[SHAPE_RANGE_KEY] == RANGE


def test_existing_dim_params_are_reused() -> None:
    twin = dynamic_twin()
    out, result, _ = apply(twin)
    assert result.changed is False and out is twin  # h, w already symbolic, nothing baked


def test_no_ranges_is_a_no_op() -> None:
    model = traced_model()
    out, result = SetShapeRange().apply(model, PassContext())
    assert result.changed is False and out is model and result.notes


def test_static_range_equal_to_model_changes_nothing() -> None:
    model = traced_model()
    out, result, ctx = apply(model, ranges=["x:1,3,16,16"], opt=None)
    assert result.changed is False and out is model
    assert ctx.metadata[SHAPE_RANGE_KEY] == "x:1,3,16,16"


def test_unknown_input_lists_real_inputs() -> None:
    with pytest.raises(SegcError, match=r"no input 'image'.*x \[1x3x16x16\]"):
        apply(traced_model(), ranges=["image:1,3,8~40,8~40"], opt=None)


def test_rank_mismatch_is_an_error() -> None:
    with pytest.raises(SegcError, match=r"3 dims but input 'x' has rank 4"):
        apply(traced_model(), ranges=["x:3,8~40,8~40"], opt=None)


@pytest.mark.parametrize(
    ("ranges", "opt", "pattern"),
    [
        ([RANGE], ["image:1,3,16,16"], "no --input-shape range"),
        ([RANGE], ["x:1,3,64,64"], "outside the range"),
        (["x:1,3,40~8,8"], None, "min <= max"),
        ([RANGE, RANGE], None, "more than one range"),
    ],
)
def test_bad_options(ranges: list[str], opt: list[str] | None, pattern: str) -> None:
    with pytest.raises(SegcError, match=pattern):
        apply(traced_model(), ranges=ranges, opt=opt)


def _split_back_model() -> onnx.ModelProto:
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
        n("Reshape", ["feat", "flat_shape"], ["flat"], name="flatten_hw"),
        n("Softmax", ["flat"], ["attn"], name="softmax", axis=2),
        n("Reshape", ["attn", "back_shape"], ["y"], name="unflatten_hw"),
    ]
    inits = [*_weights().values(), _init("flat_shape", np.array([1, C, H * W], np.int64)),
             _init("back_shape", np.array([1, C, H, W], np.int64))]
    return _model(nodes, inits, {"y": [1, C, H, W]}, [1, 3, H, W])


def test_reshape_splitting_a_varying_size_names_the_node() -> None:
    with pytest.raises(SegcError, match=r"Reshape 'unflatten_hw' splits the varying size"):
        apply(_split_back_model())


def test_reshape_needing_two_inferred_dims_names_the_node() -> None:
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
             n("Reshape", ["feat", "shape"], ["y"], name="merge_ch")]
    inits = [*_weights().values(), _init("shape", np.array([1, C * H, W], np.int64))]
    with pytest.raises(SegcError, match=r"Reshape 'merge_ch' .* can infer only one"):
        apply(_model(nodes, inits, {"y": [1, C * H, W]}, [1, 3, H, W]))


def test_traced_constant_meeting_varying_tensor_names_both() -> None:
    """ConstantOfShape at the traced size added to the features: no constant can fix that."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
        n("ConstantOfShape", ["bias_shape"], ["bias"], name="make_bias",
          value=numpy_helper.from_array(np.array([0.5], np.float32))),
        n("Add", ["feat", "bias"], ["y"], name="add_bias"),
    ]
    inits = [*_weights().values(), _init("bias_shape", np.array([1, C, H, W], np.int64))]
    with pytest.raises(SegcError, match=r"Add 'add_bias' needs equal sizes.*ConstantOfShape 'make_bias'"):
        apply(_model(nodes, inits, {"y": [1, C, H, W]}, [1, 3, H, W]))


def _half_folded_model() -> onnx.ModelProto:
    """What a static export leaves when its shape arithmetic is only partly folded:
    Reshape to Concat(Shape(x)[0], C, 256) and scales = [1, 1] ++ [32, 32] / Shape(x)[2:4]."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["feat"], name="conv", pads=[1, 1, 1, 1]),
        n("Shape", ["feat"], ["shape"], name="shape"),
        n("Slice", ["shape", "zero", "one", "zero"], ["batch"], name="batch"),
        n("Concat", ["batch", "c_hw"], ["flat_shape"], name="flat_shape", axis=0),
        n("Reshape", ["feat", "flat_shape"], ["flat"], name="flatten_hw"),
        n("ReduceMax", ["flat"], ["peak"], name="peak", axes=[2], keepdims=1),
        n("Slice", ["shape", "two", "four", "zero"], ["hw"], name="hw"),
        n("Cast", ["hw"], ["hw_f"], name="hw_float", to=TensorProto.FLOAT),
        n("Div", ["traced_out", "hw_f"], ["ratio"], name="ratio"),
        n("Concat", ["ones", "ratio"], ["scales"], name="scales", axis=0),
        n("Resize", ["feat", "", "scales"], ["up"], name="upsample", mode="nearest"),
    ]
    inits = [
        *_weights().values(),
        _init("zero", np.array([0], np.int64)), _init("one", np.array([1], np.int64)),
        _init("two", np.array([2], np.int64)), _init("four", np.array([4], np.int64)),
        _init("c_hw", np.array([C, H * W], np.int64)),
        _init("traced_out", np.array([2 * H, 2 * W], np.float32)),
        _init("ones", np.array([1, 1], np.float32)),
    ]
    return _model(nodes, inits, {"peak": [1, C, 1], "up": [1, C, 2 * H, 2 * W]}, [1, 3, H, W])


def test_half_folded_shape_arithmetic_is_rewritten() -> None:
    before = _half_folded_model()
    # on the static graph fold_resize_scales may fold it (H has one value); set_shape_range
    # must get it right for the whole range by itself, from the unfolded graph
    folded, fold_result = get_pass("fold_resize_scales")().apply(before, PassContext())
    assert fold_result.stats["folded"] == 1
    after, result, _ = apply(before)
    assert result.stats["reshapes_fixed"] == 1 and result.stats["resizes_fixed"] == 1
    assert any("flatten_hw" in note and "[1, 4, -1]" in note for note in result.notes)
    assert any("upsample" in note and "'2', '2'" in note for note in result.notes)
    a, b = run_model(before, feed(H, W)), run_model(after, feed(H, W))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    probe = onnx.ModelProto.FromString(after.SerializeToString())
    probe.graph.output.append(helper.make_tensor_value_info("feat", TensorProto.FLOAT, [None] * 4))
    for h, w in [(8, 8), (21, 35), (40, 40)]:
        out = run_model(probe, feed(h, w))
        feat = out["feat"]
        np.testing.assert_array_equal(out["up"], feat.repeat(2, axis=2).repeat(2, axis=3))
        np.testing.assert_array_equal(out["peak"], feat.reshape(1, C, -1).max(axis=2, keepdims=True))


def test_failure_leaves_the_input_model_untouched() -> None:
    model = _split_back_model()
    snapshot = model.SerializeToString()
    with pytest.raises(SegcError):
        apply(model)
    assert model.SerializeToString() == snapshot


def test_batch_range_on_static_batch() -> None:
    """Batch 1~8 on a traced batch of 1: the flatten keeps N through 0."""
    model = traced_model()
    out, result, _ = apply(model, ranges=["x:1~8,3,16,16"], opt=["x:4,3,16,16"])
    assert result.changed and result.stats["dynamic_dims"] == 1
    reshaped = {n.name: n for n in out.graph.node}["flatten_hw"]
    inits = {t.name: numpy_helper.to_array(t).tolist() for t in out.graph.initializer}
    assert inits[reshaped.input[1]] == [0, C, H * W]
    x = np.random.default_rng(0).standard_normal((4, 3, H, W)).astype(np.float32)
    got = run_model(out, {"x": x})
    single = [run_model(model, {"x": x[i : i + 1]}) for i in range(4)]
    for k in got:
        np.testing.assert_allclose(got[k], np.concatenate([s[k] for s in single]), rtol=1e-5, atol=1e-6)


def test_analysis_shapes_match_onnxruntime() -> None:
    """The symbolic shapes the passes reason with evaluate to the shapes onnxruntime produces."""
    import onnx_graphsurgeon as gs

    from segc.passes._shape_expr import ShapeAnalysis

    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        n("MaxPool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Pad", ["p1", "pads"], ["pd"]),
        n("Split", ["pd", "split"], ["s1", "s2"], axis=1),
        n("Concat", ["s2", "s1"], ["cat"], axis=1),
        n("ConvTranspose", ["cat", "wt"], ["up"], strides=[2, 2]),
        n("Transpose", ["up"], ["tr"], perm=[0, 2, 3, 1]),
        n("Flatten", ["tr"], ["fl"], axis=3),
        n("MatMul", ["fl", "mm"], ["mmo"]),
        n("ReduceMean", ["mmo"], ["rm"], axes=[1], keepdims=0),
        n("DepthToSpace", ["cat"], ["d2s"], blocksize=2),
        n("Shape", ["d2s"], ["sh"]),
        n("Gather", ["sh", "idx"], ["g"], axis=0),
        n("Range", ["zero_s", "g", "one_s"], ["rg"]),
        n("Slice", ["d2s", "st", "en", "ax", "stp"], ["sl"]),
        n("ArgMax", ["sl"], ["am"], axis=1, keepdims=0),
        n("GlobalAveragePool", ["c1"], ["gp"]),
        n("Expand", ["gp", "ex"], ["exp"]),
    ]
    rng = np.random.default_rng(0)
    inits = [
        _init("w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _init("pads", np.array([0, 0, 1, 2, 0, 0, 0, 1], np.int64)),
        _init("split", np.array([1, 3], np.int64)),
        _init("wt", rng.standard_normal((4, 2, 3, 3)).astype(np.float32)),
        _init("mm", rng.standard_normal((2, 5)).astype(np.float32)),
        _init("idx", np.array(2, np.int64)),
        _init("zero_s", np.array(0, np.int64)),
        _init("one_s", np.array(1, np.int64)),
        _init("st", np.array([1, 0], np.int64)),
        _init("en", np.array([-1, 2**62], np.int64)),
        _init("ax", np.array([2, 3], np.int64)),
        _init("stp", np.array([1, 2], np.int64)),
        _init("ex", np.array([1, 4, 3, 1], np.int64)),
    ]
    outs = ["c1", "p1", "pd", "cat", "up", "fl", "mmo", "rm", "d2s", "rg", "sl", "am", "exp"]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [
            helper.make_tensor_value_info(o, TensorProto.INT64 if o in ("rg", "am") else TensorProto.FLOAT, None)
            for o in outs
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    analysis = ShapeAnalysis(gs.import_onnx(model)).run()
    for h, w in [(9, 14), (32, 21), (5, 5)]:
        got = run_model(model, feed(h, w))
        env = {"h": h, "w": w, "x.0": 1, "x.1": 3}  # static dims are symbols too (any size)
        for name in outs:
            dims = analysis.shapes[name]
            assert dims is not None and not any(
                s.endswith(tuple(f"#{i}" for i in range(8))) for d in dims for s in d.symbols()
            ), name
            assert tuple(int(d.evaluate(env)) for d in dims) == got[name].shape, (name, h, w, [str(d) for d in dims])

# ----------------------------------------------------------------------------------------------
# seed model


@pytest.mark.slow
def test_dbnet_r50_static_export_gets_range(seed_onnx: Callable[..., Path]) -> None:
    fold = get_pass("fold_resize_scales")
    static = onnx.load(str(seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=False)))
    assert all(d.HasField("dim_value") for d in static.graph.input[0].type.tensor_type.shape.dim)
    folded, _ = fold().apply(static, PassContext())
    ctx = PassContext(options={"ranges": ["input:1,3,128~256,128~256"], "opt": ["input:1,3,192,192"]})
    ranged, result = SetShapeRange().apply(folded, ctx)
    assert result.changed and result.stats["dynamic_dims"] == 2
    assert ctx.metadata[SHAPE_RANGE_KEY] == "input:1,3,128~256,128~256"
    assert ctx.metadata[OPT_SHAPE_KEY] == "input:1,3,192,192"
    # traced size: the same numbers as the static export
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 3, 128, 160)).astype(np.float32)
    np.testing.assert_array_equal(run_model(static, {"input": x})["output"], run_model(ranged, {"input": x})["output"])
    # other sizes (multiples of 32, the model's own constraint): the dynamic export, same seed
    dynamic = onnx.load(str(seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=True)))
    for h, w in [(128, 128), (192, 224), (256, 256)]:
        x = rng.standard_normal((1, 3, h, w)).astype(np.float32)
        got, want = run_model(ranged, {"input": x})["output"], run_model(dynamic, {"input": x})["output"]
        assert got.shape == (1, 1, h, w)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # a second run finds nothing to do; a range DBNet cannot follow is refused
    assert SetShapeRange().apply(ranged, PassContext(options=dict(ctx.options)))[1].changed is False
    with pytest.raises(SegcError, match="does not follow.*the model itself cannot run there"):
        SetShapeRange().apply(folded, PassContext(options={"ranges": ["input:1,3,100~256,128~256"]}))


@pytest.mark.slow
def test_dbnet_r50_dynamic_export_keeps_its_names(seed_onnx: Callable[..., Path]) -> None:
    dynamic = onnx.load(str(seed_onnx("dbnet_r50", shape=(1, 3, 128, 160), dynamic=True)))
    folded, _ = get_pass("fold_resize_scales")().apply(dynamic, PassContext())
    ctx = PassContext(options={"ranges": ["input:1,3,640~4096,640~4096"], "opt": ["input:1,3,1280,1280"]})
    out, result = SetShapeRange().apply(folded, ctx)
    assert result.changed is False and out is folded
    assert ctx.metadata[SHAPE_RANGE_KEY] == "input:1,3,640~4096,640~4096"


def test_suspects_are_the_nearest_upstream_nodes_with_a_literal_shape() -> None:
    """The hint for a conflict names where a traced size may live: nearest first, at most two."""
    import onnx_graphsurgeon as gs
    from segc.passes.set_shape_range import _suspects

    nodes = [
        helper.make_node("Reshape", ["x", "far_shape"], ["r0"], name="far"),
        helper.make_node("Relu", ["r0"], ["a"], name="relu"),
        helper.make_node("Reshape", ["a", "near_shape"], ["r1"], name="near"),
        helper.make_node("Neg", ["r1"], ["b"], name="neg"),
        helper.make_node("Add", ["b", "r0"], ["y"], name="add"),
    ]
    shapes = [_init("far_shape", np.array([1, -1], np.int64)), _init("near_shape", np.array([1, -1], np.int64))]
    graph = gs.import_onnx(_model(nodes, shapes, {"y": [1, 48]}, [1, 3, 4, 4]))
    add = next(n for n in graph.nodes if n.name == "add")
    assert [n.name for n in _suspects(graph, add)] == ["far", "near"]  # far feeds add directly: one step
    neg = next(n for n in graph.nodes if n.name == "neg")
    assert [n.name for n in _suspects(graph, neg)] == ["near", "far"]
    assert _suspects(graph, neg, limit=1) == [next(n for n in graph.nodes if n.name == "near")]
