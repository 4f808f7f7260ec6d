"""``misentry tamper``: list the BIVBench variants and build tampered instances of a target."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from misentry.cli.common import CliError, Verbs, add_group, add_verb, console, err_console

if TYPE_CHECKING:
    from misentry.tamper.builder import BuildEvent

BUILD_DESCRIPTION = """\
Build N instances of each chosen variant from a target record, each the subtlest model that \
meets the variant's objective and changes some top-1 label on the observability probe. \
Instances go to OUT/<variant>/<index>/ as records; finished ones are skipped, so an interrupted \
run resumes where it stopped. A variant whose tampering cannot act on the target (some do not \
apply to a model imported as a TorchScript or torch.export program) is listed as skipped with \
the reason, and the others still build.

Instance seeds come from the benchmark namespace (or, with --namespace tune, from the \
validation namespace used to tune generators), and recipes read only the attacker pool for \
training, so fingerprint generators never see them."""


def add(verbs: Verbs) -> None:
    """Register ``misentry tamper list`` and ``misentry tamper build``."""
    sub = add_group(verbs, "tamper", "list and build BIVBench tampering variants")
    show = add_verb(sub, "list", "list the tampering variants", run_list)
    show.add_argument("--json", action="store_true", help="print the variants as JSON")
    build = add_verb(
        sub,
        "build",
        "build tampered instances of a target",
        run_build,
        description=BUILD_DESCRIPTION,
    )
    build.add_argument("--target", type=Path, required=True, help="target record folder")
    build.add_argument(
        "--variant", default="all", help="a slug, comma-separated slugs, or 'all' (default)"
    )
    build.add_argument("--instances", type=int, default=10, help="instances per variant (10)")
    build.add_argument("--seed", type=int, default=0, help="first instance index (default 0)")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    build.add_argument(
        "--namespace",
        choices=("bench", "tune"),
        default="bench",
        help="bench: instances a reported table evaluates (default); tune: validation "
        "instances with seeds of their own, for tuning fingerprint generators",
    )
    build.add_argument("--json", action="store_true", help="print a JSON summary")


def run_list(args: argparse.Namespace) -> int:
    """Print the registered variants."""
    from misentry.tamper.registry import VARIANTS

    rows: list[dict[str, Any]] = [
        {
            "slug": v.slug,
            "family": v.family,
            "kind": "malicious" if v.malicious else "benign",
            "description": v.description,
            "params": v.tampering.params_json(),
        }
        for v in VARIANTS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"BIVBench variants ({len(rows)})")
    for col in ("slug", "family", "kind", "description"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["slug"], row["family"], row["kind"], row["description"])
    console.print(table)
    return 0


def run_build(args: argparse.Namespace) -> int:
    """Build the instances (skipping finished ones) and print a summary per variant."""
    from misentry.models import RecordError, load_record
    from misentry.tamper.builder import BuildConfig, Workspace, build_all
    from misentry.tamper.namespace import Namespace
    from misentry.tamper.registry import select

    if args.instances < 1:
        raise CliError("--instances must be at least 1")
    variants = select(args.variant)
    try:
        target = load_record(args.target)
    except RecordError as err:
        raise CliError(f"--target: {err}") from None
    with console.status("loading the target, its pools and the observability probe…"):
        workspace = Workspace.load(target, args.root)
    indices = range(args.seed, args.seed + args.instances)
    queue = [v.slug for v in variants for _ in indices]  # what is built next, in order
    config = BuildConfig(namespace=Namespace(args.namespace))
    with _instance_bar(queue, transient=args.json) as on_instance:
        events = build_all(workspace, variants, indices, args.out, config, on_instance=on_instance)
    per_variant: dict[str, list[BuildEvent]] = {}
    for event in events:
        per_variant.setdefault(event.variant, []).append(event)
    summary = [_variant_summary(slug, found) for slug, found in per_variant.items()]
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, args.out)
    return 0


@contextmanager
def _instance_bar(queue: list[str], *, transient: bool) -> Iterator[Callable[[BuildEvent], None]]:
    """A progress bar over the instances of ``queue`` (variant slugs in build order) that
    names the variant being built; yields the ``on_instance`` callback of ``build_all``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.fields[current]:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("instances"),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    ) as progress:
        task = progress.add_task("build", total=len(queue), current=queue[0])
        done = [0]

        def on_instance(_event: BuildEvent) -> None:
            done[0] += 1
            upcoming = queue[done[0]] if done[0] < len(queue) else "done"
            progress.update(task, advance=1, current=upcoming)

        yield on_instance


def _variant_summary(slug: str, events: list[BuildEvent]) -> dict[str, Any]:
    reasons = [e.not_applicable for e in events if e.not_applicable is not None]
    if reasons:
        return {
            "variant": slug,
            "instances": len(events),
            "built": 0,
            "skipped": 0,
            "not_applicable": reasons[0],
            "paths": [],
        }
    metrics = [e.record.metrics for e in events if e.record is not None]
    built = [m for e, m in zip(events, metrics, strict=True) if not e.skipped]
    return {
        "variant": slug,
        "instances": len(events),
        "built": len(built),
        "skipped": len(events) - len(built),
        "not_applicable": None,
        "observable": sum(bool(m["observable"]) for m in metrics),
        "objective_met": sum(bool(m["objective_met"]) for m in metrics),
        "mean_changed_fraction": sum(m["changed_fraction"] for m in metrics) / len(metrics),
        "mean_build_seconds": sum(m["build_seconds"] for m in metrics) / len(metrics),
        "paths": [str(e.path) for e in events],
    }


def _print_summary(summary: list[dict[str, Any]], out: Path) -> None:
    table = Table(title=f"instances in {out}")
    for col in ("variant", "built", "skipped", "observable", "objective met", "changed", "s/inst"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    not_applicable = [row for row in summary if row["not_applicable"] is not None]
    for row in summary:
        if row["not_applicable"] is not None:
            table.add_row(row["variant"], "0", "0", "n/a", "n/a", "-", "-")
            continue
        table.add_row(
            row["variant"],
            str(row["built"]),
            str(row["skipped"]),
            f"{row['observable']}/{row['instances']}",
            f"{row['objective_met']}/{row['instances']}",
            f"{row['mean_changed_fraction']:.2%}",
            f"{row['mean_build_seconds']:.2f}",
        )
    console.print(table)
    for row in not_applicable:
        console.print(
            f"{row['variant']}: skipped: {row['not_applicable']}", highlight=False, soft_wrap=True
        )
