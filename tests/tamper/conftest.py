"""Fixtures for the tampering tests: a converged digits target, contexts to tamper it in, the
registry's variants built on it once per session, and the shared user model imported in every
format with a builder's workspace on each."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import nn

from misentry.data import Pools, get_dataset
from misentry.models import (
    ImportRequest,
    Record,
    TargetConfig,
    TrainConfig,
    build_model,
    fit,
    import_target,
    input_spec,
    model_from_record,
    target_record_stub,
    train_target,
)
from misentry.tamper.base import TamperContext, Tampered, Variant
from misentry.tamper.builder import Workspace
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed
from misentry.tamper.registry import VARIANTS
from user_model.saved import CONTRACT, SavedModel

MakeContext = Callable[..., TamperContext]

BY_SLUG: dict[str, Variant] = VARIANTS
"""Every registered variant by slug (the registry's own mapping)."""


class Built(NamedTuple):
    """An instance of a variant and the context it was built in."""

    tampered: Tampered
    ctx: TamperContext


Instances = Callable[..., Built]


@pytest.fixture(scope="session")
def digits_target() -> tuple[nn.Module, Record]:
    """LeNet-5 trained with the digits recipe (40 epochs, about 95 % test accuracy, ~2 s).

    Not the shared 3-epoch ``digits_record``: the tests measure what the recipes do to a
    converged target (the replacement families cap their epochs at the target's recipe, and
    the objectives are tuned against the converged accuracy)."""
    record = train_target(TargetConfig(dataset="digits"))
    return model_from_record(record), record


@pytest.fixture(scope="module")
def workspace(digits_target: tuple[nn.Module, Record]) -> Workspace:
    """The digits target with its pools and observability probe, as the builder uses them."""
    return Workspace.load(digits_target[1])


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def built(make_ctx: MakeContext) -> Instances:
    """``built(slug, index=0)`` -> instance ``index`` of the registry variant ``slug`` on the
    digits target, built once per session (building it must leave the target untouched)."""
    cache: dict[tuple[str, int], Built] = {}

    def get(slug: str, index: int = 0) -> Built:
        if (slug, index) not in cache:
            ctx = make_ctx(variant=slug, index=index)
            before = snapshot(ctx.target)
            tampered = BY_SLUG[slug].tampering.build(ctx)
            assert same(snapshot(ctx.target), before), "target modified"
            cache[slug, index] = Built(tampered, ctx)
        return cache[slug, index]

    return get


@pytest.fixture(scope="session")
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


IMPORT_FORMATS = ("module", "torchscript", "exported")
"""The formats ``misentry import`` reads into a differentiable model."""


@pytest.fixture(scope="session")
def imported_targets(user_model: SavedModel, imported_record: Record) -> dict[str, Record]:
    """The shared user model imported on digits in every format, by format (``torchscript`` is
    the shared ``imported_record``)."""
    records = {"torchscript": imported_record}
    records["module"] = import_target(
        ImportRequest(
            format="module",
            factory=user_model.factory,
            weights=user_model.safetensors,
            contract=CONTRACT,
            dataset="digits",
        )
    )
    records["exported"] = import_target(
        ImportRequest(
            format="exported", source=user_model.exported, contract=CONTRACT, dataset="digits"
        )
    )
    return records


@pytest.fixture(scope="session")
def imported_workspaces(imported_targets: dict[str, Record]) -> dict[str, Workspace]:
    """A builder's workspace on each imported target, by format."""
    return {fmt: Workspace.load(record) for fmt, record in imported_targets.items()}


@pytest.fixture(scope="session")
def make_imported_ctx(
    imported_workspaces: dict[str, Workspace],
) -> Callable[..., TamperContext]:
    """``make_imported_ctx(fmt, variant="x", index=0)`` -> a bench context on that target."""

    def make(fmt: str, variant: str = "test", index: int = 0) -> TamperContext:
        seed = instance_seed(Namespace.BENCH, variant, index)
        return imported_workspaces[fmt].context(Namespace.BENCH, seed, index)

    return make
