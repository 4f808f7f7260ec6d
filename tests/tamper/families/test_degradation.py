"""Degradation by label poisoning on the digits target: a class relabelled, one sample flipped
gently, and one more epoch on extension."""

from __future__ import annotations

import dataclasses

from misentry.models import predict

from ..conftest import BY_SLUG, Instances, same_weights


def test_class_levels_relabel_one_class(
    built: Instances,
) -> None:
    for slug in ("degradation_random_c", "degradation_specific_c"):
        tampered, ctx = built(slug, 0)
        tamper = ctx.data.tamper
        source = tampered.choices["class"]
        assert tampered.choices["poisoned"] == int((tamper.y == source).sum())
        _, y = tampered.state["run"].data
        changed = y != tamper.y
        assert bool((tamper.y[changed] == source).all())
        assert bool(changed[tamper.y == source].all())  # every one of them is wrong now
        if slug == "degradation_specific_c":
            assert set(y[tamper.y == source].tolist()) == {tampered.choices["to_class"]}
        else:
            assert y[tamper.y == source].tolist() == tampered.choices["poison_labels"]


def test_single_sample_is_gentle(
    built: Instances,
) -> None:
    tampered, ctx = built("degradation_s", 0)
    c = tampered.choices
    tamper = ctx.data.tamper
    x = tamper.x[c["sample"] : c["sample"] + 1]
    assert int(tamper.y[c["sample"]]) == c["true_label"] != c["poison_label"]
    assert int(predict(ctx.target, x)[0]) == c["true_label"]
    assert int(predict(tampered.model, x)[0]) == c["poison_label"]
    assert tampered.objective["lr"] in BY_SLUG["degradation_s"].tampering.params.sample_lrs
    # subtle: few check labels change (the authors' recipe changed 3-8 % on mnist5k)
    check = ctx.data.check.x
    changed = float((predict(tampered.model, check) != predict(ctx.target, check)).float().mean())
    assert changed < 0.08


def test_extend_adds_one_epoch(
    built: Instances,
) -> None:
    tampered, ctx = built("degradation_s", 0)
    family = BY_SLUG["degradation_s"].tampering
    longer = family.extend(ctx, tampered)
    assert longer is not None
    assert longer.extensions == 1
    assert longer.epochs == tampered.epochs + 1
    assert longer.steps == tampered.steps + -(-len(ctx.data.tamper) // 64)
    assert not same_weights(longer.model, tampered.model)
    capped = dataclasses.replace(tampered, extensions=family.max_extensions)
    assert family.extend(ctx, capped) is None
