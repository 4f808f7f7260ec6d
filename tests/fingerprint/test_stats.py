"""Per-sample statistics: entropy, its percentile among normal samples, distances and the
target's view of each fingerprint."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from misentry.data import Pools
from misentry.fingerprint.stats import describe_samples, entropy, entropy_percentile
from misentry.models import predict


def test_entropy_and_its_percentile() -> None:
    uniform = torch.full((1, 4), 0.25)
    certain = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert float(entropy(uniform)[0]) == pytest.approx(torch.log(torch.tensor(4.0)).item())
    assert float(entropy(certain)[0]) == pytest.approx(0.0, abs=1e-9)
    normal = torch.tensor([0.1, 0.2, 0.3, 0.4, 5.0])
    normal_labels = torch.tensor([0, 0, 0, 0, 1])
    got = entropy_percentile(
        torch.tensor([0.25, 0.0, 1.0]), torch.tensor([0, 0, 0]), normal, normal_labels
    )
    assert got.tolist() == [50.0, 0.0, 100.0]


def test_describe_samples_measures_distances_and_the_targets_view(
    target: nn.Module, digits_pools: Pools
) -> None:
    model, pools = target, digits_pools
    sources = pools["source"].x[:5]
    moved = (sources + 4 / 255).clamp(0, 1)
    rows = describe_samples(model, moved, sources, pools["test"].x)
    labels = predict(model, moved)
    for row, label, src, fp in zip(rows, labels.tolist(), sources, moved, strict=True):
        assert row["label"] == label
        assert 0.0 < row["confidence"] <= 1.0
        assert row["margin"] >= 0.0
        assert 0.0 <= row["entropy_percentile"] <= 100.0
        assert row["linf"] == pytest.approx(float((fp - src).abs().max()), abs=1e-6)
        assert row["l2"] == pytest.approx(float((fp - src).norm()), rel=1e-5)
        assert row["psnr"] > 30
    same = describe_samples(model, sources, sources, pools["test"].x)
    assert all(row["psnr"] is None and row["l2"] == 0.0 for row in same)
    json.dumps(rows + same, allow_nan=False)  # manifests are strict JSON
