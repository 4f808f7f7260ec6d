"""MiSentry's screening: of ``pool_factor`` x n candidates, drop any whose target label changes
under a benign re-deployment, then keep the n that the held-out zoo disagrees with most, spread
over classes and source images."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from misentry.fingerprint.base import GenerationError, SearchContext
from misentry.fingerprint.methods.misentry.params import MisentryParams
from misentry.fingerprint.methods.misentry.window import MarginWindow, tied_others
from misentry.fingerprint.methods.misentry.zoo import ZooModel
from misentry.fingerprint.tolerance import Tolerance, stable_mask
from misentry.models import logits

BENIGN_BATCH_SIZES = (1, 2, 3, 7, 16, 31, 64, 100, 128, 255, 256)
"""Batch sizes of the benign re-deployment check (with the whole pool at once)."""


def screen(
    p: MisentryParams,
    target: nn.Module,
    zoo: list[ZooModel],
    x: torch.Tensor,
    index: torch.Tensor,
    winners: torch.Tensor,
    ties: torch.Tensor,
    window: MarginWindow,
    n: int,
    context: SearchContext,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Keep ``n`` of the candidates ``x`` (sources ``index``): stable under benign
    re-deployment (and under every stack of the context's tolerance, every margin at or above
    its floor), most disagreed with by the held-out ``zoo``, spread over classes and
    sources. Returns the kept positions and a summary."""
    context.report("screen", 0, 1)
    reference = logits(target, x, batch_size=len(x))
    labels = reference.argmax(1)
    stable = benign_stable(target, x, labels)
    level = context.noise_level
    if level is not None and level.tolerance is not Tolerance.EXACT:
        stable &= stable_mask(target, x, labels, level)
    in_window = window.holds(reference, winners, ties)
    summary: dict[str, Any] = {
        "enabled": p.screening,
        "unstable": int((~stable).sum()),
        "outside_window": int((~in_window).sum()),
    }
    if not p.screening:
        context.report("screen", 1, 1)
        summary["unstable_kept"] = int((~stable[:n]).sum())
        return torch.arange(n), summary
    with torch.no_grad():
        votes = (
            torch.stack([m.model(x).argmax(1) != labels for m in zoo]).sum(0)
            if zoo
            else torch.zeros(len(x), dtype=torch.long)
        )
    key = rank_key(p, reference, labels, ties, window, in_window, votes)
    order = usable_order(stable, key, n)
    good = [i for i in order if bool(in_window[i])]
    rest = [i for i in order if not bool(in_window[i])]
    if window.entropy_band is not None:  # covert: nothing outside the band, ever
        if len(good) < n:
            raise GenerationError(
                f"misentry: only {len(good)} of {len(x)} candidates lie inside the normal "
                f"band, {n} needed; raise pool_factor or give more sources"
            )
        rest = []
    stages = [(good, "floor"), (rest, "floor"), (good, "source"), (good, "any"), (rest, "any")]
    classes = int(reference.shape[1])
    least = math.ceil(p.class_floor * n / classes)
    chosen = spread(stages, labels, index, n, classes, least)
    summary.update(
        {
            "kept_in_window": int(in_window[chosen].sum()),
            "kept_mean_votes": float(votes[chosen].double().mean()),
            "screening_zoo_models": len(zoo),
        }
    )
    context.report("screen", 1, 1)
    return torch.tensor(chosen, dtype=torch.long), summary


def rank_key(
    p: MisentryParams,
    reference: torch.Tensor,
    labels: torch.Tensor,
    ties: torch.Tensor,
    window: MarginWindow,
    in_window: torch.Tensor,
    votes: torch.Tensor,
) -> torch.Tensor:
    """Each candidate's rank, higher first: in the window first, then clear of the floor, then
    held-out zoo votes, then the tightest tie."""
    others = tied_others(labels, ties)
    gaps = reference.gather(1, labels.unsqueeze(1)) - reference.gather(1, others)
    width = gaps.abs().max(1).values
    second = reference.topk(2, dim=1).values
    safe = (second[:, 0] - second[:, 1]) >= window.lo[labels]
    return (
        in_window.double() * 1e9
        + safe.double() * 1e6
        + votes.double() * (1e3 if p.screen_votes else 0.0)
        - width.double().clamp(max=999)
    )


def usable_order(stable: torch.Tensor, key: torch.Tensor, n: int) -> list[int]:
    """The stable candidates, best ``key`` first; an error when fewer than ``n`` are stable."""
    usable = stable.clone()
    if int(usable.sum()) < n:
        raise GenerationError(
            f"misentry: only {int(usable.sum())} of {len(stable)} candidates are stable under "
            f"benign re-deployment, {n} needed; raise pool_factor or give more sources"
        )
    return sorted(usable.nonzero().squeeze(1).tolist(), key=lambda i: -float(key[i]))


def spread(
    stages: list[tuple[list[int], str]],
    labels: torch.Tensor,
    index: torch.Tensor,
    n: int,
    classes: int,
    least: int,
) -> list[int]:
    """Take ``n`` candidates stage by stage, each stage a list (best first) and a rule:
    ``floor`` (only labels with fewer than ``least`` taken, one per source image), ``source``
    (one per source image) or ``any``."""
    chosen: list[int] = []
    taken: set[int] = set()
    per_class = [0] * classes
    sources: set[int] = set()
    for candidates, rule in stages:
        for i in candidates:
            if len(chosen) == n:
                return chosen
            if i in taken:
                continue
            label, source = int(labels[i]), int(index[i])
            if rule in ("floor", "source") and source in sources:
                continue
            if rule == "floor" and per_class[label] >= least:
                continue
            chosen.append(i)
            taken.add(i)
            per_class[label] += 1
            sources.add(source)
    return chosen


def revert_to_sources(
    target: nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    winners: torch.Tensor,
    ties: torch.Tensor,
    window: MarginWindow,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Covert profile: a candidate that left the normal band is replaced by its unmodified
    source when the source lies in the band (the search only ever helps); returns the new
    candidates, winners, ties and how many were replaced."""
    z, z0 = logits(target, x), logits(target, x0)
    ties0 = z0.topk(ties.shape[1], dim=1).indices
    back = ~window.holds(z, winners, ties) & window.holds(z0, ties0[:, 0], ties0)
    view = back.view(-1, *([1] * (x.dim() - 1)))
    return (
        torch.where(view, x0, x),
        torch.where(back, ties0[:, 0], winners),
        torch.where(back.unsqueeze(1), ties0, ties),
        int(back.sum()),
    )


def benign_stable(target: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each image keeps ``labels`` under benign re-deployments of ``target``: the
    batch sizes of ``BENIGN_BATCH_SIZES`` and all at once, 1 and 2 threads, float64,
    channels-last."""
    stable = torch.ones(len(x), dtype=torch.bool)
    threads = torch.get_num_threads()
    try:
        for count in sorted({1, min(2, max(threads, 2))}):
            torch.set_num_threads(count)
            for batch in (*BENIGN_BATCH_SIZES, len(x)):
                stable &= logits(target, x, batch_size=batch).argmax(1) == labels
    finally:
        torch.set_num_threads(threads)
    wide = copy.deepcopy(target).double()
    stable &= logits(wide, x.double(), batch_size=256).argmax(1) == labels
    channels_last = copy.deepcopy(target).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    stable &= (
        logits(channels_last, x.contiguous(memory_format=torch.channels_last), batch_size=256)
        .argmax(1)
        .eq(labels)
    )
    return stable
