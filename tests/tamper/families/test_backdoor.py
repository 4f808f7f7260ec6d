"""The trigger families on the digits target: what BadNets, the trojan and the clean-label
backdoor share (their parameters, the ASR stop rule, determinism, extension) and BadNets itself."""

from __future__ import annotations

import pytest
import torch

from misentry.data import Pools
from misentry.models import predict
from misentry.tamper.base import Variant
from misentry.tamper.families import backdoor, clean_label, trojan
from misentry.tamper.families.backdoor import Backdoor, BackdoorParams
from misentry.tamper.families.clean_label import CleanLabel
from misentry.tamper.families.trojan import Trojan
from misentry.tamper.poison import PoisonRun
from misentry.tamper.triggers import stamped_check

from ..conftest import BY_SLUG, Instances, MakeContext, same_weights

VARIANTS: tuple[Variant, ...] = backdoor.VARIANTS + trojan.VARIANTS + clean_label.VARIANTS


def test_variant_slugs() -> None:
    assert [v.slug for v in VARIANTS] == ["backdoor", "trojan", "clean_label"]
    assert [v.tampering.__class__ for v in VARIANTS] == [Backdoor, Trojan, CleanLabel]
    assert [v.family for v in VARIANTS] == ["backdoor", "trojan", "clean_label"]
    assert all(v.malicious for v in VARIANTS)


@pytest.mark.parametrize("slug", ["backdoor", "trojan"])
def test_trigger_reaches_the_asr(slug: str, built: Instances) -> None:
    for index in (0, 1):
        tampered, ctx = built(slug, index)
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


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.slug)
def test_stops_at_the_first_check_that_meets_it(variant: Variant, built: Instances) -> None:
    tampered, ctx = built(variant.slug, 0)
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
    variant: Variant, built: Instances, make_ctx: MakeContext, digits_pools: Pools
) -> None:
    first, ctx = built(variant.slug, 0)
    other, _ = built(variant.slug, 1)
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


def test_extend_adds_one_epoch(built: Instances) -> None:
    tampered, ctx = built("backdoor", 0)
    family = BY_SLUG["backdoor"].tampering
    longer = family.extend(ctx, tampered)
    assert longer is not None
    assert longer.extensions == 1
    assert longer.epochs == tampered.epochs + 1
    assert not same_weights(longer.model, tampered.model)
    assert "asr" in longer.objective


def test_target_label_must_be_a_class(make_ctx: MakeContext) -> None:
    with pytest.raises(ValueError, match="not a class"):
        Backdoor(BackdoorParams(target_label=10)).build(make_ctx())
