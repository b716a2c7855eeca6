"""Third-party architectures, built offline from tiny configs (random weights, no hub access).

The configs are the library's own classes with small widths and one block per stage, so an
export takes about a second (legacy) or 15 s (dynamo) on two cores; the graph structure
(attention with spatial reduction, ConvNext blocks, UperNet's PPM + FPN, MobileViT's unfold,
an FPN's Resize-to-each-lateral) is the full model's. Each builder returns a module that
maps pixels (N, 3, H, W) to logits, as an exporter needs it.

Sources: transformers' SegformerConfig, UperNetConfig, ConvNextConfig, MobileViTConfig,
ResNetConfig / ResNetBackbone (huggingface/transformers, src/transformers/models/*/).
timm is not used: it imports torchvision at load, which this project cannot install.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_LABELS = 5


class Logits(nn.Module):
    """A transformers ``*ForSemanticSegmentation`` as ``pixels -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def segformer() -> nn.Module:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], num_attention_heads=[1, 2, 4, 8],
                          decoder_hidden_size=64, num_labels=NUM_LABELS)
    return Logits(SegformerForSemanticSegmentation(cfg))


def upernet_convnext() -> nn.Module:
    from transformers import ConvNextConfig, UperNetConfig, UperNetForSemanticSegmentation

    backbone = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                              out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, hidden_size=32, pool_scales=[1], use_auxiliary_head=False,
                        num_labels=NUM_LABELS)
    return Logits(UperNetForSemanticSegmentation(cfg))


def mobilevit_deeplabv3() -> nn.Module:
    from transformers import MobileViTConfig, MobileViTForSemanticSegmentation

    cfg = MobileViTConfig(image_size=128, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 32, 32, 64],
                          num_attention_heads=2, aspp_out_channels=32, num_labels=NUM_LABELS)
    return Logits(MobileViTForSemanticSegmentation(cfg))


class ResNetFPN(nn.Module):
    """transformers' ResNetBackbone with a small FPN head written here.

    The top-down path upsamples each level to the *size of the next lateral*
    (``F.interpolate(size=lateral.shape[-2:])``), the pattern that exports as a
    Shape -> Slice -> Concat -> Resize(sizes) chain, and the logits go back to the input size.
    """

    def __init__(self) -> None:
        super().__init__()
        from transformers import ResNetBackbone, ResNetConfig

        widths = [16, 32, 64, 128]
        self.backbone = ResNetBackbone(ResNetConfig(embedding_size=16, hidden_sizes=widths, depths=[1, 1, 1, 1],
                                                    layer_type="basic",
                                                    out_features=["stage1", "stage2", "stage3", "stage4"]))
        self.lateral = nn.ModuleList(nn.Conv2d(c, 32, 1) for c in widths)
        self.head = nn.Conv2d(32, NUM_LABELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(pixel_values=x).feature_maps
        y = self.lateral[3](feats[3])
        for i in (2, 1, 0):
            y = self.lateral[i](feats[i]) + F.interpolate(y, size=feats[i].shape[-2:], mode="nearest")
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


BUILDERS = {
    "segformer": segformer,
    "upernet_convnext": upernet_convnext,
    "mobilevit_deeplabv3": mobilevit_deeplabv3,
    "resnet_fpn": ResNetFPN,
}
