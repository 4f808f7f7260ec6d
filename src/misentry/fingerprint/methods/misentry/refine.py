"""MiSentry's lattice refinement: the searched images rounded to 8 bits, then greedy pixel moves
of +-1/255 that pull the target's margins back into the window.

Each round, for every candidate still outside the window, the single-pixel moves with the best
linear prediction (from the Jacobian of the tied margins) and group moves of 2 to 128 pixels
along the cost's slope (and, with ``newton_moves``, least-norm moves) are checked exactly, and the
best improving one is kept. A fingerprint therefore survives being stored as a PNG by
construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.methods.misentry.params import MisentryParams
from misentry.fingerprint.methods.misentry.window import (
    BELOW_FLOOR_WEIGHT,
    MarginWindow,
    tied_others,
)

GROUP_SIZES = (2, 4, 8, 16, 32, 64, 128)
"""Pixel counts of the refinement's group moves (coarse steps far from the window)."""

NEWTON_SCALES = (1.0, 0.5, 0.25)
"""Fractions of the refinement's least-norm (Newton) pixel change that are tried."""


@dataclass(frozen=True)
class Lattice:
    """What the refinement measures every move against, per candidate: the winner, the other
    tied classes, the window's edges, and the source's pixel values (0-255 floats)."""

    p: MisentryParams
    winners: torch.Tensor
    others: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    base: torch.Tensor

    @property
    def radius(self) -> int:
        """The L-inf bound in whole pixel steps."""
        return math.floor(self.p.eps * 255 + 1e-6)

    def violation(self, z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The window violation of logits ``z`` of candidates ``rows``: the tied margins'
        distance to the window, and any other class's margin below the floor."""
        top = z.gather(1, self.winners[rows].unsqueeze(1))
        tied = top - z.gather(1, self.others[rows])
        every = top - z
        every = every.scatter(1, self.winners[rows].unsqueeze(1), math.inf)
        return (
            F.relu(tied - self.hi[rows]).sum(1)
            + BELOW_FLOOR_WEIGHT * F.relu(self.lo[rows] - tied).sum(1)
            + BELOW_FLOOR_WEIGHT * F.relu(self.lo[rows, :1] - every).sum(1)
        )


def refine(
    p: MisentryParams,
    target: nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    winners: torch.Tensor,
    ties: torch.Tensor,
    window: MarginWindow,
    context: SearchContext,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Round ``x`` (sources ``x0``) to 8 bits and move it into the margin window of each
    candidate's ``winners`` over its other ``ties``: uint8 pixels and a summary."""
    pixels, base = round_to_lattice(p, x, x0)
    others = tied_others(winners, ties)
    lo, hi = window.lo[winners].unsqueeze(1), window.upper(winners)
    lattice = Lattice(p, winners, others, lo, hi, base)
    n = x.shape[0]
    with torch.no_grad():
        current = lattice.violation(target(pixels / 255), torch.arange(n))
    start_ok = int((current == 0).sum())
    taken = torch.zeros(n, dtype=torch.long)
    stuck = torch.zeros(n, dtype=torch.bool)
    for round_ in range(p.refine_rounds):
        rows = ((current > 0) & ~stuck).nonzero().squeeze(1)
        context.report("refine", round_ + 1, p.refine_rounds)
        if rows.numel() == 0:
            break
        new, chosen = best_move(lattice, target, pixels, rows)
        better = new < current[rows]
        pixels[rows[better]] = chosen[better]
        current[rows[better]] = new[better]
        taken[rows[better]] += 1
        stuck[rows[~better]] = True
    summary = {
        "in_window_after_rounding": start_ok,
        "in_window": int((current == 0).sum()),
        "candidates": n,
        "mean_moves": float(taken.float().mean()),
    }
    return pixels.to(torch.uint8), summary


def round_to_lattice(
    p: MisentryParams, x: torch.Tensor, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and its sources ``x0`` as 0-255 floats on the lattice: the change rounded (truncated
    when rounding leaves the L2 ball) and clipped."""
    base = (x0 * 255).round()
    pixels = base + ((x - x0) * 255).round()
    if p.norm == "l2" and bool(((pixels - base).flatten(1).norm(dim=1) > p.eps * 255).any()):
        pixels = base + ((x - x0) * 255).trunc()
    return pixels.clamp(0, 255), base


def best_move(
    lattice: Lattice, target: nn.Module, pixels: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One round for candidates ``rows``: every trial move checked exactly; the lowest
    violation of each row and the images (0-255 floats) that reach it."""
    p = lattice.p
    shape = pixels.shape[1:]
    tied, jac = tied_jacobian(lattice, target, pixels, rows)
    flat = pixels[rows].flatten(1)
    start = lattice.base[rows].flatten(1)
    trial, valid = single_moves(lattice, rows, tied, jac, flat, start)
    extra = group_moves(lattice, rows, tied, jac, flat, start)
    trial = torch.cat([trial, extra], dim=1)
    valid = torch.cat([valid, fits(p, extra, start)], dim=1)
    if p.newton_moves:
        aim = (lattice.lo[rows] * lattice.hi[rows]).sqrt()
        newton = newton_moves(p, jac, tied, aim, flat, start)
        trial = torch.cat([trial, newton], dim=1)
        valid = torch.cat([valid, fits(p, newton, start)], dim=1)
    tries = trial.shape[1]
    with torch.no_grad():
        z_trial = target((trial / 255).view(-1, *shape))
        cost = lattice.violation(z_trial, rows.repeat_interleave(tries)).view(-1, tries)
    cost = torch.where(valid, cost, torch.full_like(cost, math.inf))
    new, pick = cost.min(1)
    return new, trial[torch.arange(rows.numel()), pick].view(-1, *shape)


def tied_jacobian(
    lattice: Lattice, target: nn.Module, pixels: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tied margins (rows, k - 1) of candidates ``rows`` and their Jacobian with respect to
    the image, (rows, k - 1, D)."""
    xr = (pixels[rows] / 255).requires_grad_(True)
    with torch.enable_grad():
        z = target(xr)
        top = z.gather(1, lattice.winners[rows].unsqueeze(1))
        tied = top - z.gather(1, lattice.others[rows])
        jac = torch.stack(
            [
                torch.autograd.grad(tied[:, j].sum(), xr, retain_graph=True)[0].flatten(1)
                for j in range(tied.shape[1])
            ],
            dim=1,
        )
    return tied.detach(), jac


def single_moves(
    lattice: Lattice,
    rows: torch.Tensor,
    tied: torch.Tensor,
    jac: torch.Tensor,
    flat: torch.Tensor,
    start: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``refine_moves`` single-pixel moves of +-1 with the lowest linearly predicted cost
    (rows, M, D), and whether each one is feasible."""
    p = lattice.p
    dims = flat.shape[1]
    moves = min(p.refine_moves, 2 * dims)
    lo, hi = lattice.lo[rows].unsqueeze(2), lattice.hi[rows].unsqueeze(2)
    predicted = []
    for sign in (1.0, -1.0):
        moved = flat + sign
        feasible = (moved >= 0) & (moved <= 255)
        if p.norm == "linf":
            feasible &= (moved - start).abs() <= lattice.radius
        else:
            dist2 = (flat - start).pow(2).sum(1, keepdim=True)
            new2 = dist2 - (flat - start).pow(2) + (moved - start).pow(2)
            feasible &= new2 <= (p.eps * 255) ** 2 + 1e-6
        gaps = tied.unsqueeze(2) + jac * (sign / 255)
        cost = F.relu(gaps - hi).sum(1) + BELOW_FLOOR_WEIGHT * F.relu(lo - gaps).sum(1)
        predicted.append(torch.where(feasible, cost, torch.full_like(cost, math.inf)))
    costs = torch.cat(predicted, dim=1)  # (rows, 2D): +1 moves, then -1 moves
    best = costs.topk(moves, dim=1, largest=False).indices
    pixel = best % dims
    direction = 1.0 - 2.0 * (best >= dims).float()
    trial = flat.unsqueeze(1).repeat(1, moves, 1)
    trial.scatter_add_(2, pixel.unsqueeze(2), direction.unsqueeze(2))
    return trial, costs.gather(1, best).isfinite()


def group_moves(
    lattice: Lattice,
    rows: torch.Tensor,
    tied: torch.Tensor,
    jac: torch.Tensor,
    flat: torch.Tensor,
    start: torch.Tensor,
) -> torch.Tensor:
    """Group moves (rows, G, D): the j pixels with the largest predicted effect along the
    cost's slope, each moved one step its own way, for each j of ``GROUP_SIZES``
    (coarse-to-fine)."""
    lo, hi = lattice.lo[rows], lattice.hi[rows]
    slope = (tied > hi).float() - BELOW_FLOOR_WEIGHT * (tied < lo).float()
    effect = (slope.unsqueeze(2) * jac).sum(1)  # d cost / d pixel, (rows, D)
    step = -effect.sign()
    moved = flat + step
    ok = (moved >= 0) & (moved <= 255) & (effect != 0)
    if lattice.p.norm == "linf":
        ok &= (moved - start).abs() <= lattice.radius
    ranked = torch.where(ok, effect.abs(), torch.full_like(effect, -1.0))
    order = ranked.argsort(dim=1, descending=True)
    groups = [j for j in GROUP_SIZES if j <= flat.shape[1]]
    extra = flat.unsqueeze(1).repeat(1, len(groups), 1)
    for g_i, j in enumerate(groups):
        cols = order[:, :j]
        usable = ranked.gather(1, cols) > 0
        extra[:, g_i].scatter_add_(1, cols, step.gather(1, cols) * usable.float())
    return extra


def newton_moves(
    p: MisentryParams,
    jac: torch.Tensor,
    gaps: torch.Tensor,
    aim: torch.Tensor,
    flat: torch.Tensor,
    start: torch.Tensor,
) -> torch.Tensor:
    """The least-norm pixel change that brings every tied gap to ``aim``, at each of
    ``NEWTON_SCALES``, rounded to whole pixel steps and clipped to the L-inf box: (rows, S, D)."""
    gram = jac @ jac.transpose(1, 2) / 255**2 + 1e-12 * torch.eye(jac.shape[1])
    target_gaps = torch.where(aim.isfinite(), aim, gaps).expand_as(gaps)
    solve = torch.linalg.solve(gram, (target_gaps - gaps).unsqueeze(2))
    newton = (jac.transpose(1, 2) @ solve).squeeze(2) / 255  # in pixel steps
    lower, upper = torch.zeros_like(start), torch.full_like(start, 255.0)
    if p.norm == "linf":
        radius = math.floor(p.eps * 255 + 1e-6)
        lower, upper = (start - radius).clamp(min=0), (start + radius).clamp(max=255)
    return torch.stack(
        [
            torch.minimum(torch.maximum(flat + (newton * f).round(), lower), upper)
            for f in NEWTON_SCALES
        ],
        dim=1,
    )


def fits(p: MisentryParams, trials: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Whether each trial (rows, T, D) of pixel values stays in the L2 ball (L-inf trials are
    built inside their box)."""
    if p.norm == "l2":
        inside: torch.Tensor = (trials - start.unsqueeze(1)).norm(dim=2) <= p.eps * 255 + 1e-6
        return inside
    return torch.ones(trials.shape[:2], dtype=torch.bool)
