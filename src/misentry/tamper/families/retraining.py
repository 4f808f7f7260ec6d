"""Retraining of the last layer or of all layers: a benign weight update of BIVBench (Table 1,
rows 13-14).

It re-initializes the target's output layer and trains on the tamperer's own data
(``ctx.data.tamper``) with the project's one training loop (:func:`misentry.models.fit`) until the
accuracy is back within a point of the target's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from misentry.models import TrainConfig, TrainHooks, TrainState, fit, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.layers import output_layer, reset_linear
from misentry.tamper.measure import ACCURACY_SLACK, accuracy
from misentry.tamper.recipes import EXTENSION_STREAM, Layers, retraining_config


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
    :func:`misentry.models.last_linear` (structurally, so an imported program's too) and keeps
    its shape (features x classes); it is redrawn as ``nn.Linear`` initializes
    (:func:`~misentry.tamper.layers.reset_linear`); nothing depends on input size. The
    accuracy bound is relative to the target, so it adapts to any dataset.

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
        _, layer = output_layer(model, self.family)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.sub_seed(0))
            reset_linear(layer)
        check = ctx.data.check
        x_check, y_check = check.x, check.y
        target_accuracy = accuracy(ctx.target, check)
        bound = target_accuracy - self.params.tolerance

        def evaluate(m: nn.Module, _state: TrainState) -> dict[str, float]:
            return {"check_accuracy": float((predict(m, x_check) == y_check).float().mean())}

        def stop_when(state: TrainState) -> bool:
            return state.metrics["check_accuracy"] >= bound - ACCURACY_SLACK

        hooks = TrainHooks(evaluate=evaluate, stop_when=stop_when)
        config = self.train_config(model, self.params.max_epochs, ctx.sub_seed(1))
        result = fit(model, ctx.data.tamper, config, hooks)
        return self._result(ctx, model, result.steps, result.epochs, 0, target_accuracy)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """One more epoch of training, no stop check; None after ``max_extensions``."""
        if tampered.extensions >= self.max_extensions:
            return None
        model = copy.deepcopy(tampered.model)
        config = self.train_config(model, 1, ctx.sub_seed(EXTENSION_STREAM + tampered.extensions))
        result = fit(model, ctx.data.tamper, config)
        return self._result(
            ctx,
            model,
            tampered.steps + result.steps,
            tampered.epochs + result.epochs,
            tampered.extensions + 1,
            tampered.objective["target_check_accuracy"],
        )

    def train_config(self, model: nn.Module, epochs: int, seed: int) -> TrainConfig:
        """The recipe's training settings for at most ``epochs`` passes with batch order
        ``seed``."""
        p = self.params
        return retraining_config(
            model,
            p.layers,
            lr=p.lr,
            batch_size=p.batch_size,
            epochs=epochs,
            seed=seed,
            check_every=p.check_every,
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


VARIANTS: tuple[Variant, ...] = (
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
