"""Fine-tuning: only the output layer moves for ``ft_last`` (BatchNorm frozen), BatchNorm
statistics move for ``ft_all``, the change grows with the rate, extension adds an epoch, the zoo
namespace trains on its own pool."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from misentry.models import last_linear
from misentry.tamper.base import TamperContext, Tampered, Variant
from misentry.tamper.families.fine_tuning import VARIANTS, FineTuning, FineTuningParams
from misentry.tamper.namespace import Namespace

from ..conftest import BY_SLUG, Instances, MakeContext, same, snapshot


def delta_norm(a: nn.Module, b: nn.Module) -> float:
    sa, sb = dict(a.named_parameters()), dict(b.named_parameters())
    return math.sqrt(sum(float((sa[k] - sb[k]).detach().pow(2).sum()) for k in sa))


@pytest.mark.parametrize("slug", ["ft_last_lr1e-3", "ft_last_lr1e-4", "ft_last_lr1e-5"])
def test_ft_last_changes_only_the_last_layer(
    make_ctx: MakeContext, built: Instances, slug: str
) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(slug).tampered
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


def test_extend_adds_one_epoch(make_ctx: MakeContext, built: Instances) -> None:
    slug = "ft_all_lr1e-4"
    ctx = make_ctx(variant=slug)
    tampering = BY_SLUG[slug].tampering
    first = built(slug).tampered
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


def test_zoo_namespace_trains_on_its_own_pool(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="ft_last_lr1e-3", namespace=Namespace.ZOO)
    tampered = BY_SLUG["ft_last_lr1e-3"].tampering.build(ctx)
    assert tampered.steps == math.ceil(len(ctx.data.pool("val")) / 32)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="layers"):
        FineTuningParams(layers="middle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        FineTuningParams(lr=0)
    assert isinstance(VARIANTS[0], Variant)
