"""The content-addressed record format: round trips, ids, kinds, and what a saved folder holds."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import misentry
from misentry.models import (
    RECORD_KINDS,
    Record,
    RecordError,
    default_path,
    load_record,
    save_record,
)
from models.recordkit import (
    DIGITS,
    IDENTITY,
    KINDS,
    META,
    PARENT,
    WEIGHTS,
    as_json,
    assert_same_record,
    assert_tensors_equal,
    digits_model_record,
    plain_record,
)

# The id of GOLDEN_FIELDS, recorded when the format was fixed: a change here means every stored
# record changes its id (and reruns no longer find finished work), so it must be deliberate.
GOLDEN_FIELDS: dict[str, Any] = {
    "kind": "target",
    "dataset": "digits",
    "architecture": "lenet5",
    "input": {
        "channels": 1,
        "height": 8,
        "width": 8,
        "num_classes": 10,
        "mean": [0.3053],
        "std": [0.3759],
    },
    "data_seed": 1,
    "model_seed": 2,
    "params": {"pool": "owner_train", "lr": 0.05},
    "parent": None,
}

GOLDEN_ID = "72358ce606dceb7d83b32d21c2a8510c73e6c1545c3dbe3f1b550b1fccac0ec6"


@pytest.mark.parametrize("kind", KINDS)
def test_plain_record_round_trips_exactly(tmp_path: Path, kind: str) -> None:
    record = plain_record(kind)
    path = save_record(record, tmp_path / "rec")
    assert path == tmp_path / "rec"
    loaded = load_record(path)
    assert_same_record(loaded, record)
    assert loaded.params == record.params  # plain JSON values compare equal as Python values
    assert loaded.parent == PARENT
    assert loaded.architecture is None
    assert loaded.input is None


def test_record_id_is_the_sha256_of_the_canonical_identity() -> None:
    record = Record(**GOLDEN_FIELDS)
    assert record.record_id == GOLDEN_ID
    identity = {"schema_version": 1, **GOLDEN_FIELDS}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN_ID


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_is_stable(kind: str) -> None:
    a, b = plain_record(kind), plain_record(kind)
    assert a.record_id == b.record_id
    assert len(a.record_id) == 64
    assert int(a.record_id, 16) >= 0
    identity = {"schema_version": 1, **{f: getattr(a, f) for f in (*IDENTITY, "parent")}}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == a.record_id
    assert digits_model_record(kind).record_id == digits_model_record(kind).record_id


IDENTITY_CHANGES: dict[str, dict[str, Any]] = {
    "dataset": {"dataset": "mnist5k"},
    "architecture": {"architecture": "mlp"},
    "input": {"input": {**DIGITS.to_json(), "num_classes": 9}},
    "data_seed": {"data_seed": 4},
    "model_seed": {"model_seed": 5},
    "params-value": {"params": {"k": [1, 2.5, "x", None, False], "nested": {"b": 1}}},
    "params-key": {"params": {"k": [1, 2.5, "x", None, True]}},
    "parent": {"parent": "cd" * 32},
    "no-parent": {"parent": None},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", list(IDENTITY_CHANGES))
def test_record_id_changes_with_every_identity_field(kind: str, change: str) -> None:
    base = plain_record(kind)
    assert replace(base, **IDENTITY_CHANGES[change]).record_id != base.record_id


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_changes_with_kind(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setitem(RECORD_KINDS, "test-other-kind", "a kind registered by this test only")
    assert plain_record("test-other-kind").record_id != plain_record(kind).record_id


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_ignores_metrics_tensors_and_key_order(kind: str) -> None:
    base = plain_record(kind)
    assert base.with_metrics(accuracy=0.1, extra=2).record_id == base.record_id
    assert replace(base, metrics={}).record_id == base.record_id
    assert replace(base, tensors={}).record_id == base.record_id
    reordered = dict(reversed(list(base.params.items())))
    assert list(reordered) != list(base.params)
    assert replace(base, params=reordered).record_id == base.record_id


def test_with_metrics_merges() -> None:
    record = plain_record("target").with_metrics(accuracy=0.5, loss=1.0)
    assert record.metrics == {"accuracy": 0.5, "curve": [0.1, 0.2], "notes": {"n": 3}, "loss": 1.0}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(
        RecordError, match=r"unknown record kind 'no-such-kind'; known kinds: "
    ) as e:
        Record(kind="no-such-kind", dataset="digits")
    assert all(kind in str(e.value) for kind in RECORD_KINDS)


def test_default_path(tmp_path: Path) -> None:
    for kind in KINDS:
        record = plain_record(kind)
        path = default_path(tmp_path, record)
        assert path.parent == tmp_path / kind
        assert record.record_id[:16] in path.name
        assert path.name.startswith("digits-")
        assert default_path(str(tmp_path), record) == path
        assert default_path(tmp_path, replace(record, model_seed=9)) != path


def test_meta_json_contents(saved: tuple[Path, Record]) -> None:
    path, record = saved
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]
    meta = json.loads((path / META).read_text())
    assert meta["id"] == record.record_id
    assert meta["schema_version"] == 1
    assert meta["package_version"] == misentry.__version__
    created = datetime.fromisoformat(meta["created"])
    assert created.tzinfo is not None
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    weights = (path / WEIGHTS).read_bytes()
    assert meta["files"] == {
        WEIGHTS: {"bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    }
    assert meta["metrics"] == record.metrics
    for name in (*IDENTITY, "parent"):
        assert meta[name] == as_json(getattr(record, name))


def test_weights_file_is_safetensors(saved: tuple[Path, Record]) -> None:
    from safetensors.torch import load_file

    path, record = saved
    assert_tensors_equal(load_file(str(path / WEIGHTS)), record.tensors)
