"""Output covertness: the AUC of the confidence and entropy detectors, distances to the source,
and the example grid."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.bench.experiments.covertness import (
    SAMPLES_NAME,
    covertness,
    example_grid,
    read_covertness_samples,
    write_covertness_samples,
)
from misentry.data import Pools, get_dataset, to_pixels
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.registry import get_method


@pytest.fixture(scope="module")
def pools() -> Pools:
    return get_dataset("digits").pools(0)


@pytest.fixture(scope="module")
def natural(target: nn.Module, pools: Pools) -> FingerprintSet:
    return get_method("natural").generate(target, pools["source"], 30, seed=0)


@pytest.fixture(scope="module")
def noise(target: nn.Module, pools: Pools) -> FingerprintSet:
    return get_method("noise").generate(target, pools["source"], 30, seed=0)


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
    target: nn.Module, pools: Pools, natural: FingerprintSet
) -> None:
    cov = covertness(target, natural, pools["test"].x, pools["source"].x)
    assert 0.3 < cov.auc_confidence < 0.7
    assert 0.3 < cov.auc_entropy < 0.7
    assert cov.n_with_source == cov.identical == len(natural)
    assert torch.isinf(cov.psnr).all()
    assert cov.psnr_mean is None
    assert cov.l2_mean == cov.linf_mean == 0.0


def test_boundary_fingerprints_are_flagged(target: nn.Module, pools: Pools) -> None:
    fps = get_method("ibsf", k=3, steps=100).generate(target, pools["source"], 30, seed=0)
    cov = covertness(target, fps, pools["test"].x, pools["source"].x)
    assert cov.auc_confidence > 0.9
    assert cov.auc_entropy > 0.9
    assert cov.mean_confidence < cov.mean_confidence_normal
    assert cov.mean_entropy > cov.mean_entropy_normal


def test_noise_psnr_matches_the_closed_form(
    target: nn.Module, pools: Pools, noise: FingerprintSet
) -> None:
    cov = covertness(target, noise, pools["test"].x, pools["source"].x)
    pixels = pools["source"].images[noise.source_indices]
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
    target: nn.Module, pools: Pools, noise: FingerprintSet, natural: FingerprintSet
) -> None:
    for fps, sources in ((noise, pools["source"].x), (natural, None)):
        extra = covertness(target, fps, pools["test"].x, sources).to_row_extra()
        assert json.loads(json.dumps(extra, allow_nan=False)) == extra
        assert {"auc_confidence", "auc_entropy", "psnr_mean", "identical"} <= set(extra)
    assert extra["psnr_mean"] is None
    assert extra["n_with_source"] == 0


def test_a_source_outside_the_pool_is_refused(
    target: nn.Module, pools: Pools, natural: FingerprintSet
) -> None:
    with pytest.raises(ValueError, match="source pool"):
        covertness(target, natural, pools["test"].x, pools["source"].x[:3])


def test_example_grid_writes_a_png(
    tmp_path: Path, pools: Pools, natural: FingerprintSet, noise: FingerprintSet
) -> None:
    sets = {"natural": natural, "noise": noise, "unsourced": unsourced(pools["test"].x[:5])}
    path = example_grid(sets, pools["source"], tmp_path / "grid.png", k=6)
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]


def test_samples_round_trip_with_the_normal_outputs_once(
    tmp_path: Path, target: nn.Module, pools: Pools, natural: FingerprintSet, noise: FingerprintSet
) -> None:
    measured = {
        name: covertness(target, fps, pools["test"].x, None)
        for name, fps in (("natural", natural), ("noise", noise))
    }
    path = write_covertness_samples(tmp_path, measured, "digits")
    assert path == tmp_path / SAMPLES_NAME
    document = json.loads(path.read_text())
    assert set(document) == {"format", "version", "dataset", "normal", "methods"}
    samples = read_covertness_samples(tmp_path)
    assert samples.dataset == "digits"
    assert list(samples.methods) == ["natural", "noise"]
    for name, cov in measured.items():
        assert samples.methods[name].confidence == tuple(cov.confidence.tolist())
        assert samples.methods[name].entropy == tuple(cov.entropy.tolist())
    assert samples.normal.confidence == tuple(measured["noise"].normal_confidence.tolist())
    assert len(samples.normal.entropy) == pools["test"].x.shape[0]


def test_samples_refuse_other_normal_images_and_bad_files(
    tmp_path: Path, target: nn.Module, pools: Pools, natural: FingerprintSet
) -> None:
    full = covertness(target, natural, pools["test"].x, None)
    part = covertness(target, natural, pools["test"].x[:10], None)
    with pytest.raises(ValueError, match="other normal images"):
        write_covertness_samples(tmp_path / "c.json", {"a": full, "b": part})
    with pytest.raises(FileNotFoundError, match="no samples file"):
        read_covertness_samples(tmp_path)
    path = write_covertness_samples(tmp_path / "c.json", {"a": full})
    document = json.loads(path.read_text())
    document["methods"]["a"]["entropy"] = document["methods"]["a"]["entropy"][1:]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="equally long"):
        read_covertness_samples(path)
    path.write_text(json.dumps({**document, "version": 9}))
    with pytest.raises(ValueError, match="version 9"):
        read_covertness_samples(path)
