"""The ``misentry`` command line: argument parsing and printing only.

Every verb calls the library and renders what it returns with rich; the library itself never
prints. Verbs are registered only once they work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

DESCRIPTION = """\
misentry checks that a deployed classifier is still the model you trained.

It builds tampered variants of a model (BIVBench), generates fingerprint samples that make a
tampered model answer differently from the original, and verifies a live model by querying it
with those samples, using top-1 labels only.

Everything runs offline on the embedded mnist5k dataset; CIFAR-10, GTSRB, MNIST and ImageNet
are read from a folder you give with --root.
"""

EPILOG = """\
examples:
  misentry data list                       datasets and where they come from
  misentry data show mnist5k               pool sizes of one dataset
  misentry models list                     architectures
  misentry train --dataset mnist5k --arch lenet5 --seed 0 --out runs/target
  misentry record show runs/target         verify a record and print what it holds
  misentry tamper list                     the BIVBench tampering variants
  misentry tamper build --target runs/target --variant all --instances 10 --out runs/bench
"""

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 1."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 0
    _set_threads(args.threads)
    try:
        result: int = args.handler(args)
        return result
    except (CliError, KeyError, ValueError, FileNotFoundError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; finished records are kept, nothing half-written")
        return 130


def build_parser() -> argparse.ArgumentParser:
    from misentry import __version__

    parser = argparse.ArgumentParser(
        prog="misentry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"misentry {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: all cores)",
    )
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_data(verbs)
    _add_models(verbs)
    _add_train(verbs)
    _add_record(verbs)
    _add_tamper(verbs)
    return parser


def _verb(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    handler: Callable[[argparse.Namespace], int] | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    sub = verbs.add_parser(
        name,
        help=help_text,
        description=description or help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if handler is not None:
        sub.set_defaults(handler=handler)
    return sub


# --- data -------------------------------------------------------------------------------------


def _add_data(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    data = _verb(verbs, "data", "list datasets and show their pools")
    sub = data.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    _verb(sub, "list", "list the known datasets", _data_list)
    show = _verb(
        sub,
        "show",
        "show a dataset and the sizes of its pools",
        _data_show,
        description="Load a dataset, cut it into its five pools with --data-seed, and print the "
        "size of each pool and its images per class.\n\nPools: owner_train (the owner trains "
        "the target and its fingerprint zoo here), attacker (data of a tamperer or a benign "
        "updater), val (tuning), test (accuracy, label flips), source (natural images that "
        "fingerprints start from).",
    )
    show.add_argument("name", help="dataset name (see `misentry data list`)")
    show.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    show.add_argument("--data-seed", type=int, default=0, help="seed of the split (default 0)")
    data.set_defaults(handler=lambda _args: _print_help(data))


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def _data_list(_args: argparse.Namespace) -> int:
    from misentry.data import DATASETS

    table = Table(title="datasets")
    for col in ("name", "shape", "classes", "source", "target arch", "description"):
        table.add_column(col)
    for info in DATASETS.values():
        table.add_row(
            info.name,
            "x".join(map(str, info.input_shape)),
            str(info.num_classes),
            "folder (--root)" if info.needs_root else "embedded",
            info.default_arch,
            info.description,
        )
    console.print(table)
    return 0


def _data_show(args: argparse.Namespace) -> int:
    from misentry.data import POOL_NAMES, get_dataset

    info = get_dataset(args.name)
    console.print(f"[bold]{info.name}[/]: {info.description}")
    console.print(
        f"input {'x'.join(map(str, info.input_shape))}, {info.num_classes} classes, "
        f"mean {info.mean}, std {info.std}, target architecture {info.default_arch}"
    )
    shares = info.fractions.as_dict()
    if info.needs_root and args.root is None:
        console.print(f"read from a folder with --root DIR; expected layout:\n{info.layout}")
        console.print(
            "pool shares per class: "
            + ", ".join(f"{name} {shares[name]:.0%}" for name in POOL_NAMES)
        )
        return 0
    with console.status(f"loading {info.name}…"):
        pools = info.pools(args.data_seed, args.root)
    table = Table(title=f"pools of {info.name} (data seed {args.data_seed})")
    for col in ("pool", "share", "images", "per class (min-max)"):
        table.add_column(col, justify="right" if col != "pool" else "left")
    for name in POOL_NAMES:
        counts = pools[name].class_counts(info.num_classes)
        present = counts[counts > 0]
        span = f"{int(present.min())}-{int(present.max())}" if present.numel() else "-"
        table.add_row(name, f"{shares[name]:.0%}", str(len(pools[name])), span)
    console.print(table)
    return 0


# --- models -----------------------------------------------------------------------------------


def _add_models(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = _verb(verbs, "models", "list the architectures")
    sub = models.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    _verb(sub, "list", "list the architectures and their parameter counts", _models_list)
    models.set_defaults(handler=lambda _args: _print_help(models))


def _models_list(_args: argparse.Namespace) -> int:
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


# --- train ------------------------------------------------------------------------------------


def _add_train(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = _verb(
        verbs,
        "train",
        "train a target model and write its record",
        _train,
        description="Train the owner's target model on the owner_train pool and write a "
        "record (meta.json + weights.safetensors) to --out.\n\nThe recipe is the dataset's "
        "preset; the options below override single fields. A record with the same "
        "configuration already in --out is verified and reused instead of retrained.",
    )
    train.add_argument("--dataset", default="mnist5k", help="dataset name (default mnist5k)")
    train.add_argument("--arch", help="architecture (default: the dataset's target architecture)")
    train.add_argument("--seed", type=int, default=0, help="model seed: initial weights, order")
    train.add_argument("--data-seed", type=int, default=0, help="seed of the pool split")
    train.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    train.add_argument(
        "--out", type=Path, help="record folder (default runs/target/<dataset>-<id>)"
    )
    train.add_argument("--epochs", type=int, help="override the preset's epochs")
    train.add_argument("--lr", type=float, help="override the preset's learning rate")
    train.add_argument("--batch-size", type=int, help="override the preset's batch size")
    train.add_argument("--optimizer", choices=("sgd", "adam"), help="override the optimizer")
    train.add_argument("--force", action="store_true", help="retrain and overwrite --out")
    train.add_argument("--json", action="store_true", help="print the record's meta as JSON")


def _train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from misentry.models import (
        TargetConfig,
        default_path,
        load_record,
        save_record,
        target_record_stub,
        train_target,
    )
    from misentry.models.record import RecordError

    config = TargetConfig(
        dataset=args.dataset, arch=args.arch, data_seed=args.data_seed, model_seed=args.seed
    )
    overrides = {
        key: value
        for key, value in (
            ("epochs", args.epochs),
            ("lr", args.lr),
            ("batch_size", args.batch_size),
            ("optimizer", args.optimizer),
        )
        if value is not None
    }
    config = replace(config, train=replace(config.recipe, **overrides))
    stub = target_record_stub(config)
    out = args.out or default_path("runs", stub)
    if out.exists() and not args.force:
        try:
            existing = load_record(out)
        except RecordError as err:
            raise CliError(
                f"{out} exists but is not an intact record: {err}. "
                "Use --force to overwrite or choose another --out"
            ) from None
        if existing.record_id == stub.record_id:
            _report_target(existing, out, args.json, reused=True)
            return 0
        raise CliError(
            f"{out} already holds another record ({existing.record_id[:16]}); "
            "use --force to overwrite or choose another --out"
        )
    started = time.perf_counter()
    with Progress(
        TextColumn(f"training {config.architecture} on {config.dataset}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps, loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=args.json,
    ) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))

        smoothed = [math.nan]  # running mean of the batch losses, for a readable display

        def on_step(state: Any) -> None:
            last = smoothed[0]
            smoothed[0] = (
                state.last_loss if math.isnan(last) else 0.98 * last + 0.02 * state.last_loss
            )
            progress.update(task, completed=state.step, total=state.total_steps, loss=smoothed[0])

        record = train_target(config, args.root, on_step=on_step)
    record = record.with_metrics(wall_seconds=time.perf_counter() - started)
    save_record(record, out, overwrite=args.force)
    _report_target(record, out, args.json, reused=False)
    return 0


def _report_target(record: Any, out: Path, as_json: bool, reused: bool) -> None:
    from misentry.models.record import read_meta

    if as_json:
        print(json.dumps({"path": str(out), **read_meta(out)}, indent=2))
        return
    m = record.metrics
    verb = "reused the finished record" if reused else "trained"
    console.print(
        f"{verb} [bold]{record.architecture}[/] on [bold]{record.dataset}[/] "
        f"(model seed {record.model_seed}, data seed {record.data_seed})"
    )
    console.print(
        f"test accuracy [bold green]{m['test_accuracy']:.2%}[/] "
        f"(val {m['val_accuracy']:.2%}, train {m['train_accuracy']:.2%}); "
        f"{m['epochs']} epochs, {m['steps']} steps in {m['train_seconds']:.1f} s"
    )
    console.print(f"record {record.record_id[:16]} at {out}")


# --- record -----------------------------------------------------------------------------------


def _add_record(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = _verb(verbs, "record", "inspect and verify records")
    sub = record.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    show = _verb(
        sub,
        "show",
        "verify a record folder and print what it holds",
        _record_show,
        description="Check a record's id and the size and sha256 of its tensor files, then "
        "print its identity and metrics. Exits 1 if the record was changed or truncated.",
    )
    show.add_argument("path", type=Path, help="record folder")
    show.add_argument("--json", action="store_true", help="print meta.json as JSON")
    record.set_defaults(handler=lambda _args: _print_help(record))


def _record_show(args: argparse.Namespace) -> int:
    from misentry.models.record import RecordError, load_record, read_meta

    try:
        record = load_record(args.path)
    except RecordError as err:
        raise CliError(str(err)) from None
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


# --- tamper -----------------------------------------------------------------------------------


def _add_tamper(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tamper = _verb(verbs, "tamper", "list and build BIVBench tampering variants")
    sub = tamper.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    show = _verb(sub, "list", "list the tampering variants", _tamper_list)
    show.add_argument("--json", action="store_true", help="print the variants as JSON")
    build = _verb(
        sub,
        "build",
        "build tampered instances of a target",
        _tamper_build,
        description="Build N instances of each chosen variant from a target record, each the "
        "subtlest model that meets the variant's objective and changes some top-1 label on "
        "the observability probe. Instances go to OUT/<variant>/<index>/ as records; "
        "finished ones are skipped, so an interrupted run resumes where it stopped.\n\n"
        "Instance seeds come from the benchmark namespace, and recipes read only the "
        "attacker pool for training, so fingerprint generators never see them.",
    )
    build.add_argument("--target", type=Path, required=True, help="target record folder")
    build.add_argument(
        "--variant", default="all", help="a slug, comma-separated slugs, or 'all' (default)"
    )
    build.add_argument("--instances", type=int, default=10, help="instances per variant (10)")
    build.add_argument("--seed", type=int, default=0, help="first instance index (default 0)")
    build.add_argument("--out", type=Path, required=True, help="output folder")
    build.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    build.add_argument("--json", action="store_true", help="print a JSON summary")
    tamper.set_defaults(handler=lambda _args: _print_help(tamper))


def _tamper_list(args: argparse.Namespace) -> int:
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


def _tamper_build(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from misentry.models import RecordError, load_record
    from misentry.tamper.builder import Bench, BuildEvent, build_all
    from misentry.tamper.registry import select

    if args.instances < 1:
        raise CliError("--instances must be at least 1")
    variants = select(args.variant)
    try:
        target = load_record(args.target)
    except RecordError as err:
        raise CliError(f"--target: {err}") from None
    with console.status("loading the target, its pools and the observability probe…"):
        bench = Bench.load(target, args.root)
    indices = range(args.seed, args.seed + args.instances)
    per_variant: dict[str, list[BuildEvent]] = {}
    with Progress(
        TextColumn("{task.fields[current]:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("instances"),
        TimeElapsedColumn(),
        console=err_console,
        transient=args.json,
    ) as progress:
        task = progress.add_task(
            "build", total=len(variants) * args.instances, current=variants[0].slug
        )

        queue = [v.slug for v in variants for _ in indices]  # what is built next, in order

        def on_instance(event: BuildEvent) -> None:
            per_variant.setdefault(event.variant, []).append(event)
            done = sum(len(events) for events in per_variant.values())
            progress.update(task, advance=1, current=queue[done] if done < len(queue) else "done")

        build_all(bench, variants, indices, args.out, on_instance=on_instance)
    summary = [_variant_summary(slug, events) for slug, events in per_variant.items()]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"instances in {args.out}")
    for col in ("variant", "built", "skipped", "observable", "objective met", "changed", "s/inst"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in summary:
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
    return 0


def _variant_summary(slug: str, events: list[Any]) -> dict[str, Any]:
    metrics = [e.record.metrics for e in events]
    built = [m for e, m in zip(events, metrics, strict=True) if not e.skipped]
    return {
        "variant": slug,
        "instances": len(events),
        "built": len(built),
        "skipped": len(events) - len(built),
        "observable": sum(bool(m["observable"]) for m in metrics),
        "objective_met": sum(bool(m["objective_met"]) for m in metrics),
        "mean_changed_fraction": sum(m["changed_fraction"] for m in metrics) / len(metrics),
        "mean_build_seconds": sum(m["build_seconds"] for m in metrics) / len(metrics),
        "paths": [str(e.path) for e in events],
    }


def _set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
