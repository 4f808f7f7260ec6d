"""Poisoned training runs: the poisoning families (degradation, the targeted attack) meet their
objective at the first check that holds, deterministically; the batch mixer and wrong labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.data import Pools
from misentry.models import TrainState, predict
from misentry.tamper.base import Variant
from misentry.tamper.families import degradation, targeted
from misentry.tamper.poison import PoisonRun, mixer, other_label

from .conftest import Instances, MakeContext, same_weights

VARIANTS: tuple[Variant, ...] = degradation.VARIANTS + targeted.VARIANTS
OBJECTIVE = {
    "degradation_random_c": ("poison_follow_rate", 0.9),
    "degradation_specific_c": ("poison_follow_rate", 0.9),
    "degradation_s": ("sample_flipped", 1.0),
    "targeted": ("victims_flipped", 1.0),
}


def all_images(pools: Pools) -> torch.Tensor:
    return torch.cat([pools[name].x for name in pools])


def test_variant_slugs() -> None:
    assert [v.slug for v in VARIANTS] == list(OBJECTIVE)
    assert [v.slug for v in degradation.VARIANTS] == list(OBJECTIVE)[:3]
    assert [v.slug for v in targeted.VARIANTS] == ["targeted"]
    assert all(v.malicious for v in VARIANTS)
    assert {v.family for v in VARIANTS} == {"degradation", "targeted"}


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_objective_met_and_observable(
    variant: Variant,
    built: Instances,
    digits_pools: Pools,
) -> None:
    key, threshold = OBJECTIVE[variant.slug]
    for index in (0, 1):
        tampered, ctx = built(variant.slug, index)
        assert tampered.met
        assert tampered.objective[key] >= threshold
        assert {"check_accuracy", "accuracy_drop"} <= set(tampered.objective)
        assert not tampered.model.training
        x = all_images(digits_pools)
        assert bool((predict(tampered.model, x) != predict(ctx.target, x)).any())
        assert not same_weights(tampered.model, ctx.target)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_stops_at_the_first_check_that_meets_it(variant: Variant, built: Instances) -> None:
    _, threshold = OBJECTIVE[variant.slug]
    tampered, ctx = built(variant.slug, 0)
    run = tampered.state["run"]
    assert isinstance(run, PoisonRun)
    values = [h["objective"] for h in run.history]
    assert values[-1] >= threshold
    assert all(v < threshold for v in values[:-1])
    assert run.history[-1]["step"] == tampered.steps
    p = variant.tampering.params
    cap = (
        p.max_epochs * -(-len(ctx.data.tamper) // p.batch_size)
        if variant.slug.endswith("_c")
        else len(getattr(p, "sample_lrs", getattr(p, "lrs", ()))) * 50
    )
    assert 0 < tampered.steps < cap


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_deterministic_and_instances_differ(
    variant: Variant,
    built: Instances,
    make_ctx: MakeContext,
) -> None:
    again = variant.tampering.build(make_ctx(variant=variant.slug, index=0))
    first, _ = built(variant.slug, 0)
    other, _ = built(variant.slug, 1)
    assert same_weights(again.model, first.model)
    assert again.choices == first.choices
    assert again.steps == first.steps
    assert other.choices != first.choices
    assert not same_weights(other.model, first.model)


def test_mixer_cycles_through_the_poison() -> None:
    xm = torch.arange(5.0).view(5, 1, 1, 1)
    ym = torch.arange(5)
    hook = mixer(xm, ym, 2)
    seen = []
    for step in range(5):
        x, y = hook(torch.zeros(3, 1, 1, 1), torch.full((3,), -1), TrainState(nn.Identity(), step))
        assert x.shape[0] == 5
        assert y[:3].tolist() == [-1, -1, -1]
        seen += y[3:].tolist()
    assert seen == [0, 1, 2, 3, 4] * 2


def test_other_label_is_always_wrong() -> None:
    true = torch.randint(0, 10, (1000,), generator=torch.Generator().manual_seed(0))
    wrong = other_label(true, 10, torch.Generator().manual_seed(1))
    assert bool((wrong != true).all())
    assert set(wrong.tolist()) == set(range(10))
