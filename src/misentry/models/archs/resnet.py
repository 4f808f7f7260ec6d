"""ResNet-20 for CIFAR-sized inputs (He et al. 2016), the CIFAR-10 target."""

from __future__ import annotations

import torch
from torch import nn

from misentry.models.spec import InputSpec, Normalize


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return torch.relu(h + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with three stages of ``depth`` basic blocks (16/32/64 channels).

    ``depth=3`` is ResNet-20 (about 0.27 M parameters with projection shortcuts, as in the
    authors' code). Global average pooling makes it work at any input size of 4 pixels or more.
    """

    def __init__(self, spec: InputSpec, depth: int = 3, width: int = 16) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        self.stem = nn.Sequential(
            nn.Conv2d(spec.channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(self.stem(self.normalize(x)))
        out: torch.Tensor = self.fc(self.pool(h).flatten(1))
        return out


def resnet20(spec: InputSpec) -> ResNet:
    return ResNet(spec, depth=3)
