"""``misentry record``: verify a record folder and print what it holds (for a model imported with
``misentry import``: where it came from, its input contract, its classes and its accuracy)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from misentry.cli.common import Verbs, add_group, add_verb, console

if TYPE_CHECKING:
    from misentry.models import Record

SHOWN_ELSEWHERE = ("params",)
"""Identity fields an imported record's table shows in its own rows instead (the import
manifest and the class names)."""


def add(verbs: Verbs) -> None:
    """Register ``misentry record show``."""
    sub = add_group(verbs, "record", "inspect and verify records")
    show = add_verb(
        sub,
        "show",
        "verify a record folder and print what it holds",
        run_show,
        description="Check a record's id and the size and sha256 of its tensor files, then "
        "print its identity and metrics; for a model imported with `misentry import`, also "
        "where it came from (format, source file, sha256, factory), its input contract, its "
        "class names and its test accuracy. Exits 1 if the record was changed or truncated.",
    )
    show.add_argument("path", type=Path, help="record folder")
    show.add_argument("--json", action="store_true", help="print meta.json as JSON")


def run_show(args: argparse.Namespace) -> int:
    """Load and verify the record (a changed one is a RecordError) and print it."""
    from misentry.models.record import load_record, read_meta

    record = load_record(args.path)
    if args.json:
        print(json.dumps(read_meta(args.path), indent=2))
        return 0
    imported = record.params.get("import") if isinstance(record.params, Mapping) else None
    table = Table(
        title=f"{record.kind} record {record.record_id[:16]} (verified)", show_header=False
    )
    table.add_column("field")
    table.add_column("value", overflow="fold")
    if isinstance(imported, Mapping):
        add_import_rows(table, record, imported)
    for key, value in record.identity().items():
        if imported is not None and key in SHOWN_ELSEWHERE:
            continue
        table.add_row(key, json.dumps(value) if isinstance(value, dict | list) else str(value))
    for key, value in record.metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else json.dumps(value)
        table.add_row(f"metrics.{key}", shown)
    table.add_row(
        "tensors",
        f"{len(record.tensors)} ({sum(t.numel() for t in record.tensors.values()):,} values)",
    )
    console.print(table)
    return 0


def add_import_rows(table: Table, record: Record, manifest: Mapping[str, Any]) -> None:
    """The rows of an imported model: provenance, input contract, classes, test accuracy."""
    table.add_row("imported", f"yes: {manifest.get('format', '?')} (misentry import)")
    table.add_row("source file", str(manifest.get("source", "?")))
    table.add_row("source sha256", str(manifest.get("source_sha256", "?")))
    if manifest.get("factory"):
        args = manifest.get("args") or {}
        call = ", ".join(f"{key}={json.dumps(value)}" for key, value in args.items())
        table.add_row("factory", f"{manifest['factory']}({call})")
    if manifest.get("weights"):
        table.add_row("weights", f"{manifest['weights']} (sha256 {manifest['weights_sha256']})")
    table.add_row("input contract", contract_text(manifest.get("contract") or {}))
    classes = record.params.get("classes")
    table.add_row("classes", ", ".join(map(str, classes)) if classes else "none named")
    accuracy = record.metrics.get("test_accuracy")
    if isinstance(accuracy, float):
        table.add_row("test accuracy", f"{accuracy:.2%}")


def contract_text(contract: Mapping[str, Any]) -> str:
    """An input contract (``InputContract.to_json``) as a user gave it to ``misentry import``."""
    parts = [f"values in {contract.get('input_range', '0-1')}"]
    for name in ("mean", "std"):
        values = contract.get(name)
        if values is not None:
            parts.append(f"{name} {' '.join(f'{v:g}' for v in values)}")
    layout = "channels last (N, H, W, C)" if contract.get("channels_last") else "(N, C, H, W)"
    return ", ".join([*parts, layout])
