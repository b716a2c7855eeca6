"""IntraDA / ADVENT DeepLabv2: dilated ResNet-101 (stride 8) with two ASPP-sum classifiers.

The seed (002) exports ADVENT's ``ResNetMulti`` (``get_deeplab_v2(num_classes=19,
multi_level=True)``), which IntraDA reuses unchanged, at opset 11 with input ``image``
[N, 3, 512, 1024] and two outputs [N, 19, 65, 129]. This module rebuilds it with the same
attribute names so that ADVENT/IntraDA checkpoints load strictly::

    image ─ conv1 7x7/2 ─ bn1 ─ relu ─ maxpool 3x3/2 (ceil) ─ layer1 ─ layer2 (/2, Caffe 1x1 stride)
          ─ layer3 (dilation 2) ─┬─ layer5: Σ conv3x3 d=6,12,18,24 (1024 -> C) ─ output1  [N,C,H/8+1,W/8+1]
                                 └─ layer4 (dilation 4) ─ layer6: Σ conv3x3 d=6..24 (2048 -> C) ─ output2

The "+1" comes from the ceil-mode max-pool (512x1024 -> 65x129). ``output2`` is the prediction;
``output1`` is the auxiliary (multi-level) head. All BatchNorm layers are affine but frozen, as
in ADVENT (trained with batch size 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segc.models.resnet import (
    RESNET101_BLOCKS,
    ResNet,
    ResNetConfig,
    calibrate_batchnorm,
    count_parameters,
    init_weights,
)

__all__ = [
    "ClassifierModule",
    "DeepLabV2",
    "INPUT_NAMES",
    "NAME",
    "OUTPUT_NAMES",
    "PUBLISHED_PARAMS",
    "SEED_SHAPE",
    "SPATIAL_MULTIPLE",
    "build_model",
]

NAME = "deeplabv2_r101"
INPUT_NAMES = ("image",)
OUTPUT_NAMES = ("output1", "output2")
SEED_SHAPE = (1, 3, 512, 1024)
#: Output size is ceil-based (H/8 + 1 for H a multiple of 8); any multiple of 8 keeps it regular.
SPATIAL_MULTIPLE = 8
#: DeepLabv2 ResNet-101 (multi-level, 19 classes) is reported at about 44M parameters
#: (ResNet-101 trunk 42.5M + ASPP classifiers 2.1M); published figures range from 43M to 45M.
PUBLISHED_PARAMS = 44_000_000
PUBLISHED_PARAMS_RANGE = (43_000_000, 45_000_000)

#: ASPP-style atrous rates (= paddings) of the four summed 3x3 classifier convs.
ASPP_RATES = (6, 12, 18, 24)

#: ADVENT's DeepLabv2 trunk: Caffe-style stride, dilated layer3/layer4, ceil-mode pool, frozen BN.
DEEPLABV2_CONFIG = ResNetConfig(
    blocks=RESNET101_BLOCKS,
    stride_in_1x1=True,
    strides=(1, 2, 1, 1),
    dilations=(1, 1, 2, 4),
    ceil_mode_pool=True,
    frozen_bn=True,
)


class ClassifierModule(nn.Module):
    """DeepLabv2's classifier: the *sum* of four dilated 3x3 convs (not a concatenation).

        x ─┬─ conv2d_list.0 (d=6)  ─┐
           ├─ conv2d_list.1 (d=12) ─┤
           ├─ conv2d_list.2 (d=18) ─┼─ Σ ─ logits
           └─ conv2d_list.3 (d=24) ─┘
    """

    def __init__(self, inplanes: int, rates: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, kernel_size=3, stride=1, padding=rate, dilation=rate, bias=True)
            for rate in rates
        )
        for conv in self.conv2d_list:
            assert isinstance(conv, nn.Conv2d) and conv.bias is not None
            # ADVENT's init for the classifier (N(0, 0.01)); on calibrated features the summed
            # logits have a std of a few tens, so argmax maps are varied, not one class.
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(ResNet):
    """ADVENT ``ResNetMulti`` (multi_level=True): returns (layer5 logits, layer6 logits)."""

    def __init__(self, num_classes: int = 19) -> None:
        super().__init__(DEEPLABV2_CONFIG)
        self.num_classes = num_classes
        self.layer5 = ClassifierModule(1024, ASPP_RATES, num_classes)
        self.layer6 = ClassifierModule(2048, ASPP_RATES, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        output1 = self.layer5(x)  # auxiliary segmentation map from layer3
        output2 = self.layer6(self.layer4(x))  # the prediction
        return output1, output2


def output_size(height: int, width: int) -> tuple[int, int]:
    """Logit map size for an input of ``height`` x ``width`` (the stem's ceil-mode pool adds the +1)."""

    def one(size: int) -> int:
        stem = (size + 2 * 3 - 7) // 2 + 1  # conv1 7x7/2 pad 3
        pooled = -(-(stem + 2 - 3) // 2) + 1  # maxpool 3x3/2 pad 1, ceil mode
        if (pooled - 1) * 2 >= stem + 1:  # PyTorch drops a last window that starts in the padding
            pooled -= 1
        return (pooled - 1) // 2 + 1  # layer2's 1x1 stride-2 conv

    return one(height), one(width)


def build_model(num_classes: int = 19) -> DeepLabV2:
    """Full-size DeepLabv2-R101 with seeded random weights (seed with ``torch.manual_seed`` first).

    Convs get He init and the BatchNorm statistics are calibrated on one random image so that
    logits are well spread (see ``segc.models.resnet.calibrate_batchnorm``); returned in eval mode.
    """
    model = DeepLabV2(num_classes)
    init_weights(model)
    for head in (model.layer5, model.layer6):  # He init above overwrote ADVENT's classifier init
        for conv in head.conv2d_list:
            assert isinstance(conv, nn.Conv2d)
            nn.init.normal_(conv.weight, 0.0, 0.01)
    # calibrate on inputs in the recipe's real range: Caffe-style mean subtraction without a std
    # leaves pixels at about +-128 (std ~60), and unit-variance calibration would let random-weight
    # logits reach ~1e5, beyond fp16's range, so no fp16 build could ever be checked
    calibrate_batchnorm(model, torch.randn(1, 3, 64, 64) * 60.0)
    return model.eval()


def parameter_count(model: nn.Module) -> int:
    """Parameter count as published (all parameters; every one is on the inference path)."""
    return count_parameters(model)
