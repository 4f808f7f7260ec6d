"""The ``misentry bench`` verb: run a benchmark preset end to end and print its detection table
(:func:`detection_table`, which ``misentry demo`` prints too)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from misentry.bench.jobs.tasks import BANDS
from misentry.cli.common import Verbs, add_verb, console, err_console, integers, names, stage_bars

if TYPE_CHECKING:
    from misentry.bench.presets import Preset
    from misentry.bench.results import ResultRow

EXECUTORS = ("local", "process", "ray")
"""Where jobs run: one after another in this process, in a pool of spawned worker processes, or
as Ray tasks on this machine (the ``ray`` extra)."""

BENCH_DESCRIPTION = """\
Run a benchmark preset end to end: train the target, build the BIVBench instances, generate one
fingerprint bundle per method, count how many fingerprints each instance labels differently,
and write results.json, results.csv and the report (report.md, report.html) to --out/results.

Besides the detection table (every variant x every method, N_S 1..20), a run measures each
bundle's covertness and cost, and the optional experiments: leakage (adaptive attacks that keep
leaked fingerprints' labels), sensitivity (detection against the tampering's training steps),
ablation (MiSentry configurations), frontier (MiSentry's covertness swept from strict to
covert against detection on the subtle variants) and tolerance (strict MiSentry generated per
deployment tolerance, exact to bf16, and every bundle's false alarms on the benign serving
stacks of each level).

Every step is a job in --out/jobs/, named by a hash of its configuration: a rerun reuses every
finished job, and a run that was stopped resumes where it was, whatever the executor. Jobs of
one wave are independent: --executor process or ray runs them side by side. The options below
override the preset's fields: --methods runs any registered methods (`misentry fingerprint
--help` lists them), --set changes one parameter of one method, and --band covert holds every
method but MiSentry to the covert output band, to compare methods at equal covertness.

--target DIR runs the benchmark on a target record you already have (made by `misentry
import` or `misentry train`) instead of a preset: nothing is trained, the dataset is the
record's (--root DIR for a dataset read from disk), and a variant that cannot be built from the
model is skipped, with the reason in the output and the report. Its defaults: --methods
misentry (strict), --variants all, --instances 3, --n-fingerprints 100, --ns 1,5, --experiments
none, --band none (the fingerprint count, N_S values and band are the presets' defaults).

presets:
  digits-smoke     the 8x8 digits, a 3-epoch target, natural/noise/misentry (cheap settings),
                   3 variants, 1 instance, 20 fingerprints: seconds, for checking an install
  mnist5k          the embedded mnist5k with LeNet-5, all methods, all variants, 10 instances,
                   100 fingerprints, every experiment
  mnist5k-demo     mnist5k with 3 instances per variant and smaller experiment settings: what
                   `misentry demo` runs, about 15 minutes on 2 cores
  mnist5k-color    ResNet-20 on the embedded coloured digits (3x32x32): the colour path offline
  cifar10-paper    CIFAR-10 with ResNet-20, read from --data-dir
  gtsrb-paper      GTSRB, read from --data-dir
  imagenet-paper   ImageNet-1k with DenseNet-121, read from --data-dir
"""

BENCH_EPILOG = """\
examples:
  misentry bench --preset digits-smoke --out runs/smoke
  misentry bench --preset mnist5k --methods natural,misentry --instances 3 --out runs/bench
  misentry bench --target runs/my-target --variants ft_last_lr1e-4,pruning --instances 10 \
      --out runs/my-bench
  misentry bench --preset mnist5k --experiments none --executor process --workers 2 --out runs/b
  misentry bench --preset cifar10-paper --data-dir data/cifar10 --out runs/cifar10
  misentry bench --preset mnist5k --methods misentry-covert,natural,ibsf --band covert \\
      --experiments none --out runs/covert
  misentry bench --preset mnist5k --methods misentry --set misentry:steps=30 --out runs/steps
"""

LOG_WIDTH = 160
"""Columns of the printed table when stdout is not a terminal (a log file): wide enough for the
detection table of every method, which a terminal's width would cut."""


def add(verbs: Verbs) -> None:
    """Register ``misentry bench``."""
    bench = add_verb(
        verbs,
        "bench",
        "run a benchmark preset end to end (resumable) and print the detection table",
        run,
        description=BENCH_DESCRIPTION,
        epilog=BENCH_EPILOG,
    )
    which = bench.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="the preset (listed above)")
    which.add_argument(
        "--target",
        type=Path,
        metavar="DIR",
        help="a target record you have (misentry import / train): benchmark it, no training",
    )
    bench.add_argument("--methods", type=names, help="methods, comma-separated (override)")
    bench.add_argument("--variants", help="'all' or variant slugs, comma-separated (override)")
    bench.add_argument("--instances", type=int, help="instances per variant (override)")
    bench.add_argument("--n-fingerprints", type=int, help="fingerprints per bundle (override)")
    bench.add_argument("--ns", type=integers, help="N_S values of the table, e.g. 1,5 (override)")
    bench.add_argument(
        "--experiments",
        type=_experiments,
        help="optional experiments, comma-separated, or 'none' (override; "
        "of leakage, sensitivity, ablation, frontier, tolerance)",
    )
    bench.add_argument(
        "--set",
        dest="overrides",
        metavar="METHOD:KEY=VALUE",
        action="append",
        default=[],
        help="one parameter of one method, VALUE read as JSON when it parses (repeatable; "
        "e.g. misentry:steps=30, ssf:eps=0.1)",
    )
    bench.add_argument(
        "--band",
        choices=BANDS,
        help="covert: every method but MiSentry keeps only fingerprints inside the covert "
        "output band (the 10th-90th percentile of the target's entropy and confidence on "
        "the owner's val images of the same label), generated from every source image, the "
        "first N kept (default: the preset's, none)",
    )
    bench.add_argument("--seed", type=int, default=0, help="fingerprint generation seed")
    bench.add_argument(
        "--data-dir",
        "--root",
        dest="data_dir",
        type=Path,
        help="dataset folder, for datasets read from disk (--root: the same)",
    )
    bench.add_argument(
        "--executor", choices=EXECUTORS, default="local", help="where jobs run (default local)"
    )
    bench.add_argument(
        "--workers", type=int, help="jobs at once for process/ray (default: the CPU count)"
    )
    bench.add_argument(
        "--threads",
        type=int,
        help="torch threads per job (default: all for local, CPUs / workers otherwise)",
    )
    bench.add_argument("--out", type=Path, required=True, help="run folder (created or resumed)")


def _experiments(text: str) -> tuple[str, ...]:
    return () if text.strip() == "none" else names(text)


def method_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``METHOD:KEY=VALUE`` strings -> {method: {key: value}}, each method's ``KEY=VALUE`` read
    by :func:`misentry.fingerprint.service.parse_overrides`; a ValueError names a bad item."""
    from misentry.fingerprint.service import parse_overrides

    grouped: dict[str, list[str]] = {}
    for item in items:
        method, colon, setting = item.partition(":")
        if not colon or not method.strip():
            raise ValueError(f"--set {item!r}: expected METHOD:KEY=VALUE, e.g. misentry:steps=30")
        grouped.setdefault(method.strip(), []).append(setting)
    overrides = {}
    for method, settings in grouped.items():
        try:
            overrides[method] = parse_overrides(settings)
        except ValueError as err:
            raise ValueError(f"--set {method}: {err}") from None
    return overrides


def run(args: argparse.Namespace) -> int:
    """Run the preset with the options given; print the detection table and where the report
    is."""
    from misentry.bench.jobs.executors import make_executor
    from misentry.bench.presets import get_preset
    from misentry.bench.runner import resolve, run_bench
    from misentry.bench.target import target_preset

    if args.target is not None:
        base = target_preset(args.target, args.data_dir)
    else:
        base = get_preset(args.preset)
    preset = resolve(
        base,
        methods=args.methods,
        variants=args.variants,
        instances=args.instances,
        n_fingerprints=args.n_fingerprints,
        ns=args.ns,
        experiments=args.experiments,
        band=args.band,
        overrides=method_overrides(args.overrides),
    )
    preset.check_data_dir(args.data_dir)
    started = time.perf_counter()
    with (
        make_executor(args.executor, workers=args.workers, threads=args.threads) as executor,
        stage_bars(err_console, width=24) as on_progress,
    ):
        results = run_bench(
            preset,
            args.out,
            root=args.data_dir,
            seed=args.seed,
            progress=on_progress,
            executor=executor,
        )
    seconds = time.perf_counter() - started
    if preset.target is not None:
        print_target(Path(preset.target))
    print_detection(results, preset)
    print_skipped(results)
    report = f"report: {results / 'report.md'} and {results / 'report.html'}"
    console.print(report, soft_wrap=True)  # paths whole, to copy
    console.print(f"wall time {seconds:.0f} s ({args.executor} executor)")
    return 0


def detection_table(
    rows: Sequence[ResultRow], methods: tuple[str, ...], ns_values: tuple[int, ...], name: str
) -> Table:
    """Rows: variants (the identity control last); one column per method, each cell the rates
    at every N_S of ``ns_values`` (n/a: no such row, e.g. N_S above the bundle's N)."""
    cells = {(row.method, row.variant, row.ns): row for row in rows}
    variants = sorted({variant for _, variant, _ in cells}, key=lambda v: (v == "identity", v))
    at = "/".join(map(str, ns_values))
    table = Table(title=f"detection rate at N_S = {at}, {name} (mean over instances)")
    table.add_column("variant", no_wrap=True)
    table.add_column("inst.", justify="right")
    for method in methods:
        table.add_column(f"{method}\nDR@{at}", justify="right")
    for variant in variants:
        counts = {row.n_instances for (_, v, _), row in cells.items() if v == variant}
        values = []
        for method in methods:
            rates = [cells.get((method, variant, ns)) for ns in ns_values]
            values.append(" ".join(_rate(row.detection_rate if row else None) for row in rates))
        table.add_row(variant, "/".join(map(str, sorted(counts))), *values)
    return table


def _rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.3f}"


def print_detection(results: Path, preset: Preset) -> None:
    """The detection table of the run whose results folder is ``results``, on stdout: as wide
    as :data:`LOG_WIDTH` when stdout is a log file, where a terminal's width would cut it."""
    from misentry.bench.results import read_results

    rows = [r for r in read_results(results) if r.experiment == "detection" and r.ns in preset.ns]
    out = console if console.is_terminal else Console(width=LOG_WIDTH)
    out.print(detection_table(rows, preset.methods, preset.ns, preset.name))


def print_skipped(results: Path) -> None:
    """The variants a ``--target`` run could not build, each with the builder's reason."""
    from misentry.bench.results import read_skipped

    for variant, reason in sorted(read_skipped(results).items()):
        console.print(f"skipped [bold]{variant}[/]: {reason}", soft_wrap=True, highlight=False)


def print_target(path: Path) -> None:
    """What a ``--target`` run benchmarked: the record, its architecture, dataset and test
    accuracy."""
    from misentry.models import load_record

    record = load_record(path)
    accuracy = record.metrics.get("test_accuracy")
    shown = f", test accuracy {accuracy:.2%}" if isinstance(accuracy, float) else ""
    console.print(
        f"target {record.record_id[:16]} ({record.architecture} on {record.dataset}{shown}) "
        f"at {path}",
        soft_wrap=True,
        highlight=False,
    )
