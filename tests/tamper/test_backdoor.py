"""Trigger backdoors (BadNets, TrojanNN, clean-label) on the digits target."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import Pools, get_dataset
from misentry.models import InputSpec, TrainState, input_spec, predict
from misentry.tamper.base import TamperContext, Tampered, Variant
from misentry.tamper.families.backdoor import (
    VARIANTS,
    BackdoorParams,
    CleanLabel,
    PatchTrigger,
    Trojan,
    corner_trigger,
    layer_input,
    patch_margin,
    patch_size,
    stamped_check,
    stamper,
)
from misentry.tamper.families.poisoning import PoisonRun
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed

from .conftest import MakeContext, same_weights

BY_SLUG = {v.slug: v for v in VARIANTS}
Built = dict[tuple[str, int], tuple[Tampered, TamperContext]]


def spec(size: int, channels: int = 1) -> InputSpec:
    return InputSpec(channels, size, size, 10, (0.5,) * channels, (0.5,) * channels)


@pytest.fixture(scope="module")
def built(digits_target: tuple[nn.Module, Any], digits_pools: Pools) -> Built:
    """Instances 0 and 1 of every variant, built once for the module."""
    model, record = digits_target
    out = {}
    for variant in VARIANTS:
        for index in (0, 1):
            ctx = TamperContext(
                target=model,
                target_record=record,
                data=DataAccess(digits_pools, Namespace.BENCH),
                seed=instance_seed(Namespace.BENCH, variant.slug, index),
                dataset=get_dataset("digits"),
                spec=input_spec("digits"),
            )
            before = {k: v.clone() for k, v in model.state_dict().items()}
            tampered = variant.tampering.build(ctx)
            after = model.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "target modified"
            out[variant.slug, index] = (tampered, ctx)
    return out


def test_variant_slugs() -> None:
    assert [v.slug for v in VARIANTS] == ["backdoor", "trojan", "clean_label"]
    assert [v.family for v in VARIANTS] == ["backdoor", "trojan", "clean_label"]
    assert all(v.malicious for v in VARIANTS)


# ---- triggers ---------------------------------------------------------------------------------


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


# ---- recipes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["backdoor", "trojan"])
def test_trigger_reaches_the_asr(slug: str, built: Built) -> None:
    for index in (0, 1):
        tampered, ctx = built[slug, index]
        assert tampered.met
        assert tampered.objective["asr"] >= 0.9
        trigger = tampered.state["trigger"]
        x = stamped_check(ctx, trigger, 0)
        assert float((predict(tampered.model, x) == 0).float().mean()) >= 0.9
        before = float((predict(ctx.target, x) == 0).float().mean())
        # the white BadNets square means nothing to the target; the trojan pattern, a quarter of
        # an 8x8 digit, already pushes it part of the way
        assert before < (0.2 if slug == "backdoor" else 0.75)
        assert tampered.choices["target_label"] == 0
        assert tampered.choices["trigger"] == trigger.to_json()


def test_asr_excludes_the_target_class(built: Built) -> None:
    _, ctx = built["backdoor", 0]
    check = ctx.data.check
    assert stamped_check(ctx, corner_trigger(ctx.spec), 0).shape[0] == int((check.y != 0).sum())


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_stops_at_the_first_check_that_meets_it(variant: Variant, built: Built) -> None:
    tampered, ctx = built[variant.slug, 0]
    run = tampered.state["run"]
    assert isinstance(run, PoisonRun)
    values = [h["objective"] for h in run.history]
    p = variant.tampering.params
    assert isinstance(p, BackdoorParams)
    steps_per_epoch = -(-len(ctx.data.tamper) // p.batch_size)
    for h in run.history[:-1]:  # every check: every 10 steps and at epoch ends
        assert h["step"] % p.check_every == 0 or h["step"] % steps_per_epoch == 0
    if tampered.met:
        assert values[-1] >= p.asr
        assert all(v < p.asr for v in values[:-1])
        assert run.history[-1]["step"] == tampered.steps < p.max_steps
    else:
        assert tampered.steps == p.max_steps
        assert all(v < p.asr for v in values)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_changed_observable_deterministic(
    variant: Variant, built: Built, make_ctx: MakeContext, digits_pools: Pools
) -> None:
    first, ctx = built[variant.slug, 0]
    other, _ = built[variant.slug, 1]
    assert not first.model.training
    assert not same_weights(first.model, ctx.target)
    x = torch.cat([digits_pools[name].x for name in digits_pools])
    assert bool((predict(first.model, x) != predict(ctx.target, x)).any())
    again = variant.tampering.build(make_ctx(variant=variant.slug, index=0))
    assert same_weights(again.model, first.model)
    assert again.choices == first.choices
    assert again.objective == first.objective
    assert other.choices != first.choices
    assert not same_weights(other.model, first.model)


def test_trojan_excites_its_neuron(built: Built) -> None:
    tampered, ctx = built["trojan", 0]
    family = BY_SLUG["trojan"].tampering
    assert isinstance(family, Trojan)
    c = tampered.choices
    layer = dict(ctx.target.named_modules())[c["layer"]]
    assert isinstance(layer, nn.Linear)
    assert c["neuron"] in c["candidates"]
    trigger = tampered.state["trigger"]
    assert trigger.pattern is not None
    assert trigger.height == patch_size(ctx.spec, 2.0)
    clean = ctx.data.check.x
    with torch.no_grad():
        before = layer_input(ctx.target, layer, clean)[:, c["neuron"]]
        after = layer_input(ctx.target, layer, trigger(clean))[:, c["neuron"]]
    assert float(after.mean()) > 2.0 * float(before.mean()) + 1.0
    assert float(after.mean()) > float(before.quantile(0.99))
    assert (
        tampered.objective["neuron_activation"]
        > 2.0 * tampered.objective["neuron_clean_activation"]
    )
    # only the layers after the neuron were retrained
    retrained = tuple(c["retrained"])
    assert c["layer"] in retrained
    target_state = ctx.target.state_dict()
    moved = {
        name
        for name, value in tampered.model.state_dict().items()
        if not torch.equal(value, target_state[name])
    }
    assert moved
    assert all(name.startswith(retrained) for name in moved)


def test_clean_label_poison_is_label_consistent_and_bounded(built: Built) -> None:
    tampered, ctx = built["clean_label", 0]
    family = BY_SLUG["clean_label"].tampering
    assert isinstance(family, CleanLabel)
    eps = family.params.eps
    s = tampered.state
    tamper = ctx.data.tamper
    poisoned = s["poisoned"]
    assert tampered.choices["poisoned"] == poisoned.tolist()
    assert tampered.objective["poisoned"] == len(poisoned) == int((tamper.y == 0).sum())
    # labels kept: they are all target-class samples with their true label
    assert torch.equal(s["poison_y"], tamper.y[poisoned])
    assert bool((s["poison_y"] == 0).all())
    # within eps of the originals before the trigger, and in [0, 1]
    delta = s["adversarial"] - tamper.x[poisoned]
    assert float(delta.abs().max()) <= eps + 1e-6
    assert float(s["adversarial"].min()) >= 0
    assert float(s["adversarial"].max()) <= 1
    assert float(delta.abs().max()) > eps / 2  # the perturbation is real
    assert torch.equal(s["poison_x"], s["trigger"](s["adversarial"]))
    # it makes them hard for the target
    assert tampered.objective["perturbation_fooled"] > 0.5
    # the training data carries them in place of the originals, with their labels
    x, y = tampered.state["run"].data
    assert torch.equal(y, tamper.y)
    assert torch.equal(x[poisoned], s["poison_x"])
    assert {"asr", "check_accuracy", "accuracy_drop"} <= set(tampered.objective)


def test_extend_adds_one_epoch(built: Built) -> None:
    tampered, ctx = built["backdoor", 0]
    family = BY_SLUG["backdoor"].tampering
    longer = family.extend(ctx, tampered)
    assert longer is not None
    assert longer.extensions == 1
    assert longer.epochs == tampered.epochs + 1
    assert not same_weights(longer.model, tampered.model)
    assert "asr" in longer.objective


def test_target_label_must_be_a_class(make_ctx: MakeContext) -> None:
    from misentry.tamper.families.backdoor import Backdoor

    with pytest.raises(ValueError, match="not a class"):
        Backdoor(BackdoorParams(target_label=10)).build(make_ctx())
