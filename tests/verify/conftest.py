"""Fixtures of the verify tests: the misbehaving OIP server and images to send it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from verify.faultkit import FaultServer, running_fault_server


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A fresh fault server per test (its counters start at zero)."""
    with running_fault_server() as server:
        yield server


@pytest.fixture
def http_images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=gen)
