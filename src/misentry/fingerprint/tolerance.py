"""Deployment tolerance: how differently the owner may serve the same weights without a false
alarm, and what each fingerprint risks under it.

A tolerance is a level of the benign re-deployment matrix (:mod:`misentry.models.stacks`):
``exact`` < ``fp32`` < ``tf32`` < ``fp16`` < ``bf16``, each level's stacks added to the stricter
ones'. At generation it sets two things:

- **the noise level**: the largest change of the target's top-1 margin (top-1 logit minus the
  runner-up's) over the owner's normal images under every stack of the level and its random
  draws; the **floor** is :data:`SAFETY` times it (``exact``, the same stack, measures nothing:
  noise and floor 0). A
  generator that places fingerprints near decision boundaries keeps every margin that decides
  a label above the floor (MiSentry shifts its window up to it);
- **each fingerprint's stability**: its decisive margin, the number of stacks and draws
  (``trials``) under which its label changed (``flips``), the root-mean-square change of its
  margin (``margin_noise``), and a ``flip_rate``: the observed rate when a flip was seen, else the
  normal tail ``Phi(-margin / noise)``, never below :data:`RATE_FLOOR` (a tie counts as a
  change: a server may break it either way). :mod:`misentry.verify.false_alarm` reads these rates to
  say how likely an untampered model served within the tolerance is to give the mismatches a
  check saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from misentry.models import logits
from misentry.models.stacks import LEVELS, Stack, StackUnavailable, stacks

SAFETY = 4.0
"""The floor as a multiple of the noise level."""

RATE_FLOOR = 1e-12
"""The smallest flip rate claimed for a fingerprint whose margin moved at all: the emulation is a
model of the real stacks, and its normal tail says nothing below this."""


class Tolerance(StrEnum):
    """How the owner may serve the weights without a false alarm (see the module's text)."""

    EXACT = "exact"
    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"

    @classmethod
    def parse(cls, value: str | Tolerance) -> Tolerance:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown tolerance {value!r}; tolerances: {', '.join(LEVELS)}"
            ) from None

    @property
    def stacks(self) -> list[Stack]:
        """Every stack of this level and the stricter ones."""
        return stacks(self.value)

    def covers(self, other: Tolerance) -> bool:
        """Whether a model served at ``other`` is within this tolerance."""
        return LEVELS.index(other.value) <= LEVELS.index(self.value)


DEFAULT_TOLERANCE = Tolerance.TF32
"""The default of every command that generates fingerprints: any float32 stack, CPU or GPU
(TF32 convolutions are PyTorch's default on a GPU)."""

assert tuple(t.value for t in Tolerance) == LEVELS


@dataclass(frozen=True)
class StackRun:
    """One stack's view of a set of images: the decisive margins it gives the reference labels
    (zero or negative: the label changed or may have), per image, one row per draw."""

    stack: str
    level: str
    margins: torch.Tensor  # float64 (draws, N)
    unavailable: str | None = None


def decisive_margins(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each row's logit of ``labels`` minus its largest other logit (negative: another class
    wins), float64."""
    z = z.double()
    own = z.gather(1, labels.unsqueeze(1))
    others = z.scatter(1, labels.unsqueeze(1), -math.inf)
    return (own.squeeze(1) - others.max(1).values).double()


def run_stack(stack: Stack, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> StackRun:
    """One stack on images ``x`` (float, [0, 1]) as decisive margins of ``labels``, one row per
    draw; a stack that cannot run the model keeps its reason and no rows."""
    try:
        draws = [stack.run(model, x, seed) for seed in range(stack.draws)]
    except StackUnavailable as err:
        return StackRun(stack.name, stack.level, torch.empty(0, len(x)), str(err))
    rows = [decisive_margins(z, labels) for z in draws]
    return StackRun(stack.name, stack.level, torch.stack(rows))


def run_stacks(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, tolerance: Tolerance
) -> list[StackRun]:
    """Every stack of ``tolerance`` (:func:`run_stack`)."""
    return [run_stack(stack, model, x, labels) for stack in tolerance.stacks]


@dataclass(frozen=True)
class NoiseLevel:
    """The tolerance's noise on the target and the floor it sets.

    Attributes:
        tolerance: the level.
        noise: the largest change of a top-1 margin over the normal images, every stack and
            draw of the level (logits).
        floor: :data:`SAFETY` x ``noise`` (0 for ``exact``).
        images: how many normal images were measured.
        unavailable: stacks that could not run the model, with the reason.
    """

    tolerance: Tolerance
    noise: float
    floor: float
    images: int
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance.value,
            "noise": self.noise,
            "floor": self.floor,
            "safety": SAFETY,
            "noise_images": self.images,
            "stacks": [s.name for s in self.tolerance.stacks],
            "unavailable_stacks": dict(self.unavailable),
        }


def measure_noise(model: nn.Module, normal: torch.Tensor, tolerance: Tolerance) -> NoiseLevel:
    """The noise level of ``model`` under ``tolerance`` on ``normal`` images (``exact``: the same
    stack, nothing to measure: noise and floor 0)."""
    if tolerance is Tolerance.EXACT:
        return NoiseLevel(tolerance, 0.0, 0.0, 0)
    reference = logits(model, normal)
    base = decisive_margins(reference, reference.argmax(1))
    runs = run_stacks(model, normal, reference.argmax(1), tolerance)
    changes = [float((r.margins - base).abs().max()) for r in runs if r.margins.numel()]
    noise = max(changes, default=0.0)
    unavailable = {r.stack: r.unavailable for r in runs if r.unavailable}
    return NoiseLevel(tolerance, noise, SAFETY * noise, len(normal), unavailable)


def flip_rate(margin: float, noise: float, flips: int, trials: int) -> float:
    """A fingerprint's estimated label-change rate under its tolerance: the observed rate when a
    change was seen, else the normal tail at ``margin`` over the margin's RMS change ``noise``,
    never below :data:`RATE_FLOOR` (0 when nothing ever moved; 1 for a tie or worse)."""
    observed = flips / trials if trials else 0.0
    if noise <= 0 or margin <= 0:
        return observed if margin > 0 else 1.0
    tail = 0.5 * math.erfc(margin / noise / math.sqrt(2))
    return max(observed, tail, RATE_FLOOR)


def stability(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, tolerance: Tolerance
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Each fingerprint's stability under ``tolerance`` (``margin``, ``margin_noise``, ``flips``,
    ``trials``, ``flip_rate``) and, per stack, how many fingerprints changed label."""
    base = decisive_margins(logits(model, x), labels)
    runs = [r for r in run_stacks(model, x, labels, tolerance) if r.margins.numel()]
    per_stack = {r.stack: int((r.margins <= 0).any(0).sum()) for r in runs}
    if not runs:
        rows = torch.empty(0, len(x), dtype=torch.float64)
    else:
        rows = torch.cat([r.margins for r in runs])
    change = rows - base
    flips = (rows <= 0).sum(0)  # a tie may break either way
    rms = change.pow(2).mean(0).sqrt() if len(rows) else torch.zeros(len(x), dtype=torch.float64)
    samples = []
    for j in range(len(x)):
        margin, noise = float(base[j]), float(rms[j])
        count = int(flips[j])
        samples.append(
            {
                "margin": margin,
                "margin_noise": noise,
                "flips": count,
                "trials": len(rows),
                "flip_rate": flip_rate(margin, noise, count, len(rows)),
            }
        )
    return samples, per_stack


def stable_mask(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, level: NoiseLevel
) -> torch.Tensor:
    """Whether each image keeps ``labels`` under every stack of ``level``'s tolerance with its
    decisive margin at or above the floor."""
    base = decisive_margins(logits(model, x), labels)
    keep = base >= level.floor
    for run in run_stacks(model, x, labels, level.tolerance):
        if run.margins.numel():
            keep &= (run.margins > 0).all(0)
    return keep
