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
  misentry demo                            the main job on mnist5k, start to finish
  misentry bench --preset digits-smoke --out runs/smoke    benchmark, results and report
  misentry data list                       datasets and where they come from
  misentry data show mnist5k               pool sizes of one dataset
  misentry models list                     architectures
  misentry train --dataset mnist5k --arch lenet5 --seed 0 --out runs/target
  misentry record show runs/target         verify a record and print what it holds
  misentry tamper list                     the BIVBench tampering variants
  misentry tamper build --target runs/target --variant all --instances 10 --out runs/bench
  misentry fingerprint --method misentry --target runs/target --n 100 --out runs/fp
  misentry export --model runs/target --onnx runs/target.onnx
  misentry serve --model runs/target --name target        Open Inference Protocol on :8080
  misentry verify --fingerprints runs/fp --endpoint http://127.0.0.1:8080/v2/models/target
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
    _add_fingerprint(verbs)
    from misentry.cli.export import add_export

    add_export(verbs, _verb)
    from misentry.cli.verify import add_verify

    add_verify(verbs, _verb)
    from misentry.cli.serve import add_serve

    add_serve(verbs, _verb)
    from misentry.cli.demo import add_demo

    add_demo(verbs, _verb)
    from misentry.cli.report import add_report

    add_report(verbs, _verb)
    from misentry.cli.bench import add_bench

    add_bench(verbs, _verb)
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
        "Instance seeds come from the benchmark namespace (or, with --namespace tune, from the "
        "validation namespace used to tune generators), and recipes read only the attacker "
        "pool for training, so fingerprint generators never see them.",
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
    from misentry.tamper.builder import BuildConfig, BuildEvent, Workspace, build_all
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
        bench = Workspace.load(target, args.root)
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

        config = BuildConfig(namespace=Namespace(args.namespace))
        build_all(bench, variants, indices, args.out, config, on_instance=on_instance)
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


# --- fingerprint ------------------------------------------------------------------------------

FINGERPRINT_DESCRIPTION = """\
Generate N fingerprint samples for a target record and write them to --out as a bundle folder:
fingerprints.safetensors (the 8-bit images, the target's top-1 label on each, the index of each
one's natural source image) and manifest.json (method, profile, parameters, seeds, target id,
per-sample statistics, cost). With a key (--key-file, or the MISENTRY_BUNDLE_KEY environment
variable) the bundle is signed with HMAC-SHA256, and a changed bundle is refused when loaded.
A verifier later sends the images to the deployed model and compares its top-1 labels.

Fingerprints start from the target's `source` pool (see `misentry data show`); MiSentry also
builds a zoo of subtly tampered copies of the target from the owner's held-out `val` pool;
PublicCheck and SSF-BO train a small autoencoder on the owner's `owner_train` pool.

methods:
  natural          unmodified source images: the floor every method must beat
  noise            source images plus uniform noise (--eps, default 8/255)
  ibsf             IBSF (Bai et al., ICML 2024): points where k decision boundaries
                   intersect, within an L2 ball around the source (--eps, default 1.0)
  ssf              SSF (He et al., CVPR 2019): samples whose output is most sensitive to the
                   output layer's weights, within an L-inf ball (--eps, default 8/255), chosen
                   to cover the most active neurons (MANC)
  publiccheck      PublicCheck (Wang et al., S&P 2023): pairs of images just either side of a
                   decision boundary, found along latent paths of an autoencoder between
                   sources of different labels, with top-1 label queries only (no gradients)
  ssf_bo           SSF-BO (Kuttichira et al., KBS 2022): the SSF sensitivity maximized over
                   the autoencoder's latent space by Gaussian-process Bayesian optimization,
                   starting from the source's code; 1-channel datasets only
  misentry         MiSentry: PGD against a zoo of tampered copies with meta-learning, then
                   8-bit refinement and screening; the strict profile unless --profile covert
  misentry-covert  MiSentry with the covert profile (= --method misentry --profile covert)

profiles (MiSentry only):
  strict  fingerprints sit where three decision boundaries meet (target confidence about
          1/3, the top three logits a tiny window apart): almost any change of the weights
          flips their label, so they catch the subtlest tampering, but they do not look
          like the queries real users send
  covert  each fingerprint's confidence, entropy and margin lie inside the normal band of
          real images of its label: they look like normal queries, and catch only the
          larger tamperings

parameters: --norm, --eps and --set KEY=VALUE override single fields of the method's
parameters (VALUE is read as JSON when it parses, else as a string; a JSON list becomes a
tuple). --eps accepts a fraction such as 8/255. The names and defaults are in each method's
parameter class (e.g. misentry.fingerprint.methods.misentry.MisentryParams)."""

FINGERPRINT_EPILOG = """\
examples:
  misentry fingerprint --method natural --target runs/target --n 100 --out runs/fp-natural
  misentry fingerprint --method misentry --profile covert --target runs/target --n 100 \\
      --out runs/fp-covert --key-file owner.key --export-png runs/fp-covert-png
  misentry fingerprint --method misentry --target runs/target --n 100 --out runs/fp \\
      --norm l2 --eps 1.5 --set steps=30 --set 'zoo=["ft_last:1e-4x4", "ft_all:1e-5x4"]'"""


def _add_fingerprint(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fp = _verb(
        verbs,
        "fingerprint",
        "generate a fingerprint bundle for a target",
        _fingerprint,
        description=FINGERPRINT_DESCRIPTION,
    )
    fp.epilog = FINGERPRINT_EPILOG
    fp.add_argument(
        "--method",
        required=True,
        help="the method: one of those listed above",
    )
    fp.add_argument(
        "--profile",
        choices=("strict", "covert"),
        help="MiSentry's profile (default strict); only with --method misentry",
    )
    fp.add_argument("--target", type=Path, required=True, help="target record folder")
    fp.add_argument("--n", type=int, default=100, help="number of fingerprints (default 100)")
    fp.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    fp.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    fp.add_argument("--norm", choices=("linf", "l2"), help="distance bound's norm (override)")
    fp.add_argument(
        "--eps", type=_fraction, help="distance bound in [0, 1] pixel units, e.g. 8/255"
    )
    fp.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one parameter of the method (repeatable)",
    )
    fp.add_argument(
        "--key-file",
        type=Path,
        help="sign the bundle with this key (default: MISENTRY_BUNDLE_KEY if set, else unsigned)",
    )
    fp.add_argument(
        "--export-png", type=Path, metavar="DIR", help="also write a PNG sheet per fingerprint"
    )
    fp.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    fp.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    fp.add_argument("--json", action="store_true", help="print a JSON summary")


def _fraction(text: str) -> float:
    """A float, or a fraction such as ``8/255``."""
    numerator, slash, denominator = text.partition("/")
    try:
        return float(numerator) / float(denominator) if slash else float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None


def _fingerprint(args: argparse.Namespace) -> int:
    from misentry.cli.verbs import stage_bars
    from misentry.data import get_dataset
    from misentry.fingerprint.base import GenerationError, SearchContext
    from misentry.fingerprint.bundle import MANIFEST_FILE, load_key, save_bundle
    from misentry.models import RecordError, load_model

    if args.n < 1:
        raise CliError("--n must be at least 1")
    method, profile = _method_and_profile(args.method, args.profile)
    generator = _build_generator(method, _parameter_overrides(args))
    out: Path = args.out
    if out.exists():
        is_bundle = (out / MANIFEST_FILE).is_file()
        if is_bundle and not args.force:
            raise CliError(f"--out: {out} already holds a bundle; use --force to replace it")
        if not is_bundle and (out.is_file() or any(out.iterdir())):
            raise CliError(
                f"--out: {out} exists and is not a fingerprint bundle; choose a new folder"
            )
    key = load_key(args.key_file)
    try:
        model, record = load_model(args.target)
    except RecordError as err:
        raise CliError(f"--target: {err}") from None
    if record.kind != "target":
        raise CliError(
            f"--target: {args.target} holds a {record.kind!r} record, not a target; "
            "fingerprints are generated for the model the owner trained"
        )
    with err_console.status(f"loading the pools of {record.dataset}…"):
        pools = get_dataset(record.dataset).pools(record.data_seed, args.root)
    manifest: dict[str, Any] = {
        "target_id": record.record_id,
        "dataset": record.dataset,
        "architecture": record.architecture,
        "data_seed": record.data_seed,
        "n": args.n,
        "seed": args.seed,
    }
    if profile is not None:
        manifest["profile"] = profile
    normal = pools["test"].x
    with stage_bars(err_console, transient=args.json) as on_progress:
        context = SearchContext(normal=normal, pools=pools, record=record, progress=on_progress)
        try:
            fps = generator.generate(
                model, pools["source"], args.n, args.seed, normal, manifest, context
            )
        except GenerationError as err:
            raise CliError(str(err)) from None
    save_bundle(fps, out, key=key)
    sheets = None
    if args.export_png is not None:
        from misentry.fingerprint.export import export_png

        sheets = export_png(fps, pools["source"], args.export_png)
    summary = _fingerprint_summary(fps.manifest, fps.labels.tolist(), out, key is not None)
    summary["png"] = None if sheets is None else str(args.export_png)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_fingerprint_summary(summary)
    return 0


def _method_and_profile(method: str, profile: str | None) -> tuple[str, str | None]:
    """The registry's method name for ``--method`` with ``--profile``, and the profile."""
    if method == "misentry-covert" and profile in (None, "covert"):
        return method, "covert"
    if method == "misentry":
        return ("misentry-covert" if profile == "covert" else "misentry"), profile or "strict"
    if profile is not None:
        raise CliError(
            f"--profile applies to --method misentry only, not {method!r} "
            "(misentry-covert is the covert profile already)"
        )
    return method, None


def _parameter_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--norm``, ``--eps`` and every ``--set KEY=VALUE`` as one dict of parameter values."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, equals, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. --set steps=30")
        if key in overrides:
            raise CliError(f"--set: {key} is given twice")
        overrides[key] = _parse_value(text)
    for key, value in (("norm", args.norm), ("eps", args.eps)):
        if value is not None:
            if key in overrides:
                raise CliError(f"{key} is given both as --{key} and with --set; give it once")
            overrides[key] = value
    return overrides


def _parse_value(text: str) -> Any:
    """JSON when ``text`` parses as JSON (lists become tuples), else the string itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def _build_generator(method: str, overrides: dict[str, Any]) -> Any:
    """The method's generator with ``overrides``, after checking names and value types."""
    import dataclasses

    from misentry.fingerprint.registry import get_method

    default = get_method(method)
    fields = [f.name for f in dataclasses.fields(default.params) if f.init]
    for key, value in overrides.items():
        if key not in fields:
            known = ", ".join(fields) if fields else "none"
            raise CliError(f"{method} has no parameter {key!r}; its parameters: {known}")
        overrides[key] = _check_type(key, value, getattr(default.params, key))
    try:
        return get_method(method, **overrides)
    except (TypeError, ValueError) as err:
        raise CliError(f"bad parameters for {method}: {err}") from None


def _check_type(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the parameter's default (an int is a float where one is due)."""
    if default is None:
        return value
    expected: type = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if type(value) is not expected:
        name = expected.__name__
        article = "an" if name[0] in "aeiou" else "a"
        raise CliError(
            f"parameter {key} takes {article} {name} (default {default!r}); got {value!r}"
        )
    return value


def _fingerprint_summary(
    manifest: dict[str, Any], labels: list[int], out: Path, signed: bool
) -> dict[str, Any]:
    import statistics

    samples = manifest.get("samples", [])

    def column(key: str) -> list[float]:
        return [float(row[key]) for row in samples if row.get(key) is not None]

    def median(key: str) -> float | None:
        values = column(key)
        return statistics.median(values) if values else None

    def largest(key: str) -> float | None:
        values = column(key)
        return max(values) if values else None

    screening = manifest.get("screening")
    return {
        "method": manifest.get("method"),
        "profile": manifest.get("profile"),
        "n": len(labels),
        "distinct_labels": len(set(labels)),
        "median_confidence": median("confidence"),
        "median_margin": median("margin"),
        "max_linf": largest("linf"),
        "max_l2": largest("l2"),
        "generation_seconds": manifest.get("generation_seconds"),
        "forward_passes": manifest.get("forward_passes"),
        "backward_passes": manifest.get("backward_passes"),
        "screening": screening if isinstance(screening, dict) else None,
        "path": str(out),
        "signed": signed,
    }


def _print_fingerprint_summary(summary: dict[str, Any]) -> None:
    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=f"fingerprint bundle {summary['path']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    table.add_row("method", str(summary["method"]))
    if summary["profile"] is not None:
        table.add_row("profile", str(summary["profile"]))
    labels = summary["distinct_labels"]
    plural = "" if labels == 1 else "s"
    table.add_row("fingerprints", f"{summary['n']} ({labels} distinct label{plural})")
    table.add_row("median confidence", number(summary["median_confidence"], ".4f"))
    table.add_row("median margin", number(summary["median_margin"], ".3g") + " logits")
    linf = number(None if summary["max_linf"] is None else summary["max_linf"] * 255, ".1f")
    table.add_row("max distance", f"L-inf {linf}/255, L2 {number(summary['max_l2'], '.3f')}")
    table.add_row("generation", f"{number(summary['generation_seconds'], '.1f')} s")
    table.add_row(
        "passes", f"{summary['forward_passes']:,} forward, {summary['backward_passes']:,} backward"
    )
    screening = summary["screening"]
    if screening is not None:
        table.add_row(
            "screening",
            f"{screening.get('unstable', 0)} unstable, {screening.get('outside_window', 0)} "
            "outside the window (of all candidates)",
        )
    table.add_row("signed", "yes (HMAC-SHA256)" if summary["signed"] else "no")
    if summary["png"] is not None:
        table.add_row("PNG sheets", summary["png"])
    console.print(table)


def _set_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
