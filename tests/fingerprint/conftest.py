"""Shared fixtures of the fingerprint tests: a small digits target and its source pool."""

from __future__ import annotations

import pytest
from torch import nn

from misentry.data import ImageSet, get_dataset
from misentry.models import Record, model_from_record


@pytest.fixture(scope="module")
def record(digits_record: Record) -> Record:
    return digits_record


@pytest.fixture(scope="module")
def target(record: Record) -> nn.Module:
    return model_from_record(record)


@pytest.fixture(scope="module")
def sources() -> ImageSet:
    return get_dataset("digits").pools(0)["source"]
