"""The observability check: does a model give any input a different top-1 label than the target?

BIVBench holds only *observably modified* models. Observability is checked on a probe set built
from every image of the dataset (all pools) plus shifted and noised copies of each: ``(1 + 4 *
len(shifts) + len(noise))`` times the dataset, 60,000 inputs for mnist5k and 21,564 for digits
with the defaults. The copies are generated batch by batch from the 8-bit images, so the probe
never sits in memory as floats, and the noise is drawn from a fixed seed so every check of every
instance sees the same inputs. The target's labels on the probe are computed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet, to_unit
from misentry.models import predict


@dataclass(frozen=True)
class ProbeConfig:
    """How the probe set is built.

    Attributes:
        shifts: pixel offsets; each gives four copies (left, right, up, down), zero-filled.
        noise: standard deviations of the Gaussian-noised copies (clamped to [0, 1]).
        seed: seed of the noise.
        batch_size: images per forward pass.
    """

    shifts: tuple[int, ...] = (1, 2)
    noise: tuple[float, ...] = (0.05, 0.1, 0.2)
    seed: int = 0
    batch_size: int = 2048

    def copies(self) -> int:
        return 1 + 4 * len(self.shifts) + len(self.noise)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shifts"], data["noise"] = list(self.shifts), list(self.noise)
        return data


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Translate a batch by (dy, dx) pixels with zero fill."""
    h, w = x.shape[-2:]
    k = max(abs(dy), abs(dx))
    padded = F.pad(x, (k, k, k, k))
    return padded[..., k - dy : k - dy + h, k - dx : k - dx + w]


class Probe:
    """The probe inputs of one dataset, generated in batches, in a fixed order."""

    def __init__(self, images: ImageSet, config: ProbeConfig | None = None) -> None:
        self.images = images
        self.config = config or ProbeConfig()

    def __len__(self) -> int:
        return len(self.images) * self.config.copies()

    def batches(self) -> Iterator[torch.Tensor]:
        """The probe in a fixed order: noised copies (strongest first), shifts, then clean.

        Inputs near decision boundaries come first, so a scan that stops at the first changed
        label usually stops early.
        """
        cfg = self.config
        for i, sigma in sorted(enumerate(cfg.noise), key=lambda item: -item[1]):
            gen = torch.Generator().manual_seed(cfg.seed * 1000 + i)
            for chunk in self._chunks():
                noise = torch.randn(chunk.shape, generator=gen) * sigma
                yield (chunk + noise).clamp_(0.0, 1.0)
        offsets = [offset for k in cfg.shifts for offset in ((0, k), (0, -k), (k, 0), (-k, 0))]
        for dy, dx in [*offsets, (0, 0)]:
            for chunk in self._chunks():
                yield shift(chunk, dy, dx) if (dy or dx) else chunk

    def _chunks(self) -> Iterator[torch.Tensor]:
        step = self.config.batch_size
        for start in range(0, len(self.images), step):
            yield to_unit(self.images.images[start : start + step])


@dataclass(frozen=True)
class Observation:
    """How many of the probe inputs checked a model labels differently from the target.

    A scan that stops at the first batch with a changed label has ``checked < probe_size``.
    """

    flips: int
    checked: int
    probe_size: int

    @property
    def observable(self) -> bool:
        return self.flips > 0


class Observer:
    """Compares models against the target on a probe; the target's labels are computed once."""

    def __init__(self, target: nn.Module, probe: Probe) -> None:
        self.probe = probe
        self.reference = torch.cat([predict(target, x) for x in probe.batches()])

    def observe(self, model: nn.Module, full: bool = False) -> Observation:
        """Scan the probe; stop after the first batch with a changed label unless ``full``."""
        flips = checked = 0
        for x in self.probe.batches():
            labels = predict(model, x)
            flips += int((labels != self.reference[checked : checked + x.shape[0]]).sum())
            checked += x.shape[0]
            if flips and not full:
                break
        return Observation(flips, checked, len(self.probe))
