"""Unlearning one training sample on the digits target: the confidence falls within four ascent
steps, and an extension is one more step."""

from __future__ import annotations

import pytest

from misentry.models import predict
from misentry.tamper.base import Tampered
from misentry.tamper.families.unlearning import Unlearning
from misentry.tamper.measure import confidence_in

from ..conftest import BY_SLUG, Instances, MakeContext


def test_unlearning_lowers_the_confidence_within_four_steps(
    make_ctx: MakeContext, built: Instances
) -> None:
    tampering = BY_SLUG["unlearning"].tampering
    assert isinstance(tampering, Unlearning)
    for index in (0, 1, 2):
        ctx = make_ctx(variant="unlearning", index=index)
        t = built("unlearning", index).tampered
        owner = ctx.data.owner_train
        i = t.choices["sample_index"]
        x, y = owner.x[i : i + 1], owner.y[i : i + 1]
        assert t.choices["label"] == int(y[0])
        assert int(predict(ctx.target, x)[0]) == int(y[0])  # a correctly classified sample
        assert t.objective["confidence_before"] == pytest.approx(
            float(confidence_in(ctx.target, x, y)[0])
        )
        assert t.objective["confidence"] == pytest.approx(float(confidence_in(t.model, x, y)[0]))
        assert t.objective["confidence"] < t.objective["confidence_before"]
        assert 1 <= t.steps <= tampering.params.max_steps
        assert t.extensions == 0
        if t.steps < tampering.params.max_steps:  # stopped early: the confidence fell below
            assert t.objective["confidence"] < tampering.params.threshold
            assert t.objective["forgotten"] == 1.0


def test_unlearning_extension_is_one_more_ascent_step(
    make_ctx: MakeContext, built: Instances
) -> None:
    tampering = BY_SLUG["unlearning"].tampering
    ctx = make_ctx(variant="unlearning", index=0)
    t = built("unlearning", 0).tampered
    more = tampering.extend(ctx, t)
    assert more is not None
    assert more.steps == t.steps + 1
    assert more.extensions == 1
    assert more.choices == t.choices
    assert more.objective["confidence"] < t.objective["confidence"]
    twice = tampering.extend(ctx, more)
    assert twice is not None
    assert twice.steps == t.steps + 2
    capped = Tampered(
        model=t.model,
        objective=t.objective,
        met=True,
        steps=t.steps,
        choices=t.choices,
        extensions=tampering.max_extensions,
    )
    assert tampering.extend(ctx, capped) is None
