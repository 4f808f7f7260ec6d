"""MiSentry's zoo: built from the owner's held-out pool only, replicates differ, members read
back from their names."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from misentry.data import Pools
from misentry.fingerprint.methods.misentry.zoo import ZooMember, build_zoo
from misentry.models import Record
from misentry.tamper.namespace import DataAccess, Namespace, NamespaceViolation


def test_the_zoo_reads_only_the_owners_held_out_pool(
    target: nn.Module, record: Record, pools: Pools
) -> None:
    hidden = ("attacker", "test")
    owner_only = dataclasses.replace(
        pools,
        indices={k: v for k, v in pools.indices.items() if k not in hidden},
        sets={k: v for k, v in pools.sets.items() if k not in hidden},
    )
    members = [ZooMember.parse("ft_last:1e-3x1"), ZooMember.parse("ft_all:1e-4x1")]
    zoo = build_zoo(target, record, owner_only, members, replicates=2)
    assert [m.name for m in zoo] == [
        "ft_last:0.001x1#0",
        "ft_last:0.001x1#1",
        "ft_all:0.0001x1#0",
        "ft_all:0.0001x1#1",
    ]
    assert all(0 < m.relative_update < 0.1 for m in zoo)
    # replicates differ (their own seeds), and a later replicate range gives new models
    first, second = zoo[0].model, zoo[1].model
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )
    access = DataAccess(pools, Namespace.ZOO)
    with pytest.raises(NamespaceViolation):
        access.pool("attacker")


@pytest.mark.parametrize("text", ["ft_last:1e-4x4", "ft_all:1e-5", "retrain_last", "retrain_allx2"])
def test_a_zoo_member_reads_back_from_its_name(text: str) -> None:
    member = ZooMember.parse(text)
    assert ZooMember.parse(str(member)) == member  # zoo jobs pass members by name
