"""Fingerprint sets of the digits target that the covertness tests measure."""

from __future__ import annotations

import pytest
from torch import nn

from misentry.data import Pools
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.registry import get_method


@pytest.fixture(scope="module")
def natural(target: nn.Module, digits_pools: Pools) -> FingerprintSet:
    return get_method("natural").generate(target, digits_pools["source"], 30, seed=0)


@pytest.fixture(scope="module")
def noise(target: nn.Module, digits_pools: Pools) -> FingerprintSet:
    return get_method("noise").generate(target, digits_pools["source"], 30, seed=0)
