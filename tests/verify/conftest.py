"""The verify tests' model: the session's digits target (tests/conftest.py)."""

from __future__ import annotations

import pytest
from torch import nn

from misentry.models import Record, model_from_record


@pytest.fixture(scope="module")
def record(digits_record: Record) -> Record:
    return digits_record


@pytest.fixture(scope="module")
def target(record: Record) -> nn.Module:
    return model_from_record(record)
