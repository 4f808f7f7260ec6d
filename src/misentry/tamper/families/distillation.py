"""Knowledge distillation into a fresh student: a benign, model-replacing family of BIVBench
(Table 1, row 5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from misentry.models import TrainHooks, TrainState, predict
from misentry.tamper.base import NotApplicable, TamperContext, Tampered, Tampering, Variant
from misentry.tamper.namespace import concat
from misentry.tamper.recipes import scratch_config
from misentry.tamper.replacement import (
    candidate_architectures,
    fresh_model,
    rebuild_reason,
    replacement_outcome,
    train_to_accuracy,
)


@dataclass(frozen=True)
class DistillationParams:
    """Parameters of knowledge distillation into a fresh student.

    Attributes:
        own_arch_share: probability that an instance's student has the target's architecture;
            the others get one of the candidate architectures (:func:`candidate_architectures`).
        tolerance: stop once the student's accuracy on ``ctx.data.check`` is at least the
            target's minus this (0.02 = 2 percentage points).
        max_epochs: cap on passes over the distillation images (the recipe's cosine schedule
            anneals over this cap).
        max_cost_ratio: other-architecture students cost at most this many times the target's
            multiply-accumulates per image.
    """

    own_arch_share: float = 0.5
    tolerance: float = 0.02
    max_epochs: int = 20
    max_cost_ratio: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.own_arch_share <= 1 or not 0 <= self.tolerance < 1:
            raise ValueError(
                f"DistillationParams: own_arch_share in [0, 1], tolerance in [0, 1): {self}"
            )
        if self.max_epochs < 1 or self.max_cost_ratio <= 0:
            raise ValueError(
                f"DistillationParams: need max_epochs >= 1, max_cost_ratio > 0; got {self}"
            )


class Distillation(Tampering):
    """Knowledge distillation into a fresh student, family ``distillation``.

    What it is: BIVBench's distillation row (Table 1, row 5; WRT's ``distillation.py``, after
    Hinton et al., "Distilling the knowledge in a neural network", 2015): the tamperer queries
    the target and trains a new model from scratch to copy its answers. The student sees the
    tamperer's and the owner's images (``ctx.data.tamper`` + ``ctx.data.owner_train``, images
    only: their labels are never used) and learns the target's **hard labels** (its argmax on
    each training batch, after augmentation), as the authors' code effectively does (their
    temperature/KL term is commented out).

    The student: with probability ``own_arch_share`` (0.5, drawn from the instance seed) the
    target's own architecture, otherwise one of :func:`candidate_architectures` (drawn from the
    seed); its initial weights come from the instance seed. ``Tampered.architecture`` is the
    student's. ``choices``: ``student``, ``student_seed``, ``labels`` ("hard").

    Objective: the student's accuracy on ``ctx.data.check`` is within ``tolerance`` (2 points)
    of the target's on the same images. Recorded: ``check_accuracy``,
    ``target_check_accuracy``, ``accuracy_gap`` (target minus student) and ``agreement`` (share
    of check images labelled as the target labels them).

    Stop rule: checked at every epoch end; at most ``max_epochs`` = 20 epochs (then ``met`` is
    False). A student trained from scratch disagrees with the target on many inputs, so there is
    no :meth:`extend`. Measured on mnist5k (10 instances, 2 CPU cores): 7 LeNet-5 and 3 MLP
    students, 95.7-97.1 % test accuracy (target 97.7 %) after 6-12 epochs of 3,500 images,
    1.8-3.2 s each.

    Parameters (:class:`DistillationParams`): ``own_arch_share`` 0.5, ``tolerance`` 0.02,
    ``max_epochs`` 20, ``max_cost_ratio`` 4. The optimizer, learning rate, momentum, weight
    decay, batch size, schedule and augmentation are the target's recipe
    (:func:`scratch_config`), so students train as the owner trained the target.

    Scaling with the dataset: the recipe is the target's (per dataset); the student is built for
    the input spec; architectures that cannot take the input, need a missing extra or cost more
    than ``max_cost_ratio`` times the target (its MACs measured on the target model) are skipped
    (if none is left, the student has the target's architecture). On mnist5k/LeNet-5 the other
    student is the MLP.

    On an imported target (``misentry import``): the input spec is the record's (the shape,
    classes and the normalization of the model's input contract), so a registered student takes
    the same pixels. The target's own architecture has no registry name: for an imported
    ``module`` the own-architecture student is a copy of the target with every layer redrawn by
    its ``reset_parameters`` (:func:`~misentry.tamper.replacement.fresh_model`); a TorchScript or
    ``torch.export`` program cannot be re-initialised, so its students are all registered
    architectures (the own-architecture draw takes a candidate instead), and the family is
    skipped (:class:`~misentry.tamper.base.NotApplicable`) only when no candidate fits.

    Deviations from the authors' code: the authors trained a fixed 60 epochs with step schedules
    and kept the best-test checkpoint; here training stops at the first epoch within 2 points of
    the target (subtlest-tampering rule). Their students were WRN-16-6 / a GTSRB ConvNet /
    EfficientNet-B0; ours are the target's architecture or a cheaper registered one. Their
    CIFAR teacher labels were misaligned with the images and their GTSRB loader used the true
    labels; not reproduced.
    """

    family = "distillation"
    malicious = False
    params: DistillationParams

    def __init__(self, params: DistillationParams) -> None:
        super().__init__(params)

    def student_architecture(self, ctx: TamperContext) -> str:
        """The instance's student architecture, drawn from the seed (a candidate architecture
        when the target's own cannot be re-initialised, :func:`rebuild_reason`)."""
        gen = ctx.generator(0)
        own = float(torch.rand(1, generator=gen)) < self.params.own_arch_share
        others = candidate_architectures(ctx, self.params.max_cost_ratio)
        unbuildable = rebuild_reason(ctx)
        if (own or not others) and unbuildable is None:
            return ctx.architecture
        if not others:
            raise NotApplicable(
                f"distillation needs a student architecture: no registered architecture builds "
                f"for input {ctx.spec.shape} within {self.params.max_cost_ratio}x the target's "
                f"cost, and the target's own cannot be used: {unbuildable}"
            )
        return others[int(torch.randint(0, len(others), (1,), generator=gen))]

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        arch = self.student_architecture(ctx)
        student_seed = ctx.sub_seed(1)
        model = fresh_model(ctx, arch, student_seed, self.family)
        teacher = ctx.target

        def teacher_labels(
            x: torch.Tensor, _y: torch.Tensor, _state: TrainState
        ) -> tuple[torch.Tensor, torch.Tensor]:
            return x, predict(teacher, x)

        images = concat([ctx.data.tamper, ctx.data.owner_train])
        config = scratch_config(ctx, p.max_epochs, ctx.sub_seed(2))
        run = train_to_accuracy(
            ctx, model, images, config, p.tolerance, TrainHooks(transform_batch=teacher_labels)
        )
        choices = {"student": arch, "student_seed": student_seed, "labels": "hard"}
        return replacement_outcome(ctx, model, run, p.tolerance, arch, choices)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "distillation",
        "a fresh student (the target's or a cheaper architecture) trained on the target's hard "
        "labels until within 2 points of its accuracy",
        Distillation(DistillationParams()),
    ),
)
