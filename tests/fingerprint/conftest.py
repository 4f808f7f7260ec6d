"""Shared fixtures of the fingerprint tests: the digits source pool (the target and the pools
are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from misentry.data import ImageSet, Pools


@pytest.fixture(scope="module")
def sources(digits_pools: Pools) -> ImageSet:
    return digits_pools["source"]


@pytest.fixture(scope="module")
def pools(digits_pools: Pools) -> Pools:
    """The digits pools of the shared target (data seed 0)."""
    return digits_pools
