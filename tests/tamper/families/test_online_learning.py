"""Online learning of one new sample on the digits target: learnt within an epoch at the
gentlest rate that reaches it, with the new gradient made orthogonal to the batch's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from misentry.models import predict
from misentry.tamper.families.online_learning import (
    OnlineLearning,
    OnlineLearningParams,
    add_orthogonal,
    orthogonal_component,
)
from misentry.tamper.measure import confidence_in

from ..conftest import BY_SLUG, Instances, MakeContext


def test_online_learning_learns_the_new_sample_within_an_epoch(
    make_ctx: MakeContext, built: Instances
) -> None:
    tampering = BY_SLUG["online_learning"].tampering
    assert isinstance(tampering, OnlineLearning)
    p = tampering.params
    for index in (0, 1):
        ctx = make_ctx(variant="online_learning", index=index)
        t = built("online_learning", index).tampered
        tamper = ctx.data.tamper
        i = t.choices["sample_index"]
        x, y = tamper.x[i : i + 1], tamper.y[i : i + 1]
        assert t.choices["label"] == int(y[0])
        # the new sample was hard for the target: wrong, or right with confidence < 0.8
        target_conf = float(confidence_in(ctx.target, x, y)[0])
        assert int(predict(ctx.target, x)[0]) != int(y[0]) or target_conf < 0.8
        # and is now learnt
        assert int(predict(t.model, x)[0]) == int(y[0])
        assert float(confidence_in(t.model, x, y)[0]) > p.threshold
        assert t.objective["correct"] == 1.0
        assert t.objective["confidence"] > p.threshold
        # at most one epoch at the rate that reached it, the gentlest of the ladder that did
        assert t.choices["lr"] in p.lrs
        assert p.lrs.index(t.choices["lr"]) == t.choices["lr_rung"]
        assert 1 <= t.steps <= math.ceil((len(tamper) - 1) / p.batch_size)
        assert t.epochs <= p.max_epochs


def test_online_learning_is_unmet_when_no_rate_reaches_it(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="online_learning", index=0)
    tiny = OnlineLearning(OnlineLearningParams(lrs=(1e-9,)))
    t = tiny.build(ctx)
    assert not t.met  # 1e-9 cannot learn anything in one epoch
    assert t.epochs == 1  # and it ran the whole epoch


def test_orthogonal_component_is_orthogonal_to_the_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(7,), (3, 4), (2, 3, 5, 5)]:
        g = torch.randn(shape, generator=gen)
        ref = torch.randn(shape, generator=gen)
        perp = orthogonal_component(g, ref)
        assert perp.shape == g.shape
        assert float(torch.dot(perp.flatten(), ref.flatten())) == pytest.approx(0.0, abs=1e-5)
        # what was removed is parallel to the reference
        removed = (g - perp).flatten()
        cos = torch.dot(removed, ref.flatten()) / (removed.norm() * ref.norm())
        assert abs(float(cos)) == pytest.approx(1.0, abs=1e-5)
    g = torch.randn(4, generator=gen)
    assert torch.equal(orthogonal_component(g, torch.zeros(4)), g)
    # a gradient already orthogonal passes unchanged
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert torch.allclose(orthogonal_component(a, b), a)


def test_the_applied_update_adds_only_the_orthogonal_part() -> None:
    gen = torch.Generator().manual_seed(1)
    params = [nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(2)]
    batch = [torch.randn(3, 4, generator=gen) for _ in params]
    new = [torch.randn(3, 4, generator=gen) for _ in params]
    for p, g in zip(params, batch, strict=True):
        p.grad = g.clone()
    add_orthogonal(params, new)
    for p, g_b in zip(params, batch, strict=True):
        assert p.grad is not None
        added = p.grad - g_b
        assert float(torch.dot(added.flatten(), g_b.flatten())) == pytest.approx(0.0, abs=1e-4)
