"""Transfer learning on the digits target: a new head reaches the accuracy on inverted images."""

from __future__ import annotations

import pytest
import torch

from misentry.models import last_linear, predict
from misentry.tamper.families.transfer_learning import TransferLearning, invert

from ..conftest import BY_SLUG, Instances, MakeContext


def test_transfer_learning_has_a_new_head_and_reaches_the_shifted_accuracy(
    make_ctx: MakeContext, built: Instances
) -> None:
    tampering = BY_SLUG["transfer_learning"].tampering
    assert isinstance(tampering, TransferLearning)
    ctx = make_ctx(variant="transfer_learning")
    t = built("transfer_learning", 0).tampered
    name, head = last_linear(t.model)
    target_name, target_head = last_linear(ctx.target)
    assert name == target_name == t.choices["head"]
    assert t.architecture is None
    assert head.weight.shape == target_head.weight.shape
    assert not torch.equal(head.weight, target_head.weight)
    check = ctx.data.check
    shifted = float((predict(t.model, invert(check.x)) == check.y).float().mean())
    target_shifted = float((predict(ctx.target, invert(check.x)) == check.y).float().mean())
    assert t.objective["shifted_accuracy"] == pytest.approx(shifted)
    assert t.objective["target_shifted_accuracy"] == pytest.approx(target_shifted)
    goal = t.objective["target_check_accuracy"] - tampering.params.tolerance
    assert shifted >= goal - 1e-6 > target_shifted
    assert t.steps < tampering.params.max_epochs * len(ctx.data.tamper) // 32
