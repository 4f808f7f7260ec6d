"""Fine-tuning and retraining families: budgets, frozen layers, learning-rate ordering, the
retraining accuracy bound and re-initialization, determinism and extensions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from misentry.models import (
    last_linear,
)
from misentry.tamper.base import TamperContext, Tampered, Variant
from misentry.tamper.families.finetune import (
    VARIANTS,
    FineTuning,
    FineTuningParams,
    Retraining,
    RetrainingParams,
)
from misentry.tamper.namespace import Namespace

from .conftest import MakeContext, same, snapshot

BY_SLUG = {v.slug: v for v in VARIANTS}
SLUGS = [v.slug for v in VARIANTS]


def delta_norm(a: nn.Module, b: nn.Module) -> float:
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    return math.sqrt(sum(float((sa[k] - sb[k]).detach().pow(2).sum()) for k in sa))


_cache: dict[tuple[str, int], Tampered] = {}


def built(make_ctx: MakeContext, slug: str, index: int = 0) -> Tampered:
    """Each (variant, index) is built once per test session."""
    if (slug, index) not in _cache:
        _cache[slug, index] = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=index))
    return _cache[slug, index]


def test_variant_slugs() -> None:
    assert SLUGS == [
        "ft_last_lr1e-3",
        "ft_last_lr1e-4",
        "ft_last_lr1e-5",
        "ft_all_lr1e-3",
        "ft_all_lr1e-4",
        "ft_all_lr1e-5",
        "retrain_last",
        "retrain_all",
    ]
    assert all(not v.malicious for v in VARIANTS)
    assert {v.family for v in VARIANTS} == {"fine_tuning", "retraining"}
    for v in VARIANTS:
        json.dumps(v.tampering.params_json())


@pytest.mark.parametrize("slug", SLUGS)
def test_builds_from_target_without_touching_it(make_ctx: MakeContext, slug: str) -> None:
    ctx = make_ctx(variant=slug)
    before = snapshot(ctx.target)
    tampered = BY_SLUG[slug].tampering.build(ctx)
    _cache.setdefault((slug, 0), tampered)
    assert same(snapshot(ctx.target), before)
    assert not same(snapshot(tampered.model), before)
    assert not tampered.model.training
    assert tampered.met
    assert tampered.epochs >= 1
    assert tampered.steps >= 1
    assert tampered.extensions == 0
    assert {"check_accuracy", "target_check_accuracy"} <= tampered.objective.keys()
    assert all(isinstance(v, float) for v in tampered.objective.values())
    json.dumps(tampered.choices)


@pytest.mark.parametrize("slug", SLUGS)
def test_deterministic_per_seed_and_distinct_per_index(make_ctx: MakeContext, slug: str) -> None:
    first = built(make_ctx, slug, 0)
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    other = built(make_ctx, slug, 1)
    assert same(snapshot(first.model), snapshot(again.model))
    assert first.objective == again.objective
    assert first.steps == again.steps
    assert not same(snapshot(first.model), snapshot(other.model))


@pytest.mark.parametrize("slug", ["ft_last_lr1e-3", "ft_last_lr1e-4", "ft_last_lr1e-5"])
def test_ft_last_changes_only_the_last_layer(make_ctx: MakeContext, slug: str) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(make_ctx, slug)
    name, _ = last_linear(ctx.target)
    target, ours = snapshot(ctx.target), snapshot(tampered.model)
    for key in target:
        if key.startswith(name + "."):
            assert not torch.equal(target[key], ours[key]), key
        else:
            assert torch.equal(target[key], ours[key]), key
    assert tampered.epochs == 1  # one epoch of ceil(361 / 32) = 12 steps
    assert tampered.steps == math.ceil(len(ctx.data.tamper) / 32)


def test_ft_last_keeps_batchnorm_frozen(bn_ctx: TamperContext) -> None:
    tampered = FineTuning(FineTuningParams(layers="last", lr=1e-3)).build(bn_ctx)
    name, _ = last_linear(bn_ctx.target)
    target, ours = snapshot(bn_ctx.target), snapshot(tampered.model)
    assert any("running_mean" in k for k in target)
    changed = {k for k in target if not torch.equal(target[k], ours[k])}
    assert changed == {f"{name}.weight", f"{name}.bias"}


def test_ft_all_moves_batchnorm_statistics(bn_ctx: TamperContext) -> None:
    tampered = FineTuning(FineTuningParams(layers="all", lr=1e-4)).build(bn_ctx)
    target, ours = snapshot(bn_ctx.target), snapshot(tampered.model)
    changed = {k for k in target if not torch.equal(target[k], ours[k])}
    assert any(k.endswith("running_mean") for k in changed)
    assert any(k.startswith("features.0.") for k in changed)


@pytest.mark.parametrize("layers", ["last", "all"])
def test_weight_change_grows_with_learning_rate(make_ctx: MakeContext, layers: str) -> None:
    ctx = make_ctx(variant="lr-order")  # one seed: the same batch order for every rate
    norms = [
        delta_norm(ctx.target, FineTuning(FineTuningParams(layers=layers, lr=lr)).build(ctx).model)  # type: ignore[arg-type]
        for lr in (1e-5, 1e-4, 1e-3)
    ]
    assert 0 < norms[0] < norms[1] < norms[2]
    # Small steps from the same start: the change is close to linear in the rate.
    assert 5 < norms[1] / norms[0] < 20
    assert 5 < norms[2] / norms[1] < 20


def test_extend_adds_one_epoch(make_ctx: MakeContext) -> None:
    slug = "ft_all_lr1e-4"
    ctx = make_ctx(variant=slug)
    tampering = BY_SLUG[slug].tampering
    first = built(make_ctx, slug)
    before = snapshot(first.model)
    more = tampering.extend(ctx, first)
    assert more is not None
    assert same(snapshot(first.model), before)  # the extension works on a copy
    assert (more.epochs, more.steps, more.extensions) == (2, 2 * first.steps, 1)
    assert delta_norm(ctx.target, more.model) > delta_norm(ctx.target, first.model)
    again = tampering.extend(ctx, first)
    assert again is not None
    assert same(snapshot(more.model), snapshot(again.model))
    capped = Tampered(first.model, first.objective, True, extensions=tampering.max_extensions)
    assert tampering.extend(ctx, capped) is None
    assert tampering.max_extensions == 9


@pytest.mark.parametrize("slug", ["retrain_last", "retrain_all"])
def test_retraining_reaches_the_accuracy_bound_early(make_ctx: MakeContext, slug: str) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(make_ctx, slug)
    tampering = BY_SLUG[slug].tampering
    assert isinstance(tampering, Retraining)
    params = tampering.params
    objective = tampered.objective
    assert objective["accuracy_gap"] == pytest.approx(
        objective["target_check_accuracy"] - objective["check_accuracy"]
    )
    assert objective["accuracy_gap"] <= params.tolerance + 1e-6
    steps_per_epoch = math.ceil(len(ctx.data.tamper) / params.batch_size)
    assert tampered.steps < params.max_epochs * steps_per_epoch
    # Stopped at a check: a multiple of check_every or an epoch end.
    assert tampered.steps % params.check_every == 0 or tampered.steps % steps_per_epoch == 0


def test_retraining_stops_at_the_first_check_that_holds(make_ctx: MakeContext) -> None:
    loose = Retraining(RetrainingParams(layers="last", tolerance=0.99, check_every=3))
    tampered = loose.build(make_ctx(variant="loose"))
    assert tampered.met
    assert tampered.steps == 3
    assert tampered.epochs == 0
    impossible = Retraining(RetrainingParams(layers="last", tolerance=0.0, max_epochs=1))
    ctx = make_ctx(variant="impossible")
    hard = impossible.build(ctx)
    # Either the bound happened to hold, or the cap ended training and met reports it.
    assert hard.epochs <= 1
    assert hard.met == (hard.objective["accuracy_gap"] <= 1e-6)


@pytest.mark.parametrize("slug", ["retrain_last", "retrain_all"])
def test_retraining_reinitializes_the_last_layer(make_ctx: MakeContext, slug: str) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(make_ctx, slug)
    name, layer = last_linear(ctx.target)
    _, new_layer = last_linear(tampered.model)
    old, new = layer.weight.detach(), new_layer.weight.detach()
    relative = float((new - old).norm() / old.norm())
    assert relative > 0.5
    target, ours = snapshot(ctx.target), snapshot(tampered.model)
    others = [k for k in target if not k.startswith(name + ".")]
    unchanged = [k for k in others if torch.equal(target[k], ours[k])]
    if slug == "retrain_last":
        assert unchanged == others
    else:
        assert any(k.endswith("weight") for k in set(others) - set(unchanged))


def test_retraining_extend_adds_an_epoch(make_ctx: MakeContext) -> None:
    slug = "retrain_last"
    ctx = make_ctx(variant=slug)
    tampering = BY_SLUG[slug].tampering
    first = built(make_ctx, slug)
    more = tampering.extend(ctx, first)
    assert more is not None
    assert more.epochs == first.epochs + 1
    assert more.extensions == 1
    assert more.steps == first.steps + math.ceil(len(ctx.data.tamper) / 32)
    assert more.objective["target_check_accuracy"] == first.objective["target_check_accuracy"]


def test_zoo_namespace_trains_on_its_own_pool(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="ft_last_lr1e-3", namespace=Namespace.ZOO)
    tampered = BY_SLUG["ft_last_lr1e-3"].tampering.build(ctx)
    assert tampered.steps == math.ceil(len(ctx.data.pool("val")) / 32)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="layers"):
        FineTuningParams(layers="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        FineTuningParams(lr=0)
    with pytest.raises(ValueError, match="tolerance"):
        RetrainingParams(tolerance=1.5)
    assert isinstance(VARIANTS[0], Variant)
