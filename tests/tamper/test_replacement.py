"""Distillation, transfer learning, other architectures and independent retraining on the digits
target: accuracy bounds, recorded architectures, determinism and an untouched target."""

from __future__ import annotations

import pytest
import torch

from misentry.models import ARCHITECTURES, build_model, last_linear, predict
from misentry.tamper.base import Tampered, Variant
from misentry.tamper.families.replacement import (
    VARIANTS,
    DifferentArch,
    Distillation,
    IndependentRetrain,
    TransferLearning,
    candidate_architectures,
    forward_macs,
    invert,
    scratch_config,
    target_recipe,
)

from .conftest import MakeContext, same_weights

BY_SLUG = {v.slug: v for v in VARIANTS}


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, int], Tampered]:
    """Instances built so far in this module, by (slug, index)."""
    return {}


def build(
    make_ctx: MakeContext, cache: dict[tuple[str, int], Tampered], slug: str, index: int
) -> Tampered:
    key = (slug, index)
    if key not in cache:
        cache[key] = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=index))
    return cache[key]


def test_variants_are_the_four_benign_replacement_families() -> None:
    assert list(BY_SLUG) == [
        "distillation",
        "transfer_learning",
        "different_arch",
        "independent_retrain",
    ]
    kinds = [Distillation, TransferLearning, DifferentArch, IndependentRetrain]
    for v, kind in zip(VARIANTS, kinds, strict=True):
        assert isinstance(v, Variant)
        assert isinstance(v.tampering, kind)
        assert v.family == v.slug
        assert not v.malicious
        assert v.description
        v.tampering.params_json()


@pytest.mark.parametrize("slug", list(BY_SLUG))
def test_common_properties(
    slug: str, make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    ctx = make_ctx(variant=slug, index=0)
    before = {k: v.clone() for k, v in ctx.target.state_dict().items()}
    first = BY_SLUG[slug].tampering.build(ctx)
    built[(slug, 0)] = first
    after = ctx.target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the target is untouched
    assert first.met, first.objective
    assert not first.model.training
    assert not same_weights(first.model, ctx.target)
    x = ctx.data.check.x
    assert bool((predict(first.model, x) != predict(ctx.target, x)).any())
    assert all(isinstance(v, float) for v in first.objective.values())
    # the architecture recorded is the one built
    arch = first.architecture or ctx.architecture
    reference = build_model(arch, ctx.spec, 0)
    assert type(first.model) is type(reference)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in first.model.state_dict().items()} == shapes
    # deterministic for one seed
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    assert same_weights(first.model, again.model)
    assert first.choices == again.choices
    assert first.steps == again.steps


def test_accuracy_bounds_are_reached_and_training_stopped_early(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    for slug in ("distillation", "different_arch", "independent_retrain"):
        tampering = BY_SLUG[slug].tampering
        ctx = make_ctx(variant=slug, index=0)
        t = build(make_ctx, built, slug, 0)
        tolerance = tampering.params.tolerance
        target_acc = float(
            (predict(ctx.target, ctx.data.check.x) == ctx.data.check.y).float().mean()
        )
        assert t.objective["target_check_accuracy"] == pytest.approx(target_acc)
        assert t.objective["check_accuracy"] >= target_acc - tolerance - 1e-6
        assert t.objective["accuracy_gap"] <= tolerance + 1e-6
        # the recipe's epochs were capped, and training stopped before the cap
        cap = min(target_recipe(ctx).epochs, tampering.params.max_epochs)
        assert 1 <= t.epochs < cap, (slug, t.epochs)


def test_other_instances_differ(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    for slug in ("independent_retrain", "transfer_learning"):
        a, b = build(make_ctx, built, slug, 0), build(make_ctx, built, slug, 1)
        assert a.choices != b.choices
        assert not same_weights(a.model, b.model)


def test_distillation_students_alternate_between_own_and_other_architectures(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["distillation"].tampering
    assert isinstance(tampering, Distillation)
    archs = [
        tampering.student_architecture(make_ctx(variant="distillation", index=i)) for i in range(10)
    ]
    ctx = make_ctx(variant="distillation")
    assert ctx.architecture in archs
    others = set(archs) - {ctx.architecture}
    assert others
    assert others <= set(candidate_architectures(ctx, tampering.params.max_cost_ratio))
    t = build(make_ctx, built, "distillation", 0)
    assert t.architecture == archs[0] == t.choices["student"]
    assert t.choices["labels"] == "hard"
    assert 0.0 <= t.objective["agreement"] <= 1.0


def test_different_arch_never_uses_the_target_architecture(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["different_arch"].tampering
    assert isinstance(tampering, DifferentArch)
    ctx = make_ctx(variant="different_arch")
    candidates = candidate_architectures(ctx, tampering.params.max_cost_ratio)
    assert candidates
    assert ctx.architecture not in candidates
    chosen = [
        tampering.choose_architecture(make_ctx(variant="different_arch", index=i))
        for i in range(10)
    ]
    assert ctx.architecture not in chosen
    assert set(chosen) == set(candidates)  # instances cycle through every candidate
    assert len(candidates) >= 2
    t = build(make_ctx, built, "different_arch", 0)
    assert t.architecture == t.choices["architecture"] != ctx.architecture


def test_candidate_architectures_skip_costly_and_unbuildable_ones(make_ctx: MakeContext) -> None:
    ctx = make_ctx()
    own = forward_macs(ctx.architecture, ctx.spec)
    assert own is not None
    assert own > 0
    every = candidate_architectures(ctx, max_cost_ratio=1e9)
    assert ctx.architecture not in every
    for name in ARCHITECTURES:
        if name != ctx.architecture and forward_macs(name, ctx.spec) is not None:
            assert name in every
    assert "densenet121" not in every or forward_macs("densenet121", ctx.spec) is not None
    cheap = candidate_architectures(ctx, max_cost_ratio=4.0)
    for name in cheap:
        macs = forward_macs(name, ctx.spec)
        assert macs is not None
        assert macs <= 4 * own
    assert candidate_architectures(ctx, max_cost_ratio=1e-9) == []
    with pytest.raises(ValueError, match="no registered architecture"):
        DifferentArch(
            BY_SLUG["different_arch"].tampering.params.__class__(max_cost_ratio=1e-9)
        ).build(ctx)


def test_independent_retrain_keeps_the_architecture_and_recipe(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    ctx = make_ctx(variant="independent_retrain")
    t = build(make_ctx, built, "independent_retrain", 0)
    assert t.architecture == ctx.architecture == t.choices["architecture"]
    recipe, config = target_recipe(ctx), scratch_config(ctx, 20, seed=3)
    assert (config.optimizer, config.lr, config.momentum, config.weight_decay) == (
        recipe.optimizer,
        recipe.lr,
        recipe.momentum,
        recipe.weight_decay,
    )
    assert (config.batch_size, config.augment_shift, config.schedule) == (
        recipe.batch_size,
        recipe.augment_shift,
        recipe.schedule,
    )
    assert config.epochs == min(recipe.epochs, 20)
    assert config.seed == 3


def test_transfer_learning_has_a_new_head_and_reaches_the_shifted_accuracy(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["transfer_learning"].tampering
    assert isinstance(tampering, TransferLearning)
    ctx = make_ctx(variant="transfer_learning")
    t = build(make_ctx, built, "transfer_learning", 0)
    name, head = last_linear(t.model)
    target_name, target_head = last_linear(ctx.target)
    assert name == target_name == t.choices["head"]
    assert t.architecture is None
    assert head.weight.shape == target_head.weight.shape
    assert not torch.equal(head.weight, target_head.weight)
    check = ctx.data.check
    shifted = float((predict(t.model, invert(check.x)) == check.y).float().mean())
    target_shifted = float((predict(ctx.target, invert(check.x)) == check.y).float().mean())
    assert t.objective["shifted_accuracy"] == pytest.approx(shifted)
    assert t.objective["target_shifted_accuracy"] == pytest.approx(target_shifted)
    goal = t.objective["target_check_accuracy"] - tampering.params.tolerance
    assert shifted >= goal - 1e-6 > target_shifted
    assert t.steps < tampering.params.max_epochs * len(ctx.data.tamper) // 32
