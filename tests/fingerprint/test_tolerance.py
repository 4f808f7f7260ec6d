"""Deployment tolerance at generation: the noise level and floor, MiSentry's window above it,
and each fingerprint's recorded stability."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import Pools
from misentry.fingerprint.base import SearchContext
from misentry.fingerprint.bundle import FingerprintSet
from misentry.fingerprint.methods.misentry import Misentry
from misentry.fingerprint.registry import get_method
from misentry.fingerprint.tolerance import (
    RATE_FLOOR,
    SAFETY,
    Tolerance,
    flip_rate,
    measure_noise,
    run_stacks,
)
from misentry.models import Record

CHEAP: dict[str, Any] = {
    "steps": 15,
    "inner_steps": 2,
    "refine_rounds": 40,
    "zoo": ("ft_last:1e-4x1",),
    "zoo_replicates": 2,
    "screening_replicates": 0,
    "pool_factor": 3,
    "tie_classes": 2,  # digits' 64 pixels: two tied classes (as the generator's tests)
}


@pytest.fixture(scope="module")
def pools(digits_pools: Pools) -> Pools:
    return digits_pools


def strict(target: nn.Module, record: Record, pools: Pools, tolerance: Tolerance) -> FingerprintSet:
    context = SearchContext(pools=pools, record=record, tolerance=tolerance)
    generator = Misentry.profile("strict", **CHEAP)
    return generator.generate(target, pools["source"], 10, seed=2, context=context)


@pytest.fixture(scope="module")
def bundles(target: nn.Module, record: Record, pools: Pools) -> dict[Tolerance, FingerprintSet]:
    return {t: strict(target, record, pools, t) for t in (Tolerance.EXACT, Tolerance.TF32)}


def test_parse_and_order() -> None:
    assert Tolerance.parse("fp16") is Tolerance.FP16
    assert Tolerance.BF16.covers(Tolerance.TF32)
    assert not Tolerance.FP32.covers(Tolerance.TF32)
    with pytest.raises(ValueError, match="tolerances: exact, fp32, tf32, fp16, bf16"):
        Tolerance.parse("int8")


def test_noise_grows_with_the_serving_freedom(target: nn.Module, pools: Pools) -> None:
    levels = {t: measure_noise(target, pools["val"].x, t) for t in Tolerance}
    assert levels[Tolerance.EXACT].floor == 0.0
    assert levels[Tolerance.EXACT].noise == 0.0  # the same stack: nothing to measure
    assert levels[Tolerance.FP32].noise < 1e-3  # float32 last bits
    assert levels[Tolerance.TF32].noise > 30 * levels[Tolerance.FP32].noise
    assert levels[Tolerance.BF16].noise > levels[Tolerance.FP16].noise
    for level in levels.values():
        if level.tolerance is not Tolerance.EXACT:
            assert level.floor == pytest.approx(SAFETY * level.noise)


def test_flip_rate() -> None:
    assert flip_rate(1.0, 0.0, 0, 10) == 0.0
    assert flip_rate(1.0, 0.5, 3, 10) == pytest.approx(0.3)
    assert flip_rate(1.0, 0.5, 0, 10) == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)))
    assert flip_rate(-1e-3, 0.5, 0, 10) == 1.0
    assert flip_rate(10.0, 0.1, 0, 10) == RATE_FLOOR  # the tail underflows: the floor is claimed


def test_a_tolerant_bundle_keeps_its_margins_above_the_floor(
    bundles: dict[Tolerance, FingerprintSet], target: nn.Module
) -> None:
    fps = bundles[Tolerance.TF32]
    entry = fps.manifest["tolerance"]
    assert entry["tolerance"] == "tf32"
    assert entry["floor"] > 0
    assert entry["label_changes"] == dict.fromkeys(entry["label_changes"], 0)
    window = fps.manifest["window"]
    assert min(window["lo"]) >= entry["floor"]
    for sample in fps.manifest["samples"]:
        assert sample["margin"] >= entry["floor"]
        assert sample["flips"] == 0
        assert sample["trials"] > 0
        assert sample["flip_rate"] < 1e-6
    runs = run_stacks(target, fps.x, fps.labels, Tolerance.TF32)
    assert all(bool((r.margins >= 0).all()) for r in runs)


def test_an_exact_bundle_is_sharper_and_flips_under_reduced_precision(
    bundles: dict[Tolerance, FingerprintSet], target: nn.Module
) -> None:
    exact, tf32 = bundles[Tolerance.EXACT], bundles[Tolerance.TF32]
    assert exact.manifest["tolerance"]["floor"] == 0.0
    margins = [s["margin"] for s in exact.manifest["samples"]]
    assert sorted(margins)[len(margins) // 2] < min(s["margin"] for s in tf32.manifest["samples"])
    runs = run_stacks(target, exact.x, exact.labels, Tolerance.BF16)
    changed = sum(int((r.margins < 0).any(0).sum()) for r in runs if r.level != "exact")
    assert changed > 0


def test_every_method_records_its_stability(target: nn.Module, pools: Pools) -> None:
    context = SearchContext(pools=pools, tolerance=Tolerance.FP16)
    fps = get_method("natural").generate(target, pools["source"], 8, seed=0, context=context)
    assert fps.manifest["tolerance"]["tolerance"] == "fp16"
    assert {"margin", "margin_noise", "flips", "trials", "flip_rate"} <= set(
        fps.manifest["samples"][0]
    )
    assert all(0 <= s["flip_rate"] <= 1 for s in fps.manifest["samples"])
    natural = torch.tensor([s["flip_rate"] for s in fps.manifest["samples"]])
    assert float(natural.max()) < 1e-3  # natural images sit far from any boundary
