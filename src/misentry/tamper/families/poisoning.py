"""Data poisoning without a trigger: degradation (a class or one sample learns wrong labels) and
the targeted attack (chosen victims are pushed to chosen labels).

Every recipe starts from a copy of the target, trains it through :func:`misentry.models.fit` on
the tamperer's data (``ctx.data.tamper``) with the poisoned samples mixed into each batch, and
stops at the first check where its objective holds. The helpers here (:class:`PoisonRun`,
:func:`train_until`, :func:`flip_samples`, :func:`extend_run`) are shared with the trigger
families in :mod:`misentry.tamper.families.backdoor`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from misentry.models import TrainConfig, TrainHooks, TrainResult, TrainState, fit, logits, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import accuracy

Batch = tuple[torch.Tensor, torch.Tensor]

# --------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------


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

    One :func:`fit` per rate of ``lrs`` (in order, each continuing from the weights the previous
    one left, for at most ``stage_steps`` steps, checked every ``run.config.check_every`` steps),
    until the stop rule holds. Returns the rate of the last stage and the steps and epochs
    summed over all stages; ``run.config`` keeps the last rate (for :func:`extend_run`).
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
    config = replace(
        run.config,
        epochs=1,
        max_steps=None,
        check_every=0,
        seed=ctx.sub_seed(1000 + tampered.extensions),
    )
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


def check_accuracy(ctx: TamperContext, model: nn.Module) -> dict[str, float]:
    """``check_accuracy`` of ``model`` and ``accuracy_drop`` from the target's, on ``check``."""
    check = ctx.data.check
    before = accuracy(ctx.target, check)
    after = accuracy(model, check)
    return {"check_accuracy": after, "accuracy_drop": before - after}


def follow_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` that ``model`` labels ``y``."""
    return float((predict(model, x) == y).float().mean())


def other_label(true: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each of ``true`` (drawn from ``generator``)."""
    shift = torch.randint(1, num_classes, true.shape, generator=generator)
    return (true + shift) % num_classes


def correctly_classified(ctx: TamperContext, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Indices of the images the target labels correctly."""
    return (predict(ctx.target, x) == y).nonzero().squeeze(1)


# --------------------------------------------------------------------------------------------
# Degradation
# --------------------------------------------------------------------------------------------


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
            config=TrainConfig(
                epochs=p.max_epochs,
                batch_size=p.batch_size,
                optimizer="adam",
                lr=p.lr,
                weight_decay=0.0,
                schedule="constant",
                seed=ctx.sub_seed(2),
                check_every=p.check_every,
                freeze_bn=True,
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
            config=TrainConfig(
                epochs=max(1, p.sample_stage_steps),
                batch_size=p.batch_size,
                optimizer="sgd",
                lr=p.sample_lrs[0],
                momentum=p.sample_momentum,
                weight_decay=0.0,
                schedule="constant",
                seed=ctx.sub_seed(2),
                check_every=1,
                freeze_bn=True,
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


# --------------------------------------------------------------------------------------------
# Targeted attack
# --------------------------------------------------------------------------------------------


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
        return TrainConfig(
            epochs=max(1, p.stage_steps),
            batch_size=p.batch_size,
            optimizer="sgd",
            lr=p.lrs[0],
            momentum=p.momentum,
            weight_decay=0.0,
            schedule="constant",
            seed=ctx.sub_seed(2),
            check_every=p.check_every,
            freeze_bn=True,
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
    Variant(
        "targeted",
        "1-10 tamper victims pushed to their second most likely class; SGD from lr 1e-3 upward "
        "until all flip",
        TargetedPoisoning(TargetedParams()),
    ),
)
