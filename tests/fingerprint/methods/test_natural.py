"""The natural and noise baselines, through the generator registry (every method's shared
properties are tested in tests/fingerprint/test_registry.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.registry import get_method


def test_natural_fingerprints_are_the_sources(target: nn.Module, sources: ImageSet) -> None:
    fps = get_method("natural").generate(target, sources, n=20, seed=1)
    assert torch.equal(fps.images, sources.images[fps.source_indices])
    assert fps.manifest["backward_passes"] == 0


def test_noise_stays_within_its_bound(target: nn.Module, sources: ImageSet) -> None:
    eps = 4 / 255
    fps = get_method("noise", eps=eps).generate(target, sources, n=30, seed=2)
    diff = (fps.x - sources.x[fps.source_indices]).abs()
    assert float(diff.max()) <= eps + 0.5 / 255 + 1e-6  # the bound, plus 8-bit rounding
    assert float(diff.max()) > 0
    assert all(row["linf"] <= eps + 0.5 / 255 + 1e-6 for row in fps.manifest["samples"])


def test_unknown_methods_and_too_many_fingerprints_are_refused(
    target: nn.Module, sources: ImageSet
) -> None:
    with pytest.raises(KeyError, match="natural"):
        get_method("nope")
    with pytest.raises(ValueError, match="source images"):
        get_method("natural").generate(target, sources, n=len(sources) + 1, seed=0)
