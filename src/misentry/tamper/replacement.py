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
target's multiply-accumulates per image (:func:`model_macs`, measured on the target itself, so
an imported target is held to its own cost). For the mnist5k LeNet-5 target
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
from torch.utils.flop_counter import FlopCounterMode

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
from misentry.tamper.base import NotApplicable, TamperContext, Tampered
from misentry.tamper.measure import ACCURACY_SLACK, accuracy


def model_macs(model: nn.Module, shape: tuple[int, int, int]) -> int | None:
    """Multiply-accumulates of one forward pass of ``model`` on one input of ``shape``
    (convolutions and matrix products), counted at the operator level by torch's
    ``FlopCounterMode``, so a model imported as a TorchScript or ``torch.export`` program is
    measured like any other; None when the model does not run on that input.

    A model that runs on a fixed batch size only (an attribute ``fixed_batch``, see
    :class:`misentry.models.ContractAdapter`) is run on one such batch and the count divided.
    """
    batch = getattr(model, "fixed_batch", None) or 1
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(batch, *shape))
    except Exception:  # the input is too small for this architecture, or the wrong shape
        return None
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // (2 * batch)


@functools.lru_cache(maxsize=64)
def forward_macs(arch: str, spec: InputSpec) -> int | None:
    """Multiply-accumulates of one forward pass of the registered ``arch`` on one input of
    ``spec`` (:func:`model_macs`); None when the architecture cannot be built or run for
    ``spec`` (a missing extra, an input too small)."""
    try:
        model = build_model(arch, spec, 0)
    except Exception:  # ImportError for a missing extra, ValueError/RuntimeError for a shape
        return None
    return model_macs(model, spec.shape)


def candidate_architectures(ctx: TamperContext, max_cost_ratio: float) -> list[str]:
    """Registered architectures other than the target's that build and run for the input spec
    (the target record's: shape, classes and the normalization of its input contract) and cost
    at most ``max_cost_ratio`` times the target's MACs per image, in registry order.

    The target's cost is measured on the target model itself (:func:`model_macs`), so an
    imported target, whose architecture has no registry name, is held to its own cost too."""
    own = model_macs(ctx.target, ctx.spec.shape)
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


def rebuild_reason(ctx: TamperContext) -> str | None:
    """Why the target's own architecture cannot be trained again from fresh weights, or None
    when it can: a registry architecture is built by name; an imported ``module`` is
    re-initialised (:func:`fresh_model`) when every parameter belongs to a layer with
    ``reset_parameters``; a TorchScript or ``torch.export`` program cannot be."""
    fmt = ctx.imported_format
    if fmt is None:
        return None
    if fmt == "module":
        loose = sorted(set(dict(ctx.target.named_parameters())) - _resettable(ctx.target))
        if not loose:
            return None
        return (
            f"its parameters {loose[:4]} belong to layers without reset_parameters, so the "
            "imported module cannot be re-initialised"
        )
    program = {"torchscript": "a TorchScript program", "exported": "a torch.export program"}
    return (
        f"{program.get(fmt, f'an imported {fmt} model')} cannot be re-initialised (its layers "
        "have no reset_parameters and it cannot be rebuilt by name); import the model with "
        "--module to include it"
    )


def _resettable(model: nn.Module) -> set[str]:
    """Names of the parameters that the ``reset_parameters`` of their own layer redraws."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if callable(getattr(module, "reset_parameters", None))
        for name, _ in module.named_parameters(recurse=False)
    }


def fresh_model(ctx: TamperContext, arch: str, seed: int, family: str) -> nn.Module:
    """A model of ``arch`` with fresh weights drawn from ``seed``: a registered architecture
    built for the input spec, or (``arch`` the imported target's own) a deep copy of the target
    whose layers are redrawn by their ``reset_parameters``; :class:`NotApplicable` naming
    ``family`` when the target's architecture cannot be re-initialised (:func:`rebuild_reason`)."""
    if arch != ctx.architecture or ctx.imported_format is None:
        return build_model(arch, ctx.spec, seed)
    reason = rebuild_reason(ctx)
    if reason is not None:
        raise NotApplicable(f"{family} trains the target's own architecture afresh, and {reason}")
    model = ctx.copy_target()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


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
