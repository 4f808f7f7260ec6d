"""The ledger: fresh fingerprints first, counts, reuse only after exhaustion, what counts as
shown, atomic writes, and a bundle that still loads and verifies its signature."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.data import Pools, to_unit
from misentry.fingerprint.bundle import FingerprintSet, load_bundle, save_bundle
from misentry.models import (
    predict,
)
from misentry.models.oracle import ModuleOracle, OracleError
from misentry.verify.ledger import LEDGER_FILE, Ledger, LedgerError
from misentry.verify.verifier import Verdict, verify

N = 12
KEY = b"owner secret"


@pytest.fixture
def bundle_dir(tmp_path: Path, target: nn.Module, digits_pools: Pools) -> Path:
    """A signed bundle of 12 natural fingerprints."""
    images = digits_pools["source"].images[:N]
    labels = predict(target, to_unit(images))
    fps = FingerprintSet(images, labels, torch.arange(N), {"method": "test", "dataset": "digits"})
    return save_bundle(fps, tmp_path / "fp", key=KEY)


def open_all(bundle_dir: Path) -> tuple[FingerprintSet, Ledger]:
    bundle = load_bundle(bundle_dir, KEY)
    return bundle, Ledger.open(Ledger.default_path(bundle_dir), bundle)


def test_fresh_fingerprints_first_then_reuse_only_after_exhaustion(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)
    runs = [verify(bundle, ModuleOracle(target), 5, seed=s, ledger=ledger) for s in range(3)]
    first, second, third = runs
    assert first.verdict is Verdict.INTACT
    assert (first.reused, first.fresh_left) == (0, 7)
    assert (second.reused, second.fresh_left) == (0, 2)
    assert not set(first.indices) & set(second.indices)
    fresh_before_third = set(range(N)) - set(first.indices) - set(second.indices)
    assert set(third.indices[:2]) == fresh_before_third
    assert (third.reused, third.fresh_left) == (3, 0)
    assert any("no fresh fingerprints" in w for w in third.warnings)
    assert not any("fresh" in w for w in first.warnings + second.warnings)
    shown = ledger.shown(first.endpoint_id)
    assert set(shown) == set(range(N))
    assert sum(s.times for s in shown.values()) == 15
    assert {i for i, s in shown.items() if s.times == 2} == set(third.indices[2:])
    # the fourth draw reuses the least shown ones first
    fourth = verify(bundle, ModuleOracle(target), 5, seed=9, ledger=ledger)
    assert all(shown[i].times == 1 for i in fourth.indices)


def test_the_ledger_survives_a_reload_and_keeps_times(bundle_dir: Path, target: nn.Module) -> None:
    bundle, ledger = open_all(bundle_dir)
    result = verify(bundle, ModuleOracle(target), 4, seed=1, ledger=ledger, endpoint_id="prod")
    reloaded = Ledger.open(bundle_dir / LEDGER_FILE, bundle)
    shown = reloaded.shown("prod")
    assert set(shown) == set(result.indices)
    for showing in shown.values():
        assert showing.times == 1
        assert showing.first == showing.last
        assert showing.first.endswith("+00:00")
    assert reloaded.fresh("prod") == sorted(set(range(N)) - set(result.indices))
    assert reloaded.fresh("staging") == list(range(N))


def test_endpoints_are_kept_apart_and_unshown_ones_come_first(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)
    a = verify(bundle, ModuleOracle(target), 6, seed=0, ledger=ledger, endpoint_id="a")
    b = verify(bundle, ModuleOracle(target), 6, seed=0, ledger=ledger, endpoint_id="b")
    assert (a.fresh_left, b.fresh_left) == (6, 6)
    assert not set(a.indices) & set(b.indices)  # those shown to "a" may have leaked
    c = verify(bundle, ModuleOracle(target), 3, seed=0, ledger=ledger, endpoint_id="a")
    assert set(c.indices) <= set(b.indices)
    assert c.reused == 0
    assert ledger.endpoints() == ["a", "b"]


def test_random_selection_ignores_the_ledger_but_reports_reuse(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)
    first = verify(bundle, ModuleOracle(target), 5, seed=4, select="random", ledger=ledger)
    again = verify(bundle, ModuleOracle(target), 5, seed=4, select="random", ledger=ledger)
    assert again.indices == first.indices
    assert again.reused == 5


class FailsAt(ModuleOracle):
    """Fails in the batch ``at`` (0-based) with a transport error."""

    def __init__(self, model: nn.Module, at: int, **kwargs: int) -> None:
        super().__init__(model, **kwargs)
        self.at, self.batch = at, -1

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        self.batch += 1
        if self.batch == self.at:
            raise OracleError("transport", "connection reset by peer")
        return super()._query(images)


def test_what_was_sent_is_shown_even_when_inconclusive(bundle_dir: Path, target: nn.Module) -> None:
    bundle, ledger = open_all(bundle_dir)
    result = verify(bundle, FailsAt(target, 1, batch_size=2), 6, seed=0, ledger=ledger)
    assert (result.verdict, result.reason) == (Verdict.INCONCLUSIVE, "transport")
    # the failed batch may have reached the server: it counts as shown
    assert set(ledger.shown(result.endpoint_id)) == set(result.indices[:4])
    assert result.fresh_left == N - 4

    refused = verify(bundle, ModuleOracle(target, budget=2), 6, seed=1, ledger=ledger)
    assert (refused.verdict, refused.reason, refused.queries) == (
        Verdict.INCONCLUSIVE,
        "budget",
        0,
    )
    assert set(ledger.shown(result.endpoint_id)) == set(result.indices[:4])  # nothing sent


def test_an_interrupted_query_still_records_what_went_out(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)

    class Interrupted(FailsAt):
        def _query(self, images: torch.Tensor) -> torch.Tensor:
            if self.batch == 0:
                raise KeyboardInterrupt
            return super()._query(images)

    with pytest.raises(KeyboardInterrupt):
        verify(bundle, Interrupted(target, -1, batch_size=3), 9, seed=0, ledger=ledger)
    assert [len(ledger.shown(e)) for e in ledger.endpoints()] == [6]


def test_showings_are_recorded_after_the_query_not_before(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)
    seen_during_query: list[bool] = []

    class Peeking(ModuleOracle):
        def _query(self, images: torch.Tensor) -> torch.Tensor:
            seen_during_query.append(ledger.path.exists())
            return super()._query(images)

    verify(bundle, Peeking(target), 3, seed=0, ledger=ledger)
    assert seen_during_query == [False]
    assert ledger.path.exists()


def test_writes_are_atomic_and_leave_no_temporary_file(
    bundle_dir: Path, target: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, ledger = open_all(bundle_dir)
    verify(bundle, ModuleOracle(target), 3, seed=0, ledger=ledger, endpoint_id="e")
    before = ledger.path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    result = verify(bundle, ModuleOracle(target), 3, seed=1, ledger=ledger, endpoint_id="e")
    monkeypatch.undo()
    assert result.verdict is Verdict.INTACT  # the answers stand
    assert result.ledger_error is not None
    assert "No space left" in result.ledger_error
    assert any("ledger was not updated" in w for w in result.warnings)
    assert ledger.path.read_bytes() == before
    assert sorted(p.name for p in bundle_dir.iterdir()) == [
        "fingerprints.safetensors",
        LEDGER_FILE,
        "manifest.json",
    ]
    assert json.loads(before)["ledger_version"] == 1


def test_writes_merge_with_what_another_process_recorded(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, KEY)
    mine = Ledger.open(bundle_dir / LEDGER_FILE, bundle)
    theirs = Ledger.open(bundle_dir / LEDGER_FILE, bundle)
    theirs.record("e", [0, 1])
    mine.record("e", [1, 2])
    shown = Ledger.open(bundle_dir / LEDGER_FILE, bundle).shown("e")
    assert {i: s.times for i, s in shown.items()} == {0: 1, 1: 2, 2: 1}


def test_the_bundle_still_loads_and_verifies_its_signature(
    bundle_dir: Path, target: nn.Module
) -> None:
    bundle, ledger = open_all(bundle_dir)
    verify(bundle, ModuleOracle(target), 5, seed=0, ledger=ledger)
    assert (bundle_dir / LEDGER_FILE).is_file()
    again = load_bundle(bundle_dir, KEY, require_signature=True)
    assert torch.equal(again.images, bundle.images)
    assert again.manifest == bundle.manifest


def test_one_file_serves_several_bundles(
    bundle_dir: Path, target: nn.Module, tmp_path: Path
) -> None:
    bundle = load_bundle(bundle_dir, KEY)
    other = save_bundle(
        FingerprintSet(bundle.images[:6], bundle.labels[:6], bundle.source_indices[:6]),
        tmp_path / "other",
    )
    shared = tmp_path / "ledgers" / "all.json"
    small = load_bundle(other)
    Ledger.open(shared, bundle).record("e", range(N))
    ledger = Ledger.open(shared, small)
    assert ledger.fresh("e") == list(range(6))
    with pytest.raises(LedgerError, match="another bundle"):
        verify(bundle, ModuleOracle(target), 1, ledger=ledger)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot be read"),
        ('{"ledger_version": 9, "bundles": {}}', "version 9"),
        ("[]", "not a misentry ledger"),
        ('ENTRY:{"count": 12, "endpoints": {"e": {"12": {}}}}', "not in \\[0, 12\\)"),
        ('ENTRY:{"count": 5, "endpoints": {}}', "says 5 fingerprints"),
        (
            'ENTRY:{"count": 12, "endpoints": {"e": {"1": {"first": "t", "last": "t", '
            '"times": 0}}}}',
            "positive integer",
        ),
    ],
)
def test_a_broken_ledger_is_refused_with_a_reason(
    bundle_dir: Path, content: str, message: str
) -> None:
    bundle = load_bundle(bundle_dir, KEY)
    if content.startswith("ENTRY:"):
        entry = json.loads(content.removeprefix("ENTRY:"))
        digest = bundle.manifest["tensors_sha256"]
        content = json.dumps({"ledger_version": 1, "bundles": {digest: entry}})
    (bundle_dir / LEDGER_FILE).write_text(content)
    with pytest.raises(LedgerError, match=message):
        Ledger.open(bundle_dir / LEDGER_FILE, bundle)


def test_an_unwritable_ledger_stops_the_verification_before_any_query(
    bundle_dir: Path, target: nn.Module, tmp_path: Path
) -> None:
    bundle = load_bundle(bundle_dir, KEY)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ledger = Ledger.open(blocker / "ledger.json", bundle)
    oracle = ModuleOracle(target)
    with pytest.raises(LedgerError, match="cannot write"):
        verify(bundle, oracle, 3, ledger=ledger)
    assert oracle.queries == 0


def test_an_unsaved_bundle_has_no_ledger(
    target: nn.Module, digits_pools: Pools, tmp_path: Path
) -> None:
    images = digits_pools["source"].images[:3]
    fps = FingerprintSet(images, predict(target, to_unit(images)), torch.arange(3))
    with pytest.raises(LedgerError, match="save the bundle"):
        Ledger.open(tmp_path / "ledger.json", fps)
