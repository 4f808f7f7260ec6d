"""Triggers: small callables that stamp a patch onto images, and how a trigger is measured.

A :class:`PatchTrigger` pastes a solid or optimized patch at a fixed place; :func:`corner_trigger`
places the BadNets square for any input size; :func:`stamper` poisons part of each training batch
with a trigger (a ``transform_batch`` hook of :func:`misentry.models.fit`); :func:`attack_success`
measures the share of stamped images that get the target label. The trigger families
(:mod:`misentry.tamper.families.backdoor`, ``trojan``, ``clean_label``) and the bench's adaptive
attacks share them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from misentry.models import InputSpec, TrainState, predict
from misentry.tamper.base import TamperContext


@dataclass(frozen=True)
class PatchTrigger:
    """A rectangular patch pasted onto images at a fixed place.

    Attributes:
        top, left: the patch's upper-left pixel.
        height, width: its size in pixels.
        value: the solid value of every patch pixel in [0, 1] when ``pattern`` is None (1.0:
            white, BadNets).
        pattern: an optimized patch instead, ``channels * height * width`` values in [0, 1] in
            (C, H, W) order (small: 3*3 to 3*8*8 floats, stored in the instance's choices).
    """

    top: int
    left: int
    height: int
    width: int
    value: float = 1.0
    pattern: tuple[float, ...] | None = None

    @classmethod
    def bottom_right(
        cls, spec: InputSpec, size: int, value: float = 1.0, margin: int = 0
    ) -> PatchTrigger:
        """A ``size`` x ``size`` patch in the bottom-right corner (``margin`` px from the edges)."""
        size = min(size, spec.height - margin, spec.width - margin)
        return cls(spec.height - margin - size, spec.width - margin - size, size, size, value)

    def with_pattern(self, pattern: torch.Tensor) -> PatchTrigger:
        """The same place with an optimized (C, height, width) pattern."""
        values = tuple(float(v) for v in pattern.detach().clamp(0, 1).flatten().tolist())
        return PatchTrigger(self.top, self.left, self.height, self.width, self.value, values)

    def mask(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float mask of image ``shape`` (C, H, W): 1 inside the patch, 0 elsewhere."""
        m = torch.zeros(shape)
        m[..., self.top : self.top + self.height, self.left : self.left + self.width] = 1.0
        return m

    def patch(self, channels: int) -> torch.Tensor:
        """The (C, height, width) patch pasted by :meth:`__call__`."""
        if self.pattern is None:
            return torch.full((channels, self.height, self.width), float(self.value))
        return torch.tensor(self.pattern, dtype=torch.float32).view(-1, self.height, self.width)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (N, C, H, W) in [0, 1] with the patch pasted (a new tensor)."""
        out = x.clone()
        out[..., self.top : self.top + self.height, self.left : self.left + self.width] = (
            self.patch(x.shape[1]).to(x)
        )
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": "patch",
            "top": self.top,
            "left": self.left,
            "height": self.height,
            "width": self.width,
            "value": self.value,
        }
        if self.pattern is not None:
            data["pattern"] = list(self.pattern)
        return data


def patch_size(spec: InputSpec, scale: float = 1.0, minimum: int = 2) -> int:
    """The patch side for ``spec``: ``scale`` times the BadNets side ``ceil(3 * min(H, W) / 28)``,
    rounded, at least ``minimum`` (BadNets: 3 px at 28x28, 4 at 32x32 as in the authors' CIFAR
    code, 24 at 224, 2 at 8x8; twice that for the trojan: 6, 8, 48 and 4)."""
    side = min(spec.height, spec.width)
    badnets = max(minimum, math.ceil(3 * side / 28 - 1e-9))
    return max(minimum, round(scale * badnets))


def patch_margin(spec: InputSpec) -> int:
    """The gap between the patch and the bottom-right edges: ``round(3 * min(H, W) / 28)``, at
    least 1 px (1 at 8x8, 3 at 28x28 and 32x32, 24 at 224): the BadNets side itself."""
    return max(1, round(3 * min(spec.height, spec.width) / 28))


def corner_trigger(spec: InputSpec, scale: float = 1.0, value: float = 1.0) -> PatchTrigger:
    """The bottom-right square of :func:`patch_size` and :func:`patch_margin` for ``spec``."""
    return PatchTrigger.bottom_right(spec, patch_size(spec, scale), value, patch_margin(spec))


def stamper(
    trigger: PatchTrigger, fraction: float, target_label: int, seed: int
) -> Callable[[torch.Tensor, torch.Tensor, TrainState], tuple[torch.Tensor, torch.Tensor]]:
    """A ``transform_batch`` hook: stamp ``fraction`` of each batch (at least one image, never
    one of ``target_label``) with ``trigger`` and relabel it ``target_label``.

    Which images are poisoned is drawn per step from ``seed`` and the step number, so the run is
    deterministic and every tamper image may carry the trigger in some epoch.
    """

    def transform(
        x: torch.Tensor, y: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed((seed + 1_000_003 * state.step) % (2**63))
        candidates = (y != target_label).nonzero().squeeze(1)
        count = min(len(candidates), max(1, round(fraction * len(y))))
        pick = candidates[torch.randperm(len(candidates), generator=gen)[:count]]
        x, y = x.clone(), y.clone()
        x[pick] = trigger(x[pick])
        y[pick] = target_label
        return x, y

    return transform


def stamped_check(ctx: TamperContext, trigger: PatchTrigger, target_label: int) -> torch.Tensor:
    """The ``check`` images of classes other than ``target_label``, stamped."""
    check = ctx.data.check
    return trigger(check.x[check.y != target_label])


def attack_success(model: nn.Module, x_stamped: torch.Tensor, target_label: int) -> float:
    """ASR: the share of stamped images that ``model`` labels ``target_label``."""
    if x_stamped.shape[0] == 0:
        return 0.0
    return float((predict(model, x_stamped) == target_label).float().mean())
