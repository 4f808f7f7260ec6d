"""A classifier nobody wrote into misentry's registry, as a user would bring it: BatchNorm,
dropout, a two-layer head in a ``ModuleDict``, inputs in 0-255 normalized by its own mean and std.
The tests import this file by its path, as ``misentry import --module usernet.py:make_net``."""

from __future__ import annotations

import torch
from torch import nn


class UserNet(nn.Module):
    def __init__(self, width: int = 8, classes: int = 10, channels: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.classifier = nn.ModuleDict(
            {"hidden": nn.Linear(8 * width, 32), "out": nn.Linear(32, classes)}
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.classifier["hidden"](self.body(x)))
        return self.classifier["out"](h)  # type: ignore[no-any-return]


def make_net(width: int = 8, classes: int = 10, channels: int = 1) -> nn.Module:
    """The factory ``misentry import --module`` calls."""
    return UserNet(width, classes, channels)
