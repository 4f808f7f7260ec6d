"""PublicCheck-like: encysted pairs across the target's boundary, found with labels only."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet, Pools
from misentry.fingerprint.autoencoder import train_autoencoder
from misentry.fingerprint.base import GenerationError, SearchContext, on_lattice
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.methods.publiccheck import PublicCheck, PublicCheckParams
from misentry.models import Record, predict

SMALL = PublicCheckParams(ae_epochs=30, augment=2)
"""Digits-sized settings: a quick autoencoder, two jitters per side so that some are kept."""


class LabelOnly(nn.Module):
    """The target behind a label-only door: a scaled one-hot of its top-1 label, detached. It
    refuses inputs that carry gradients, grad mode and train mode, and counts what it sees."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or torch.is_grad_enabled():
            raise AssertionError("a label-only target was queried with gradients enabled")
        if self.training:
            raise AssertionError("a label-only target was queried in train mode")
        self.seen += int(x.shape[0])
        out = self.inner(x)
        return 5.0 * F.one_hot(out.argmax(dim=1), out.shape[1]).to(x.dtype).detach()


@pytest.fixture(scope="module")
def context(pools: Pools, record: Record) -> SearchContext:
    return SearchContext(pools=pools, record=record)


@pytest.fixture(scope="module")
def run(target: nn.Module, sources: ImageSet, context: SearchContext) -> FingerprintSet:
    return PublicCheck(SMALL).generate(target, sources, n=20, seed=0, context=context)


def pair_members(fps: FingerprintSet) -> dict[int, dict[str, int]]:
    """Pair id -> side -> fingerprint index, for the pairs whose two members were emitted."""
    m = fps.manifest
    members: dict[int, dict[str, int]] = {}
    for i, (pair, side, kind) in enumerate(
        zip(m["fingerprint_pair"], m["fingerprint_side"], m["fingerprint_kind"], strict=True)
    ):
        if kind == "pair":
            members.setdefault(pair, {})[side] = i
    return {pair: sides for pair, sides in members.items() if len(sides) == 2}


def test_pairs_straddle_the_boundary_within_the_bracket(
    run: FingerprintSet, target: nn.Module, sources: ImageSet, pools: Pools
) -> None:
    m = run.manifest
    members = pair_members(run)
    assert len(members) >= 5
    labels = predict(target, run.x)
    for pair, sides in members.items():
        a, b = labels[sides["A"]], labels[sides["B"]]
        assert a != b
        assert [int(a), int(b)] == m["pair_labels"][pair]
        assert m["pair_latent_distance"][pair] <= SMALL.delta
        assert run.source_indices[sides["A"]] == m["pair_sources"][pair][0]
    # rebuild the autoencoder from the recorded seed: the emitted images are its decodes at the
    # recorded t, and the bracket's latent length is within delta in its codes
    model = train_autoencoder(pools["owner_train"].x, SMALL.autoencoder, m["autoencoder_seed"])
    for pair, sides in members.items():
        z_a, z_b = model.model.encode(sources.x[m["pair_sources"][pair]]).double()
        t = torch.tensor(m["pair_t"][pair], dtype=torch.float64)
        decoded = on_lattice(model.model.decode((z_a + t.unsqueeze(1) * (z_b - z_a)).float()))
        emitted = run.x[[sides["A"], sides["B"]]]
        assert float((decoded - emitted).abs().max()) <= 1 / 255 + 1e-6
        assert float((t[1] - t[0]) * (z_b - z_a).norm()) <= SMALL.delta * (1 + 1e-4)


def test_jitters_keep_their_sides_label(run: FingerprintSet, target: nn.Module) -> None:
    m = run.manifest
    labels = predict(target, run.x)
    jitters = [i for i, kind in enumerate(m["fingerprint_kind"]) if kind == "jitter"]
    assert jitters, "SMALL draws two jitters per side; some must survive"
    for i in jitters:
        side = "AB".index(m["fingerprint_side"][i])
        assert int(labels[i]) == m["pair_labels"][m["fingerprint_pair"][i]][side]
    kinds = m["fingerprint_kind"]
    assert kinds == sorted(kinds, key=lambda kind: kind == "jitter")  # pairs first


def test_outputs_are_on_the_lattice_in_range(run: FingerprintSet) -> None:
    assert len(run) == 20
    assert torch.equal(on_lattice(run.x), run.x)
    scaled = run.x * 255
    assert torch.equal(scaled, scaled.round())
    assert float(run.x.min()) >= 0.0
    assert float(run.x.max()) <= 1.0


def test_label_only_target_gives_the_same_images_and_exact_query_count(
    run: FingerprintSet, target: nn.Module, sources: ImageSet, context: SearchContext
) -> None:
    door = LabelOnly(target)
    fps = PublicCheck(SMALL).generate(door, sources, n=20, seed=0, context=context)
    assert torch.equal(fps.images, run.images)
    assert torch.equal(fps.source_indices, run.source_indices)
    assert fps.manifest["label_queries"] == run.manifest["label_queries"]
    # generate() counts the target's forward passes during the search only: all label queries
    assert fps.manifest["forward_passes"] == fps.manifest["label_queries"]
    assert fps.manifest["backward_passes"] == 0
    door.seen = 0
    _, _, extra = PublicCheck(SMALL)._search(
        door, sources, 20, torch.Generator().manual_seed(0), context
    )
    assert door.seen == extra["label_queries"]
    assert extra["label_queries_per_fingerprint"] == pytest.approx(door.seen / 20)
    pair_queries = sum(extra["pair_queries"])
    assert pair_queries <= door.seen  # the rest: same-label and flat pairs, and jitters


def test_same_seed_same_images_other_seed_other_images(
    run: FingerprintSet, target: nn.Module, sources: ImageSet, context: SearchContext
) -> None:
    again = PublicCheck(SMALL).generate(target, sources, n=20, seed=0, context=context)
    other = PublicCheck(SMALL).generate(target, sources, n=20, seed=1, context=context)
    assert torch.equal(again.images, run.images)
    assert not torch.equal(other.images, run.images)


def test_params_collect_every_problem() -> None:
    with pytest.raises(ValueError, match="PublicCheckParams") as err:
        PublicCheckParams(grid=1, delta=0.0, augment=-1, jitter=-0.1, ae_epochs=0, ae_lr=0.0)
    for name in ("grid", "delta", "augment", "jitter", "epochs", "lr"):
        assert name in str(err.value)
    assert PublicCheckParams().autoencoder.epochs == 50


def test_missing_pools_and_too_few_sources_raise_generation_errors(
    target: nn.Module, sources: ImageSet, context: SearchContext
) -> None:
    with pytest.raises(GenerationError, match=r"SearchContext\(pools=\.\.\.\)"):
        PublicCheck(SMALL).generate(target, sources, n=4, seed=0)
    no_jitters = PublicCheckParams(ae_epochs=30, augment=0)
    with pytest.raises(GenerationError, match="ask for fewer") as err:
        PublicCheck(no_jitters).generate(
            target, sources, n=len(sources) + 2, seed=0, context=context
        )
    assert f"all {len(sources)} source images" in str(err.value)


def test_progress_reports_training_and_search(
    target: nn.Module, sources: ImageSet, pools: Pools
) -> None:
    seen: list[tuple[str, int, int]] = []

    def progress(stage: str, done: int, total: int) -> None:
        seen.append((stage, done, total))

    context = SearchContext(pools=pools, progress=progress)
    PublicCheck(SMALL).generate(target, sources, n=6, seed=0, context=context)
    stages: dict[str, Any] = {}
    for stage, done, total in seen:
        stages.setdefault(stage, []).append((done, total))
    assert stages["autoencoder"][-1] == (SMALL.ae_epochs, SMALL.ae_epochs)
    assert stages["boundary search"][-1] == (6, 6)
