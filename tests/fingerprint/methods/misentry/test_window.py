"""MiSentry's margin window: the strict window is the fixed [floor, ceiling], the covert one the
normal band of each class; the bands hold most normal images."""

from __future__ import annotations

import math

import torch
from torch import nn

from misentry.data import Pools
from misentry.fingerprint.methods.misentry import (
    MarginWindow,
    MisentryParams,
    inside_bands,
    normal_bands,
)


def test_the_window_interpolates_between_strict_and_the_normal_band(
    target: nn.Module, pools: Pools
) -> None:
    normal = pools["val"].x
    bands = normal_bands(target, normal)
    assert set(bands) == {"margin", "entropy", "confidence"}
    assert all(b.shape == (10, 2) and bool((b[:, 0] <= b[:, 1]).all()) for b in bands.values())
    strict = MarginWindow.for_params(MisentryParams(), target, normal)
    assert torch.allclose(strict.lo, torch.full((10,), 2e-5))
    assert torch.allclose(strict.hi, torch.full((10,), 2e-4))
    assert strict.entropy_band is None
    assert strict.growth.tolist() == [1.0, 1.0]  # three tied classes: two runners-up
    covert = MarginWindow.for_params(MisentryParams(covertness=1.0, tie_classes=5), target, normal)
    margin = bands["margin"].float()
    assert torch.allclose(covert.lo, margin[:, 0].clamp_min(2e-5), rtol=1e-5)
    assert torch.allclose(covert.hi, margin[:, 1].clamp_min(2e-4), rtol=1e-5)
    assert covert.growth[0] == 1.0
    assert bool(covert.growth[1:].isinf().all())  # farther tied classes only rank
    assert covert.entropy_band is not None
    assert torch.equal(covert.entropy_band, bands["entropy"])
    half = MarginWindow.for_params(MisentryParams(covertness=0.5), target, normal)
    expected = (strict.lo.double().log() + covert.lo.double().log()) / 2
    assert torch.allclose(half.lo.double().log(), expected, atol=1e-5)
    json = covert.to_json()
    assert json["growth"][1:] == [None] * 3
    assert len(json["entropy_band"]) == 10
    assert all(math.isfinite(v) for v in json["lo"] + json["hi"])


def test_most_normal_images_lie_inside_their_bands(target: nn.Module, pools: Pools) -> None:
    bands = normal_bands(target, pools["val"].x)
    inside = inside_bands(target, pools["val"].x, bands)
    # each band holds 80 % of its class for each of two statistics
    assert 0.5 <= float(inside.float().mean()) < 1.0
