"""Tiny torch heads that resize to another tensor's size (FPN/UPerNet) or from a 1x1 map (PSP).

Shared by the resize tests; exported with the legacy exporter and dynamic H, W, as users do.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TinyFPN(nn.Module):
    """Five stride-2 convs (total stride 32), then a top-down path with
    ``F.interpolate(p, size=f.shape[2:])`` at each level, as FPN / UPerNet decode heads do."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        chans = [3, c, c, c, c, c]
        self.down = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(5))
        self.head = nn.Conv2d(c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for conv in self.down:
            x = torch.relu(conv(x))
            feats.append(x)
        p = feats[-1]
        for f in reversed(feats[:-1]):
            p = f + F.interpolate(p, size=f.shape[2:], mode="bilinear", align_corners=False)
        return self.head(p)


class TinyPSP(nn.Module):
    """A PSP/ASPP-style global branch: pool to 1x1, conv, and resize back to the feature size."""

    def __init__(self, c: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, stride=2, padding=1)
        self.pool_conv = nn.Conv2d(c, c, 1)
        self.head = nn.Conv2d(2 * c, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.stem(x))
        g = self.pool_conv(F.adaptive_avg_pool2d(f, 1))
        g = F.interpolate(g, size=f.shape[2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([f, g], 1))


def export(module: nn.Module, path: Path, shape: tuple[int, int, int, int], opset: int = 11) -> Path:
    torch.manual_seed(0)
    module = module.eval()
    for p in module.parameters():
        nn.init.normal_(p, std=0.5)
    torch.onnx.export(
        module, torch.randn(*shape), str(path), input_names=["x"], output_names=["y"], opset_version=opset,
        dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}}, dynamo=False,
    )
    return path
