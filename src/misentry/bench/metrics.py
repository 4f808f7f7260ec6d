"""Detection rates: how likely N_S fingerprints drawn at random catch a tampered instance.

An instance is caught when at least one of the N_S fingerprints queried gets a top-1 label that
differs from the one the untampered target gives. With d of the bundle's N fingerprints
disagreeing on an instance, the chance that a random N_S-subset contains none of them is
C(N - d, N_S) / C(N, N_S), so the exact expected detection rate is one minus that: no sampling of
subsets, no Monte-Carlo noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from misentry.models import predict


def disagreements(model: nn.Module, x: torch.Tensor, expected: torch.Tensor) -> int:
    """How many of the fingerprints ``x`` the model labels differently from ``expected``."""
    return int((predict(model, x) != expected).sum())


def expected_detection(d: int, n: int, ns: int) -> float:
    """Exact probability that a uniformly random ``ns``-subset of ``n`` fingerprints holds at
    least one of the ``d`` that disagree: ``1 - C(n - d, ns) / C(n, ns)``."""
    if not 0 <= d <= n or not 1 <= ns <= n:
        raise ValueError(f"need 0 <= d <= n and 1 <= ns <= n; got d={d}, n={n}, ns={ns}")
    return 1.0 - math.comb(n - d, ns) / math.comb(n, ns)


@dataclass(frozen=True)
class DetectionRate:
    """Mean expected detection rate over instances, with a 95 % interval of that mean."""

    ns: int
    mean: float
    low: float
    high: float
    instances: int


def detection_rate(d_per_instance: list[int], n: int, ns: int) -> DetectionRate:
    """Mean over instances of the exact expected detection rate, with a 95 % interval.

    The interval is the mean +- 1.96 standard errors (t-free normal approximation), clipped to
    [0, 1]; with one instance it is the point itself.
    """
    if not d_per_instance:
        raise ValueError("detection_rate needs at least one instance")
    rates = [expected_detection(d, n, ns) for d in d_per_instance]
    mean = sum(rates) / len(rates)
    if len(rates) == 1:
        return DetectionRate(ns, mean, mean, mean, 1)
    var = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
    half = 1.96 * math.sqrt(var / len(rates))
    return DetectionRate(ns, mean, max(0.0, mean - half), min(1.0, mean + half), len(rates))
