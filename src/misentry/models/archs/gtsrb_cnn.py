"""The GTSRB target of the founding paper: six 3x3 convolutions and one fully connected layer."""

from __future__ import annotations

import torch
from torch import nn

from misentry.models.spec import InputSpec, Normalize, flat_features


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # The authors' network applies BatchNorm after the ReLU (post-activation).
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out)]


class GtsrbCNN(nn.Module):
    """conv 32-32, pool, dropout 0.2; conv 64-64, pool, dropout; conv 128-128, pool, dropout; FC.

    Each convolution is followed by ReLU then BatchNorm; on 32x32 inputs the FC layer sees
    128*4*4 = 2048 features.
    """

    def __init__(self, spec: InputSpec, dropout: float = 0.2) -> None:
        super().__init__()
        self.normalize = Normalize(spec.mean, spec.std)
        layers: list[nn.Module] = []
        c_in = spec.channels
        for width in (32, 64, 128):
            layers += _conv_bn(c_in, width) + _conv_bn(width, width)
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(flat_features(self.features, spec), spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(self.features(self.normalize(x)).flatten(1))
        return out
