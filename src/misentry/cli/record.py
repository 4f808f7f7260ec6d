"""``misentry record``: verify a record folder and print what it holds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from misentry.cli.common import Verbs, add_group, add_verb, console


def add(verbs: Verbs) -> None:
    """Register ``misentry record show``."""
    sub = add_group(verbs, "record", "inspect and verify records")
    show = add_verb(
        sub,
        "show",
        "verify a record folder and print what it holds",
        run_show,
        description="Check a record's id and the size and sha256 of its tensor files, then "
        "print its identity and metrics. Exits 1 if the record was changed or truncated.",
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
    table = Table(
        title=f"{record.kind} record {record.record_id[:16]} (verified)", show_header=False
    )
    table.add_column("field")
    table.add_column("value")
    for key, value in record.identity().items():
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
