"""Shared fixtures of the fingerprint tests: the digits source pool (the target is in
tests/conftest.py)."""

from __future__ import annotations

import pytest

from misentry.data import ImageSet, get_dataset


@pytest.fixture(scope="module")
def sources() -> ImageSet:
    return get_dataset("digits").pools(0)["source"]
