"""Shared fixtures: the embedded datasets load once per test session."""

from __future__ import annotations

import pytest
import torch

from misentry.data import ImageSet, get_dataset


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> ImageSet:
    return get_dataset("digits").load()


@pytest.fixture(scope="session")
def mnist5k() -> ImageSet:
    return get_dataset("mnist5k").load()
