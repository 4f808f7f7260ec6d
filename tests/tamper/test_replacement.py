"""What the replacement families share, and the contract they keep: distillation, transfer
learning, other architectures and independent retraining on the digits target reach their accuracy
bounds, record the architecture they built, are deterministic and leave the target untouched; the
candidate architectures skip costly and unbuildable ones."""

from __future__ import annotations

import pytest

from misentry.models import ARCHITECTURES, build_model, predict
from misentry.tamper.base import NotApplicable, Variant
from misentry.tamper.families import distillation, independent, transfer_learning
from misentry.tamper.families.distillation import Distillation
from misentry.tamper.families.independent import DifferentArch, IndependentRetrain
from misentry.tamper.families.transfer_learning import TransferLearning
from misentry.tamper.recipes import target_recipe
from misentry.tamper.replacement import candidate_architectures, forward_macs

from .conftest import BY_SLUG, Instances, MakeContext, same, same_weights, snapshot

VARIANTS: tuple[Variant, ...] = (
    distillation.VARIANTS + transfer_learning.VARIANTS + independent.VARIANTS
)


def test_variants_are_the_four_benign_replacement_families() -> None:
    assert [v.slug for v in VARIANTS] == [
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


@pytest.mark.parametrize("slug", [v.slug for v in VARIANTS])
def test_common_properties(slug: str, make_ctx: MakeContext, built: Instances) -> None:
    ctx = make_ctx(variant=slug, index=0)
    before = snapshot(ctx.target)
    first = BY_SLUG[slug].tampering.build(ctx)
    assert same(snapshot(ctx.target), before)  # the target is untouched
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
    again = built(slug, 0).tampered
    assert same_weights(first.model, again.model)
    assert first.choices == again.choices
    assert first.steps == again.steps


def test_accuracy_bounds_are_reached_and_training_stopped_early(
    make_ctx: MakeContext, built: Instances
) -> None:
    for slug in ("distillation", "different_arch", "independent_retrain"):
        tampering = BY_SLUG[slug].tampering
        ctx = make_ctx(variant=slug, index=0)
        t = built(slug, 0).tampered
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


def test_other_instances_differ(make_ctx: MakeContext, built: Instances) -> None:
    for slug in ("independent_retrain", "transfer_learning"):
        a, b = built(slug, 0).tampered, built(slug, 1).tampered
        assert a.choices != b.choices
        assert not same_weights(a.model, b.model)


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
    with pytest.raises(NotApplicable, match="no registered architecture"):
        DifferentArch(
            BY_SLUG["different_arch"].tampering.params.__class__(max_cost_ratio=1e-9)
        ).build(ctx)
