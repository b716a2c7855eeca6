"""Tests for rewrite_deform_conv and the reference lowerings of the vendor deformable convs.

Tiny graphs are built here with onnx.helper: one DeformConv fed the DBNet way (Conv ->
Slice -> offsets, Conv -> Slice -> Sigmoid -> mask), or fed from graph inputs (no Conv to
fold into). The offset conv gets random weights so that any channel-layout mistake (dx/dy
swapped, mask misplaced, wrong group) changes the output by a lot, while a correct rewrite
matches to float noise (the permuted forms bit for bit). The seed test runs the full
DBNet-DCN (13 deformable convs) from the zoo through every form.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from segc.errors import SegcError
from segc.lowering import lower_for_reference, lowerable_ops
from segc.ortrun import make_session, run_model, run_session
from segc.passbase import Contract, PassContext, get_pass
from segc.passes.rewrite_deform_conv import RewriteDeformConv

FORMS = ("onnx", "ascend", "mmcv", "decomposed")
VENDOR_OPS = {"DeformableConv2D", "MMCVModulatedDeformConv2d"}


# --------------------------------------------------------------------------------------------
# tiny models
# --------------------------------------------------------------------------------------------


def out_size(size: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def dcn_model(
    *,
    c_in: int = 4,
    c_out: int = 6,
    kernel: tuple[int, int] = (3, 3),
    stride: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (1, 1, 1, 1),
    dilation: tuple[int, int] = (1, 1),
    group: int = 1,
    offset_group: int = 1,
    bias: bool = True,
    producer: str = "conv",
    mask: bool = True,
    dynamic: bool = False,
    size: tuple[int, int] = (9, 11),
    opset: int = 19,
    seed: int = 0,
) -> onnx.ModelProto:
    """x -> [offset Conv -> Slice / Slice -> Sigmoid] -> DeformConv -> y.

    ``producer="inputs"`` makes offset and mask graph inputs instead (no Conv to fold into).
    """
    rng = np.random.default_rng(seed)
    kh, kw = kernel
    taps = kh * kw
    g = offset_group
    h, w = size
    ho = out_size(h, kh, stride[0], pads[0], pads[2], dilation[0])
    wo = out_size(w, kw, stride[1], pads[1], pads[3], dilation[1])
    spatial = ["N", c_in, "H", "W"] if dynamic else [1, c_in, h, w]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, spatial)]
    inits = [
        numpy_helper.from_array((rng.standard_normal((c_out, c_in // group, kh, kw)) * 0.3).astype(np.float32), "dcn_w")
    ]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c_out).astype(np.float32), "dcn_b"))
    nodes = []
    if producer == "conv":
        channels = (3 if mask else 2) * g * taps
        inits += [
            numpy_helper.from_array((rng.standard_normal((channels, c_in, kh, kw)) * 0.5).astype(np.float32), "off_w"),
            numpy_helper.from_array((rng.standard_normal(channels) * 0.5).astype(np.float32), "off_b"),
            numpy_helper.from_array(np.array([0], np.int64), "s0"),
            numpy_helper.from_array(np.array([2 * g * taps], np.int64), "e0"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([2**62], np.int64), "end"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                ["x", "off_w", "off_b"],
                ["off_all"],
                name="offset_conv",
                kernel_shape=list(kernel),
                strides=list(stride),
                pads=list(pads),
                dilations=list(dilation),
            )
        )
        nodes.append(helper.make_node("Slice", ["off_all", "s0", "e0", "axis1"], ["offset"], name="slice_offset"))
        if mask:
            nodes.append(
                helper.make_node("Slice", ["off_all", "e0", "end", "axis1"], ["mask_logits"], name="slice_mask")
            )
            nodes.append(helper.make_node("Sigmoid", ["mask_logits"], ["mask"], name="mask_sigmoid"))
    else:
        dims = ["N", 2 * g * taps, "Ho", "Wo"] if dynamic else [1, 2 * g * taps, ho, wo]
        inputs.append(helper.make_tensor_value_info("offset", TensorProto.FLOAT, dims))
        if mask:
            inputs.append(
                helper.make_tensor_value_info("mask", TensorProto.FLOAT, [dims[0], g * taps, dims[2], dims[3]])
            )
    dcn_inputs = ["x", "dcn_w", "offset", "dcn_b" if bias else "", "mask" if mask else ""]
    while not dcn_inputs[-1]:
        dcn_inputs.pop()
    nodes.append(
        helper.make_node(
            "DeformConv",
            dcn_inputs,
            ["y"],
            name="dcn",
            kernel_shape=list(kernel),
            strides=list(stride),
            pads=list(pads),
            dilations=list(dilation),
            group=group,
            offset_group=g,
        )
    )
    y_dims = ["N", c_out, "Ho", "Wo"] if dynamic else [1, c_out, ho, wo]
    graph = helper.make_graph(
        nodes, "dcn_test", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)], inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def feeds_for(model: onnx.ModelProto, size: tuple[int, int], seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs; offsets of a few pixels so samples cross pixel and image borders."""
    rng = np.random.default_rng(seed)
    node = next(n for n in model.graph.node if n.op_type == "DeformConv")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kh, kw = attrs["kernel_shape"]
    g = attrs.get("offset_group", 1)
    pads, strides, dil = attrs["pads"], attrs["strides"], attrs["dilations"]
    ho = out_size(size[0], kh, strides[0], pads[0], pads[2], dil[0])
    wo = out_size(size[1], kw, strides[1], pads[1], pads[3], dil[1])
    c_in = next(i for i in model.graph.input if i.name == "x").type.tensor_type.shape.dim[1].dim_value
    feeds = {"x": rng.standard_normal((1, c_in, *size)).astype(np.float32)}
    names = {i.name for i in model.graph.input}
    if "offset" in names:
        feeds["offset"] = (rng.standard_normal((1, 2 * g * kh * kw, ho, wo)) * 2).astype(np.float32)
    if "mask" in names:
        feeds["mask"] = (1 / (1 + np.exp(-rng.standard_normal((1, g * kh * kw, ho, wo))))).astype(np.float32)
    return feeds


def rewrite(model: onnx.ModelProto, form: str, **options: Any):
    return RewriteDeformConv().apply(model, PassContext(options={"form": form, **options}))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def node_of(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def attrs_of(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, (list, tuple)):
            value = list(value)
        out[a.name] = value
    return out


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def assert_same_outputs(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5
) -> float:
    """Both run in onnxruntime (vendor ops lowered); returns the max abs difference."""
    ref = run_model(reference, feeds)["y"]
    got = run_model(candidate, feeds)["y"]
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max())
    assert err <= 1e-6 + rtol * float(np.abs(ref).max()), f"max error {err} (max |ref| {np.abs(ref).max()})"
    return err


# --------------------------------------------------------------------------------------------
# registry, contract, options
# --------------------------------------------------------------------------------------------


def test_registered_with_lowerings_and_option_dependent_contract() -> None:
    assert get_pass("rewrite_deform_conv") is RewriteDeformConv
    assert VENDOR_OPS <= lowerable_ops()
    assert RewriteDeformConv.contract_for({"form": "ascend"}) is Contract.TARGET_ONLY
    assert RewriteDeformConv.contract_for({"form": "mmcv"}) is Contract.TARGET_ONLY
    assert RewriteDeformConv.contract_for({"form": "onnx"}) is Contract.EXACT
    assert RewriteDeformConv.contract_for({"form": "decomposed"}) is Contract.EXACT
    assert RewriteDeformConv.contract_for({}) is Contract.EXACT  # default form is onnx
    assert set(RewriteDeformConv.options) == {"form", "fold_reorder"}


def test_bad_options_are_user_errors() -> None:
    model = dcn_model()
    with pytest.raises(SegcError, match="form=tensorrt is not a valid choice; valid values: onnx, ascend, mmcv"):
        rewrite(model, "tensorrt")
    with pytest.raises(SegcError, match="fold_reorder=sometimes is not a valid bool; valid values: true, on"):
        rewrite(model, "ascend", fold_reorder="sometimes")
    with pytest.raises(SegcError, match="form=nhwc is not a valid choice"):
        RewriteDeformConv.resolve_options({"form": "nhwc"})


def test_no_deformable_conv_is_left_alone() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "plain", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    for form in FORMS:
        out, result = rewrite(model, form)
        assert result.changed is False
        assert out is model
        assert result.stats["deform_convs"] == 0


# --------------------------------------------------------------------------------------------
# onnx -> ascend
# --------------------------------------------------------------------------------------------


def test_ascend_node_attributes_and_folded_layout() -> None:
    """Exact Ascend attributes, and the offset Conv's rows permuted to [dx | dy | mask]."""
    model = dcn_model(stride=(2, 2), offset_group=2)
    out, result = rewrite(model, "ascend")
    assert result.changed and result.stats["converted"] == 1 and result.stats["from_onnx"] == 1
    assert result.stats["conv_permuted"] == 1 and result.stats["runtime_selects"] == 0
    node = node_of(out, "DeformableConv2D")
    assert node.name == "dcn" and node.domain == "" and node.output[0] == "y"
    assert attrs_of(node) == {
        "strides": [2, 2], "pads": [1, 1], "dilations": [1, 1], "groups": 1,
        "deformable_groups": 2, "data_format": "NCHW", "modulated": 1,
    }
    assert [a.type for a in node.attribute if a.name == "modulated"] == [onnx.AttributeProto.INT]
    assert list(node.input[:2]) == ["x", "dcn_w"] and node.input[3] == "dcn_b"
    assert "DeformConv" not in ops(out) and ops(out).count("Gather") == 0

    # offsets = Concat(Slice(conv', 0:36), Sigmoid(Slice(conv', 36:54)))
    producers = {o: n for n in out.graph.node for o in n.output}
    concat = producers[node.input[2]]
    assert concat.op_type == "Concat"
    raw, sig = (producers[i] for i in concat.input)
    assert raw.op_type == "Slice" and sig.op_type == "Sigmoid"
    conv = producers[raw.input[0]]
    assert conv.op_type == "Conv" and conv.input[0] == "x"
    n = 2 * 9  # offset groups * taps
    dx = [2 * c + 1 for c in range(n)]
    dy = [2 * c for c in range(n)]
    mask = [2 * n + c for c in range(n)]
    order = dx + dy + mask
    np.testing.assert_array_equal(initializer(out, conv.input[1]), initializer(model, "off_w")[order])
    np.testing.assert_array_equal(initializer(out, conv.input[2]), initializer(model, "off_b")[order])
    feeds = feeds_for(model, (9, 11))
    assert assert_same_outputs(model, out, feeds) == 0.0  # a permutation: bit-exact


def test_a_layout_mistake_would_be_visible() -> None:
    """Control: swapping the dx and dy blocks of the Ascend offsets changes y a lot."""
    model = dcn_model()
    out, _ = rewrite(model, "ascend")
    conv = node_of(out, "Conv")
    weight = next(i for i in out.graph.initializer if i.name == conv.input[1])
    rows = numpy_helper.to_array(weight)
    swapped = np.concatenate([rows[9:18], rows[0:9], rows[18:]])
    weight.CopyFrom(numpy_helper.from_array(swapped, weight.name))
    feeds = feeds_for(model, (9, 11))
    ref = run_model(model, feeds)["y"]
    with pytest.raises(AssertionError):
        assert_same_outputs(model, out, feeds)
    # not by a hair: far beyond float noise
    assert np.abs(run_model(out, feeds)["y"] - ref).max() > 0.1 * np.abs(ref).max()


@pytest.mark.parametrize(
    "geometry",
    [
        {},
        {"stride": (2, 2), "offset_group": 2},
        {"dilation": (2, 1), "pads": (2, 1, 2, 1), "group": 2},
        {"pads": (1, 0, 2, 1)},  # asymmetric: an explicit Pad in front
        {"kernel": (1, 3), "pads": (0, 1, 0, 1), "bias": False},
        {"mask": False},  # DCNv1: Ascend gets a mask of ones
    ],
    ids=["plain", "stride2_og2", "dil_group2", "asym_pads", "k1x3_nobias", "v1"],
)
def test_ascend_round_trip_through_reference_lowering(geometry: dict[str, Any]) -> None:
    model = dcn_model(**geometry)
    out, result = rewrite(model, "ascend")
    assert result.changed and "DeformableConv2D" in ops(out)
    if geometry.get("pads") == (1, 0, 2, 1):
        pad = node_of(out, "Pad")
        assert initializer(out, pad.input[1]).tolist() == [0, 0, 1, 0, 0, 0, 2, 1]
        assert attrs_of(node_of(out, "DeformableConv2D"))["pads"] == [0, 0]
    lowered, count = lower_for_reference(out)
    assert count == 1 and "DeformConv" in ops(lowered) and not VENDOR_OPS & set(ops(lowered))
    assert_same_outputs(model, out, feeds_for(model, (9, 11)))


def test_runtime_reorder_path_when_offsets_are_not_from_a_conv() -> None:
    model = dcn_model(producer="inputs", offset_group=2)
    out, result = rewrite(model, "ascend")
    assert result.stats["conv_permuted"] == 0 and result.stats["runtime_selects"] == 1
    assert any("runtime channel selection" in note for note in result.notes)
    node = node_of(out, "DeformableConv2D")
    producers = {o: n for n in out.graph.node for o in n.output}
    concat = producers[node.input[2]]
    gather_node = producers[concat.input[0]]
    assert gather_node.op_type == "Gather" and concat.input[1] == "mask"
    n = 18
    assert initializer(out, gather_node.input[1]).tolist() == [2 * c + 1 for c in range(n)] + [2 * c for c in range(n)]
    assert assert_same_outputs(model, out, feeds_for(model, (9, 11))) == 0.0


def test_weight_folding_and_runtime_reorder_agree() -> None:
    """fold_reorder=false keeps the original Conv and reorders at run time; same numbers."""
    model = dcn_model(offset_group=2, stride=(2, 1))
    folded, folded_result = rewrite(model, "ascend")
    runtime, runtime_result = rewrite(model, "ascend", fold_reorder="false")
    assert folded_result.stats["conv_permuted"] == 1 and folded_result.stats["runtime_selects"] == 0
    assert runtime_result.stats["conv_permuted"] == 0 and runtime_result.stats["runtime_selects"] >= 1
    assert "Gather" in ops(runtime) and "Gather" not in ops(folded)
    # the runtime path leaves the original offset Conv's weights untouched
    conv = node_of(runtime, "Conv")
    np.testing.assert_array_equal(initializer(runtime, conv.input[1]), initializer(model, "off_w"))
    feeds = feeds_for(model, (9, 11))
    np.testing.assert_array_equal(run_model(folded, feeds)["y"], run_model(runtime, feeds)["y"])
    assert_same_outputs(model, folded, feeds)


def test_ascend_back_to_onnx_restores_the_original() -> None:
    model = dcn_model(offset_group=2)
    ascend, _ = rewrite(model, "ascend")
    back, result = rewrite(ascend, "onnx")
    assert result.changed and result.stats["from_ascend"] == 1 and result.stats["conv_permuted"] == 1
    assert sorted(ops(back)) == sorted(ops(model))
    conv = node_of(back, "Conv")
    np.testing.assert_array_equal(initializer(back, conv.input[1]), initializer(model, "off_w"))
    np.testing.assert_array_equal(initializer(back, conv.input[2]), initializer(model, "off_b"))
    assert attrs_of(node_of(back, "DeformConv")) == attrs_of(node_of(model, "DeformConv"))
    assert assert_same_outputs(model, back, feeds_for(model, (9, 11))) == 0.0


def test_ascend_node_is_repaired_to_what_atc_parses() -> None:
    """A hand-exported DeformableConv2D without data_format/groups (ATC would read NHWC)."""
    model = dcn_model()
    ascend, _ = rewrite(model, "ascend")
    node = node_of(ascend, "DeformableConv2D")
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("strides", [1, 1, 1, 1]), helper.make_attribute("pads", [1, 1, 1, 1]),
                           helper.make_attribute("deformable_groups", 1)])
    repaired, result = rewrite(ascend, "ascend")
    assert result.changed and result.stats["repaired"] == 1 and result.stats["converted"] == 0
    assert attrs_of(node_of(repaired, "DeformableConv2D")) == {
        "strides": [1, 1], "pads": [1, 1], "dilations": [1, 1], "groups": 1,
        "deformable_groups": 1, "data_format": "NCHW", "modulated": 1,
    }
    assert_same_outputs(model, repaired, feeds_for(model, (9, 11)))
    assert rewrite(repaired, "ascend")[1].changed is False


# --------------------------------------------------------------------------------------------
# onnx -> mmcv
# --------------------------------------------------------------------------------------------


def test_mmcv_node_and_round_trip() -> None:
    model = dcn_model(stride=(2, 2), offset_group=2, dilation=(1, 2), pads=(1, 2, 1, 2))
    out, result = rewrite(model, "mmcv")
    assert result.changed and result.stats["converted"] == 1
    node = node_of(out, "MMCVModulatedDeformConv2d")
    assert node.domain == "mmcv" and node.name == "dcn"
    assert {o.domain: o.version for o in out.opset_import}.get("mmcv") == 1
    assert attrs_of(node) == {"stride": [2, 2], "padding": [1, 2], "dilation": [1, 2], "groups": 1, "deform_groups": 2}
    # mmcv's layout is ONNX's: the original Conv -> Slice / Sigmoid chain feeds it unchanged
    assert list(node.input) == ["x", "offset", "mask", "dcn_w", "dcn_b"]
    assert result.stats["conv_permuted"] == 0 and result.stats["runtime_selects"] == 0
    assert assert_same_outputs(model, out, feeds_for(model, (9, 11))) == 0.0
    back, back_result = rewrite(out, "onnx")
    assert back_result.stats["from_mmcv"] == 1
    assert assert_same_outputs(model, back, feeds_for(model, (9, 11))) == 0.0


# --------------------------------------------------------------------------------------------
# onnx -> decomposed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "geometry",
    [
        {},
        {"stride": (2, 2), "offset_group": 2},
        {"dilation": (2, 1), "pads": (2, 1, 2, 1), "group": 2, "bias": False},
        {"kernel": (3, 2), "pads": (1, 0, 1, 1), "stride": (1, 2)},
        {"mask": False},
        {"producer": "inputs", "offset_group": 2},
    ],
    ids=["plain", "stride2_og2", "dil_group2", "k3x2_asym", "v1", "from_inputs"],
)
def test_decomposed_equals_deform_conv(geometry: dict[str, Any]) -> None:
    model = dcn_model(**geometry)
    out, result = rewrite(model, "decomposed")
    assert result.changed and result.stats["converted"] == 1
    assert "DeformConv" not in ops(out) and ops(out).count("GridSample") == 1
    grid_sample = node_of(out, "GridSample")
    assert attrs_of(grid_sample) == {"mode": "bilinear", "padding_mode": "zeros", "align_corners": 0}
    assert node_of(out, "Conv").name == "dcn" or any(n.name == "dcn" and n.op_type == "Conv" for n in out.graph.node)
    assert assert_same_outputs(model, out, feeds_for(model, (9, 11))) < 1e-5


def test_decomposed_handles_dynamic_height_and_width() -> None:
    """Grids come from Shape/Range at run time: one graph, several sizes, incl. a 1-pixel-wide map."""
    model = dcn_model(dynamic=True, stride=(2, 1), offset_group=2)
    out, _ = rewrite(model, "decomposed")
    assert {"Shape", "Range", "GridSample"} <= set(ops(out))
    x_dims = [d.dim_param or d.dim_value for d in out.graph.input[0].type.tensor_type.shape.dim]
    assert x_dims == ["N", 4, "H", "W"]
    for size in [(9, 11), (16, 24), (6, 1)]:
        assert_same_outputs(model, out, feeds_for(model, size, seed=size[0]))


def test_decomposed_uses_linear_mode_from_opset_20() -> None:
    model = dcn_model(opset=20)
    out, _ = rewrite(model, "decomposed")
    assert attrs_of(node_of(out, "GridSample"))["mode"] == "linear"
    assert_same_outputs(model, out, feeds_for(model, (9, 11)))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
    group=st.sampled_from([1, 2]),
    offset_group=st.sampled_from([1, 2]),
    mask=st.booleans(),
    size=st.tuples(st.integers(5, 12), st.integers(5, 12)),
    form=st.sampled_from(["ascend", "mmcv", "decomposed"]),
)
def test_random_geometries_match_deform_conv(
    kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int, int, int],
    group: int, offset_group: int, mask: bool, size: tuple[int, int], form: str,
) -> None:
    """Any kernel/stride/dilation/padding/grouping: the rewritten graph computes the same y."""
    model = dcn_model(kernel=kernel, stride=stride, dilation=dilation, pads=pads, group=group,
                      offset_group=offset_group, mask=mask, size=size)
    out, result = rewrite(model, form)
    assert result.changed and result.stats["converted"] == 1
    assert_same_outputs(model, out, feeds_for(model, size))


# --------------------------------------------------------------------------------------------
# every form from every form, idempotence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["onnx", "ascend", "mmcv"])
@pytest.mark.parametrize("target", FORMS)
def test_any_form_to_any_form(source: str, target: str) -> None:
    model = dcn_model(offset_group=2, stride=(2, 2))
    start = rewrite(model, source)[0]
    out, result = rewrite(start, target)
    assert result.changed is (source != target)
    remaining = {n.op_type for n in out.graph.node} & {"DeformConv", *VENDOR_OPS}
    expected = {
        "onnx": {"DeformConv"},
        "ascend": {"DeformableConv2D"},
        "mmcv": {"MMCVModulatedDeformConv2d"},
        "decomposed": set(),
    }
    assert remaining == expected[target]
    assert_same_outputs(model, out, feeds_for(model, (9, 11)))


@pytest.mark.parametrize("form", FORMS)
def test_idempotent(form: str) -> None:
    model = dcn_model(offset_group=2, pads=(1, 0, 2, 1))
    once, first = rewrite(model, form)
    twice, second = rewrite(once, form)
    assert first.changed is (form != "onnx")
    assert second.changed is False and twice is once


# --------------------------------------------------------------------------------------------
# opsets
# --------------------------------------------------------------------------------------------


def test_opset_is_raised_by_redeclaration_when_nothing_changes_meaning() -> None:
    """An Ascend-form graph of opset-stable ops at opset 16 -> onnx form at opset 19."""
    model = dcn_model(producer="inputs")
    ascend, _ = rewrite(model, "ascend")
    for opset in ascend.opset_import:
        if opset.domain == "":
            opset.version = 16  # Gather/Concat/DeformableConv2D: all unchanged 16 -> 19
    out, result = rewrite(ascend, "onnx")
    assert {o.domain: o.version for o in out.opset_import}[""] == 19
    assert any("raised the default-domain opset from 16 to 19" in note for note in result.notes)
    assert_same_outputs(model, out, feeds_for(model, (9, 11)))


def test_opset_11_vendor_graph_goes_through_the_version_converter() -> None:
    """The companion guide's Ascend export is opset 11: Slice/Sigmoid/Concat changed at 13."""
    model = dcn_model()
    ascend, _ = rewrite(model, "ascend")
    for opset in ascend.opset_import:
        if opset.domain == "":
            opset.version = 11
    feeds = feeds_for(model, (9, 11))
    # the verifier's reference lowering upgrades the whole graph, then lowers
    lowered, count = lower_for_reference(ascend)
    assert count == 1 and {o.domain: o.version for o in lowered.opset_import}[""] == 19
    assert_same_outputs(model, ascend, feeds)
    out, result = rewrite(ascend, "onnx")
    assert any("version converter" in note for note in result.notes)
    assert {o.domain: o.version for o in out.opset_import}[""] == 19
    assert_same_outputs(model, out, feeds)
    dec, dec_result = rewrite(ascend, "decomposed")
    assert {o.domain: o.version for o in dec.opset_import}[""] >= 16
    assert_same_outputs(model, dec, feeds)


def test_ascend_form_notes_the_parser_opset_range() -> None:
    out, result = rewrite(dcn_model(), "ascend")
    assert any("registers DeformableConv2D for opsets 9-16" in note for note in result.notes)


# --------------------------------------------------------------------------------------------
# seed model: DBNet ResNet-50 with 13 deformable convs
# --------------------------------------------------------------------------------------------


def randomize_offset_convs(model: onnx.ModelProto, scale: float, seed: int = 0) -> int:
    """Give every DCN's offset Conv its own random weights.

    The zoo zero-initialises them (as DB does), which makes offsets 0 and masks 0.5 for
    every channel: a layout bug would then go unseen. The exporter also shares those
    identical zero weights through Identity nodes, so each Conv gets a fresh initializer.
    """
    rng = np.random.default_rng(seed)
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type != "DeformConv":
            continue
        tensor = node.input[2]
        while producer[tensor].op_type != "Conv":
            tensor = producer[tensor].input[0]
        conv = producer[tensor]
        weight = conv.input[1]
        while weight in producer:
            weight = producer[weight].input[0]
        shape = numpy_helper.to_array(inits[weight]).shape
        name = f"{conv.name}/random_weight"
        model.graph.initializer.append(
            numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
        )
        conv.input[1] = name
        count += 1
    return count


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    for name in names:
        exposed.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return exposed


SEED_SIZES = ((128, 160), (96, 128))  # the export shape, and a second size for the dynamic H, W


@pytest.fixture(scope="module")
def dbnet_dcn(seed_onnx: Callable[..., Path]) -> dict[str, Any]:
    model = onnx.load(seed_onnx("dbnet_r50_dcn", shape=(1, 3, 128, 160)))
    assert randomize_offset_convs(model, scale=0.02) == 13
    first_dcn = next(n.output[0] for n in model.graph.node if n.op_type == "DeformConv")
    first_offset = next(n.input[2] for n in model.graph.node if n.op_type == "DeformConv")
    exposed = with_outputs(model, [first_dcn, first_offset])
    rng = np.random.default_rng(3)
    feeds = [{"input": rng.standard_normal((1, 3, h, w)).astype(np.float32)} for h, w in SEED_SIZES]
    session = make_session(exposed)  # one session, both sizes
    references = [run_session(session, feed) for feed in feeds]
    return {"model": model, "exposed": exposed, "feeds": feeds, "references": references, "first_dcn": first_dcn,
            "first_offset": first_offset, "output": model.graph.output[0].name}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["ascend", "mmcv", "decomposed"])
def test_seed_dbnet_r50_dcn(dbnet_dcn: dict[str, Any], form: str) -> None:
    """All 13 DCNs converted; the lowered (vendor) or decomposed graph matches in onnxruntime."""
    ref = dbnet_dcn["references"][0]
    # the randomised offsets really move the samples (else this test could not see a layout bug)
    assert float(np.abs(ref[dbnet_dcn["first_offset"]]).mean()) > 0.3
    started = time.perf_counter()
    out, result = rewrite(dbnet_dcn["exposed"], form)
    elapsed = time.perf_counter() - started
    assert result.stats["deform_convs"] == 13 and result.stats["converted"] == 13 and result.stats["skipped"] == 0
    assert result.stats["from_onnx"] == 13
    if form == "ascend":
        assert result.stats["conv_permuted"] == 13 and result.stats["runtime_selects"] == 0
        assert ops(out).count("DeformableConv2D") == 13
        # and back: the exported structure again (Constant/Identity nodes become initializers)
        back, back_result = rewrite(rewrite(dbnet_dcn["model"], "ascend")[0], "onnx")
        assert back_result.stats["from_ascend"] == 13 and back_result.stats["runtime_selects"] == 0
        compute = lambda m: sorted(op for op in ops(m) if op not in ("Constant", "Identity"))  # noqa: E731
        assert compute(back) == compute(dbnet_dcn["model"])
    if form == "mmcv":
        assert ops(out).count("MMCVModulatedDeformConv2d") == 13
        assert result.stats["conv_permuted"] == 0 and result.stats["runtime_selects"] == 0
    if form == "decomposed":
        assert "DeformConv" not in ops(out) and ops(out).count("GridSample") == 13
    assert elapsed < 20, f"rewrite took {elapsed:.1f}s"
    session = make_session(out)  # vendor ops lowered to the reference first
    sizes = range(len(SEED_SIZES)) if form == "decomposed" else range(1)  # decomposed: dynamic H, W
    for index in sizes:
        got = run_session(session, dbnet_dcn["feeds"][index])
        ref = dbnet_dcn["references"][index]
        for name in (dbnet_dcn["first_dcn"], dbnet_dcn["output"]):
            err = float(np.abs(got[name] - ref[name]).max())
            scale = float(np.abs(ref[name]).max())
            if form == "decomposed":
                assert err <= 1e-5 + 1e-4 * scale, (
                    f"{name} at {SEED_SIZES[index]}: {err}"
                )  # the verifier's exact tolerance
            else:
                assert err == 0.0, f"{name}: {err}"  # a channel permutation is bit-exact
