"""Pruning and quantization families: exact sparsity and masks that hold through fine-tuning,
BatchNorm and biases left alone, quantization grids, determinism and extensions."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from misentry.tamper.base import TamperContext, Tampered
from misentry.tamper.families.compression import (
    VARIANTS,
    Pruning,
    PruningParams,
    Quantization,
    QuantizationParams,
    compressible_weights,
    prune_weights,
    pruned_count,
    quantize_tensor,
    quantize_weights,
)

from .conftest import MakeContext, same, snapshot

BY_SLUG = {v.slug: v for v in VARIANTS}
SLUGS = [v.slug for v in VARIANTS]


_cache: dict[tuple[str, int], Tampered] = {}


def built(make_ctx: MakeContext, slug: str, index: int = 0) -> Tampered:
    """Each (variant, index) is built once per test session."""
    if (slug, index) not in _cache:
        _cache[slug, index] = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=index))
    return _cache[slug, index]


def test_variant_slugs() -> None:
    assert SLUGS == ["pruning", "quantization"]
    assert [v.family for v in VARIANTS] == ["pruning", "quantization"]
    assert all(not v.malicious for v in VARIANTS)
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
    assert tampered.extensions == 0
    objective = tampered.objective
    assert {"accuracy_drop", "check_accuracy", "target_check_accuracy"} <= objective.keys()
    assert objective["accuracy_drop"] == pytest.approx(
        objective["target_check_accuracy"] - objective["check_accuracy"]
    )
    json.dumps(tampered.choices)


@pytest.mark.parametrize("slug", SLUGS)
def test_deterministic_per_seed_and_distinct_per_index(make_ctx: MakeContext, slug: str) -> None:
    first = built(make_ctx, slug, 0)
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    assert same(snapshot(first.model), snapshot(again.model))
    assert first.choices == again.choices
    assert first.objective == again.objective
    # Quantization draws from a 10-cell grid, so two instances may share a cell: look for the
    # first index with other choices; its weights must differ too.
    for index in range(1, 12):
        other = built(make_ctx, slug, index)
        if other.choices != first.choices:
            break
    assert other.choices != first.choices
    assert not same(snapshot(first.model), snapshot(other.model))


# --- pruning --------------------------------------------------------------------------------


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


def test_pruned_weights_stay_zero_through_fine_tuning(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="pruning")
    tampered = built(make_ctx, "pruning")
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


def test_sparsity_is_drawn_per_instance(make_ctx: MakeContext) -> None:
    drawn = [built(make_ctx, "pruning", i).choices["sparsity"] for i in range(4)]
    assert len(set(drawn)) == 4
    assert all(0.01 <= s <= 0.30 for s in drawn)


def test_pruning_extend_takes_the_next_sparsity_step(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="pruning")
    tampering = BY_SLUG["pruning"].tampering
    first = built(make_ctx, "pruning")
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


# --- quantization ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_tensor_has_at_most_2_to_the_bits_values(scheme: str, bits: int) -> None:
    weight = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(bits)) * 0.2
    whole = quantize_tensor(weight, bits, "per_tensor", scheme)  # type: ignore[arg-type]
    assert whole.dtype == torch.float32
    assert whole.shape == weight.shape
    assert torch.unique(whole).numel() <= 2**bits
    per_channel = quantize_tensor(weight, bits, "per_channel", scheme)  # type: ignore[arg-type]
    assert all(torch.unique(row).numel() <= 2**bits for row in per_channel)
    if bits <= 4:  # each channel has its own grid
        assert torch.unique(per_channel).numel() > 2**bits
    # Round to nearest: no entry moves by more than half a step of its grid.
    step = 2 * weight.abs().max() / (2**bits - 2)  # the coarser of the two schemes' steps
    assert float((whole - weight).abs().max()) <= float(step) / 2 + 1e-6
    assert quantize_tensor(torch.zeros(3, 4), bits, "per_channel").abs().sum() == 0


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_fewer_bits_give_larger_weight_error(make_ctx: MakeContext, granularity: str) -> None:
    ctx = make_ctx(variant="bits")
    errors = []
    for bits in range(8, 1, -1):
        model = ctx.copy_target()
        errors.append(quantize_weights(model, bits, granularity))  # type: ignore[arg-type]
    assert all(a < b for a, b in itertools.pairwise(errors))
    assert 0 < errors[0] < 0.05


def test_quantization_instance_is_on_its_grid(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="quantization")
    tampered = built(make_ctx, "quantization")
    bits, granularity = tampered.choices["bits"], tampered.choices["granularity"]
    assert 4 <= bits <= 8
    assert granularity in ("per_tensor", "per_channel")
    assert tampered.choices["scheme"] == "symmetric"
    assert (tampered.steps, tampered.epochs) == (0, 0)  # stops immediately
    target, ours = snapshot(ctx.target), snapshot(tampered.model)
    weights = {name for name, _ in compressible_weights(ctx.target)}
    for key in target:
        if key not in weights:  # biases and buffers untouched
            assert torch.equal(target[key], ours[key]), key
            continue
        assert ours[key].dtype == torch.float32
        groups = [ours[key]] if granularity == "per_tensor" else list(ours[key])
        assert all(torch.unique(g).numel() <= 2**bits for g in groups)
        expected = quantize_tensor(target[key], bits, granularity)
        assert torch.equal(ours[key], expected)


def test_quantization_covers_the_grid(make_ctx: MakeContext) -> None:
    cells = {
        (t.choices["bits"], t.choices["granularity"])
        for t in (built(make_ctx, "quantization", i) for i in range(12))
    }
    assert len({bits for bits, _ in cells}) >= 3
    assert {g for _, g in cells} == {"per_tensor", "per_channel"}


def test_quantization_extend_removes_one_bit(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="quantization")
    tampering = BY_SLUG["quantization"].tampering
    tampered = built(make_ctx, "quantization")
    seen = [tampered.choices["bits"]]
    granularity = tampered.choices["granularity"]
    errors = [tampered.objective["weight_error"]]
    while (more := tampering.extend(ctx, tampered)) is not None:
        tampered = more
        seen.append(tampered.choices["bits"])
        errors.append(tampered.objective["weight_error"])
        assert tampered.choices["granularity"] == granularity
    assert seen == list(range(seen[0], 1, -1))
    assert tampered.extensions == seen[0] - 2
    assert tampering.max_extensions == 6
    assert all(a < b for a, b in itertools.pairwise(errors))


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        PruningParams(min_sparsity=0.5, max_sparsity=0.1)
    with pytest.raises(ValueError, match="growth"):
        PruningParams(growth=1.0)
    with pytest.raises(ValueError, match="bits"):
        QuantizationParams(bits=(1, 4))
    with pytest.raises(ValueError, match="granularity"):
        QuantizationParams(granularities=("per_row",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 bits"):
        quantize_tensor(torch.ones(2, 2), 1, "per_tensor")
    assert isinstance(BY_SLUG["quantization"].tampering, Quantization)


def test_ten_quantization_instances_are_ten_different_models(make_ctx: MakeContext) -> None:
    quantization = BY_SLUG["quantization"].tampering
    built = [quantization.build(make_ctx(variant="quantization", index=i)) for i in range(10)]
    cells = {(t.choices["bits"], t.choices["granularity"]) for t in built}
    assert len(cells) == 10
    weights = [torch.cat([p.flatten() for p in t.model.parameters()]) for t in built]
    for a, b in itertools.combinations(weights, 2):
        assert not torch.equal(a, b)
