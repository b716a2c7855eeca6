"""Bottleneck ResNet-50/101 in plain PyTorch, in the two flavours the seed models were trained with.

Why a home-made ResNet: the seeds come from research code bases (ADVENT/IntraDA's DeepLabv2 and
MhLiao's DB) whose checkpoints name every tensor after *their* module attributes, and whose
ResNets differ from torchvision's in ways that change the graph a vendor compiler sees:

* **where the stride sits** - Caffe-style (``stride_in_1x1=True``, DeepLabv2) strides the first
  1x1 conv of a downsampling block; PyTorch-style (DB, torchvision) strides the 3x3 conv;
* **dilation per stage** - DeepLabv2 keeps layer3/layer4 at stride 1 and dilates them (2, 4),
  so the trunk ends at 1/8 resolution instead of 1/32;
* **the stem** - DeepLabv2's max-pool uses ``ceil_mode`` (hence 65x129 logits at 512x1024);
* **deformable conv v2** - DB's ``deformable_resnet50`` replaces the 3x3 conv of every block in
  chosen stages by a modulated deformable conv fed by a sibling ``conv2_offset`` conv.

Attribute names (``conv1``, ``bn1``, ``layer1.0.conv2_offset``, ``layer2.0.downsample.1`` ...)
follow both code bases so that ``state_dict()`` keys match their released checkpoints.

A block, PyTorch-style, DCN on (``stride_in_1x1=True`` moves the stride to conv1)::

    x ─┬─ conv1 1x1 ─ bn1 ─ relu ─┬─ conv2_offset 3x3 (27 ch) ─┬─ [:18]  offset ─┐
       │                           │                            └─ [18:] sigmoid ─ mask
       │                           └────────────── conv2 (ModulatedDeformConv2d 3x3) ─ bn2 ─ relu
       │                                                        ─ conv3 1x1 ─ bn3 ─┐
       └─ [downsample: conv 1x1 (stride) ─ bn] ──────────────────────────── add ─ relu
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from segc.models.deform_conv import ModulatedDeformConv2d

__all__ = [
    "Bottleneck",
    "FrozenBatchNorm2d",
    "ResNet",
    "ResNetConfig",
    "calibrate_batchnorm",
    "count_parameters",
    "init_weights",
    "resnet50",
    "resnet101",
]

#: Blocks per stage of the two depths the seed models use.
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET101_BLOCKS = (3, 4, 23, 3)

#: DCNv2 with one deformable group on a 3x3 kernel: 2*9 offsets (dy, dx interleaved) + 9 mask logits.
DCN_OFFSET_CHANNELS = 27
_KERNEL_TAPS = 9

#: Pseudo-samples that pull a BatchNorm channel's calibrated statistics towards its layer's.
_SHRINK = 64.0


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running statistics and never trains.

    DeepLabv2 (ADVENT) fine-tunes with batch size 1, so its BatchNorm layers are affine but frozen:
    statistics are never updated and gamma/beta get no gradient. Subclassing ``nn.BatchNorm2d``
    (instead of torchvision's buffer-only FrozenBatchNorm2d) keeps the exact state_dict keys of
    the checkpoints (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``) and the standard ONNX ``BatchNormalization`` export.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        for param in self.parameters():
            param.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True) -> "FrozenBatchNorm2d":
        # Whatever the parent asks for, stay in eval mode: that *is* the frozen behaviour.
        return super().train(False)


def _norm(frozen: bool) -> type[nn.BatchNorm2d]:
    return FrozenBatchNorm2d if frozen else nn.BatchNorm2d


class Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1 -> 3x3 -> 1x1, expansion 4) with the options of both seeds.

    ``stride_in_1x1`` picks the Caffe-style layout (stride on ``conv1``) over the PyTorch-style one
    (stride on ``conv2``). ``dcn`` makes ``conv2`` a modulated deformable conv whose offsets and
    mask come from ``conv2_offset``; that conv carries the same stride and dilation as ``conv2``
    so its output grid is conv2's output grid, which ONNX ``DeformConv`` requires. (MhLiao/DB's
    own ``conv2_offset`` omits the stride; its CUDA kernel then reads the stride-2 block's offsets
    from a larger buffer. The parameter shapes are identical, so DB checkpoints still load.)
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        *,
        stride_in_1x1: bool = False,
        dcn: bool = False,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        norm = _norm(frozen_bn)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.with_dcn = dcn
        # Registration order = state_dict order: conv1, bn1, [conv2_offset], conv2, bn2, conv3, bn3, downsample.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride_1x1, bias=False)
        self.bn1 = norm(planes)
        if dcn:
            # Imported here so that the plain models never depend on the DCN module.
            from segc.models.deform_conv import ModulatedDeformConv2d

            self.conv2_offset = nn.Conv2d(
                planes, DCN_OFFSET_CHANNELS, kernel_size=3, stride=stride_3x3,
                padding=dilation, dilation=dilation, bias=True,
            )
            self.conv2: nn.Module = ModulatedDeformConv2d(
                planes, planes, kernel_size=3, stride=stride_3x3, padding=dilation,
                dilation=dilation, deformable_groups=1, bias=False,
            )
        else:
            self.conv2 = nn.Conv2d(
                planes, planes, kernel_size=3, stride=stride_3x3, padding=dilation,
                dilation=dilation, bias=False,
            )
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.dilation = dilation

    def _conv2(self, out: Tensor) -> Tensor:
        if not self.with_dcn:
            return self.conv2(out)
        offset_mask = self.conv2_offset(out)
        # DB's split: the first 18 channels are (dy, dx) pairs, the last 9 the mask logits.
        offset = offset_mask[:, : 2 * _KERNEL_TAPS]
        mask = torch.sigmoid(offset_mask[:, 2 * _KERNEL_TAPS :])
        return self.conv2(out, offset, mask)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self._conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@dataclass(frozen=True)
class ResNetConfig:
    """Everything that distinguishes the seeds' ResNets from one another.

    ``strides``/``dilations``/``dcn_stages`` are per stage (layer1..layer4). DeepLabv2:
    strides (1, 2, 1, 1), dilations (1, 1, 2, 4), Caffe-style, ceil-mode pool, frozen BN.
    DB: strides (1, 2, 2, 2), no dilation, PyTorch-style, DCN in layer2..layer4 when deformable.
    """

    blocks: tuple[int, int, int, int] = RESNET50_BLOCKS
    stride_in_1x1: bool = False
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    dilations: tuple[int, int, int, int] = (1, 1, 1, 1)
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    ceil_mode_pool: bool = False
    frozen_bn: bool = False

    def __post_init__(self) -> None:
        for field_name in ("blocks", "strides", "dilations", "dcn_stages"):
            if len(getattr(self, field_name)) != 4:
                raise ValueError(f"ResNetConfig.{field_name} needs one value per stage (4)")

    @property
    def output_stride(self) -> int:
        """Total stride of layer4's output (stem 4 x stage strides)."""
        total = 4
        for stride in self.strides:
            total *= stride
        return total


class ResNet(nn.Module):
    """The trunk shared by both seeds: stem + layer1..layer4; ``forward`` returns (c2, c3, c4, c5).

    Subclasses add their heads as further attributes (DeepLabv2's ``layer5``/``layer6``, DB's
    unused ``fc``/``smooth``) so that their keys sit next to ``conv1`` exactly as in the
    checkpoints.
    """

    # registered with add_module (their names are the checkpoints' keys)
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        norm = _norm(config.frozen_bn)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=config.ceil_mode_pool)
        widths = (64, 128, 256, 512)
        stages = zip(widths, config.blocks, config.strides, config.dilations, config.dcn_stages, strict=False)
        for index, (planes, blocks, stride, dilation, dcn) in enumerate(stages, start=1):
            self.add_module(f"layer{index}", self._make_layer(planes, blocks, stride, dilation, dcn))

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int, dcn: bool) -> nn.Sequential:
        config = self.config
        out_channels = planes * Bottleneck.expansion
        downsample = None
        # Both code bases add the projection whenever the shape changes; for Bottleneck stages
        # that is every first block (layer1 widens 64 -> 256), so ADVENT's extra "dilation in
        # (2, 4)" condition never adds one the shape rule would not.
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, kernel_size=1, stride=stride, bias=False),
                _norm(config.frozen_bn)(out_channels),
            )
        options = dict(stride_in_1x1=config.stride_in_1x1, dcn=dcn, frozen_bn=config.frozen_bn)
        layers: list[nn.Module] = [
            Bottleneck(self.inplanes, planes, stride, dilation, downsample, **options)
        ]
        self.inplanes = out_channels
        layers += [Bottleneck(self.inplanes, planes, 1, dilation, None, **options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5


def resnet50(**options: Any) -> ResNet:
    """ResNet-50 trunk; ``options`` are ResNetConfig fields other than ``blocks``."""
    return ResNet(ResNetConfig(blocks=RESNET50_BLOCKS, **options))


def resnet101(**options: Any) -> ResNet:
    """ResNet-101 trunk; ``options`` are ResNetConfig fields other than ``blocks``."""
    return ResNet(ResNetConfig(blocks=RESNET101_BLOCKS, **options))


def init_weights(module: nn.Module) -> None:
    """He-normal convs (fan_out, as torchvision), BN gamma 1 / beta 0, zero biases.

    Seeded random weights stand in for trained ones; they must keep activations in a sane range
    through 100+ layers so that the exported graph is verified on non-degenerate numbers.
    DCN offset convs are zero-initialised afterwards by their owners (as in DB).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
        elif _is_deform_conv(m):
            # Deformable conv: same He init as a plain conv of the same weight shape.
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _is_deform_conv(module: nn.Module) -> TypeGuard[ModulatedDeformConv2d]:
    """True for segc's ModulatedDeformConv2d, without importing that module for plain models."""
    deform = sys.modules.get("segc.models.deform_conv")
    return deform is not None and isinstance(module, deform.ModulatedDeformConv2d)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, example: Tensor) -> None:
    """Set every BatchNorm's running statistics to the statistics of its input on ``example``.

    Random weights with identity statistics (mean 0, var 1) let activations drift by orders of
    magnitude through a deep residual trunk, and the sigmoid/argmax heads then saturate: a
    verifier would compare constants. A trained network's BN layers normalise their actual
    inputs; this one data-dependent pass (in eval mode, so frozen layers work too) gives the
    random network the same property, layer by layer in execution order. The model is left in
    eval mode. Deterministic given ``example``.

    Deep layers see few positions per channel (layer4 of a 64x64 image is 2x2), and statistics
    of four numbers would blow up on the next input. Each channel's mean and variance are
    therefore shrunk towards the layer-wide ones with a weight of ``_SHRINK`` pseudo-samples:
    per-channel where there is plenty of data, per-layer where there is not.
    """
    handles = []

    def set_stats(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0].double().transpose(0, 1).flatten(1)  # [C, N*H*W]
        samples = x.shape[1]
        mean_c = x.mean(dim=1)
        var_c = x.var(dim=1, unbiased=False)
        mean_all = mean_c.mean()
        # Layer-wide variance around the layer-wide mean (includes the spread of channel means).
        var_all = (var_c + (mean_c - mean_all) ** 2).mean()
        weight = samples / (samples + _SHRINK)
        mean = weight * mean_c + (1 - weight) * mean_all
        var = weight * var_c + (1 - weight) * var_all
        assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())

    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            handles.append(m.register_forward_pre_hook(set_stats))
    try:
        model.eval()
        model(example)
    finally:
        for handle in handles:
            handle.remove()


def count_parameters(module: nn.Module, exclude: Iterable[str] = ()) -> int:
    """Parameters of ``module`` (buffers not counted), skipping names under the ``exclude`` prefixes."""
    prefixes: Sequence[str] = tuple(exclude)
    return sum(
        p.numel() for name, p in module.named_parameters() if not any(name.startswith(x) for x in prefixes)
    )
