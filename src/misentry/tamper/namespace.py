"""Who may see what: the seed and data namespaces that keep benchmark instances and the
fingerprint model zoo apart.

Fingerprints are evaluated only on tampered instances built with seeds and data that the
fingerprint generator never saw. Both sides build models with the same recipes, so the separation
lives here, in the API, rather than in a convention:

* every instance seed is derived from ``(namespace, variant, index, attempt)``, so the two
  namespaces never share a seed (``tune`` holds validation instances: the benchmark's data
  roles under seeds of their own, for tuning generators);
* a recipe reads its data through :class:`DataAccess`, by *role*, and each namespace maps roles
  to pools. The ``bench`` namespace (instances the benchmark evaluates) trains on ``attacker``;
  the ``zoo`` namespace (what a generator may build) trains on the owner's held-out ``val`` pool
  and can never reach ``attacker`` or ``test``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

from misentry.data import ImageSet, Pools


class Namespace(StrEnum):
    BENCH = "bench"
    """Benchmark instances: attacker data, benchmark seeds."""
    ZOO = "zoo"
    """The fingerprint generator's own model zoo: owner data only, zoo seeds."""
    TUNE = "tune"
    """Validation instances for tuning a generator's hyperparameters: the benchmark's data
    roles, but seeds of their own, so a reported table never uses an instance tuning saw."""


class Role(StrEnum):
    """What a recipe wants data for."""

    TAMPER = "tamper"
    """The tamperer's own training data (fine-tuning, poisoning, distillation...)."""
    CHECK = "check"
    """Held-out images to measure a stop objective on (e.g. attack success on stamped images)."""
    OWNER_TRAIN = "owner_train"
    """The images the target was trained on (what unlearning forgets, what a copier trains on)."""


@dataclass(frozen=True)
class NamespacePolicy:
    """The pools each role reads in one namespace, and the pools it may never read."""

    roles: dict[Role, tuple[str, ...]]
    forbidden: tuple[str, ...]


POLICIES: dict[Namespace, NamespacePolicy] = {
    Namespace.BENCH: NamespacePolicy(
        roles={
            Role.TAMPER: ("attacker",),
            Role.CHECK: ("test",),
            Role.OWNER_TRAIN: ("owner_train",),
        },
        forbidden=("source",),
    ),
    Namespace.TUNE: NamespacePolicy(
        roles={
            Role.TAMPER: ("attacker",),
            Role.CHECK: ("test",),
            Role.OWNER_TRAIN: ("owner_train",),
        },
        forbidden=("source",),
    ),
    Namespace.ZOO: NamespacePolicy(
        roles={
            Role.TAMPER: ("val",),
            Role.CHECK: ("val",),
            Role.OWNER_TRAIN: ("owner_train",),
        },
        forbidden=("attacker", "test"),
    ),
}


class NamespaceViolation(PermissionError):
    """A recipe asked for data its namespace may not see."""


@dataclass(frozen=True)
class DataAccess:
    """The pools a recipe may read, by role, for one namespace."""

    pools: Pools
    namespace: Namespace

    @property
    def policy(self) -> NamespacePolicy:
        return POLICIES[self.namespace]

    def role(self, role: Role) -> ImageSet:
        """The images of ``role`` in this namespace (several pools are concatenated)."""
        names = self.policy.roles[role]
        return concat([self.pool(name) for name in names])

    @property
    def tamper(self) -> ImageSet:
        return self.role(Role.TAMPER)

    @property
    def check(self) -> ImageSet:
        return self.role(Role.CHECK)

    @property
    def owner_train(self) -> ImageSet:
        return self.role(Role.OWNER_TRAIN)

    def pool(self, name: str) -> ImageSet:
        """One pool by name; refused if the namespace forbids it."""
        if name in self.policy.forbidden:
            raise NamespaceViolation(
                f"the {self.namespace.value!r} namespace may not read the {name!r} pool "
                f"(forbidden: {', '.join(self.policy.forbidden)})"
            )
        return self.pools[name]


def concat(sets: list[ImageSet]) -> ImageSet:
    import torch

    if len(sets) == 1:
        return sets[0]
    return ImageSet(torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets]))


def instance_seed(namespace: Namespace, variant: str, index: int, attempt: int = 0) -> int:
    """The seed of instance ``index`` (try ``attempt``) of ``variant`` in ``namespace``.

    A 63-bit hash of all four, so seeds of different namespaces, variants, instances or attempts
    are unrelated and never coincide in practice.
    """
    key = f"misentry/{namespace.value}/{variant}/{index}/{attempt}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
