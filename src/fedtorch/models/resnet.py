"""ResNet-18 for 32x32 images (He et al., CVPR 2016, "Deep Residual Learning for Image
Recognition"), with the CIFAR stem: a 3x3 convolution of stride 1 and no max pooling,
then four stages of two basic blocks (64, 128, 256, 512 channels; strides 1, 2, 2, 2),
global average pooling and a linear layer.

Normalisation: the default is GroupNorm with 2 groups, the replacement Hsieh et al. (ICML
2020, "The Non-IID Data Quagmire of Decentralized Machine Learning") recommend for non-IID
data. ``norm="batch"`` (``model.name=resnet18_bn``) uses BatchNorm with running statistics,
as torchvision's ResNet-18 does (momentum 0.1, eps 1e-5; batch statistics while training,
the running ones at evaluation); the federation loop averages the statistics or keeps them
per client (``model.local_buffers``, :mod:`fedtorch.federation.model_buffers`).
``norm="none"`` has no normalisation.
"""

from __future__ import annotations

from torch import nn

NORMS = ("group", "batch", "none")


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, cout, groups)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout, groups))

    def forward(self, x):
        """``(B, cin, H, W) -> (B, cout, ceil(H / stride), ceil(W / stride))``."""
        out = self.relu(self.n1(self.conv1(x)))
        return self.relu(self.n2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """``(B, C, H, W) -> (B, num_classes)``; 11,173,962 parameters for 3x32x32 and 10 classes
    (the same with GroupNorm or BatchNorm; 11,164,362 without normalisation).

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: outputs.
        norm: ``group`` (default), ``batch`` (BatchNorm with running statistics) or ``none``.
        groups: GroupNorm groups (default 2; must divide 64).

    Raises:
        ValueError: input not ``(C, H, W)``, unknown ``norm``, or ``groups`` not dividing 64.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, norm: str = "group", groups: int = 2):
        if len(input_shape) != 3:
            raise ValueError(f"resnet18 needs (C, H, W) image inputs, got {input_shape}")
        if norm not in NORMS:
            raise ValueError(f"resnet18 norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if norm == "group" and (groups < 1 or 64 % groups):
            raise ValueError(f"resnet18 GroupNorm groups must divide 64, got {groups}")
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, 1, 1, bias=False), _norm(norm, 64, groups), nn.ReLU())
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride, norm, groups), BasicBlock(cout, cout, 1, norm, groups)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x):
        """``(B, C, H, W)`` images (``C`` as in ``input_shape``) -> ``(B, num_classes)`` logits.

        Any ``H, W >= 1`` works (global average pooling); the stem keeps the resolution and
        the stages halve it three times (32x32 -> 4x4 before pooling).
        """
        return self.head(self.blocks(self.stem(x)))


def resnet18_batch_stats(input_shape: tuple[int, ...], num_classes: int) -> ResNet18:
    """ResNet-18 with BatchNorm and its running statistics (``model.name=resnet18_bn``)."""
    return ResNet18(input_shape, num_classes, norm="batch")
