"""Magnitude pruning (BIVBench Table 1, row 3), benign: a deployer shrinks the model and thereby
changes a few decisions.

It acts on the weight tensors of the convolution and fully connected layers only
(:func:`~misentry.tamper.layers.compressible_weights`, the output layer included, an imported
program's layers too): never on biases, never
on BatchNorm parameters or running statistics, never on the input normalization.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from misentry.models import TrainHooks, TrainState, fit
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.layers import compressible_weights, require_compressible
from misentry.tamper.measure import accuracy_objective
from misentry.tamper.recipes import fine_tuning_config


def pruned_count(sparsity: float, numel: int) -> int:
    """How many entries of a tensor with ``numel`` entries pruning at ``sparsity`` zeroes:
    ``ceil(sparsity * numel)`` (as the authors' code), never more than ``numel``."""
    return min(numel, math.ceil(sparsity * numel - 1e-9))


@torch.no_grad()
def prune_weights(
    model: nn.Module, sparsity: float, masks: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Per-tensor magnitude pruning of every Conv/Linear weight of ``model``, in place.

    In each weight tensor the :func:`pruned_count` entries of smallest magnitude are set to zero
    (ties broken by position). Entries already pruned by ``masks`` (a previous, lower sparsity)
    are pruned first, so successive masks are nested. Returns the keep-masks (bool, True = kept)
    by parameter name.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"prune_weights: sparsity must be in [0, 1); got {sparsity}")
    result: dict[str, torch.Tensor] = {}
    for name, weight in compressible_weights(model):
        magnitude = weight.detach().abs().flatten()
        if masks is not None and name in masks:
            magnitude = torch.where(masks[name].flatten(), magnitude, -1.0)
        k = pruned_count(sparsity, magnitude.numel())
        keep = torch.ones(magnitude.numel(), dtype=torch.bool)
        keep[torch.argsort(magnitude, stable=True)[:k]] = False
        keep = keep.view_as(weight)
        weight.mul_(keep)
        result[name] = keep
    return result


@dataclass(frozen=True)
class PruningParams:
    """Parameters of the pruning variant.

    Attributes:
        min_sparsity, max_sparsity: each instance draws its sparsity (the fraction of entries
            zeroed in every Conv/Linear weight tensor) log-uniformly in this range.
        lr: SGD learning rate of the masked fine-tuning, constant.
        momentum: SGD momentum.
        batch_size: images per step.
        epochs: masked fine-tuning epochs after pruning (0: one-shot pruning only).
        growth: each extension multiplies the sparsity by this factor ...
        sparsity_cap: ... up to this sparsity.
    """

    min_sparsity: float = 0.01
    max_sparsity: float = 0.30
    lr: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 1
    growth: float = 1.5
    sparsity_cap: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.min_sparsity <= self.max_sparsity <= self.sparsity_cap < 1:
            raise ValueError(
                "PruningParams: need 0 < min_sparsity <= max_sparsity <= sparsity_cap < 1; "
                f"got {self}"
            )
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 0 or self.growth <= 1:
            raise ValueError(
                f"PruningParams: need lr > 0, batch_size >= 1, epochs >= 0, growth > 1; got {self}"
            )


class Pruning(Tampering):
    """Magnitude pruning followed by masked fine-tuning, family ``pruning``.

    What it is: unstructured magnitude pruning (Han et al., "Learning both weights and connections
    for efficient neural networks", NeurIPS 2015), the WRT ``weight_pruning`` removal attack that
    BIVBench lists (Table 1, row 3): in every Conv/Linear weight tensor zero the ``ceil(s * n)``
    entries of smallest magnitude, then fine-tune one epoch with the pruned entries held at zero.

    Objective: the drawn sparsity ``s`` reached and fine-tuned for ``epochs`` (``met`` is always
    True). Recorded: ``sparsity`` (the zero fraction measured over the pruned tensors),
    ``accuracy_drop`` (target minus instance top-1 accuracy on ``ctx.data.check``),
    ``check_accuracy`` and ``target_check_accuracy``. Choices: ``sparsity`` (the current target
    sparsity) and ``drawn_sparsity`` (the instance's draw, before extensions).

    Stop rule: after the fine-tuning epoch. If no label changed, :meth:`extend` takes the next
    sparsity step, ``min(sparsity_cap, growth * s)`` = ``min(0.9, 1.5 s)``, re-prunes (masks are
    nested) and fine-tunes another epoch; at most ``max_extensions`` = 8 steps (1 % grows to at
    most 26 %, 30 % reaches the 90 % cap after 3), and none once the cap is reached.

    Parameters (:class:`PruningParams`): sparsity drawn log-uniformly in [1 %, 30 %] from the
    instance seed; SGD lr 1e-4, momentum 0.9, no weight decay, constant rate, batch 32. The
    rate is the gentle one on purpose: on mnist5k LeNet-5 one epoch at 1e-3 changed ~100 of 45k
    probe labels by itself (as many as ``ft_all_lr1e-3``) even at 1 % sparsity, where pruning
    alone changed 2, and it did not recover accuracy (97.4 % against 97.7 %); at 1e-4 the
    instance's change stays dominated by the pruning (8 to 13 flips at 1-3 %, accuracy kept).
    Every parameter trains (BatchNorm in train mode), and the masks are re-applied after every
    step (gradients of pruned entries are zeroed too) so pruned weights stay exactly zero.

    Scaling with the dataset: the sparsity is a fraction of each tensor, so it scales with the
    architecture; nothing depends on input size or class count.

    Deviations from the authors' code: their sparsity was one fixed value per dataset (CIFAR 0.7,
    ImageNet 0.3-2 %) so all 10 instances were identical; here each instance draws its own. Their
    key filter (``'bn'`` in the name) pruned BatchNorm parameters and running statistics of
    ResNet/DenseNet by accident; here only Conv/Linear weights are pruned, never biases or
    BatchNorm. They did not fine-tune; one masked epoch is what deployed pruning does (and keeps
    the accuracy drop small at the higher sparsities). The output layer is pruned too (as their
    ImageNet configs; their CIFAR config spared it).
    """

    family = "pruning"
    malicious = False
    max_extensions = 8
    params: PruningParams

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        require_compressible(ctx.target, self.family)
        u = float(torch.rand((), generator=ctx.generator(0), dtype=torch.float64))
        low, high = math.log(p.min_sparsity), math.log(p.max_sparsity)
        sparsity = math.exp(low + u * (high - low))
        model = ctx.copy_target()
        masks = prune_weights(model, sparsity)
        steps, epochs = self._tune(ctx, model, masks, ctx.sub_seed(1))
        return self._result(ctx, model, masks, sparsity, sparsity, steps, epochs, 0)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """The next sparsity step (``growth`` times, capped), re-pruned and re-tuned."""
        p = self.params
        current = float(tampered.choices["sparsity"])
        if tampered.extensions >= self.max_extensions or current >= p.sparsity_cap:
            return None
        sparsity = min(p.sparsity_cap, current * p.growth)
        model = copy.deepcopy(tampered.model)
        masks = prune_weights(model, sparsity, tampered.state.get("masks"))
        steps, epochs = self._tune(ctx, model, masks, ctx.sub_seed(2 + tampered.extensions))
        return self._result(
            ctx,
            model,
            masks,
            sparsity,
            float(tampered.choices["drawn_sparsity"]),
            tampered.steps + steps,
            tampered.epochs + epochs,
            tampered.extensions + 1,
        )

    def _tune(
        self, ctx: TamperContext, model: nn.Module, masks: dict[str, torch.Tensor], seed: int
    ) -> tuple[int, int]:
        p = self.params
        if p.epochs == 0:
            return 0, 0
        params = dict(model.named_parameters())
        pairs = [(params[name], keep) for name, keep in masks.items()]

        def mask_grads(_model: nn.Module, _state: TrainState) -> None:
            for weight, keep in pairs:
                if weight.grad is not None:
                    weight.grad.mul_(keep)

        @torch.no_grad()
        def reapply(_model: nn.Module, _state: TrainState) -> None:
            for weight, keep in pairs:
                weight.mul_(keep)

        config = fine_tuning_config(
            model,
            "all",
            lr=p.lr,
            momentum=p.momentum,
            batch_size=p.batch_size,
            epochs=p.epochs,
            seed=seed,
        )
        hooks = TrainHooks(after_backward=mask_grads, after_step=reapply)
        result = fit(model, ctx.data.tamper, config, hooks)
        return result.steps, result.epochs

    def _result(
        self,
        ctx: TamperContext,
        model: nn.Module,
        masks: dict[str, torch.Tensor],
        sparsity: float,
        drawn: float,
        steps: int,
        epochs: int,
        extensions: int,
    ) -> Tampered:
        weights = dict(compressible_weights(model))
        zeros = sum(int((weights[name] == 0).sum()) for name in masks)
        total = sum(weights[name].numel() for name in masks)
        return Tampered(
            model=model.eval(),
            objective={"sparsity": zeros / max(1, total), **accuracy_objective(ctx, model)},
            met=True,
            steps=steps,
            epochs=epochs,
            choices={"sparsity": sparsity, "drawn_sparsity": drawn},
            extensions=extensions,
            state={"masks": masks},
        )


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "pruning",
        "per-tensor magnitude pruning of Conv/Linear weights at a sparsity drawn log-uniformly "
        "in [1 %, 30 %], then 1 epoch of masked fine-tuning (SGD 1e-4)",
        Pruning(PruningParams()),
    ),
)
