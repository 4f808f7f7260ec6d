"""The one training loop: determinism, what trains, the hooks, augmentation and evaluation."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet, Pools, get_dataset
from misentry.models import (
    ARCHITECTURES,
    InputSpec,
    TrainConfig,
    TrainHooks,
    TrainState,
    build_model,
    evaluate,
    fit,
    input_spec,
    logits,
    predict,
)
from misentry.models.train import augment

EXTRA_MODULES = {"vision": "torchvision"}
SYNTH = InputSpec(3, 32, 32, 5, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def pools() -> Pools:
    return get_dataset("digits").pools(0)


@pytest.fixture(scope="module")
def small(pools: Pools) -> ImageSet:
    """128 digits from owner_train: a few steps of training on them take milliseconds."""
    return pools["owner_train"].subset(torch.arange(128))


def digits_model(arch: str = "lenet5", seed: int = 0) -> nn.Module:
    return build_model(arch, input_spec("digits"), seed)


def synthetic(n: int, spec: InputSpec = SYNTH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *spec.shape, generator=gen), torch.randint(
        0, spec.num_classes, (n,), generator=gen
    )


def tiny_model(in_features: int = 4, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))


def snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: State, b: State, only: list[str] | None = None) -> None:
    assert list(a) == list(b)
    for name in only if only is not None else a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), f"{name} differs"


def changed(a: State, b: State) -> set[str]:
    return {name for name in a if not torch.equal(a[name], b[name])}


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def build_or_skip(arch: str, spec: InputSpec) -> nn.Module:
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    return build_model(arch, spec, seed=0)


# --- determinism ------------------------------------------------------------------------------


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


def test_fit_learns_digits(pools: Pools) -> None:
    model = digits_model()
    before = evaluate(model, pools["test"]).accuracy
    result = fit(model, pools["owner_train"], TrainConfig(epochs=4, batch_size=16))
    after = evaluate(model, pools["test"])
    assert before < 0.2, f"an untrained model is near chance, got {before:.3f}"
    assert after.accuracy > 0.85, f"test accuracy {after.accuracy:.3f} after {result.steps} steps"
    assert after.n == len(pools["test"])
    assert result.epochs == 4
    assert result.steps == 4 * math.ceil(len(pools["owner_train"]) / 16)
    assert not result.stopped_early
    assert math.isfinite(result.final_loss)


# --- which parameters train -------------------------------------------------------------------


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


# --- modes ------------------------------------------------------------------------------------


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


def test_predict_and_logits_use_eval_mode(small: ImageSet) -> None:
    model = digits_model("gtsrb_cnn")  # dropout and BatchNorm: train mode would be random
    model.train()
    a, b = logits(model, small.x, batch_size=50), logits(model, small.x)
    assert torch.equal(a, b)
    assert torch.equal(predict(model, small.x, batch_size=7), a.argmax(1))
    assert not a.requires_grad


# --- step counting, checks and stopping -------------------------------------------------------


def test_max_steps_is_exact() -> None:
    steps: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(100, InputSpec(1, 2, 2, 3, (0.5,), (0.5,))),
        TrainConfig(epochs=5, batch_size=10, max_steps=13),
        TrainHooks(on_step=lambda s: steps.append(s.step)),
    )
    assert result.steps == 13
    assert steps == list(range(1, 14))
    assert result.epochs == 1
    assert not result.stopped_early


def test_max_steps_above_the_epochs_is_capped() -> None:
    totals: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(95, InputSpec(1, 2, 2, 3, (0.5,), (0.5,))),
        TrainConfig(epochs=3, batch_size=10, max_steps=1000),
        TrainHooks(on_step=lambda s: totals.append(s.total_steps)),
    )
    assert result.steps == 30
    assert result.epochs == 3
    assert set(totals) == {30}


def counting_hooks(history_steps: list[int], **kwargs: object) -> TrainHooks:
    def evaluate_hook(model: nn.Module, state: TrainState) -> dict[str, float]:
        assert not model.training, "the evaluate hook runs in eval mode"
        assert not torch.is_grad_enabled(), "the evaluate hook runs without gradients"
        history_steps.append(state.step)
        return {"calls": float(len(history_steps))}

    return TrainHooks(evaluate=evaluate_hook, **kwargs)  # type: ignore[arg-type]


TINY = InputSpec(1, 2, 2, 3, (0.5,), (0.5,))


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_check_every_k_steps_and_at_epoch_ends(k: int) -> None:
    calls: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(100, TINY),
        TrainConfig(epochs=2, batch_size=10, check_every=k),
        counting_hooks(calls),
    )
    expected = sorted(set(range(k, 21, k)) | {10, 20})
    assert calls == expected, "every k steps and each epoch end, never twice at one step"
    assert [h["step"] for h in result.history] == [float(s) for s in expected]
    assert [h["calls"] for h in result.history] == [float(i + 1) for i in range(len(expected))]


def test_check_only_at_epoch_ends_when_check_every_is_0() -> None:
    calls: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(95, TINY),
        TrainConfig(epochs=3, batch_size=10),
        counting_hooks(calls),
    )
    assert calls == [10, 20, 30]
    assert [h["step"] for h in result.history] == [10.0, 20.0, 30.0]


def test_stop_when_stops_at_the_first_check_that_holds() -> None:
    calls: list[int] = []
    steps: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(100, TINY),
        TrainConfig(epochs=5, batch_size=10, check_every=3),
        counting_hooks(calls, stop_when=lambda s: s.step >= 7, on_step=lambda s: steps.append(1)),
    )
    assert result.steps == 9
    assert len(steps) == 9
    assert result.stopped_early
    assert calls == [3, 6, 9]


def test_stop_when_at_an_epoch_end() -> None:
    result = fit(
        tiny_model(),
        synthetic(100, TINY),
        TrainConfig(epochs=5, batch_size=10),
        TrainHooks(stop_when=lambda s: s.epoch >= 2),
    )
    assert (result.steps, result.epochs, result.stopped_early) == (20, 2, True)
    assert result.history == [], "no evaluate hook, no history"


def test_stop_when_sees_the_latest_metrics() -> None:
    seen: list[dict[str, float]] = []

    def stop(state: TrainState) -> bool:
        seen.append(dict(state.metrics))
        return state.metrics["calls"] >= 2

    calls: list[int] = []
    result = fit(
        tiny_model(),
        synthetic(100, TINY),
        TrainConfig(epochs=5, batch_size=10, check_every=4),
        counting_hooks(calls, stop_when=stop),
    )
    assert seen == [{"calls": 1.0}, {"calls": 2.0}]
    assert result.steps == 8


# --- hooks that change training ---------------------------------------------------------------


def test_after_backward_can_freeze_a_layer_through_its_gradients(small: ImageSet) -> None:
    model = digits_model()
    before = snapshot(model)

    def zero_fc2(m: nn.Module, _state: TrainState) -> None:
        for p in m.fc2.parameters():
            assert p.grad is not None
            p.grad.zero_()

    config = TrainConfig(epochs=2, batch_size=32, weight_decay=0.0)
    fit(model, small, config, TrainHooks(after_backward=zero_fc2))
    moved = changed(before, snapshot(model))
    assert "fc2.weight" not in moved
    assert "fc2.bias" not in moved
    assert {"fc1.weight", "fc3.weight", "features.0.weight"} <= moved


def test_after_step_can_reapply_a_mask(small: ImageSet) -> None:
    model = digits_model()
    mask = torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    mask = mask.to(torch.float32)
    before = model.fc1.weight.detach().clone()
    calls: list[int] = []

    def reapply(m: nn.Module, state: TrainState) -> None:
        calls.append(state.step)
        with torch.no_grad():
            m.fc1.weight.mul_(mask)

    result = fit(model, small, TrainConfig(epochs=2, batch_size=32), TrainHooks(after_step=reapply))
    weight = model.fc1.weight.detach()
    assert len(calls) == result.steps == 8
    assert torch.equal(weight[mask == 0], torch.zeros(int((mask == 0).sum())))
    kept = mask == 1
    assert (weight[kept] != before[kept]).float().mean() > 0.9, "unmasked weights still train"


def test_transform_batch_is_used(pools: Pools, small: ImageSet) -> None:
    model = digits_model()
    sizes: list[int] = []

    def relabel(
        x: torch.Tensor, y: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(x.shape[0])
        return x, torch.full_like(y, 3)

    fit(model, small, TrainConfig(epochs=3, batch_size=32), TrainHooks(transform_batch=relabel))
    assert sizes == [32] * 12
    share = float((predict(model, pools["test"].x) == 3).float().mean())
    assert share > 0.95, f"trained on label 3 only, yet predicts 3 on {share:.2%} of the test pool"


def test_custom_loss_gradient_ascent_raises_the_training_loss(small: ImageSet) -> None:
    model = digits_model()
    fit(model, small, TrainConfig(epochs=10, batch_size=16))  # start from a model that learnt
    before = evaluate(model, small)

    def ascent(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(m(x), y)

    result = fit(model, small, TrainConfig(epochs=2, batch_size=32), TrainHooks(loss=ascent))
    after = evaluate(model, small)
    assert before.accuracy > 0.5, "the model learnt before the ascent"
    assert after.loss > before.loss + 1, f"cross-entropy {before.loss:.3f} → {after.loss:.3f}"
    assert after.accuracy < before.accuracy
    assert result.final_loss < 0, "final_loss is the custom loss, here negative"


# --- augmentation -----------------------------------------------------------------------------


def translate(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` moved down by dy and right by dx pixels, zeros where nothing moved in."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
        ..., max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def test_translate_helper() -> None:
    img = torch.arange(1.0, 10.0).view(1, 3, 3)
    assert torch.equal(translate(img, 1, -1)[0], torch.tensor([[0, 0, 0], [2, 3, 0], [5, 6, 0.0]]))


@pytest.mark.parametrize("k", [1, 2])
def test_augment_shift_translates_with_zero_fill(k: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, 8, 8, generator=gen) * 0.9 + 0.1  # no zeros: fill is visible
    out = augment(x, TrainConfig(augment_shift=k), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    offsets = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)]
    used = []
    for i in range(x.shape[0]):
        matches = [o for o in offsets if torch.equal(out[i], translate(x[i], *o))]
        assert len(matches) == 1, f"image {i} is not a translation by at most {k} pixels"
        used.append(matches[0])
    assert set(used) == set(offsets), "every offset up to k occurs"
    again = augment(x, TrainConfig(augment_shift=k), torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "the same generator state gives the same shifts"


def test_augment_flip_flips_about_half() -> None:
    x = torch.rand(1000, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = augment(x, TrainConfig(augment_flip=True), torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()), "each image is either flipped horizontally or kept"
    assert 400 < int(flipped.sum()) < 600


def test_no_augmentation_is_the_identity() -> None:
    x = torch.rand(5, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(augment(x, TrainConfig(), gen), x)
    assert torch.equal(gen.get_state(), state), "no augmentation draws no random numbers"


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(
            epochs=3,
            batch_size=7,
            optimizer="adam",
            lr=1e-3,
            momentum=0.5,
            weight_decay=0.0,
            schedule="constant",
            seed=11,
            max_steps=40,
            check_every=5,
            trainable=("fc3", "features.0"),
            freeze_bn=True,
            augment_shift=2,
            augment_flip=True,
        ),
    ],
    ids=["defaults", "everything-set"],
)
def test_config_json_round_trip(config: TrainConfig) -> None:
    data = config.to_json()
    text = json.dumps(data)
    assert TrainConfig.from_json(json.loads(text)) == config
    assert set(data) == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": -0.1},
        {"check_every": -1},
        {"optimizer": "rmsprop"},
        {"schedule": "step"},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_invalid_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"max_steps": -1}, {"augment_shift": -1}], ids=str)
def test_negative_step_limit_or_shift_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


def test_fit_rejects_empty_or_mismatched_data() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        fit(
            tiny_model(), (torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)), TrainConfig()
        )
    with pytest.raises(ValueError, match="one label per image"):
        fit(
            tiny_model(), (torch.zeros(4, 1, 2, 2), torch.zeros(3, dtype=torch.long)), TrainConfig()
        )


# --- evaluation -------------------------------------------------------------------------------


def test_evaluate_matches_a_hand_computed_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    rows = [[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.1, 0.7], [0.3, 0.9, 0.2], [0.1, 0.2, 0.6]]
    labels = [0, 1, 1, 0, 2]
    x = torch.tensor(rows).view(5, 1, 1, 3)
    y = torch.tensor(labels)
    # logits: the first feature doubled; argmax per row is 0, 1, 2, 1, 2 → 3 of 5 right.
    z = [[2 * r[0], r[1], r[2]] for r in rows]
    hand_loss = (
        sum(math.log(sum(math.exp(v) for v in zi)) - zi[t] for zi, t in zip(z, labels, strict=True))
        / 5
    )
    result = evaluate(model, (x, y), batch_size=2)
    assert result.accuracy == pytest.approx(0.6)
    assert result.loss == pytest.approx(hand_loss, rel=1e-6)
    assert result.n == 5
    assert predict(model, x, batch_size=2).tolist() == [0, 1, 2, 1, 2]
    torch.testing.assert_close(logits(model, x, batch_size=3), torch.tensor(z))


def test_evaluate_accepts_an_image_set(small: ImageSet) -> None:
    model = digits_model()
    a = evaluate(model, small)
    b = evaluate(model, (small.x, small.y), batch_size=10)
    assert a.accuracy == pytest.approx(float((predict(model, small.x) == small.y).float().mean()))
    assert a.accuracy == pytest.approx(b.accuracy)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.n == 128


def test_predict_on_no_images_gives_no_labels(small: ImageSet) -> None:
    model = digits_model("lenet5")
    assert logits(model, small.x[:0]).shape == (0, 10)
    assert predict(model, small.x[:0]).shape == (0,)
