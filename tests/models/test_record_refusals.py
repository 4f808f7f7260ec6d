"""Records refuse a changed, truncated, edited or foreign folder, naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from misentry.models import Record, RecordError, load_record
from models.recordkit import META, WEIGHTS


def test_truncated_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(RecordError, match="truncated") as e:
        load_record(path)
    assert str(weights) in str(e.value)


def test_grown_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(RecordError, match="size changed") as e:
        load_record(path)
    assert str(weights) in str(e.value)


@pytest.mark.parametrize("where", [0, 0.5, -1], ids=["first", "middle", "last"])
def test_flipped_byte_is_refused(saved: tuple[Path, Record], where: float) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    data = bytearray(weights.read_bytes())
    at = int(where * (len(data) - 1)) if where >= 0 else len(data) - 1
    data[at] ^= 0x01
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == len(data)
    with pytest.raises(RecordError, match="changed") as e:
        load_record(path)
    assert str(weights) in str(e.value)


def test_missing_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    (path / WEIGHTS).unlink()
    with pytest.raises(RecordError, match="missing") as e:
        load_record(path)
    assert str(path / WEIGHTS) in str(e.value)


def edit_meta(path: Path, **fields: Any) -> None:
    meta = json.loads((path / META).read_text())
    meta.update(fields)
    (path / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit",
    [
        {"model_seed": 5},
        {"data_seed": 1},
        {"dataset": "mnist5k"},
        {"params": {}},
        {"parent": None},
        {"id": "0" * 64},
    ],
    ids=lambda e: next(iter(e)),
)
def test_edited_identity_is_refused(saved: tuple[Path, Record], edit: dict[str, Any]) -> None:
    path, _ = saved
    edit_meta(path, **edit)
    with pytest.raises(RecordError, match="identity fields were edited") as e:
        load_record(path)
    assert str(path / META) in str(e.value)


def test_edited_metrics_load_and_keep_the_id(saved: tuple[Path, Record]) -> None:
    path, record = saved
    edit_meta(path, metrics={"accuracy": 0.1})
    loaded = load_record(path)
    assert loaded.metrics == {"accuracy": 0.1}
    assert loaded.record_id == record.record_id


def test_edited_kind_to_unknown_is_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    edit_meta(path, kind="no-such-kind")
    with pytest.raises(RecordError, match="no-such-kind"):
        load_record(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "abc", ', "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("{}", "missing fields"),
    ],
    ids=["cut-json", "not-utf8", "list", "empty-object"],
)
def test_damaged_meta_is_refused(saved: tuple[Path, Record], text: str, message: str) -> None:
    path, _ = saved
    (path / META).write_bytes(text.encode("latin-1"))
    with pytest.raises(RecordError, match=message) as e:
        load_record(path)
    assert str(path / META) in str(e.value)


def test_missing_meta_field_is_named(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    meta = json.loads((path / META).read_text())
    del meta["model_seed"]
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(RecordError, match=r"missing fields \['model_seed'\]"):
        load_record(path)


def test_wrong_schema_version_is_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    edit_meta(path, schema_version=2)
    with pytest.raises(RecordError, match="schema version 2") as e:
        load_record(path)
    assert str(path / META) in str(e.value)


@pytest.mark.parametrize("make", ["empty", "other-files", "absent", "file"])
def test_a_folder_that_is_not_a_record_is_refused(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "empty":
        path.mkdir()
    elif make == "other-files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif make == "file":
        path.write_text("hello")
    with pytest.raises(RecordError, match="not a misentry record folder") as e:
        load_record(path)
    assert str(path / META) in str(e.value)
