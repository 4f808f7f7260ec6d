"""Shared fixtures of the fingerprint tests: a small digits target and its source pool."""

from __future__ import annotations

import pytest
from torch import nn

from misentry.data import ImageSet, get_dataset
from misentry.models import Record, TargetConfig, TrainConfig, model_from_record, train_target


@pytest.fixture(scope="module")
def record() -> Record:
    """A LeNet-5-sized digits target, 3 epochs: quick, and good enough to fingerprint."""
    return train_target(TargetConfig(dataset="digits", train=TrainConfig(epochs=3, batch_size=16)))


@pytest.fixture(scope="module")
def target(record: Record) -> nn.Module:
    return model_from_record(record)


@pytest.fixture(scope="module")
def sources() -> ImageSet:
    return get_dataset("digits").pools(0)["source"]
