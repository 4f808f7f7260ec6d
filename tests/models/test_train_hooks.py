"""The training loop's step limits, checks, stop conditions and the hooks that change training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet, Pools
from misentry.models import InputSpec, TrainConfig, TrainHooks, TrainState, evaluate, fit, predict
from models.trainkit import TINY, changed, digits_model, snapshot, synthetic, tiny_model


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


def test_transform_batch_is_used(digits_pools: Pools, small: ImageSet) -> None:
    model = digits_model()
    sizes: list[int] = []

    def relabel(
        x: torch.Tensor, y: torch.Tensor, state: TrainState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(x.shape[0])
        return x, torch.full_like(y, 3)

    fit(model, small, TrainConfig(epochs=3, batch_size=32), TrainHooks(transform_batch=relabel))
    assert sizes == [32] * 12
    share = float((predict(model, digits_pools["test"].x) == 3).float().mean())
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
