"""TrojanNN on the digits target: the trigger excites its neuron, and only the layers after it
are retrained."""

from __future__ import annotations

import torch
from torch import nn

from misentry.tamper.families.trojan import Trojan
from misentry.tamper.layers import layer_input
from misentry.tamper.triggers import patch_size

from ..conftest import BY_SLUG, Instances


def test_trojan_excites_its_neuron(built: Instances) -> None:
    tampered, ctx = built("trojan", 0)
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
