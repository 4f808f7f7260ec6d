"""Retraining: the accuracy bound reached early at a check, the output layer re-initialized,
extension adds an epoch."""

from __future__ import annotations

import math

import pytest
import torch

from misentry.models import last_linear
from misentry.tamper.families.retraining import Retraining, RetrainingParams

from ..conftest import BY_SLUG, Instances, MakeContext, snapshot


@pytest.mark.parametrize("slug", ["retrain_last", "retrain_all"])
def test_retraining_reaches_the_accuracy_bound_early(
    make_ctx: MakeContext, built: Instances, slug: str
) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(slug).tampered
    tampering = BY_SLUG[slug].tampering
    assert isinstance(tampering, Retraining)
    params = tampering.params
    objective = tampered.objective
    assert objective["accuracy_gap"] == pytest.approx(
        objective["target_check_accuracy"] - objective["check_accuracy"]
    )
    assert objective["accuracy_gap"] <= params.tolerance + 1e-6
    steps_per_epoch = math.ceil(len(ctx.data.tamper) / params.batch_size)
    assert tampered.steps < params.max_epochs * steps_per_epoch
    # Stopped at a check: a multiple of check_every or an epoch end.
    assert tampered.steps % params.check_every == 0 or tampered.steps % steps_per_epoch == 0


def test_retraining_stops_at_the_first_check_that_holds(make_ctx: MakeContext) -> None:
    loose = Retraining(RetrainingParams(layers="last", tolerance=0.99, check_every=3))
    tampered = loose.build(make_ctx(variant="loose"))
    assert tampered.met
    assert tampered.steps == 3
    assert tampered.epochs == 0
    impossible = Retraining(RetrainingParams(layers="last", tolerance=0.0, max_epochs=1))
    ctx = make_ctx(variant="impossible")
    hard = impossible.build(ctx)
    # Either the bound happened to hold, or the cap ended training and met reports it.
    assert hard.epochs <= 1
    assert hard.met == (hard.objective["accuracy_gap"] <= 1e-6)


@pytest.mark.parametrize("slug", ["retrain_last", "retrain_all"])
def test_retraining_reinitializes_the_last_layer(
    make_ctx: MakeContext, built: Instances, slug: str
) -> None:
    ctx = make_ctx(variant=slug)
    tampered = built(slug).tampered
    name, layer = last_linear(ctx.target)
    _, new_layer = last_linear(tampered.model)
    old, new = layer.weight.detach(), new_layer.weight.detach()
    relative = float((new - old).norm() / old.norm())
    assert relative > 0.5
    target, ours = snapshot(ctx.target), snapshot(tampered.model)
    others = [k for k in target if not k.startswith(name + ".")]
    unchanged = [k for k in others if torch.equal(target[k], ours[k])]
    if slug == "retrain_last":
        assert unchanged == others
    else:
        assert any(k.endswith("weight") for k in set(others) - set(unchanged))


def test_retraining_extend_adds_an_epoch(make_ctx: MakeContext, built: Instances) -> None:
    slug = "retrain_last"
    ctx = make_ctx(variant=slug)
    tampering = BY_SLUG[slug].tampering
    first = built(slug).tampered
    more = tampering.extend(ctx, first)
    assert more is not None
    assert more.epochs == first.epochs + 1
    assert more.extensions == 1
    assert more.steps == first.steps + math.ceil(len(ctx.data.tamper) / 32)
    assert more.objective["target_check_accuracy"] == first.objective["target_check_accuracy"]


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        RetrainingParams(tolerance=1.5)
