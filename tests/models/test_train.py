"""The one training loop: determinism, which parameters train, BatchNorm and train/eval modes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, Pools
from misentry.models import (
    ARCHITECTURES,
    TrainConfig,
    TrainHooks,
    TrainState,
    evaluate,
    fit,
    logits,
    predict,
)
from models.trainkit import (
    SYNTH,
    assert_same,
    build_or_skip,
    changed,
    digits_model,
    modes,
    snapshot,
    synthetic,
    tiny_model,
)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_fit_is_deterministic_and_seeded(arch: str) -> None:
    model = build_or_skip(arch, SYNTH)
    data = synthetic(16)
    config = TrainConfig(epochs=1, batch_size=8, lr=0.01, augment_shift=2, augment_flip=True)
    initial = snapshot(model)
    runs = []
    for seed in (0, 0, 1):
        trained = copy.deepcopy(model)
        result = fit(trained, data, TrainConfig(**{**config.to_json(), "seed": seed}))
        assert result.steps == 2
        runs.append(snapshot(trained))
    assert_same(runs[0], runs[1])
    assert changed(initial, runs[0]), "training changed nothing"
    assert changed(runs[0], runs[2]), "seed 0 and seed 1 gave identical weights"
    assert_same(initial, snapshot(model))  # fit trains the model it is given, not a copy


def test_fit_leaves_global_rng_alone(small: ImageSet) -> None:
    torch.manual_seed(99)
    reference = torch.rand(6)
    torch.manual_seed(99)
    before = torch.rand(3)
    fit(digits_model(), small, TrainConfig(epochs=1, batch_size=64, augment_shift=1))
    assert torch.equal(torch.cat([before, torch.rand(3)]), reference)


def test_fit_learns_digits(digits_pools: Pools) -> None:
    model = digits_model()
    before = evaluate(model, digits_pools["test"]).accuracy
    result = fit(model, digits_pools["owner_train"], TrainConfig(epochs=4, batch_size=16))
    after = evaluate(model, digits_pools["test"])
    assert before < 0.2, f"an untrained model is near chance, got {before:.3f}"
    assert after.accuracy > 0.85, f"test accuracy {after.accuracy:.3f} after {result.steps} steps"
    assert after.n == len(digits_pools["test"])
    assert result.epochs == 4
    assert result.steps == 4 * math.ceil(len(digits_pools["owner_train"]) / 16)
    assert not result.stopped_early
    assert math.isfinite(result.final_loss)


def test_trainable_trains_only_the_named_layer(small: ImageSet) -> None:
    model = digits_model()
    model.fc1.bias.requires_grad_(False)  # an unusual flag that must survive fit
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before = snapshot(model)
    fit(model, small, TrainConfig(epochs=1, batch_size=32, trainable=("fc3",)))
    after = snapshot(model)
    assert changed(before, after) == {"fc3.weight", "fc3.bias"}
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags


def test_trainable_prefix_selects_a_block(small: ImageSet) -> None:
    model = digits_model()
    before = snapshot(model)
    fit(model, small, TrainConfig(epochs=1, batch_size=32, trainable=("features", "fc1.bias")))
    assert changed(before, snapshot(model)) == {
        "features.0.weight",
        "features.0.bias",
        "features.3.weight",
        "features.3.bias",
        "fc1.bias",
    }


@pytest.mark.parametrize("names", [("fc4",), ("fc3", "fc"), ("fc3.weigh",)])
def test_unknown_trainable_name_raises(small: ImageSet, names: tuple[str, ...]) -> None:
    model = digits_model()
    before = snapshot(model)
    bad = names[-1]
    with pytest.raises(ValueError, match=rf"\['{bad}'\] match no parameter"):
        fit(model, small, TrainConfig(epochs=1, trainable=names))
    assert_same(before, snapshot(model))
    assert all(p.requires_grad for p in model.parameters())


def bn_buffers(model: nn.Module) -> list[str]:
    return [
        f"{name}.{buf}"
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in ("running_mean", "running_var", "num_batches_tracked")
    ]


@pytest.mark.parametrize("arch", ["vgg_small", "resnet20"])
def test_freeze_bn_keeps_running_statistics(small: ImageSet, arch: str) -> None:
    model = digits_model(arch)
    buffers = bn_buffers(model)
    assert buffers
    before = snapshot(model)

    frozen = copy.deepcopy(model)
    fit(frozen, small, TrainConfig(epochs=1, batch_size=64, freeze_bn=True))
    assert_same(before, snapshot(frozen), only=buffers)
    assert changed(before, snapshot(frozen)), "BatchNorm frozen, but the weights still train"

    moving = copy.deepcopy(model)
    fit(moving, small, TrainConfig(epochs=1, batch_size=64, freeze_bn=False))
    moved = changed(before, snapshot(moving))
    assert all(name in moved for name in buffers)
    tracked = [moving.state_dict()[b] for b in buffers if b.endswith("num_batches_tracked")]
    assert all(int(t) == 2 for t in tracked)


def test_freeze_bn_puts_only_batchnorm_in_eval_mode(small: ImageSet) -> None:
    model = digits_model("vgg_small")
    seen: list[tuple[bool, bool]] = []

    def look(m: nn.Module, _state: TrainState) -> None:
        bns = [x.training for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
        others = [x.training for x in m.modules() if not isinstance(x, nn.BatchNorm2d)]
        seen.append((any(bns), all(others)))

    fit(
        model,
        small,
        TrainConfig(epochs=1, batch_size=64, freeze_bn=True),
        TrainHooks(after_step=look),
    )
    assert seen == [(False, True), (False, True)]


def _set_train(model: nn.Module) -> None:
    model.train()


def _set_eval(model: nn.Module) -> None:
    model.eval()


def _set_mixed(model: nn.Module) -> None:
    model.train()
    model.features[1].eval()  # a BatchNorm layer someone froze by hand


@pytest.mark.parametrize(
    "setter", [_set_train, _set_eval, _set_mixed], ids=["train", "eval", "mixed"]
)
def test_modes_are_restored(small: ImageSet, setter: Callable[[nn.Module], None]) -> None:
    model = digits_model("vgg_small")
    setter(model)
    expected = modes(model)
    during: list[bool] = []
    hooks = TrainHooks(after_backward=lambda m, _s: during.append(m.training))
    fit(model, small, TrainConfig(epochs=1, batch_size=64), hooks)
    assert during == [True, True], "fit trains in train mode"
    assert modes(model) == expected, "fit restores every module's mode"
    evaluate(model, small)
    assert modes(model) == expected, "evaluate restores every module's mode"
    predict(model, small.x)
    assert modes(model) == expected, "predict restores every module's mode"
    logits(model, small.x)
    assert modes(model) == expected


def test_fit_rejects_empty_or_mismatched_data() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        fit(
            tiny_model(), (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)), TrainConfig()
        )
    with pytest.raises(ValueError, match="one label per image"):
        fit(
            tiny_model(), (torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long)), TrainConfig()
        )
