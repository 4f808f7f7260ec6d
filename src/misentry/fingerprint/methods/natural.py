"""The trivial baselines every method must beat: natural images, and natural images plus noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.base import Generator, SearchContext


@dataclass(frozen=True)
class NaturalParams:
    """No parameters: the fingerprints are ``n`` source images drawn without replacement."""


class Natural(Generator):
    """Unmodified natural images from the ``source`` pool (method ``natural``).

    Objective: none; the floor of every comparison. Constraint: distance 0 to the source.
    Defaults: ``n`` sources drawn uniformly without replacement by the seed. Deviations: none.

    >>> # Natural(NaturalParams()).generate(target, pools["source"], n=100, seed=0)
    """

    name = "natural"

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index = draw_sources(sources, n, generator)
        return sources.x[index], index, {}


@dataclass(frozen=True)
class NoiseParams:
    """Attributes:
    eps: half-width of the uniform noise, in [0, 1] pixel units (8/255 by default).
    """

    eps: float = 8 / 255

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1:
            raise ValueError(f"NoiseParams.eps must be in (0, 1]; got {self.eps}")


class Noise(Generator):
    """Natural images plus bounded uniform noise (method ``noise``).

    Objective: none. Constraint: L-inf distance at most ``eps`` before rounding to 8 bits.
    Defaults: ``eps`` = 8/255. Deviations: none.
    """

    name = "noise"
    params: NoiseParams

    def distance_bound(self) -> tuple[str, float]:
        return ("linf", self.params.eps)

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index = draw_sources(sources, n, generator)
        x = sources.x[index]
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * self.params.eps
        return (x + noise).clamp(0, 1), index, {}


def draw_sources(sources: ImageSet, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct source indices (all of them, in random order, when ``n`` is larger)."""
    order = torch.randperm(len(sources), generator=generator)
    if n > len(sources):
        raise ValueError(f"asked for {n} fingerprints from only {len(sources)} source images")
    return order[:n]
