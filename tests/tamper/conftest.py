"""Fixtures for the tampering tests: a small digits target and contexts to tamper it in."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from torch import nn

from misentry.data import Pools, get_dataset
from misentry.models import Record, TargetConfig, input_spec, model_from_record, train_target
from misentry.tamper.base import TamperContext
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed

MakeContext = Callable[..., TamperContext]


@pytest.fixture(scope="session")
def digits_pools() -> Pools:
    return get_dataset("digits").pools(0)


@pytest.fixture(scope="session")
def digits_target() -> tuple[nn.Module, Record]:
    """LeNet-5 trained on the digits owner_train pool (about 95 % test accuracy, ~2 s)."""
    record = train_target(TargetConfig(dataset="digits"))
    return model_from_record(record), record


@pytest.fixture
def make_ctx(digits_target: tuple[nn.Module, Record], digits_pools: Pools) -> MakeContext:
    """``make_ctx(variant="x", index=0, namespace=Namespace.BENCH)`` -> a TamperContext."""

    def make(
        variant: str = "test", index: int = 0, namespace: Namespace = Namespace.BENCH
    ) -> TamperContext:
        model, record = digits_target
        return TamperContext(
            target=model,
            target_record=record,
            data=DataAccess(digits_pools, namespace),
            seed=instance_seed(namespace, variant, index),
            dataset=get_dataset("digits"),
            spec=input_spec("digits"),
            index=index,
        )

    return make
