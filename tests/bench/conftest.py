"""The digits-smoke benchmark, run once per test session (every bench test module reads it)."""

from __future__ import annotations

import pytest

from bench.benchkit import SMOKE, Run, run


@pytest.fixture(scope="session")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run(SMOKE, tmp_path_factory.mktemp("smoke"))
