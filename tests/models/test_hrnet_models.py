"""The HRNet family of the zoo: OCRNet-HRNetV2-W18 (mmseg) and HRNetV2-W48-OCR (HRNet-Seg).

What is checked, and why:
- checkpoint compatibility: a written-down sample of real state-dict keys with their shapes,
  read off the two repositories' sources (mmseg ``backbones/hrnet.py``, ``decode_heads/
  ocr_head.py``, ``fcn_head.py``, ``utils/self_attention_block.py``, config ``ocrnet_hr18``;
  HRNet-Seg ``lib/models/seg_hrnet_ocr.py`` + Cityscapes yaml; the W48-OCR names are also the
  ``weightMap`` names tensorrtx's hrnet_ocr reads), plus a strict state-dict round trip;
- size: parameter counts against the published figures (12.1M, 70.3M);
- behaviour: output shapes/dtypes, non-degenerate random-weight outputs;
- the exported graph (legacy exporter, opset 11, as the seed guides): I/O names, every Resize
  linear with its size computed from a Shape at run time, and onnxruntime == PyTorch.

Each full-size model is built once and exported once per module (fixtures below); the
PyTorch reference outputs are the ones computed while the exporter traced the model, so the
expensive forward pass at 128x256 runs once per model.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from segc.errors import SegcError  # noqa: E402
from segc.models import hrnet_w48_ocr as w48  # noqa: E402
from segc.models import ocrnet_hrnetw18 as w18  # noqa: E402
from segc.models.hrnet import HRNetBackbone  # noqa: E402

EXPORT_SHAPE = (1, 3, 128, 256)
SMALL_SHAPE = (1, 3, 64, 128)

# ----------------------------------------------------------------------------- real keys

#: mmseg ``ocrnet_hr18_512x1024_160k_cityscapes`` checkpoint keys (sample) and shapes.
#: stem/layer1: mmseg ResNet blocks (conv1/bn1/...); fuse j>i: Sequential(conv, bn, Upsample);
#: fuse j<i: Sequential(Sequential(conv, bn[, relu]) per stride-2 step); heads: mmcv ConvModule
#: (``.conv`` / ``.bn``); decode_head.0 = FCNHead(270, 1x1, num_convs=1), decode_head.1 =
#: OCRHead(channels=512, ocr_channels=256); 19 Cityscapes classes.
OCRNET_W18_KEYS: dict[str, tuple[int, ...]] = {
    "backbone.conv1.weight": (64, 3, 3, 3),
    "backbone.bn1.weight": (64,),
    "backbone.bn1.running_var": (64,),
    "backbone.conv2.weight": (64, 64, 3, 3),
    "backbone.bn2.bias": (64,),
    "backbone.layer1.0.conv1.weight": (64, 64, 1, 1),
    "backbone.layer1.0.conv3.weight": (256, 64, 1, 1),
    "backbone.layer1.0.bn3.weight": (256,),
    "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "backbone.layer1.0.downsample.1.running_mean": (256,),
    "backbone.layer1.3.conv2.weight": (64, 64, 3, 3),
    "backbone.transition1.0.0.weight": (18, 256, 3, 3),
    "backbone.transition1.0.1.weight": (18,),
    "backbone.transition1.1.0.0.weight": (36, 256, 3, 3),
    "backbone.transition1.1.0.1.bias": (36,),
    "backbone.stage2.0.branches.0.0.conv1.weight": (18, 18, 3, 3),
    "backbone.stage2.0.branches.1.3.bn2.weight": (36,),
    "backbone.stage2.0.fuse_layers.0.1.0.weight": (18, 36, 1, 1),
    "backbone.stage2.0.fuse_layers.0.1.1.weight": (18,),
    "backbone.stage2.0.fuse_layers.1.0.0.0.weight": (36, 18, 3, 3),
    "backbone.stage2.0.fuse_layers.1.0.0.1.num_batches_tracked": (),
    "backbone.transition2.2.0.0.weight": (72, 36, 3, 3),
    "backbone.stage3.0.branches.2.0.conv1.weight": (72, 72, 3, 3),
    "backbone.stage3.3.fuse_layers.0.2.0.weight": (18, 72, 1, 1),
    "backbone.stage3.3.fuse_layers.2.0.0.0.weight": (18, 18, 3, 3),
    "backbone.stage3.3.fuse_layers.2.0.1.0.weight": (72, 18, 3, 3),
    "backbone.transition3.3.0.0.weight": (144, 72, 3, 3),
    "backbone.stage4.2.branches.3.3.conv2.weight": (144, 144, 3, 3),
    "backbone.stage4.2.fuse_layers.0.3.0.weight": (18, 144, 1, 1),
    "backbone.stage4.2.fuse_layers.3.0.2.0.weight": (144, 18, 3, 3),
    "backbone.stage4.2.fuse_layers.3.2.0.1.weight": (144,),
    "decode_head.0.convs.0.conv.weight": (270, 270, 1, 1),
    "decode_head.0.convs.0.bn.weight": (270,),
    "decode_head.0.conv_seg.weight": (19, 270, 1, 1),
    "decode_head.0.conv_seg.bias": (19,),
    "decode_head.1.bottleneck.conv.weight": (512, 270, 3, 3),
    "decode_head.1.bottleneck.bn.running_mean": (512,),
    "decode_head.1.object_context_block.query_project.0.conv.weight": (256, 512, 1, 1),
    "decode_head.1.object_context_block.query_project.1.conv.weight": (256, 256, 1, 1),
    "decode_head.1.object_context_block.query_project.1.bn.weight": (256,),
    "decode_head.1.object_context_block.key_project.0.conv.weight": (256, 512, 1, 1),
    "decode_head.1.object_context_block.key_project.1.bn.bias": (256,),
    "decode_head.1.object_context_block.value_project.conv.weight": (256, 512, 1, 1),
    "decode_head.1.object_context_block.out_project.conv.weight": (512, 256, 1, 1),
    "decode_head.1.object_context_block.out_project.bn.weight": (512,),
    "decode_head.1.object_context_block.bottleneck.conv.weight": (512, 1024, 1, 1),
    "decode_head.1.object_context_block.bottleneck.bn.running_var": (512,),
    "decode_head.1.conv_seg.weight": (19, 512, 1, 1),
    "decode_head.1.conv_seg.bias": (19,),
}

#: HRNet-Semantic-Segmentation ``seg_hrnet_ocr`` W48 Cityscapes model keys (sample) and shapes.
#: Backbone at the top level; OCR: conv3x3_ocr = Sequential(conv(bias), BN, ReLU); BNReLU =
#: Sequential(BN, ReLU) so BN keys end in ``.1.0`` / ``.3.0``; aux_head = (conv, BN, ReLU, conv).
HRNET_W48_OCR_KEYS: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.weight": (64,),
    "bn2.running_mean": (64,),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.3.bn3.weight": (256,),
    "transition1.0.0.weight": (48, 256, 3, 3),
    "transition1.1.0.0.weight": (96, 256, 3, 3),
    "stage2.0.branches.0.0.conv1.weight": (48, 48, 3, 3),
    "stage2.0.branches.1.0.bn1.weight": (96,),
    "stage2.0.fuse_layers.0.1.0.weight": (48, 96, 1, 1),
    "stage2.0.fuse_layers.1.0.0.0.weight": (96, 48, 3, 3),
    "transition2.2.0.0.weight": (192, 96, 3, 3),
    "stage3.0.branches.2.3.conv2.weight": (192, 192, 3, 3),
    "stage3.3.fuse_layers.1.2.1.weight": (96,),
    "stage3.3.fuse_layers.2.0.1.0.weight": (192, 48, 3, 3),
    "transition3.3.0.0.weight": (384, 192, 3, 3),
    "stage4.0.branches.3.0.conv1.weight": (384, 384, 3, 3),
    "stage4.2.fuse_layers.0.3.0.weight": (48, 384, 1, 1),
    "stage4.2.fuse_layers.0.3.1.running_var": (48,),
    "stage4.2.fuse_layers.3.0.0.0.weight": (48, 48, 3, 3),
    "stage4.2.fuse_layers.3.0.2.0.weight": (384, 48, 3, 3),
    "stage4.2.fuse_layers.3.1.1.0.weight": (384, 96, 3, 3),
    "conv3x3_ocr.0.weight": (512, 720, 3, 3),
    "conv3x3_ocr.0.bias": (512,),
    "conv3x3_ocr.1.weight": (512,),
    "conv3x3_ocr.1.num_batches_tracked": (),
    "ocr_distri_head.object_context_block.f_pixel.0.weight": (256, 512, 1, 1),
    "ocr_distri_head.object_context_block.f_pixel.1.0.weight": (256,),
    "ocr_distri_head.object_context_block.f_pixel.2.weight": (256, 256, 1, 1),
    "ocr_distri_head.object_context_block.f_pixel.3.0.bias": (256,),
    "ocr_distri_head.object_context_block.f_object.0.weight": (256, 512, 1, 1),
    "ocr_distri_head.object_context_block.f_object.3.0.running_mean": (256,),
    "ocr_distri_head.object_context_block.f_down.0.weight": (256, 512, 1, 1),
    "ocr_distri_head.object_context_block.f_down.1.0.weight": (256,),
    "ocr_distri_head.object_context_block.f_up.0.weight": (512, 256, 1, 1),
    "ocr_distri_head.object_context_block.f_up.1.0.running_var": (512,),
    "ocr_distri_head.conv_bn_dropout.0.weight": (512, 1024, 1, 1),
    "ocr_distri_head.conv_bn_dropout.1.0.weight": (512,),
    "cls_head.weight": (19, 512, 1, 1),
    "cls_head.bias": (19,),
    "aux_head.0.weight": (720, 720, 1, 1),
    "aux_head.0.bias": (720,),
    "aux_head.1.weight": (720,),
    "aux_head.3.weight": (19, 720, 1, 1),
    "aux_head.3.bias": (19,),
}


# ----------------------------------------------------------------------------- fixtures


@dataclass
class Exported:
    """One model exported once: the file, its loaded graph, the input and PyTorch's outputs."""

    path: Path
    graph: Any  # onnx.ModelProto
    x: np.ndarray
    torch_outputs: tuple[np.ndarray, ...]


def _build(module: Any, **kwargs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return module.build_model(**kwargs)


def _export(model: Any, module: Any, path: Path, dynamic_hw: bool = False) -> Exported:
    """Legacy (TorchScript) export at opset 11, keeping the outputs the trace computed.

    ``dynamic_hw`` marks H and W of the input and of the outputs dynamic. In a static export
    the exporter folds every spatial size it can prove into a constant (the Resize sizes then
    keep only N and C from a Shape); a dynamic one shows whether the model really sizes its
    upsamplings from tensors at run time.
    """
    dynamic_axes = None
    if dynamic_hw:
        dynamic_axes = {name: {2: "height", 3: "width"} for name in (*module.INPUT_NAMES, *module.OUTPUT_NAMES)}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*EXPORT_SHAPE, generator=gen)
    captured: dict[str, Any] = {}
    # The tracer runs the real forward once; a hook keeps its outputs (no ops recorded).
    handle = model.register_forward_hook(lambda _m, _i, out: captured.__setitem__("out", out))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-derived Python ints
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=11,
                input_names=list(module.INPUT_NAMES), output_names=list(module.OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
            )
    finally:
        handle.remove()
    out = captured["out"]
    outs = out if isinstance(out, tuple) else (out,)
    return Exported(path, onnx.load(str(path)), x.numpy(), tuple(o.detach().numpy() for o in outs))


@pytest.fixture(scope="module")
def hrnet_w18_model() -> Any:
    return _build(w18)


@pytest.fixture(scope="module")
def hrnet_w48_model() -> Any:
    return _build(w48)


@pytest.fixture(scope="module")
def hrnet_w18_export(hrnet_w18_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    # dynamic H, W: checks the run-time sizing (the W48 export below is static, like its seed)
    return _export(hrnet_w18_model, w18, tmp_path_factory.mktemp("hrnet") / "ocrnet_hrnetw18.onnx", dynamic_hw=True)


@pytest.fixture(scope="module")
def hrnet_w48_export(hrnet_w48_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    return _export(hrnet_w48_model, w48, tmp_path_factory.mktemp("hrnet") / "hrnet_w48_ocr.onnx")


def _run_ort(exp: Exported, input_name: str, x: np.ndarray | None = None) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(exp.path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: exp.x if x is None else x})


# ----------------------------------------------------------------------------- constants, errors


def test_module_constants() -> None:
    assert (w18.NAME, w18.INPUT_NAMES, w18.OUTPUT_NAMES) == ("ocrnet_hrnetw18", ("x",), ("output",))
    assert (w48.NAME, w48.INPUT_NAMES, w48.OUTPUT_NAMES) == ("hrnet_w48_ocr", ("image",), ("output1", "output2"))
    for mod in (w18, w48):
        assert mod.SEED_SHAPE == (1, 3, 1024, 2048)
        assert mod.SPATIAL_MULTIPLE == 32
        assert callable(mod.build_model)


@pytest.mark.parametrize("module", [w18, w48], ids=["w18", "w48"])
def test_bad_num_classes_is_a_user_error(module: Any) -> None:
    with pytest.raises(SegcError, match="num_classes"):
        module.build_model(num_classes=1)


def test_backbone_widths_and_strides(hrnet_w48_model: Any) -> None:
    """W18 branch widths/strides, and the backbone shared by both models has one key layout."""
    torch.manual_seed(0)
    bb = HRNetBackbone(width=18).eval()
    assert bb.out_channels == [18, 36, 72, 144]
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 18, 16, 24), (1, 36, 8, 12), (1, 72, 4, 6), (1, 144, 2, 3)]
    # Same module tree at any width: W48-OCR's backbone keys == W18's backbone keys.
    heads = ("conv3x3_ocr.", "ocr_distri_head.", "cls_head.", "aux_head.")
    w48_backbone = {k for k in hrnet_w48_model.state_dict() if not k.startswith(heads)}
    assert w48_backbone == set(bb.state_dict())


# ----------------------------------------------------------------------------- checkpoint keys


def _assert_keys(state: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> None:
    missing = [k for k in expected if k not in state]
    assert not missing, f"keys missing from the model: {missing}"
    wrong = {k: (tuple(state[k].shape), shape) for k, shape in expected.items() if tuple(state[k].shape) != shape}
    assert not wrong, f"(model shape, checkpoint shape): {wrong}"


def test_ocrnet_w18_checkpoint_keys(hrnet_w18_model: Any) -> None:
    assert len(OCRNET_W18_KEYS) >= 30
    state = hrnet_w18_model.state_dict()
    _assert_keys(state, OCRNET_W18_KEYS)
    # mmseg's CascadeEncoderDecoder: a backbone and two cascaded decode heads, nothing else
    parts = {k.split(".")[0] if k.startswith("backbone.") else ".".join(k.split(".")[:2]) for k in state}
    assert parts == {"backbone", "decode_head.0", "decode_head.1"}


def test_hrnet_w48_ocr_checkpoint_keys(hrnet_w48_model: Any) -> None:
    assert len(HRNET_W48_OCR_KEYS) >= 30
    state = hrnet_w48_model.state_dict()
    _assert_keys(state, HRNET_W48_OCR_KEYS)
    top = {k.split(".")[0] for k in state}
    assert top == {
        "conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2", "stage3",
        "transition3", "stage4", "conv3x3_ocr", "ocr_distri_head", "cls_head", "aux_head",
    }


def test_parameter_counts(hrnet_w18_model: Any, hrnet_w48_model: Any) -> None:
    n18 = sum(p.numel() for p in hrnet_w18_model.parameters())
    n48 = sum(p.numel() for p in hrnet_w48_model.parameters())
    # published: OCRNet-HRNetV2-W18 ~12.1M, HRNetV2-W48 + OCR 70.3M
    assert abs(n18 - w18.PUBLISHED_PARAMS) / w18.PUBLISHED_PARAMS < 0.02, n18
    assert abs(n48 - w48.PUBLISHED_PARAMS) / w48.PUBLISHED_PARAMS < 0.02, n48
    # exact figures pin the architecture: any change to a layer shows up here
    assert (n18, n48) == (12_080_036, 70_372_678)


@pytest.mark.parametrize("which", ["w18", "w48"])
def test_state_dict_round_trip(which: str, hrnet_w18_model: Any, hrnet_w48_model: Any) -> None:
    """save -> fresh instance (its own default init) -> load_state_dict(strict) -> same outputs."""
    model = hrnet_w18_model if which == "w18" else hrnet_w48_model
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    # the W18 copy is built in logits mode: one run checks the round trip and the argmax head
    fresh = w18.OCRNetHRNetW18(logits=True) if which == "w18" else w48.HRNetW48OCR()
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    x = torch.randn(*SMALL_SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = model(x), fresh(x)
    if which == "w18":
        assert got.shape == (1, 19, 64, 128) and got.dtype == torch.float32
        assert torch.equal(got.argmax(dim=1, keepdim=True), want)
    else:
        for a, b in zip(want, got, strict=False):
            assert torch.equal(a, b)


# ----------------------------------------------------------------------------- forward


def test_ocrnet_w18_label_map(hrnet_w18_export: Exported) -> None:
    (labels,) = hrnet_w18_export.torch_outputs
    assert labels.shape == (1, 1, 128, 256) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 19
    # random weights must still give a usable map: many classes, none covering everything
    counts = np.bincount(labels.ravel(), minlength=19)
    assert (counts > 0).sum() >= 5 and counts.max() < 0.9 * labels.size


def test_hrnet_w48_ocr_logits(hrnet_w48_export: Exported) -> None:
    outs = hrnet_w48_export.torch_outputs
    assert len(outs) == 2
    for out in outs:
        assert out.shape == (1, 19, 32, 64) and out.dtype == np.float32
        assert np.isfinite(out).all()
        assert 0.1 < float(out.std()) < 100.0  # O(1) logits, not collapsed, not exploding
        assert len(np.unique(out.argmax(axis=1))) >= 5


# ----------------------------------------------------------------------------- export


def _producers(graph: Any) -> dict[str, Any]:
    return {o: n for n in graph.node for o in n.output}


def _ancestors(graph: Any, tensor: str) -> list[Any]:
    """Every node ``tensor`` depends on."""
    prod = _producers(graph)
    seen: dict[str, Any] = {}
    stack = [tensor]
    while stack:
        node = prod.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(node.input)
    return list(seen.values())


def _attr(node: Any, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    "which, n_resize, coord_mode",
    [
        # 31 fuse-layer upsamplings + 4 resize_concat (the two heads' identical concat is
        # merged by the exporter's CSE) + the final resize to the input's size
        ("w18", 36, b"half_pixel"),
        # 31 fuse-layer upsamplings + the 3 branch upsamplings before the final concat
        ("w48", 34, b"align_corners"),
    ],
)
def test_export_graph_structure(
    which: str, n_resize: int, coord_mode: bytes, hrnet_w18_export: Exported, hrnet_w48_export: Exported
) -> None:
    exp, module = (hrnet_w18_export, w18) if which == "w18" else (hrnet_w48_export, w48)
    graph = exp.graph.graph
    onnx.checker.check_model(exp.graph)
    assert exp.graph.opset_import[0].version == 11
    assert [i.name for i in graph.input] == list(module.INPUT_NAMES)
    assert [o.name for o in graph.output] == list(module.OUTPUT_NAMES)

    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert len(resizes) == n_resize
    for node in resizes:
        assert _attr(node, "mode") == b"linear", node.name
        assert _attr(node, "coordinate_transformation_mode") == coord_mode, node.name
        # opset-11 Resize(X, roi, scales, sizes): the size is computed from a Shape at run time
        assert len(node.input) == 4 and node.input[3], node.name
        assert any(a.op_type == "Shape" for a in _ancestors(graph, node.input[3])), node.name

    ops = Counter(n.op_type for n in graph.node)
    assert ops["Conv"] == 316 and ops["Softmax"] == 2 and ops["MatMul"] == 3
    if which == "w18":
        assert ops["ArgMax"] == 1
        # the final Resize (to full resolution, then ArgMax) takes its size from the input x
        # (dynamic export; mmseg's encode_decode resizes to img.shape[2:])
        argmax = next(n for n in graph.node if n.op_type == "ArgMax")
        final = _producers(graph)[argmax.input[0]]
        assert final.op_type == "Resize"
        assert any(a.op_type == "Shape" and a.input[0] == "x" for a in _ancestors(graph, final.input[3]))
    else:
        assert "ArgMax" not in ops


@pytest.mark.slow
def test_ocrnet_w18_onnxruntime_matches_torch(hrnet_w18_export: Exported) -> None:
    (got,) = _run_ort(hrnet_w18_export, "x")
    (want,) = hrnet_w18_export.torch_outputs
    assert got.shape == want.shape and got.dtype == np.int64
    agreement = float((got == want).mean())
    assert agreement >= 0.99, agreement


@pytest.mark.slow
def test_hrnet_w48_ocr_onnxruntime_matches_torch(hrnet_w48_export: Exported) -> None:
    got = _run_ort(hrnet_w48_export, "image")
    for g, w in zip(got, hrnet_w48_export.torch_outputs, strict=True):
        assert g.shape == w.shape and g.dtype == np.float32
        scale = float(np.abs(w).max())
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * scale)
        assert float((g.argmax(axis=1) == w.argmax(axis=1)).mean()) >= 0.99


@pytest.mark.slow
def test_ocrnet_w18_onnx_runs_at_another_size(hrnet_w18_model: Any, hrnet_w18_export: Exported) -> None:
    """The dynamic export, run at a size it was not traced at, still matches PyTorch."""
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    (got,) = _run_ort(hrnet_w18_export, "x", x.numpy())
    with torch.no_grad():
        want = hrnet_w18_model(x).numpy()
    assert got.shape == want.shape == (1, 1, 64, 96)
    assert float((got == want).mean()) >= 0.99
