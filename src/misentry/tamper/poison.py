"""Poisoned training runs, shared by the poisoning families (degradation, the targeted attack)
and the trigger families (backdoor, trojan, clean-label).

A :class:`PoisonRun` is one fine-tune of a copy of the target through :func:`misentry.models.fit`
on (poisoned) tamper data, with poisoned samples mixed into each batch (:func:`mixer`) or a batch
hook of its own (e.g. a trigger stamper), that stops at the first check where its objective
holds (:func:`train_until`, or :func:`flip_samples` with a rising rate). :func:`extend_run` goes
on by one epoch when the builder finds the instance not yet observable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from misentry.models import TrainConfig, TrainHooks, TrainResult, TrainState, fit, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering
from misentry.tamper.recipes import EXTENSION_STREAM, extension_config

Batch = tuple[torch.Tensor, torch.Tensor]


def mixer(
    x_mix: torch.Tensor, y_mix: torch.Tensor, per_batch: int
) -> Callable[[torch.Tensor, torch.Tensor, TrainState], Batch]:
    """A ``transform_batch`` hook that appends ``per_batch`` of the given samples to each batch.

    The samples are taken in order, cycling (step ``s`` gets samples ``s*k .. s*k+k-1`` modulo
    their count), so every poisoned sample is seen equally often and the run stays deterministic.
    ``per_batch`` larger than the count appends all of them once.
    """
    n = int(x_mix.shape[0])
    k = min(per_batch, n)

    def transform(x: torch.Tensor, y: torch.Tensor, state: TrainState) -> Batch:
        idx = torch.arange(state.step * k, state.step * k + k) % n
        return torch.cat([x, x_mix[idx]]), torch.cat([y, y_mix[idx]])

    return transform


@dataclass
class PoisonRun:
    """One poisoned training run, kept so that :func:`extend_run` can continue it.

    Attributes:
        data: the (poisoned) training images in [0, 1] and their labels.
        config: the training configuration of the run (optimizer, lr, caps, check interval).
        stop_value: ``stop_value(model) -> float``, the objective the stop rule compares.
        threshold: the run stops at the first check where ``stop_value >= threshold``.
        report: ``report(model) -> objective``, measured once when the run ends.
        mix: samples appended to every batch (see :func:`mixer`), with ``per_batch``.
        transform: a ``transform_batch`` hook of its own instead (e.g. stamping a trigger on
            part of each batch); used when ``mix`` is None.
    """

    data: Batch
    config: TrainConfig
    stop_value: Callable[[nn.Module], float]
    threshold: float
    report: Callable[[nn.Module], dict[str, float]]
    mix: Batch | None = None
    per_batch: int = 0
    transform: Callable[[torch.Tensor, torch.Tensor, TrainState], Batch] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def outcome(
        self,
        model: nn.Module,
        steps: int,
        epochs: int,
        choices: dict[str, Any],
        state: dict[str, Any] | None = None,
        **extra: float,
    ) -> Tampered:
        """The instance once ``model`` has been trained with this run: the report (plus
        ``extra`` values) as objective, met when the stop value reached the threshold."""
        model.eval()
        return Tampered(
            model=model,
            objective={**self.report(model), **extra},
            met=self.stop_value(model) >= self.threshold,
            steps=steps,
            epochs=epochs,
            choices=choices,
            state={"run": self, **(state or {})},
        )

    def hooks(self, stop: bool = True) -> TrainHooks:
        transform = self.transform if self.mix is None else mixer(*self.mix, self.per_batch)
        if not stop:
            return TrainHooks(transform_batch=transform)
        return TrainHooks(
            transform_batch=transform,
            evaluate=lambda model, _state: {"objective": self.stop_value(model)},
            stop_when=lambda state: state.metrics["objective"] >= self.threshold,
        )


def train_until(model: nn.Module, run: PoisonRun) -> TrainResult:
    """Train ``model`` in place with ``run`` until its stop rule holds or its caps are reached."""
    result = fit(model, run.data, run.config, run.hooks())
    run.history.extend(result.history)
    return result


def flip_samples(
    model: nn.Module,
    run: PoisonRun,
    lrs: tuple[float, ...],
    stage_steps: int,
) -> tuple[float, int, int]:
    """Train ``model`` in place with ``run``, starting gentle and raising the rate until it stops.

    One :func:`~misentry.models.fit` per rate of ``lrs`` (in order, each continuing from the
    weights the previous one left, for at most ``stage_steps`` steps, checked every
    ``run.config.check_every`` steps), until the stop rule holds. Returns the rate of the last
    stage and the steps and epochs summed over all stages; ``run.config`` keeps the last rate
    (for :func:`extend_run`).
    """
    total_steps = total_epochs = 0
    lr = lrs[0]
    for i, lr in enumerate(lrs):
        config = replace(run.config, lr=lr, max_steps=stage_steps, seed=run.config.seed + i)
        result = fit(model, run.data, config, run.hooks())
        run.history.extend({**h, "step": h["step"] + total_steps, "lr": lr} for h in result.history)
        total_steps += result.steps
        total_epochs += result.epochs
        if result.stopped_early:
            break
    run.config = replace(run.config, lr=lr)
    return lr, total_steps, total_epochs


def extend_run(ctx: TamperContext, tampered: Tampered, family: Tampering) -> Tampered | None:
    """One more epoch of the instance's own poisoned training, without the stop rule.

    The natural unit of the poisoning families when the builder finds an instance not yet
    observable; ``None`` once ``family.max_extensions`` epochs were added.
    """
    run = tampered.state.get("run")
    if not isinstance(run, PoisonRun) or tampered.extensions >= family.max_extensions:
        return None
    model = copy.deepcopy(tampered.model)
    config = extension_config(run.config, ctx.sub_seed(EXTENSION_STREAM + tampered.extensions))
    result = fit(model, run.data, config, run.hooks(stop=False))
    model.eval()
    objective = run.report(model)
    value = run.stop_value(model)
    return Tampered(
        model=model,
        objective=objective,
        met=value >= run.threshold,
        steps=tampered.steps + result.steps,
        epochs=tampered.epochs + result.epochs,
        choices=tampered.choices,
        architecture=tampered.architecture,
        extensions=tampered.extensions + 1,
        state=tampered.state,
    )


def other_label(true: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each of ``true`` (drawn from ``generator``)."""
    shift = torch.randint(1, num_classes, true.shape, generator=generator)
    return (true + shift) % num_classes


def correctly_classified(ctx: TamperContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Indices of the images the target labels correctly."""
    return (predict(ctx.target, x) == y).nonzero().squeeze(1)
