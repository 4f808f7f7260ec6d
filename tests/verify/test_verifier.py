"""The verifier: verdicts on an intact and a tampered digits target, several N_S from one query
set, and the fail-closed rule under injected oracle failures."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from misentry.data import Pools, to_unit
from misentry.fingerprint.bundle import FingerprintSet
from misentry.models import (
    last_linear,
    predict,
)
from misentry.models.oracle import LabelOracle, ModuleOracle, OracleError
from misentry.verify.verifier import Mismatch, Verdict, VerifyError, verify

N = 24


@pytest.fixture(scope="module")
def bundle(target: nn.Module, digits_pools: Pools) -> FingerprintSet:
    """Natural fingerprints: source images with the target's own labels."""
    images = digits_pools["source"].images[:N]
    labels = predict(target, to_unit(images))
    return FingerprintSet(images, labels, torch.arange(N), {"method": "test"})


def tampered_copy(target: nn.Module, label: int) -> nn.Module:
    """The target with its output bias for ``label`` raised until every image gets it."""
    model = copy.deepcopy(target)
    with torch.no_grad():
        last_linear(model)[1].bias[label] += 1000.0
    return model


def test_intact_model_is_intact_with_no_mismatch(target: nn.Module, bundle: FingerprintSet) -> None:
    oracle = ModuleOracle(target, num_classes=10)
    result = verify(bundle, oracle, 5, seed=0)
    assert result.verdict is Verdict.INTACT
    assert result.mismatches == ()
    assert result.reason is None
    assert result.queries == oracle.queries == 5
    assert len(set(result.indices)) == 5


def test_tampered_model_is_tampered_with_exactly_the_changed_labels(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    label = int(torch.bincount(bundle.labels, minlength=10).argmin())
    model = tampered_copy(target, label)
    returned = predict(model, bundle.x)
    assert bool((returned == label).all())
    result = verify(bundle, ModuleOracle(model, num_classes=10), select="all", seed=3)
    expected = {
        Mismatch(i, int(bundle.labels[i]), label) for i in range(N) if bundle.labels[i] != label
    }
    assert result.verdict is Verdict.TAMPERED
    assert set(result.mismatches) == expected
    assert sorted(result.indices) == list(range(N))


def test_several_ns_are_prefixes_of_one_query_set(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    model = tampered_copy(target, 0)
    oracle = ModuleOracle(model, num_classes=10, batch_size=64)
    result = verify(bundle, oracle, (10, 1, 3, 3), seed=11)
    assert [c.ns for c in result.checks] == [1, 3, 10]
    assert oracle.requests == 1
    assert oracle.queries == 10
    for small, large in zip(result.checks, result.checks[1:], strict=False):
        assert large.indices[: small.ns] == small.indices
        assert set(small.mismatches) <= set(large.mismatches)
    for check in result.checks:
        assert {m.index for m in check.mismatches} == {
            i for i in check.indices if bundle.labels[i] != 0
        }
        assert check.verdict is (Verdict.TAMPERED if check.mismatches else Verdict.INTACT)
    assert result.verdict is result.checks[-1].verdict


def test_the_draw_is_seeded_and_the_seed_is_stored(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    first = verify(bundle, ModuleOracle(target), 8, seed=5, select="random")
    again = verify(bundle, ModuleOracle(target), 8, seed=5, select="random")
    other = verify(bundle, ModuleOracle(target), 8, seed=6, select="random")
    unseeded = verify(bundle, ModuleOracle(target), 8, select="random")
    assert first.indices == again.indices != other.indices
    assert first.seed == 5
    again_unseeded = verify(bundle, ModuleOracle(target), 8, seed=unseeded.seed, select="random")
    assert again_unseeded.indices == unseeded.indices


def test_select_all_checks_n_and_the_given_ns(target: nn.Module, bundle: FingerprintSet) -> None:
    result = verify(bundle, ModuleOracle(target, num_classes=10), (2,), select="all", seed=0)
    assert [c.ns for c in result.checks] == [2, N]
    assert result.verdict is Verdict.INTACT
    assert result.queries == N


@pytest.mark.parametrize(
    ("ns", "message"),
    [(0, r"\[1, 24\]"), (N + 1, r"\[1, 24\]"), ((1, 99), "99"), (2.5, "2.5")],
)
def test_impossible_ns_is_refused_before_any_query(
    target: nn.Module, bundle: FingerprintSet, ns: object, message: str
) -> None:
    oracle = ModuleOracle(target)
    with pytest.raises(VerifyError, match=message):
        verify(bundle, oracle, ns, seed=0)  # type: ignore[arg-type]
    assert oracle.queries == 0


def test_empty_bundle_wrong_classes_and_bad_arguments_are_refused(
    target: nn.Module, bundle: FingerprintSet
) -> None:
    empty = FingerprintSet(
        bundle.images[:0], bundle.labels[:0], bundle.source_indices[:0], {"method": "test"}
    )
    with pytest.raises(VerifyError, match="no fingerprints"):
        verify(empty, ModuleOracle(target))
    with pytest.raises(VerifyError, match="is this the bundle of this model"):
        verify(bundle, ModuleOracle(target, num_classes=2), seed=0)
    with pytest.raises(VerifyError, match="select"):
        verify(bundle, ModuleOracle(target), select="best")  # type: ignore[arg-type]
    with pytest.raises(VerifyError, match="seed"):
        verify(bundle, ModuleOracle(target), seed=-1)


def test_budget_and_deadline_are_inconclusive(target: nn.Module, bundle: FingerprintSet) -> None:
    poor = ModuleOracle(target, num_classes=10, budget=4)
    result = verify(bundle, poor, 5, seed=0)
    assert (result.verdict, result.reason, result.queries) == (Verdict.INCONCLUSIVE, "budget", 0)
    assert "budget" in (result.message or "")
    assert all(c.verdict is Verdict.INCONCLUSIVE and not c.mismatches for c in result.checks)

    slow = Faulty(target, {0: "slow"}, batch_size=2, deadline=1.0)
    result = verify(bundle, slow, 6, seed=0)
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "deadline")
    assert result.queries == 2


def test_result_to_json_round_trips(target: nn.Module, bundle: FingerprintSet) -> None:
    result = verify(bundle, ModuleOracle(tampered_copy(target, 1)), (1, 4), seed=2)
    data = json.loads(json.dumps(result.to_json()))
    assert data["verdict"] == result.verdict.value
    assert data["ns"] == [1, 4]
    assert data["indices"] == list(result.indices)
    assert data["mismatches"] == [m.to_json() for m in result.mismatches]
    assert data["seed"] == 2


# --- the fail-closed rule ---------------------------------------------------------------------

FAULTS = (
    "flip",  # one label changed: a tampered answer, not a failure
    "slow",  # the batch takes past the deadline: the next batch is refused
    "oracle_error",
    "runtime_error",
    "key_error",
    "short",
    "long",
    "out_of_range",
    "negative",
    "fractional",
    "none",
    "text",
)
FAILURES = set(FAULTS) - {"flip", "slow"}


class Faulty(ModuleOracle):
    """The target behind an oracle that misbehaves in chosen batches."""

    def __init__(self, model: nn.Module, faults: dict[int, str], **kwargs: int | float) -> None:
        super().__init__(model, num_classes=10, **kwargs)
        self.faults = faults
        self.batch = -1

    def _query(self, images: torch.Tensor) -> Sequence[int] | torch.Tensor:
        self.batch += 1
        labels = super()._query(images)
        fault = self.faults.get(self.batch)
        if fault == "flip":
            labels = labels.clone()
            labels[0] = (labels[0] + 1) % 10
        elif fault == "slow":
            assert self._started is not None
            self._started -= 1e6  # as if this request took a long time
        elif fault == "oracle_error":
            raise OracleError("transport", "connection reset")
        elif fault == "runtime_error":
            raise RuntimeError("the adapter crashed")
        elif fault == "key_error":
            raise KeyError("outputs")
        elif fault == "short":
            labels = labels[:-1]
        elif fault == "long":
            labels = torch.cat([labels, labels[:1]])
        elif fault == "out_of_range":
            labels = torch.full_like(labels, 10)
        elif fault == "negative":
            labels = torch.full_like(labels, -1)
        elif fault == "fractional":
            return labels.double() + 0.5
        elif fault == "none":
            return None  # type: ignore[return-value]
        elif fault == "text":
            return "seven"  # type: ignore[return-value]
        return labels


class Unchecked(LabelOracle):
    """An oracle that overrides ``labels`` and skips the base class's checks entirely: the
    verifier must check the answer itself."""

    def __init__(self, truth: torch.Tensor, answer: str) -> None:
        super().__init__(num_classes=10)
        self.truth = truth
        self.answer = answer

    def labels(self, images: torch.Tensor) -> torch.Tensor:
        self.queries += int(images.shape[0])
        n = int(images.shape[0])
        return {
            "2d": torch.zeros(n, 1, dtype=torch.int64),
            "float": torch.zeros(n),
            "bool": torch.zeros(n, dtype=torch.bool),
            "short": torch.zeros(n - 1, dtype=torch.int64),
            "out_of_range": torch.full((n,), 10),
            "negative": torch.full((n,), -3),
            "list": list(range(n)),
        }[self.answer]  # type: ignore[return-value]

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not used")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    faults=st.dictionaries(st.integers(0, 3), st.sampled_from(FAULTS), max_size=3),
    batch_size=st.integers(1, 6),
    sizes=st.lists(st.integers(1, N), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_fail_closed_never_intact_unless_every_label_came_back_and_matched(
    target: nn.Module,
    bundle: FingerprintSet,
    faults: dict[int, str],
    batch_size: int,
    sizes: list[int],
    seed: int,
) -> None:
    oracle = Faulty(target, faults, batch_size=batch_size, deadline=1e5)
    result = verify(bundle, oracle, sizes, seed=seed)
    event(f"{result.verdict.value} {result.reason or ''}")
    batches = -(-max(sizes) // batch_size)
    # what should happen, batch by batch: the first failure ends the query
    failed, flipped = False, []
    for b in range(batches):
        fault = faults.get(b)
        if fault in FAILURES:
            failed = True
            break
        if fault == "flip":
            flipped.append(b * batch_size)
        if fault == "slow" and b < batches - 1:
            failed = True
            break
    if failed:
        assert result.verdict is Verdict.INCONCLUSIVE
        assert result.reason
        assert result.message
        assert all(c.verdict is Verdict.INCONCLUSIVE and not c.mismatches for c in result.checks)
    elif flipped:
        assert result.verdict is Verdict.TAMPERED
        assert [m.index for m in result.mismatches] == [result.indices[p] for p in flipped]
        for m in result.mismatches:
            assert m.returned == (m.expected + 1) % 10
    else:
        assert result.verdict is Verdict.INTACT
        assert result.mismatches == ()
    assert result.verdict is not Verdict.INTACT or (not failed and not flipped)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("2d", "malformed"),
        ("float", "malformed"),
        ("bool", "malformed"),
        ("short", "short"),
        ("out_of_range", "out_of_range"),
        ("negative", "out_of_range"),
        ("list", "malformed"),
    ],
)
def test_the_verifier_checks_answers_itself(
    bundle: FingerprintSet, answer: str, reason: str
) -> None:
    result = verify(bundle, Unchecked(bundle.labels, answer), 6, seed=0)
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, reason)
    assert result.queries == 6


def test_an_interrupt_propagates(target: nn.Module, bundle: FingerprintSet) -> None:
    class Interrupted(ModuleOracle):
        def _query(self, images: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        verify(bundle, Interrupted(target), 3, seed=0)
