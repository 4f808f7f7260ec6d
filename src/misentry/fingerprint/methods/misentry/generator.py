"""MiSentry: fingerprints from a representative model zoo and meta-learning (the founding paper,
section 4), with a strict and a covert profile.

The pipeline, batched over every candidate at once:

1. **Zoo** (:mod:`misentry.fingerprint.methods.misentry.zoo`): subtly tampered copies of the
   target built with the BIVBench recipes in the ``zoo`` namespace, from the owner's held-out
   ``val`` pool. One part drives the search (meta-learning), a disjoint held-out part ranks the
   candidates (screening).
2. **Search**: projected gradient descent from natural sources, L-inf or L2, in the MGAA way:
   each outer iteration samples meta-train models and one held-out meta-test model, takes inner
   steps on the meta-train models, and applies only the meta-test step's displacement.
3. **Lattice refinement**: the images are rounded to 8 bits, then greedy single-pixel +-1/255
   moves, chosen by a linear prediction and checked exactly, pull the target's margins back into
   the profile's window; a fingerprint survives being stored as a PNG by construction.
4. **Screening** (our addition): of ``pool_factor`` x n candidates, drop any whose target label
   changes under a benign re-deployment (batch size, threads, float64, channels-last), then keep
   the n that the held-out zoo disagrees with most, spread over classes and source images.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from misentry.data import ImageSet
from misentry.fingerprint.base import (
    GenerationError,
    Generator,
    PassCount,
    SearchContext,
    count_passes,
)
from misentry.fingerprint.methods.misentry.zoo import ZooMember, ZooModel, build_zoo, zoo_summary
from misentry.fingerprint.stats import entropy
from misentry.models import logits
from misentry.models.pgd import project_ball, random_delta
from misentry.models.train import evaluation

Norm = Literal["linf", "l2"]
Distinguish = Literal["margin", "kl"]

PROFILES: dict[str, dict[str, Any]] = {
    "strict": {"covertness": 0.0, "tie_classes": 3},
    "covert": {"covertness": 1.0, "tie_classes": 5},
}
"""The two named profiles: parameter overrides of :class:`MisentryParams`."""

BELOW_FLOOR_WEIGHT = 10.0
"""Weight of a margin below the window's floor against one above its ceiling: a margin under the
floor risks a benign label change, so it is pulled back first."""

GROUP_SIZES = (2, 4, 8, 16, 32, 64, 128)
"""Pixel counts of the refinement's group moves (coarse steps far from the window)."""

NEWTON_SCALES = (1.0, 0.5, 0.25)
"""Fractions of the refinement's least-norm (Newton) pixel change that are tried."""

BENIGN_BATCH_SIZES = (1, 2, 3, 7, 16, 31, 64, 100, 128, 255, 256)
"""Batch sizes of the benign re-deployment check (with the whole pool at once)."""


@dataclass(frozen=True)
class MisentryParams:
    """Attributes:
    covertness: where on the covertness/sensitivity curve the fingerprints sit, in [0, 1].
        Each fingerprint's target margins (top-1 logit minus the other tied classes') are
        pulled into a window ``[lo, hi]``, interpolated on a log scale between the strict
        window ``[floor, ceiling]`` (0) and the band of normal samples of the same label,
        ``[10th, 90th]`` percentile of their margins (1). At 1 the fingerprint's entropy and
        confidence must also lie in the normal [10th, 90th] band of its label (the paper's).
    tie_classes: how many top classes are tied within the window (2: the top-1 against the
        runner-up only; 3 or more: a point where that many decision boundaries meet).
    tie_growth: the j-th tied runner-up's upper edge is ``hi * tie_growth ** (j - 1)``: with
        growth above 1 the farther tied classes may sit a little farther away, which is easier
        to reach on the 8-bit lattice and still catches changes larger than that.
    floor: the strict window's lower edge, in logits: a fingerprint's margins never go below
        it, so float32 noise (about 1e-6 here) cannot change the label.
    ceiling: the strict window's upper edge, in logits: a tampering that moves the margin by
        more than this at the fingerprint flips its label.
    norm, eps: the distance bound to the source (L-inf or L2, [0, 1] pixel units).
    steps: outer iterations of the search.
    inner_steps: meta-train steps per outer iteration (K).
    task_models: meta-train models per task (n); one more is the meta-test model.
    step_size: the first outer step (per pixel for L-inf, L2 length for L2); it decays on a
        cosine to 5 % of itself. None: ``eps / 8``.
    balance: weight of the zoo's (distinguishability) direction against the window's.
    distinguish: ``"margin"`` (default): the zoo's change of the target label's margin over
        the tied classes, scale-normalized; ``"kl"``: the paper's literal ``-KL(F_p || F_r)``.
    zoo: zoo members (``kind[:lr][xEPOCHS]``, see :class:`ZooMember`); empty: zoo-free
        margin descent (ablation).
    zoo_replicates: models of each member in the meta-learning zoo.
    screening_replicates: models of each member in the held-out screening zoo.
    meta_learning: False: plain ensemble PGD over the whole zoo at every step (ablation).
    band: False: no window (ablation "entropy band off"); only the zoo term moves the samples.
    screening: False: exactly n candidates, no ranking and no re-deployment drop (ablation).
    screen_votes: rank in-window candidates by how many held-out zoo models they flip
        (False: by the tightest tie only).
    class_floor: every class gets at least this share of its fair count (n / classes) of
        fingerprint labels, as far as the candidates allow (0: no floor, 1: fully balanced).
    pool_factor: candidates per fingerprint when screening (at most two per source image).
    refine_rounds: single-pixel refinement rounds after rounding.
    refine_moves: single-pixel moves checked exactly per round and sample (group moves of
        2 to 128 pixels along the cost's slope are checked too).
    newton_moves: also try least-norm (Newton) multi-pixel moves towards the window's middle;
        they reach the window more often but measured a lower detection rate on the
        validation instances (mean DR@1 0.666 against 0.718), so they are off by default.
    """

    covertness: float = 0.0
    tie_classes: int = 3
    tie_growth: float = 1.0
    floor: float = 2e-5
    ceiling: float = 2e-4
    norm: Norm = "linf"
    eps: float = 32 / 255
    steps: int = 60
    inner_steps: int = 3
    task_models: int = 2
    step_size: float | None = None
    balance: float = 1.0
    distinguish: Distinguish = "margin"
    zoo: tuple[str, ...] = ("ft_last:1e-4x4", "ft_all:1e-5x4", "ft_all:1e-4x4", "retrain_last")
    zoo_replicates: int = 2
    screening_replicates: int = 1
    meta_learning: bool = True
    band: bool = True
    screening: bool = True
    screen_votes: bool = True
    class_floor: float = 0.5
    pool_factor: int = 5
    refine_rounds: int = 80
    refine_moves: int = 16
    newton_moves: bool = False
    members: tuple[ZooMember, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.covertness <= 1.0:
            problems.append("covertness must be in [0, 1]")
        if self.tie_classes < 2 or self.tie_growth < 1:
            problems.append("tie_classes must be at least 2 and tie_growth at least 1")
        if not 0 < self.floor < self.ceiling:
            problems.append("need 0 < floor < ceiling")
        if self.norm not in ("linf", "l2"):
            problems.append("norm must be 'linf' or 'l2'")
        if self.distinguish not in ("margin", "kl"):
            problems.append("distinguish must be 'margin' or 'kl'")
        if not self.eps > 0 or self.steps < 1 or self.inner_steps < 1 or self.task_models < 1:
            problems.append("eps must be positive; steps, inner_steps, task_models >= 1")
        if self.step_size is not None and self.step_size <= 0:
            problems.append("step_size must be positive")
        if not 0 <= self.class_floor <= 1:
            problems.append("class_floor must be in [0, 1]")
        if self.pool_factor < 1 or self.refine_rounds < 0 or self.refine_moves < 1:
            problems.append("pool_factor, refine_moves >= 1 and refine_rounds >= 0")
        if self.zoo and (self.zoo_replicates < 1 or self.screening_replicates < 0):
            problems.append("zoo_replicates >= 1 and screening_replicates >= 0")
        if not self.band and not self.zoo:
            problems.append("band=False needs a zoo (nothing else moves the samples)")
        if self.meta_learning and self.zoo and self.zoo_replicates * len(self.zoo) < 2:
            problems.append("meta-learning needs at least 2 zoo models")
        if problems:
            raise ValueError(f"MisentryParams: {'; '.join(problems)}: {self}")
        object.__setattr__(self, "members", tuple(ZooMember.parse(m) for m in self.zoo))

    @property
    def first_step(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 8


@dataclass
class _Window:
    """Per-class margin window ``[lo, hi]`` and, at covertness 1, the entropy and confidence
    bands of normal samples."""

    lo: torch.Tensor
    hi: torch.Tensor
    growth: torch.Tensor
    entropy_band: torch.Tensor | None = None
    confidence_band: torch.Tensor | None = None

    def upper(self, labels: torch.Tensor) -> torch.Tensor:
        """The upper edges for the tied runners-up of each label, shape (N, k - 1)."""
        return self.hi[labels].unsqueeze(1) * self.growth

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
            "growth": [g if math.isfinite(g) else None for g in self.growth.tolist()],
        }
        if self.entropy_band is not None and self.confidence_band is not None:
            out["entropy_band"] = self.entropy_band.tolist()
            out["confidence_band"] = self.confidence_band.tolist()
        return out


class Misentry(Generator):
    """MiSentry (method ``misentry``; profile ``strict`` by default, ``covert`` on request).

    Paper: Bai et al., "Black-box integrity verification of deep learning models" (the founding
    paper of this project, section 4): PGD from natural images against a zoo of subtly tampered
    models with MGAA meta-learning (Yuan et al., ICCV 2021), loss ``-KL(F_p || F_r)`` plus
    entropy terms that keep the prediction entropy inside the band of normal samples.

    **Objective, as implemented.** The literal loss ``-KL + lambda * H`` does not work: the
    entropy term's gradient is orders of magnitude larger than the KL's for subtly tampered zoo
    models (their logits differ from the target's by about 1e-3), so the sum drives entropy and
    ignores the zoo. Here the entropy terms are read as what they are for, a *constraint*: the
    target's margins (top-1 logit minus each of the other ``tie_classes - 1`` top logits) must
    lie in a window ``[lo, hi]``, and the step direction is the L2-normalized gradient of the
    window violation (a hinge, zero inside the window) plus ``balance`` times the L2-normalized
    gradient of the distinguishability term. Normalizing each gradient separately is what keeps
    either from drowning the other. The distinguishability term is the zoo model's change of the
    target label's margin over the tied classes, divided by that model's typical change on
    normal images (``distinguish="margin"``, default), because between two near-tie predictions
    KL is about (change)^2 / 8: blind to the sign, so it cannot choose the side of the boundary
    that tampering crosses; ``distinguish="kl"`` keeps the paper's term for the ablation.

    **Profiles** (``covertness``, one parameter): ``strict`` (0, default for integrity checks)
    puts ``tie_classes`` = 3 classes within ``[floor, ceiling]`` = [2e-5, 2e-4] logit of each
    other, at a point where three decision boundaries meet: a tampering that moves the logits
    there by more than the ceiling flips the label unless it happens to favour the top class
    over both others, so about 2/3 of such fingerprints flip whichever way the change goes (a
    two-class boundary point flips for one direction only: 1/2). Among the tied classes the zoo
    chooses the top one: the class the zoo lowers most, with every class keeping at least half
    its fair share of labels (``class_floor``). Two limits follow, and they are measured, not
    hidden: without the zoo's direction the share of flipped fingerprints tends to 2/3, and a
    tampering that only lowers one class's logit (a bit flip in one row of the output layer)
    can flip only the fingerprints labelled with that class, whatever method made them.

    ``covert`` (1, the paper's setting) keeps each fingerprint's margin, entropy and
    confidence inside the [10th, 90th] percentile band of normal samples of its label (the
    owner's ``val`` pool) and maximizes the zoo's change within it, preferring, among the
    candidates in the band, those whose top five logits are closest (on the validation
    instances ``tie_classes`` 2, 3, 5 and 10 gave a mean DR@5 of 0.272, 0.269, 0.334 and
    0.323); such fingerprints look like normal queries and, as measured, catch only the larger
    tamperings.
    Values in between interpolate the window on a log scale.

    Constraints: ``||x - x0||_p <= eps`` (L-inf 32/255 by default, or L2), pixels in [0, 1],
    8-bit lattice; the target's label is the fingerprint's expected label.

    Defaults: L-inf 32/255; 60 outer iterations of 3 meta-train steps on 2 models plus one
    meta-test step, first step eps/8 with cosine decay; zoo of ft_last 1e-4, ft_all 1e-5, ft_all
    1e-4 (4 epochs on val) and retrain_last, 2 models each for meta-learning and 1 each held out
    for screening; 5 candidates per fingerprint (at most 2 per source image); 80 refinement
    rounds. These were chosen on validation instances (namespace ``tune``), never on the
    instances a reported table uses: 4 tied classes, a graded 4-class window, Newton
    refinement moves, 120 rounds and screening without votes all measured worse or no better.
    Zoo size: 1, 2 and 3 models per recipe gave a worst-variant DR@1 of 0.522, 0.605 and 0.583
    (mean 0.619, 0.697, 0.706); 3 costs half as much zoo again for no gain in the worst case.
    A class floor of 1 (every class exactly its fair share) lowered the worst DR@1 to 0.457.

    Deviations: no momentum or input diversity (MGAA's transfer tricks target other
    architectures, not tampered copies); the step decays instead of ``T * b = eps``; the
    refinement and the screening are our additions, each behind a switch (``refine_rounds=0``,
    ``screening=False``), as are ``meta_learning=False`` (plain ensemble PGD) and ``zoo=()``
    (zoo-free margin descent).

    >>> # Misentry(MisentryParams()).generate(target, pools["source"], 100, seed=0,
    >>> #     context=SearchContext(pools=pools, record=record))
    """

    name = "misentry"
    params: MisentryParams

    def distance_bound(self) -> tuple[str, float]:
        return (self.params.norm, self.params.eps)

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> Misentry:
        """The generator of profile ``name`` (``strict`` or ``covert``) with overrides."""
        if name not in PROFILES:
            raise KeyError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
        return cls(MisentryParams(**{**PROFILES[name], **overrides}))

    @property
    def profile_name(self) -> str:
        """``strict`` at covertness 0, ``covert`` at 1, else ``covertness=VALUE``."""
        for name, values in PROFILES.items():
            if self.params.covertness == values["covertness"]:
                return name
        return f"covertness={self.params.covertness:g}"

    def _search(
        self,
        target: nn.Module,
        sources: ImageSet,
        n: int,
        generator: torch.Generator,
        context: SearchContext,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        p = self.params
        if context.pools is None or context.record is None:
            raise GenerationError(
                "misentry needs the owner's pools and the target's record (its zoo and its "
                "normal band come from the held-out val pool): pass SearchContext(pools=..., "
                "record=...)"
            )
        val = context.pools["val"]
        meta_zoo, screen_zoo = self._zoo(target, context)
        count = n * p.pool_factor if p.screening else n
        if count > 2 * len(sources) and p.screening:
            count = max(n, 2 * len(sources))
        index, starts = _candidates(sources, count, p, generator)
        zoo_passes = [PassCount() for _ in meta_zoo + screen_zoo]
        with evaluation(target), ExitStack() as stack:
            for i, m in enumerate(meta_zoo + screen_zoo):
                zoo_passes[i] = stack.enter_context(count_passes(m.model))
            window = self._window(target, val)
            scales = _change_scales(target, meta_zoo, val.x)
            x = self._descend(target, meta_zoo, scales, starts, sources.x[index], window, context)
            winners, ties = self._choose(target, meta_zoo, scales, x)
            pixels, refine = self._refine(
                target, x, sources.x[index], winners, ties, window, context
            )
            x = pixels.float() / 255
            reverted = 0
            if window.entropy_band is not None:
                x, winners, ties, reverted = _revert_to_sources(
                    target, x, sources.x[index], winners, ties, window
                )
            chosen, screen = self._screen(
                target, screen_zoo, x, index, winners, ties, window, n, context
            )
        extra = {
            "profile": self.profile_name,
            "window": window.to_json(),
            "zoo": zoo_summary(meta_zoo),
            "screening_zoo": zoo_summary(screen_zoo),
            "zoo_seconds": sum(m.seconds for m in meta_zoo + screen_zoo),
            # built beforehand and loaded: their build time is not in generation_seconds
            "zoo_prebuilt_seconds": sum(m.seconds for m in meta_zoo + screen_zoo if m.loaded),
            "zoo_forward_passes": sum(c.forward for c in zoo_passes),
            "zoo_backward_passes": sum(c.backward for c in zoo_passes),
            "candidates": count,
            "refinement": refine,
            "screening": screen,
            "reverted_to_source": reverted,
        }
        return x[chosen], index[chosen], extra

    # -- zoo and window --------------------------------------------------------------------

    def _zoo(
        self, target: nn.Module, context: SearchContext
    ) -> tuple[list[ZooModel], list[ZooModel]]:
        p = self.params
        if not p.members:
            return [], []
        assert context.pools is not None
        assert context.record is not None
        total = len(p.members) * (p.zoo_replicates + (p.screening_replicates if p.screening else 0))
        built: list[ZooModel] = []

        def on_model(model: ZooModel) -> None:
            built.append(model)
            context.report("zoo", len(built), total)

        context.report("zoo", 0, total)
        meta = build_zoo(
            target,
            context.record,
            context.pools,
            p.members,
            p.zoo_replicates,
            0,
            on_model,
            context.zoo,
        )
        screen = (
            build_zoo(
                target,
                context.record,
                context.pools,
                p.members,
                p.screening_replicates,
                p.zoo_replicates,
                on_model,
                context.zoo,
            )
            if p.screening
            else []
        )
        return meta, screen

    def _window(self, target: nn.Module, normal: ImageSet) -> _Window:
        """Per-class margin window for this covertness, from the target on normal images."""
        p = self.params
        bands = normal_bands(target, normal.x)
        c = p.covertness
        lo = math.log(p.floor) * (1 - c) + bands["margin"][:, 0].clamp_min(p.floor).log() * c
        hi = math.log(p.ceiling) * (1 - c) + bands["margin"][:, 1].clamp_min(p.ceiling).log() * c
        k = min(p.tie_classes, int(bands["margin"].shape[0]))
        growth = p.tie_growth ** torch.arange(k - 1, dtype=torch.float32)
        if c >= 1.0:  # covert: the band bounds the top-1 margin; farther tied classes only rank
            growth[1:] = math.inf
        window = _Window(lo.exp().float(), hi.exp().float(), growth)
        if c >= 1.0:
            window.entropy_band = bands["entropy"]
            window.confidence_band = bands["confidence"]
        return window

    # -- search ------------------------------------------------------------------------------

    def _descend(
        self,
        target: nn.Module,
        zoo: list[ZooModel],
        scales: torch.Tensor,
        starts: torch.Tensor,
        x0: torch.Tensor,
        window: _Window,
        context: SearchContext,
    ) -> torch.Tensor:
        """The meta-learning PGD loop, all candidates at once."""
        p = self.params
        x = starts
        rng = torch.Generator().manual_seed(0)
        for t in range(p.steps):
            size = p.first_step * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t / p.steps)))
            if zoo and p.meta_learning:
                order = torch.randperm(len(zoo), generator=rng).tolist()
                picked = order[: min(p.task_models + 1, len(zoo))]
                train, test = picked[:-1], picked[-1:]
                xj = x
                for _ in range(p.inner_steps):
                    d = self._direction(target, [zoo[i] for i in train], scales[train], xj, window)
                    xj = self._project(xj - size * _steepest(d, p.norm), x0)
                d = self._direction(target, [zoo[i] for i in test], scales[test], xj, window)
                x = self._project(x - size * _steepest(d, p.norm), x0)
            else:
                d = self._direction(target, zoo, scales, x, window)
                x = self._project(x - size * _steepest(d, p.norm), x0)
            context.report("search", t + 1, p.steps)
        return x

    def _direction(
        self,
        target: nn.Module,
        zoo: list[ZooModel],
        scales: torch.Tensor,
        x: torch.Tensor,
        window: _Window,
    ) -> torch.Tensor:
        """Normalized window-violation gradient plus ``balance`` x normalized zoo gradient."""
        p = self.params
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
                terms.append((p.balance, self._distinguish(z, zoo, scales, xg, top).sum()))
            total = torch.zeros_like(x)
            for weight, term in terms:
                (grad,) = torch.autograd.grad(term, xg, retain_graph=True, allow_unused=True)
                if grad is not None:
                    total = total + weight * _unit(grad)
        return total

    def _distinguish(
        self,
        z: torch.Tensor,
        zoo: list[ZooModel],
        scales: torch.Tensor,
        x: torch.Tensor,
        top: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample loss whose descent makes the zoo disagree with the target."""
        if self.params.distinguish == "kl":
            log_p = z.log_softmax(1)
            kl = torch.stack(
                [(log_p.exp() * (log_p - m.model(x).log_softmax(1))).sum(1) for m in zoo]
            )
            return -kl.mean(0)
        changes = torch.stack([(m.model(x) - z) / s for m, s in zip(zoo, scales, strict=True)])
        index = top.unsqueeze(0).expand(len(zoo), -1, -1)
        picked = changes.gather(2, index)
        return (picked[:, :, :1] - picked[:, :, 1:]).mean(2).mean(0)

    def _project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return project_ball(x, x0, self.params.eps, self.params.norm)

    def _choose(
        self, target: nn.Module, zoo: list[ZooModel], scales: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each candidate's tied classes and, among them, the one to keep on top.

        The zoo ranks the tied classes by how much it lowers them (the target's order without a
        zoo) and its favourite wins, except that every class keeps at least ``class_floor``
        times its fair share of winners: a tampering that only lowers one class's logit flips
        only fingerprints whose label is that class, so a set with no fingerprint of some
        class misses it entirely. The least clear preferences give way first.
        """
        p = self.params
        with torch.no_grad():
            z = target(x)
            k = min(p.tie_classes, z.shape[1])
            top = z.topk(k, dim=1).indices
            if zoo:
                change = torch.stack(
                    [(m.model(x) - z) / s for m, s in zip(zoo, scales, strict=True)]
                )
                score = change.mean(0).gather(1, top)
            else:
                score = -z.gather(1, top)
        ranked, order = score.sort(dim=1)
        preference = top.gather(1, order)
        clarity = ranked[:, 1] - ranked[:, 0]
        winner = preference[:, 0].clone()
        classes = int(z.shape[1])
        least = math.ceil(p.class_floor * len(x) / classes)
        counts = torch.bincount(winner, minlength=classes)
        for c in range(classes):
            # the least clear preferences give way first, never below another class's floor
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
        return winner, top

    # -- lattice refinement --------------------------------------------------------------

    def _refine(
        self,
        target: nn.Module,
        x: torch.Tensor,
        x0: torch.Tensor,
        winners: torch.Tensor,
        ties: torch.Tensor,
        window: _Window,
        context: SearchContext,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Round to 8 bits, then greedy moves into the margin window: each round, the single-pixel
        moves with the best linear prediction and group moves of 2 to 128 pixels along the
        cost's slope (and, with ``newton_moves``, least-norm moves) are checked exactly, and
        the best improving one is kept."""
        p = self.params
        base = (x0 * 255).round()
        pixels = base + ((x - x0) * 255).round()
        if p.norm == "l2" and bool(((pixels - base).flatten(1).norm(dim=1) > p.eps * 255).any()):
            pixels = base + ((x - x0) * 255).trunc()
        pixels = pixels.clamp(0, 255)
        radius = math.floor(p.eps * 255 + 1e-6)
        others = _others(winners, ties)
        lo = window.lo[winners].unsqueeze(1)
        hi = window.upper(winners)
        n, shape = x.shape[0], x.shape[1:]
        dims = int(torch.tensor(shape).prod())
        moves = min(p.refine_moves, 2 * dims)

        def violation(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            top = z.gather(1, winners[rows].unsqueeze(1))
            tied = top - z.gather(1, others[rows])
            every = top - z
            every = every.scatter(1, winners[rows].unsqueeze(1), math.inf)
            return (
                F.relu(tied - hi[rows]).sum(1)
                + BELOW_FLOOR_WEIGHT * F.relu(lo[rows] - tied).sum(1)
                + BELOW_FLOOR_WEIGHT * F.relu(lo[rows, :1] - every).sum(1)
            )

        rows_all = torch.arange(n)
        with torch.no_grad():
            current = violation(target(pixels / 255), rows_all)
        start_ok = int((current == 0).sum())
        taken = torch.zeros(n, dtype=torch.long)
        stuck = torch.zeros(n, dtype=torch.bool)
        for round_ in range(p.refine_rounds):
            rows = ((current > 0) & ~stuck).nonzero().squeeze(1)
            context.report("refine", round_ + 1, p.refine_rounds)
            if rows.numel() == 0:
                break
            xr = (pixels[rows] / 255).requires_grad_(True)
            with torch.enable_grad():
                z = target(xr)
                top = z.gather(1, winners[rows].unsqueeze(1))
                tied = top - z.gather(1, others[rows])
                jac = torch.stack(
                    [
                        torch.autograd.grad(tied[:, j].sum(), xr, retain_graph=True)[0].flatten(1)
                        for j in range(tied.shape[1])
                    ],
                    dim=1,
                )  # (rows, k-1, D)
            tied = tied.detach()
            flat = pixels[rows].flatten(1)
            start = base[rows].flatten(1)
            predicted = []
            for sign in (1.0, -1.0):
                moved = flat + sign
                feasible = (moved >= 0) & (moved <= 255)
                if p.norm == "linf":
                    feasible &= (moved - start).abs() <= radius
                else:
                    dist2 = (flat - start).pow(2).sum(1, keepdim=True)
                    new2 = dist2 - (flat - start).pow(2) + (moved - start).pow(2)
                    feasible &= new2 <= (p.eps * 255) ** 2 + 1e-6
                gaps = tied.unsqueeze(2) + jac * (sign / 255)
                cost = F.relu(gaps - hi[rows].unsqueeze(2)).sum(1) + BELOW_FLOOR_WEIGHT * F.relu(
                    lo[rows].unsqueeze(2) - gaps
                ).sum(1)
                predicted.append(torch.where(feasible, cost, torch.full_like(cost, math.inf)))
            costs = torch.cat(predicted, dim=1)  # (rows, 2D): +1 moves, then -1 moves
            best = costs.topk(moves, dim=1, largest=False).indices
            pixel = best % dims
            direction = 1.0 - 2.0 * (best >= dims).float()
            trial = flat.unsqueeze(1).repeat(1, moves, 1)
            trial.scatter_add_(2, pixel.unsqueeze(2), direction.unsqueeze(2))
            valid = costs.gather(1, best).isfinite()
            # Group moves: the j pixels with the largest predicted effect along the cost's
            # slope, each moved one step its own way, for j = 2, 4, ... (coarse-to-fine).
            slope = (tied > hi[rows]).float() - BELOW_FLOOR_WEIGHT * (tied < lo[rows]).float()
            effect = (slope.unsqueeze(2) * jac).sum(1)  # d cost / d pixel, (rows, D)
            step = -effect.sign()
            moved = flat + step
            ok = (moved >= 0) & (moved <= 255) & (effect != 0)
            if p.norm == "linf":
                ok &= (moved - start).abs() <= radius
            ranked = torch.where(ok, effect.abs(), torch.full_like(effect, -1.0))
            order = ranked.argsort(dim=1, descending=True)
            groups = [j for j in GROUP_SIZES if j <= dims]
            extra = flat.unsqueeze(1).repeat(1, len(groups), 1)
            for g_i, j in enumerate(groups):
                cols = order[:, :j]
                usable = ranked.gather(1, cols) > 0
                extra[:, g_i].scatter_add_(1, cols, step.gather(1, cols) * usable.float())
            fits = _fits(extra, start, p)
            trial = torch.cat([trial, extra], dim=1)
            valid = torch.cat([valid, fits], dim=1)
            if p.newton_moves:
                newton = _newton_moves(jac, tied, (lo[rows] * hi[rows]).sqrt(), flat, start, p)
                trial = torch.cat([trial, newton], dim=1)
                valid = torch.cat([valid, _fits(newton, start, p)], dim=1)
            tries = trial.shape[1]
            with torch.no_grad():
                z_trial = target((trial / 255).view(-1, *shape))
                cost = violation(z_trial, rows.repeat_interleave(tries)).view(-1, tries)
            cost = torch.where(valid, cost, torch.full_like(cost, math.inf))
            new, pick = cost.min(1)
            better = new < current[rows]
            chosen = trial[torch.arange(rows.numel()), pick].view(-1, *shape)
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

    # -- screening ---------------------------------------------------------------------------

    def _screen(
        self,
        target: nn.Module,
        zoo: list[ZooModel],
        x: torch.Tensor,
        index: torch.Tensor,
        winners: torch.Tensor,
        ties: torch.Tensor,
        window: _Window,
        n: int,
        context: SearchContext,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Keep ``n`` candidates: stable under benign re-deployment, most disagreed with by
        the held-out zoo, spread over classes and sources."""
        p = self.params
        context.report("screen", 0, 1)
        reference = logits(target, x, batch_size=len(x))
        labels = reference.argmax(1)
        stable = benign_stable(target, x, labels)
        in_window = _in_window(reference, winners, ties, window)
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
        others = _others(labels, ties)
        gaps = reference.gather(1, labels.unsqueeze(1)) - reference.gather(1, others)
        spread = gaps.abs().max(1).values
        second = reference.topk(2, dim=1).values
        safe = (second[:, 0] - second[:, 1]) >= window.lo[labels]
        # Sort: in the window first, then clear of the floor, then held-out zoo votes, then the
        # tightest tie.
        key = (
            in_window.double() * 1e9
            + safe.double() * 1e6
            + votes.double() * (1e3 if p.screen_votes else 0.0)
            - spread.double().clamp(max=999)
        )
        usable = stable.clone()
        if int(usable.sum()) < n:
            raise GenerationError(
                f"misentry: only {int(usable.sum())} of {len(x)} candidates are stable under "
                f"benign re-deployment, {n} needed; raise pool_factor or give more sources"
            )
        order = sorted(usable.nonzero().squeeze(1).tolist(), key=lambda i: -float(key[i]))
        good = [i for i in order if bool(in_window[i])]
        rest = [i for i in order if not bool(in_window[i])]
        if window.entropy_band is not None:  # covert: nothing outside the band, ever
            if len(good) < n:
                raise GenerationError(
                    f"misentry: only {len(good)} of {len(x)} candidates lie inside the normal "
                    f"band, {n} needed; raise pool_factor or give more sources"
                )
            rest = []
        stages = [
            (good, "floor"),
            (rest, "floor"),
            (good, "source"),
            (good, "any"),
            (rest, "any"),
        ]
        classes = int(reference.shape[1])
        least = math.ceil(p.class_floor * n / classes)
        chosen = _spread(stages, labels, index, n, classes, least)
        summary.update(
            {
                "kept_in_window": int(in_window[chosen].sum()),
                "kept_mean_votes": float(votes[chosen].double().mean()),
                "screening_zoo_models": len(zoo),
            }
        )
        context.report("screen", 1, 1)
        return torch.tensor(chosen, dtype=torch.long), summary


# -- helpers ----------------------------------------------------------------------------------


def _candidates(
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


def _newton_moves(
    jac: torch.Tensor,
    gaps: torch.Tensor,
    aim: torch.Tensor,
    flat: torch.Tensor,
    start: torch.Tensor,
    p: MisentryParams,
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


def _fits(trials: torch.Tensor, start: torch.Tensor, p: MisentryParams) -> torch.Tensor:
    """Whether each trial (rows, T, D) of pixel values stays in the L2 ball (L-inf trials are
    built inside their box)."""
    if p.norm == "l2":
        inside: torch.Tensor = (trials - start.unsqueeze(1)).norm(dim=2) <= p.eps * 255 + 1e-6
        return inside
    return torch.ones(trials.shape[:2], dtype=torch.bool)


def _unit(grad: torch.Tensor) -> torch.Tensor:
    size = grad.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *([1] * (grad.dim() - 1)))
    unit: torch.Tensor = grad / size
    return unit


def _steepest(direction: torch.Tensor, norm: Norm) -> torch.Tensor:
    return direction.sign() if norm == "linf" else _unit(direction)


def _change_scales(target: nn.Module, zoo: list[ZooModel], x: torch.Tensor) -> torch.Tensor:
    """Each zoo model's typical largest logit change on normal images (median)."""
    if not zoo:
        return torch.ones(0)
    with torch.no_grad():
        base = target(x)
        return torch.stack(
            [(m.model(x) - base).abs().max(1).values.median().clamp_min(1e-8) for m in zoo]
        )


def _others(winners: torch.Tensor, ties: torch.Tensor) -> torch.Tensor:
    """The tied classes other than each row's winner, shape (N, k - 1)."""
    keep = ties != winners.unsqueeze(1)
    keep[:, -1] &= ~keep.all(1)  # a winner outside the tie: drop the last tied class instead
    return ties[keep].view(ties.shape[0], -1)


def _in_window(
    z: torch.Tensor, winners: torch.Tensor, ties: torch.Tensor, window: _Window
) -> torch.Tensor:
    """Whether each row's label is its winner with the margins in the window (and, at
    covertness 1, its entropy and confidence in the normal bands)."""
    labels = z.argmax(1)
    inside = (labels == winners) & _within(z, labels, ties, window)
    if window.entropy_band is not None and window.confidence_band is not None:
        probs = z.softmax(1).double()
        inside &= _inside(entropy(probs), window.entropy_band[labels])
        inside &= _inside(probs.max(1).values, window.confidence_band[labels])
    return inside


def _revert_to_sources(
    target: nn.Module,
    x: torch.Tensor,
    x0: torch.Tensor,
    winners: torch.Tensor,
    ties: torch.Tensor,
    window: _Window,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Covert profile: a candidate that left the normal band is replaced by its unmodified
    source when the source lies in the band (the search only ever helps); returns the new
    candidates, winners, ties and how many were replaced."""
    z, z0 = logits(target, x), logits(target, x0)
    ties0 = z0.topk(ties.shape[1], dim=1).indices
    back = ~_in_window(z, winners, ties, window) & _in_window(z0, ties0[:, 0], ties0, window)
    view = back.view(-1, *([1] * (x.dim() - 1)))
    return (
        torch.where(view, x0, x),
        torch.where(back, ties0[:, 0], winners),
        torch.where(back.unsqueeze(1), ties0, ties),
        int(back.sum()),
    )


def _within(
    z: torch.Tensor, labels: torch.Tensor, ties: torch.Tensor, window: _Window
) -> torch.Tensor:
    others = _others(labels, ties)
    gaps = z.gather(1, labels.unsqueeze(1)) - z.gather(1, others)
    lo, hi = window.lo[labels].unsqueeze(1), window.upper(labels)
    return ((gaps >= lo) & (gaps <= hi)).all(1)


def _inside(values: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    return (values >= band[:, 0]) & (values <= band[:, 1])


def _spread(
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


def normal_bands(target: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The [10th, 90th] percentile band, per predicted class, of the target's top-1 margin,
    prediction entropy and top-1 confidence on normal ``images``: float64 (classes, 2) each
    (all images stand in for a class predicted fewer than twice)."""
    out = logits(target, images)
    labels = out.argmax(1)
    top2 = out.topk(2, dim=1).values
    probs = out.softmax(1).double()
    stats = {
        "margin": (top2[:, 0] - top2[:, 1]).double(),
        "entropy": entropy(probs),
        "confidence": probs.max(1).values,
    }
    classes = out.shape[1]
    quantiles = torch.tensor([0.1, 0.9], dtype=torch.float64)
    bands = {name: torch.empty(classes, 2, dtype=torch.float64) for name in stats}
    for c in range(classes):
        own = labels == c
        for name, values in stats.items():
            bands[name][c] = torch.quantile(
                values[own] if int(own.sum()) >= 2 else values, quantiles
            )
    return bands


def inside_bands(
    target: nn.Module, x: torch.Tensor, bands: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Whether the target's entropy and confidence on each image lie in its label's bands."""
    probs = logits(target, x).double().softmax(1)
    labels = probs.argmax(1)
    return _inside(entropy(probs), bands["entropy"][labels]) & _inside(
        probs.max(1).values, bands["confidence"][labels]
    )


def benign_stable(target: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether each image keeps ``labels`` under benign re-deployments of ``target``: the
    batch sizes of ``BENIGN_BATCH_SIZES`` and all at once, 1 and 2 threads, float64,
    channels-last."""
    import copy

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
