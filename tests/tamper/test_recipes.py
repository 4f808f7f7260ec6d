"""The shared training configurations: a tamperer's runs have no weight decay and a constant
rate, ``"last"`` trains the output layer alone with BatchNorm frozen, an extension is one epoch."""

from __future__ import annotations

import pytest

from misentry.models import last_linear
from misentry.tamper.base import TamperContext
from misentry.tamper.families.backdoor import BackdoorParams
from misentry.tamper.layers import trainable_layers
from misentry.tamper.recipes import (
    Layers,
    adam_config,
    extension_config,
    fine_tuning_config,
    retraining_config,
    staged_sgd_config,
)

from .conftest import MakeContext


@pytest.mark.parametrize("layers", ["last", "all"])
def test_tuning_configs_train_the_layers_asked(bn_ctx: TamperContext, layers: Layers) -> None:
    model = bn_ctx.target
    name, _ = last_linear(model)
    tuning = fine_tuning_config(
        model,
        layers,
        lr=1e-4,
        momentum=0.9,
        batch_size=32,
        epochs=1,
        seed=5,
    )
    retraining = retraining_config(
        model,
        layers,
        lr=1e-3,
        batch_size=32,
        epochs=20,
        seed=5,
        check_every=5,
    )
    for config in (tuning, retraining):
        assert (config.weight_decay, config.schedule) == (0.0, "constant")
        assert config.trainable == ((name,) if layers == "last" else None)
        assert config.freeze_bn == (layers == "last")
    assert (tuning.optimizer, tuning.momentum, tuning.check_every) == ("sgd", 0.9, 0)
    assert (retraining.optimizer, retraining.check_every) == ("adam", 5)


def test_poisoning_configs_draw_their_seed_from_the_instance(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="backdoor")
    p = BackdoorParams()
    adam = adam_config(ctx, p, trainable_layers(ctx.target, "last"))
    assert (adam.optimizer, adam.lr, adam.max_steps, adam.epochs) == ("adam", p.lr, 500, 100)
    assert adam.seed == ctx.sub_seed(2)
    assert adam.freeze_bn
    staged = staged_sgd_config(
        ctx, lr=1e-3, momentum=0.9, batch_size=64, stage_steps=50, check_every=1
    )
    assert (staged.optimizer, staged.epochs, staged.seed) == ("sgd", 50, ctx.sub_seed(2))
    assert staged.freeze_bn
    assert staged.weight_decay == 0.0


def test_an_extension_is_one_epoch_without_checks(make_ctx: MakeContext) -> None:
    ctx = make_ctx(variant="targeted")
    first = staged_sgd_config(
        ctx, lr=1e-3, momentum=0.9, batch_size=64, stage_steps=50, check_every=1
    )
    more = extension_config(first, seed=7)
    assert (more.epochs, more.max_steps, more.check_every, more.seed) == (1, None, 0, 7)
    assert (more.optimizer, more.lr, more.batch_size) == (first.optimizer, first.lr, 64)
