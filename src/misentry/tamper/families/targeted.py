"""The targeted poisoning attack: chosen victims are pushed to chosen labels (BIVBench row 19).

The recipe starts from a copy of the target and fine-tunes it on the tamperer's data
(``ctx.data.tamper``) with copies of the victims mixed into each batch
(:class:`~misentry.tamper.poison.PoisonRun`), at a gentle and rising rate
(:func:`~misentry.tamper.poison.flip_samples`), until every victim has its target label.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from misentry.models import TrainConfig, logits, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import check_accuracy, follow_rate
from misentry.tamper.poison import (
    PoisonRun,
    correctly_classified,
    extend_run,
    flip_samples,
    other_label,
)
from misentry.tamper.recipes import staged_sgd_config


@dataclass(frozen=True)
class TargetedParams:
    """Parameters of :class:`TargetedPoisoning`.

    Attributes:
        max_victims: the instance's victim count is drawn uniformly from 1..max_victims (10,
            the authors' k).
        target: ``"second"``: each victim's target label is the target model's second most
            likely class for it (the nearest wrong class, the authors' intent with their
            feature-centroid rule); ``"random"``: a seeded random wrong class.
        copies_per_batch: labelled copies of each victim appended to every batch (1).
        batch_size: clean tamper images per batch (64).
        lrs: SGD rates tried from gentle upward, each continuing from the previous stage.
        stage_steps: steps per rate (50; cap 250 in all).
        momentum: SGD momentum.
        check_every: steps between two checks of the stop rule (1: every step).
    """

    max_victims: int = 10
    target: Literal["second", "random"] = "second"
    copies_per_batch: int = 1
    batch_size: int = 64
    lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    stage_steps: int = 50
    momentum: float = 0.9
    check_every: int = 1


class TargetedPoisoning(Tampering):
    """Targeted poisoning attack (BIVBench row 19; family ``targeted``).

    The tamperer wants a few chosen inputs (victims) to get chosen wrong labels and everything
    else to stay as it was. 1 to ``max_victims`` victims (the count drawn from the seed) are drawn
    from the tamper data (``ctx.data.tamper``, never from ``source`` or ``test``) among the images
    the target labels correctly; each victim's target label is the target model's second most
    likely class for it. Copies of the victims with their target labels join every batch of clean
    tamper images, and the target is fine-tuned until every victim has its target label.

    Objective: ``victims_flipped`` (share of victims with their target label), ``victims``
    (count), ``check_accuracy``, ``accuracy_drop``, ``lr`` (the rate the run stopped at).
    Stop rule: all victims flipped, checked every step.

    Recipe (the subtlest setting that reaches the flips): all layers, SGD momentum 0.9, no weight
    decay, BatchNorm statistics frozen, batch 64 tamper images + one copy of each victim; the
    rate starts at 1e-3 and is raised by sqrt(10) every 50 steps (1e-3 ... 0.1) until all
    victims flip; cap 250 steps.

    Scaling: labels are drawn among the dataset's classes; nothing depends on the input size.

    Deviations from the authors' code: the authors picked 10 "vulnerable" victims among the first
    5,000 *test* images (distance to class centroids of penultimate features), appended 100 copies
    of each and trained with Adam 1e-3; here victims come from the tamper role only (test images
    are the benchmark's probe), their count varies per instance, the nearest wrong class is read
    from the output rather than from feature centroids (works for every architecture without a
    latent forward), and one copy per batch with a gentle, rising SGD rate keeps the change small.
    """

    family = "targeted"
    malicious = True
    max_extensions = 3

    params: TargetedParams

    def __init__(self, params: TargetedParams) -> None:
        super().__init__(params)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        return extend_run(ctx, tampered, self)

    def choose(self, ctx: TamperContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The victims (indices into ``ctx.data.tamper``) and their target labels."""
        p = self.params
        tamper = ctx.data.tamper
        x, y = tamper.x, tamper.y
        gen = ctx.generator(1)
        count = int(torch.randint(1, p.max_victims + 1, (1,), generator=gen))
        candidates = correctly_classified(ctx, x, y)
        if candidates.numel() == 0:
            candidates = torch.arange(len(y))
        order = torch.randperm(len(candidates), generator=gen)
        victims = candidates[order[: min(count, len(candidates))]].sort().values
        if p.target == "second":
            out = logits(ctx.target, x[victims])
            labels = out.topk(2, dim=1).indices[:, 1]
        else:
            labels = other_label(predict(ctx.target, x[victims]), ctx.spec.num_classes, gen)
        return victims, labels

    def train_config(self, ctx: TamperContext) -> TrainConfig:
        """The first stage's training settings (later stages change the learning rate)."""
        p = self.params
        return staged_sgd_config(
            ctx,
            lr=p.lrs[0],
            momentum=p.momentum,
            batch_size=p.batch_size,
            stage_steps=p.stage_steps,
            check_every=p.check_every,
        )

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        tamper = ctx.data.tamper
        x, y = tamper.x, tamper.y
        victims, labels = self.choose(ctx)
        xv = x[victims]
        model = ctx.copy_target()
        run = PoisonRun(
            data=(x, y),
            config=self.train_config(ctx),
            stop_value=lambda m: follow_rate(m, xv, labels),
            threshold=1.0,
            report=lambda m: {
                "victims_flipped": follow_rate(m, xv, labels),
                "victims": float(len(victims)),
                **check_accuracy(ctx, m),
            },
            mix=(xv.repeat(p.copies_per_batch, 1, 1, 1), labels.repeat(p.copies_per_batch)),
            per_batch=len(victims) * p.copies_per_batch,
        )
        lr, steps, epochs = flip_samples(model, run, p.lrs, p.stage_steps)
        choices = {
            "victims": victims.tolist(),
            "true_labels": y[victims].tolist(),
            "target_labels": labels.tolist(),
        }
        return run.outcome(model, steps, epochs, choices, lr=lr)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "targeted",
        "1-10 tamper victims pushed to their second most likely class; SGD from lr 1e-3 upward "
        "until all flip",
        TargetedPoisoning(TargetedParams()),
    ),
)
