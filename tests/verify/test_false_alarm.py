"""The false-alarm probability: the Poisson-binomial upper tail against brute-force enumeration,
its accuracy for tiny rates, the flip rates and tolerance a bundle declares, and the verdicts
:func:`verify` gives with them (the oracles and the tampered copy are test_verifier's)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from misentry.data import Pools, to_unit
from misentry.fingerprint.bundle import BundleError, FingerprintSet
from misentry.models import predict
from misentry.models.oracle import ModuleOracle
from misentry.verify.false_alarm import (
    DEFAULT_MAX_FALSE_ALARM,
    bundle_tolerance,
    false_alarm_probability,
    flip_rates,
    format_probability,
)
from misentry.verify.verifier import Verdict, VerifyError, verify
from verify.test_verifier import Faulty, N, tampered_copy


def enumerated_tail(rates: list[float], k: int) -> float:
    """P(X >= k) by summing the probability of every outcome with k or more changes."""
    total = 0.0
    for outcome in itertools.product((0, 1), repeat=len(rates)):
        if sum(outcome) >= k:
            total += math.prod(r if o else 1 - r for r, o in zip(rates, outcome, strict=True))
    return total


@settings(max_examples=80, deadline=None)
@given(rates=st.lists(st.floats(0, 1), max_size=7), extra=st.integers(0, 2))
def test_the_tail_matches_brute_force_enumeration(rates: list[float], extra: int) -> None:
    for k in range(len(rates) + extra + 1):
        expected = enumerated_tail(rates, k)
        got = false_alarm_probability(torch.tensor(rates, dtype=torch.float64), k)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-15)
        assert got == pytest.approx(false_alarm_probability(rates, k), rel=1e-12)
        assert 0.0 <= got <= 1.0


@pytest.mark.parametrize(
    ("rates", "k", "expected"),
    [
        ([1e-30] * 5, 1, 5e-30),
        ([1e-30] * 5, 2, 10e-60),
        ([1e-30, 0.5, 0.5], 3, 0.25e-30),
        ([1e-30, 1e-12, 0.0], 2, 1e-42),
        ([1e-300, 1e-300], 1, 2e-300),
        ([1e-12] * 1000, 1, 1e-9),
    ],
)
def test_tiny_rates_keep_their_relative_accuracy(
    rates: list[float], k: int, expected: float
) -> None:
    # 1 - P(X < k) would give 0 or 1e-16 noise here
    assert false_alarm_probability(rates, k) == pytest.approx(expected, rel=1e-6)


def test_edge_cases() -> None:
    assert false_alarm_probability([], 0) == 1.0
    assert false_alarm_probability([0.3, 0.9], 0) == 1.0
    assert false_alarm_probability([0.3, 0.9], 3) == 0.0
    assert false_alarm_probability([0.0] * 20, 1) == 0.0
    assert false_alarm_probability([1.0] * 4, 4) == 1.0
    assert false_alarm_probability([0.3] * 5, 1) == pytest.approx(1 - 0.7**5)
    assert false_alarm_probability([1e-30] * 20, 20) == 0.0  # below float64: 0, not noise


@pytest.mark.parametrize(
    ("rates", "k", "message"),
    [
        ([0.1], -1, "non-negative integer"),
        ([0.1], 1.0, "non-negative integer"),
        ([0.1], True, "non-negative integer"),
        ([1.5], 1, r"\[0, 1\]"),
        ([-0.1], 1, r"\[0, 1\]"),
        ([math.nan], 1, "NaN"),
        ([[0.1, 0.2]], 1, "1-D"),
    ],
)
def test_bad_arguments_are_refused(rates: Any, k: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        false_alarm_probability(rates, k)


def bundle_with(manifest: dict[str, Any], n: int = 3) -> FingerprintSet:
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return FingerprintSet(images, torch.zeros(n, dtype=torch.int64), torch.arange(n), manifest)


def declared(tolerance: str, rates: list[Any]) -> dict[str, Any]:
    return {
        "tolerance": {"tolerance": tolerance, "noise": 0.01, "floor": 0.04},
        "samples": [{"margin": 1.0, "flip_rate": r} for r in rates],
    }


def test_a_bundle_without_tolerance_is_exact_with_zero_rates() -> None:
    legacy = bundle_with({"method": "test"})
    assert bundle_tolerance(legacy) == "exact"
    assert torch.equal(flip_rates(legacy), torch.zeros(3, dtype=torch.float64))
    older = bundle_with({"samples": [{"margin": 1.0}, {}, {"flip_rate": 0.25}]})
    assert flip_rates(older).tolist() == [0.0, 0.0, 0.25]


def test_declared_rates_are_read_as_float64() -> None:
    bundle = bundle_with(declared("fp16", [0, 1e-30, 0.5]))
    assert bundle_tolerance(bundle) == "fp16"
    rates = flip_rates(bundle)
    assert rates.dtype == torch.float64
    assert rates.tolist() == [0.0, 1e-30, 0.5]


@pytest.mark.parametrize("bad", [None, "0.1", -0.1, 1.5, True, math.nan, math.inf, [0.1]])
def test_a_missing_or_invalid_rate_of_a_declared_bundle_is_malformed(bad: Any) -> None:
    with pytest.raises(BundleError, match=r"fingerprint 1 .*flip_rate.*not a number in \[0, 1\]"):
        flip_rates(bundle_with(declared("tf32", [0.0, bad, 0.0])))


def test_a_malformed_declaration_is_refused() -> None:
    manifest = declared("tf32", [0.0, 0.0, 0.0])
    with pytest.raises(BundleError, match="one entry per fingerprint"):
        flip_rates(bundle_with({**manifest, "samples": manifest["samples"][:2]}))
    with pytest.raises(BundleError, match="one entry per fingerprint"):
        flip_rates(bundle_with({"tolerance": manifest["tolerance"]}))
    for entry in ({"tolerance": "fp64"}, {"noise": 0.1}, "tf32"):
        with pytest.raises(BundleError, match="names no tolerance"):
            flip_rates(bundle_with({**manifest, "tolerance": entry}))
    with pytest.raises(BundleError, match="flip_rate"):
        flip_rates(bundle_with({"samples": [{}, {"flip_rate": 2.0}, {}]}))  # legacy, but invalid


def test_the_default_limit_and_how_probabilities_read() -> None:
    assert DEFAULT_MAX_FALSE_ALARM == 1e-6
    assert format_probability(3.1e-4) == "3.1e-04"
    assert format_probability(4e-41) == "4.0e-41"
    assert format_probability(0.0) == "0"
    assert format_probability(0.3) == "0.3"
    assert format_probability(1.0) == "1"


# --- verify: the verdict with its error rate ------------------------------------------------


@pytest.fixture(scope="module")
def bundle(target: nn.Module, digits_pools: Pools) -> FingerprintSet:
    """Natural fingerprints: source images with the target's own labels (no tolerance)."""
    images = digits_pools["source"].images[:N]
    labels = predict(target, to_unit(images))
    return FingerprintSet(images, labels, torch.arange(N), {"method": "test"})


def with_rates(bundle: FingerprintSet, rates: Sequence[float], tolerance: str) -> FingerprintSet:
    """``bundle`` declaring ``tolerance`` and a flip rate per fingerprint, as a generated
    bundle's manifest does."""
    tolerance_entry = {"tolerance": tolerance, "noise": 0.01, "floor": 0.04}
    samples = [{"margin": 1.0, "flip_rate": r} for r in rates]
    return replace(
        bundle, manifest={**bundle.manifest, "tolerance": tolerance_entry, "samples": samples}
    )


@pytest.mark.parametrize(
    ("tolerance", "rate"),
    [(None, 0.0), ("exact", 0.0), ("fp32", 1e-30), ("fp32", 1e-12), ("fp32", 1e-9)],
)
def test_one_mismatch_on_an_exact_or_fp32_bundle_stays_tampered(
    target: nn.Module, bundle: FingerprintSet, tolerance: str | None, rate: float
) -> None:
    declared = bundle if tolerance is None else with_rates(bundle, [rate] * N, tolerance)
    result = verify(declared, Faulty(target, {0: "flip"}, batch_size=64), select="all", seed=1)
    assert result.verdict is Verdict.TAMPERED
    assert len(result.mismatches) == 1
    assert result.tolerance == (tolerance or "exact")
    expected = -math.expm1(N * math.log1p(-rate))  # 1 - (1 - rate) ** N, accurately
    assert result.false_alarm == pytest.approx(expected, rel=1e-6, abs=0)
    assert result.false_alarm is not None
    assert result.false_alarm < result.max_false_alarm
    assert result.checks[-1].reason is None
    assert result.reason is None


def test_a_mismatch_untampered_models_often_give_is_inconclusive(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    noisy = with_rates(bundle, [0.3] * N, "fp16")
    oracle = Faulty(target, {0: "flip"}, batch_size=64)
    result = verify(noisy, oracle, 5, seed=0)
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "false_alarm")
    assert len(result.mismatches) == 1  # still reported
    assert result.false_alarm == pytest.approx(1 - 0.7**5)
    assert result.message is not None
    for text in ("1 of 5 fingerprints changed label", "tolerance fp16", "0.83", "1e-06", "--ns"):
        assert text in result.message
    loose = verify(
        noisy, Faulty(target, {0: "flip"}, batch_size=64), 5, seed=0, max_false_alarm=0.9
    )
    assert (loose.verdict, loose.reason, loose.max_false_alarm) == (Verdict.TAMPERED, None, 0.9)


def test_many_mismatches_are_tampered_even_with_large_rates(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    noisy = with_rates(bundle, [0.3] * N, "bf16")
    result = verify(noisy, ModuleOracle(tampered_copy(target, 1)), select="all", seed=0)
    k = len(result.mismatches)
    assert k >= 18
    assert result.verdict is Verdict.TAMPERED
    assert result.false_alarm == pytest.approx(
        sum(math.comb(N, j) * 0.3**j * 0.7 ** (N - j) for j in range(k, N + 1)), rel=1e-9
    )


def test_each_ns_is_judged_on_its_own_fingerprints(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    rates = [1e-7] * N
    result = verify(
        with_rates(bundle, rates, "tf32"),
        Faulty(target, {0: "flip"}, batch_size=64),
        (1, 5),
        select="all",
        seed=3,
    )
    verdicts = [(c.ns, c.verdict, c.reason) for c in result.checks]
    assert verdicts == [
        (1, Verdict.TAMPERED, None),
        (5, Verdict.TAMPERED, None),
        (N, Verdict.INCONCLUSIVE, "false_alarm"),
    ]
    for check in result.checks:
        assert check.false_alarm == pytest.approx(1 - (1 - 1e-7) ** check.ns)
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "false_alarm")
    assert result.false_alarm == result.checks[-1].false_alarm


def test_intact_and_failed_queries_have_no_false_alarm(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    noisy = with_rates(bundle, [0.3] * N, "fp16")
    intact = verify(noisy, ModuleOracle(target, num_classes=10), 5, seed=0)
    assert (intact.verdict, intact.false_alarm) == (Verdict.INTACT, None)
    # a flip in the first batch and a failure in the second: the failure wins, never TAMPERED
    failed = verify(noisy, Faulty(target, {0: "flip", 1: "short"}, batch_size=3), 6, seed=0)
    assert (failed.verdict, failed.reason, failed.false_alarm) == (
        Verdict.INCONCLUSIVE,
        "short",
        None,
    )
    assert all(c.reason == "short" and c.false_alarm is None for c in failed.checks)
    poor = verify(with_rates(bundle, [0.0] * N, "exact"), ModuleOracle(target, budget=2), 5, seed=0)
    assert (poor.verdict, poor.reason, poor.false_alarm) == (Verdict.INCONCLUSIVE, "budget", None)


def test_json_carries_the_tolerance_and_the_probabilities(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    noisy = with_rates(bundle, [0.3] * N, "fp16")
    result = verify(noisy, Faulty(target, {0: "flip"}, batch_size=64), (1, 4), seed=2)
    data = json.loads(json.dumps(result.to_json()))
    assert (data["verdict"], data["reason"]) == ("inconclusive", "false_alarm")
    assert data["tolerance"] == "fp16"
    assert data["max_false_alarm"] == 1e-6
    assert data["false_alarm"] == pytest.approx(1 - 0.7**4)
    assert [c["false_alarm"] for c in data["checks"]] == pytest.approx([0.3, 1 - 0.7**4])
    assert [c["reason"] for c in data["checks"]] == ["false_alarm", "false_alarm"]
    assert len(data["mismatches"]) == 1
    assert "changed label" in data["message"]


@pytest.mark.parametrize("limit", [0, 0.0, -1e-6, 1.5, math.nan, math.inf, True, "1e-6"])
def test_a_limit_outside_0_1_is_refused_before_any_query(
    target: nn.Module, bundle: FingerprintSet, limit: object
) -> None:
    oracle = ModuleOracle(target)
    with pytest.raises(VerifyError, match="max_false_alarm"):
        verify(bundle, oracle, 5, seed=0, max_false_alarm=limit)  # type: ignore[arg-type]
    assert oracle.queries == 0


def test_malformed_flip_rates_are_refused_before_any_query(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    oracle = ModuleOracle(target)
    broken = with_rates(bundle, [0.0] * (N - 1) + [-1.0], "tf32")
    with pytest.raises(BundleError, match="flip_rate"):
        verify(broken, oracle, 5, seed=0)
    assert oracle.queries == 0
