"""``ocrnet_hrnetw18``: mmsegmentation 0.x ``ocrnet_hr18_512x1024_160k_cityscapes``.

A ``CascadeEncoderDecoder``: HRNetV2-W18 backbone, then two decode heads in cascade::

    x [N,3,H,W] -> backbone -> [18@H/4, 36@H/8, 72@H/16, 144@H/32]
        decode_head.0  FCNHead (aux): resize_concat -> 1x1 ConvModule(270) -> conv_seg -> regions [N,19,H/4,W/4]
        decode_head.1  OCRHead: resize_concat -> 3x3 ConvModule(270->512) -> gather(regions)
                                -> object attention -> conv_seg -> logits [N,19,H/4,W/4]
    -> bilinear resize to x's H,W (size read from x at run time) -> argmax(dim=1, keepdim) int64 [N,1,H,W]

``state_dict()`` keys are the mmseg checkpoint's (``backbone.*``, ``decode_head.0.*``,
``decode_head.1.*``). mmseg computes resize sizes with Python ints; here they stay symbolic
(``x.shape[2:]``) so the legacy exporter writes Shape -> ... -> Resize chains. mmseg's fuse
layers also carry a parameter-free ``Upsample(scale_factor=2**(j-i))`` before the resize to
size; for inputs that are multiples of 32 that resize is the identity, so it is folded into
the single size-driven resize (no key changes). mmseg's ``inference`` puts a softmax before
the argmax; softmax is monotonic, so the label map is the same and the graph skips it.
"""

from __future__ import annotations

from typing import Sequence, cast

import torch
from torch import nn

from segc.errors import SegcError
from segc.models.hrnet import HRNetBackbone, centre_classifiers, concat_branches, init_weights, upsample_to
from segc.models.ocr_head import ConvModule, MMSegObjectAttentionBlock, SpatialGather

NAME = "ocrnet_hrnetw18"
INPUT_NAMES: tuple[str, ...] = ("x",)
OUTPUT_NAMES: tuple[str, ...] = ("output",)
SEED_SHAPE: tuple[int, int, int, int] = (1, 3, 1024, 2048)
SPATIAL_MULTIPLE = 32
#: OCRNet-HRNetV2-W18 parameter count as published (~12.1M); this module builds 12,080,036 (19 classes).
PUBLISHED_PARAMS = 12_100_000
NUM_CLASSES = 19
#: mmseg sets align_corners=False for HRNet and both heads
ALIGN_CORNERS = False

__all__ = [
    "NAME", "INPUT_NAMES", "OUTPUT_NAMES", "SEED_SHAPE", "SPATIAL_MULTIPLE", "PUBLISHED_PARAMS",
    "FCNHead", "OCRHead", "OCRNetHRNetW18", "build_model",
]


class FCNHead(nn.Module):
    """mmseg ``FCNHead`` as configured for OCRNet's auxiliary stage.

    ``num_convs=1, kernel_size=1, concat_input=False, dropout_ratio=-1``, input transform
    ``resize_concat`` over all four branches. Keys: ``convs.0.conv``, ``convs.0.bn``, ``conv_seg``.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, align_corners: bool = ALIGN_CORNERS) -> None:
        super().__init__()
        channels = sum(in_channels)
        self.align_corners = align_corners
        self.convs = nn.Sequential(ConvModule(channels, channels, kernel_size=1, padding=0))
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        x = concat_branches(inputs, self.align_corners, resize_first=True)
        return self.conv_seg(self.convs(x))


class OCRHead(nn.Module):
    """mmseg ``OCRHead`` (``channels=512, ocr_channels=256, scale=1``), resize_concat input.

    Keys: ``bottleneck.conv/.bn`` (3x3, 270->512), ``object_context_block.*``, ``conv_seg``;
    ``spatial_gather_module`` has no parameters.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        ocr_channels: int = 256,
        align_corners: bool = ALIGN_CORNERS,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.object_context_block = MMSegObjectAttentionBlock(channels, ocr_channels)
        self.spatial_gather_module = SpatialGather(scale=1)
        self.bottleneck = ConvModule(sum(in_channels), channels, kernel_size=3, padding=1)
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, inputs: list[torch.Tensor], prev_output: torch.Tensor) -> torch.Tensor:
        x = concat_branches(inputs, self.align_corners, resize_first=True)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_output)
        object_context = self.object_context_block(feats, context)
        return self.conv_seg(object_context)


class OCRNetHRNetW18(nn.Module):
    """The cascade segmentor. ``logits=False``: int64 label map [N,1,H,W]; else float [N,K,H,W]."""

    def __init__(self, num_classes: int = NUM_CLASSES, logits: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.logits = logits
        self.backbone = HRNetBackbone(width=18, align_corners=ALIGN_CORNERS)
        chans = self.backbone.out_channels
        self.decode_head = nn.ModuleList([FCNHead(chans, num_classes), OCRHead(chans, num_classes)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        regions = self.decode_head[0](feats)
        out = self.decode_head[1](feats, regions)
        # mmseg's encode_decode: resize to the input's size, computed from the input at run time
        out = upsample_to(out, x, ALIGN_CORNERS)
        if self.logits:
            return out
        return out.argmax(dim=1, keepdim=True)


def build_model(num_classes: int = NUM_CLASSES, logits: bool = False) -> nn.Module:
    """A randomly initialised OCRNet-HRNetV2-W18 in eval mode (seed torch's RNG first).

    Weights: ``segc.models.hrnet.init_weights`` (Kaiming convs, BN gamma 1, residual and fuse
    branches scaled down), then both classifiers' biases centred on one small random batch
    (``centre_classifiers``) so random-weight label maps use many classes.
    """
    if num_classes < 2:
        raise SegcError(f"{NAME}: num_classes must be >= 2, got {num_classes}")
    model = OCRNetHRNetW18(num_classes=num_classes, logits=logits)
    init_weights(model)
    centre_classifiers(model, [cast(nn.Module, head.conv_seg) for head in model.decode_head])
    return model.eval()
