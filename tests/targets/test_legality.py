"""Legality engine and the four profiles: each rule, and the pass it names as the fix."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from onnx import TensorProto, helper

from segc.errors import SegcError
from segc.targets.base import Severity, Violation, get_target
from segc.targets.legality import DEFORM_CONV_FORMS, check_model, errors, group_violations, load_profile, unconfirmed

TARGETS = ["ascend", "magicmind", "tensorrt", "onnxruntime"]


def _triples(violations: list[Violation]) -> list[tuple[str, str, str | None]]:
    return [(v.node, v.op, v.fixed_by) for v in violations]


# ------------------------------------------------------------------ the data files themselves


@pytest.mark.parametrize("name", TARGETS)
def test_profile_is_well_formed(name: str) -> None:
    raw = json.loads(resources.files("segc.targets").joinpath(f"{name}.json").read_text())
    assert raw["target"] == name
    assert raw["source"], "every profile cites where its facts come from"
    ops = raw["ops"]["list"]
    assert ops == sorted(ops) and len(ops) == len(set(ops))
    assert "form" in raw["deform_conv"]
    profile = load_profile(name)
    assert profile.opset_range[0] <= profile.opset_range[1]


def test_unknown_profile_is_a_user_error() -> None:
    with pytest.raises(SegcError, match="no legality profile"):
        load_profile("nosuchvendor")


def test_partial_lists_are_marked() -> None:
    assert load_profile("magicmind").data["ops"]["partial"] is True
    for name in ("ascend", "tensorrt", "onnxruntime"):
        assert load_profile(name).data["ops"]["partial"] is False


def test_seed_graph_ops_are_listed_everywhere() -> None:
    """Ops of the exported seed graphs (after simplify) must not be flagged anywhere."""
    seed_ops = {"Add", "ArgMax", "Concat", "Conv", "ConvTranspose", "MatMul", "MaxPool", "Mul", "Relu",
                "Reshape", "Resize", "Sigmoid", "Softmax", "Transpose"}
    for name in TARGETS:
        assert seed_ops <= load_profile(name).ops, name


# ------------------------------------------------------------------ deformable convolution


@pytest.mark.parametrize(
    "target, op, domain, attrs, fixed",
    [
        ("ascend", "DeformConv", "", {}, "rewrite_deform_conv"),
        ("ascend", "MMCVModulatedDeformConv2d", "mmcv", {}, "rewrite_deform_conv"),
        ("tensorrt", "DeformableConv2D", "", {"data_format": "NCHW"}, "rewrite_deform_conv"),
        ("tensorrt", "MMCVModulatedDeformConv2d", "mmcv", {}, "rewrite_deform_conv"),
        ("magicmind", "DeformConv", "", {}, "rewrite_deform_conv"),
        ("onnxruntime", "DeformableConv2D", "", {"data_format": "NCHW"}, "rewrite_deform_conv"),
    ],
)
def test_wrong_deform_form_names_the_rewrite(deform_model, options, target, op, domain, attrs, fixed) -> None:
    found = get_target(target).check(
        deform_model(op=op, domain=domain, opset=16 if target == "ascend" else 19, **attrs), options()
    )
    assert ("dcn", op, fixed) in _triples(found)


def test_tensorrt_takes_standard_deformconv(deform_model, options) -> None:
    assert get_target("tensorrt").check(deform_model(), options()) == []


def test_ascend_accepts_its_own_form(deform_model, options) -> None:
    model = deform_model(op="DeformableConv2D", opset=16, strides=[1, 1], pads=[1, 1], dilations=[1, 1],
                         data_format="NCHW", modulated=1, deformable_groups=1)
    assert get_target("ascend").check(model, options()) == []


@pytest.mark.parametrize(
    "attrs, reason",
    [
        ({"strides": [1, 1], "pads": [1, 1], "modulated": 1}, "data_format=None"),
        ({"strides": [1, 1], "pads": [1, 1], "modulated": 1, "data_format": "NHWC"}, "data_format='NHWC'"),
        ({"strides": [1, 1], "pads": [1, 1], "data_format": "NCHW"}, "modulated=None"),
        ({"strides": [1, 1, 1, 1], "pads": [1, 1], "data_format": "NCHW", "modulated": 1}, "strides has 4 entries"),
        ({"pads": [1, 1], "data_format": "NCHW", "modulated": 1}, "strides is missing"),
    ],
)
def test_ascend_deform_attributes(deform_model, options, attrs, reason) -> None:
    found = get_target("ascend").check(deform_model(op="DeformableConv2D", opset=16, **attrs), options())
    assert len(found) == 1 and found[0].fixed_by == "rewrite_deform_conv"
    assert reason in found[0].reason


def test_ascend_deform_opset_window(deform_model, options) -> None:
    """ATC registers DeformableConv2D for ai.onnx 9..16; the model's opset 19 is also out of range."""
    model = deform_model(op="DeformableConv2D", opset=19, strides=[1, 1], pads=[1, 1], data_format="NCHW", modulated=1)
    found = get_target("ascend").check(model, options())
    assert ("<model>", "opset", "convert_opset") in _triples(found)
    assert any(
        v.op == "DeformableConv2D" and "opset 9..16" in v.reason and v.fixed_by == "convert_opset" for v in found
    )


def test_every_deform_form_is_known() -> None:
    assert set(DEFORM_CONV_FORMS.values()) == {"onnx", "ascend", "mmcv"}


# ------------------------------------------------------------------ Resize


def test_shape_computed_scales_on_ranged_ascend_build(resize_model, options) -> None:
    found = get_target("ascend").check(resize_model(shape_scales=True), options("x:1,3,64~256,64~256"))
    assert _triples(found) == [("resize_up", "Resize", "fold_resize_scales")]
    assert "shape range" in found[0].reason


def test_shape_computed_scales_on_static_ascend_build(resize_model, options) -> None:
    """ATC wants constants even for static shapes; there onnx-simplifier folds the chain."""
    found = get_target("ascend").check(resize_model(shape_scales=True), options("x:1,3,64,64"))
    assert _triples(found) == [("resize_up", "Resize", "fold_resize_scales")]


def test_constant_scales_pass_everywhere(resize_model, options) -> None:
    for name in TARGETS:
        assert get_target(name).check(resize_model(), options("x:1,3,64~256,64~256")) == [], name


def test_shape_computed_scales_fine_for_tensorrt(resize_model, options) -> None:
    assert get_target("tensorrt").check(resize_model(shape_scales=True), options("x:1,3,64~256,64~256")) == []


def test_resize_modes(resize_model, options) -> None:
    assert (
        "mode 'cubic'" in get_target("ascend").check(resize_model(mode="cubic", ctm="half_pixel"), options())[0].reason
    )
    assert (
        "mode 'cubic'"
        in get_target("tensorrt").check(resize_model(mode="cubic", ctm="half_pixel"), options())[0].reason
    )
    found = get_target("tensorrt").check(resize_model(mode="linear", ctm="tf_crop_and_resize"), options())
    assert "coordinate_transformation_mode 'tf_crop_and_resize'" in found[0].reason
    assert get_target("ascend").check(resize_model(mode="linear", ctm="tf_crop_and_resize"), options()) == []
    assert get_target("onnxruntime").check(resize_model(mode="cubic", ctm="half_pixel"), options()) == []


def test_upsample_is_not_an_ascend_op(single_node_model, options) -> None:
    model = single_node_model("Upsample", opset=9, inputs=("x", "s"))
    found = get_target("ascend").check(model, options())
    assert _triples(found) == [("upsample_0", "Upsample", None)]
    assert "not in Huawei Ascend ATC's operator list" in found[0].reason


# ------------------------------------------------------------------ op lists, domains, opsets, dtypes


def test_unknown_default_domain_op(single_node_model, options) -> None:
    for name, vendor in (("ascend", "Huawei Ascend ATC"), ("tensorrt", "NVIDIA TensorRT")):
        found = get_target(name).check(single_node_model("FrobnicateV2"), options())
        assert found == [Violation("frobnicatev2_0", "FrobnicateV2", f"not in {vendor}'s operator list", None)]


def test_partial_list_can_be_waived(single_node_model, options) -> None:
    model = single_node_model("GridSample", opset=16, inputs=("x", "x"))
    found = get_target("magicmind").check(model, options())
    assert _triples(found) == [("gridsample_0", "GridSample", None)] and "partial" in found[0].reason
    # absence from a partial list is not evidence: a warning, never an error
    assert found[0].severity is Severity.UNCONFIRMED and errors(found) == [] and unconfirmed(found) == found
    assert "--allow-unlisted-ops" in found[0].reason
    assert get_target("magicmind").check(model, options(allow_unlisted_ops=True)) == []
    # a complete list is never waived
    assert get_target("ascend").check(single_node_model("Frob"), options(allow_unlisted_ops=True))


def test_custom_domain_ops(single_node_model, options) -> None:
    model = single_node_model("FusedConv", domain="com.microsoft")
    assert "custom op of domain 'com.microsoft'" in get_target("ascend").check(model, options())[0].reason
    assert get_target("onnxruntime").check(model, options()) == []


def test_unnamed_nodes_are_named_by_output(options) -> None:
    node = helper.make_node("Frob", ["x"], ["frob_out"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("frob_out", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10)
    assert get_target("tensorrt").check(model, options())[0].node == "<frob_out>"


@pytest.mark.parametrize("target, opset, bad", [("ascend", 8, True), ("ascend", 18, False), ("ascend", 19, True),
                                                ("tensorrt", 24, False), ("tensorrt", 25, True)])
def test_opset_window(conv_model, options, target, opset, bad) -> None:
    found = get_target(target).check(conv_model(opset=opset), options())
    assert (("<model>", "opset", "convert_opset") in _triples(found)) == bad


def test_io_dtypes_tensorrt(conv_model, options) -> None:
    assert get_target("tensorrt").check(conv_model(out_elem=TensorProto.INT64), options()) == []  # argmax label map
    model = conv_model()
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    found = get_target("tensorrt").check(model, options())
    assert _triples(found) == [("y", "output", None)] and "float64" in found[0].reason


# ------------------------------------------------------------------ shape ranges vs the graph


def test_range_for_missing_input(conv_model, options) -> None:
    found = get_target("tensorrt").check(conv_model(), options("image:1,3,64,64"))
    assert _triples(found) == [("image", "input", None)] and "inputs: x" in found[0].reason


def test_range_rank_mismatch(conv_model, options) -> None:
    found = get_target("ascend").check(conv_model(), options("x:3,64,64"))
    assert "3 dims, the input has 4" in found[0].reason


def test_range_over_fixed_dims_needs_set_shape_range(conv_model, options) -> None:
    found = get_target("ascend").check(conv_model(dims=(1, 3, 64, 64)), options("x:1,3,64~128,64~128"))
    assert _triples(found) == [("x", "input", "set_shape_range")] * 2
    found = get_target("tensorrt").check(conv_model(dims=(1, 3, 64, 64)), options("x:1,3,32,32"))
    assert _triples(found) == [("x", "input", "set_shape_range")] * 2


def test_check_model_defaults(conv_model) -> None:
    assert check_model(conv_model(), load_profile("tensorrt")) == []


def test_violation_text(deform_model, options) -> None:
    found = get_target("ascend").check(deform_model(opset=16), options())
    assert str(found[0]).startswith(
        "dcn [DeformConv]: deformable convolution as DeformConv; Huawei Ascend ATC wants DeformableConv2D"
    )
    assert str(found[0]).endswith("(fixed by pass rewrite_deform_conv)")


# ------------------------------------------------------------------ batch builds vs the graph's batch


def test_batch_sizes_need_a_free_batch(conv_model, options) -> None:
    static = conv_model(dims=(1, 3, 64, 64))
    for name in ("ascend", "tensorrt"):
        found = get_target(name).check(static, options(batch_sizes=(1, 4, 8)))
        assert _triples(found) == [("x", "input", "set_shape_range")], name
        assert "fixes the batch at 1, the build asks for batch 4, 8" in found[0].reason
    found = get_target("magicmind").check(static, options(batch_range=(1, 16)))
    assert _triples(found) == [("x", "input", "set_shape_range")]
    # a free batch, a single matching size, or a runtime that builds nothing per batch: fine
    assert get_target("ascend").check(conv_model(dims=("N", 3, 64, 64)), options(batch_sizes=(1, 4, 8))) == []
    assert get_target("ascend").check(static, options(batch_sizes=(1,))) == []
    assert get_target("onnxruntime").check(static, options(batch_sizes=(1, 4, 8))) == []


def test_complete_list_misses_are_errors(single_node_model, options) -> None:
    found = get_target("ascend").check(single_node_model("Frob"), options())
    assert [v.severity for v in found] == [Severity.ERROR] and errors(found) == found


def test_group_violations_counts_instead_of_repeating() -> None:
    same = [Violation(f"Resize_{i}", "Resize", "sizes computed at run time", "fold_resize_scales") for i in range(58)]
    lines = group_violations(same)
    assert lines == [
        "Resize x58 (Resize_0, Resize_1, Resize_2, ...): sizes computed at run time (fixed by pass fold_resize_scales)"
    ]
    unsure = [Violation(f"c{i}", "Clip", "unconfirmed: x", severity=Severity.UNCONFIRMED) for i in range(12)]
    unsure += [Violation(f"d{i}", "Div", "unconfirmed: x", severity=Severity.UNCONFIRMED) for i in range(3)]
    assert group_violations(unsure) == ["Clip x12, Div x3 (unconfirmed: x)"]
