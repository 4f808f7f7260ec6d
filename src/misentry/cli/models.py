"""``misentry models``: list the architectures."""

from __future__ import annotations

import argparse

from rich.table import Table

from misentry.cli.common import Verbs, add_group, add_verb, console


def add(verbs: Verbs) -> None:
    """Register ``misentry models list``."""
    sub = add_group(verbs, "models", "list the architectures")
    add_verb(sub, "list", "list the architectures and their parameter counts", run_list)


def run_list(_args: argparse.Namespace) -> int:
    """Print the architectures with their parameter counts on 1x28x28 images, 10 classes."""
    from misentry.models import ARCHITECTURES, InputSpec, build_model

    table = Table(title="architectures")
    for col in ("name", "params (1x28x28, 10 classes)", "needs", "description"):
        table.add_column(col)
    spec = InputSpec(1, 28, 28, 10, (0.5,), (0.5,))
    for info in ARCHITECTURES.values():
        try:
            count = f"{sum(p.numel() for p in build_model(info.name, spec).parameters()):,}"
        except ImportError:
            count = "-"
        table.add_row(
            info.name, count, f"extra: {info.extra}" if info.extra else "", info.description
        )
    console.print(table)
    return 0
