"""Adaptive tampering with leaked fingerprints (Figure 4) on the small digits target."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from misentry.bench.experiments.leakage_attacks import (
    ATTACKS,
    REPAIR,
    AdaptiveResult,
    RepairParams,
    adaptive_attack,
    attack_context,
    kept_fraction,
    leak_split,
    unleaked_disagreements,
)
from misentry.bench.metrics import disagreements
from misentry.data import to_unit
from misentry.fingerprint.bundle import FingerprintSet
from misentry.models import Record, predict
from misentry.tamper.builder import Workspace
from misentry.tamper.families.fine_tuning import FineTuning, FineTuningParams
from misentry.tamper.measure import accuracy
from misentry.tamper.registry import get_variant

LEAK_SEED = 3
MIN_ASR = 0.9
"""The backdoor's stop threshold; on digits the repaired backdoor measured ASR 0.9-0.96."""


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def workspace(digits_record: Record) -> Workspace:
    return Workspace.load(digits_record)


@pytest.fixture(scope="module")
def fps(workspace: Workspace) -> FingerprintSet:
    """Natural fingerprints: 300 owner images with the target's labels."""
    images = workspace.pools["owner_train"].images[:300]
    labels = predict(workspace.target, to_unit(images))
    return FingerprintSet(images, labels, torch.full((300,), -1, dtype=torch.int64))


@pytest.fixture(scope="module")
def instances(workspace: Workspace) -> dict[str, nn.Module]:
    """One tampered model per attack. The backdoor is the BIVBench recipe; the digits
    ``ft_last_lr1e-4`` instance changes none of the 300 labels in its epoch, so the last-layer
    instance is the same recipe at lr 1e-2 (it changes 11), which gives the repair work."""
    out: dict[str, nn.Module] = {}
    for attack, slug in ATTACKS.items():
        tampering = get_variant(slug).tampering
        if isinstance(tampering, FineTuning):
            tampering = FineTuning(FineTuningParams(layers=tampering.params.layers, lr=1e-2))
        out[attack] = tampering.build(attack_context(workspace, 1)).model
    return out


def leak(fps: FingerprintSet, model: nn.Module, n: int = 20) -> torch.Tensor:
    """``n`` leaked fingerprints, half of them ones ``model`` already labels differently."""
    differ = (predict(model, fps.x) != fps.labels).nonzero().squeeze(1)
    agree = (predict(model, fps.x) == fps.labels).nonzero().squeeze(1)
    return torch.cat([differ[: n // 2], agree[: n - min(len(differ), n // 2)]]).sort().values


@pytest.fixture(scope="module")
def repaired(
    workspace: Workspace, fps: FingerprintSet, instances: dict[str, nn.Module]
) -> dict[str, tuple[AdaptiveResult, torch.Tensor]]:
    out = {}
    for attack, model in instances.items():
        leaked = leak(fps, model)
        before = copy.deepcopy(model)
        result = adaptive_attack(
            workspace, model, attack, fps.x[leaked], fps.labels[leaked], seed=5
        )
        assert same_weights(model, before), "adaptive_attack modified the instance it was given"
        out[attack] = (result, leaked)
    return out


@pytest.mark.parametrize("n_leaked", [0, 1, 37, 100])
def test_leak_split_is_a_seeded_disjoint_cover(n_leaked: int) -> None:
    leaked, unleaked = leak_split(100, n_leaked, seed=LEAK_SEED)
    assert len(leaked) == n_leaked
    assert len(unleaked) == 100 - n_leaked
    assert torch.equal(torch.cat([leaked, unleaked]).sort().values, torch.arange(100))
    again = leak_split(100, n_leaked, seed=LEAK_SEED)
    assert torch.equal(again[0], leaked)
    assert torch.equal(again[1], unleaked)


def test_leak_split_depends_on_the_seed() -> None:
    assert not torch.equal(leak_split(100, 10, 0)[0], leak_split(100, 10, 1)[0])
    with pytest.raises(ValueError, match="n_leaked"):
        leak_split(10, 11, 0)


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_repair_restores_every_leaked_label(
    attack: str,
    repaired: dict[str, tuple[AdaptiveResult, torch.Tensor]],
    instances: dict[str, nn.Module],
    fps: FingerprintSet,
    workspace: Workspace,
) -> None:
    result, leaked = repaired[attack]
    assert result.attack == attack
    assert result.seed == 5
    assert result.n_leaked == len(leaked) == 20
    assert result.leaked_kept_before <= 0.5  # half the leaked fingerprints needed repair
    assert result.steps > 0
    assert result.met
    assert result.leaked_kept == 1.0
    assert kept_fraction(result.model, fps.x[leaked], fps.labels[leaked]) == 1.0
    assert disagreements(result.model, fps.x[leaked], fps.labels[leaked]) == 0
    assert result.steps <= REPAIR[attack].max_steps
    target_accuracy = accuracy(workspace.target, attack_context(workspace, 0).data.check)
    assert result.clean_accuracy >= target_accuracy - 0.05
    assert not same_weights(result.model, instances[attack])


def test_backdoor_survives_the_repair(
    repaired: dict[str, tuple[AdaptiveResult, torch.Tensor]],
) -> None:
    backdoor, _ = repaired["adaptive_backdoor"]
    assert backdoor.attack_success is not None
    assert backdoor.attack_success >= MIN_ASR
    assert repaired["adaptive_ft_last"][0].attack_success is None


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_no_leak_returns_the_instance_unchanged(
    attack: str, workspace: Workspace, instances: dict[str, nn.Module], fps: FingerprintSet
) -> None:
    result = adaptive_attack(
        workspace, instances[attack], attack, fps.x[:0], fps.labels[:0], seed=5
    )
    assert result.steps == 0
    assert result.met
    assert result.leaked_kept == 1.0
    assert same_weights(result.model, instances[attack])


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_same_seed_same_weights(
    attack: str, workspace: Workspace, instances: dict[str, nn.Module], fps: FingerprintSet
) -> None:
    leaked = leak(fps, instances[attack], n=6)
    params = RepairParams(max_steps=10, check_every=5)
    runs = [
        adaptive_attack(
            workspace, instances[attack], attack, fps.x[leaked], fps.labels[leaked], seed, params
        )
        for seed in (7, 7, 8)
    ]
    assert all(r.steps > 0 for r in runs)
    assert same_weights(runs[0].model, runs[1].model)
    assert not same_weights(runs[0].model, runs[2].model)


def test_unleaked_disagreements_counts_only_unleaked(
    repaired: dict[str, tuple[AdaptiveResult, torch.Tensor]], fps: FingerprintSet
) -> None:
    result, leaked = repaired["adaptive_backdoor"]
    unleaked = torch.tensor([i for i in range(len(fps)) if i not in set(leaked.tolist())])
    total = disagreements(result.model, fps.x, fps.labels)
    assert unleaked_disagreements(result.model, fps, unleaked) == total  # leaked all agree
    assert unleaked_disagreements(result.model, fps, unleaked[:0]) == 0


def test_unknown_attack_lists_the_valid_ones(workspace: Workspace, fps: FingerprintSet) -> None:
    with pytest.raises(KeyError, match="adaptive_backdoor"):
        adaptive_attack(
            workspace, workspace.target, "adaptive_pruning", fps.x[:1], fps.labels[:1], 0
        )
