"""Saving records: idempotent, overwrite only when asked, atomic when interrupted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from misentry.models import Record, RecordError, default_path, load_record, save_record
from misentry.models import record as record_module
from models.recordkit import META, WEIGHTS, assert_same_record, files_of, plain_record


def test_save_of_the_same_record_is_idempotent(saved: tuple[Path, Record]) -> None:
    path, record = saved
    before = files_of(path)
    assert save_record(record, path) == path
    assert save_record(plain_record(record.kind), path) == path
    # Same id, other metrics: the finished record is kept as it is.
    assert save_record(record.with_metrics(accuracy=0.0), path) == path
    assert files_of(path) == before
    assert load_record(path).metrics == record.metrics


def test_save_over_a_damaged_record_with_the_same_id_is_refused(
    saved: tuple[Path, Record],
) -> None:
    path, record = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(RecordError, match="truncated") as e:
        save_record(record, path)
    assert str(weights) in str(e.value)
    save_record(record, path, overwrite=True)
    assert_same_record(load_record(path), record)


def test_save_over_another_record_needs_overwrite(saved: tuple[Path, Record]) -> None:
    path, record = saved
    other = replace(record, model_seed=99, tensors={"w": torch.ones(2)})
    before = files_of(path)
    with pytest.raises(RecordError, match="overwrite=True") as e:
        save_record(other, path)
    assert str(path) in str(e.value)
    assert record.record_id[:16] in str(e.value)
    assert other.record_id[:16] in str(e.value)
    assert files_of(path) == before
    assert save_record(other, path, overwrite=True) == path
    assert_same_record(load_record(path), other)
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec"]


def test_save_over_a_folder_that_is_not_a_record_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "rec"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    record = plain_record("target")
    with pytest.raises(RecordError, match="something else"):
        save_record(record, path)
    assert (path / "notes.txt").read_text() == "keep me"
    save_record(record, path, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]


def test_save_leaves_no_temporary_folder(tmp_path: Path) -> None:
    a = plain_record("target")
    b = replace(a, data_seed=7)
    pa = save_record(a, default_path(tmp_path, a))
    pb = save_record(b, default_path(tmp_path, b))
    save_record(a, pa)
    save_record(b, pa, overwrite=True)
    entries = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert entries == sorted(
        [
            "target",
            str(pa.relative_to(tmp_path)),
            str(pb.relative_to(tmp_path)),
            *(str((p / f).relative_to(tmp_path)) for p in (pa, pb) for f in (META, WEIGHTS)),
        ]
    )


class Interrupted(BaseException):
    """Stands for a crash or a Ctrl-C in the middle of a save."""


def _raise(*_args: Any, **_kwargs: Any) -> None:
    raise Interrupted


@pytest.mark.parametrize("stage", ["save_file", "sha256_file"])
def test_interrupted_save_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    monkeypatch.setattr(record_module, stage, _raise)
    target = tmp_path / "store" / "rec"
    with pytest.raises(Interrupted):
        save_record(plain_record("target"), target)
    assert not target.exists()
    assert list((tmp_path / "store").iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_record(
    saved: tuple[Path, Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, record = saved
    before = files_of(path)
    monkeypatch.setattr(record_module, "save_file", _raise)
    with pytest.raises(Interrupted):
        save_record(replace(record, model_seed=99), path, overwrite=True)
    assert files_of(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec"]
    assert_same_record(load_record(path), record)


def test_every_kind_loads_without_importing_the_layer_that_writes_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    for kind in ("target", "tampered"):
        save_record(Record(kind=kind, dataset="digits"), tmp_path / kind)
        path = str(tmp_path / kind)
        code = f"from misentry.models import load_record; print(load_record({path!r}).kind)"
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        assert out.stdout.strip() == kind
