"""The clean-label backdoor on the digits target: label-consistent, bounded poison."""

from __future__ import annotations

import torch

from misentry.tamper.families.clean_label import CleanLabel

from ..conftest import BY_SLUG, Instances


def test_clean_label_poison_is_label_consistent_and_bounded(built: Instances) -> None:
    tampered, ctx = built("clean_label", 0)
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
