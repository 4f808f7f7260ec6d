"""Model compression: magnitude pruning and post-training weight quantization (BIVBench Table 1,
rows 3-4), both benign: a deployer shrinks the model and thereby changes a few decisions.

Both act on the weight tensors of the convolution and fully connected layers only (``nn.Conv1d``,
``nn.Conv2d``, ``nn.Conv3d``, ``nn.Linear``, the output layer included): never on biases, never on
BatchNorm parameters or running statistics, never on the input normalization.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from misentry.models import TrainConfig, TrainHooks, TrainState, fit
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.measure import accuracy

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layer types whose ``weight`` pruning and quantization act on."""

Granularity = Literal["per_tensor", "per_channel"]
Scheme = Literal["symmetric", "affine"]


def compressible_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, weight)`` of every Conv/Linear layer, in module order (biases excluded)."""
    return [
        (f"{name}.weight" if name else "weight", module.weight)
        for name, module in model.named_modules()
        if isinstance(module, COMPRESSIBLE)
    ]


def accuracy_objective(ctx: TamperContext, model: nn.Module) -> dict[str, float]:
    """``check_accuracy``, ``target_check_accuracy`` and ``accuracy_drop`` (target minus model)
    on ``ctx.data.check``."""
    check = ctx.data.check
    ours, target = accuracy(model, check), accuracy(ctx.target, check)
    return {"check_accuracy": ours, "target_check_accuracy": target, "accuracy_drop": target - ours}


# --- pruning --------------------------------------------------------------------------------


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

        config = TrainConfig(
            epochs=p.epochs,
            batch_size=p.batch_size,
            optimizer="sgd",
            lr=p.lr,
            momentum=p.momentum,
            weight_decay=0.0,
            schedule="constant",
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


# --- quantization ---------------------------------------------------------------------------


def quantize_tensor(
    weight: torch.Tensor, bits: int, granularity: Granularity, scheme: Scheme = "symmetric"
) -> torch.Tensor:
    """Fake-quantize ``weight``: round it to a ``bits``-bit grid and return the dequantized values
    (float32, same shape).

    ``per_tensor`` uses one grid for the tensor, ``per_channel`` one per output channel (dim 0 of
    a Conv or Linear weight). ``symmetric``: step ``max|w| / (2^(bits-1) - 1)``, integers in
    ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]`` (``2^bits - 1`` levels, zero exact). ``affine``: the
    range ``[min(w, 0), max(w, 0)]`` cut into ``2^bits - 1`` steps with an integer zero point
    (``2^bits`` levels, zero exact).
    """
    if bits < 2:
        raise ValueError(f"quantize_tensor: need at least 2 bits; got {bits}")
    w = weight.detach().to(torch.float32)
    if granularity == "per_channel" and w.dim() > 1:
        dims = tuple(range(1, w.dim()))
        shape = (-1,) + (1,) * (w.dim() - 1)
        lo = w.amin(dim=dims).view(shape)
        hi = w.amax(dim=dims).view(shape)
    elif granularity in ("per_tensor", "per_channel"):
        lo, hi = w.min(), w.max()
    else:
        raise ValueError(f"quantize_tensor: unknown granularity {granularity!r}")
    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale
    if scheme == "affine":
        levels = 2**bits - 1
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / levels
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / scale)
        q = torch.clamp(torch.round(w / scale) + zero, 0, levels)
        return (q - zero) * scale
    raise ValueError(f"quantize_tensor: unknown scheme {scheme!r}")


@torch.no_grad()
def quantize_weights(
    model: nn.Module, bits: int, granularity: Granularity, scheme: Scheme = "symmetric"
) -> float:
    """Fake-quantize every Conv/Linear weight of ``model`` in place (:func:`quantize_tensor`).

    Returns the relative weight error ``||W_q - W|| / ||W||`` over all quantized tensors.
    """
    error = norm = 0.0
    for _, weight in compressible_weights(model):
        quantized = quantize_tensor(weight, bits, granularity, scheme)
        error += float((quantized - weight).pow(2).sum())
        norm += float(weight.pow(2).sum())
        weight.copy_(quantized)
    return math.sqrt(error / norm) if norm > 0 else 0.0


@dataclass(frozen=True)
class QuantizationParams:
    """Parameters of the quantization variant.

    Attributes:
        bits: the bit widths an instance draws from (uniformly).
        granularities: the grids an instance draws from (uniformly): ``per_tensor`` or
            ``per_channel``.
        scheme: ``symmetric`` (zero-centred grid) or ``affine`` (min/max grid with a zero point).
        min_bits: extensions remove one bit at a time down to this width.
    """

    bits: tuple[int, ...] = (4, 5, 6, 7, 8)
    granularities: tuple[Granularity, ...] = ("per_tensor", "per_channel")
    scheme: Scheme = "symmetric"
    min_bits: int = 2

    def __post_init__(self) -> None:
        if not self.bits or min(self.bits) < self.min_bits or self.min_bits < 2:
            raise ValueError(f"QuantizationParams: need bits >= min_bits >= 2; got {self}")
        if not self.granularities or any(
            g not in ("per_tensor", "per_channel") for g in self.granularities
        ):
            raise ValueError(f"QuantizationParams: unknown granularity in {self.granularities}")
        if self.scheme not in ("symmetric", "affine"):
            raise ValueError(f"QuantizationParams: unknown scheme {self.scheme!r}")


class Quantization(Tampering):
    """Post-training weight quantization, family ``quantization``.

    What it is: uniform post-training quantization of the weights (Jacob et al., "Quantization and
    training of neural networks for efficient integer-arithmetic-only inference", CVPR 2018;
    the WRT ``weight_quantization`` attack BIVBench lists in Table 1, row 4), written by hand
    (no ``torch.ao``) and *fake-quantized*: each Conv/Linear weight is replaced by its
    dequantized value, stored as float32, so the model runs as before. Biases, BatchNorm and
    activations stay in float32.

    Objective: the weights on the instance's grid; nothing to optimize, so ``met`` is always True.
    Recorded: ``accuracy_drop`` (target minus instance top-1 accuracy on ``ctx.data.check``),
    ``check_accuracy``, ``target_check_accuracy`` and ``weight_error`` (``||W_q - W|| / ||W||``).
    Choices: ``bits``, ``granularity`` and ``scheme``.

    Stop rule: immediately after quantizing. If no label changed, :meth:`extend` re-quantizes the
    target's weights with one bit fewer, down to ``min_bits`` = 2 (at most ``max_extensions`` = 6,
    from 8 bits).

    Parameters (:class:`QuantizationParams`): instance ``i`` takes cell ``i mod 10`` of the grid
    ``bits`` 4-8 x granularity (per-tensor, per-output-channel), so 10 instances cover the grid
    and no two of them are the same model (quantization is deterministic: a seed could not tell
    two instances of one cell apart). Scheme: symmetric by default (the usual choice for weights,
    and the one of the bit-flip reference BFA), ``2^bits - 1`` levels with zero exact.

    Scaling with the dataset: nothing depends on input size or class count; per-channel grids
    follow the layers' output channels.

    Deviations from the authors' code: they quantized every parameter (biases and BatchNorm too)
    with ``2^b`` min/max levels, moved values to level *midpoints*, then fine-tuned one epoch in
    full precision (so their weights were off the grid again; the quantization configs also
    lacked an optimizer and crashed). Here: Conv/Linear weights only, round to nearest, no
    fine-tuning (post-training quantization as deployed), bits and granularity per instance
    instead of one fixed width per dataset.
    """

    family = "quantization"
    malicious = False
    max_extensions = 6
    params: QuantizationParams

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        cells = [(bits, granularity) for bits in p.bits for granularity in p.granularities]
        bits, granularity = cells[ctx.index % len(cells)]
        return self._quantized(ctx, bits, granularity, extensions=0)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """The target re-quantized with one bit fewer; None at ``min_bits``."""
        bits = int(tampered.choices["bits"])
        if tampered.extensions >= self.max_extensions or bits <= self.params.min_bits:
            return None
        granularity: Granularity = tampered.choices["granularity"]
        return self._quantized(ctx, bits - 1, granularity, tampered.extensions + 1)

    def _quantized(
        self, ctx: TamperContext, bits: int, granularity: Granularity, extensions: int
    ) -> Tampered:
        model = ctx.copy_target()
        error = quantize_weights(model, bits, granularity, self.params.scheme)
        return Tampered(
            model=model,
            objective={**accuracy_objective(ctx, model), "weight_error": error},
            met=True,
            choices={"bits": bits, "granularity": granularity, "scheme": self.params.scheme},
            extensions=extensions,
        )


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "pruning",
        "per-tensor magnitude pruning of Conv/Linear weights at a sparsity drawn log-uniformly "
        "in [1 %, 30 %], then 1 epoch of masked fine-tuning (SGD 1e-4)",
        Pruning(PruningParams()),
    ),
    Variant(
        "quantization",
        "post-training fake quantization of Conv/Linear weights, 4-8 bits, per-tensor or "
        "per-channel, symmetric",
        Quantization(QuantizationParams()),
    ),
)
