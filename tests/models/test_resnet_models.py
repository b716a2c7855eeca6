"""The ResNet family of the zoo: DeepLabv2-R101 (ADVENT/IntraDA) and DBNet-R50 (+DCNv2).

What is checked, and why it can fail:
- the architectures are the seeds' (stride placement, dilations, ceil-mode pool, output sizes,
  parameter counts against the published figures);
- state_dict keys and shapes equal the released checkpoints' (a sample of real keys written
  out from ADVENT's ``advent/model/deeplabv2.py`` and MhLiao/DB's ``backbones/resnet.py`` /
  ``decoders/seg_detector.py``), and a saved state dict reloads strictly to the same outputs;
- each model exports with torch's legacy exporter as the seed pipelines did (DeepLabv2 opset
  11; DBNet opset 10 with dynamic H/W; DBNet-DCN opset 19 with DeformConv) and onnxruntime
  agrees with PyTorch, at two sizes for the dynamic ones;
- DBNet's neck exports the seed's Shape-derived scale chain in front of every Resize, and
  the DCN graph holds one DeformConv per deformable block.

Heavy work (build, export) happens once per module in fixtures. The PyTorch reference output
at the export shape is captured by a forward hook during the export's own tracing run (the
tracer executes the real forward), which saves one full-size forward per model.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from segc.models import dbnet, deeplabv2_r101  # noqa: E402
from segc.models.resnet import FrozenBatchNorm2d, ResNetConfig, calibrate_batchnorm, resnet50  # noqa: E402
from segc.ortrun import make_session, run_session  # noqa: E402

pytestmark = pytest.mark.slow

# --------------------------------------------------------------------------------------------
# Real checkpoint keys and shapes.
# DeepLabv2: ADVENT ResNetMulti(Bottleneck, [3, 4, 23, 3], 19, multi_level=True); IntraDA's
# evaluation loads its checkpoints with a strict load_state_dict, so these are its keys.
DEEPLAB_KEYS: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.weight": (64,),
    "bn1.bias": (64,),
    "bn1.running_mean": (64,),
    "bn1.running_var": (64,),
    "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.bn1.weight": (64,),
    "layer1.0.conv2.weight": (64, 64, 3, 3),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.bn3.running_var": (256,),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.weight": (256,),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.2.conv3.weight": (256, 64, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.3.bn2.bias": (128,),
    "layer3.0.conv1.weight": (256, 512, 1, 1),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer3.22.conv2.weight": (256, 256, 3, 3),
    "layer3.22.conv3.weight": (1024, 256, 1, 1),
    "layer3.22.bn3.weight": (1024,),
    "layer4.0.conv1.weight": (512, 1024, 1, 1),
    "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.0.downsample.1.bias": (2048,),
    "layer4.2.conv2.weight": (512, 512, 3, 3),
    "layer4.2.bn3.running_mean": (2048,),
    "layer5.conv2d_list.0.weight": (19, 1024, 3, 3),
    "layer5.conv2d_list.0.bias": (19,),
    "layer5.conv2d_list.3.weight": (19, 1024, 3, 3),
    "layer6.conv2d_list.0.weight": (19, 2048, 3, 3),
    "layer6.conv2d_list.3.bias": (19,),
}
# stem 1 conv + 1 BN (5 keys) = 6; 33 blocks x (3 convs + 3 BNs) = 594; 4 downsamples x 6 = 24;
# two classifiers x 4 convs x (weight, bias) = 16.
DEEPLAB_KEY_COUNT = 6 + 33 * 18 + 4 * 6 + 16

# DBNet: DB's SegDetectorModel checkpoints (e.g. ic15_resnet50, deformable_resnet50 + SegDetector
# adaptive=True) with the DataParallel prefix "model.module." removed.
DBNET_DCN_KEYS: dict[str, tuple[int, ...]] = {
    "backbone.conv1.weight": (64, 3, 7, 7),
    "backbone.bn1.running_var": (64,),
    "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.layer1.0.conv2.weight": (64, 64, 3, 3),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.0.downsample.1.num_batches_tracked": (),
    "backbone.layer2.0.conv2_offset.weight": (27, 128, 3, 3),
    "backbone.layer2.0.conv2_offset.bias": (27,),
    "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
    "backbone.layer2.3.conv2_offset.weight": (27, 128, 3, 3),
    "backbone.layer3.5.conv2_offset.weight": (27, 256, 3, 3),
    "backbone.layer3.5.conv2.weight": (256, 256, 3, 3),
    "backbone.layer4.2.conv2_offset.bias": (27,),
    "backbone.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "backbone.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "backbone.fc.weight": (1000, 2048),
    "backbone.fc.bias": (1000,),
    "backbone.smooth.weight": (256, 2048, 1, 1),
    "backbone.smooth.bias": (256,),
    "decoder.in5.weight": (256, 2048, 1, 1),
    "decoder.in4.weight": (256, 1024, 1, 1),
    "decoder.in3.weight": (256, 512, 1, 1),
    "decoder.in2.weight": (256, 256, 1, 1),
    "decoder.out5.0.weight": (64, 256, 3, 3),
    "decoder.out4.0.weight": (64, 256, 3, 3),
    "decoder.out3.0.weight": (64, 256, 3, 3),
    "decoder.out2.weight": (64, 256, 3, 3),
    "decoder.binarize.0.weight": (64, 256, 3, 3),
    "decoder.binarize.1.weight": (64,),
    "decoder.binarize.1.running_mean": (64,),
    "decoder.binarize.3.weight": (64, 64, 2, 2),
    "decoder.binarize.3.bias": (64,),
    "decoder.binarize.4.running_var": (64,),
    "decoder.binarize.6.weight": (64, 1, 2, 2),
    "decoder.binarize.6.bias": (1,),
    "decoder.thresh.0.weight": (64, 256, 3, 3),
    "decoder.thresh.1.bias": (64,),
    "decoder.thresh.3.weight": (64, 64, 2, 2),
    "decoder.thresh.6.bias": (1,),
}
# Keys a DB checkpoint does NOT have (bias=False convs, no extra offset convs in layer1).
DBNET_ABSENT_KEYS = (
    "backbone.layer1.0.conv2_offset.weight",
    "backbone.layer2.0.conv2.bias",
    "decoder.in5.bias",
    "decoder.binarize.0.bias",
    "decoder.out2.0.weight",
)
# backbone: 6 + 16 blocks x 18 + 4 x 6 + fc 2 + smooth 2; decoder: 4 in + 4 out + 2 heads x 15.
DBNET_KEY_COUNT = 6 + 16 * 18 + 4 * 6 + 2 + 2 + 4 + 4 + 2 * 15
DBNET_DCN_KEY_COUNT = DBNET_KEY_COUNT + 13 * 2

DEEPLAB_SHAPE = (1, 3, 128, 256)
DBNET_SHAPE = (1, 3, 128, 160)
DBNET_SECOND_SHAPE = (1, 3, 64, 32)  # H != W, and the smallest legal height/width pair
SEED = 0


# --------------------------------------------------------------------------------------------
# helpers and fixtures


def _export_with_reference(
    model: torch.nn.Module, x: torch.Tensor, path: Path, **kwargs: Any
) -> tuple[np.ndarray, ...]:
    """Legacy-export ``model`` at ``x`` and return PyTorch's outputs from the traced run."""
    captured: list[Any] = []
    handle = model.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=False, do_constant_folding=True, **kwargs)
    finally:
        handle.remove()
    assert captured, "the exporter did not run the model's forward"
    out = captured[-1]
    outs = out if isinstance(out, tuple) else (out,)
    return tuple(t.detach().numpy().copy() for t in outs)


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the exported file in segc's configured onnxruntime session; outputs in graph order."""
    return list(run_session(make_session(onnx.load(str(path))), feeds).values())


def _assert_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """allclose with a tolerance scaled to the output's magnitude (float reassociation only)."""
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * scale)


def _reload(model: torch.nn.Module, factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Save ``model``'s state dict to bytes and load it strictly into a new ``factory()`` instance.

    The new instance is built on the meta device (no random init of 25-45M parameters) and the
    loaded tensors are assigned, so every value it holds comes from the saved file.
    """
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    with torch.device("meta"):
        fresh = factory()
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True, assign=True)
    return fresh.eval()


@pytest.fixture(scope="module")
def deeplab() -> deeplabv2_r101.DeepLabV2:
    torch.manual_seed(SEED)
    return deeplabv2_r101.build_model()


@pytest.fixture(scope="module")
def deeplab_export(deeplab, tmp_path_factory) -> dict[str, Any]:
    torch.manual_seed(SEED + 1)
    x = torch.randn(*DEEPLAB_SHAPE)
    path = tmp_path_factory.mktemp("deeplab") / "deeplabv2_r101.onnx"
    reference = _export_with_reference(
        deeplab, x, path, opset_version=11,
        input_names=list(deeplabv2_r101.INPUT_NAMES), output_names=list(deeplabv2_r101.OUTPUT_NAMES),
    )
    return {"path": path, "x": x.numpy(), "reference": reference}


@pytest.fixture(scope="module")
def dbnets() -> dict[bool, dbnet.DBNet]:
    models = {}
    for dcn in (False, True):
        torch.manual_seed(SEED)
        model = dbnet.build_model(dcn=dcn)
        if dcn:  # real deformation, so DeformConv's sampling is actually exercised
            assert dbnet.perturb_offsets(model, generator=torch.Generator().manual_seed(SEED)) == 13
        models[dcn] = model
    return models


@pytest.fixture(scope="module")
def dbnet_exports(dbnets, tmp_path_factory) -> dict[bool, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("dbnet")
    exports = {}
    dynamic = {"input": {2: "height", 3: "width"}, "output": {2: "height", 3: "width"}}
    for dcn, model in dbnets.items():
        torch.manual_seed(SEED + 1)
        x = torch.randn(*DBNET_SHAPE)
        path = folder / f"dbnet_{'dcn' if dcn else 'plain'}.onnx"
        reference = _export_with_reference(
            model, x, path, opset_version=19 if dcn else 10, dynamic_axes=dynamic,
            input_names=list(dbnet.INPUT_NAMES), output_names=list(dbnet.OUTPUT_NAMES),
        )
        exports[dcn] = {"path": path, "x": x.numpy(), "reference": reference, "graph": onnx.load(str(path))}
    return exports


# --------------------------------------------------------------------------------------------
# resnet.py


def test_stride_placement_and_dilation_follow_the_two_styles(deeplab, dbnets):
    # Caffe-style (DeepLabv2): the 1x1 conv strides; layer3/4 dilate instead of striding.
    assert deeplab.layer2[0].conv1.stride == (2, 2) and deeplab.layer2[0].conv2.stride == (1, 1)
    assert deeplab.layer3[0].conv1.stride == (1, 1) and deeplab.layer3[5].conv2.dilation == (2, 2)
    assert deeplab.layer4[2].conv2.dilation == (4, 4) and deeplab.layer4[2].conv2.padding == (4, 4)
    assert deeplab.maxpool.ceil_mode and deeplab.config.output_stride == 8
    # PyTorch-style (DB): the 3x3 conv strides, and the offset conv shares its output grid.
    plain, deform = dbnets[False].backbone, dbnets[True].backbone
    assert plain.layer2[0].conv1.stride == (1, 1) and plain.layer2[0].conv2.stride == (2, 2)
    assert not plain.maxpool.ceil_mode and plain.config.output_stride == 32
    assert deform.layer3[0].conv2.stride == (2, 2) and deform.layer3[0].conv2_offset.stride == (2, 2)
    assert not hasattr(deform.layer1[0], "conv2_offset")


def test_trunk_feature_strides_and_calibrated_batchnorm():
    torch.manual_seed(SEED)
    trunk = resnet50()
    x = torch.randn(2, 3, 64, 64)
    calibrate_batchnorm(trunk, x)
    assert not trunk.training
    seen: list[float] = []
    trunk.layer1[0].bn3.register_forward_hook(lambda _m, _i, out: seen.append(float(out.std())))
    with torch.no_grad():
        feats = trunk(x)
    assert [tuple(f.shape) for f in feats] == [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4), (2, 2048, 2, 2)]
    assert 0.8 < seen[0] < 1.2  # gamma 1, beta 0: a calibrated BN standardises its input
    assert all(0.1 < float(f.std()) < 10 for f in feats)  # no drift through the 16 blocks
    with pytest.raises(ValueError, match="one value per stage"):
        ResNetConfig(strides=(1, 2, 2))  # type: ignore[arg-type]


def test_frozen_batchnorm_stays_in_eval_and_has_no_gradients(deeplab):
    bns = [m for m in deeplab.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 104 and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    deeplab.train()
    try:
        assert deeplab.training and not any(m.training for m in bns)
        assert not any(p.requires_grad for m in bns for p in m.parameters())
    finally:
        deeplab.eval()


# --------------------------------------------------------------------------------------------
# DeepLabv2-R101


def test_deeplab_parameter_count_matches_published(deeplab):
    count = deeplabv2_r101.parameter_count(deeplab)
    low, high = deeplabv2_r101.PUBLISHED_PARAMS_RANGE
    assert low <= count <= high, count
    assert count == sum(p.numel() for p in deeplab.parameters())


def test_deeplab_state_dict_keys_match_advent(deeplab):
    state = deeplab.state_dict()
    assert len(DEEPLAB_KEYS) >= 25
    for key, shape in DEEPLAB_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert len(state) == DEEPLAB_KEY_COUNT
    for absent in ("layer3.23.conv1.weight", "layer5.conv2d_list.4.weight", "fc.weight", "layer1.0.conv2.bias"):
        assert absent not in state


def test_deeplab_output_sizes_formula():
    assert deeplabv2_r101.output_size(512, 1024) == (65, 129)
    assert deeplabv2_r101.output_size(128, 256) == (17, 33)


def test_deeplab_export_matches_pytorch(deeplab_export):
    out1, out2 = deeplab_export["reference"]
    assert out1.shape == out2.shape == (1, 19, 17, 33)
    assert np.isfinite(out2).all() and out2.std() > 1.0  # logits are spread, not degenerate
    graph = onnx.load(str(deeplab_export["path"]))
    assert [o.name for o in graph.graph.output] == list(deeplabv2_r101.OUTPUT_NAMES)
    assert [i.name for i in graph.graph.input] == list(deeplabv2_r101.INPUT_NAMES)
    assert graph.opset_import[0].version == 11
    ops = Counter(n.op_type for n in graph.graph.node)
    assert ops["Conv"] == 104 + 8 and ops["MaxPool"] == 1  # BN folded into the 104 trunk convs
    got = _ort(deeplab_export["path"], {"image": deeplab_export["x"]})
    for actual, expected in zip(got, (out1, out2), strict=False):
        _assert_close(actual, expected)
        assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.99


def test_deeplab_state_dict_round_trip(deeplab):
    fresh = _reload(deeplab, lambda: deeplabv2_r101.DeepLabV2(num_classes=19))
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        for a, b in zip(deeplab(x), fresh(x), strict=False):
            assert a.shape == (1, 19, *deeplabv2_r101.output_size(24, 40))
            assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# DBNet-R50 / DBNet-R50-DCN


def test_dbnet_parameter_counts(dbnets):
    plain, deform = dbnets[False], dbnets[True]
    inference_plain = dbnet.inference_parameter_count(plain)
    inference_dcn = dbnet.inference_parameter_count(deform)
    # ~25M for DBNet-R50 (trunk 23.5M + neck/head 1.7M); DCNv2 adds 13 offset convs (0.87M).
    assert abs(inference_plain - dbnet.PUBLISHED_PARAMS) / dbnet.PUBLISHED_PARAMS < 0.02
    assert abs(inference_dcn - dbnet.PUBLISHED_PARAMS_DCN) / dbnet.PUBLISHED_PARAMS_DCN < 0.02
    offsets = sum(9 * 27 * planes + 27 for planes, blocks in ((128, 4), (256, 6), (512, 3)) for _ in range(blocks))
    assert inference_dcn - inference_plain == offsets
    # fc (2048x1000+1000), smooth (2048x256+256) and thresh are in the checkpoint, not the graph.
    unused = sum(p.numel() for p in plain.parameters()) - inference_plain
    assert unused == 2_049_000 + 524_544 + sum(p.numel() for p in plain.decoder.thresh.parameters())


def test_dbnet_state_dict_keys_match_db_checkpoints(dbnets):
    deform_state = dbnets[True].state_dict()
    plain_state = dbnets[False].state_dict()
    assert len(DBNET_DCN_KEYS) >= 25
    for key, shape in DBNET_DCN_KEYS.items():
        assert key in deform_state, key
        assert tuple(deform_state[key].shape) == shape, key
        if "conv2_offset" not in key:
            assert tuple(plain_state[key].shape) == shape, key
    for key in DBNET_ABSENT_KEYS:
        assert key not in deform_state
    assert len(deform_state) == DBNET_DCN_KEY_COUNT and len(plain_state) == DBNET_KEY_COUNT
    assert set(deform_state) - set(plain_state) == {k for k in deform_state if ".conv2_offset." in k}
    # A DB checkpoint carries the DataParallel prefix; stripped, it is exactly our key set.
    wrapped = {f"model.module.{k}": v for k, v in deform_state.items()}
    assert {k.removeprefix("model.module.") for k in wrapped} == set(deform_state)


def test_upsample_nearest_equals_nn_upsample():
    x = torch.randn(1, 4, 5, 7)
    for factor in (2, 4, 8):
        expected = torch.nn.Upsample(scale_factor=factor, mode="nearest")(x)
        assert torch.equal(dbnet.upsample_nearest(x, factor), expected)


@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def test_dbnet_export_matches_pytorch_at_two_sizes(dbnets, dbnet_exports, dcn):
    export = dbnet_exports[dcn]
    (reference,) = export["reference"]
    assert reference.shape == (1, 1, *DBNET_SHAPE[2:])
    # A probability map, spread over (0, 1): the random network is not saturated.
    assert reference.min() >= 0 and reference.max() <= 1 and 0.1 < reference.std() < 0.45
    graph = export["graph"]
    assert graph.opset_import[0].version == (19 if dcn else 10)
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, "height", "width"]
    (got,) = _ort(export["path"], {"input": export["x"]})
    _assert_close(got, reference)
    torch.manual_seed(SEED + 2)
    x2 = torch.randn(*DBNET_SECOND_SHAPE)
    with torch.no_grad():
        expected2 = dbnets[dcn](x2).numpy()
    (got2,) = _ort(export["path"], {"input": x2.numpy()})
    _assert_close(got2, expected2)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _chain_ops(graph: onnx.GraphProto, tensor: str) -> list[str]:
    """Op types of the nodes ``tensor``'s value depends on (stopping at Shape, whose value is dims only)."""
    producers, seen, stack, ops = _producers(graph), set(), [tensor], []
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        ops.append(node.op_type)
        if node.op_type != "Shape":  # a Shape reads only its input's dims, not its values
            stack.extend(i for i in node.input if i)
    return ops


def test_dbnet_resize_scales_are_shape_chains(dbnet_exports):
    """The seed's opset-10 graph: each Resize's scales come from Shape ... Floor ... Div."""
    graph = dbnet_exports[False]["graph"].graph
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert len(resizes) == 6  # up5/up4/up3 in the top-down path + out5 x8, out4 x4, out3 x2
    chains = 0
    for node in resizes:
        assert len(node.input) == 2  # opset 10: (X, scales)
        ops = Counter(_chain_ops(graph, node.input[1]))
        # The scale chain reads the input's Shape, never the convs that produced it.
        assert ops["Conv"] == 0 and ops["Resize"] == 0
        if all(ops[op] >= 1 for op in ("Shape", "Gather", "Mul", "Floor", "Cast", "Unsqueeze", "Concat", "Div")):
            chains += 1
    assert chains == 6


def test_dbnet_dcn_graph_has_one_deformconv_per_deformable_block(dbnet_exports):
    graph = dbnet_exports[True]["graph"].graph
    deform = [n for n in graph.node if n.op_type == "DeformConv"]
    assert len(deform) == 4 + 6 + 3
    for node in deform:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert list(attrs["kernel_shape"]) == [3, 3] and list(attrs["pads"]) == [1, 1, 1, 1]
        assert len(node.input) == 5 and node.input[4]  # (X, W, offset, B, mask): modulated
    strides = Counter(
        tuple(onnx.helper.get_attribute_value(a)) for n in deform for a in n.attribute if a.name == "strides"
    )
    assert strides == {(2, 2): 3, (1, 1): 10}  # first block of layer2/3/4 downsamples


@pytest.mark.parametrize("dcn", [False, True], ids=["plain", "dcn"])
def test_dbnet_state_dict_round_trip(dbnets, dcn):
    fresh = _reload(dbnets[dcn], lambda: dbnet.DBNet(dcn=dcn))
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(dbnets[dcn](x), fresh(x))


def test_variant_constants_are_consistent():
    assert set(dbnet.VARIANTS) == {"dbnet_r50", "dbnet_r50_dcn"}
    for name, info in dbnet.VARIANTS.items():
        assert info.name == name and info.dcn == name.endswith("_dcn")
        assert info.input_names == ("input",) and info.output_names == ("output",)
        assert info.seed_shape == (1, 3, 640, 640) and info.spatial_multiple == 32
    assert deeplabv2_r101.NAME == "deeplabv2_r101" and deeplabv2_r101.SEED_SHAPE == (1, 3, 512, 1024)
    assert deeplabv2_r101.SPATIAL_MULTIPLE == 8
