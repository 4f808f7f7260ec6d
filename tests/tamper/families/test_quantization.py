"""Quantization: grids of at most 2^bits values, weight error growing as bits fall, instances on
their grid covering the grid cells, one bit fewer per extension."""

from __future__ import annotations

import itertools

import pytest
import torch

from misentry.tamper.families.quantization import (
    Quantization,
    QuantizationParams,
    quantize_tensor,
    quantize_weights,
)
from misentry.tamper.layers import compressible_weights

from ..conftest import BY_SLUG, Instances, MakeContext, snapshot


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


def test_quantization_instance_is_on_its_grid(make_ctx: MakeContext, built: Instances) -> None:
    ctx = make_ctx(variant="quantization")
    tampered = built("quantization").tampered
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


def test_quantization_covers_the_grid(built: Instances) -> None:
    cells = {
        (t.choices["bits"], t.choices["granularity"])
        for t in (built("quantization", i).tampered for i in range(12))
    }
    assert len({bits for bits, _ in cells}) >= 3
    assert {g for _, g in cells} == {"per_tensor", "per_channel"}


def test_quantization_extend_removes_one_bit(make_ctx: MakeContext, built: Instances) -> None:
    ctx = make_ctx(variant="quantization")
    tampering = BY_SLUG["quantization"].tampering
    tampered = built("quantization").tampered
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
