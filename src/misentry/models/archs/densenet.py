"""DenseNet-121 from torchvision, the ImageNet target; needs the ``vision`` extra."""

from __future__ import annotations

import torch
from torch import nn

from misentry.models.spec import InputSpec, Normalize


class DenseNet121(nn.Module):
    """torchvision's DenseNet-121 (random init, never downloaded weights) behind our Normalize."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        try:
            from torchvision.models import densenet121
        except Exception as err:  # ImportError, or torchvision built for another torch
            raise ImportError(
                "architecture 'densenet121' needs torchvision: install the vision extra "
                "(pip install 'misentry[vision]') with a torchvision that matches your torch"
            ) from err
        net = densenet121(weights=None, num_classes=spec.num_classes)
        if spec.channels != 3:
            net.features.conv0 = nn.Conv2d(spec.channels, 64, 7, stride=2, padding=3, bias=False)
        self.normalize = Normalize(spec.mean, spec.std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(self.normalize(x))
        return out
