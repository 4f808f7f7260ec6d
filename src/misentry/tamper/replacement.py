"""What the model-replacing benign families share: the architectures that may stand in for the
target, and training a model until its accuracy is within a tolerance of the target's.

Distillation, other architectures and independent retraining (BIVBench Table 1, rows 5, 15 and
the uniqueness property; :mod:`misentry.tamper.families.distillation` and
:mod:`misentry.tamper.families.independent`) train a fresh model from scratch, so the result
shares nothing with the target but the task; transfer learning
(:mod:`misentry.tamper.families.transfer_learning`) keeps the target's body and gives it a new
head for a shifted input distribution. All go through the project's one training loop
(:func:`misentry.models.fit`) and stop at the first check where their accuracy objective holds.

Training from scratch is the expensive part of the benchmark build, so the architectures a recipe
may swap in are limited by compute: :func:`candidate_architectures` keeps the registered
architectures that build for the input spec and cost at most ``max_cost_ratio`` times the
target's multiply-accumulates per image (:func:`forward_macs`). For the mnist5k LeNet-5 target
(0.28 MMAC per 28x28 image) that is the MLP (0.23 MMAC); MobileNet-small (3.3 MMAC, 12x)
trains at about 2.5 s an epoch on 2 CPU cores and needs about 11 epochs to come within a point,
and the VGG-style network, the GTSRB CNN and ResNet-20 (29-31 MMAC, over 100x) take 13-17 s
an epoch of ``owner_train`` on one core. For a ResNet-20 or GTSRB-CNN target (39-41 MMAC at
32x32) every other registered architecture is within the ratio.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.models import (
    ARCHITECTURES,
    InputSpec,
    TrainConfig,
    TrainHooks,
    TrainState,
    build_model,
    fit,
    predict,
)
from misentry.tamper.base import TamperContext, Tampered
from misentry.tamper.measure import ACCURACY_SLACK, accuracy


@functools.lru_cache(maxsize=64)
def forward_macs(arch: str, spec: InputSpec) -> int | None:
    """Multiply-accumulates of one forward pass of ``arch`` on one input of ``spec`` (convolutions
    and linear layers); None when the architecture cannot be built or run for ``spec`` (a
    missing extra, an input too small)."""
    try:
        model = build_model(arch, spec, 0)
    except Exception:  # ImportError for a missing extra, ValueError/RuntimeError for a shape
        return None
    total = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
            total += int(output.numel()) * int(per_output)
        elif isinstance(module, nn.Linear):
            total += int(output.numel()) * int(module.in_features)

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *spec.shape))
    except Exception:  # the input is too small for this architecture
        return None
    finally:
        for handle in handles:
            handle.remove()
    return total


def candidate_architectures(ctx: TamperContext, max_cost_ratio: float) -> list[str]:
    """Registered architectures other than the target's that build and run for the input spec
    and cost at most ``max_cost_ratio`` times the target's MACs per image, in registry order."""
    own = forward_macs(ctx.architecture, ctx.spec)
    found = []
    for name in ARCHITECTURES:
        if name == ctx.architecture:
            continue
        macs = forward_macs(name, ctx.spec)
        if macs is None:
            continue
        if own is not None and macs > max_cost_ratio * own:
            continue
        found.append(name)
    return found


@dataclass(frozen=True)
class Trained:
    """What :func:`train_to_accuracy` did."""

    steps: int
    epochs: int
    check_accuracy: float
    target_check_accuracy: float


def train_to_accuracy(
    ctx: TamperContext,
    model: nn.Module,
    data: ImageSet | tuple[torch.Tensor, torch.Tensor],
    config: TrainConfig,
    tolerance: float,
    hooks: TrainHooks | None = None,
    check: tuple[torch.Tensor, torch.Tensor] | None = None,
    goal: float | None = None,
) -> Trained:
    """Train ``model`` until its accuracy on ``check`` (default: ``ctx.data.check``) is at least
    ``goal`` (default: the target's accuracy on ``ctx.data.check``) minus ``tolerance``, measured
    at the config's checks; or until the config's budget runs out."""
    checkset = ctx.data.check
    target_accuracy = accuracy(ctx.target, checkset)
    x_check, y_check = check if check is not None else (checkset.x, checkset.y)
    bound = (target_accuracy if goal is None else goal) - tolerance

    def evaluate(m: nn.Module, _state: TrainState) -> dict[str, float]:
        return {"check_accuracy": float((predict(m, x_check) == y_check).float().mean())}

    def stop_when(state: TrainState) -> bool:
        return state.metrics["check_accuracy"] >= bound - ACCURACY_SLACK

    hooks = replace(hooks or TrainHooks(), evaluate=evaluate, stop_when=stop_when)
    result = fit(model, data, config, hooks)
    reached = float((predict(model, x_check) == y_check).float().mean())
    return Trained(result.steps, result.epochs, reached, target_accuracy)


def replacement_outcome(
    ctx: TamperContext,
    model: nn.Module,
    run: Trained,
    tolerance: float,
    arch: str,
    choices: dict[str, Any],
) -> Tampered:
    """A model trained from scratch to within ``tolerance`` of the target's accuracy."""
    gap = run.target_check_accuracy - run.check_accuracy
    return Tampered(
        model=model.eval(),
        objective={
            "check_accuracy": run.check_accuracy,
            "target_check_accuracy": run.target_check_accuracy,
            "accuracy_gap": gap,
            "agreement": agreement(ctx, model),
        },
        met=gap <= tolerance + ACCURACY_SLACK,
        steps=run.steps,
        epochs=run.epochs,
        choices=choices,
        architecture=arch,
    )


def agreement(ctx: TamperContext, model: nn.Module) -> float:
    """Share of ``ctx.data.check`` images on which ``model`` and the target give the same label."""
    x = ctx.data.check.x
    return float((predict(model, x) == predict(ctx.target, x)).float().mean())
