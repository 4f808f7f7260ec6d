"""Records: the one on-disk format every stage writes and the next stage reads.

A record is a folder::

    meta.json            what it is (kind, dataset, architecture, seeds, parameters, parent) and
                         what was measured (metrics), plus the size and sha256 of each tensor file
    weights.safetensors  its tensors (no pickle anywhere)

Records are content-addressed: :attr:`Record.record_id` is the sha256 of the canonical JSON of the
fields that define the record (everything but the measured metrics and the bookkeeping), so a
rerun with the same configuration finds the finished record and skips the work. Loading checks the
id against ``meta.json`` and each tensor file against its recorded size and hash, and refuses a
changed or truncated file with an error that names the file and what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

SCHEMA_VERSION = 1
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.safetensors"

RECORD_KINDS: dict[str, str] = {
    "target": "a model the owner trained and deploys (the model to protect)",
    "tampered": "a tampered copy of a target (one BIVBench instance)",
}
"""Known record kinds and what each holds. They are listed here, in the lowest layer that reads
records, so any record loads whatever else was imported; extensions call :func:`register_kind`."""

IDENTITY_FIELDS = (
    "schema_version",
    "kind",
    "dataset",
    "architecture",
    "input",
    "data_seed",
    "model_seed",
    "params",
    "parent",
)


class RecordError(ValueError):
    """A record folder is missing, malformed, changed or truncated."""


def register_kind(kind: str, description: str) -> None:
    """Make ``kind`` a known record kind (idempotent)."""
    RECORD_KINDS.setdefault(kind, description)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def json_ready(value: Any) -> Any:
    """Tuples to lists, recursively, so parameters hash and round-trip as JSON."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Record:
    """One artifact: its identity, its measured metrics and its tensors.

    Attributes:
        kind: one of :data:`RECORD_KINDS`.
        dataset: dataset name the record belongs to.
        architecture: architecture name for model records, None for others.
        input: the model's :class:`~misentry.models.spec.InputSpec` as JSON (None if no model).
        data_seed: seed of the pools the record drew its data from.
        model_seed: seed of the weights' initialisation and of the training order.
        params: the recipe's parameters (JSON values only).
        parent: ``record_id`` of the record this one was derived from, if any.
        metrics: measured values; not part of the identity.
        tensors: named tensors, written to ``weights.safetensors``.
    """

    kind: str
    dataset: str
    architecture: str | None = None
    input: dict[str, Any] | None = None
    data_seed: int = 0
    model_seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in RECORD_KINDS:
            raise RecordError(
                f"unknown record kind {self.kind!r}; known kinds: {', '.join(RECORD_KINDS)}"
            )

    def identity(self) -> dict[str, Any]:
        """The fields that define the record (what its id hashes)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind,
            "dataset": self.dataset,
            "architecture": self.architecture,
            "input": self.input,
            "data_seed": self.data_seed,
            "model_seed": self.model_seed,
            "params": self.params,
            "parent": self.parent,
        }

    @property
    def record_id(self) -> str:
        return hashlib.sha256(canonical_json(self.identity()).encode()).hexdigest()

    def with_metrics(self, **metrics: Any) -> Record:
        return replace(self, metrics={**self.metrics, **metrics})


def default_path(root: Path | str, record: Record) -> Path:
    """Where ``record`` lives under a store root: ``root/<kind>/<dataset>-<id[:16]>``."""
    return Path(root) / record.kind / f"{record.dataset}-{record.record_id[:16]}"


def save_record(record: Record, path: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``record`` to the folder ``path`` atomically and return the path.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written record. An existing intact record with the same id is kept as it is (the
    write is idempotent); any other existing folder is an error unless ``overwrite``.
    """
    from misentry import __version__

    path = Path(path)
    if path.exists() and not overwrite:
        existing = _peek_id(path)
        if existing == record.record_id:
            load_record(path)  # verifies it is intact
            return path
        raise RecordError(
            f"{path} already exists and holds "
            f"{'record ' + existing[:16] if existing else 'something else'}, not "
            f"{record.record_id[:16]}; choose another folder or pass overwrite=True"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in record.tensors.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        meta = {
            **record.identity(),
            "id": record.record_id,
            "metrics": record.metrics,
            "package_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {
                WEIGHTS_FILE: {
                    "bytes": (tmp / WEIGHTS_FILE).stat().st_size,
                    "sha256": sha256_file(tmp / WEIGHTS_FILE),
                }
            },
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, allow_nan=False))
        _apply_umask(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _apply_umask(folder: Path) -> None:
    # mkdtemp creates 0700; give the record the permissions a plain mkdir and open would.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


def read_meta(path: Path | str) -> dict[str, Any]:
    """Read and parse ``meta.json`` of the record folder ``path``."""
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise RecordError(f"{meta_path}: not found; {path} is not a misentry record folder")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{meta_path}: not valid JSON ({err}); the file is damaged") from err
    if not isinstance(meta, dict):
        raise RecordError(f"{meta_path}: expected a JSON object")
    missing = [k for k in (*IDENTITY_FIELDS, "id", "files") if k not in meta]
    if missing:
        raise RecordError(f"{meta_path}: missing fields {missing}")
    if meta["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{meta_path}: schema version {meta['schema_version']}, this misentry reads "
            f"version {SCHEMA_VERSION}"
        )
    return meta


def load_record(path: Path | str) -> Record:
    """Load and verify the record folder ``path``.

    Raises:
        RecordError: ``meta.json`` is missing or damaged, its identity fields no longer hash to
            its id, or a tensor file is missing, truncated or changed.
    """
    path = Path(path)
    meta = read_meta(path)
    record = Record(
        kind=meta["kind"],
        dataset=meta["dataset"],
        architecture=meta["architecture"],
        input=meta["input"],
        data_seed=int(meta["data_seed"]),
        model_seed=int(meta["model_seed"]),
        params=meta["params"],
        parent=meta["parent"],
        metrics=meta.get("metrics", {}),
    )
    if record.record_id != meta["id"]:
        raise RecordError(
            f"{path / META_FILE}: identity fields were edited: they hash to "
            f"{record.record_id[:16]}, but the record id is {meta['id'][:16]}"
        )
    for name, expected in meta["files"].items():
        _verify_file(path / name, int(expected["bytes"]), str(expected["sha256"]))
    tensors = load_file(str(path / WEIGHTS_FILE))
    return replace(record, tensors=tensors)


def _verify_file(file: Path, size: int, sha256: str) -> None:
    if not file.is_file():
        raise RecordError(f"{file}: missing; the record lists it ({size} bytes)")
    actual = file.stat().st_size
    if actual < size:
        raise RecordError(f"{file}: truncated: {actual} bytes, expected {size}")
    if actual != size:
        raise RecordError(f"{file}: size changed: {actual} bytes, expected {size}")
    digest = sha256_file(file)
    if digest != sha256:
        raise RecordError(
            f"{file}: content changed after it was written (sha256 {digest[:16]}…, "
            f"expected {sha256[:16]}…)"
        )


def _peek_id(path: Path) -> str | None:
    try:
        return str(read_meta(path)["id"])
    except RecordError:
        return None
