"""The covertness measure: the AUC of the confidence and entropy detectors, distances to the
source, and the example grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.bench.experiments.covertness_measure import covertness, example_grid
from misentry.data import Pools, to_pixels
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.registry import get_method


class Brightness(nn.Module):
    """Ten classes; the first one's logit grows with the image's mean brightness, so bright
    images get a confident output and dark ones a near-uniform one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = 20.0 * x.flatten(1).mean(dim=1, keepdim=True)
        return torch.cat([first, torch.zeros(x.shape[0], 9)], dim=1)


def unsourced(x: torch.Tensor) -> FingerprintSet:
    n = x.shape[0]
    return FingerprintSet(
        to_pixels(x), torch.zeros(n, dtype=torch.int64), torch.full((n,), -1, dtype=torch.int64)
    )


def test_natural_images_are_indistinguishable_and_identical(
    target: nn.Module, digits_pools: Pools, natural: FingerprintSet
) -> None:
    cov = covertness(target, natural, digits_pools["test"].x, digits_pools["source"].x)
    assert 0.3 < cov.auc_confidence < 0.7
    assert 0.3 < cov.auc_entropy < 0.7
    assert cov.n_with_source == cov.identical == len(natural)
    assert torch.isinf(cov.psnr).all()
    assert cov.psnr_mean is None
    assert cov.l2_mean == cov.linf_mean == 0.0


def test_boundary_fingerprints_are_flagged(target: nn.Module, digits_pools: Pools) -> None:
    fps = get_method("ibsf", k=3, steps=100).generate(target, digits_pools["source"], 30, seed=0)
    cov = covertness(target, fps, digits_pools["test"].x, digits_pools["source"].x)
    assert cov.auc_confidence > 0.9
    assert cov.auc_entropy > 0.9
    assert cov.mean_confidence < cov.mean_confidence_normal
    assert cov.mean_entropy > cov.mean_entropy_normal


def test_noise_psnr_matches_the_closed_form(
    target: nn.Module, digits_pools: Pools, noise: FingerprintSet
) -> None:
    cov = covertness(target, noise, digits_pools["test"].x, digits_pools["source"].x)
    pixels = digits_pools["source"].images[noise.source_indices]
    diff = (noise.images.double() - pixels.double()) / 255.0
    mse = diff.pow(2).flatten(1).mean(dim=1)
    expected = [10.0 * math.log10(1.0 / m) for m in mse.tolist() if m > 0]
    assert cov.identical == len(noise) - len(expected)
    assert cov.psnr_mean == pytest.approx(
        sum(expected) / len(expected), rel=1e-6
    )  # the sources come as float32
    assert cov.linf_mean is not None
    assert cov.linf_mean <= 8 / 255 + 0.5 / 255 + 1e-9  # eps, then rounding to 8 bits


@pytest.mark.parametrize(("dark_fingerprints", "auc"), [(True, 1.0), (False, 0.0)])
def test_the_detector_flags_low_confidence(dark_fingerprints: bool, auc: float) -> None:
    dark, bright = torch.full((20, 1, 4, 4), 0.05), torch.full((30, 1, 4, 4), 0.9)
    fingerprints, normal = (dark, bright) if dark_fingerprints else (bright, dark)
    cov = covertness(Brightness(), unsourced(fingerprints), normal, None)
    assert cov.auc_confidence == auc
    assert cov.auc_entropy == auc


def test_row_extra_is_strict_json(
    target: nn.Module, digits_pools: Pools, noise: FingerprintSet, natural: FingerprintSet
) -> None:
    for fps, sources in ((noise, digits_pools["source"].x), (natural, None)):
        extra = covertness(target, fps, digits_pools["test"].x, sources).to_row_extra()
        assert json.loads(json.dumps(extra, allow_nan=False)) == extra
        assert {"auc_confidence", "auc_entropy", "psnr_mean", "identical"} <= set(extra)
    assert extra["psnr_mean"] is None
    assert extra["n_with_source"] == 0


def test_a_source_outside_the_pool_is_refused(
    target: nn.Module, digits_pools: Pools, natural: FingerprintSet
) -> None:
    with pytest.raises(ValueError, match="source pool"):
        covertness(target, natural, digits_pools["test"].x, digits_pools["source"].x[:3])


def test_example_grid_writes_a_png(
    tmp_path: Path, digits_pools: Pools, natural: FingerprintSet, noise: FingerprintSet
) -> None:
    sets = {"natural": natural, "noise": noise, "unsourced": unsourced(digits_pools["test"].x[:5])}
    path = example_grid(sets, digits_pools["source"], tmp_path / "grid.png", k=6)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
