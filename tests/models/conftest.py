"""Fixtures shared by the models tests (the digits target and pools: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from misentry.data import ImageSet, Pools
from misentry.models import Record, save_record
from models.recordkit import KINDS, plain_record


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Record]:
    record = plain_record(KINDS[0])
    return save_record(record, tmp_path / "rec"), record


@pytest.fixture(scope="module")
def small(digits_pools: Pools) -> ImageSet:
    """128 digits from owner_train: a few steps of training on them take milliseconds."""
    return digits_pools["owner_train"].subset(torch.arange(128))
