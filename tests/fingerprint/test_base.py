"""What every generator shares: the 8-bit ending, expected labels, statistics, pass counting."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.base import (
    Generator,
    SearchContext,
    count_passes,
    on_lattice,
    weights_digest,
)
from misentry.fingerprint.bundle import load_bundle, save_bundle
from misentry.models import predict


@dataclass(frozen=True)
class StepParams:
    step: float = 0.3 / 255


class OneGradientStep(Generator):
    """A test method: one signed gradient step away from each source's label."""

    name = "one_step"

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        index = torch.randperm(len(sources), generator=generator)[:n]
        x = sources.x[index].clone().requires_grad_(True)
        loss = F.cross_entropy(target(x), sources.y[index])
        (grad,) = torch.autograd.grad(loss, x)
        moved = (x.detach() + self.params.step * grad.sign()).clamp(0, 1)
        return moved, index, {"note": "test"}


def test_generate_ends_on_the_lattice_with_the_targets_labels(
    target: nn.Module, sources: ImageSet
) -> None:
    fps = OneGradientStep(StepParams()).generate(target, sources, n=12, seed=3)
    assert fps.images.dtype == torch.uint8
    assert len(fps) == 12
    assert torch.equal(fps.labels, predict(target, fps.x))
    assert torch.equal(on_lattice(fps.x), fps.x)
    # a step of 0.3/255 rounds back onto the source for most pixels: the lattice is applied
    assert float((fps.x - sources.x[fps.source_indices]).abs().max()) <= 1 / 255 + 1e-6
    m = fps.manifest
    assert m["method"] == "one_step"
    assert m["params"] == {"step": 0.3 / 255}
    assert m["seed"] == 3
    assert m["note"] == "test"
    assert m["forward_passes"] == 12
    assert m["backward_passes"] == 12
    assert len(m["samples"]) == 12
    assert m["generation_seconds"] > 0


def test_generate_is_deterministic_per_seed(target: nn.Module, sources: ImageSet) -> None:
    method = OneGradientStep(StepParams())
    a, b = method.generate(target, sources, 8, seed=1), method.generate(target, sources, 8, seed=1)
    c = method.generate(target, sources, 8, seed=2)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.source_indices, c.source_indices)


def test_a_generated_set_round_trips_through_a_bundle(
    target: nn.Module, sources: ImageSet, tmp_path: Path
) -> None:
    fps = OneGradientStep(StepParams()).generate(target, sources, 5, seed=0)
    save_bundle(fps, tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert torch.equal(loaded.images, fps.images)
    assert loaded.manifest["samples"] == fps.manifest["samples"]


def test_count_passes_counts_samples_forward_and_backward() -> None:
    model = nn.Linear(3, 2)
    with count_passes(model) as passes:
        model(torch.zeros(4, 3))
        x = torch.zeros(5, 3, requires_grad=True)
        model(x).sum().backward()
    assert passes.forward == 9
    assert passes.backward == 5
    model(torch.zeros(2, 3))  # hooks are gone after the block
    assert passes.forward == 9


def test_params_must_be_a_dataclass_instance() -> None:
    with pytest.raises(TypeError, match="dataclass"):
        OneGradientStep({"step": 1.0})


def test_the_manifest_names_the_weights_it_was_made_with(
    target: nn.Module, sources: ImageSet
) -> None:
    fps = OneGradientStep(StepParams()).generate(target, sources, n=4, seed=0)
    assert fps.manifest["target_weights_sha256"] == weights_digest(target)
    changed = copy.deepcopy(target)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(changed) != weights_digest(target)


def fixed_model() -> nn.Module:
    """Two layers with fixed weights and an empty buffer: the same state on every machine."""
    model = nn.Sequential(nn.Linear(3, 2), nn.Conv2d(1, 2, 1))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).view_as(p) / (i + 2))
    model.register_buffer("empty", torch.zeros(0))
    return model


def test_the_weights_digest_of_a_model_stays_what_bundles_recorded() -> None:
    # the digest these weights had before 0-dim tensors were hashed: bundles keep theirs
    expected = "15842094fc6cff2f348de3abc6eb514893ae93a45db8d1a908f1e1dfbc398a84"
    assert weights_digest(fixed_model()) == expected


def test_batchnorm_counters_are_part_of_the_weights_digest() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).eval()
    counter = model[1].num_batches_tracked
    assert counter.dim() == 0
    before = weights_digest(model)
    assert weights_digest(copy.deepcopy(model)) == before
    counter += 1
    assert weights_digest(model) != before
