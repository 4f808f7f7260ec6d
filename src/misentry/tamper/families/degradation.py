"""Degradation by label poisoning: a class, or one sample, learns wrong labels (BIVBench rows
16-18).

The recipe starts from a copy of the target, trains it through :func:`misentry.models.fit` on the
tamperer's data (``ctx.data.tamper``) with the poisoned samples mixed into each batch
(:class:`~misentry.tamper.poison.PoisonRun`), and stops at the first check where its objective
holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import check_accuracy, follow_rate
from misentry.tamper.poison import (
    PoisonRun,
    correctly_classified,
    extend_run,
    flip_samples,
    other_label,
    train_until,
)
from misentry.tamper.recipes import poison_adam_config, staged_sgd_config


@dataclass(frozen=True)
class DegradationParams:
    """Parameters of :class:`Degradation`.

    Attributes:
        level: ``"random_c"`` (one class, each of its samples to a random wrong label),
            ``"specific_c"`` (one class to one other class) or ``"sample"`` (one sample).
        follow: class levels stop when this share of the poisoned samples follows its poison
            label (0.9, as the authors' stop rule).
        lr: Adam learning rate of the class levels (1e-3, the authors').
        batch_size: clean tamper images per batch (64, the authors').
        mix_per_batch: poisoned samples appended to each batch at the class levels (32: half a
            batch more; with in-place relabelling only, per-sample random labels were not
            learned within 10 epochs on mnist5k).
        check_every: steps between two checks of the class-level stop rule (10, the authors').
        max_epochs: cap of the class levels, in passes over the tamper data (20; random_c
            needed 80-150 steps = 5-10 epochs of mnist5k's 1,000 tamper images).
        sample_lrs: the single-sample level's SGD rates, tried from gentle upward, each stage
            continuing from the weights of the previous one.
        sample_stage_steps: steps per rate of the single-sample level (50; cap 250 in all).
        sample_momentum: SGD momentum of the single-sample level.
    """

    level: Literal["random_c", "specific_c", "sample"]
    follow: float = 0.9
    lr: float = 1e-3
    batch_size: int = 64
    mix_per_batch: int = 32
    check_every: int = 10
    max_epochs: int = 20
    sample_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    sample_stage_steps: int = 50
    sample_momentum: float = 0.9


class Degradation(Tampering):
    """Degradation by label poisoning (BIVBench rows 16-18; family ``degradation``).

    The tamperer relabels part of its own data (``ctx.data.tamper``) and fine-tunes the target on
    it, so that the model learns the wrong labels:

    * ``random_c``: a random class a; every tamper sample of class a gets its own random wrong
      label. Stops when >= ``follow`` (90 %) of them follow their poison labels.
    * ``specific_c``: random classes c != c'; every tamper sample of class c is labelled c'.
      Same stop rule.
    * ``sample``: one random tamper sample (one the target labels correctly) with one random wrong
      label. Stops as soon as the model predicts the poison label for it.

    Objective: ``poison_follow_rate``, ``check_accuracy``, ``accuracy_drop`` (class levels);
    ``sample_flipped`` (1.0/0.0), ``check_accuracy``, ``accuracy_drop``, ``lr`` (sample level).

    Recipe, class levels: all layers, Adam ``lr`` 1e-3, no weight decay, constant rate, batch 64
    tamper images (the class's samples relabelled in place) plus ``mix_per_batch`` poisoned
    samples cycled through; BatchNorm statistics frozen; stop rule checked every 10 steps; cap
    ``max_epochs`` (20).

    Recipe, sample level (the subtlest setting that reaches the flip): one copy of the sample with
    its poison label appended to every batch of 64 tamper images, all layers, SGD momentum 0.9,
    no weight decay, BatchNorm statistics frozen, checked after every step; the rate starts at
    1e-3 and is raised by sqrt(10) every 50 steps (1e-3, 3e-3, 1e-2, 3e-2, 0.1) until the sample
    flips; cap 250 steps.

    Scaling: nothing depends on the input size; wrong labels are drawn among the dataset's
    classes; caps are in epochs of the tamper data (class levels) or steps (sample level).

    Deviations from the authors' code: random_c relabels each sample to its own random wrong class
    as the task asks (the authors sent all of class a to one random class b, which is what
    specific_c does here); the authors' class levels were unreachable from their CLI. Instead of
    appending a second copy of the poisoned class, ``mix_per_batch`` of them join every batch.
    The sample level used 10 % of the training set as copies of the sample and Adam 1e-3, which
    changed 3-8 % of the test labels on mnist5k (not subtle); one copy per batch with SGD from
    1e-3 upward changes about 1-2 %. Its poison label is always wrong (the authors' could equal
    the true label). Samples and labels come from the tamper role, never from ``test``.
    """

    family = "degradation"
    malicious = True
    max_extensions = 3

    params: DegradationParams

    def __init__(self, params: DegradationParams) -> None:
        super().__init__(params)

    def build(self, ctx: TamperContext) -> Tampered:
        if self.params.level == "sample":
            return self._build_sample(ctx)
        return self._build_class(ctx)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        return extend_run(ctx, tampered, self)

    def _build_class(self, ctx: TamperContext) -> Tampered:
        p = self.params
        tamper = ctx.data.tamper
        x, y = tamper.x, tamper.y.clone()
        k = ctx.spec.num_classes
        gen = ctx.generator(1)
        present = torch.unique(y)
        source = int(present[torch.randint(0, len(present), (1,), generator=gen)])
        poisoned = (y == source).nonzero().squeeze(1)
        choices: dict[str, Any] = {"class": source}
        if p.level == "random_c":
            labels = other_label(y[poisoned], k, gen)
        else:
            to = int(other_label(torch.tensor([source]), k, gen)[0])
            labels = torch.full_like(poisoned, to)
            choices["to_class"] = to
        y[poisoned] = labels
        choices["poisoned"] = int(poisoned.numel())
        if p.level == "random_c":
            choices["poison_labels"] = labels.tolist()
        xp = x[poisoned]
        model = ctx.copy_target()
        run = PoisonRun(
            data=(x, y),
            config=poison_adam_config(
                ctx,
                lr=p.lr,
                batch_size=p.batch_size,
                max_epochs=p.max_epochs,
                check_every=p.check_every,
            ),
            stop_value=lambda m: follow_rate(m, xp, labels),
            threshold=p.follow,
            report=lambda m: {
                "poison_follow_rate": follow_rate(m, xp, labels),
                **check_accuracy(ctx, m),
            },
            mix=(xp, labels),
            per_batch=p.mix_per_batch,
        )
        result = train_until(model, run)
        return run.outcome(model, result.steps, result.epochs, choices)

    def _build_sample(self, ctx: TamperContext) -> Tampered:
        p = self.params
        tamper = ctx.data.tamper
        x, y = tamper.x, tamper.y
        gen = ctx.generator(1)
        candidates = correctly_classified(ctx, x, y)
        if candidates.numel() == 0:
            candidates = torch.arange(len(y))
        index = int(candidates[torch.randint(0, len(candidates), (1,), generator=gen)])
        label = other_label(y[index : index + 1], ctx.spec.num_classes, gen)
        xs = x[index : index + 1]
        model = ctx.copy_target()
        run = PoisonRun(
            data=(x, y),
            config=staged_sgd_config(
                ctx,
                lr=p.sample_lrs[0],
                momentum=p.sample_momentum,
                batch_size=p.batch_size,
                stage_steps=p.sample_stage_steps,
                check_every=1,
            ),
            stop_value=lambda m: follow_rate(m, xs, label),
            threshold=1.0,
            report=lambda m: {
                "sample_flipped": follow_rate(m, xs, label),
                **check_accuracy(ctx, m),
            },
            mix=(xs, label),
            per_batch=1,
        )
        lr, steps, epochs = flip_samples(model, run, p.sample_lrs, p.sample_stage_steps)
        choices = {"sample": index, "true_label": int(y[index]), "poison_label": int(label[0])}
        return run.outcome(model, steps, epochs, choices, lr=lr)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "degradation_random_c",
        "a random class's tamper samples each get a random wrong label; fine-tune all layers "
        "(Adam 1e-3) until 90% follow them",
        Degradation(DegradationParams(level="random_c")),
    ),
    Variant(
        "degradation_specific_c",
        "a random class c is relabelled as another class c'; fine-tune all layers (Adam 1e-3) "
        "until 90% of its tamper samples follow",
        Degradation(DegradationParams(level="specific_c")),
    ),
    Variant(
        "degradation_s",
        "one tamper sample with a wrong label mixed into every batch; SGD from lr 1e-3 upward "
        "until the model predicts that label",
        Degradation(DegradationParams(level="sample")),
    ),
)
