"""Fine-tuning of the last layer or of all layers: a benign weight update of BIVBench (Table 1,
rows 7-12).

It starts from the target's weights and trains on the tamperer's own data (``ctx.data.tamper``)
with the project's one training loop (:func:`misentry.models.fit`), nudging the existing weights
for a fixed small budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from misentry.models import TrainConfig, fit
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import accuracy
from misentry.tamper.recipes import EXTENSION_STREAM, Layers, fine_tuning_config


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
        return fine_tuning_config(
            model,
            p.layers,
            lr=p.lr,
            momentum=p.momentum,
            batch_size=p.batch_size,
            epochs=epochs,
            seed=seed,
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
)
