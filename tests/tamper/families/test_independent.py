"""Independently trained models on the digits target: other architectures cycle through the
candidates, and a retrain keeps the target's architecture and recipe."""

from __future__ import annotations

from misentry.tamper.families.independent import DifferentArch
from misentry.tamper.recipes import scratch_config, target_recipe
from misentry.tamper.replacement import candidate_architectures

from ..conftest import BY_SLUG, Instances, MakeContext


def test_different_arch_never_uses_the_target_architecture(
    make_ctx: MakeContext, built: Instances
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
    t = built("different_arch", 0).tampered
    assert t.architecture == t.choices["architecture"] != ctx.architecture


def test_independent_retrain_keeps_the_architecture_and_recipe(
    make_ctx: MakeContext, built: Instances
) -> None:
    ctx = make_ctx(variant="independent_retrain")
    t = built("independent_retrain", 0).tampered
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
