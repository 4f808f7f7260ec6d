"""MiSentry's search: meta-learned projected gradient descent into the margin window, all
candidates at once, and the choice of each candidate's tied classes and winner.

Each outer iteration samples meta-train zoo models and one held-out meta-test model (MGAA), takes
inner steps on the meta-train models and applies only the meta-test step's displacement. The
step direction is the L2-normalized gradient of the window violation plus ``balance`` times the
L2-normalized gradient of the zoo's distinguishability term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.methods.misentry.params import MisentryParams, Norm
from misentry.fingerprint.methods.misentry.window import BELOW_FLOOR_WEIGHT, MarginWindow
from misentry.fingerprint.methods.misentry.zoo import ZooModel
from misentry.models.pgd import project_ball, random_delta


def candidates(
    sources: ImageSet, count: int, p: MisentryParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source index and start point of each candidate: every source once from the source
    itself (in a seeded order), then again from random points of the ball."""
    order = torch.randperm(len(sources), generator=generator)
    index = order.repeat(math.ceil(count / len(sources)))[:count]
    x0 = sources.x[index]
    first = torch.arange(count) < len(sources)
    noise = random_delta(x0, p.eps, p.norm, generator)
    starts = torch.where(first.view(-1, 1, 1, 1), x0, project_ball(x0 + noise, x0, p.eps, p.norm))
    return index, starts


def change_scales(target: nn.Module, zoo: list[ZooModel], x: torch.Tensor) -> torch.Tensor:
    """Each zoo model's typical largest logit change on normal images (median)."""
    if not zoo:
        return torch.ones(0)
    with torch.no_grad():
        base = target(x)
        return torch.stack(
            [(m.model(x) - base).abs().max(1).values.median().clamp_min(1e-8) for m in zoo]
        )


def descend(
    p: MisentryParams,
    target: nn.Module,
    zoo: list[ZooModel],
    scales: torch.Tensor,
    starts: torch.Tensor,
    x0: torch.Tensor,
    window: MarginWindow,
    context: SearchContext,
) -> torch.Tensor:
    """The meta-learning PGD loop from ``starts`` within the ball around ``x0``."""
    x = starts
    rng = torch.Generator().manual_seed(0)

    def step(x: torch.Tensor, models: list[int], from_x: torch.Tensor, size: float) -> torch.Tensor:
        d = direction(p, target, [zoo[i] for i in models], scales[models], from_x, window)
        return project_ball(x - size * steepest(d, p.norm), x0, p.eps, p.norm)

    for t in range(p.steps):
        size = p.first_step * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / p.steps)))
        if zoo and p.meta_learning:
            order = torch.randperm(len(zoo), generator=rng).tolist()
            picked = order[: min(p.task_models + 1, len(zoo))]
            train, test = picked[:-1], picked[-1:]
            xj = x
            for _ in range(p.inner_steps):
                xj = step(xj, train, xj, size)
            x = step(x, test, xj, size)
        else:
            d = direction(p, target, zoo, scales, x, window)
            x = project_ball(x - size * steepest(d, p.norm), x0, p.eps, p.norm)
        context.report("search", t + 1, p.steps)
    return x


def direction(
    p: MisentryParams,
    target: nn.Module,
    zoo: list[ZooModel],
    scales: torch.Tensor,
    x: torch.Tensor,
    window: MarginWindow,
) -> torch.Tensor:
    """Normalized window-violation gradient plus ``balance`` x normalized zoo gradient."""
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = target(xg)
        k = min(p.tie_classes, z.shape[1])
        top = z.detach().topk(k, dim=1).indices
        gaps = z.gather(1, top[:, :1]) - z.gather(1, top[:, 1:])
        label = top[:, 0]
        lo, hi = window.lo[label].unsqueeze(1), window.upper(label)
        violation = (F.relu(gaps - hi) + BELOW_FLOOR_WEIGHT * F.relu(lo - gaps)).sum(1)
        terms: list[tuple[float, torch.Tensor]] = []
        if p.band:
            terms.append((1.0, violation.sum()))
        if zoo:
            terms.append((p.balance, distinguish(p, z, zoo, scales, xg, top).sum()))
        total = torch.zeros_like(x)
        for weight, term in terms:
            (grad,) = torch.autograd.grad(term, xg, retain_graph=True, allow_unused=True)
            if grad is not None:
                total = total + weight * unit(grad)
    return total


def distinguish(
    p: MisentryParams,
    z: torch.Tensor,
    zoo: list[ZooModel],
    scales: torch.Tensor,
    x: torch.Tensor,
    top: torch.Tensor,
) -> torch.Tensor:
    """Per-sample loss whose descent makes the zoo disagree with the target (logits ``z`` on
    ``x``, tied classes ``top``)."""
    if p.distinguish == "kl":
        log_p = z.log_softmax(1)
        kl = torch.stack([(log_p.exp() * (log_p - m.model(x).log_softmax(1))).sum(1) for m in zoo])
        return -kl.mean(0)
    changes = torch.stack([(m.model(x) - z) / s for m, s in zip(zoo, scales, strict=True)])
    index = top.unsqueeze(0).expand(len(zoo), -1, -1)
    picked = changes.gather(2, index)
    return (picked[:, :, :1] - picked[:, :, 1:]).mean(2).mean(0)


def unit(grad: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient scaled to L2 length 1."""
    size = grad.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *([1] * (grad.dim() - 1)))
    scaled: torch.Tensor = grad / size
    return scaled


def steepest(direction: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The steepest-descent step of unit size for ``norm``."""
    return direction.sign() if norm == "linf" else unit(direction)


def choose(
    p: MisentryParams,
    target: nn.Module,
    zoo: list[ZooModel],
    scales: torch.Tensor,
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each candidate's tied classes and, among them, the one to keep on top.

    The zoo ranks the tied classes by how much it lowers them (the target's order without a
    zoo) and its favourite wins, except that every class keeps at least ``class_floor`` times
    its fair share of winners: a tampering that only lowers one class's logit flips only
    fingerprints whose label is that class, so a set with no fingerprint of some class misses
    it entirely.
    """
    with torch.no_grad():
        z = target(x)
        k = min(p.tie_classes, z.shape[1])
        top = z.topk(k, dim=1).indices
        if zoo:
            change = torch.stack([(m.model(x) - z) / s for m, s in zip(zoo, scales, strict=True)])
            score = change.mean(0).gather(1, top)
        else:
            score = -z.gather(1, top)
    ranked, order = score.sort(dim=1)
    preference = top.gather(1, order)
    clarity = ranked[:, 1] - ranked[:, 0]
    classes = int(z.shape[1])
    least = math.ceil(p.class_floor * len(x) / classes)
    return give_floor(preference[:, 0].clone(), top, clarity, classes, least), top


def give_floor(
    winner: torch.Tensor, top: torch.Tensor, clarity: torch.Tensor, classes: int, least: int
) -> torch.Tensor:
    """``winner`` changed so that every class wins at least ``least`` times where it is tied:
    the least clear preferences give way first, never below another class's floor."""
    counts = torch.bincount(winner, minlength=classes)
    for c in range(classes):
        options = [
            i
            for i in clarity.argsort().tolist()
            if bool((top[i] == c).any()) and int(winner[i]) != c
        ]
        for i in options:
            if int(counts[c]) >= least:
                break
            if int(counts[winner[i]]) > least:
                counts[winner[i]] -= 1
                winner[i] = c
                counts[c] += 1
    return winner
