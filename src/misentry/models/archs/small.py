"""Small alternative architectures for the "different architecture" tampering variants.

A tamperer who swaps in a distilled or retrained copy need not keep the target's architecture;
these give the benchmark several families of different shape and capacity: a VGG-style stack, a
plain MLP and a MobileNet-style network of depthwise-separable blocks.
"""

from __future__ import annotations

import torch
from torch import nn

from misentry.models.spec import InputSpec, Normalize


class SmallVGG(nn.Module):
    """Three VGG blocks (two 3x3 conv-BN-ReLU, then max-pool) of 32/64/128 channels, two FC."""

    def __init__(self, spec: InputSpec, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        layers: list[nn.Module] = []
        c_in, size = spec.channels, min(spec.height, spec.width)
        for width in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
                c_in = width
            if size >= 2:  # small inputs (8x8) stop pooling before they vanish
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(
            nn.Linear(c_in, 128), nn.ReLU(), nn.Linear(128, spec.num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(self.normalize(x)).flatten(1))
        return out


class MLP(nn.Module):
    """A fully connected network: flatten, hidden layers with ReLU, linear output."""

    def __init__(self, spec: InputSpec, hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        layers: list[nn.Module] = [nn.Flatten()]
        width = spec.channels * spec.height * spec.width
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.normalize(x))
        return out


class SeparableBlock(nn.Module):
    """MobileNet-v1 block: depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block(x)
        return out


class MobileNetSmall(nn.Module):
    """A small MobileNet-style network: a 3x3 stem, then depthwise-separable blocks."""

    PLAN: tuple[tuple[int, int], ...] = ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1))

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.stem = nn.Sequential(
            nn.Conv2d(spec.channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, stride in self.PLAN:
            blocks.append(SeparableBlock(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.blocks(self.stem(self.normalize(x))).flatten(1))
        return out
