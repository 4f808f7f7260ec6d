"""Fixtures of the data tests: the coloured mnist5k, loaded once per session."""

from __future__ import annotations

import pytest

from misentry.data import ImageSet, get_dataset


@pytest.fixture(scope="session")
def mnist5k_color() -> ImageSet:
    return get_dataset("mnist5k-color").load()
