"""Small measurements that recipes and the builder share (all in eval mode, no gradients)."""

from __future__ import annotations

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.models import logits, predict
from misentry.tamper.base import TamperContext

ACCURACY_SLACK = 1e-6
"""Accuracies are float32 means: compare against bounds with this slack (far below 1 image)."""


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


def follow_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` that ``model`` labels ``y``."""
    return float((predict(model, x) == y).float().mean())


def check_accuracy(ctx: TamperContext, model: nn.Module) -> dict[str, float]:
    """``check_accuracy`` of ``model`` and ``accuracy_drop`` from the target's, on ``check``."""
    check = ctx.data.check
    before = accuracy(ctx.target, check)
    after = accuracy(model, check)
    return {"check_accuracy": after, "accuracy_drop": before - after}


def accuracy_objective(ctx: TamperContext, model: nn.Module) -> dict[str, float]:
    """``check_accuracy``, ``target_check_accuracy`` and ``accuracy_drop`` (target minus model)
    on ``ctx.data.check``."""
    check = ctx.data.check
    ours, target = accuracy(model, check), accuracy(ctx.target, check)
    return {"check_accuracy": ours, "target_check_accuracy": target, "accuracy_drop": target - ours}
