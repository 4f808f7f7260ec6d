"""PublicCheck-like: encysted pairs at the target's decision boundary, found with top-1 labels
only (Wang et al., IEEE S&P 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from misentry.data import ImageSet, to_pixels, to_unit
from misentry.fingerprint.autoencoder import Autoencoder, LatentSearchParams, owner_autoencoder
from misentry.fingerprint.base import GenerationError, Generator, SearchContext, on_lattice
from misentry.fingerprint.methods.natural import draw_sources
from misentry.models.oracle import ModuleOracle

MAX_BISECTIONS = 64
"""Bisection steps after which a bracket stops halving whatever its length (float64 t runs out
of digits near 50; a bracket that still exceeds ``delta`` then is reported as it is)."""


@dataclass(frozen=True)
class PublicCheckParams(LatentSearchParams):
    """Attributes:
    grid: points of the coarse scan of the latent path, both ends included (>= 2).
    delta: the largest latent length of a pair's bracket, in latent units (absolute: the VAE's
        prior is N(0, I), so a unit is about one standard deviation of the owner's codes, on
        any dataset); bisection halves the bracket until it is this short.
    augment: latent jitters drawn per side of each pair; a jitter is kept only if the target
        gives it its side's label and it differs from its side's image on the 8-bit lattice.
    jitter: standard deviation of a jitter, in latent units.
    The autoencoder's fields are those of
    :class:`~misentry.fingerprint.autoencoder.LatentSearchParams`.
    """

    grid: int = 16
    delta: float = 0.01
    augment: int = 1
    jitter: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if self.grid < 2:
            problems.append(f"grid must be >= 2 (both ends of the path), not {self.grid}")
        if not self.delta > 0:
            problems.append(f"delta must be positive, not {self.delta}")
        if self.augment < 0:
            problems.append(f"augment must be >= 0, not {self.augment}")
        if not self.jitter > 0:
            problems.append(f"jitter must be positive, not {self.jitter}")
        problems += self.autoencoder_problems()
        if problems:
            raise ValueError(f"PublicCheckParams: {'; '.join(problems)}")


class LatticeOracle:
    """The only door to the target: a label-only :class:`~misentry.models.oracle.ModuleOracle`
    (it counts every image), asked about images rounded to the 8-bit lattice, so what is
    emitted is what was queried."""

    def __init__(self, target: nn.Module) -> None:
        self.oracle = ModuleOracle(target, batch_size=1 << 16)

    @property
    def queries(self) -> int:
        return self.oracle.queries

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The lattice images of ``x`` and the target's labels of them."""
        pixels = to_pixels(x)
        return to_unit(pixels), self.oracle.labels(pixels)


@dataclass
class _Side:
    """One side of a batch of pairs: latent codes, lattice images and labels, shape (P, ...)."""

    t: torch.Tensor
    z: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor

    def update(self, rows: torch.Tensor, other: _Side) -> None:
        self.t[rows], self.z[rows], self.x[rows], self.y[rows] = other.t, other.z, other.x, other.y


@dataclass
class _Pairs:
    """Pairs located in one round: both sides, the sources, path lengths and queries spent."""

    sources: torch.Tensor  # (P, 2) int64: the path's two source images
    lo: _Side  # the last point with the first endpoint's label (side A)
    hi: _Side  # the first point past the flip (side B)
    length: torch.Tensor  # ||z_b - z_a||, float64
    queries: torch.Tensor  # (P,) int64

    @property
    def distance(self) -> torch.Tensor:
        """The latent length of each bracket, (t_hi - t_lo) * ||z_b - z_a||."""
        return (self.hi.t - self.lo.t) * self.length


@dataclass
class _Jitters:
    """Kept latent jitters of one round: images, labels, and the pair (within the round) and
    side (0 = A, 1 = B) each belongs to."""

    x: torch.Tensor
    pair: torch.Tensor
    side: torch.Tensor
    rejected_label: int
    rejected_duplicate: int


class PublicCheck(Generator):
    """PublicCheck-like encysted samples (method ``publiccheck``).

    Paper: Wang, Abuadbba, Agarwal, Moore, Sun, Xue, Nepal, Camtepe, Kanhere, "PublicCheck:
    Public Integrity Verification for Services of Run-time Deep Models", IEEE S&P 2023. No
    code is public and only the abstract was available; the procedure is our reconstruction
    (``reference/fingerprinting-methods.md``, section 5), "double black-box": no gradient and
    no parameter of the target, top-1 labels only.

    Objective: pairs of samples that straddle the target's decision boundary as closely as the
    latent bracket ``delta`` allows ("encysted" samples), so that a change of the model that
    moves the boundary flips one of them. An autoencoder (:mod:`~misentry.fingerprint.
    autoencoder`) trained on the owner's ``owner_train`` pool gives a smooth image manifold.
    Pairs of source images whose target labels differ are encoded to ``z_a``, ``z_b``; along
    the line ``z(t) = z_a + t (z_b - z_a)`` a ``grid``-point scan finds the first label change,
    and bisection narrows it until ``(t_hi - t_lo) ||z_b - z_a|| <= delta``. The pair is
    ``G(z(t_lo))`` (side A, the first endpoint's decoded label) and ``G(z(t_hi))`` (side B).
    Augmentation: ``augment`` Gaussian latent jitters per side, kept when the target gives them
    their side's label. All pairs of a round move together, one batched query per step.

    Constraints: every image is rounded to the 8-bit lattice before it is queried, so the labels
    that define a side are those of the emitted image; the two members of a pair differ in label
    by construction (bisection keeps ``label(t_lo) = A != label(t_hi)``). The 8-bit rounding
    bounds nothing else: the images lie on the autoencoder's manifold, not near their source.
    Each source image is in at most one pair; a pair's first endpoint is its fingerprints'
    source. Every image sent to the target is counted (``label_queries``).

    Defaults: a 16-point grid; ``delta`` 0.01 latent units (about 1/600 of a path between two
    mnist5k codes, which are about 6.4 apart: 6 halvings of a grid cell, and pair members that
    differ by 1/255 in a few pixels, the lattice's resolution); one jitter per side of scale 0.1
    latent units (distinct from its side's image on the lattice, and about half keep their
    side); a 16-d VAE of 256 hidden units trained 50 epochs (seconds on mnist5k). A pair costs
    2 + 16 + about 6 queries; the grid, not the bisection, is most of it.

    Deviations and choices (the paper's details are unknown): (1) a small MLP VAE, not a GAN
    or StyleGAN, like the VAE of the IBSF authors' code (CGCL-codes/IBSF) for their baselines.
    (2) A straight latent line between two sources of different labels, not a semantic
    direction; pairs are consecutive in a seeded shuffle of the sources, those with equal
    labels dropped (counted). (3) A path whose decoded images never change label is dropped
    (counted); a grid cell that holds several flips yields one of them. (4) Fingerprints are
    filled pairs first, then jitters; rounds of new pairs run until ``n`` are available, and
    generation fails when the sources run out. (5) Jitters equal to their side's image on the
    lattice are dropped before they are queried.

    >>> # PublicCheck(PublicCheckParams()).generate(target, pools["source"], n=100, seed=0,
    >>> #     context=SearchContext(pools=pools))
    """

    name = "publiccheck"
    distinct_sources = False
    params: PublicCheckParams

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        p = self.params
        ae_seed = int(torch.randint(2**31, (1,), generator=generator))
        fit = owner_autoencoder(self.name, p.autoencoder, context, ae_seed)
        oracle = LatticeOracle(target)
        order = draw_sources(sources, len(sources), generator)
        rounds: list[tuple[_Pairs, _Jitters]] = []
        cursor, available, same_label, no_flip = 0, 0, 0, 0
        while available < n:
            want = math.ceil((n - available) / (2 + p.augment))  # half the jitters survive
            take = order[cursor : cursor + 2 * want]
            take = take[: take.numel() // 2 * 2]
            if take.numel() == 0:
                raise GenerationError(
                    f"publiccheck: only {available} of {n} fingerprints from all {len(sources)} "
                    f"source images ({same_label} pairs with equal labels, {no_flip} without a "
                    "label change along the decoded path); ask for fewer, raise augment, or give "
                    "more sources"
                )
            cursor += take.numel()
            _, labels = oracle(sources.x[take])
            pairs = take.view(-1, 2)[labels[0::2] != labels[1::2]]
            same_label += take.numel() // 2 - pairs.shape[0]
            if pairs.shape[0] == 0:
                continue
            located = self._locate(fit.model, oracle, sources.x[pairs.flatten()], pairs)
            no_flip += pairs.shape[0] - located.sources.shape[0]
            located.queries += 2  # the two source labels
            jitters = self._jitter(fit.model, oracle, located, generator)
            rounds.append((located, jitters))
            available += 2 * located.sources.shape[0] + jitters.x.shape[0]
            context.report("boundary search", min(available, n), n)
        x, source, extra = _assemble(rounds, n)
        return (
            x,
            source,
            {
                "label_queries": oracle.queries,
                "label_queries_per_fingerprint": oracle.queries / n,
                **extra,
                "pairs_dropped_same_label": same_label,
                "pairs_dropped_no_flip": no_flip,
                "autoencoder_seed": ae_seed,
                "autoencoder_reconstruction_error": fit.reconstruction_error,
                "autoencoder_seconds": fit.seconds,
            },
        )

    def _locate(
        self, ae: Autoencoder, oracle: LatticeOracle, x: torch.Tensor, pairs: torch.Tensor
    ) -> _Pairs:
        """The first label flip on each pair's latent line, bracketed within ``delta``; pairs
        whose decoded path never changes label are left out. ``x`` holds the pairs' source
        images, a and b interleaved."""
        p = self.params
        with torch.no_grad():
            z = ae.encode(x).double()
        z_a, z_b = z[0::2], z[1::2]
        count = pairs.shape[0]
        t = torch.linspace(0.0, 1.0, p.grid, dtype=torch.float64)
        path = z_a.unsqueeze(1) + t.view(1, -1, 1) * (z_b - z_a).unsqueeze(1)
        images, labels = _observe(ae, oracle, path.flatten(0, 1).float())
        images, labels = images.view(count, p.grid, *x.shape[1:]), labels.view(count, p.grid)
        changed = labels != labels[:, :1]
        keep = changed.any(dim=1).nonzero().squeeze(1)
        first = changed.to(torch.int64).argmax(dim=1)[keep]  # the first True
        rows, z_a, z_b = keep, z_a[keep], z_b[keep]
        lo = _Side(t[first - 1], path[rows, first - 1], images[rows, first - 1], labels[rows, 0])
        hi = _Side(t[first], path[rows, first], images[rows, first], labels[rows, first])
        found = _Pairs(
            sources=pairs[keep],
            lo=lo,
            hi=hi,
            length=(z_b - z_a).norm(dim=1),
            queries=torch.full((keep.numel(),), p.grid, dtype=torch.int64),
        )
        self._bisect(ae, oracle, found, z_a, z_b)
        return found

    def _bisect(
        self,
        ae: Autoencoder,
        oracle: LatticeOracle,
        pairs: _Pairs,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
    ) -> None:
        """Halve every bracket longer than ``delta`` at once, keeping label(lo) = A and
        label(hi) != A, until none is longer."""
        for _ in range(MAX_BISECTIONS):
            active = (pairs.distance > self.params.delta).nonzero().squeeze(1)
            if active.numel() == 0:
                return
            t = (pairs.lo.t[active] + pairs.hi.t[active]) / 2
            z = z_a[active] + t.unsqueeze(1) * (z_b[active] - z_a[active])
            x, y = _observe(ae, oracle, z.float())
            mid = _Side(t, z, x, y)
            pairs.queries[active] += 1
            same = y == pairs.lo.y[active]
            pairs.lo.update(active[same], _select(mid, same))
            pairs.hi.update(active[~same], _select(mid, ~same))

    def _jitter(
        self, ae: Autoencoder, oracle: LatticeOracle, pairs: _Pairs, generator: torch.Generator
    ) -> _Jitters:
        """``augment`` Gaussian latent jitters per side, in (jitter, pair, side) order; those
        equal to their side's image on the lattice are dropped unqueried, those whose label
        leaves their side after the query."""
        p = self.params
        count = pairs.sources.shape[0]
        centers = torch.stack([pairs.lo.z, pairs.hi.z], dim=1)  # (P, 2, d)
        noise = torch.randn((p.augment, *centers.shape), generator=generator, dtype=torch.float64)
        z = (centers.unsqueeze(0) + p.jitter * noise).flatten(0, 2)
        pair = torch.arange(count).view(1, -1, 1).expand(p.augment, count, 2).flatten()
        side = torch.tensor([0, 1]).view(1, 1, 2).expand(p.augment, count, 2).flatten()
        own_x = torch.stack([pairs.lo.x, pairs.hi.x], dim=1)[pair, side]
        own_y = torch.stack([pairs.lo.y, pairs.hi.y], dim=1)[pair, side]
        with torch.no_grad():
            x = on_lattice(ae.decode(z.float()))
        fresh = (x != own_x).flatten(1).any(dim=1)
        x, pair, side, own_y = x[fresh], pair[fresh], side[fresh], own_y[fresh]
        _, y = oracle(x)
        kept = y == own_y
        return _Jitters(
            x=x[kept],
            pair=pair[kept],
            side=side[kept],
            rejected_label=int((~kept).sum()),
            rejected_duplicate=int((~fresh).sum()),
        )


def _observe(
    ae: Autoencoder, oracle: LatticeOracle, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode latent codes, round to the lattice and query: (images, labels)."""
    with torch.no_grad():
        x = ae.decode(z)
    return oracle(x)


def _select(side: _Side, rows: torch.Tensor) -> _Side:
    return _Side(side.t[rows], side.z[rows], side.x[rows], side.y[rows])


def _assemble(
    rounds: list[tuple[_Pairs, _Jitters]], n: int
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The first ``n`` of: every round's pair members (A then B, pair by pair), then every
    round's kept jitters; their sources, and the manifest entries of fingerprints and pairs."""
    pairs = [located for located, _ in rounds]
    starts = [0]
    for located in pairs:
        starts.append(starts[-1] + located.sources.shape[0])
    images, source, pair_id, side, kind, queries = [], [], [], [], [], []
    for located, start in zip(pairs, starts[:-1], strict=True):
        count = located.sources.shape[0]
        images.append(torch.stack([located.lo.x, located.hi.x], dim=1).flatten(0, 1))
        source.append(located.sources[:, 0].repeat_interleave(2))
        pair_id.append(torch.arange(start, start + count).repeat_interleave(2))
        side.append(torch.tensor([0, 1]).repeat(count))
        queries.append(located.queries.repeat_interleave(2))
        kind += ["pair"] * (2 * count)
    for (located, jitters), start in zip(rounds, starts[:-1], strict=True):
        images.append(jitters.x)
        source.append(located.sources[jitters.pair, 0])
        pair_id.append(jitters.pair + start)
        side.append(jitters.side)
        queries.append(torch.ones_like(jitters.pair))
        kind += ["jitter"] * jitters.x.shape[0]
    extra = {
        "fingerprint_pair": torch.cat(pair_id)[:n].tolist(),
        "fingerprint_side": ["AB"[s] for s in torch.cat(side)[:n].tolist()],
        "fingerprint_kind": kind[:n],
        "fingerprint_queries": torch.cat(queries)[:n].tolist(),
        "pairs": starts[-1],
        "pair_sources": torch.cat([q.sources for q in pairs]).tolist(),
        "pair_labels": torch.cat([torch.stack([q.lo.y, q.hi.y], 1) for q in pairs]).tolist(),
        "pair_t": torch.cat([torch.stack([q.lo.t, q.hi.t], 1) for q in pairs]).tolist(),
        "pair_latent_distance": torch.cat([q.distance for q in pairs]).tolist(),
        "pair_path_length": torch.cat([q.length for q in pairs]).tolist(),
        "pair_queries": torch.cat([q.queries for q in pairs]).tolist(),
        "jitters_rejected_label": sum(j.rejected_label for _, j in rounds),
        "jitters_rejected_duplicate": sum(j.rejected_duplicate for _, j in rounds),
    }
    return torch.cat(images)[:n], torch.cat(source)[:n], extra
