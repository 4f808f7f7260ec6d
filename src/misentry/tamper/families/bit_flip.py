"""Bit-flip attack: flip a few bits of the 8-bit weights until the model misbehaves.

The progressive bit search of Rakin, He and Fan ("Bit-Flip Attack: Crushing Neural Network with
Progressive Bit Search", ICCV 2019; reference implementation ``elliothe/BFA``), applied to the
float target as single-weight changes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from misentry.models import predict
from misentry.tamper.base import NotApplicable, TamperContext, Tampered, Tampering, Variant
from misentry.tamper.layers import is_compressible, layer_weight
from misentry.tamper.measure import accuracy

BITS = 8
"""Weights are viewed as 8-bit two's-complement integers."""

BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, -128], dtype=torch.int64)
"""The value of each bit of an 8-bit two's-complement integer, bit 0 (LSB) to bit 7 (sign)."""

QMAX = 127
"""The largest magnitude the symmetric quantizer maps max|W| to (step = max|W| / 127)."""


def int8_to_bits(q: torch.Tensor) -> torch.Tensor:
    """Integers in [-128, 127] of shape (...) to their two's-complement bits, shape (..., 8).

    Bit ``b`` (0 = least significant, 7 = sign) is ``out[..., b]``, as int64 0/1.
    """
    values = q.to(torch.int64)
    if values.numel() and (int(values.min()) < -128 or int(values.max()) > 127):
        raise ValueError("int8_to_bits: values must lie in [-128, 127]")
    unsigned = values & 0xFF
    return (unsigned.unsqueeze(-1) >> torch.arange(BITS, dtype=torch.int64)) & 1


def bits_to_int8(bits: torch.Tensor) -> torch.Tensor:
    """Two's-complement bits of shape (..., 8) (bit 0 first) back to int64 values in [-128, 127]."""
    return (bits.to(torch.int64) * BIT_WEIGHTS).sum(dim=-1)


@dataclass(frozen=True)
class BitFlipParams:
    """Parameters of the bit-flip attack.

    Attributes:
        batch_size: attack-batch size in images (128 in BFA; fewer when the tamper role has fewer).
        k_top: weights per layer whose bits are examined each iteration: the ``k_top`` with the
            largest |dL/dW| (10 in BFA).
        accuracy_drop: the objective: agreement with the target on the attack batch must fall by
            at least this fraction (0.10 = 10 points).
        max_flips: cap on the bits flipped by :meth:`BitFlip.build`.
        max_bits_per_trial: cap on the progressive ``n`` (bits trial-flipped together in one layer)
            when no single-bit trial raises the loss.
    """

    batch_size: int = 128
    k_top: int = 10
    accuracy_drop: float = 0.10
    max_flips: int = 50
    max_bits_per_trial: int = 8

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.k_top < 1 or self.max_flips < 1:
            raise ValueError("BitFlipParams: batch_size, k_top and max_flips must be positive")
        if not 0.0 < self.accuracy_drop <= 1.0:
            raise ValueError("BitFlipParams: accuracy_drop must lie in (0, 1]")
        if self.max_bits_per_trial < 1:
            raise ValueError("BitFlipParams: max_bits_per_trial must be positive")


@dataclass
class _Layer:
    """One Conv/Linear weight viewed as int8: its module name, parameter, step and integers."""

    name: str
    weight: torch.Tensor
    step: float
    q: torch.Tensor  # flat int64, the current integer of every weight


def _quantized_layers(model: nn.Module) -> list[_Layer]:
    """Every Conv/Linear weight of ``model`` (:func:`~misentry.tamper.layers.is_compressible`,
    imported programs' layers too) with a non-zero range, with step = max|W| / 127."""
    layers = []
    for name, module in model.named_modules():
        if not is_compressible(module):
            continue
        weight = layer_weight(module).requires_grad_(True)
        if weight.numel() == 0 or not weight.is_contiguous():
            continue
        w = weight.detach()
        step = float(w.abs().max() / QMAX)
        if step == 0.0:
            continue
        q = torch.round(w / step).clamp(-128, 127).to(torch.int64).reshape(-1)
        layers.append(_Layer(name, weight, step, q))
    return layers


def _rebind(model: nn.Module, layers: list[_Layer]) -> list[_Layer]:
    """The same layers (steps, integers copied) bound to the parameters of ``model``."""
    modules = dict(model.named_modules())
    rebound = []
    for layer in layers:
        weight = layer_weight(modules[layer.name])
        rebound.append(_Layer(layer.name, weight.requires_grad_(True), layer.step, layer.q.clone()))
    return rebound


def _apply(layer: _Layer, index: torch.Tensor, q_new: torch.Tensor) -> None:
    """Set the integers at flat ``index`` to ``q_new``, changing only those floats, each by
    ``(q_new - q_old) * step``."""
    flat = layer.weight.data.view(-1)
    delta = (q_new - layer.q[index]).to(flat.dtype) * layer.step
    flat[index] = flat[index] + delta
    layer.q[index] = q_new


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Cross-entropy on the attack batch and the number of images whose label differs."""
    with torch.no_grad():
        out = model(x)
        return float(F.cross_entropy(out, y)), int((out.argmax(dim=1) != y).sum())


@dataclass
class _Trial:
    layer: int
    index: torch.Tensor  # distinct flat weight indices
    q_new: torch.Tensor
    bits: list[tuple[int, int]]  # (flat index, bit), in flip order
    loss: float
    mismatches: int


def _search_step(
    model: nn.Module,
    layers: list[_Layer],
    x: torch.Tensor,
    y: torch.Tensor,
    params: BitFlipParams,
    iteration: int,
) -> tuple[list[dict[str, Any]], int] | None:
    """One progressive-bit-search iteration: applies its flips and returns them with the number
    of attack images whose label now differs from the target's (None: no flip raised the loss)."""
    if not layers:
        return None
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [layer.weight for layer in layers])
    base = float(loss.detach())

    # Per layer: the candidate bits among the k_top weights, ranked by their first-order loss gain
    # dL/dW * step * (q change of that flip), positive gains only.
    ranked: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for layer, grad in zip(layers, grads, strict=True):
        g = grad.reshape(-1)
        top = g.abs().topk(min(params.k_top, g.numel())).indices
        bits = int8_to_bits(layer.q[top])  # (k, 8)
        change = BIT_WEIGHTS * (1 - 2 * bits)  # q change when each bit flips
        gain = g[top].unsqueeze(1).double() * layer.step * change.double()  # (k, 8)
        flat_gain = gain.reshape(-1)
        order = flat_gain.argsort(descending=True, stable=True)
        order = order[flat_gain[order] > 0]
        if order.numel() == 0:
            ranked.append(None)
            continue
        ranked.append((top, order))

    for n in range(1, params.max_bits_per_trial + 1):
        best: _Trial | None = None
        for i, (layer, cand) in enumerate(zip(layers, ranked, strict=True)):
            if cand is None:
                continue
            top, order = cand
            chosen = order[:n]
            rows, bit_pos = chosen // BITS, chosen % BITS
            index = top[rows]
            unique = torch.unique(index)
            bits = int8_to_bits(layer.q[unique])
            for r, b in zip(index.tolist(), bit_pos.tolist(), strict=True):
                row = int((unique == r).nonzero()[0, 0])
                bits[row, b] ^= 1
            q_new = bits_to_int8(bits)
            flat = layer.weight.data.view(-1)
            saved, saved_q = flat[unique].clone(), layer.q[unique].clone()
            _apply(layer, unique, q_new)
            trial_loss, mismatches = _loss(model, x, y)
            flat[unique] = saved
            layer.q[unique] = saved_q
            if best is None or trial_loss > best.loss:
                pairs = list(zip(index.tolist(), bit_pos.tolist(), strict=True))
                best = _Trial(i, unique, q_new, pairs, trial_loss, mismatches)
        if best is None:
            return None
        if best.loss > base:
            return _commit(layers[best.layer], best, iteration), best.mismatches
    return None


def _commit(layer: _Layer, trial: _Trial, iteration: int) -> list[dict[str, Any]]:
    """Apply a trial for real and list its flips, one entry per bit, in order: module name, flat
    index into its weight, bit (0 = LSB, 7 = sign), int8 value before and after, and the
    (1-based) search iteration that flipped it."""
    flips = []
    current = {int(i): int(layer.q[i]) for i in trial.index}
    for index, bit in trial.bits:
        old = current[index]
        bits = int8_to_bits(torch.tensor(old))
        bits[bit] ^= 1
        new = int(bits_to_int8(bits))
        current[index] = new
        flips.append(
            {
                "layer": layer.name,
                "index": index,
                "bit": bit,
                "old": old,
                "new": new,
                "iteration": iteration,
            }
        )
    _apply(layer, trial.index, trial.q_new)
    return flips


def _agreement(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x) == y).float().mean())


class BitFlip(Tampering):
    """Bit-flip attack (BFA, progressive bit search): a few flipped weight bits.

    What it is: Rakin, He, Fan, "Bit-Flip Attack: Crushing Neural Network with Progressive Bit
    Search" (ICCV 2019), reference implementation ``elliothe/BFA``. Every Conv/Linear weight is
    viewed as a symmetric per-layer 8-bit two's-complement integer, ``step = max|W| / 127``,
    ``q = round(W / step)`` (the step is fixed from the target). Each iteration computes the
    cross-entropy gradient on the attack batch; in every layer it takes the ``k_top`` weights
    with the largest |dL/dW| and the gain of flipping each of their 8 bits,
    ``dL/dW * step * (q_flipped - q)`` (bit weight 1..64 or -128 for the sign bit, with the sign
    of the 0->1 or 1->0 direction), keeps the bits with positive gain, trial-flips the best ``n``
    of them and evaluates the loss. The layer whose trial gives the largest loss is flipped for
    real; if no trial raised the loss, ``n`` grows by one (progressive search) up to
    ``max_bits_per_trial``.

    The attack batch is ``batch_size`` images of ``ctx.data.tamper`` drawn from the instance seed
    (stream 0), labelled with the target's own predictions, so the batch accuracy starts at 1.

    Objective: the attack-batch accuracy (agreement with the target) falls by at least
    ``accuracy_drop`` (10 points).

    Stop rule: checked after every applied iteration (usually one bit); the build stops at the
    first flip count that meets it, or with ``met=False`` at ``max_flips`` flips or when no
    candidate bit raises the loss. ``steps`` counts flipped bits.

    Recorded: ``choices["flips"]`` (one entry per bit: module name, flat index into its weight,
    bit 0-7 with 7 the sign bit, int8 value before and after, search iteration),
    ``choices["attack_batch_indices"]`` (indices into the tamper role) and
    ``choices["layer_steps"]`` (each layer's step); ``objective`` holds ``batch_accuracy``,
    ``batch_accuracy_drop``, ``flips`` and the tampered model's ``check_accuracy`` with its
    ``check_accuracy_drop`` from the target.

    Parameters: see :class:`BitFlipParams` (batch 128 images, k_top 10, drop 0.10, at most 50
    flips, progressive n up to 8 bits).

    Scaling with the dataset: none needed; the batch size is in images, ``k_top`` is per layer and
    every Conv/Linear layer of any architecture (any channels, input size, class count) takes
    part. Layers with all-zero weights have no range and are skipped.

    Observability: :meth:`extend` performs one more search iteration (up to ``max_extensions``
    = 5); a 10-point drop on attack images (which lie in the probe set) is already observable.

    Deviations from the authors' code: BFA replaces every layer by a quantized one and attacks the
    integer model, so its untampered reference is the 8-bit model. Here the target is not
    quantized: a flip is applied as the float change it makes to that one weight,
    ``w_new = w + (q_new - q_old) * step``, so every unflipped weight keeps its exact float value
    and the untampered float target stays the reference (quantizing the whole model would itself
    count as tampering). BFA's objective is a fixed iteration count; ours stops at the first flip
    that reaches the accuracy drop (the subtlest instance). BFA's progressive ``n`` is unbounded;
    ours is capped.
    """

    family: ClassVar[str] = "bit_flip"
    malicious: ClassVar[bool] = True
    max_extensions: ClassVar[int] = 5
    params: BitFlipParams

    def __init__(self, params: BitFlipParams | None = None) -> None:
        super().__init__(params or BitFlipParams())

    def build(self, ctx: TamperContext) -> Tampered:
        p = self.params
        pool = ctx.data.tamper
        n = min(p.batch_size, len(pool))
        indices = torch.randperm(len(pool), generator=ctx.generator(0))[:n].sort().values
        x = pool.subset(indices).x
        y = predict(ctx.target, x)
        model = ctx.copy_target()
        layers = _quantized_layers(model)
        if not layers:
            raise NotApplicable("bit_flip flips bits of Conv/Linear weights; the model has none")
        needed = math.ceil(p.accuracy_drop * n - 1e-9)  # mismatches that make the drop

        flips: list[dict[str, Any]] = []
        met = False
        while len(flips) < p.max_flips:
            iteration = flips[-1]["iteration"] + 1 if flips else 1
            found = _search_step(model, layers, x, y, p, iteration)
            if found is None:
                break
            flips.extend(found[0])
            if found[1] >= needed:
                met = True
                break
        state = {"x": x, "y": y, "layers": layers, "needed": needed}
        return self._result(ctx, model, flips, met, indices.tolist(), state, extensions=0)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        if tampered.extensions >= self.max_extensions or "layers" not in tampered.state:
            return None
        state = dict(tampered.state)
        model = copy.deepcopy(tampered.model).eval()
        layers = _rebind(model, state["layers"])
        previous = tampered.choices["flips"]
        iteration = previous[-1]["iteration"] + 1 if previous else 1
        found = _search_step(model, layers, state["x"], state["y"], self.params, iteration)
        if found is None:
            return None
        state["layers"] = layers
        flips = list(tampered.choices["flips"]) + found[0]
        met = found[1] >= state["needed"]
        return self._result(
            ctx,
            model,
            flips,
            met,
            list(tampered.choices["attack_batch_indices"]),
            state,
            extensions=tampered.extensions + 1,
        )

    def _result(
        self,
        ctx: TamperContext,
        model: nn.Module,
        flips: list[dict[str, Any]],
        met: bool,
        indices: list[int],
        state: dict[str, Any],
        extensions: int,
    ) -> Tampered:
        model.eval()
        check = ctx.data.check
        target_check = accuracy(ctx.target, check)
        model_check = accuracy(model, check)
        agreement = _agreement(model, state["x"], state["y"])
        layers: list[_Layer] = state["layers"]
        return Tampered(
            model=model,
            objective={
                "batch_accuracy": agreement,
                "batch_accuracy_drop": 1.0 - agreement,
                "flips": float(len(flips)),
                "check_accuracy": model_check,
                "check_accuracy_drop": target_check - model_check,
            },
            met=met,
            steps=len(flips),
            epochs=0,
            choices={
                "flips": flips,
                "attack_batch_indices": indices,
                "layer_steps": {layer.name: layer.step for layer in layers},
            },
            extensions=extensions,
            state=state,
        )


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "bit_flip",
        "Bit-flip attack (BFA progressive bit search) on 8-bit views of the Conv/Linear weights, "
        "until agreement with the target on a 128-image attack batch drops by 10 points",
        BitFlip(BitFlipParams()),
    ),
)
