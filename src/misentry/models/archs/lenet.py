"""LeNet-5, the MNIST target of the founding paper."""

from __future__ import annotations

import torch
from torch import nn

from misentry.models.spec import InputSpec, Normalize, flat_features


class LeNet5(nn.Module):
    """LeNet-5: conv 6@5x5, max-pool, conv 16@5x5, max-pool, FC 120, 84, classes (ReLU).

    On 28x28 inputs the convolutions are unpadded, as in the authors' code: 16*4*4 = 256 features
    into fc1 and 44,426 parameters. Inputs too small for two unpadded 5x5 convolutions (under 16
    pixels, e.g. 8x8 digits) use padding 2.

    >>> LeNet5(InputSpec(1, 28, 28, 10, (0.1307,), (0.3081,)))(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        pad = 0 if min(spec.height, spec.width) >= 16 else 2
        self.normalize = Normalize(spec.mean, spec.std)
        self.features = nn.Sequential(
            nn.Conv2d(spec.channels, 6, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc1 = nn.Linear(flat_features(self.features, spec), 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.normalize(x)).flatten(1)
        h = torch.relu(self.fc1(h))
        h = torch.relu(self.fc2(h))
        out: torch.Tensor = self.fc3(h)
        return out
