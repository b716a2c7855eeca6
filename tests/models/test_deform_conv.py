"""Tests for segc.models.deform_conv: DCNv2 in PyTorch and its ONNX ``DeformConv`` export.

Three independent judges of the numerics:
  * a NumPy reference written here from the definition (explicit loops, tiny inputs);
  * onnx's own reference implementation (ReferenceEvaluator on a one-node DeformConv model);
  * onnxruntime's CPU DeformConv kernel, on one-node models and on exported models.
Exports are checked structurally (exactly one standard DeformConv, its attributes and opset)
and numerically, at two input sizes through one dynamic export per exporter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from segc.errors import SegcError
from segc.models.deform_conv import (
    DEFORM_CONV_MIN_OPSET,
    ModulatedDeformConv2d,
    deform_conv2d,
    export_onnx,
    require_deform_conv_opset,
)

# ----------------------------------------------------------------------------------------------
# Independent NumPy reference, written from the DCNv2 definition (no vectorisation on purpose)
# ----------------------------------------------------------------------------------------------


def _bilinear_zero_padded(plane: np.ndarray, y: float, x: float) -> float:
    """Bilinear sample of a 2-D plane at (y, x); pixels outside the image read as 0."""
    height, width = plane.shape
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    value = 0.0
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            if 0 <= yy < height and 0 <= xx < width:
                value += (1 - abs(y - yy)) * (1 - abs(x - xx)) * float(plane[yy, xx])
    return value


def numpy_deform_conv(
    x: np.ndarray,
    offset: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    mask: np.ndarray | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    offset_groups: int,
) -> np.ndarray:
    """out[n,o,p,q] = b[o] + sum_{c,i,j} w[o,c,i,j] * m * x[n, c](p*s - pad + i*d + dy, ...)."""
    n_batch, channels, _, _ = x.shape
    out_channels, c_per_group, kh, kw = weight.shape
    out_h, out_w = offset.shape[2], offset.shape[3]
    taps = kh * kw
    out = np.zeros((n_batch, out_channels, out_h, out_w), dtype=np.float64)
    for n in range(n_batch):
        for o in range(out_channels):
            group = o // (out_channels // groups)
            for p in range(out_h):
                for q in range(out_w):
                    acc = 0.0 if bias is None else float(bias[o])
                    for ci in range(c_per_group):
                        c = group * c_per_group + ci
                        og = c // (channels // offset_groups)
                        for i in range(kh):
                            for j in range(kw):
                                k = og * taps + i * kw + j
                                dy = float(offset[n, 2 * k, p, q])
                                dx = float(offset[n, 2 * k + 1, p, q])
                                y = p * stride[0] - padding[0] + i * dilation[0] + dy
                                xx = q * stride[1] - padding[1] + j * dilation[1] + dx
                                m = 1.0 if mask is None else float(mask[n, k, p, q])
                                sample = _bilinear_zero_padded(x[n, c], y, xx)
                                acc += float(weight[o, ci, i, j]) * m * sample
                    out[n, o, p, q] = acc
    return out


# ----------------------------------------------------------------------------------------------
# Configurations and random inputs
# ----------------------------------------------------------------------------------------------

# name: (N, C, O, H, W, kernel, stride, padding, dilation, groups, offset_groups, bias, mask)
CONFIGS: dict[str, tuple[Any, ...]] = {
    "dbnet_s1": (1, 4, 4, 6, 7, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, True),
    "dbnet_s2": (2, 4, 6, 7, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1, False, True),
    "dilation2_bias": (1, 4, 4, 7, 7, (3, 3), (1, 1), (2, 2), (2, 2), 1, 1, True, True),
    "groups2": (1, 4, 6, 6, 5, (3, 3), (1, 1), (1, 1), (1, 1), 2, 1, True, True),
    "offset_groups2": (1, 4, 4, 5, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, False, True),
    "groups2_og2_v1": (1, 4, 4, 6, 6, (3, 3), (2, 1), (1, 0), (1, 1), 2, 2, True, False),
    "v1_no_mask": (1, 3, 5, 6, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, False, False),
    "rect_kernel": (1, 2, 3, 6, 8, (2, 3), (1, 2), (0, 1), (2, 1), 1, 1, True, True),
    # small enough for onnx's ReferenceEvaluator (one GridSample per channel pair and pixel)
    "tiny_s2": (1, 2, 2, 5, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1, False, True),
    "tiny_dilation2_bias": (1, 2, 2, 5, 5, (3, 3), (1, 1), (2, 2), (2, 2), 1, 1, True, True),
}


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def make_case(name: str, seed: int = 0, offset_scale: float = 2.0) -> dict[str, Any]:
    """Random tensors for a config; offsets large enough to reach outside the image."""
    n, c, o, h, w, k, s, p, d, groups, og, has_bias, has_mask = CONFIGS[name]
    gen = torch.Generator().manual_seed(seed)
    ho, wo = _out_size(h, k[0], s[0], p[0], d[0]), _out_size(w, k[1], s[1], p[1], d[1])
    taps = k[0] * k[1]
    return {
        "x": torch.randn(n, c, h, w, generator=gen),
        "weight": torch.randn(o, c // groups, *k, generator=gen),
        "offset": torch.randn(n, 2 * og * taps, ho, wo, generator=gen) * offset_scale,
        "bias": torch.randn(o, generator=gen) if has_bias else None,
        "mask": torch.rand(n, og * taps, ho, wo, generator=gen) if has_mask else None,
        "stride": s,
        "padding": p,
        "dilation": d,
        "groups": groups,
        "offset_groups": og,
    }


def run_torch(case: dict[str, Any]) -> torch.Tensor:
    return deform_conv2d(
        case["x"], case["offset"], case["weight"], case["bias"],
        stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], offset_groups=case["offset_groups"], mask=case["mask"],
    )


def run_numpy(case: dict[str, Any]) -> np.ndarray:
    def arr(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().double().numpy()

    return numpy_deform_conv(
        arr(case["x"]), arr(case["offset"]), arr(case["weight"]), arr(case["bias"]),  # type: ignore[arg-type]
        arr(case["mask"]), case["stride"], case["padding"], case["dilation"],
        case["groups"], case["offset_groups"],
    )


def one_node_model(case: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model made of one DeformConv node with every tensor a graph input."""
    k = list(case["weight"].shape[2:])
    names = [
        "X", "W", "offset",
        "B" if case["bias"] is not None else "",  # "" = absent optional input
        "mask" if case["mask"] is not None else "",
    ]
    while names[-1] == "":
        names.pop()
    node = helper.make_node(
        "DeformConv", names, ["Y"],
        dilations=list(case["dilation"]), group=case["groups"], kernel_shape=k,
        offset_group=case["offset_groups"],
        pads=[case["padding"][0], case["padding"][1], case["padding"][0], case["padding"][1]],
        strides=list(case["stride"]),
    )
    feeds_src = {
        "X": case["x"], "W": case["weight"], "offset": case["offset"],
        "B": case["bias"], "mask": case["mask"],
    }
    feeds = {nm: feeds_src[nm].numpy() for nm in names if nm}
    out_shape = [case["x"].shape[0], case["weight"].shape[0], *case["offset"].shape[2:]]
    graph = helper.make_graph(
        [node], "deform_conv",
        [helper.make_tensor_value_info(nm, TensorProto.FLOAT, list(v.shape)) for nm, v in feeds.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFORM_CONV_MIN_OPSET)])
    model.ir_version = 9  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14
    onnx.checker.check_model(model, full_check=True)
    return model, feeds


def ort_session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = 1e-4) -> None:
    """Tolerance scaled to the output's magnitude (float32 sums of ~100 products)."""
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert err <= rtol * scale, f"{what}: max abs error {err:.3g} > {rtol * scale:.3g}"


# ----------------------------------------------------------------------------------------------
# Forward numerics
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_numpy_definition(name: str) -> None:
    case = make_case(name)
    with torch.no_grad():
        got = run_torch(case).numpy()
    assert_close(got, run_numpy(case), name)


@pytest.mark.parametrize("name", ["tiny_s2", "tiny_dilation2_bias", "groups2_og2_v1", "rect_kernel"])
def test_forward_matches_onnx_reference_evaluator(name: str) -> None:
    case = make_case(name, seed=1)
    model, feeds = one_node_model(case)
    expected = ReferenceEvaluator(model).run(None, feeds)[0]
    with torch.no_grad():
        got = run_torch(case).numpy()
    assert_close(got, expected, f"{name} vs onnx.reference")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_matches_onnxruntime_kernel(name: str) -> None:
    # Larger offsets: many samples fall partly or wholly outside the image.
    case = make_case(name, seed=2, offset_scale=4.0)
    model, feeds = one_node_model(case)
    expected = ort_session(model).run(None, feeds)[0]
    with torch.no_grad():
        got = run_torch(case).numpy()
    assert_close(got, expected, f"{name} vs onnxruntime")


def test_dbnet_sized_layer_matches_onnxruntime() -> None:
    """A real DBNet stage-3 shape: 256 channels, stride 2, with the module API."""
    torch.manual_seed(3)
    layer = ModulatedDeformConv2d(256, 256, 3, stride=2, padding=1, deformable_groups=1, bias=False)
    x = torch.randn(1, 256, 40, 40)
    offset = torch.randn(1, 18, 20, 20) * 1.5
    mask = torch.rand(1, 9, 20, 20)
    with torch.no_grad():
        got = layer(x, offset, mask).numpy()
    case = {"x": x, "weight": layer.weight.detach(), "offset": offset, "bias": None, "mask": mask,
            "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "offset_groups": 1}
    model, feeds = one_node_model(case)
    assert_close(got, ort_session(model).run(None, feeds)[0], "dbnet layer vs onnxruntime")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zero_offset_unit_mask_is_plain_conv2d(name: str) -> None:
    case = make_case(name, seed=4)
    case["offset"] = torch.zeros_like(case["offset"])
    if case["mask"] is not None:
        case["mask"] = torch.ones_like(case["mask"])
    expected = nn.functional.conv2d(
        case["x"], case["weight"], case["bias"], stride=case["stride"],
        padding=case["padding"], dilation=case["dilation"], groups=case["groups"],
    )
    with torch.no_grad():
        got = run_torch(case)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_integer_offset_shifts_the_sampling_grid() -> None:
    """dy = +1 everywhere: a padded conv whose window starts one row lower.

    Tap (i, j) of output (p, q) then reads x[p + i, q - 1 + j]: the zero padding moves from
    the top edge to two rows at the bottom.
    """
    torch.manual_seed(5)
    x = torch.randn(1, 3, 8, 8)
    weight = torch.randn(4, 3, 3, 3)
    offset = torch.zeros(1, 18, 8, 8)
    offset[:, 0::2] = 1.0
    padded = nn.functional.pad(x, (1, 1, 0, 2))  # (left, right, top, bottom)
    expected = nn.functional.conv2d(padded, weight)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=1), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Training: gradients flow to every input
# ----------------------------------------------------------------------------------------------


def test_backward_reaches_input_weight_offset_mask_and_bias() -> None:
    torch.manual_seed(6)
    layer = ModulatedDeformConv2d(4, 6, 3, stride=1, padding=1, bias=True)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    offset = (torch.randn(2, 18, 6, 6) * 0.7).requires_grad_()
    mask = torch.rand(2, 9, 6, 6, requires_grad=True)
    layer(x, offset, mask).square().mean().backward()
    for name, grad in [("x", x.grad), ("offset", offset.grad), ("mask", mask.grad),
                       ("weight", layer.weight.grad), ("bias", layer.bias.grad)]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_gradients_match_finite_differences() -> None:
    """gradcheck in float64, offsets kept away from integer grid lines (where bilinear kinks)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(2, 1, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    frac = torch.rand(1, 36, 4, 4, dtype=torch.float64, generator=gen) * 0.6 + 0.2
    whole = torch.randint(-2, 3, (1, 36, 4, 4), generator=gen).double()
    offset = (whole + frac).requires_grad_()
    mask = torch.rand(1, 18, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)

    def fn(
        x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor,
        bias: torch.Tensor, mask: torch.Tensor,
    ) -> torch.Tensor:
        return deform_conv2d(x, offset, weight, bias, padding=1, groups=2, offset_groups=2, mask=mask)

    # fast_mode checks random projections of the Jacobian: same verdicts, a fraction of the runs.
    assert torch.autograd.gradcheck(fn, (x, offset, weight, bias, mask), eps=1e-6, atol=1e-5, fast_mode=True)


def test_fine_tuning_step_reduces_the_loss() -> None:
    torch.manual_seed(8)
    layer = ModulatedDeformConv2d(3, 3, 3, padding=1)
    offset_conv = nn.Conv2d(3, 27, 3, padding=1)
    x, target = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    params = list(layer.parameters()) + list(offset_conv.parameters())
    opt = torch.optim.SGD(params, lr=0.05)

    def loss() -> torch.Tensor:
        o = offset_conv(x)
        return nn.functional.mse_loss(layer(x, o[:, :18], o[:, 18:].sigmoid()), target)

    before = loss().item()
    for _ in range(5):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < before
    assert offset_conv.weight.grad is not None and offset_conv.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def test_bad_offset_channels_raise_segc_error() -> None:
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    with pytest.raises(SegcError, match="offset has 9 channels"):
        deform_conv2d(x, torch.randn(1, 9, 6, 6), w, padding=1)


def test_bad_offset_size_raises_segc_error() -> None:
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 4, 3, 3)
    with pytest.raises(SegcError, match="does not match the output"):
        deform_conv2d(x, torch.randn(1, 18, 6, 6), w, stride=2, padding=1)


def test_module_rejects_indivisible_groups() -> None:
    with pytest.raises(SegcError, match="deformable_groups"):
        ModulatedDeformConv2d(6, 6, 3, deformable_groups=4)


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


class DeformBlock(nn.Module):
    """The DBNet use: a conv predicts offsets and mask logits, then DCNv2 (3x3, pad 1)."""

    def __init__(self, channels: int, out_channels: int, stride: int, bias: bool, modulated: bool) -> None:
        super().__init__()
        self.modulated = modulated
        self.offset_conv = nn.Conv2d(channels, 27 if modulated else 18, 3, stride, 1)
        nn.init.normal_(self.offset_conv.weight, std=0.3)  # real-looking, non-zero offsets
        self.dcn = ModulatedDeformConv2d(channels, out_channels, 3, stride, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.offset_conv(x)
        mask = o[:, 18:].sigmoid() if self.modulated else None
        return torch.relu(self.dcn(x, o[:, :18], mask))


def _block(stride: int = 2, bias: bool = True, modulated: bool = True) -> DeformBlock:
    torch.manual_seed(9)
    return DeformBlock(3, 4, stride, bias, modulated).eval()


def _deform_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "DeformConv"]


def _check_deform_node(model: onnx.ModelProto, stride: int, bias: bool, modulated: bool) -> None:
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets.get("", 0) >= DEFORM_CONV_MIN_OPSET, opsets
    nodes = _deform_nodes(model)
    assert len(nodes) == 1, [n.op_type for n in model.graph.node]
    node = nodes[0]
    assert node.domain == ""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {
        "dilations": [1, 1], "group": 1, "kernel_shape": [3, 3], "offset_group": 1,
        "pads": [1, 1, 1, 1], "strides": [stride, stride],
    }
    inputs = list(node.input)
    assert inputs[0] == model.graph.input[0].name and len(inputs) >= 3
    if modulated:
        assert len(inputs) == 5 and inputs[4] != ""
        assert (inputs[3] != "") == bias
    else:
        assert len(inputs) == (4 if bias else 3)
    # Nothing of the PyTorch gather implementation may leak into the graph.
    assert not {"GatherElements", "GatherND", "Floor"} & {n.op_type for n in model.graph.node}


def _check_runs(path: Path, block: nn.Module, sizes: list[tuple[int, int]], numpy_check: bool) -> None:
    """onnxruntime vs PyTorch at each size; also vs the NumPy definition on the first."""
    session = ort_session(path)
    input_name = session.get_inputs()[0].name
    for index, (h, w) in enumerate(sizes):
        x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(h * 100 + w))
        with torch.no_grad():
            expected = block(x)
        got = session.run(None, {input_name: x.numpy()})[0]
        assert_close(got, expected.numpy(), f"onnxruntime vs torch at {h}x{w}")
        if numpy_check and index == 0:
            dcn: ModulatedDeformConv2d = block.dcn  # type: ignore[assignment]
            with torch.no_grad():
                o = block.offset_conv(x)
            reference = numpy_deform_conv(
                x.double().numpy(), o[:, :18].double().numpy(), dcn.weight.detach().double().numpy(),
                None if dcn.bias is None else dcn.bias.detach().double().numpy(),
                o[:, 18:].sigmoid().double().numpy() if block.modulated else None,
                dcn.stride, dcn.padding, dcn.dilation, dcn.groups, dcn.deformable_groups,
            )
            assert_close(got, np.maximum(reference, 0.0), f"onnxruntime vs numpy at {h}x{w}")


SIZES = [(9, 11), (14, 7)]


def test_legacy_export_dynamic_hw(tmp_path: Path) -> None:
    block = _block()
    path = export_onnx(
        block, (torch.randn(1, 3, *SIZES[0]),), tmp_path / "legacy.onnx", dynamo=False,
        input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {2: "height", 3: "width"}, "y": {2: "out_h", 3: "out_w"}},
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    _check_deform_node(model, stride=2, bias=True, modulated=True)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    assert dims == ["height", "width"]
    _check_runs(path, block, SIZES, numpy_check=True)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter, called directly
@pytest.mark.parametrize(("bias", "modulated"), [(False, True), (True, False), (False, False)])
def test_legacy_export_optional_inputs(tmp_path: Path, bias: bool, modulated: bool) -> None:
    """An absent bias before a present mask is the empty name ""; trailing absent ones are cut."""
    block = _block(stride=1, bias=bias, modulated=modulated)
    path = tmp_path / "legacy_opt.onnx"
    torch.onnx.export(block, (torch.randn(1, 3, 8, 10),), str(path), dynamo=False,
                      opset_version=DEFORM_CONV_MIN_OPSET)
    model = onnx.load(str(path))
    _check_deform_node(model, stride=1, bias=bias, modulated=modulated)
    _check_runs(path, block, [(8, 10)], numpy_check=False)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch-internal pytree deprecation
def test_dynamo_export_dynamic_hw(tmp_path: Path) -> None:
    block = _block(bias=False)
    height = torch.export.Dim("height", min=4, max=4096)
    width = torch.export.Dim("width", min=4, max=4096)
    path = export_onnx(
        block, (torch.randn(1, 3, *SIZES[0]),), tmp_path / "dynamo.onnx", dynamo=True,
        opset=20, input_names=["x"], output_names=["y"],
        dynamic_shapes={"x": {2: height, 3: width}},
    )
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert not list(tmp_path.glob("*.data")), "dynamo export must not write external data"
    _check_deform_node(model, stride=2, bias=False, modulated=True)
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim[2:]]
    assert dims == ["height", "width"]
    _check_runs(path, block, SIZES, numpy_check=True)


def test_eager_path_is_unchanged_after_exports() -> None:
    """The export flags must not leak: a plain call afterwards computes real values."""
    case = make_case("dbnet_s1", seed=10)
    with torch.no_grad():
        got = run_torch(case).numpy()
    assert np.abs(got).max() > 0
    assert_close(got, run_numpy(case), "eager after export")


# ----------------------------------------------------------------------------------------------
# Opset < 19: DeformConv does not exist there
# ----------------------------------------------------------------------------------------------


def test_require_opset() -> None:
    require_deform_conv_opset(19)
    require_deform_conv_opset(None)
    with pytest.raises(SegcError, match="DeformConv needs ONNX opset 19 or newer"):
        require_deform_conv_opset(18)


@pytest.mark.parametrize("dynamo", [False, True])
def test_export_helper_refuses_old_opset(tmp_path: Path, dynamo: bool) -> None:
    with pytest.raises(SegcError, match="DeformConv needs ONNX opset 19 or newer.*opset 17"):
        export_onnx(_block(), (torch.randn(1, 3, 8, 8),), tmp_path / "old.onnx", opset=17, dynamo=dynamo)
    assert not (tmp_path / "old.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_legacy_torch_onnx_export_refuses_old_opset(tmp_path: Path) -> None:
    """Called directly, the legacy exporter lets the symbolic's SegcError through as itself."""
    with pytest.raises(SegcError, match="DeformConv needs ONNX opset 19 or newer.*opset 17"):
        torch.onnx.export(_block(), (torch.randn(1, 3, 8, 8),), str(tmp_path / "old.onnx"),
                          dynamo=False, opset_version=17)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_dynamo_torch_onnx_export_refuses_old_opset(tmp_path: Path) -> None:
    """Called directly, the dynamo exporter wraps our SegcError; it must be in the chain.

    Without the check it would silently emit DeformConv into an opset-18 model (or, through
    torch.export's strict fallback, decompose it into gathers): both must fail instead.
    """
    with pytest.raises(Exception) as info:
        torch.onnx.export(_block(), (torch.randn(1, 3, 8, 8),), str(tmp_path / "old.onnx"),
                          dynamo=True, opset_version=18, external_data=False, verbose=False)
    chain: list[BaseException] = []
    current: BaseException | None = info.value
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    assert any(isinstance(e, SegcError) and "opset 19 or newer" in str(e) for e in chain), chain
    assert not (tmp_path / "old.onnx").exists()
