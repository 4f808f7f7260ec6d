"""Fine-tuning and retraining: the benign weight-update families of BIVBench (Table 1, rows 7-14).

Both start from the target's weights and train on the tamperer's own data (``ctx.data.tamper``)
with the project's one training loop (:func:`misentry.models.fit`). Fine-tuning nudges the
existing weights for a fixed small budget; retraining first re-initializes the output layer and
trains until the accuracy is back within a point of the target's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from misentry.models import TrainConfig, TrainHooks, TrainState, fit, last_linear, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import accuracy

Layers = Literal["last", "all"]

ACCURACY_SLACK = 1e-6
"""Accuracies are float32 means: compare against bounds with this slack (far below 1 image)."""

EXTENSION_STREAM = 1000
"""Seed streams ``EXTENSION_STREAM + k`` order the batches of the k-th extension epoch."""


@dataclass(frozen=True)
class FineTuningParams:
    """Parameters of one fine-tuning variant.

    Attributes:
        layers: ``"last"`` trains only the output layer (BatchNorm frozen), ``"all"`` every
            parameter (BatchNorm in train mode, so its running statistics move too).
        lr: SGD learning rate, constant.
        momentum: SGD momentum.
        batch_size: images per step.
        epochs: passes over ``ctx.data.tamper`` before the first observability check.
    """

    layers: Layers = "last"
    lr: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 1

    def __post_init__(self) -> None:
        if self.layers not in ("last", "all"):
            raise ValueError(
                f"FineTuningParams.layers must be 'last' or 'all'; got {self.layers!r}"
            )
        if self.lr <= 0 or not 0 <= self.momentum < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError(
                f"FineTuningParams: need lr > 0, 0 <= momentum < 1, batch_size >= 1, "
                f"epochs >= 1; got {self}"
            )


class FineTuning(Tampering):
    """Fine-tuning of the last layer (FTLL) or of all layers (FTAL), family ``fine_tuning``.

    What it is: the WRT removal attacks ``FTLLAttack`` / ``FTALAttack`` (Lukas et al., "SoK: How
    robust is image classification deep neural network watermarking?", S&P 2022) as BIVBench uses
    them (Table 1, rows 7-12): continue training the target on the tamperer's data at a small
    learning rate (1e-3, 1e-4 or 1e-5), either the output layer only or every layer.

    Objective: a fixed small budget, ``epochs`` passes over ``ctx.data.tamper`` (default 1); the
    objective values recorded are ``check_accuracy`` (the instance's top-1 accuracy on
    ``ctx.data.check``) and ``target_check_accuracy`` (the target's on the same images).
    ``met`` is always True: the budget is the objective.

    Stop rule: after the budget. If the builder finds no top-1 label changed,
    :meth:`extend` trains one more epoch (a fresh batch order, fresh momentum), at most
    ``max_extensions`` = 9 times, so an instance never sees more than 10 epochs.

    Parameters (:class:`FineTuningParams`): ``layers`` (``"last"``/``"all"``), ``lr`` (SGD, no
    unit), ``momentum`` 0.9, ``batch_size`` 32 images, ``epochs`` 1. No weight decay, constant
    learning rate, no augmentation. The batch order is seeded from the instance seed
    (choice ``order_seed``).

    Scaling with the dataset: nothing depends on input size or class count; the output layer is
    found with :func:`misentry.models.last_linear`, whatever the architecture calls it. The step
    count is ``ceil(len(tamper) / 32)`` per epoch, so it grows with the tamperer's pool.

    Deviations from the authors' code:

    * SGD with momentum 0.9 (the authors: plain SGD), batch 32 (the authors' loader: 128-256);
      one epoch everywhere (the authors: 1 to 20 depending on dataset), extended only when the
      result is not observable (subtlest-tampering rule).
    * Last-layer fine-tuning keeps BatchNorm in eval mode: the authors' code left the model in
      train mode, so the running statistics of the frozen layers drifted and "last layer only"
      silently changed every BatchNorm layer too. Here every parameter and buffer outside the
      output layer stays bit-identical.
    * The tamperer's own pool, not the owner's full training set; no augmentation; the authors'
      optimizer bug (``source_model.model.parameters()``) is not reproduced.
    """

    family = "fine_tuning"
    malicious = False
    max_extensions = 9
    params: FineTuningParams

    def build(self, ctx: TamperContext) -> Tampered:
        model = ctx.copy_target()
        steps, epochs = self._train(ctx, model, self.params.epochs, seed=ctx.sub_seed(0))
        return self._result(ctx, model, steps, epochs, extensions=0)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """One more epoch over ``ctx.data.tamper``; None once ``max_extensions`` were added."""
        if tampered.extensions >= self.max_extensions:
            return None
        model = copy.deepcopy(tampered.model)
        seed = ctx.sub_seed(EXTENSION_STREAM + tampered.extensions)
        steps, epochs = self._train(ctx, model, 1, seed=seed)
        return self._result(
            ctx,
            model,
            tampered.steps + steps,
            tampered.epochs + epochs,
            extensions=tampered.extensions + 1,
        )

    def train_config(self, model: nn.Module, epochs: int, seed: int) -> TrainConfig:
        """The recipe's training settings for ``epochs`` passes with batch order ``seed``."""
        p = self.params
        last = p.layers == "last"
        return TrainConfig(
            epochs=epochs,
            batch_size=p.batch_size,
            optimizer="sgd",
            lr=p.lr,
            momentum=p.momentum,
            weight_decay=0.0,
            schedule="constant",
            seed=seed,
            trainable=(last_linear(model)[0],) if last else None,
            freeze_bn=last,
        )

    def _train(
        self, ctx: TamperContext, model: nn.Module, epochs: int, seed: int
    ) -> tuple[int, int]:
        result = fit(model, ctx.data.tamper, self.train_config(model, epochs, seed))
        return result.steps, result.epochs

    def _result(
        self, ctx: TamperContext, model: nn.Module, steps: int, epochs: int, extensions: int
    ) -> Tampered:
        check = ctx.data.check
        return Tampered(
            model=model.eval(),
            objective={
                "check_accuracy": accuracy(model, check),
                "target_check_accuracy": accuracy(ctx.target, check),
            },
            met=True,
            steps=steps,
            epochs=epochs,
            choices={
                "layers": self.params.layers,
                "lr": self.params.lr,
                "order_seed": ctx.sub_seed(0),
            },
            extensions=extensions,
        )


@dataclass(frozen=True)
class RetrainingParams:
    """Parameters of one retraining variant.

    Attributes:
        layers: ``"last"`` trains only the re-initialized output layer (BatchNorm frozen),
            ``"all"`` every parameter (BatchNorm in train mode).
        lr: Adam learning rate, constant.
        batch_size: images per step.
        tolerance: the accuracy bound, as a fraction (0.01 = 1 percentage point): stop once the
            instance's accuracy on ``ctx.data.check`` is at least the target's minus this.
        max_epochs: cap on passes over ``ctx.data.tamper``.
        check_every: measure the accuracy every this many optimizer steps (and at epoch ends).
    """

    layers: Layers = "last"
    lr: float = 1e-3
    batch_size: int = 32
    tolerance: float = 0.01
    max_epochs: int = 20
    check_every: int = 5

    def __post_init__(self) -> None:
        if self.layers not in ("last", "all"):
            raise ValueError(
                f"RetrainingParams.layers must be 'last' or 'all'; got {self.layers!r}"
            )
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.check_every < 0:
            raise ValueError(
                f"RetrainingParams: need lr > 0, batch_size >= 1, max_epochs >= 1, "
                f"check_every >= 0; got {self}"
            )
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"RetrainingParams.tolerance must be in [0, 1); got {self.tolerance}")


class Retraining(Tampering):
    """Retraining of the last layer (RTLL) or of all layers (RTAL), family ``retraining``.

    What it is: the WRT removal attacks ``RTLLAttack`` / ``RTALAttack`` (Lukas et al., S&P 2022)
    as BIVBench uses them (Table 1, rows 13-14): re-initialize the output layer (its
    ``reset_parameters``, seeded from the instance seed), then train it alone (RTLL) or the whole
    network (RTAL) with Adam on the tamperer's data.

    Objective: accuracy restored: the instance's top-1 accuracy on ``ctx.data.check`` is at least
    the target's accuracy on the same images minus ``tolerance`` (1 point). Recorded:
    ``check_accuracy``, ``target_check_accuracy`` and ``accuracy_gap`` (target minus instance;
    met when ``<= tolerance``).

    Stop rule: the accuracy is measured every ``check_every`` = 5 steps and at each epoch end;
    training stops at the first check where the bound holds, or after ``max_epochs`` = 20 epochs
    (then ``met`` is False). A re-initialized output layer always changes some labels, so
    :meth:`extend` (one more epoch, at most ``max_extensions`` = 3) is a formality.

    Parameters (:class:`RetrainingParams`): ``layers``, Adam ``lr`` 1e-3 (constant, no weight
    decay), ``batch_size`` 32 images, ``tolerance`` 0.01, ``max_epochs`` 20, ``check_every`` 5.

    Scaling with the dataset: the output layer is found with
    :func:`misentry.models.last_linear` and keeps its shape (features x classes); nothing depends
    on input size. The accuracy bound is relative to the target, so it adapts to any dataset.

    Deviations from the authors' code: the authors trained for a fixed 20 (up to 60) epochs with
    a step schedule and kept the best-test-accuracy checkpoint; here training stops as soon as the
    accuracy is within a point of the target's (subtlest-tampering rule), with a constant rate.
    RTLL keeps BatchNorm frozen (the authors' train mode let the frozen layers' statistics
    drift). The tamperer's own pool, not the owner's training set.
    """

    family = "retraining"
    malicious = False
    max_extensions = 3
    params: RetrainingParams

    def build(self, ctx: TamperContext) -> Tampered:
        model = ctx.copy_target()
        _, layer = last_linear(model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.sub_seed(0))
            layer.reset_parameters()
        check = ctx.data.check
        x_check, y_check = check.x, check.y
        target_accuracy = accuracy(ctx.target, check)
        bound = target_accuracy - self.params.tolerance

        def evaluate(m: nn.Module, _state: TrainState) -> dict[str, float]:
            return {"check_accuracy": float((predict(m, x_check) == y_check).float().mean())}

        def stop_when(state: TrainState) -> bool:
            return state.metrics["check_accuracy"] >= bound - ACCURACY_SLACK

        hooks = TrainHooks(evaluate=evaluate, stop_when=stop_when)
        config = self._config(model, self.params.max_epochs, ctx.sub_seed(1))
        result = fit(model, ctx.data.tamper, config, hooks)
        return self._result(ctx, model, result.steps, result.epochs, 0, target_accuracy)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """One more epoch of training, no stop check; None after ``max_extensions``."""
        if tampered.extensions >= self.max_extensions:
            return None
        model = copy.deepcopy(tampered.model)
        config = self._config(model, 1, ctx.sub_seed(EXTENSION_STREAM + tampered.extensions))
        result = fit(model, ctx.data.tamper, config)
        return self._result(
            ctx,
            model,
            tampered.steps + result.steps,
            tampered.epochs + result.epochs,
            tampered.extensions + 1,
            tampered.objective["target_check_accuracy"],
        )

    def _config(self, model: nn.Module, epochs: int, seed: int) -> TrainConfig:
        p = self.params
        last = p.layers == "last"
        return TrainConfig(
            epochs=epochs,
            batch_size=p.batch_size,
            optimizer="adam",
            lr=p.lr,
            weight_decay=0.0,
            schedule="constant",
            seed=seed,
            check_every=p.check_every,
            trainable=(last_linear(model)[0],) if last else None,
            freeze_bn=last,
        )

    def _result(
        self,
        ctx: TamperContext,
        model: nn.Module,
        steps: int,
        epochs: int,
        extensions: int,
        target_accuracy: float,
    ) -> Tampered:
        check_accuracy = accuracy(model, ctx.data.check)
        gap = target_accuracy - check_accuracy
        return Tampered(
            model=model.eval(),
            objective={
                "check_accuracy": check_accuracy,
                "target_check_accuracy": target_accuracy,
                "accuracy_gap": gap,
            },
            met=gap <= self.params.tolerance + ACCURACY_SLACK,
            steps=steps,
            epochs=epochs,
            choices={"layers": self.params.layers, "reinit_seed": ctx.sub_seed(0)},
            extensions=extensions,
        )


def _ft(layers: Layers, lr: float, exp: str) -> Variant:
    where = "the last layer" if layers == "last" else "all layers"
    return Variant(
        f"ft_{layers}_lr1e-{exp}",
        f"fine-tune {where} for 1 epoch on the tamperer's data, SGD momentum 0.9, lr {lr:g}",
        FineTuning(FineTuningParams(layers=layers, lr=lr)),
    )


VARIANTS: tuple[Variant, ...] = (
    _ft("last", 1e-3, "3"),
    _ft("last", 1e-4, "4"),
    _ft("last", 1e-5, "5"),
    _ft("all", 1e-3, "3"),
    _ft("all", 1e-4, "4"),
    _ft("all", 1e-5, "5"),
    Variant(
        "retrain_last",
        "re-initialize the output layer and retrain it alone (Adam 1e-3) until the accuracy "
        "is within 1 point of the target's",
        Retraining(RetrainingParams(layers="last")),
    ),
    Variant(
        "retrain_all",
        "re-initialize the output layer and retrain all layers (Adam 1e-3) until the accuracy "
        "is within 1 point of the target's",
        Retraining(RetrainingParams(layers="all")),
    ),
)
