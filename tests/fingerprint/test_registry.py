"""Every registered method, through the generator registry: on the digits target, and on every
registered architecture (tiny inputs, cheap settings), so a new method or architecture is tested
the moment it is registered."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, Pools, get_dataset, split_pools
from misentry.fingerprint.base import GenerationError, Generator, SearchContext
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.methods.misentry import Misentry, Profile
from misentry.fingerprint.registry import METHODS, get_method
from misentry.models import (
    ARCHITECTURES,
    ImportedModel,
    InputSpec,
    Record,
    TrainConfig,
    build_model,
    fit,
    input_spec,
    model_from_record,
    model_record,
    predict,
)

from .conftest import IMPORT_FORMATS

CHEAP_ZOO = {"steps": 5, "refine_rounds": 10, "zoo": ("ft_last:1e-4x1",), "pool_factor": 2}
"""Cheap settings for the methods that build a zoo (their own tests check quality)."""

TINY: dict[str, dict[str, Any]] = {
    "ibsf": {"steps": 3},
    "ssf": {"steps": 3},
    "publiccheck": {"ae_epochs": 30, "grid": 8},
    "ssf_bo": {"latent": 4, "ae_hidden": 32, "ae_epochs": 1, "iterations": 2, "candidates": 16},
    **{
        profile.method: {
            "steps": 2,
            "inner_steps": 1,
            "refine_rounds": 2,
            "refine_moves": 4,
            "zoo": ("ft_last:1e-4x1",),
            "pool_factor": 4,  # the covert band must hold 4 of the candidates
        }
        for profile in Profile
    },
}
"""The cheapest settings per method for the architecture sweep (a method not listed runs with
its defaults)."""

CANNOT: dict[tuple[str, int], str] = {("ssf_bo", 3): "1-channel"}
"""(method, image channels) that a method refuses, with the words its error must contain."""

N = 4

EXTRA_MODULES = {"vision": "torchvision"}
"""The module each optional extra of the architecture registry provides."""

TRAIN = TrainConfig(epochs=3, batch_size=32, optimizer="adam", lr=3e-3, max_steps=60)
"""How each architecture's tiny target trains: seconds, and enough for varied labels (which
PublicCheck's pairs need)."""


def check(
    fps: FingerprintSet,
    n: int,
    generator: Generator,
    name: str,
    target: nn.Module,
    sources: ImageSet,
) -> None:
    """The properties every method's fingerprints have."""
    assert len(fps) == n
    assert fps.images.dtype == torch.uint8
    assert torch.equal(fps.labels, predict(target, fps.x))
    used = fps.source_indices.tolist()
    assert all(0 <= i < len(sources) for i in used)
    if generator.distinct_sources:
        assert len(set(used)) == n
    profile = Profile.of_method(name)
    assert fps.manifest["method"] == (name if profile is None else Misentry.name)
    if profile is not None:
        assert fps.manifest["profile"] == profile.value
    bound = generator.distance_bound()
    recorded = fps.manifest["distance_bound"]
    assert recorded == (None if bound is None else {"norm": bound[0], "eps": bound[1]})
    if bound is not None:  # within the method's bound up to the 8-bit rounding
        norm, eps = bound
        diff = (fps.x - sources.x[fps.source_indices]).flatten(1)
        if norm == "linf":
            assert float(diff.abs().max()) <= eps + 0.5 / 255 + 1e-6
        else:
            slack = 0.5 / 255 * diff.shape[1] ** 0.5
            assert float(diff.norm(dim=1).max()) <= eps + slack


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_gives_n_lattice_images_with_the_targets_labels(
    name: str, target: nn.Module, record: Record, pools: Pools
) -> None:
    context = SearchContext(pools=pools, record=record)
    generator = get_method(name, **CHEAP_ZOO) if name.startswith("misentry") else get_method(name)
    fps = generator.generate(target, pools["source"], n=40, seed=0, context=context)
    check(fps, 40, generator, name, target, pools["source"])
    assert torch.equal(fps.x * 255, (fps.x * 255).round())
    assert float(fps.x.min()) >= 0.0
    assert float(fps.x.max()) <= 1.0


# -- every method on every architecture ---------------------------------------------------------


@dataclass(frozen=True)
class Tiny:
    """A briefly trained target of one architecture on the smallest input it takes."""

    model: nn.Module
    record: Record
    pools: Pools


def random_pools(dataset: str) -> Pools:
    """400 seeded random images of ``dataset``'s shape, cut into the five pools."""
    info = get_dataset(dataset)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (400, *info.input_shape), dtype=torch.uint8, generator=gen)
    return split_pools(ImageSet(images, torch.arange(400) % info.num_classes), 0)


def takes(arch: str, spec: InputSpec) -> bool:
    """Whether ``arch`` runs on inputs of ``spec``'s size (DenseNet needs 32 pixels)."""
    try:
        with torch.no_grad():
            build_model(arch, spec)(torch.zeros(2, *spec.shape))
    except RuntimeError:
        return False
    return True


def train_tiny(arch: str, digits_pools: Pools) -> Tiny:
    """A target of ``arch`` on digits (1x8x8), or on random 3x32x32 images where digits are
    too small for it."""
    dataset = "digits" if takes(arch, input_spec("digits")) else "cifar10"
    spec = input_spec(dataset)
    pools = digits_pools if dataset == "digits" else random_pools(dataset)
    model = build_model(arch, spec, seed=0)
    fit(model, pools["owner_train"], TRAIN)
    model.eval()
    record = model_record(
        model,
        kind="target",
        dataset=dataset,
        architecture=arch,
        spec=spec,
        data_seed=0,
        model_seed=0,
        params={},
    )
    return Tiny(model, record, pools)


@pytest.fixture(scope="module")
def tiny(digits_pools: Pools) -> Callable[[str], Tiny]:
    """Each architecture's tiny target, trained once per module."""
    built: dict[str, Tiny] = {}

    def get(arch: str) -> Tiny:
        if arch not in built:
            built[arch] = train_tiny(arch, digits_pools)
        return built[arch]

    return get


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_method_runs_on_every_architecture(
    arch: str, name: str, tiny: Callable[[str], Tiny]
) -> None:
    extra = ARCHITECTURES[arch].extra
    if extra is not None and importlib.util.find_spec(EXTRA_MODULES[extra]) is None:
        with pytest.raises(ImportError, match=rf"misentry\[{extra}\]"):  # a clear error
            tiny(arch)
        return
    case = tiny(arch)
    sources = case.pools["source"]
    generator = get_method(name, **TINY.get(name, {}))
    context = SearchContext(normal=case.pools["test"].x, pools=case.pools, record=case.record)
    refusal = CANNOT.get((name, sources.shape[0]))
    if refusal is not None:
        with pytest.raises(GenerationError, match=refusal):
            generator.generate(case.model, sources, N, seed=0, context=context)
        return
    fps = generator.generate(case.model, sources, N, seed=0, context=context)
    check(fps, N, generator, name, case.model, sources)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_every_method_runs_on_imported_models_of_every_format(
    fmt: str, name: str, imported_records: dict[str, Record], pools: Pools
) -> None:
    record = imported_records[fmt]
    model = model_from_record(record)
    assert isinstance(model, ImportedModel)
    assert model.manifest["format"] == fmt
    sources = pools["source"]
    generator = get_method(name, **TINY.get(name, {}))
    context = SearchContext(normal=pools["test"].x, pools=pools, record=record)
    fps = generator.generate(model, sources, N, seed=0, context=context)
    check(fps, N, generator, name, model, sources)
