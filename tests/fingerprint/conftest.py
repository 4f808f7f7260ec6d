"""Shared fixtures of the fingerprint tests: the digits source pool and the user's model imported
in every format (the target, the pools and the user's model are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from misentry.data import ImageSet, Pools
from misentry.models import ImportRequest, Record, import_target
from user_model.saved import CONTRACT, SavedModel


@pytest.fixture(scope="module")
def sources(digits_pools: Pools) -> ImageSet:
    return digits_pools["source"]


@pytest.fixture(scope="module")
def pools(digits_pools: Pools) -> Pools:
    """The digits pools of the shared target (data seed 0)."""
    return digits_pools


IMPORT_FORMATS = ("module", "torchscript", "exported")


@pytest.fixture(scope="session")
def imported_records(user_model: SavedModel, imported_record: Record) -> dict[str, Record]:
    """The user's model imported on digits in every format (TorchScript: the shared record)."""
    requests = {
        "module": ImportRequest(
            format="module",
            factory=user_model.factory,
            weights=user_model.safetensors,
            contract=CONTRACT,
            dataset="digits",
        ),
        "exported": ImportRequest(
            format="exported", source=user_model.exported, contract=CONTRACT, dataset="digits"
        ),
    }
    return {"torchscript": imported_record, **{f: import_target(r) for f, r in requests.items()}}
