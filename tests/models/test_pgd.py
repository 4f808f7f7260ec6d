"""The shared projected-gradient loop over inputs."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from misentry.models.pgd import pgd


def away_from(point: torch.Tensor):  # type: ignore[no-untyped-def]
    """An objective that pushes every input away from ``point`` (so projections are active)."""
    return lambda x: -(x - point).flatten(1).pow(2).sum(1)


def toward(point: torch.Tensor):  # type: ignore[no-untyped-def]
    """A convex objective minimized at ``point``."""
    return lambda x: (x - point).flatten(1).pow(2).sum(1)


@pytest.fixture
def x0() -> torch.Tensor:
    return torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [False, True])
def test_stays_in_ball_and_box(
    x0: torch.Tensor, norm: Literal["linf", "l2"], random_start: bool
) -> None:
    eps = 0.1 if norm == "linf" else 0.5
    out = pgd(
        away_from(torch.full_like(x0, 0.5)),
        x0,
        eps=eps,
        norm=norm,
        steps=20,
        step_size=eps / 4,
        random_start=random_start,
        generator=torch.Generator().manual_seed(1),
    )
    delta = (out - x0).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(out.min()) >= 0.0
    assert float(out.max()) <= 1.0
    assert float(size.min()) > 0.5 * eps  # it really moved out to the ball's edge


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_decreases_a_convex_objective(x0: torch.Tensor, norm: Literal["linf", "l2"]) -> None:
    goal = torch.rand(x0.shape, generator=torch.Generator().manual_seed(2))
    objective = toward(goal)
    step = 0.01 if norm == "linf" else 0.05  # per pixel / for the whole 64-pixel image
    out = pgd(objective, x0, eps=math.inf, norm=norm, steps=200, step_size=step)
    before, after = objective(x0), objective(out)
    assert bool((after < before).all())
    assert float(after.max()) < 0.02 * float(before.min())


def test_eps_limits_the_progress(x0: torch.Tensor) -> None:
    goal = torch.ones_like(x0)
    out = pgd(toward(goal), x0, eps=0.05, steps=50, step_size=0.01)
    assert torch.allclose(out, (x0 + 0.05).clamp(max=1.0), atol=1e-6)


def test_mask_restricts_changed_pixels(x0: torch.Tensor) -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 5:8, 5:8] = 1.0
    out = pgd(
        away_from(torch.full_like(x0, 0.5)),
        x0,
        eps=math.inf,
        steps=10,
        step_size=0.1,
        mask=mask,
        random_start=True,
        generator=torch.Generator().manual_seed(3),
    )
    changed = (out != x0).any(0).any(0)
    assert torch.equal(out[..., mask[0, 0] == 0], x0[..., mask[0, 0] == 0])
    assert bool(changed[5:8, 5:8].all())


def test_deterministic_given_the_generator(x0: torch.Tensor) -> None:
    def run(seed: int) -> torch.Tensor:
        return pgd(
            away_from(torch.full_like(x0, 0.5)),
            x0,
            eps=0.2,
            norm="l2",
            steps=5,
            step_size=0.05,
            random_start=True,
            generator=torch.Generator().manual_seed(seed),
        )

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_early_stop_freezes_done_inputs(x0: torch.Tensor) -> None:
    goal = torch.ones_like(x0)
    level = 0.5 * (x0.flatten(1).mean(1) + 1.0)
    level[0] = 2.0  # never done

    def done(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).mean(1) >= level

    out = pgd(toward(goal), x0, eps=math.inf, steps=100, step_size=0.01, early_stop=done)
    means = out.flatten(1).mean(1)
    assert float(means[0]) > 0.99  # ran all steps
    # the others stopped within one step of their level
    assert bool((means[1:] >= level[1:]).all())
    assert bool((means[1:] <= level[1:] + 0.011).all())


def test_gradients_only_for_the_inputs(x0: torch.Tensor) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    labels = torch.zeros(x0.shape[0], dtype=torch.long)
    out = pgd(
        lambda x: -F.cross_entropy(model(x), labels, reduction="none"),
        x0,
        eps=8 / 255,
        steps=5,
        step_size=2 / 255,
    )
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    before = F.cross_entropy(model(x0), labels, reduction="none")
    after = F.cross_entropy(model(out), labels, reduction="none")
    assert bool((after >= before).all())


def test_rejects_a_scalar_objective(x0: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="one loss per input"):
        pgd(lambda x: x.sum(), x0, eps=0.1, steps=1, step_size=0.01)


def test_keep_best_returns_the_lowest_loss_iterate() -> None:
    """Signed steps of 0.03 towards a minimum at 0.05 oscillate 0 -> 0.03 -> 0.06 -> 0.03: the
    last iterate (0.03, loss 0.02) is worse than the best one (0.06, loss 0.01)."""
    x0 = torch.zeros(3, 1, 2, 2)

    def objective(x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1).mean(1) - 0.05).abs()

    last = pgd(objective, x0, eps=1.0, steps=3, step_size=0.03)
    best = pgd(objective, x0, eps=1.0, steps=3, step_size=0.03, keep_best=True)
    assert torch.allclose(last.flatten(1).mean(1), torch.full((3,), 0.03), atol=1e-6)
    assert torch.allclose(best.flatten(1).mean(1), torch.full((3,), 0.06), atol=1e-6)


def test_on_step_reports_every_step_and_stops_with_early_stop(x0: torch.Tensor) -> None:
    seen: list[tuple[int, int]] = []
    pgd(toward(x0), x0, eps=0.1, steps=4, step_size=0.01, on_step=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    pgd(
        toward(torch.ones_like(x0)),
        x0,
        eps=math.inf,
        steps=50,
        step_size=0.01,
        early_stop=lambda x: torch.ones(x.shape[0], dtype=torch.bool),
        on_step=lambda d, t: seen.append((d, t)),
    )
    assert seen == []  # every input was done before the first step
