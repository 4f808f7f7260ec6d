"""The natural and noise baselines, through the generator registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, get_dataset
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.registry import METHODS, get_method
from misentry.models import (
    Record,
    predict,
)

CHEAP = {"steps": 5, "refine_rounds": 10, "zoo": ("ft_last:1e-4x1",), "pool_factor": 2}
"""Cheap settings for the methods that build a zoo (their own tests check quality)."""


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_n_lattice_images_with_the_targets_labels(
    name: str, target: nn.Module, record: Record
) -> None:
    pools = get_dataset("digits").pools(0)
    context = SearchContext(pools=pools, record=record)
    generator = get_method(name, **CHEAP) if name.startswith("misentry") else get_method(name)
    fps = generator.generate(target, pools["source"], n=40, seed=0, context=context)
    assert len(fps) == 40
    assert torch.equal(fps.labels, predict(target, fps.x))
    used = fps.source_indices.tolist()
    assert all(0 <= i < len(pools["source"]) for i in used)
    if generator.distinct_sources:
        assert len(set(used)) == 40
    assert fps.manifest["method"] == name.removesuffix("-covert")
    # on the 8-bit lattice, in [0, 1], and within the method's bound up to the rounding
    assert torch.equal(fps.x * 255, (fps.x * 255).round())
    assert float(fps.x.min()) >= 0.0
    assert float(fps.x.max()) <= 1.0
    bound = generator.distance_bound()
    recorded = fps.manifest["distance_bound"]
    assert recorded == (None if bound is None else {"norm": bound[0], "eps": bound[1]})
    if bound is not None:
        norm, eps = bound
        diff = (fps.x - pools["source"].x[fps.source_indices]).flatten(1)
        if norm == "linf":
            assert float(diff.abs().max()) <= eps + 0.5 / 255 + 1e-6
        else:
            slack = 0.5 / 255 * diff.shape[1] ** 0.5
            assert float(diff.norm(dim=1).max()) <= eps + slack


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
