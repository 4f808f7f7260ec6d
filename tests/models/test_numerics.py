"""The emulated numeric stacks: rounding as the real types round, and the same emulation for
every kind of model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from misentry.models import Record, model_from_record
from misentry.models.numerics import TF32_BITS, Reordered, Rounded, round_mantissa
from misentry.models.stacks import ALL_STACKS, LEVELS, StackUnavailable, level_index, stacks


@pytest.fixture(scope="module")
def values() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    magnitudes = torch.logspace(-6, 4, 4000, dtype=torch.float64)
    signs = torch.where(torch.rand(4000, generator=generator) < 0.5, -1.0, 1.0)
    return (magnitudes * signs * (1 + torch.rand(4000, generator=generator))).float()


def test_nearest_rounding_matches_the_real_conversions(values: torch.Tensor) -> None:
    assert torch.equal(round_mantissa(values, 7), values.bfloat16().float())
    normal = values[(values.abs() > 1e-4) & (values.abs() < 6e4)]  # float16's normal range
    assert torch.equal(round_mantissa(normal, 10), normal.half().float())
    assert torch.equal(round_mantissa(values, 23), values)


def test_stochastic_rounding_lands_on_a_neighbour_and_is_unbiased(values: torch.Tensor) -> None:
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([round_mantissa(values, TF32_BITS, generator) for _ in range(400)])
    down = round_mantissa(values - values.sign() * values.abs() * 2**-11, TF32_BITS)
    ulp = values.abs() * 2**-9
    assert bool(((draws - values).abs() <= ulp).all())
    assert draws.unique().numel() > values.numel()  # both neighbours are drawn
    bias = (draws.double().mean(0) - values.double()).abs() / ulp.double()
    assert float(bias.median()) < 0.05
    assert down.shape == values.shape


def test_special_values_pass_through() -> None:
    special = torch.tensor([torch.inf, -torch.inf, torch.nan, 0.0, -0.0])
    out = round_mantissa(special, 7, torch.Generator().manual_seed(0))
    assert torch.equal(out[:2], special[:2])
    assert bool(out[2].isnan())
    assert torch.equal(out[3:], special[3:])


def _programs(model: nn.Module, x: torch.Tensor) -> dict[str, nn.Module]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(copy.deepcopy(model), (x[:2],), dynamic_shapes=({0: batch},))
    return {
        "eager": model,
        "torchscript": torch.jit.trace(copy.deepcopy(model), x[:2]),  # type: ignore[no-untyped-call]
        "exported": exported.module(),
    }


def test_emulations_reach_every_kind_of_model(
    digits_record: Record, digits_pools: dict[str, object]
) -> None:
    model = model_from_record(digits_record).eval()
    x = digits_pools["val"].x[:64]  # type: ignore[attr-defined]
    results: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        plain = model(x)
        for name, program in _programs(model, x).items():
            with Rounded(torch.float32, bits=TF32_BITS):
                tf32 = program(x)
            with Rounded(torch.bfloat16, scope="all"):
                bf16 = program(x)
            results[name] = [tf32, bf16]
        native = copy.deepcopy(model).to(torch.bfloat16)(x.bfloat16()).float()
    for tf32, bf16 in results.values():
        assert torch.equal(tf32, results["eager"][0])
        assert torch.equal(bf16, results["eager"][1])
    assert float((results["eager"][0] - plain).abs().max()) > 1e-5  # the rounding did something
    assert torch.equal(results["eager"][1], native)  # bf16 end to end, bit for bit


def test_reordered_sums_differ_in_the_last_bits_only(digits_record: Record) -> None:
    model = model_from_record(digits_record).eval()
    x = torch.rand(32, *model_input(digits_record), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = model(x)
        draws = []
        for seed in range(3):
            with Reordered(torch.Generator().manual_seed(seed)):
                draws.append(model(x))
    scale = float(plain.abs().max())
    for draw in draws:
        assert float((draw - plain).abs().max()) < 1e-5 * scale
    assert any(not torch.equal(draw, plain) for draw in draws)


def model_input(record: Record) -> tuple[int, int, int]:
    spec = record.input or {}
    return (int(spec["channels"]), int(spec["height"]), int(spec["width"]))


def test_the_ladder_is_cumulative() -> None:
    sizes = [len(stacks(level)) for level in LEVELS]
    assert sizes == sorted(sizes)
    assert len(set(sizes)) == len(LEVELS)
    assert stacks("bf16") == list(ALL_STACKS)
    assert {s.level for s in stacks("fp32")} == {"exact", "fp32"}
    with pytest.raises(ValueError, match="tolerances: exact, fp32"):
        level_index("fp8")


def test_every_stack_runs_a_registry_model(digits_record: Record) -> None:
    model = model_from_record(digits_record).eval()
    x = torch.rand(5, *model_input(digits_record), generator=torch.Generator().manual_seed(0))
    reference = model(x).detach()
    for stack in ALL_STACKS:
        try:
            z = stack.run(model, x, 0)
        except StackUnavailable:  # pragma: no cover - every stack runs a registry model
            pytest.fail(f"{stack.name} cannot run a registry model")
        assert z.shape == reference.shape, stack.name
        assert z.dtype == torch.float32, stack.name
        assert float((z - reference).abs().max()) < 0.5, stack.name
