"""IBSF: partial entropy over the top-k classes, under an L2 bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.methods.ibsf import partial_entropy, partial_entropy_max
from misentry.fingerprint.registry import get_method
from misentry.models import logits


def test_partial_entropy_peaks_at_log_k_where_k_classes_tie() -> None:
    tied = torch.tensor([[2.0, 2.0, 2.0, -30.0, -30.0]])
    assert float(partial_entropy(tied, 3)[0]) == pytest.approx(math.log(3), rel=1e-6)
    assert partial_entropy_max(3) == pytest.approx(math.log(3))
    # k = 2: each of the two terms peaks at p = 1/e, with the rest of the mass elsewhere
    at_peak = torch.tensor([[0.0, 0.0, math.log(math.e - 2) + 0.0]])
    assert float(partial_entropy(at_peak, 2)[0]) == pytest.approx(partial_entropy_max(2), rel=1e-5)
    random = torch.randn(500, 5, generator=torch.Generator().manual_seed(0)) * 3
    for k in (2, 3, 5):
        assert float(partial_entropy(random, k).max()) <= partial_entropy_max(k) + 1e-6
    confident = torch.tensor([[30.0, 0.0, 0.0, 0.0, 0.0]])
    assert float(partial_entropy(confident, 3)[0]) < 1e-6


@pytest.mark.parametrize("k", [2, 3])
def test_ibsf_raises_partial_entropy_within_its_l2_bound(
    k: int, target: nn.Module, sources: ImageSet
) -> None:
    eps = 1.0
    fps = get_method("ibsf", k=k, eps=eps, steps=150).generate(target, sources, n=30, seed=0)
    start = partial_entropy(logits(target, sources.x[fps.source_indices]), k)
    reached = partial_entropy(logits(target, fps.x), k)
    assert float(reached.mean()) > 2 * float(start.mean())
    assert float(reached.mean()) >= 0.9 * partial_entropy_max(k)  # close to the maximum
    assert fps.manifest["partial_entropy_max"] == pytest.approx(partial_entropy_max(k))
    # within the L2 ball, up to the 8-bit rounding of each pixel
    dims = fps.x[0].numel()
    slack = 0.5 / 255 * math.sqrt(dims)
    assert all(row["l2"] <= eps + slack for row in fps.manifest["samples"])
