"""``hrnet_w48_ocr``: HRNetV2-W48 + OCR from HRNet-Semantic-Segmentation (the seeds' "3D_HRNet").

``lib/models/seg_hrnet_ocr.py`` (branch HRNet-OCR), Cityscapes config (19 classes,
``ALIGN_CORNERS=True``, OCR mid 512 / key 256 channels, dropout 0.05)::

    image [N,3,H,W] -> HRNetV2-W48 -> [48@H/4, 96@H/8, 192@H/16, 384@H/32]
      -> upsample x1, x2, x3 to x0's size (bilinear, size from x0 at run time) -> concat: feats 720@H/4
      aux_head:   1x1 conv(720) + BN + ReLU -> 1x1 conv -> output1 [N,19,H/4,W/4]  (soft object regions)
      conv3x3_ocr: 3x3 conv(720->512) + BN + ReLU
      ocr_gather_head(feats, output1) -> context; ocr_distri_head(feats, context) -> 512@H/4
      cls_head:   1x1 conv -> output2 [N,19,H/4,W/4]

The three upsamplings before the concat are the Resizes the 3D_HRNet guide switched to nearest;
they must appear as linear Resizes (``coordinate_transformation_mode=align_corners``) in the
exported graph. ``state_dict()`` keys equal the repository's model keys (the released .pth adds
a ``model.`` prefix that the zoo's weight loader strips). The model is the backbone class itself
(subclass), so the backbone keys sit at the top level as in the original.
"""

from __future__ import annotations

import torch
from torch import nn

from segc.errors import SegcError
from segc.models.hrnet import HRNetBackbone, centre_classifiers, concat_branches, init_weights
from segc.models.ocr_head import SpatialGather, SpatialOCRModule

NAME = "hrnet_w48_ocr"
INPUT_NAMES: tuple[str, ...] = ("image",)
OUTPUT_NAMES: tuple[str, ...] = ("output1", "output2")
SEED_SHAPE: tuple[int, int, int, int] = (1, 3, 1024, 2048)
SPATIAL_MULTIPLE = 32
#: HRNetV2-W48 + OCR as published (70.3M); this module builds 70,372,678 (19 classes).
PUBLISHED_PARAMS = 70_300_000
NUM_CLASSES = 19
#: HRNet-Seg's config default MODEL.ALIGN_CORNERS (the Cityscapes OCR yaml keeps it)
ALIGN_CORNERS = True
OCR_MID_CHANNELS = 512
OCR_KEY_CHANNELS = 256
OCR_DROPOUT = 0.05

__all__ = [
    "NAME", "INPUT_NAMES", "OUTPUT_NAMES", "SEED_SHAPE", "SPATIAL_MULTIPLE", "PUBLISHED_PARAMS",
    "HRNetW48OCR", "build_model",
]


class HRNetW48OCR(HRNetBackbone):
    """``HighResolutionNet`` with the OCR head; forward returns (aux logits, OCR logits)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(width=48, align_corners=ALIGN_CORNERS)
        last_ch = sum(self.out_channels)  # 720
        self.num_classes = num_classes
        self.conv3x3_ocr = nn.Sequential(
            nn.Conv2d(last_ch, OCR_MID_CHANNELS, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(OCR_MID_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.ocr_gather_head = SpatialGather(scale=1)
        self.ocr_distri_head = SpatialOCRModule(
            in_channels=OCR_MID_CHANNELS, key_channels=OCR_KEY_CHANNELS,
            out_channels=OCR_MID_CHANNELS, dropout=OCR_DROPOUT,
        )
        self.cls_head = nn.Conv2d(OCR_MID_CHANNELS, num_classes, kernel_size=1, stride=1, padding=0, bias=True)
        self.aux_head = nn.Sequential(
            nn.Conv2d(last_ch, last_ch, kernel_size=1, stride=1, padding=0),
            nn.BatchNorm2d(last_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_ch, num_classes, kernel_size=1, stride=1, padding=0, bias=True),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        feats = concat_branches(self.backbone_features(x), self.align_corners, resize_first=False)
        out_aux = self.aux_head(feats)
        feats = self.conv3x3_ocr(feats)
        context = self.ocr_gather_head(feats, out_aux)
        feats = self.ocr_distri_head(feats, context)
        out = self.cls_head(feats)
        return out_aux, out


def build_model(num_classes: int = NUM_CLASSES) -> nn.Module:
    """A randomly initialised HRNetV2-W48-OCR in eval mode (seed torch's RNG first).

    Weights: ``segc.models.hrnet.init_weights`` (Kaiming convs, BN gamma 1, residual and fuse
    branches scaled down), then the two classifiers' biases centred on one small random batch
    (``centre_classifiers``) so random-weight logits pick many classes.
    """
    if num_classes < 2:
        raise SegcError(f"{NAME}: num_classes must be >= 2, got {num_classes}")
    model = HRNetW48OCR(num_classes=num_classes)
    init_weights(model)
    centre_classifiers(model, [model.aux_head[3], model.cls_head])
    return model.eval()
