"""The interface every tampering family implements.

A family is one class (``FineTuning``, ``Pruning``, ``Backdoor``...) whose constructor holds its
frozen parameters and whose :meth:`Tampering.build` turns a :class:`TamperContext` (the target, the
data its namespace may read, an instance seed) into a :class:`Tampered` model, stopping as soon
as its objective is met: subtler tampering is harder to detect, so every recipe starts from the
target's weights (unless it replaces the model) and does as little as it must.

When the result changes no top-1 label on the observability probe, the builder asks the family to
go on in its own natural unit (:meth:`Tampering.extend`: another epoch, another bit, the next
sparsity step) until it does or the family's documented cap is reached.

A family that cannot act on a target (a model imported as a TorchScript or ``torch.export``
program hides what it needs, such as an inner layer's input or a way to rebuild its architecture)
raises :class:`NotApplicable` with the reason; the builder records the variant as skipped with
that reason and builds the others.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from misentry.data import DatasetInfo
from misentry.models import InputSpec, Record
from misentry.models.record import json_ready
from misentry.tamper.namespace import DataAccess, Namespace, instance_seed

IMPORTED = "imported"
"""The prefix of an imported target's architecture (``imported:torchscript``...)."""


class NotApplicable(Exception):
    """The family cannot act on this target; ``reason`` says why (shown as ``skipped: reason``).

    Raised before the recipe changes anything: the builder skips the variant's instances on
    this target rather than replacing them by other seeds.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TamperContext:
    """Everything a recipe may use to build one instance.

    Attributes:
        target: the owner's model; recipes never modify it (use :meth:`copy_target`).
        target_record: its record (architecture, seeds, metrics such as ``test_accuracy``).
        data: the pools this namespace may read, by role.
        seed: the instance seed; every random choice of the recipe derives from it.
        index: the instance index; deterministic families (quantization) walk a grid of
            settings by it so that instances differ.
        attempt: which try of this instance (the builder replaces an instance that never
            becomes observable by the next attempt, with the next seed).
        dataset: the dataset's registry entry.
        spec: the models' input spec.
    """

    target: nn.Module
    target_record: Record
    data: DataAccess
    seed: int
    dataset: DatasetInfo
    spec: InputSpec
    index: int = 0
    attempt: int = 0

    @property
    def namespace(self) -> Namespace:
        return self.data.namespace

    @property
    def architecture(self) -> str:
        assert self.target_record.architecture is not None
        return self.target_record.architecture

    @property
    def imported_format(self) -> str | None:
        """The format a target imported with ``misentry import`` came in (``module``,
        ``torchscript``, ``exported``); None for a registry architecture."""
        kind, sep, fmt = self.architecture.partition(":")
        return fmt if sep and kind == IMPORTED else None

    def copy_target(self) -> nn.Module:
        """A deep copy of the target in eval mode, free to modify."""
        return copy.deepcopy(self.target).eval()

    def generator(self, stream: int = 0) -> torch.Generator:
        """A torch generator seeded from the instance seed (``stream`` gives independent ones)."""
        return torch.Generator().manual_seed((self.seed + 7919 * stream) % (2**63))

    def distinct_choice(self, n: int, stream: int = 0) -> int:
        """An index in ``range(n)`` that differs between instances 0..n-1 (first attempts).

        A permutation fixed per namespace and ``stream`` is read at the instance index, so
        instances pick different samples where a seeded draw could repeat one; later attempts
        read further along.
        """
        if n < 1:
            raise ValueError("distinct_choice needs n >= 1")
        key = instance_seed(self.namespace, f"distinct-choice-{stream}", 0)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(key))
        return int(perm[(self.index + 7919 * self.attempt) % n])

    def sub_seed(self, stream: int) -> int:
        """An integer seed for ``TrainConfig.seed`` or ``build_model``, derived from the seed."""
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator(stream)))


@dataclass
class Tampered:
    """A tampered model and what it took.

    Attributes:
        model: the tampered model (eval mode).
        objective: the objective's measured values (e.g. ``asr``, ``victim_flipped``,
            ``confidence``, ``accuracy_drop``) when the recipe stopped.
        met: whether the objective was reached within the recipe's caps.
        steps: optimizer steps (or flips, or pruning rounds) taken.
        epochs: passes over the recipe's data.
        choices: the instance's own choices (sample index, sparsity, bits, classes, victims...),
            stored in the record.
        architecture: the model's architecture, when it is not the target's.
        extensions: how many extra natural units :meth:`Tampering.extend` added.
        state: anything the family needs to extend the instance later (not stored).
    """

    model: nn.Module
    objective: dict[str, float]
    met: bool
    steps: int = 0
    epochs: int = 0
    choices: dict[str, Any] = field(default_factory=dict)
    architecture: str | None = None
    extensions: int = 0
    state: dict[str, Any] = field(default_factory=dict, repr=False)


class Tampering(ABC):
    """One tampering family. Subclasses set ``family`` and ``malicious`` and take a frozen
    parameter dataclass in their constructor."""

    family: ClassVar[str]
    malicious: ClassVar[bool]
    max_extensions: ClassVar[int] = 0
    """How many natural units :meth:`extend` may add for observability (the documented cap)."""
    expect_observable: ClassVar[bool] = True
    """False only for controls (the exact copy), which the builder never pushes or replaces."""
    best_effort: ClassVar[bool] = False
    """True where the objective may stay out of reach within the documented cap (the instance
    is kept, with ``met`` False and the value reached recorded)."""

    def __init__(self, params: Any) -> None:
        if not is_dataclass(params) or isinstance(params, type):
            raise TypeError(f"{type(self).__name__} takes a dataclass instance of parameters")
        self.params = params

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    def params_json(self) -> dict[str, Any]:
        """The parameters as JSON values (stored in every instance record)."""
        data: dict[str, Any] = json_ready(asdict(self.params))
        return data

    @abstractmethod
    def build(self, ctx: TamperContext) -> Tampered:
        """Build one instance from the target, stopping as soon as the objective is met."""

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        """Go on by one natural unit; None when the family has no further unit."""
        return None


@dataclass(frozen=True)
class Variant:
    """A named BIVBench variant: a slug, what it is, and the family with frozen parameters."""

    slug: str
    description: str
    tampering: Tampering

    @property
    def family(self) -> str:
        return self.tampering.family

    @property
    def malicious(self) -> bool:
        return self.tampering.malicious
