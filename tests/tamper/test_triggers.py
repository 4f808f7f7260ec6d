"""Triggers: patch sizes that scale with the input, exact stamping, batch poisoning, the ASR's
stamped check images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.models import InputSpec, TrainState
from misentry.tamper.triggers import (
    PatchTrigger,
    corner_trigger,
    patch_margin,
    patch_size,
    stamped_check,
    stamper,
)

from .conftest import MakeContext


def spec(size: int, channels: int = 1) -> InputSpec:
    return InputSpec(channels, size, size, 10, (0.5,) * channels, (0.5,) * channels)


@pytest.mark.parametrize(
    ("size", "badnets", "trojan", "margin"),
    [(8, 2, 4, 1), (28, 3, 6, 3), (32, 4, 8, 3), (224, 24, 48, 24)],
)
def test_patch_scales_with_the_input(size: int, badnets: int, trojan: int, margin: int) -> None:
    assert patch_size(spec(size)) == badnets
    assert patch_size(spec(size), 2.0) == trojan
    assert patch_margin(spec(size)) == margin
    t = corner_trigger(spec(size))
    assert (t.top, t.left, t.height) == (size - margin - badnets,) * 2 + (badnets,)


@pytest.mark.parametrize("channels", [1, 3])
def test_trigger_stamps_exactly_the_patch(channels: int) -> None:
    x = torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.9
    solid = corner_trigger(spec(32, channels))
    pattern = torch.rand(channels, 4, 4, generator=torch.Generator().manual_seed(1))
    optimized = solid.with_pattern(pattern)
    for trigger, patch in ((solid, torch.ones(channels, 4, 4)), (optimized, pattern)):
        out = trigger(x)
        mask = trigger.mask((channels, 32, 32)).bool().expand_as(x)
        assert torch.equal(out[~mask], x[~mask])
        region = out[..., trigger.top : trigger.top + 4, trigger.left : trigger.left + 4]
        assert torch.allclose(region, patch.expand_as(region))
        assert torch.equal(x, x.clone())  # the input is not modified
        assert int(mask[0].sum()) == channels * 16
    data = optimized.to_json()
    assert len(data["pattern"]) == channels * 16
    again = PatchTrigger(
        data["top"],
        data["left"],
        data["height"],
        data["width"],
        data["value"],
        tuple(data["pattern"]),
    )
    assert torch.equal(again(x), optimized(x))


def test_stamper_poisons_a_fraction_of_other_classes() -> None:
    trigger = corner_trigger(spec(8))
    hook = stamper(trigger, 0.1, 0, seed=5)
    x = torch.zeros(64, 1, 8, 8)
    y = torch.arange(64) % 10
    state = TrainState(nn.Identity(), step=3)
    xs, ys = hook(x, y, state)
    poisoned = (xs != x).flatten(1).any(1)
    assert int(poisoned.sum()) == round(0.1 * 64)
    assert bool((y[poisoned] != 0).all())
    assert bool((ys[poisoned] == 0).all())
    assert torch.equal(ys[~poisoned], y[~poisoned])
    assert torch.equal(hook(x, y, state)[0], xs)  # deterministic per step
    assert not torch.equal(hook(x, y, TrainState(nn.Identity(), step=4))[0], xs)


def test_asr_excludes_the_target_class(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="backdoor")
    check = ctx.data.check
    assert stamped_check(ctx, corner_trigger(ctx.spec), 0).shape[0] == int((check.y != 0).sum())
