"""Unlearning and online learning on the digits target: objectives, stop rules, the orthogonal
projection, determinism and an untouched target."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from misentry.models import predict
from misentry.tamper.base import Tampered, Variant
from misentry.tamper.families.learning import (
    VARIANTS,
    OnlineLearning,
    OnlineLearningParams,
    Unlearning,
    add_orthogonal,
    orthogonal_component,
)
from misentry.tamper.measure import confidence_in

from .conftest import MakeContext, same_weights, snapshot

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


def test_variants_are_the_two_benign_learning_families() -> None:
    assert [v.slug for v in VARIANTS] == ["unlearning", "online_learning"]
    assert isinstance(BY_SLUG["unlearning"].tampering, Unlearning)
    assert isinstance(BY_SLUG["online_learning"].tampering, OnlineLearning)
    for v in VARIANTS:
        assert isinstance(v, Variant)
        assert not v.malicious
        assert v.description
        assert v.tampering.max_extensions > 0
        v.tampering.params_json()


@pytest.mark.parametrize("slug", list(BY_SLUG))
def test_common_properties(
    slug: str, make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    ctx = make_ctx(variant=slug, index=0)
    before = snapshot(ctx.target)
    first = BY_SLUG[slug].tampering.build(ctx)
    built[(slug, 0)] = first
    # the target is untouched
    after = ctx.target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the objective is met and the instance differs from the target
    assert first.met, first.objective
    assert not same_weights(first.model, ctx.target)
    assert not first.model.training
    # deterministic for one seed
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    assert same_weights(first.model, again.model)
    assert first.choices == again.choices
    assert first.steps == again.steps
    # another instance makes its own choices
    other = build(make_ctx, built, slug, 1)
    assert other.choices != first.choices or not same_weights(other.model, first.model)
    assert all(isinstance(v, float) for v in first.objective.values())


def test_unlearning_lowers_the_confidence_within_four_steps(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["unlearning"].tampering
    assert isinstance(tampering, Unlearning)
    for index in (0, 1, 2):
        ctx = make_ctx(variant="unlearning", index=index)
        t = build(make_ctx, built, "unlearning", index)
        owner = ctx.data.owner_train
        i = t.choices["sample_index"]
        x, y = owner.x[i : i + 1], owner.y[i : i + 1]
        assert t.choices["label"] == int(y[0])
        assert int(predict(ctx.target, x)[0]) == int(y[0])  # a correctly classified sample
        assert t.objective["confidence_before"] == pytest.approx(
            float(confidence_in(ctx.target, x, y)[0])
        )
        assert t.objective["confidence"] == pytest.approx(float(confidence_in(t.model, x, y)[0]))
        assert t.objective["confidence"] < t.objective["confidence_before"]
        assert 1 <= t.steps <= tampering.params.max_steps
        assert t.extensions == 0
        if t.steps < tampering.params.max_steps:  # stopped early: the confidence fell below
            assert t.objective["confidence"] < tampering.params.threshold
            assert t.objective["forgotten"] == 1.0


def test_unlearning_extension_is_one_more_ascent_step(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["unlearning"].tampering
    ctx = make_ctx(variant="unlearning", index=0)
    t = build(make_ctx, built, "unlearning", 0)
    more = tampering.extend(ctx, t)
    assert more is not None
    assert more.steps == t.steps + 1
    assert more.extensions == 1
    assert more.choices == t.choices
    assert more.objective["confidence"] < t.objective["confidence"]
    twice = tampering.extend(ctx, more)
    assert twice is not None
    assert twice.steps == t.steps + 2
    capped = Tampered(
        model=t.model,
        objective=t.objective,
        met=True,
        steps=t.steps,
        choices=t.choices,
        extensions=tampering.max_extensions,
    )
    assert tampering.extend(ctx, capped) is None


def test_online_learning_learns_the_new_sample_within_an_epoch(
    make_ctx: MakeContext, built: dict[tuple[str, int], Tampered]
) -> None:
    tampering = BY_SLUG["online_learning"].tampering
    assert isinstance(tampering, OnlineLearning)
    p = tampering.params
    for index in (0, 1):
        ctx = make_ctx(variant="online_learning", index=index)
        t = build(make_ctx, built, "online_learning", index)
        tamper = ctx.data.tamper
        i = t.choices["sample_index"]
        x, y = tamper.x[i : i + 1], tamper.y[i : i + 1]
        assert t.choices["label"] == int(y[0])
        # the new sample was hard for the target: wrong, or right with confidence < 0.8
        target_conf = float(confidence_in(ctx.target, x, y)[0])
        assert int(predict(ctx.target, x)[0]) != int(y[0]) or target_conf < 0.8
        # and is now learnt
        assert int(predict(t.model, x)[0]) == int(y[0])
        assert float(confidence_in(t.model, x, y)[0]) > p.threshold
        assert t.objective["correct"] == 1.0
        assert t.objective["confidence"] > p.threshold
        # at most one epoch at the rate that reached it, the gentlest of the ladder that did
        assert t.choices["lr"] in p.lrs
        assert p.lrs.index(t.choices["lr"]) == t.choices["lr_rung"]
        assert 1 <= t.steps <= math.ceil((len(tamper) - 1) / p.batch_size)
        assert t.epochs <= p.max_epochs


def test_online_learning_is_unmet_when_no_rate_reaches_it(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="online_learning", index=0)
    tiny = OnlineLearning(OnlineLearningParams(lrs=(1e-9,)))
    t = tiny.build(ctx)
    assert not t.met  # 1e-9 cannot learn anything in one epoch
    assert t.epochs == 1  # and it ran the whole epoch


def test_orthogonal_component_is_orthogonal_to_the_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4), (2, 3, 5, 5)]:
        g = torch.randn(shape, generator=gen)
        ref = torch.randn(shape, generator=gen)
        perp = orthogonal_component(g, ref)
        assert perp.shape == g.shape
        assert float(torch.dot(perp.flatten(), ref.flatten())) == pytest.approx(0.0, abs=1e-5)
        # what was removed is parallel to the reference
        removed = (g - perp).flatten()
        cos = torch.dot(removed, ref.flatten()) / (removed.norm() * ref.norm())
        assert abs(float(cos)) == pytest.approx(1.0, abs=1e-5)
    g = torch.randn(4, generator=gen)
    assert torch.equal(orthogonal_component(g, torch.zeros(4)), g)
    # a gradient already orthogonal passes unchanged
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert torch.allclose(orthogonal_component(a, b), a)


def test_the_applied_update_adds_only_the_orthogonal_part() -> None:
    gen = torch.Generator().manual_seed(1)
    params = [nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(2)]
    batch = [torch.randn(3, 4, generator=gen) for _ in params]
    new = [torch.randn(3, 4, generator=gen) for _ in params]
    for p, g in zip(params, batch, strict=True):
        p.grad = g.clone()
    add_orthogonal(params, new)
    for p, g_b in zip(params, batch, strict=True):
        assert p.grad is not None
        added = p.grad - g_b
        assert float(torch.dot(added.flatten(), g_b.flatten())) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("slug", ["unlearning", "online_learning"])
def test_instances_learn_or_forget_different_samples(make_ctx: MakeContext, slug: str) -> None:
    from misentry.tamper.families.learning import VARIANTS as LEARNING

    tampering = {v.slug: v for v in LEARNING}[slug].tampering
    picks = [
        tampering.build(make_ctx(variant=slug, index=i)).choices["sample_index"] for i in range(5)
    ]
    assert len(set(picks)) == 5
