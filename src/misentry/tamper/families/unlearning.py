"""Unlearning one training sample: the owner forgets one of the images the target was trained on
(a data-removal request; BIVBench's ``data_remove`` recipe, Table 1, row 1).

The recipe starts from the target's weights, goes through the project's one training loop
(:func:`misentry.models.fit`) one gradient-ascent step at a time and stops at the first step where
its confidence objective holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet
from misentry.models import TrainHooks, TrainState, fit, predict
from misentry.models.train import evaluation
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import confidence_in
from misentry.tamper.recipes import CONSTANT_RATE


@dataclass(frozen=True)
class UnlearningParams:
    """Parameters of unlearning one training sample.

    Attributes:
        lr: Adam learning rate, constant (the authors' 1e-4).
        threshold: stop once the model's confidence in the sample's label is below this
            (softmax probability, the authors' 0.95).
        max_steps: the authors' "hard to forget" cap on ascent steps (4).
        max_confidence: the sample is drawn among the correctly classified images whose
            confidence is below this (0.99999): on images the target fits to float precision
            the ascent gradient vanishes and Adam barely moves.
    """

    lr: float = 1e-4
    threshold: float = 0.95
    max_steps: int = 4
    max_confidence: float = 0.99999

    def __post_init__(self) -> None:
        if (
            self.lr <= 0
            or not 0 < self.threshold <= 1
            or self.max_steps < 1
            or self.max_confidence <= 0
        ):
            raise ValueError(
                f"UnlearningParams: need lr > 0, 0 < threshold <= 1, max_steps >= 1; got {self}"
            )


class Unlearning(Tampering):
    """Unlearning one training sample by gradient ascent, family ``unlearning``.

    What it is: BIVBench's ``data_remove/Unlearning.py`` (Table 1, row 1): the owner honours a
    data-removal request for one image the target was trained on by gradient *ascent* on that
    image alone (loss = -cross-entropy), a few Adam steps from the target's weights.

    The sample: one image of ``ctx.data.owner_train`` (the images the target trained on), drawn
    from the instance seed among those the target classifies correctly with a confidence below
    ``max_confidence`` (0.99999); failing that, among the correct ones; failing that, any
    image. The ceiling matters: 712 of mnist5k's 2,500 training images have a float32
    confidence of exactly 1.0, where the ascent gradient is below Adam's epsilon and the weights
    barely move (with no ceiling, an instance was still unobservable after 50 extension steps);
    1,040 images qualify on mnist5k, 761 of 899 on digits. Its index within the role's set and
    its label are the instance's ``choices`` (``sample_index``, ``label``).

    Objective: the authors' stop rule: the model's confidence in the sample's label falls below
    ``threshold`` (0.95), or ``max_steps`` (4) ascent steps were taken ("hard to forget").
    ``met`` is True when the rule ended the run, which is always; ``objective["forgotten"]`` is
    1.0 when the confidence fell below the threshold and 0.0 when the cap ended it. Measured on
    mnist5k (10 instances): 9 took the 4 steps (confidence 0.994-1.0 down to 0.985-0.9999),
    one stopped after 1 step (0.934 to 0.913); all were observable without extension.
    Recorded: ``confidence`` (after), ``confidence_before`` and ``forgotten``.

    Stop rule: the confidence is measured after every step (``check_every=1``). If the builder
    finds no top-1 label changed, :meth:`extend` adds one more ascent step, at most
    ``max_extensions`` = 50. An extension re-runs the same seeded Adam trajectory from the
    target one step longer, so an extended instance is exactly the instance a longer run would
    have given (Adam's moment estimates are not lost between steps).

    Parameters (:class:`UnlearningParams`): Adam ``lr`` 1e-4 (constant, no weight decay),
    ``threshold`` 0.95, ``max_steps`` 4, ``max_confidence`` 0.99999. Each step is a batch of the
    one sample, no augmentation.

    Scaling with the dataset: nothing depends on the input size or class count; one sample, one
    image per step.

    Deviations from the authors' code:

    * The forward passes run in eval mode (BatchNorm statistics frozen, dropout off). The authors
      switched the model to ``train()`` after the first check, so BatchNorm layers would update
      their running statistics from a single image, a large change unrelated to forgetting.
    * The sample is drawn from the instance seed among correctly classified training images
      below the confidence ceiling (the authors: sample *i* of the first ten of a shuffled,
      augmented loader, whose augmentation kept confidences off 1.0), with no augmentation;
      the unused retain-batch loss is not computed. Two instances may draw the same sample
      (then they are the same model: the run is deterministic given the sample).
    * The authors' inverted existence check and unreachable save (no instance was ever written)
      are not reproduced.
    """

    family = "unlearning"
    malicious = False
    max_extensions = 50
    params: UnlearningParams

    def __init__(self, params: UnlearningParams) -> None:
        super().__init__(params)

    def build(self, ctx: TamperContext) -> Tampered:
        owner = ctx.data.owner_train
        index = choose_sample(ctx, owner, self.params.max_confidence)
        return self._run(ctx, index, steps=None)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """One more ascent step (the same Adam run, one step longer); None after the cap."""
        if tampered.extensions >= self.max_extensions:
            return None
        index = int(tampered.choices["sample_index"])
        return self._run(ctx, index, steps=tampered.steps + 1, extensions=tampered.extensions + 1)

    def _run(
        self, ctx: TamperContext, index: int, steps: int | None, extensions: int = 0
    ) -> Tampered:
        """Ascend from the target: until the stop rule (``steps`` None) or exactly ``steps``."""
        p = self.params
        sample = ctx.data.owner_train.subset(torch.tensor([index]))
        x, y = sample.x, sample.y
        before = float(confidence_in(ctx.target, x, y)[0])
        model = ctx.copy_target()
        total = p.max_steps if steps is None else steps

        def evaluate(m: nn.Module, _state: TrainState) -> dict[str, float]:
            return {"confidence": float(confidence_in(m, x, y)[0])}

        def stop_when(state: TrainState) -> bool:
            return state.metrics["confidence"] < p.threshold

        config = replace(
            CONSTANT_RATE,
            epochs=total,
            batch_size=1,
            optimizer="adam",
            lr=p.lr,
            seed=ctx.sub_seed(1),
            max_steps=total,
            check_every=1,
            freeze_bn=True,
        )
        hooks = TrainHooks(
            loss=ascent_loss,
            evaluate=evaluate if steps is None else None,
            stop_when=stop_when if steps is None else None,
        )
        result = fit(model, (x, y), config, hooks)
        after = float(confidence_in(model, x, y)[0])
        return Tampered(
            model=model.eval(),
            objective={
                "confidence": after,
                "confidence_before": before,
                "forgotten": float(after < p.threshold),
            },
            met=True,
            steps=result.steps,
            epochs=result.epochs,
            choices={"sample_index": index, "label": int(y[0])},
            extensions=extensions,
        )


def ascent_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative cross-entropy, with the forward pass in eval mode (gradient ascent)."""
    with evaluation(model):
        out = model(x)
    return -F.cross_entropy(out, y)


def choose_sample(ctx: TamperContext, data: ImageSet, max_confidence: float) -> int:
    """An index into ``data``, different for each instance: among the images the target labels
    correctly with a confidence below ``max_confidence``; failing that, among the correct ones;
    failing that, any image."""
    conf = confidence_in(ctx.target, data.x, data.y)
    correct = predict(ctx.target, data.x) == data.y
    candidates = torch.arange(len(data))
    for mask in (correct & (conf < max_confidence), correct):
        if bool(mask.any()):
            candidates = torch.nonzero(mask).flatten()
            break
    return int(candidates[ctx.distinct_choice(len(candidates), stream=1)])


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "unlearning",
        "forget one owner training image by gradient ascent (Adam 1e-4) until its confidence "
        "is below 0.95, at most 4 steps",
        Unlearning(UnlearningParams()),
    ),
)
