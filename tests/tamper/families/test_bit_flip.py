"""Tests of the bit-flip family on the digits LeNet-5 target."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from misentry.models import predict
from misentry.tamper.base import TamperContext, Variant
from misentry.tamper.families.bit_flip import (
    QMAX,
    VARIANTS,
    BitFlip,
    bits_to_int8,
    int8_to_bits,
)

from ..conftest import Instances, MakeContext

WEIGHTED = (nn.Conv2d, nn.Linear)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, WEIGHTED)}


def agreement_drop(model: nn.Module, ctx: TamperContext, indices: list[int]) -> float:
    x = ctx.data.tamper.subset(torch.tensor(indices)).x
    return float((predict(model, x) != predict(ctx.target, x)).float().mean())


def test_bits_round_trip_all_int8() -> None:
    q = torch.arange(-128, 128)
    bits = int8_to_bits(q)
    assert bits.shape == (256, 8)
    assert set(bits.flatten().tolist()) == {0, 1}
    assert torch.equal(bits_to_int8(bits), q)
    for value, row in zip(q.tolist(), bits.tolist(), strict=True):
        assert row == [((value & 0xFF) >> b) & 1 for b in range(8)]
    assert torch.equal(bits[:, 7], (q < 0).long())  # bit 7 is the sign bit
    with pytest.raises(ValueError, match="must lie in"):
        int8_to_bits(torch.tensor([128]))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_objective_met_with_few_flips(built: Instances, variant: Variant) -> None:
    assert isinstance(variant.tampering, BitFlip)
    params = variant.tampering.params
    for index in (0, 1, 2):
        t, ctx = built(variant.slug, index)
        flips = t.choices["flips"]
        assert t.met, t.objective
        assert t.objective["batch_accuracy_drop"] >= params.accuracy_drop - 1e-9
        assert t.steps == len(flips) == int(t.objective["flips"])
        assert 1 <= len(flips) <= 10, f"instance {index}: {len(flips)} flips"
        assert len(t.choices["attack_batch_indices"]) == min(
            params.batch_size, len(ctx.data.tamper)
        )
        drop = agreement_drop(t.model, ctx, t.choices["attack_batch_indices"])
        assert drop == pytest.approx(t.objective["batch_accuracy_drop"])
        assert not torch.equal(
            predict(t.model, ctx.data.check.x), predict(ctx.target, ctx.data.check.x)
        )


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_stops_at_first_flip_meeting_objective(built: Instances, variant: Variant) -> None:
    """Replaying every flip but those of the last search iteration misses the objective."""
    t, ctx = built(variant.slug, 0)
    flips = t.choices["flips"]
    last = flips[-1]["iteration"]
    model = ctx.copy_target()
    steps = t.choices["layer_steps"]
    modules = dict(model.named_modules())
    with torch.no_grad():
        for f in flips:
            if f["iteration"] == last:
                continue
            w = modules[f["layer"]].weight.view(-1)
            w[f["index"]] += (f["new"] - f["old"]) * steps[f["layer"]]
    drop = agreement_drop(model, ctx, t.choices["attack_batch_indices"])
    assert isinstance(variant.tampering, BitFlip)
    assert drop < variant.tampering.params.accuracy_drop


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_exactly_flipped_weights_change_by_one_bit(built: Instances, variant: Variant) -> None:
    t, ctx = built(variant.slug, 1)
    flips: list[dict[str, Any]] = t.choices["flips"]
    target_layers = layer_weights(ctx.target)
    model_layers = layer_weights(t.model)
    steps = t.choices["layer_steps"]

    # Every flip: int8 values that differ in exactly the recorded bit (two's complement).
    final: dict[tuple[str, int], int] = {}
    first: dict[tuple[str, int], int] = {}
    for f in flips:
        assert -128 <= f["old"] <= 127
        assert -128 <= f["new"] <= 127
        diff = (f["old"] & 0xFF) ^ (f["new"] & 0xFF)
        assert diff == 1 << f["bit"]
        key = (f["layer"], f["index"])
        first.setdefault(key, f["old"])
        assert final.get(key, f["old"]) == f["old"]  # successive flips of one weight chain up
        final[key] = f["new"]

    for name, w_target in target_layers.items():
        step = float(w_target.abs().max() / QMAX)
        assert steps[name] == step
        flat_t, flat_m = w_target.reshape(-1), model_layers[name].reshape(-1)
        changed = set(torch.nonzero(flat_t != flat_m).flatten().tolist())
        assert changed == {i for (layer, i) in final if layer == name}
        for i in changed:
            q_old = int(torch.round(flat_t[i] / step))
            assert q_old == first[(name, i)]
            expected = (final[(name, i)] - q_old) * step
            assert float(flat_m[i] - flat_t[i]) == pytest.approx(
                expected, rel=1e-5, abs=1e-6 * step
            )
        unchanged = torch.ones_like(flat_t, dtype=torch.bool)
        unchanged[list(changed)] = False
        assert torch.equal(flat_t[unchanged], flat_m[unchanged])  # bit-identical floats

    # Biases and every other tensor are untouched.
    weight_keys = {f"{n}.weight" for n in target_layers}
    target_state, model_state = ctx.target.state_dict(), t.model.state_dict()
    for name, value in target_state.items():
        if name not in weight_keys:
            assert torch.equal(value, model_state[name]), name


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_target_untouched_and_deterministic(make_ctx: MakeContext, variant: Variant) -> None:
    ctx = make_ctx(variant=variant.slug, index=3)
    before = weights(ctx.target)
    a = variant.tampering.build(ctx)
    b = variant.tampering.build(make_ctx(variant=variant.slug, index=3))
    after = weights(ctx.target)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert a.choices == b.choices
    wa, wb = weights(a.model), weights(b.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], before[k]) for k in wa)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_different_index_different_attack_batch(built: Instances, variant: Variant) -> None:
    t0, _ = built(variant.slug, 0)
    t1, _ = built(variant.slug, 1)
    assert t0.choices["attack_batch_indices"] != t1.choices["attack_batch_indices"]
    w0, w1 = weights(t0.model), weights(t1.model)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_extend_adds_one_iteration(built: Instances, variant: Variant) -> None:
    t, ctx = built(variant.slug, 2)
    before = weights(t.model)
    e = variant.tampering.extend(ctx, t)
    assert e is not None
    assert e.extensions == 1
    assert e.met
    new = e.choices["flips"][len(t.choices["flips"]) :]
    assert e.choices["flips"][: len(t.choices["flips"])] == t.choices["flips"]
    assert new
    assert all(f["iteration"] == t.choices["flips"][-1]["iteration"] + 1 for f in new)
    assert e.steps == t.steps + len(new)
    assert all(torch.equal(before[k], v) for k, v in weights(t.model).items())  # t untouched
    assert any(not torch.equal(before[k], v) for k, v in weights(e.model).items())
    assert variant.tampering.max_extensions >= 1
