"""Transfer learning of the target to a shifted input distribution: a benign family of BIVBench
(Table 1, row 6) that keeps the target's body and gives it a new head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from misentry.models import predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.layers import output_layer, reset_linear
from misentry.tamper.measure import ACCURACY_SLACK, accuracy
from misentry.tamper.recipes import retraining_config
from misentry.tamper.replacement import train_to_accuracy


@dataclass(frozen=True)
class TransferLearningParams:
    """Parameters of transfer learning to contrast-inverted inputs.

    Attributes:
        lr: Adam learning rate, constant, no weight decay.
        batch_size: images per step.
        tolerance: stop once the accuracy on inverted ``ctx.data.check`` images is at least the
            target's accuracy on the original images minus this (0.10 = 10 points).
        max_epochs: cap on passes over the inverted tamper images.
        check_every: measure the shifted accuracy every this many steps (and at epoch ends).
    """

    lr: float = 1e-3
    batch_size: int = 32
    tolerance: float = 0.10
    max_epochs: int = 20
    check_every: int = 8

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.check_every < 0:
            raise ValueError(
                f"TransferLearningParams: need lr > 0, batch_size >= 1, max_epochs >= 1, "
                f"check_every >= 0; got {self}"
            )
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"TransferLearningParams.tolerance must be in [0, 1); got {self}")


def invert(x: torch.Tensor) -> torch.Tensor:
    """Contrast inversion of float images in [0, 1]: the shifted input distribution."""
    return 1.0 - x


class TransferLearning(Tampering):
    """Transfer learning of the target to a shifted input distribution, family
    ``transfer_learning``.

    What it is: BIVBench's transfer-learning row (Table 1, row 6; WRT's ``transfer_learning.py``):
    the target's body is reused for another input distribution with the same label space: its
    output layer is replaced by a freshly initialized one (``reset_parameters``, seeded from the
    instance seed) and every layer is fine-tuned on the new data. The new distribution is the
    contrast-inverted tamper images (``1 - x`` of ``ctx.data.tamper``, true labels): the issue
    proposes 8x8 ``digits`` upscaled to 28x28 or inverted digits; inversion works for every
    dataset and keeps to the namespace's own pools (upscaled digits would come from outside
    them), so it is used everywhere.

    Objective: the accuracy on inverted ``ctx.data.check`` images (``shifted_accuracy``) is at
    least the target's accuracy on the original images minus ``tolerance`` (10 points: with only
    the tamperer's pool the inverted task saturates a few points below the original; on mnist5k
    inverted accuracy levels off at 0.92-0.94 after 10 epochs). Recorded: ``shifted_accuracy``,
    ``check_accuracy`` (original images, which the new head need not serve),
    ``target_check_accuracy`` and ``target_shifted_accuracy``.

    Stop rule: measured every ``check_every`` = 8 steps and at epoch ends; at most
    ``max_epochs`` = 20 epochs (then ``met`` is False). A new head changes many labels, so
    there is no :meth:`extend`. Measured on mnist5k (10 instances, 2 CPU cores): 87.7-89.9 %
    on inverted test images (the target: 21.1 %) after 72-96 steps (2-3 epochs), 0.5-0.8 s
    each; accuracy on the original images falls to 23-55 %.

    Parameters (:class:`TransferLearningParams`): Adam ``lr`` 1e-3 (constant, no weight decay),
    ``batch_size`` 32, ``tolerance`` 0.10, ``max_epochs`` 20, ``check_every`` 8. BatchNorm
    layers train (their statistics adapt to the new distribution); no augmentation.

    Scaling with the dataset: inversion works for any channel count and size; the output layer
    is found with :func:`misentry.models.last_linear` and keeps its shape; the accuracy goal is
    relative to the target's.

    Deviations from the authors' code: the authors upsampled inputs to 224 px for an ImageNet
    parent and trained for a fixed 5 epochs with SGD 1e-3 (their head size was probed at the
    wrong input size, so the released code fails); here the target itself is the parent, the
    new task is its own inverted data, and training stops at the first check where the goal
    holds (SGD 1e-3 with momentum reached only 0.85 in 10 epochs on mnist5k, hence Adam).
    """

    family = "transfer_learning"
    malicious = False
    params: TransferLearningParams

    def __init__(self, params: TransferLearningParams) -> None:
        super().__init__(params)

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        model = ctx.copy_target()
        head_name, head = output_layer(model, self.family)
        reinit_seed = ctx.sub_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(reinit_seed)
            reset_linear(head)
        tamper, check = ctx.data.tamper, ctx.data.check
        shifted_check = (invert(check.x), check.y)
        config = retraining_config(
            model,
            "all",
            lr=p.lr,
            batch_size=p.batch_size,
            epochs=p.max_epochs,
            seed=ctx.sub_seed(1),
            check_every=p.check_every,
        )
        run = train_to_accuracy(
            ctx,
            model,
            (invert(tamper.x), tamper.y),
            config,
            p.tolerance,
            check=shifted_check,
        )
        shifted = run.check_accuracy
        target_shifted = float((predict(ctx.target, shifted_check[0]) == check.y).float().mean())
        return Tampered(
            model=model.eval(),
            objective={
                "shifted_accuracy": shifted,
                "check_accuracy": accuracy(model, check),
                "target_check_accuracy": run.target_check_accuracy,
                "target_shifted_accuracy": target_shifted,
            },
            met=shifted >= run.target_check_accuracy - p.tolerance - ACCURACY_SLACK,
            steps=run.steps,
            epochs=run.epochs,
            choices={"head": head_name, "reinit_seed": reinit_seed, "shift": "invert"},
        )


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "transfer_learning",
        "the target with a new head, all layers fine-tuned on contrast-inverted images until "
        "within 10 points of its accuracy there",
        TransferLearning(TransferLearningParams()),
    ),
)
