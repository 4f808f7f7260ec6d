"""Shared fixtures: the embedded datasets load, and the small digits target trains, once per test
session."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, Pools, get_dataset
from misentry.models import (
    ImportRequest,
    Record,
    TargetConfig,
    TrainConfig,
    import_target,
    model_from_record,
    train_target,
)
from user_model.saved import CONTRACT, SavedModel, save_user_model


@pytest.fixture(autouse=True, scope="session")
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits() -> ImageSet:
    return get_dataset("digits").load()


@pytest.fixture(scope="session")
def digits_pools() -> Pools:
    """The digits dataset cut into its five pools with data seed 0 (shared, read-only)."""
    return get_dataset("digits").pools(0)


@pytest.fixture(scope="session")
def mnist5k() -> ImageSet:
    return get_dataset("mnist5k").load()


@pytest.fixture(scope="session")
def digits_record() -> Record:
    """A LeNet-5-sized digits target, 3 epochs: quick, and good enough to fingerprint and
    verify (training is deterministic, so every test sees the same weights)."""
    return train_target(TargetConfig(dataset="digits", train=TrainConfig(epochs=3, batch_size=16)))


@pytest.fixture(scope="module")
def record(digits_record: Record) -> Record:
    """The digits target's record (a test module may define its own ``record``)."""
    return digits_record


@pytest.fixture(scope="module")
def target(record: Record) -> nn.Module:
    """A fresh model of ``record`` per test module."""
    return model_from_record(record)


@pytest.fixture(scope="session")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> SavedModel:
    """A user's own CNN (not in the registry), trained on digits and saved in every format."""
    return save_user_model(tmp_path_factory.mktemp("user-model"))


@pytest.fixture(scope="session")
def imported_record(user_model: SavedModel) -> Record:
    """The user's model imported from TorchScript on digits: an ``imported:torchscript`` target."""
    return import_target(
        ImportRequest(
            format="torchscript", source=user_model.torchscript, contract=CONTRACT, dataset="digits"
        )
    )
