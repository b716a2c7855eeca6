"""OCR (object-contextual representations) building blocks, in both seed naming schemes.

OCR refines per-pixel features with class-level context (Yuan et al., ECCV 2020)::

    feats [N,C,H,W] --------------------------------------------+-----------------+
    soft object regions [N,K,H,W] (a coarse head's logits)      |                 |
        |                                                       v                 |
        +--> SpatialGather: softmax over pixels, weighted  --> context [N,C,K,1]  |
             sum of feats per class                             |                 |
                                                                v                 v
    ObjectAttention: query = proj(feats), key/value = proj(context);        concat(context', feats)
                     attention over the K regions, out-projected -> context'  -> 1x1 conv+BN+ReLU

The math is the same in mmsegmentation and in HRNet-Semantic-Segmentation; the module names
(and so the checkpoint keys) are not:

| role                 | mmseg ``ObjectAttentionBlock``   | HRNet-Seg ``SpatialOCR_Module`` (``ocb`` =   |
|                      |                                  | ``object_context_block``): conv / BN keys    |
|----------------------|----------------------------------|----------------------------------------------|
| query projection x2  | ``query_project.{0,1}.conv/.bn`` | ``ocb.f_pixel.{0,2}`` / ``ocb.f_pixel.{1,3}.0`` |
| key projection x2    | ``key_project.{0,1}.conv/.bn``   | ``ocb.f_object.{0,2}`` / ``.{1,3}.0``        |
| value projection     | ``value_project.conv/.bn``       | ``ocb.f_down.0`` / ``ocb.f_down.1.0``        |
| out projection       | ``out_project.conv/.bn``         | ``ocb.f_up.0`` / ``ocb.f_up.1.0``            |
| fuse (2C -> C)       | ``bottleneck.conv/.bn``          | ``conv_bn_dropout.0`` / ``.1.0`` (+Dropout2d) |

``ConvModule`` reproduces mmcv's conv/bn/activate naming; ``seq_projection`` the HRNet-Seg
``nn.Sequential(conv, nn.Sequential(BN, ReLU), ...)`` layout. The attention itself is one
function, ``object_attention``, used by both blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvModule",
    "BNReLU",
    "seq_projection",
    "mmcv_projection",
    "SpatialGather",
    "object_attention",
    "MMSegObjectAttentionBlock",
    "HRNetObjectAttentionBlock",
    "SpatialOCRModule",
]


# ----------------------------------------------------------------------------- conv units


class ConvModule(nn.Module):
    """mmcv's ``ConvModule`` with BN and ReLU: keys ``conv.weight``, ``bn.{weight,bias,...}``.

    The conv has no bias because a BatchNorm follows (mmcv's ``bias='auto'``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


def BNReLU(channels: int) -> nn.Sequential:  # noqa: N802 - named after HRNet-Seg's ModuleHelper.BNReLU
    """HRNet-Seg's ``ModuleHelper.BNReLU``: ``Sequential(BatchNorm2d, ReLU)`` (keys ``0.*``)."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())


def seq_projection(in_ch: int, out_ch: int, num_convs: int) -> nn.Sequential:
    """HRNet-Seg projection: flat ``Sequential(conv1x1, BNReLU, conv1x1, BNReLU, ...)``."""
    layers: list[nn.Module] = []
    for k in range(num_convs):
        layers += [nn.Conv2d(in_ch if k == 0 else out_ch, out_ch, 1, 1, 0, bias=False), BNReLU(out_ch)]
    return nn.Sequential(*layers)


def mmcv_projection(in_ch: int, out_ch: int, num_convs: int) -> nn.Module:
    """mmseg ``SelfAttentionBlock.build_project``: one ConvModule, or a Sequential of them."""
    convs = [ConvModule(in_ch if k == 0 else out_ch, out_ch, 1) for k in range(num_convs)]
    return convs[0] if num_convs == 1 else nn.Sequential(*convs)


# ----------------------------------------------------------------------------- OCR pieces


class SpatialGather(nn.Module):
    """Class-level context: per class k, the softmax(over pixels)-weighted mean of the features.

    feats [N,C,H,W], probs [N,K,H,W] -> context [N,C,K,1]. No parameters. ``scale`` multiplies
    the region logits before the softmax (1 in both seeds; kept because both graphs carry it).
    """

    def __init__(self, scale: float = 1) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n, k = probs.size(0), probs.size(1)
        probs = probs.view(n, k, -1)  # N,K,HW
        feats = feats.view(n, feats.size(1), -1).permute(0, 2, 1)  # N,HW,C
        probs = F.softmax(self.scale * probs, dim=2)  # over pixels
        context = torch.matmul(probs, feats)  # N,K,C
        return context.permute(0, 2, 1).contiguous().unsqueeze(3)  # N,C,K,1


def object_attention(
    query_feats: torch.Tensor,
    key_feats: torch.Tensor,
    query_proj: nn.Module,
    key_proj: nn.Module,
    value_proj: nn.Module,
    out_proj: nn.Module,
    key_channels: int,
) -> torch.Tensor:
    """Pixel-to-region attention shared by both OCR variants.

    query_feats [N,C,H,W] (pixels), key_feats [N,C,K,1] (regions) -> [N,C_out,H,W].
    sim = softmax(q^T k / sqrt(key_channels)) over the K regions; context = sim @ v.
    """
    n = query_feats.size(0)
    query = query_proj(query_feats).view(n, key_channels, -1).permute(0, 2, 1)  # N,HW,Ck
    key = key_proj(key_feats).view(n, key_channels, -1)  # N,Ck,K
    value = value_proj(key_feats).view(n, key_channels, -1).permute(0, 2, 1)  # N,K,Ck
    sim = torch.matmul(query, key) * (key_channels**-0.5)
    sim = F.softmax(sim, dim=-1)
    context = torch.matmul(sim, value).permute(0, 2, 1).contiguous()  # N,Ck,HW
    context = context.view(n, key_channels, *query_feats.shape[2:])
    return out_proj(context)


class MMSegObjectAttentionBlock(nn.Module):
    """mmseg ``ObjectAttentionBlock`` (scale 1): attention + ``bottleneck`` fuse, mmcv naming."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.key_project = mmcv_projection(in_channels, key_channels, 2)
        self.query_project = mmcv_projection(in_channels, key_channels, 2)
        self.value_project = mmcv_projection(in_channels, key_channels, 1)
        self.out_project = mmcv_projection(key_channels, in_channels, 1)
        self.bottleneck = ConvModule(in_channels * 2, in_channels, 1)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        context = object_attention(
            query_feats, key_feats, self.query_project, self.key_project,
            self.value_project, self.out_project, self.key_channels,
        )
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


class HRNetObjectAttentionBlock(nn.Module):
    """HRNet-Seg ``_ObjectAttentionBlock`` (scale 1): ``f_pixel``, ``f_object``, ``f_down``, ``f_up``."""

    def __init__(self, in_channels: int, key_channels: int) -> None:
        super().__init__()
        self.key_channels = key_channels
        self.f_pixel = seq_projection(in_channels, key_channels, 2)
        self.f_object = seq_projection(in_channels, key_channels, 2)
        self.f_down = seq_projection(in_channels, key_channels, 1)
        self.f_up = seq_projection(key_channels, in_channels, 1)

    def forward(self, x: torch.Tensor, proxy: torch.Tensor) -> torch.Tensor:
        return object_attention(x, proxy, self.f_pixel, self.f_object, self.f_down, self.f_up, self.key_channels)


class SpatialOCRModule(nn.Module):
    """HRNet-Seg ``SpatialOCR_Module``: attention, then ``conv_bn_dropout`` on [context, feats].

    The Dropout2d is kept (it is in the checkpoint's module tree, as index 2) and is an
    identity in eval mode, so the exported graph has no trace of it.
    """

    def __init__(self, in_channels: int, key_channels: int, out_channels: int, dropout: float = 0.05) -> None:
        super().__init__()
        self.object_context_block = HRNetObjectAttentionBlock(in_channels, key_channels)
        self.conv_bn_dropout = nn.Sequential(
            nn.Conv2d(2 * in_channels, out_channels, kernel_size=1, padding=0, bias=False),
            BNReLU(out_channels),
            nn.Dropout2d(dropout),
        )

    def forward(self, feats: torch.Tensor, proxy_feats: torch.Tensor) -> torch.Tensor:
        context = self.object_context_block(feats, proxy_feats)
        return self.conv_bn_dropout(torch.cat([context, feats], 1))
