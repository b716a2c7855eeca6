"""DBNet (MhLiao/DB) text detector: ResNet-50 or deformable ResNet-50 + SegDetector, eval path.

The seed (004) exports DB's ``SegDetectorModel`` from ``ic15_resnet50_deform_thre.yaml``
(backbone ``deformable_resnet50``, decoder ``SegDetector`` with ``adaptive=True``,
``in_channels=[256, 512, 1024, 2048]``, ``k=50``) at opset 10 with dynamic H and W; input
``input`` [N, 3, H, W], output ``output``: the sigmoid probability map [N, 1, H, W]. Two
variants live here:

* ``dbnet_r50``: plain ResNet-50 (what the seed guide actually deployed, having dropped the DCN);
* ``dbnet_r50_dcn``: DCNv2 in the 3x3 conv of every block of layer2..layer4 (13 blocks).

Module tree and state_dict keys follow DB's checkpoints with the DataParallel wrapper prefix
``model.module.`` removed (the zoo's loader strips it): ``backbone.*`` and ``decoder.*``. DB's
ResNet also defines ``fc`` (ImageNet classifier) and ``smooth`` (a 1x1 conv) that its forward
never uses, and the decoder's ``thresh`` head only runs in training; all three are present in
released checkpoints (NVIDIA TAO's OCDNet loader, for one, drops ``backbone.fc.*`` and
``backbone.smooth.*`` and maps ``decoder.thresh.*`` when importing them), so they are kept here
to load those checkpoints strictly. They never reach the exported graph.

The neck (SegDetector), eval path::

    c5 ─ in5 1x1 ──────────────┬──────────────────────────── out5 3x3 ─ up x8 ─┐
    c4 ─ in4 1x1 ─ + ◄─ up x2 ─┘ = out4 ─┬────────────────── out4 3x3 ─ up x4 ─┤
    c3 ─ in3 1x1 ─ + ◄─ up x2 ───────────┘ = out3 ─┬──────── out3 3x3 ─ up x2 ─┼─ concat ─ binarize ─ output
    c2 ─ in2 1x1 ─ + ◄─ up x2 ─────────────────────┘ = out2 ─ out2 3x3 ────────┘  (256 ch, 1/4)

    binarize: conv3x3 256->64, BN, ReLU, ConvT 2x2/2, BN, ReLU, ConvT 2x2/2 -> 1, Sigmoid

Every nearest upsampling computes its output size from the input's shape (``upsample_nearest``),
so the legacy exporter writes, per Resize, the shape chain the seed graph had (docs/seed_pipelines.md,
section 5)::

    x ─ Shape ─ Gather ─ Cast ─ Mul(factor) ─ Cast ─ Floor ─ Unsqueeze ─ Concat ─ Cast ─ Div ─ Concat ─ Resize.scales

which is exactly what segc's ``fold_resize_scales`` pass must fold for Ascend's shape ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segc.models.resnet import (
    RESNET50_BLOCKS,
    ResNet,
    ResNetConfig,
    calibrate_batchnorm,
    count_parameters,
    init_weights,
)

__all__ = [
    "DBNet",
    "DBResNet",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "SEED_SHAPE",
    "SPATIAL_MULTIPLE",
    "SegDetector",
    "VARIANTS",
    "VariantInfo",
    "build_model",
    "inference_parameter_count",
    "perturb_offsets",
    "calibrate_offsets",
    "upsample_nearest",
]

INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("output",)
#: The seed's nominal export shape; H and W are dynamic (ATC range 640~4096).
SEED_SHAPE = (1, 3, 640, 640)
#: The neck adds 1/32, 1/16, 1/8 and 1/4 maps after x2 upsampling: H and W must be multiples of 32.
SPATIAL_MULTIPLE = 32
#: Names of the parameters that a checkpoint holds but the inference graph never uses.
UNUSED_PREFIXES = ("backbone.fc.", "backbone.smooth.", "decoder.thresh.")

DB_IN_CHANNELS = (256, 512, 1024, 2048)
DB_INNER_CHANNELS = 256


@dataclass(frozen=True)
class VariantInfo:
    """The zoo-facing constants of one DBNet variant.

    ``published_params`` counts the inference path (backbone trunk + neck + binarize head), the
    figure usually quoted for DBNet-R50 (~25M); the checkpoint holds ~2.7M more (``fc``,
    ``smooth``, ``thresh``), see ``UNUSED_PREFIXES``.
    """

    name: str
    dcn: bool
    published_params: int
    input_names: tuple[str, ...] = INPUT_NAMES
    output_names: tuple[str, ...] = OUTPUT_NAMES
    seed_shape: tuple[int, int, int, int] = SEED_SHAPE
    spatial_multiple: int = SPATIAL_MULTIPLE
    dynamic_axes: tuple[int, ...] = (2, 3)


VARIANTS: dict[str, VariantInfo] = {
    "dbnet_r50": VariantInfo("dbnet_r50", dcn=False, published_params=25_100_000),
    # DCNv2 adds one 3x3 offset conv (planes -> 27, with bias) per block of layer2..4: +0.87M.
    "dbnet_r50_dcn": VariantInfo("dbnet_r50_dcn", dcn=True, published_params=26_000_000),
}
NAME = "dbnet_r50"
NAME_DCN = "dbnet_r50_dcn"
PUBLISHED_PARAMS = VARIANTS[NAME].published_params
PUBLISHED_PARAMS_DCN = VARIANTS[NAME_DCN].published_params


def upsample_nearest(x: Tensor, factor: int) -> Tensor:
    """Nearest upsampling by an integer ``factor`` whose output size is derived from ``x``'s shape.

    ``recompute_scale_factor=True`` makes PyTorch compute ``floor(size * factor)`` from the
    (traced) input shape instead of baking the scale in, so the legacy exporter emits the
    Shape -> Gather -> Cast -> Mul -> Cast -> Floor -> Unsqueeze -> Concat -> Div chain of the
    seed graph (a plain ``nn.Upsample(scale_factor=...)`` exports constant scales in torch 2.x).
    Numerically identical to ``nn.Upsample(scale_factor=factor, mode="nearest")``.
    """
    return F.interpolate(x, scale_factor=float(factor), mode="nearest", recompute_scale_factor=True)


class Upsample(nn.Module):
    """Parameter-free module form of ``upsample_nearest`` (keeps DB's Sequential indices)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return upsample_nearest(x, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode=nearest"


def _head(inner: int, bias: bool) -> nn.Sequential:
    """DB's binarize/thresh head: indices 0..7 as in the checkpoint (0 conv, 1 BN, 3 ConvT, 4 BN, 6 ConvT)."""
    quarter = inner // 4
    return nn.Sequential(
        nn.Conv2d(inner, quarter, 3, padding=1, bias=bias),
        nn.BatchNorm2d(quarter),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(quarter, quarter, 2, 2),
        nn.BatchNorm2d(quarter),
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(quarter, 1, 2, 2),
        nn.Sigmoid(),
    )


class SegDetector(nn.Module):
    """DB's decoder (FPN-style neck + probability head), inference path only.

    ``thresh`` (adaptive threshold head) is built when ``adaptive`` so checkpoints load strictly,
    but eval forward returns only the probability map, as DB's does.
    """

    def __init__(
        self,
        in_channels: tuple[int, int, int, int] = DB_IN_CHANNELS,
        inner_channels: int = DB_INNER_CHANNELS,
        bias: bool = False,
        adaptive: bool = True,
    ) -> None:
        super().__init__()
        quarter = inner_channels // 4
        self.in5 = nn.Conv2d(in_channels[3], inner_channels, 1, bias=bias)
        self.in4 = nn.Conv2d(in_channels[2], inner_channels, 1, bias=bias)
        self.in3 = nn.Conv2d(in_channels[1], inner_channels, 1, bias=bias)
        self.in2 = nn.Conv2d(in_channels[0], inner_channels, 1, bias=bias)
        self.out5 = nn.Sequential(nn.Conv2d(inner_channels, quarter, 3, padding=1, bias=bias), Upsample(8))
        self.out4 = nn.Sequential(nn.Conv2d(inner_channels, quarter, 3, padding=1, bias=bias), Upsample(4))
        self.out3 = nn.Sequential(nn.Conv2d(inner_channels, quarter, 3, padding=1, bias=bias), Upsample(2))
        self.out2 = nn.Conv2d(inner_channels, quarter, 3, padding=1, bias=bias)
        self.binarize = _head(inner_channels, bias)
        self.adaptive = adaptive
        if adaptive:
            self.thresh = _head(inner_channels, bias)

    def forward(self, features: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        c2, c3, c4, c5 = features
        in5 = self.in5(c5)
        out4 = upsample_nearest(in5, 2) + self.in4(c4)  # 1/16
        out3 = upsample_nearest(out4, 2) + self.in3(c3)  # 1/8
        out2 = upsample_nearest(out3, 2) + self.in2(c2)  # 1/4
        fuse = torch.cat((self.out5(in5), self.out4(out4), self.out3(out3), self.out2(out2)), dim=1)
        return self.binarize(fuse)


class DBResNet(ResNet):
    """DB's ResNet-50 backbone: the trunk plus the unused ``fc`` and ``smooth`` of its checkpoints."""

    def __init__(self, dcn: bool = False) -> None:
        super().__init__(
            ResNetConfig(blocks=RESNET50_BLOCKS, stride_in_1x1=False, dcn_stages=(False, dcn, dcn, dcn))
        )
        # Never called in forward; kept so released checkpoints load strictly.
        self.fc = nn.Linear(2048, 1000)
        self.smooth = nn.Conv2d(2048, 256, kernel_size=1, stride=1, padding=1)


class DBNet(nn.Module):
    """``SegDetectorModel`` without its DataParallel wrapper: ``backbone`` + ``decoder``."""

    def __init__(self, dcn: bool = False) -> None:
        super().__init__()
        self.dcn = dcn
        self.backbone = DBResNet(dcn=dcn)
        self.decoder = SegDetector()

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.backbone(x))


def _zero_offsets(model: DBNet) -> None:
    """DB zero-initialises every ``conv2_offset``: offsets 0 and mask sigmoid(0) = 0.5 at start."""
    for m in model.modules():
        offset = getattr(m, "conv2_offset", None)
        if isinstance(offset, nn.Conv2d):
            assert offset.bias is not None  # DB's offset convs have a bias
            nn.init.zeros_(offset.weight)
            nn.init.zeros_(offset.bias)


@torch.no_grad()
def perturb_offsets(model: nn.Module, std: float = 0.02, generator: torch.Generator | None = None) -> int:
    """Give every ``conv2_offset`` random weights so the deformable convs really deform.

    A freshly built ``dbnet_r50_dcn`` has zero offsets (as DB trains from), where DCNv2 reduces
    to a plain conv times 0.5 and a verifier could not tell a wrong sampling rule from a right
    one. Call this (tests, benchmarks) to get offsets of about a pixel and masks away from 0.5.
    Returns the number of offset convs changed.
    """
    changed = 0
    for m in model.modules():
        conv = getattr(m, "conv2_offset", None)
        if isinstance(conv, nn.Conv2d):
            assert conv.bias is not None  # DB's offset convs have a bias
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.5)
            changed += 1
    return changed


@torch.no_grad()
def calibrate_offsets(model: nn.Module, example: torch.Tensor, pixels: float = 0.5,
                      generator: torch.Generator | None = None) -> int:
    """Random offset convs whose offsets are about ``pixels`` pixels in *every* layer.

    ``perturb_offsets`` uses one weight scale for all layers, and deep layers, whose inputs are
    larger, then sample tens of pixels away: the random-weight network turns chaotic (its own
    fp32 and fp64 outputs disagree), and no verifier can judge a rewrite of it. Here each
    offset conv's weights are scaled, while one forward pass runs, by the RMS of the input it
    actually sees. Returns the number of offset convs set.
    """
    handles = []
    count = 0

    def scale_to_input(conv: nn.Conv2d, inputs: tuple[torch.Tensor, ...]) -> None:
        fan_in = conv.weight[0].numel()
        rms = float(inputs[0].pow(2).mean().sqrt()) or 1.0
        assert conv.bias is not None  # the hooked convs all have one
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (pixels / (rms * fan_in ** 0.5)))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * pixels)

    for m in model.modules():
        conv = getattr(m, "conv2_offset", None)
        if isinstance(conv, nn.Conv2d):
            handles.append(conv.register_forward_pre_hook(scale_to_input))
            count += 1
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    return count


def build_model(dcn: bool = False) -> DBNet:
    """Full-size DBNet-R50 (``dcn=True``: deformable) with seeded random weights, in eval mode.

    Seed with ``torch.manual_seed`` first. Convs get He init (fan_out), BN gamma 1, and the BN
    statistics are calibrated on one random image (``calibrate_batchnorm``) so the probability
    map is spread over (0, 1) rather than saturated. Offset convs are zero as in DB.
    """
    model = DBNet(dcn=dcn)
    init_weights(model)
    _zero_offsets(model)
    # The heads end in ConvT(64 -> 1, 2x2/2) + Sigmoid: each output pixel sums 64 calibrated
    # ReLU features (E[x^2] ~ 0.5), so weight std 0.3 gives logits of std ~1.7 - a probability
    # map spread over (0, 1), neither saturated nor stuck at 0.5.
    for head in (model.decoder.binarize, model.decoder.thresh):
        last = head[6]
        assert isinstance(last, nn.ConvTranspose2d)
        nn.init.normal_(last.weight, 0.0, 0.3)
    calibrate_batchnorm(model, torch.randn(1, 3, 64, 64))
    return model.eval()


def inference_parameter_count(model: nn.Module) -> int:
    """Parameters on the inference path (what "DBNet-R50 ~25M" counts): all but fc, smooth, thresh."""
    return count_parameters(model, exclude=UNUSED_PREFIXES)
