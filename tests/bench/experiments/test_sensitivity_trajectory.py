"""Sensitivity sweeps (the paper's Figure 6): tampered models after an exact number of steps, on the
small digits target."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from misentry.bench.experiments import sensitivity_trajectory
from misentry.bench.experiments.sensitivity_trajectory import (
    SENSITIVITY_VARIANTS,
    default_steps,
    sweepable,
    tamper_at_steps,
    tamper_at_steps_many,
    tamper_context,
)
from misentry.models import Record, TrainResult
from misentry.tamper.builder import Workspace
from misentry.tamper.namespace import Namespace

STEPS = (0, 1, 5, 60)
"""60 crosses segment boundaries: ft's 12-step epochs on digits, targeted's 50-step stages."""

ATTACK_KEY = {"targeted": "victims_flipped", "backdoor": "asr"}


@pytest.fixture(scope="module")
def workspace(digits_record: Record) -> Workspace:
    return Workspace.load(digits_record)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The optimizer steps of every ``fit`` the sweeps run, as ``fit`` itself reports them."""
    steps: list[int] = []
    real = sensitivity_trajectory.fit

    def fit(*args: Any, **kwargs: Any) -> TrainResult:
        result = real(*args, **kwargs)
        steps.append(result.steps)
        return result

    monkeypatch.setattr(sensitivity_trajectory, "fit", fit)
    return steps


@pytest.mark.parametrize("variant", SENSITIVITY_VARIANTS)
def test_sweep_takes_exact_steps_and_truncates(
    workspace: Workspace, variant: str, counted: list[int]
) -> None:
    sweep = tamper_at_steps_many(workspace, variant, 0, STEPS)
    assert sum(counted) == max(STEPS)  # one training run for the whole sweep
    assert [r.steps for r in sweep] == list(STEPS)
    assert same_weights(sweep[0].model, workspace.target)
    for result in sweep[1:]:
        assert not same_weights(result.model, workspace.target)
    for a, b in itertools.pairwise(sweep):
        assert not same_weights(a.model, b.model)
    for result in sweep[1:]:
        counted.clear()
        direct = tamper_at_steps(workspace, variant, 0, result.steps)
        assert sum(counted) == result.steps
        assert same_weights(direct.model, result.model)  # truncation, bit for bit
        assert direct.clean_accuracy == result.clean_accuracy
        assert direct.attack_success == result.attack_success


@pytest.mark.parametrize("variant", SENSITIVITY_VARIANTS)
def test_matches_the_builders_instance(workspace: Workspace, variant: str) -> None:
    """Up to where the recipe's stop rule fired, the sweep is the recipe's own trajectory."""
    found = sweepable(variant)
    ctx = tamper_context(workspace, found, 0, Namespace.BENCH)
    built = found.tampering.build(ctx)
    assert built.steps > 0
    result = tamper_at_steps(workspace, variant, 0, built.steps)
    assert same_weights(result.model, built.model)
    assert result.clean_accuracy == built.objective["check_accuracy"]
    if variant in ATTACK_KEY:
        assert result.attack_success == built.objective[ATTACK_KEY[variant]]
    else:
        assert result.attack_success is None
        extended = found.tampering.extend(ctx, built)  # ft: the extension epoch, too
        assert extended is not None
        longer = tamper_at_steps(workspace, variant, 0, extended.steps)
        assert same_weights(longer.model, extended.model)


def test_same_seed_same_weights_other_instances_differ(workspace: Workspace) -> None:
    a = tamper_at_steps(workspace, "backdoor", 3, 20)
    b = tamper_at_steps(workspace, "backdoor", 3, 20)
    assert same_weights(a.model, b.model)
    assert not same_weights(a.model, tamper_at_steps(workspace, "backdoor", 4, 20).model)
    zoo = tamper_at_steps(workspace, "backdoor", 3, 20, namespace=Namespace.ZOO)
    assert not same_weights(a.model, zoo.model)


def test_attack_success_grows_with_steps(workspace: Workspace) -> None:
    grid = default_steps("backdoor", workspace)
    sweep = tamper_at_steps_many(workspace, "backdoor", 0, (0, grid[0], grid[-1]))
    asr = [r.attack_success if r.attack_success is not None else math.nan for r in sweep]
    assert asr[0] < 0.1  # the target ignores the trigger
    assert asr[2] > asr[1] + 0.5
    assert asr[2] >= 0.9  # twice the usual budget reaches the recipe's 90 %
    assert sweep[2].seconds > sweep[1].seconds


def test_default_grids(workspace: Workspace) -> None:
    epoch = math.ceil(len(workspace.pools["attacker"].y) / 32)  # ft: batch 32 on the tamper pool
    assert default_steps("ft_last_lr1e-5", workspace) == (1, 3, epoch, 2 * epoch, 4 * epoch)
    assert default_steps("targeted", workspace) == (3, 12, 50, 100, 200)
    assert default_steps("backdoor", workspace) == (5, 19, 75, 150, 300)
    assert default_steps("ft_all_lr1e-3", workspace)[-1] == 4 * epoch  # any ft_* variant


@pytest.mark.parametrize(
    ("variant", "message"),
    [("nope", "unknown variant 'nope'"), ("pruning", "no step-wise sweep")],
)
def test_unknown_or_unsweepable_variant(workspace: Workspace, variant: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tamper_at_steps(workspace, variant, 0, 1)
    with pytest.raises(ValueError, match=message):
        default_steps(variant, workspace)


@pytest.mark.parametrize("steps", [[], [-1], [2.5]])
def test_bad_step_counts(workspace: Workspace, steps: list[Any]) -> None:
    with pytest.raises(ValueError, match="steps must be"):
        tamper_at_steps_many(workspace, "backdoor", 0, steps)
