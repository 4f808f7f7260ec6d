"""The shared projected-gradient loop over inputs, and its projection and random start.

:func:`pgd` is the loop of the trojan trigger and the clean-label perturbation of the tampering
recipes and of the IBSF generator. Variations come in through the objective (any per-sample loss of
the inputs), the norm and radius of the ball, a pixel mask and an early-stop test; the loop itself
stays the same. MiSentry's search and SSF's Adam ascent run loops of their own and reuse only the
pieces: :func:`project_ball` and :func:`random_delta`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Objective = Callable[[torch.Tensor], torch.Tensor]
"""``objective(x) -> losses``: one loss per input (shape (N,)), to be minimized."""


def pgd(
    objective: Objective,
    x0: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: Literal["linf", "l2"] = "linf",
    mask: torch.Tensor | None = None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    early_stop: Callable[[torch.Tensor], torch.Tensor] | None = None,
    keep_best: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    r"""Projected gradient descent on the inputs ``x0`` (Madry et al., 2018).

    Distance Measure : Linf or L2, intersected with the pixel box ``bounds``.

    Each step moves every input against the gradient of its own loss (signed for ``linf``,
    L2-normalized for ``l2``), then projects it onto the ``eps`` ball around its start ``x0`` and
    clips it to ``bounds``. Gradients are taken with respect to the inputs only
    (:func:`torch.autograd.grad`), so no parameter's ``.grad`` is touched, and nothing global
    (modes, ``requires_grad``, RNG) is changed or needs restoring: put models in eval mode in the
    caller. Inputs are optimized independently when the objective's losses are, i.e. when the
    model uses no batch statistics.

    Arguments:
        objective: ``objective(x) -> losses`` with one loss per input, shape (N,), to minimize
            (pass the negative of what should grow, e.g. ``-cross_entropy`` for an untargeted
            attack). It may close over several models or stamp ``x`` onto other images.
        x0: the starting inputs, shape (N, ...), inside ``bounds``.
        eps: radius of the ball around ``x0`` (in pixel units of ``bounds``, e.g. 8/255).
            ``math.inf`` leaves the inputs free inside ``bounds`` (e.g. a trigger inside a mask).
        steps: number of gradient steps (an upper bound with ``early_stop``).
        step_size: length of one step: per pixel for ``linf``, of the whole step for ``l2``.
        norm: ``"linf"`` (signed steps) or ``"l2"`` (normalized steps).
        mask: broadcastable to ``x0``; only pixels where it is non-zero move (values in [0, 1]
            scale the step). None: every pixel may move.
        random_start: start from a uniform random point of the ball (inside the mask); with
            ``eps=inf`` uniform over ``bounds``.
        generator: the random source of ``random_start`` (makes the result reproducible).
        bounds: the pixel box (default [0, 1], the float image range of misentry).
        early_stop: ``early_stop(x) -> done`` with one bool per input, checked before each step
            without gradients; done inputs stop moving and the loop ends when all are done.
        keep_best: return, for each input, the iterate with the lowest loss seen (the final one
            included) instead of the last iterate.
        on_step: ``on_step(done, steps)``, called after each step (for progress bars).

    Shape:
        - x0: (N, C, H, W) or any (N, ...), float.
        - output: same shape as ``x0``, detached, inside the ball and ``bounds``.

    Examples::
        >>> x = torch.zeros(2, 1, 4, 4)
        >>> out = pgd(lambda x: -x.flatten(1).sum(1), x, eps=0.1, steps=3, step_size=0.05)
        >>> round(float(out.max()), 6), round(float(out.min()), 6)
        (0.1, 0.1)
    """
    _check_arguments(eps, steps, step_size, norm)
    ball = _Ball.around(x0.detach(), eps, norm, bounds, mask)
    x = ball.x0.clone()
    if random_start:
        x = ball.project(ball.x0 + random_delta(ball.x0, eps, norm, generator, bounds))
    return _descend(objective, ball, x, steps, step_size, early_stop, keep_best, on_step)


def _check_arguments(eps: float, steps: int, step_size: float, norm: str) -> None:
    if steps < 0 or step_size < 0 or not eps >= 0:
        raise ValueError(
            f"pgd: need steps >= 0, step_size >= 0, eps >= 0; got {steps}, {step_size}, {eps}"
        )
    if norm not in ("linf", "l2"):
        raise ValueError(f"pgd: norm must be 'linf' or 'l2'; got {norm!r}")


@dataclass(frozen=True, eq=False)
class _Ball:
    """The feasible set of :func:`pgd`: the ``eps`` ball around ``x0`` inside ``bounds``, with
    the pixel mask as a bool ``keep`` (which pixels move) and a float ``scale`` (of the step)."""

    x0: torch.Tensor
    eps: float
    norm: Literal["linf", "l2"]
    bounds: tuple[float, float]
    keep: torch.Tensor | None
    scale: torch.Tensor | None

    @classmethod
    def around(
        cls,
        x0: torch.Tensor,
        eps: float,
        norm: Literal["linf", "l2"],
        bounds: tuple[float, float],
        mask: torch.Tensor | None,
    ) -> _Ball:
        keep = None if mask is None else (mask.to(x0) != 0).expand_as(x0)
        scale = None if mask is None else mask.to(x0).expand_as(x0)
        return cls(x0, eps, norm, bounds, keep, scale)

    @property
    def view(self) -> tuple[int, ...]:
        """The shape that broadcasts one value per input over an input batch."""
        return (-1, *([1] * (self.x0.dim() - 1)))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return project_ball(x, self.x0, self.eps, self.norm, self.bounds, self.keep)

    def step(self, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The descent direction of one step: the masked gradient, signed (``linf``) or
        L2-normalized (``l2``), zero for inputs that are no longer active."""
        if self.scale is not None:
            grad = grad * self.scale
        if self.norm == "linf":
            step = grad.sign()
        else:
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(self.view)
        return step * active.to(self.x0.dtype).view(self.view)


class _Best:
    """Per input, the iterate with the lowest loss seen so far."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        self.loss = torch.full((x.shape[0],), math.inf, device=x.device)

    def remember(self, x: torch.Tensor, losses: torch.Tensor) -> None:
        better = losses.detach() < self.loss
        self.loss[better] = losses.detach()[better]
        self.x[better] = x.detach()[better]


def _losses_and_grad(objective: Objective, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective's losses at ``x`` and their gradient with respect to ``x`` only."""
    n = x.shape[0]
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        losses = objective(xg)
        if losses.shape != (n,):
            raise ValueError(
                f"pgd: the objective must return one loss per input, shape ({n},); got "
                f"{tuple(losses.shape)}"
            )
        (grad,) = torch.autograd.grad(losses.sum(), xg)
    return losses, grad


def _descend(
    objective: Objective,
    ball: _Ball,
    x: torch.Tensor,
    steps: int,
    step_size: float,
    early_stop: Callable[[torch.Tensor], torch.Tensor] | None,
    keep_best: bool,
    on_step: Callable[[int, int], None] | None,
) -> torch.Tensor:
    """The loop of :func:`pgd` from the start point ``x`` (see there for the arguments)."""
    active = torch.ones(x.shape[0], dtype=torch.bool, device=ball.x0.device)
    best = _Best(x) if keep_best else None
    for step_index in range(steps):
        if early_stop is not None:
            with torch.no_grad():
                done = early_stop(x).to(torch.bool).view(-1)
            active = active & ~done
            if not bool(active.any()):
                break
        losses, grad = _losses_and_grad(objective, x)
        if best is not None:
            best.remember(x, losses)
        x = ball.project(x.detach() - step_size * ball.step(grad, active))
        if on_step is not None:
            on_step(step_index + 1, steps)
    if best is not None:
        with torch.no_grad():
            best.remember(x, objective(x))
        return best.x
    return x.detach()


def project_ball(
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: float,
    norm: Literal["linf", "l2"],
    bounds: tuple[float, float] = (0.0, 1.0),
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x`` projected onto the ``eps`` ball around ``x0`` (L-inf or L2; ``math.inf``: no ball)
    and clipped to ``bounds``; pixels where ``keep`` is False stay at ``x0``. Detached."""
    delta = x.detach() - x0
    if math.isfinite(eps):
        if norm == "linf":
            delta = delta.clamp(-eps, eps)
        else:
            size = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
            delta = delta * (eps / size).clamp(max=1.0).view(-1, *([1] * (x0.dim() - 1)))
    if keep is not None:
        delta = torch.where(keep, delta, torch.zeros_like(delta))
    # Clipping each pixel to the box moves it towards x0 (x0 is inside), so the result stays in
    # the ball as well.
    return (x0 + delta).clamp(*bounds)


def random_delta(
    x0: torch.Tensor,
    eps: float,
    norm: Literal["linf", "l2"],
    generator: torch.Generator | None,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """A uniform random start: in the Linf cube, in the L2 ball (uniform radius and direction),
    or, for ``eps=inf``, a uniform point of ``bounds`` (returned as an offset from ``x0``)."""
    lo, hi = bounds
    if not math.isfinite(eps):
        u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return lo + (hi - lo) * u - x0
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return (2 * u - 1) * eps
    view = (-1, *([1] * (x0.dim() - 1)))
    direction = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
    radius = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype).to(x0.device) * eps
    delta: torch.Tensor = direction * radius.view(view)
    return delta
