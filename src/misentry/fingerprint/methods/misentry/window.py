"""MiSentry's margin window: where each fingerprint's target margins must lie, and the bands of
normal samples that the covert window comes from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from misentry.fingerprint.methods.misentry.params import MisentryParams
from misentry.fingerprint.stats import entropy
from misentry.models import logits

BELOW_FLOOR_WEIGHT = 10.0
"""Weight of a margin below the window's floor against one above its ceiling: a margin under the
floor risks a benign label change, so it is pulled back first."""


@dataclass
class MarginWindow:
    """Per-class margin window ``[lo, hi]`` and, at covertness 1, the entropy and confidence
    bands of normal samples.

    Attributes:
        lo, hi: float32 (classes,): the window of the top-1 margin over each tied class.
        growth: float32 (k - 1,): the j-th tied runner-up's upper edge is ``hi * growth[j]``
            (infinite: that class only ranks, it is not bounded).
        entropy_band, confidence_band: float64 (classes, 2), covertness 1 only.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    growth: torch.Tensor
    entropy_band: torch.Tensor | None = None
    confidence_band: torch.Tensor | None = None

    @classmethod
    def for_params(cls, p: MisentryParams, target: nn.Module, normal: torch.Tensor) -> MarginWindow:
        """The window for ``p``'s covertness, from the target on normal images: interpolated on
        a log scale between ``[floor, ceiling]`` (covertness 0) and the normal band of the
        top-1 margin (covertness 1)."""
        bands = normal_bands(target, normal)
        c = p.covertness
        lo = math.log(p.floor) * (1 - c) + bands["margin"][:, 0].clamp_min(p.floor).log() * c
        hi = math.log(p.ceiling) * (1 - c) + bands["margin"][:, 1].clamp_min(p.ceiling).log() * c
        k = min(p.tie_classes, int(bands["margin"].shape[0]))
        growth = p.tie_growth ** torch.arange(k - 1, dtype=torch.float32)
        if c >= 1.0:  # covert: the band bounds the top-1 margin; farther tied classes only rank
            growth[1:] = math.inf
        window = cls(lo.exp().float(), hi.exp().float(), growth)
        if c >= 1.0:
            window.entropy_band = bands["entropy"]
            window.confidence_band = bands["confidence"]
        return window

    def upper(self, labels: torch.Tensor) -> torch.Tensor:
        """The upper edges for the tied runners-up of each label, shape (N, k - 1)."""
        return self.hi[labels].unsqueeze(1) * self.growth

    def holds(self, z: torch.Tensor, winners: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
        """Whether each row of logits ``z`` has its winner as label with the margins in the
        window (and, at covertness 1, its entropy and confidence in the normal bands)."""
        labels = z.argmax(1)
        inside = (labels == winners) & self.within(z, labels, ties)
        if self.entropy_band is not None and self.confidence_band is not None:
            probs = z.softmax(1).double()
            inside &= in_band(entropy(probs), self.entropy_band[labels])
            inside &= in_band(probs.max(1).values, self.confidence_band[labels])
        return inside

    def within(self, z: torch.Tensor, labels: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
        """Whether each row's margins of ``labels`` over its other tied classes are in the
        window."""
        others = tied_others(labels, ties)
        gaps = z.gather(1, labels.unsqueeze(1)) - z.gather(1, others)
        lo, hi = self.lo[labels].unsqueeze(1), self.upper(labels)
        return ((gaps >= lo) & (gaps <= hi)).all(1)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
            "growth": [g if math.isfinite(g) else None for g in self.growth.tolist()],
        }
        if self.entropy_band is not None and self.confidence_band is not None:
            out["entropy_band"] = self.entropy_band.tolist()
            out["confidence_band"] = self.confidence_band.tolist()
        return out


def tied_others(winners: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    """The tied classes other than each row's winner, shape (N, k - 1)."""
    keep = ties != winners.unsqueeze(1)
    keep[:, -1] &= ~keep.all(1)  # a winner outside the tie: drop the last tied class instead
    return ties[keep].view(ties.shape[0], -1)


def in_band(values: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """Whether each value lies in its row of ``band`` (N, 2), edges included."""
    return (values >= band[:, 0]) & (values <= band[:, 1])


def normal_bands(target: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The [10th, 90th] percentile band, per predicted class, of the target's top-1 margin,
    prediction entropy and top-1 confidence on normal ``images``: float64 (classes, 2) each
    (all images stand in for a class predicted fewer than twice)."""
    out = logits(target, images)
    labels = out.argmax(1)
    top2 = out.topk(2, dim=1).values
    probs = out.softmax(1).double()
    stats = {
        "margin": (top2[:, 0] - top2[:, 1]).double(),
        "entropy": entropy(probs),
        "confidence": probs.max(1).values,
    }
    classes = out.shape[1]
    quantiles = torch.tensor([0.1, 0.9], dtype=torch.float64)
    bands = {name: torch.empty(classes, 2, dtype=torch.float64) for name in stats}
    for c in range(classes):
        own = labels == c
        for name, values in stats.items():
            bands[name][c] = torch.quantile(
                values[own] if int(own.sum()) >= 2 else values, quantiles
            )
    return bands


def inside_bands(
    target: nn.Module, x: torch.Tensor, bands: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Whether the target's entropy and confidence on each image lie in its label's bands."""
    probs = logits(target, x).double().softmax(1)
    labels = probs.argmax(1)
    return in_band(entropy(probs), bands["entropy"][labels]) & in_band(
        probs.max(1).values, bands["confidence"][labels]
    )
