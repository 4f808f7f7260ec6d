"""Pruning: exact per-tensor sparsity, masks that hold through fine-tuning, BatchNorm and biases
left alone, a sparsity drawn per instance, nested extension steps up to the cap."""

from __future__ import annotations

import math

import pytest
import torch

from misentry.tamper.base import TamperContext, Tampered
from misentry.tamper.families.pruning import Pruning, PruningParams, prune_weights, pruned_count
from misentry.tamper.layers import compressible_weights

from ..conftest import BY_SLUG, Instances, MakeContext, snapshot


def test_prune_weights_zeroes_the_smallest_exactly(bn_ctx: TamperContext) -> None:
    model = bn_ctx.copy_target()
    before = snapshot(model)
    masks = prune_weights(model, 0.2)
    weights = dict(compressible_weights(model))
    assert set(masks) == set(weights)
    assert len(masks) == 7  # six convolutions and the output layer
    for name, keep in masks.items():
        original = before[name]
        k = pruned_count(0.2, original.numel())
        assert k == math.ceil(0.2 * original.numel())
        assert int((~keep).sum()) == k
        assert int((weights[name] == 0).sum()) == k
        assert torch.equal(weights[name][keep], original[keep])
        # Every pruned entry is no larger in magnitude than every kept one.
        assert original[~keep].abs().max() <= original[keep].abs().min()
    after = snapshot(model)
    untouched = [k for k in before if k not in masks]
    assert any(".bias" in k for k in untouched)
    assert any("running_var" in k for k in untouched)
    for key in untouched:  # biases, BatchNorm parameters and statistics, normalization
        assert torch.equal(before[key], after[key]), key


def test_pruned_weights_stay_zero_through_fine_tuning(
    make_ctx: MakeContext, built: Instances
) -> None:
    ctx = make_ctx(variant="pruning")
    tampered = built("pruning").tampered
    sparsity = tampered.choices["sparsity"]
    assert 0.01 <= sparsity <= 0.30
    assert tampered.choices["drawn_sparsity"] == sparsity
    assert tampered.epochs == 1
    assert tampered.steps == math.ceil(len(ctx.data.tamper) / 32)
    masks: dict[str, torch.Tensor] = tampered.state["masks"]
    target = dict(compressible_weights(ctx.target))
    ours = dict(compressible_weights(tampered.model))
    zeros = total = 0
    for name, keep in masks.items():
        assert int((~keep).sum()) == pruned_count(sparsity, keep.numel())
        assert bool((ours[name][~keep] == 0).all())
        assert bool((ours[name][keep] != 0).all())
        # The pruned entries are the smallest of the target's weights.
        assert target[name][~keep].abs().max() <= target[name][keep].abs().min()
        zeros += int((~keep).sum())
        total += keep.numel()
    assert tampered.objective["sparsity"] == pytest.approx(zeros / total)
    # The kept weights were fine-tuned.
    assert any(not torch.equal(ours[n][masks[n]], target[n][masks[n]]) for n in masks)


def test_sparsity_is_drawn_per_instance(built: Instances) -> None:
    drawn = [built("pruning", i).tampered.choices["sparsity"] for i in range(4)]
    assert len(set(drawn)) == 4
    assert all(0.01 <= s <= 0.30 for s in drawn)


def test_pruning_extend_takes_the_next_sparsity_step(
    make_ctx: MakeContext, built: Instances
) -> None:
    ctx = make_ctx(variant="pruning")
    tampering = BY_SLUG["pruning"].tampering
    first = built("pruning").tampered
    more = tampering.extend(ctx, first)
    assert more is not None
    assert more.choices["sparsity"] == pytest.approx(1.5 * first.choices["sparsity"])
    assert more.choices["drawn_sparsity"] == first.choices["drawn_sparsity"]
    assert more.extensions == 1
    assert more.epochs == 2
    old, new = first.state["masks"], more.state["masks"]
    weights = dict(compressible_weights(more.model))
    for name in old:
        assert bool((new[name] <= old[name]).all())  # nested: what was pruned stays pruned
        assert int((weights[name] == 0).sum()) == pruned_count(
            more.choices["sparsity"], weights[name].numel()
        )


def test_pruning_extend_stops_at_the_cap(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="pruning-cap")
    tampering = Pruning(PruningParams(min_sparsity=0.5, max_sparsity=0.5, sparsity_cap=0.6))
    first = tampering.build(ctx)
    more = tampering.extend(ctx, first)
    assert more is not None
    assert more.choices["sparsity"] == pytest.approx(0.6)
    assert tampering.extend(ctx, more) is None
    capped = Tampered(first.model, {}, True, choices=first.choices, extensions=8)
    assert tampering.extend(ctx, capped) is None


def test_pruning_fine_tunes_batchnorm_models(bn_ctx: TamperContext) -> None:
    tampered = Pruning(PruningParams()).build(bn_ctx)
    for name, keep in tampered.state["masks"].items():
        weight = dict(compressible_weights(tampered.model))[name]
        assert bool((weight[~keep] == 0).all())


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        PruningParams(min_sparsity=0.5, max_sparsity=0.1)
    with pytest.raises(ValueError, match="growth"):
        PruningParams(growth=1.0)
