"""The targeted attack on the digits target: victims come from the tamper role and get the
target model's second choice."""

from __future__ import annotations

import dataclasses
from typing import Any

from misentry.data import ImageSet, Pools
from misentry.models import logits, predict
from misentry.tamper.families.targeted import TargetedPoisoning
from misentry.tamper.namespace import DataAccess

from ..conftest import BY_SLUG, Instances, MakeContext


class RecordingAccess:
    """A DataAccess stand-in that records which roles a recipe reads."""

    def __init__(self, inner: DataAccess) -> None:
        self.inner = inner
        self.roles: set[str] = set()

    @property
    def namespace(self) -> Any:
        return self.inner.namespace

    @property
    def tamper(self) -> ImageSet:
        self.roles.add("tamper")
        return self.inner.tamper

    @property
    def check(self) -> ImageSet:
        self.roles.add("check")
        return self.inner.check

    @property
    def owner_train(self) -> ImageSet:
        self.roles.add("owner_train")
        return self.inner.owner_train

    def pool(self, name: str) -> ImageSet:
        self.roles.add(f"pool:{name}")
        return self.inner.pool(name)


def test_targeted_victims_come_from_the_tamper_role(
    built: Instances,
    make_ctx: MakeContext,
    digits_pools: Pools,
) -> None:
    ctx = make_ctx(variant="targeted", index=0)
    access = RecordingAccess(ctx.data)
    spy = dataclasses.replace(ctx, data=access)  # type: ignore[arg-type]
    family = BY_SLUG["targeted"].tampering
    assert isinstance(family, TargetedPoisoning)
    victims, labels = family.choose(spy)
    assert access.roles == {"tamper"}
    tampered, _ = built("targeted", 0)
    assert tampered.choices["victims"] == victims.tolist()
    assert tampered.choices["target_labels"] == labels.tolist()
    assert 1 <= len(victims) <= family.params.max_victims
    tamper = digits_pools["attacker"]
    assert tampered.choices["true_labels"] == tamper.y[victims].tolist()
    # each victim's target is the target model's second choice, and it now gets it
    out = predict(tampered.model, tamper.x[victims])
    assert out.tolist() == labels.tolist()
    second = logits(ctx.target, tamper.x[victims]).topk(2, dim=1).indices[:, 1]
    assert second.tolist() == labels.tolist()
    counts = {len(built("targeted", i)[0].choices["victims"]) for i in (0, 1)}
    assert counts  # the count is drawn per instance
    # building reads nothing but the tamper and check roles
    access2 = RecordingAccess(ctx.data)
    family.build(dataclasses.replace(ctx, data=access2))  # type: ignore[arg-type]
    assert access2.roles <= {"tamper", "check"}
