"""Small measurements that recipes and the builder share (all in eval mode, no gradients)."""

from __future__ import annotations

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.models import logits, predict


def accuracy(model: nn.Module, data: ImageSet) -> float:
    """Top-1 accuracy on ``data``."""
    return float((predict(model, data.x) == data.y).float().mean())


def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax outputs for float images in [0, 1]."""
    return logits(model, x).softmax(dim=1)


def confidence_in(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's probability for ``labels`` on each image."""
    return probabilities(model, x).gather(1, labels.view(-1, 1)).squeeze(1)


def changed_fraction(reference: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    """Share of images whose top-1 label differs between ``reference`` and ``model``."""
    return float((predict(reference, x) != predict(model, x)).float().mean())
