"""Post-training weight quantization (BIVBench Table 1, row 4), benign: a deployer shrinks the
model and thereby changes a few decisions.

It acts on the weight tensors of the convolution and fully connected layers only
(:data:`~misentry.tamper.layers.COMPRESSIBLE`, the output layer included): never on biases, never
on BatchNorm parameters or running statistics, never on the input normalization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.layers import compressible_weights, require_compressible
from misentry.tamper.measure import accuracy_objective

Granularity = Literal["per_tensor", "per_channel"]
Scheme = Literal["symmetric", "affine"]


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
        require_compressible(ctx.target, self.family)
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
        "quantization",
        "post-training fake quantization of Conv/Linear weights, 4-8 bits, per-tensor or "
        "per-channel, symmetric",
        Quantization(QuantizationParams()),
    ),
)
