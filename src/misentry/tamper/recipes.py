"""The training configurations that the tampering families, the MiSentry zoo and the bench's
adaptive attacks share.

A tamperer trains gently: no weight decay and a constant learning rate (:data:`CONSTANT_RATE`);
each recipe sets its optimizer, rate, batch size, budget and seed on top of that. What several
recipes share lives here once: the fine-tuning run (:func:`fine_tuning_config`, also pruning's
masked epoch), the retraining run (:func:`retraining_config`, also transfer learning's), the
poisoning families' Adam run (:func:`poison_adam_config`, :func:`adam_config` for the trigger
families), the first stage of a rising-rate SGD run (:func:`staged_sgd_config`: the targeted attack
and single-sample degradation), one more epoch of a run (:func:`extension_config`), and a model
trained from scratch with the target's own recipe (:func:`scratch_config`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal, Protocol

from torch import nn

from misentry.models import TrainConfig
from misentry.models.target import TARGET_RECIPES
from misentry.tamper.base import TamperContext
from misentry.tamper.layers import output_layer

Layers = Literal["last", "all"]

EXTENSION_STREAM = 1000
"""Seed streams ``EXTENSION_STREAM + k`` order the batches of the k-th extension epoch."""

CONSTANT_RATE = TrainConfig(weight_decay=0.0, schedule="constant")
"""What every tamperer's run shares: no weight decay, a constant rate. Recipes set the rest with
:func:`dataclasses.replace`; the fields they leave alone keep :class:`TrainConfig`'s defaults."""


def layers_config(model: nn.Module, layers: Layers, config: TrainConfig) -> TrainConfig:
    """``config`` training the output layer alone with BatchNorm statistics frozen (``"last"``,
    the layer found by :func:`misentry.models.last_linear`; raises
    :class:`~misentry.tamper.base.NotApplicable` when the model has none) or every parameter
    with BatchNorm in train mode (``"all"``)."""
    last = layers == "last"
    trainable = (output_layer(model, "training the last layer")[0],) if last else None
    return replace(config, trainable=trainable, freeze_bn=last)


def fine_tuning_config(
    model: nn.Module,
    layers: Layers,
    *,
    lr: float,
    momentum: float,
    batch_size: int,
    epochs: int,
    seed: int,
) -> TrainConfig:
    """SGD with momentum over ``epochs`` passes, batch order from ``seed``: the fine-tuning
    families' run, and pruning's masked fine-tune (``layers="all"``)."""
    config = replace(
        CONSTANT_RATE,
        epochs=epochs,
        batch_size=batch_size,
        optimizer="sgd",
        lr=lr,
        momentum=momentum,
        seed=seed,
    )
    return layers_config(model, layers, config)


def retraining_config(
    model: nn.Module,
    layers: Layers,
    *,
    lr: float,
    batch_size: int,
    epochs: int,
    seed: int,
    check_every: int,
) -> TrainConfig:
    """Adam over at most ``epochs`` passes, the stop hooks called every ``check_every`` steps:
    the retraining families' run, and transfer learning's (``layers="all"``)."""
    config = replace(
        CONSTANT_RATE,
        epochs=epochs,
        batch_size=batch_size,
        optimizer="adam",
        lr=lr,
        seed=seed,
        check_every=check_every,
    )
    return layers_config(model, layers, config)


def poison_adam_config(
    ctx: TamperContext,
    *,
    lr: float,
    batch_size: int,
    max_epochs: int,
    check_every: int,
    max_steps: int | None = None,
    trainable: tuple[str, ...] | None = None,
    freeze_bn: bool = True,
) -> TrainConfig:
    """A poisoned fine-tune with Adam, capped at ``max_epochs`` passes (and ``max_steps`` steps
    when given), checked every ``check_every`` steps, batch order from the instance's seed stream
    2: class-level degradation and the trigger families (:func:`adam_config`)."""
    return replace(
        CONSTANT_RATE,
        epochs=max_epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        optimizer="adam",
        lr=lr,
        seed=ctx.sub_seed(2),
        check_every=check_every,
        trainable=trainable,
        freeze_bn=freeze_bn,
    )


class AdamSchedule(Protocol):
    """The fields :func:`adam_config` reads from a parameter class (e.g.
    :class:`misentry.tamper.families.backdoor.BackdoorParams`)."""

    @property
    def lr(self) -> float: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def max_epochs(self) -> int: ...

    @property
    def max_steps(self) -> int | None: ...

    @property
    def check_every(self) -> int: ...

    @property
    def freeze_bn(self) -> bool: ...


def adam_config(
    ctx: TamperContext, p: AdamSchedule, trainable: tuple[str, ...] | None
) -> TrainConfig:
    """The trigger families' fine-tune of ``trainable`` (None: every layer) with the schedule of
    ``p`` (:func:`poison_adam_config`)."""
    return poison_adam_config(
        ctx,
        lr=p.lr,
        batch_size=p.batch_size,
        max_epochs=p.max_epochs,
        check_every=p.check_every,
        max_steps=p.max_steps,
        trainable=trainable,
        freeze_bn=p.freeze_bn,
    )


def staged_sgd_config(
    ctx: TamperContext,
    *,
    lr: float,
    momentum: float,
    batch_size: int,
    stage_steps: int,
    check_every: int,
) -> TrainConfig:
    """The first stage of a rising-rate SGD run (:func:`misentry.tamper.poison.flip_samples`
    changes the rate and caps each stage at ``stage_steps``): every layer, BatchNorm statistics
    frozen, batch order from the instance's seed stream 2. The targeted attack's run and
    single-sample degradation's."""
    return replace(
        CONSTANT_RATE,
        epochs=max(1, stage_steps),
        batch_size=batch_size,
        optimizer="sgd",
        lr=lr,
        momentum=momentum,
        seed=ctx.sub_seed(2),
        check_every=check_every,
        freeze_bn=True,
    )


def extension_config(config: TrainConfig, seed: int) -> TrainConfig:
    """One more epoch of a run configured by ``config``: no step cap, no checks, batch order
    from ``seed``."""
    return replace(config, epochs=1, max_steps=None, check_every=0, seed=seed)


def target_recipe(ctx: TamperContext) -> TrainConfig:
    """The recipe the target was trained with (its record's ``params["train"]``), or the
    dataset's preset when the record has none."""
    stored = ctx.target_record.params.get("train")
    if isinstance(stored, dict):
        return TrainConfig.from_json(stored)
    return TARGET_RECIPES.get(ctx.dataset.name, TrainConfig())


def scratch_config(ctx: TamperContext, max_epochs: int, seed: int) -> TrainConfig:
    """The target's recipe for a model trained from scratch: its optimizer, rate, momentum,
    weight decay, batch size, schedule and augmentation, over ``min(recipe epochs,
    max_epochs)`` epochs (a cosine schedule anneals over that cap), every parameter trained,
    checked at each epoch end."""
    recipe = target_recipe(ctx)
    return replace(
        recipe,
        epochs=min(recipe.epochs, max_epochs),
        seed=seed,
        max_steps=None,
        check_every=0,
        trainable=None,
        freeze_bn=False,
    )
