"""Independently trained models of the same task: another architecture (BIVBench Table 1,
row 15) and the target's own architecture from another seed (the uniqueness property)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

from misentry.tamper.base import NotApplicable, TamperContext, Tampered, Tampering, Variant
from misentry.tamper.recipes import scratch_config
from misentry.tamper.replacement import (
    candidate_architectures,
    fresh_model,
    replacement_outcome,
    train_to_accuracy,
)


@dataclass(frozen=True)
class IndependentParams:
    """Parameters of an independently trained model.

    Attributes:
        tolerance: stop once the model's accuracy on ``ctx.data.check`` is at least the target's
            minus this (0.02 = 2 percentage points).
        max_epochs: cap on passes over ``ctx.data.owner_train`` (the recipe's cosine schedule
            anneals over this cap).
        max_cost_ratio: other architectures cost at most this many times the target's
            multiply-accumulates per image (used by ``different_arch`` only).
    """

    tolerance: float = 0.02
    max_epochs: int = 30
    max_cost_ratio: float = 4.0

    def __post_init__(self) -> None:
        if not 0 <= self.tolerance < 1 or self.max_epochs < 1 or self.max_cost_ratio <= 0:
            raise ValueError(
                f"IndependentParams: need tolerance in [0, 1), max_epochs >= 1, "
                f"max_cost_ratio > 0; got {self}"
            )


class IndependentModel(Tampering):
    """An independently trained model of the same task (the base of ``different_arch`` and
    ``independent_retrain``; not a family itself).

    The model is built from scratch with a seed drawn from the instance seed and trained on the
    images the target trained on (``ctx.data.owner_train``, true labels) with the target's
    recipe (:func:`scratch_config`), until its accuracy on ``ctx.data.check`` is within
    ``tolerance`` (2 points) of the target's (checked at every epoch end) or ``max_epochs`` (30)
    have passed (then ``met`` is False). Recorded: ``check_accuracy``,
    ``target_check_accuracy``, ``accuracy_gap``, ``agreement``. ``choices``: ``architecture``,
    ``model_seed``. An independently trained model disagrees with the target on many inputs,
    so there is no :meth:`extend`.

    Why 2 points and 30 epochs (the issue suggested 1 point): the target's own accuracy is one
    draw from the recipe's seed-to-seed spread, about +-1 point on mnist5k's 1,000 test images
    and more on digits' 358. With 1 point and a 20-epoch cap, 3 of 10 LeNet-5 retrains and 9 of
    10 MLPs on mnist5k ran to the cap unmet (the retrains level off at 96.1-97.4 %, the MLPs at
    95.1-96.7 %, against the target's 97.7 %), and the digits retrain of instance 0 did too;
    with 2 points and 30 epochs all 20 mnist5k instances meet it, at epoch 8-18 (LeNet-5) and
    14-24 (MLP).
    """

    params: IndependentParams

    def __init__(self, params: IndependentParams) -> None:
        super().__init__(params)

    @abstractmethod
    def choose_architecture(self, ctx: TamperContext) -> str:
        """The architecture of the instance."""

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        arch = self.choose_architecture(ctx)
        model_seed = ctx.sub_seed(1)
        model = fresh_model(ctx, arch, model_seed, self.family)
        config = scratch_config(ctx, p.max_epochs, ctx.sub_seed(2))
        run = train_to_accuracy(ctx, model, ctx.data.owner_train, config, p.tolerance)
        choices = {"architecture": arch, "model_seed": model_seed}
        return replacement_outcome(ctx, model, run, p.tolerance, arch, choices)


class DifferentArch(IndependentModel):
    """An independently trained model of another architecture, family ``different_arch``.

    What it is: BIVBench's "different architectures" row (Table 1, row 15): models of other
    architectures trained by the owner's procedure on the same task (the authors trained them
    with their per-architecture configs in ``train_protect_model.py``). A fingerprint must not
    mistake them for the target, and here they must be told apart from it.

    The architecture: one of :func:`candidate_architectures` (the registered architectures other
    than the target's that build and run for the input spec, need no missing extra, and cost at
    most ``max_cost_ratio`` = 12 times the target's multiply-accumulates per image); instance
    ``i`` takes candidate ``i mod k``, so instances cycle through the architectures. On
    mnist5k/LeNet-5 and digits the candidates are the MLP and MobileNet-small (11.7x and 4x
    LeNet-5's cost; VGG-small, ResNet-20 and the GTSRB CNN cost 35-110x and would dominate the
    build); for ResNet-20, GTSRB-CNN or DenseNet targets all other registered architectures
    qualify. Skipped (:class:`~misentry.tamper.base.NotApplicable`) when no architecture
    qualifies.

    Objective, stop rule and recording: see :class:`IndependentModel`; ``tolerance`` 2 points,
    ``max_epochs`` 30. Measured on mnist5k (10 instances, all MLPs, 2 CPU cores): 95.7-96.5 %
    test accuracy (target 97.7 %) after 14-24 epochs, 1.1-1.7 s each.

    Scaling with the dataset: the recipe is the target's; the architectures are built for the
    input spec and filtered as above. On an imported target the input spec is the record's (the
    normalization of its input contract) and the cost is measured on the imported model itself,
    so every format gets registered architectures no costlier than it.

    Deviations from the authors' code: one shared recipe (the target's) instead of a config per
    architecture; early stop within 2 points of the target instead of a full run with best-test
    checkpoint selection; costly architectures are left out (see the module docstring).
    """

    family = "different_arch"
    malicious = False

    def choose_architecture(self, ctx: TamperContext) -> str:
        others = candidate_architectures(ctx, self.params.max_cost_ratio)
        if not others:
            raise NotApplicable(
                f"different_arch: no registered architecture other than {ctx.architecture!r} "
                f"builds for input {ctx.spec.shape} within {self.params.max_cost_ratio}x the "
                f"target's cost"
            )
        return others[ctx.index % len(others)]


class IndependentRetrain(IndependentModel):
    """The target's architecture and data, trained again from another seed, family
    ``independent_retrain``.

    What it is: the uniqueness property of model fingerprinting (the founding paper's
    "independently trained" models; in BIVBench the other ``best_i`` checkpoints that
    ``train_protect_model.py`` trains per configuration): a model with the target's
    architecture, data and recipe but its own initial weights and batch order. It is a different
    model, and a fingerprint must tell it apart.

    Objective, stop rule and recording: see :class:`IndependentModel`; ``tolerance`` 2 points,
    ``max_epochs`` 30 (the recipe's 40-epoch cosine schedule compressed to 30, so a capped run
    still anneals). Measured on mnist5k (10 instances, 2 CPU cores): 95.7-96.2 % test accuracy
    (target 97.7 %) after 9-18 epochs, 2.2-3.6 s each.

    Scaling with the dataset: the target's architecture, recipe and training pool.

    On an imported target (``misentry import``): an imported ``module`` is re-initialised (a copy
    of the target with every layer redrawn by its ``reset_parameters``, seeded), which is its own
    architecture from another seed; a TorchScript or ``torch.export`` program cannot be, and
    standing in another architecture would make this ``different_arch``, so the family is skipped
    (:class:`~misentry.tamper.base.NotApplicable`) with the reason.

    Deviations from the authors' code: early stop within 2 points of the target instead of a
    full run with best-test checkpoint selection.
    """

    family = "independent_retrain"
    malicious = False

    def choose_architecture(self, ctx: TamperContext) -> str:
        return ctx.architecture


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "different_arch",
        "an independently trained model of another registered architecture, the target's "
        "recipe, until within 2 points of its accuracy",
        DifferentArch(IndependentParams(max_cost_ratio=12.0)),
    ),
    Variant(
        "independent_retrain",
        "the target's architecture, data and recipe from another seed, until within 2 points "
        "of its accuracy",
        IndependentRetrain(IndependentParams()),
    ),
)
