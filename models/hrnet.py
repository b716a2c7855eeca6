"""HRNetV2 backbone (W18 / W48), plain PyTorch, shared by the two HRNet seed models.

Why one implementation serves two checkpoints: mmsegmentation's ``HRNet`` and the original
HRNet-Semantic-Segmentation ``HighResolutionNet`` build the same modules under the same
attribute names (``conv1``, ``bn1``, ``layer1``, ``transition1``, ``stage2.0.branches`` ...,
``stage2.0.fuse_layers.i.j``), so their state-dict keys agree below the prefix the wrapping
model adds (mmseg nests the backbone under ``backbone.``; HRNet-Seg puts it at the top level).
The two differ only in the interpolation flag (mmseg: ``align_corners=False``; HRNet-Seg:
``ALIGN_CORNERS=True`` from its default config), which is a constructor argument here.

Shape of the network (H, W = input size; every branch keeps its resolution throughout)::

    x -> conv1/bn1/relu (1/2) -> conv2/bn2/relu (1/4) -> layer1 (4 Bottlenecks, 256 ch)
      -> transition1 -> stage2 (2 branches: 1/4, 1/8)
      -> transition2 -> stage3 (3 branches: ..., 1/16)
      -> transition3 -> stage4 (4 branches: ..., 1/32)  -> [x0, x1, x2, x3]

Each ``HighResolutionModule`` runs its branches, then *fuses*: output branch i sums every
input branch j, brought to branch i's resolution by strided 3x3 convs (j < i) or by a 1x1 conv
followed by a bilinear resize to x[i]'s size (j > i). The resize takes its size from
``x[i].shape`` at run time on purpose: the legacy ONNX exporter then emits
Shape -> Gather -> ... -> Resize chains, exactly the kind of graph the seed scripts had to
deal with, and which segc's passes must handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "HighResolutionModule",
    "HRNetBackbone",
    "StageSpec",
    "hrnet_stage_specs",
    "upsample_to",
    "concat_branches",
    "init_weights",
    "centre_classifiers",
    "RESIDUAL_GAMMA",
]


# ----------------------------------------------------------------------------- blocks


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """3x3 conv without bias (a BatchNorm always follows)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs). Keys: conv1, bn1, conv2, bn2, downsample.{0,1}."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1; expansion 4), stride on the 3x3 ("pytorch" style)."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def _make_blocks(
    block: type[BasicBlock] | type[Bottleneck], in_ch: int, planes: int, count: int, stride: int = 1
) -> nn.Sequential:
    """``count`` blocks; the first gets a 1x1 conv+BN shortcut when the width or stride changes."""
    out_ch = planes * block.expansion
    downsample: nn.Module | None = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    layers: list[nn.Module] = [block(in_ch, planes, stride, downsample)]
    layers += [block(out_ch, planes) for _ in range(1, count)]
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- resize helpers


def upsample_to(x: torch.Tensor, ref: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Bilinear resize of ``x`` to ``ref``'s spatial size, the size read from ``ref`` at run time.

    Both source repositories size these resizes from the target tensor's shape (never from a
    constant scale factor); keeping ``ref.shape[2:]`` symbolic is what makes the exported graph
    carry Shape-derived Resize inputs.
    """
    return F.interpolate(x, size=ref.shape[2:], mode="bilinear", align_corners=align_corners)


def concat_branches(
    feats: Sequence[torch.Tensor], align_corners: bool, resize_first: bool = False
) -> torch.Tensor:
    """Upsample every branch to branch 0's resolution and concatenate along channels.

    ``resize_first`` also resizes branch 0 to its own size: mmseg's ``resize_concat`` input
    transform does that (an identity Resize in the graph, one per decode head); HRNet-Seg
    does not.
    """
    ref = feats[0]
    parts = [upsample_to(ref, ref, align_corners) if resize_first else ref]
    parts += [upsample_to(f, ref, align_corners) for f in feats[1:]]
    return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------- HR module


class HighResolutionModule(nn.Module):
    """Parallel branches followed by all-to-all fusion (keys: ``branches``, ``fuse_layers``).

    ``fuse_layers[i][j]`` brings branch j to branch i:

        j > i:  1x1 conv + BN (channels j -> i), then bilinear resize to x[i]'s size (forward)
        j == i: None (identity)
        j < i:  (i - j) strided 3x3 conv + BN, with ReLU after all but the last
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        in_channels: Sequence[int],
        num_channels: Sequence[int],
        align_corners: bool,
        multiscale_output: bool = True,
    ) -> None:
        super().__init__()
        n = len(num_blocks)
        if not (len(in_channels) == len(num_channels) == n):
            raise ValueError(
                f"HighResolutionModule: {n} branches but {len(in_channels)} inputs, {len(num_channels)} widths"
            )
        self.num_branches = n
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            _make_blocks(block, in_channels[b], num_channels[b], num_blocks[b]) for b in range(n)
        )
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers = self._make_fuse_layers(self.out_channels, multiscale_output) if n > 1 else None
        self.relu = nn.ReLU(inplace=False)

    @staticmethod
    def _make_fuse_layers(ch: Sequence[int], multiscale_output: bool) -> nn.ModuleList:
        n = len(ch)
        rows: list[nn.ModuleList] = []
        for i in range(n if multiscale_output else 1):
            row: list[nn.Module | None] = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(ch[j], ch[i], 1, 1, 0, bias=False), nn.BatchNorm2d(ch[i])))
                elif j == i:
                    row.append(None)
                else:
                    steps: list[nn.Module] = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        out_ch = ch[i] if last else ch[j]
                        step: list[nn.Module] = [nn.Conv2d(ch[j], out_ch, 3, 2, 1, bias=False), nn.BatchNorm2d(out_ch)]
                        if not last:
                            step.append(nn.ReLU(inplace=False))
                        steps.append(nn.Sequential(*step))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(cast(list[nn.Module], row)))  # None entries: torch keeps them
        return nn.ModuleList(rows)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [branch(t) for branch, t in zip(self.branches, x, strict=False)]
        if self.fuse_layers is None:
            return x
        fused: list[torch.Tensor] = []
        for i, row in enumerate(cast(list[nn.ModuleList], self.fuse_layers)):
            # Start from branch 0 (not from a literal 0) so the graph has no Add-with-zero.
            y = x[0] if i == 0 else row[0](x[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + x[j]
                elif j > i:
                    y = y + upsample_to(row[j](x[j]), x[i], self.align_corners)
                else:
                    y = y + row[j](x[j])
            fused.append(self.relu(y))
        return fused


# ----------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class StageSpec:
    """One HRNet stage, as in both repositories' configs."""

    num_modules: int
    block: str
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]


def hrnet_stage_specs(width: int) -> tuple[StageSpec, StageSpec, StageSpec, StageSpec]:
    """The HRNetV2 stage layout for base width ``width`` (18 -> W18, 48 -> W48).

    Stage 1 is four Bottlenecks of 64 planes; stages 2-4 have 1, 4, 3 modules of four
    BasicBlocks per branch, widths (w, 2w), (w, 2w, 4w), (w, 2w, 4w, 8w).
    """
    if width <= 0:
        raise ValueError(f"HRNet width must be positive, got {width}")
    w = width
    return (
        StageSpec(1, "BOTTLENECK", (4,), (64,)),
        StageSpec(1, "BASIC", (4, 4), (w, 2 * w)),
        StageSpec(4, "BASIC", (4, 4, 4), (w, 2 * w, 4 * w)),
        StageSpec(3, "BASIC", (4, 4, 4, 4), (w, 2 * w, 4 * w, 8 * w)),
    )


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Transition unit ``Sequential(conv3x3, BN, ReLU)`` (keys ``0.weight``, ``1.*``)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)
    )


class HRNetBackbone(nn.Module):
    """HRNetV2 backbone: returns the four branch outputs (strides 4, 8, 16, 32).

    Attribute names follow both source repositories so ``state_dict()`` keys match their
    checkpoints (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1``, ``transition{1,2,3}``,
    ``stage{2,3,4}``). Subclass it to get the keys at the top level (HRNet-Seg), or hold it
    as ``self.backbone`` to get the ``backbone.`` prefix (mmseg).
    """

    def __init__(self, width: int = 18, in_channels: int = 3, align_corners: bool = False) -> None:
        super().__init__()
        self.width = width
        self.align_corners = align_corners
        specs = hrnet_stage_specs(width)

        # Stem: two stride-2 3x3 convs -> 1/4 resolution, 64 channels.
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)

        s1 = specs[0]
        block1 = _BLOCKS[s1.block]
        self.layer1 = _make_blocks(block1, 64, s1.num_channels[0], s1.num_blocks[0])
        pre: list[int] = [s1.num_channels[0] * block1.expansion]

        self.stage_specs = specs
        self.transition1, self.stage2, pre = self._make_transition_and_stage(pre, specs[1])
        self.transition2, self.stage3, pre = self._make_transition_and_stage(pre, specs[2])
        self.transition3, self.stage4, pre = self._make_transition_and_stage(pre, specs[3])
        #: channels of the four outputs, e.g. [18, 36, 72, 144] for W18
        self.out_channels: list[int] = list(pre)

    def _make_transition_and_stage(
        self, pre: list[int], spec: StageSpec
    ) -> tuple[nn.ModuleList, nn.Sequential, list[int]]:
        block = _BLOCKS[spec.block]
        cur = [c * block.expansion for c in spec.num_channels]
        transition = self._make_transition(pre, cur)
        modules: list[HighResolutionModule] = []
        in_ch = list(cur)
        for _ in range(spec.num_modules):
            mod = HighResolutionModule(block, spec.num_blocks, in_ch, spec.num_channels, self.align_corners)
            modules.append(mod)
            in_ch = mod.out_channels
        return transition, nn.Sequential(*modules), in_ch

    @staticmethod
    def _make_transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        """Adapt existing branches (3x3 conv if the width changes) and spawn new ones.

        A new branch i is made from the last existing branch by (i + 1 - len(pre)) stride-2
        3x3 convs; in HRNetV2 that is always exactly one.
        """
        layers: list[nn.Module | None] = []
        for i, out_ch in enumerate(cur):
            if i < len(pre):
                # same width: pass through (None); else a 3x3 conv re-widths the branch
                layers.append(_conv_bn_relu(pre[i], out_ch, stride=1) if out_ch != pre[i] else None)
            else:
                steps: list[nn.Module] = []
                for k in range(i + 1 - len(pre)):
                    in_ch = pre[-1]
                    o = out_ch if k == i - len(pre) else in_ch
                    steps.append(_conv_bn_relu(in_ch, o, stride=2))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(cast(list[nn.Module], layers))  # None: the branch passes through

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for i, layer in enumerate(transition):
            if i < len(feats):
                out.append(feats[i] if layer is None else layer(feats[i]))
            else:  # a new, lower-resolution branch grows from the lowest existing one
                out.append(layer(feats[-1]))
        return out

    def backbone_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs [x0 (1/4), x1 (1/8), x2 (1/16), x3 (1/32)]."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        feats = self.stage2(self._apply_transition(self.transition1, [x]))
        feats = self.stage3(self._apply_transition(self.transition2, feats))
        feats = self.stage4(self._apply_transition(self.transition3, feats))
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone_features(x)


# ----------------------------------------------------------------------------- random init

#: gamma of the last BatchNorm on every residual branch and every fuse path (see init_weights)
RESIDUAL_GAMMA = 0.2


def init_weights(model: nn.Module, residual_gamma: float = RESIDUAL_GAMMA) -> None:
    """Seeded random init that keeps a random HRNet well-conditioned at every input size.

    Convs: Kaiming-normal (fan_in, ReLU gain), zero biases; BatchNorm: gamma 1, beta 0 and
    the default running statistics (mean 0, var 1). With only that, every residual block
    and every multi-branch fusion *adds* a full-size signal, and after ~100 blocks the
    features are ~1e3 and dominated by their positive mean, so the heads see one direction
    and the label map is nearly one class. Scaling the last BN of each residual branch and
    of each fuse path to ``residual_gamma`` (the Fixup / zero-init-residual idea, but not
    zero, so every weight still matters to the output and a broken rewrite still shows)
    keeps activations O(1). Nothing here depends on data, so the behaviour is the same at
    64x128 and at 1024x2048 (calibrating BN statistics on a small random batch was tried
    and rejected: the mismatch at other sizes compounds through the depth, ~10x per 2x size).

    The caller seeds torch's RNG; this only draws from it.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.constant_(m.bn2.weight, residual_gamma)
        elif isinstance(m, Bottleneck):
            nn.init.constant_(m.bn3.weight, residual_gamma)
        elif isinstance(m, HighResolutionModule) and m.fuse_layers is not None:
            for row in cast(list[nn.ModuleList], m.fuse_layers):
                for path in row:
                    if path is not None:
                        last_bn = [b for b in path.modules() if isinstance(b, nn.BatchNorm2d)][-1]
                        nn.init.constant_(last_bn.weight, residual_gamma)


@torch.no_grad()
def centre_classifiers(
    model: nn.Module, classifiers: Sequence[nn.Module], shape: tuple[int, int, int, int] = (1, 3, 64, 128)
) -> None:
    """Fold each classifier's mean logit per class (over one random batch) into its bias.

    Why: post-ReLU features share a positive mean, so ``W @ f`` carries a per-class constant
    that, with random ``W``, can outweigh the per-pixel signal and make one class win
    almost everywhere. Subtracting that constant (a trained classifier's bias does the same
    job) leaves the argmax to the per-pixel features, so random-weight label maps use many
    classes. Means are stable across input sizes, unlike variances, so a small batch does.
    The classifiers are centred in forward order within one pass (the OCR head reads the
    auxiliary classifier's output, already centred). Leaves the model in eval mode.
    """
    targets = {id(c) for c in classifiers}

    def centre(conv: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        mean = out.mean(dim=(0, 2, 3))
        bias = conv.bias
        assert isinstance(bias, torch.Tensor)
        bias.sub_(mean)
        return out - mean.view(1, -1, 1, 1)

    missing = [c for c in classifiers if c.bias is None]
    if missing:
        raise ValueError("centre_classifiers needs convolutions with a bias")
    handles = [m.register_forward_hook(centre) for m in model.modules() if id(m) in targets]
    try:
        model.eval()
        model(torch.randn(*shape))
    finally:
        for h in handles:
            h.remove()
    model.eval()
