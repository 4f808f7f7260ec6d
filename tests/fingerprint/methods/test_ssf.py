"""SSF: sensitivity to the output layer's weights, under an L-inf bound, chosen by MANC."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import ImageSet, to_pixels, to_unit
from misentry.fingerprint.methods.ssf import (
    SsfParams,
    all_layer_sensitivity,
    last_layer_sensitivity,
    manc,
)
from misentry.fingerprint.registry import get_method
from misentry.models import (
    Record,
    last_linear,
    predict,
)
from misentry.models.train import evaluation


def autograd_sensitivity(model: nn.Module, x: torch.Tensor, params: list[nn.Parameter]) -> float:
    """The reference: ||d log p_y / d params||^2 for one sample, by autograd."""
    logits = model(x.unsqueeze(0))
    log_p = logits.log_softmax(dim=1)[0, int(logits.argmax())]
    grads = torch.autograd.grad(log_p, params)
    return float(sum(float(g.pow(2).sum()) for g in grads))


def test_closed_form_sensitivity_equals_autograd(target: nn.Module, sources: ImageSet) -> None:
    _, layer = last_linear(target)
    params = [layer.weight, layer.bias]
    x = sources.x[:6]
    with evaluation(target):
        closed, _ = last_layer_sensitivity(target, x)
        looped, _ = all_layer_sensitivity(target, x)
        reference = [autograd_sensitivity(target, xi, params) for xi in x]
        everything = [autograd_sensitivity(target, xi, list(target.parameters())) for xi in x]
    assert closed.tolist() == pytest.approx(reference, rel=1e-4, abs=1e-8)
    assert looped.tolist() == pytest.approx(everything, rel=1e-4, abs=1e-8)


@pytest.fixture(scope="module")
def run(target: nn.Module, sources: ImageSet) -> Any:
    return get_method("ssf", steps=30).generate(target, sources, n=20, seed=0)


def test_fingerprints_are_more_sensitive_than_their_sources(
    run: Any, target: nn.Module, sources: ImageSet
) -> None:
    with evaluation(target), torch.no_grad():
        before, _ = last_layer_sensitivity(target, sources.x[run.source_indices])
        after, _ = last_layer_sensitivity(target, run.x)
    assert float(after.mean()) > 1.5 * float(before.mean())
    assert float((after > before).float().mean()) >= 0.8
    assert run.manifest["sensitivity_fingerprints_mean"] == pytest.approx(float(after.mean()))
    assert run.manifest["sensitivity_sources_mean"] == pytest.approx(float(before.mean()))
    assert run.manifest["candidates"] == 40
    assert run.manifest["backward_passes"] == 40 * 30  # one per candidate and step
    assert 0 < run.manifest["neurons_covered"] <= run.manifest["neurons_total"]


def test_fingerprints_lie_in_the_ball_on_the_lattice_with_the_targets_labels(
    run: Any, target: nn.Module, sources: ImageSet
) -> None:
    distance = (run.x - sources.x[run.source_indices]).abs().amax()
    assert float(distance) <= 8 / 255 + 1e-6
    assert torch.equal(to_unit(to_pixels(run.x)), run.x)
    assert torch.equal(run.labels, predict(target, run.x))
    assert len(set(run.source_indices.tolist())) == 20


def test_manc_covers_at_least_as_many_neurons_as_a_random_choice(
    target: nn.Module, sources: ImageSet
) -> None:
    with evaluation(target), torch.no_grad():
        sensitivity, h = last_layer_sensitivity(target, sources.x[:80])
    active = h > 0
    chosen, covered = manc(active, sensitivity, 8)
    assert covered == int(active[chosen].any(dim=0).sum())
    assert len(set(chosen.tolist())) == 8
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        random = torch.randperm(80, generator=gen)[:8]
        assert covered >= int(active[random].any(dim=0).sum())


def test_manc_breaks_ties_and_continues_by_sensitivity() -> None:
    active = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool)
    sensitivity = torch.tensor([1.0, 2.0, 0.5, 9.0])
    chosen, covered = manc(active, sensitivity, 4)
    assert chosen.tolist() == [1, 2, 3, 0]
    assert covered == 3


def test_all_layers_raise_the_sensitivity_to_every_weight(
    target: nn.Module, sources: ImageSet
) -> None:
    fps = get_method("ssf", layers="all", steps=10, lr=2 / 255).generate(
        target, sources, n=4, seed=0
    )
    assert fps.manifest["sensitivity_fingerprints_mean"] > fps.manifest["sensitivity_sources_mean"]
    assert fps.manifest["backward_passes"] == 8 * 10
    assert torch.equal(fps.labels, predict(target, fps.x))


@pytest.mark.parametrize(
    "bad",
    [
        {"layers": "first"},
        {"eps": 0.0},
        {"eps": 2.0},
        {"steps": -1},
        {"lr": 0.0},
        {"pool_factor": 0},
        {"threshold_quantile": 1.0},
        {"threshold_quantile": -0.1},
        {"cover_layer": "conv1"},
    ],
)
def test_invalid_parameters_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="SsfParams"):
        SsfParams(**bad)


def test_without_hooks_the_features_and_their_gradient_equal_the_hooked_ones(
    imported_records: dict[str, Record],
) -> None:
    """TorchScript and torch.export run no hook on the output layer: h comes from the weight's
    gradient, exactly the values (and the input gradient) the eager module's hook gives."""
    from misentry.fingerprint.methods.ssf import hooks_reach, last_layer_sensitivity
    from misentry.models import last_linear, model_from_record

    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = {}
    for fmt, record in imported_records.items():
        model = model_from_record(record)
        assert hooks_reach(model, last_linear(model)[0]) == (fmt == "module")
        xr = x.clone().requires_grad_(True)
        value, h = last_layer_sensitivity(model, xr)
        (grad,) = torch.autograd.grad(value.sum(), xr)
        seen[fmt] = (value.detach(), h.detach(), grad)
    for fmt in ("torchscript", "exported"):
        for ours, hooked in zip(seen[fmt], seen["module"], strict=True):
            torch.testing.assert_close(ours, hooked, rtol=1e-5, atol=1e-6)
