"""``misentry train``: train the owner's target model and write its record."""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from misentry.cli.common import CliError, Verbs, add_verb, console, err_console

if TYPE_CHECKING:
    from misentry.models import Record, TargetConfig, TrainState

DESCRIPTION = """\
Train the owner's target model on the owner_train pool and write a record (meta.json + \
weights.safetensors) to --out.

The recipe is the dataset's preset; the options below override single fields. A record with \
the same configuration already in --out is verified and reused instead of retrained."""


def add(verbs: Verbs) -> None:
    """Register ``misentry train``."""
    train = add_verb(
        verbs,
        "train",
        "train a target model and write its record",
        run,
        description=DESCRIPTION,
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


def run(args: argparse.Namespace) -> int:
    """Reuse the finished record at --out, or train the target and save its record there."""
    from misentry.models import TargetConfig, default_path, save_record, target_record_stub
    from misentry.models.record import RecordError
    from misentry.models.target import reusable_target

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
    out: Path = args.out or default_path("runs", target_record_stub(config, args.root))
    if not args.force:
        try:
            existing = reusable_target(config, out, args.root)
        except RecordError as err:
            raise CliError(f"{err}; use --force to overwrite or choose another --out") from None
        if existing is not None:
            _print_target(existing, out, args.json, reused=True)
            return 0
    started = time.perf_counter()
    record = _train(config, args.root, transient=args.json)
    record = record.with_metrics(wall_seconds=time.perf_counter() - started)
    save_record(record, out, overwrite=args.force)
    _print_target(record, out, args.json, reused=False)
    return 0


def _train(config: TargetConfig, root: Path | None, *, transient: bool) -> Record:
    """:func:`~misentry.models.train_target` with a progress bar of its steps and loss."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from misentry.models import train_target

    with Progress(
        TextColumn(f"training {config.architecture} on {config.dataset}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps, loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
    ) as progress:
        task = progress.add_task("train", total=None, loss=float("nan"))
        smoothed = [math.nan]  # running mean of the batch losses, for a readable display

        def on_step(state: TrainState) -> None:
            last = smoothed[0]
            smoothed[0] = (
                state.last_loss if math.isnan(last) else 0.98 * last + 0.02 * state.last_loss
            )
            progress.update(task, completed=state.step, total=state.total_steps, loss=smoothed[0])

        return train_target(config, root, on_step=on_step)


def _print_target(record: Record, out: Path, as_json: bool, reused: bool) -> None:
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
