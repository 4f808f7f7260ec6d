"""Fixtures for the tampering tests: a small digits target and contexts to tamper it in."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from misentry.data import Pools, get_dataset
from misentry.models import (
    Record,
    TargetConfig,
    TrainConfig,
    build_model,
    fit,
    input_spec,
    model_from_record,
    target_record_stub,
    train_target,
)
from misentry.tamper.base import TamperContext
from misentry.tamper.builder import Workspace
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


@pytest.fixture(scope="module")
def bench(digits_target: tuple[nn.Module, Record]) -> Workspace:
    """The digits target with its pools and observability probe, as the builder uses them."""
    return Workspace.load(digits_target[1])


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


@pytest.fixture(scope="module")
def bn_ctx(digits_pools: Pools) -> TamperContext:
    """A BatchNorm target (the GTSRB CNN on digits, trained one epoch so its statistics moved)."""
    spec = input_spec("digits")
    model = build_model("gtsrb_cnn", spec, seed=0)
    owner = digits_pools["owner_train"].subset(torch.arange(256))
    fit(model, owner, TrainConfig(epochs=1, lr=0.01, seed=0))
    return TamperContext(
        target=model.eval(),
        target_record=target_record_stub(TargetConfig(dataset="digits", arch="gtsrb_cnn")),
        data=DataAccess(digits_pools, Namespace.BENCH),
        seed=instance_seed(Namespace.BENCH, "bn", 0),
        dataset=get_dataset("digits"),
        spec=spec,
    )


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every tensor of the model's state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Two states hold the same tensors, bit for bit."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Two models hold the same state, bit for bit."""
    return same(a.state_dict(), b.state_dict())
