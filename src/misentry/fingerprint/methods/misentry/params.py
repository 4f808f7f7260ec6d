"""MiSentry's parameters and its two named profiles."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

from misentry.fingerprint.methods.misentry.zoo import ZooMember

Norm = Literal["linf", "l2"]
Distinguish = Literal["margin", "kl"]


class Profile(StrEnum):
    """MiSentry's two named profiles, one value from the command line to the manifest.

    ``strict`` (covertness 0): fingerprints where ``tie_classes`` = 3 decision boundaries meet,
    for the subtlest tampering; ``covert`` (covertness 1, the paper's setting): fingerprints
    inside the normal band of their label, ranked by how closely their top 5 logits tie.
    """

    STRICT = "strict"
    COVERT = "covert"

    @property
    def covertness(self) -> float:
        """The profile's :attr:`MisentryParams.covertness`."""
        return 1.0 if self is Profile.COVERT else 0.0

    @property
    def tie_classes(self) -> int:
        """The profile's :attr:`MisentryParams.tie_classes`."""
        return 5 if self is Profile.COVERT else 3

    @property
    def overrides(self) -> dict[str, Any]:
        """The profile as overrides of :class:`MisentryParams`' defaults."""
        return {"covertness": self.covertness, "tie_classes": self.tie_classes}

    @property
    def method(self) -> str:
        """The fingerprint registry's method name: ``misentry`` or ``misentry-covert``."""
        return "misentry" if self is Profile.STRICT else f"misentry-{self.value}"

    @classmethod
    def of_method(cls, method: str) -> Profile | None:
        """The profile of the registry method ``method``; None for a method that is not
        MiSentry."""
        return next((profile for profile in cls if profile.method == method), None)


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

    def above(self, floor: float) -> MisentryParams:
        """These parameters with the strict window moved up to start at ``floor`` (a deployment
        tolerance's), its width ratio kept; unchanged when the window already starts there."""
        if floor <= self.floor:
            return self
        return replace(self, floor=floor, ceiling=floor * self.ceiling / self.floor)

    @property
    def first_step(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 8
