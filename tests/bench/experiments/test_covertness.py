"""The covertness experiment's samples file (``covertness.json``): written once per run with the
normal queries' outputs once, read back, bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from misentry.bench.experiments.covertness import (
    SAMPLES_NAME,
    read_covertness_samples,
    write_covertness_samples,
)
from misentry.bench.experiments.covertness_measure import covertness
from misentry.data import Pools
from misentry.fingerprint.bundle import FingerprintSet


def test_samples_round_trip_with_the_normal_outputs_once(
    tmp_path: Path,
    target: nn.Module,
    digits_pools: Pools,
    natural: FingerprintSet,
    noise: FingerprintSet,
) -> None:
    measured = {
        name: covertness(target, fps, digits_pools["test"].x, None)
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
    assert len(samples.normal.entropy) == digits_pools["test"].x.shape[0]


def test_samples_refuse_other_normal_images_and_bad_files(
    tmp_path: Path, target: nn.Module, digits_pools: Pools, natural: FingerprintSet
) -> None:
    full = covertness(target, natural, digits_pools["test"].x, None)
    part = covertness(target, natural, digits_pools["test"].x[:10], None)
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
