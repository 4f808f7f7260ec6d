"""`misentry demo`: the main job on the embedded default dataset, start to finish.

Part 1 runs the ``mnist5k-demo`` benchmark preset (``misentry bench``): the LeNet-5 target,
every BIVBench variant, every fingerprint method and all seven experiments, with the instance
counts that fit a laptop CPU, and writes the report. Part 2 is what a nightly check does: it
serves the target and one subtly tampered instance (last-layer fine-tuning at learning rate
1e-4) on loopback with the Open Inference Protocol and verifies both over HTTP with the run's
strict MiSentry fingerprints. Both parts call the library functions that ``misentry bench``,
``misentry serve`` and ``misentry verify`` call, and print what those print; finished jobs are
reused when the demo runs again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from misentry.cli.common import Verbs, add_verb, console, err_console, stage_bars
from misentry.cli.verdict import EXIT_CODES
from misentry.cli.verify import check
from misentry.cli.verify_oracle import dataset_classes, http_oracle

if TYPE_CHECKING:
    from misentry.bench.jobs.executors import Kind
    from misentry.cli.verify_oracle import MakeOracle

PRESET = "mnist5k-demo"
"""The benchmark the demo runs."""

TAMPERING = "ft_last_lr1e-4"
"""The tampered instance the demo serves: a subtle one, which natural images do not catch."""

METHOD = "misentry"
"""The fingerprints the demo verifies with: strict MiSentry."""

DEMO_NS = 20
"""Fingerprints per HTTP check of the demo. The demo preset measures DR@5 0.93 for its tampered
copy's variant (ft_last_lr1e-4, mean over 3 instances): a random draw of 5 misses a tampered copy
about one run in fifteen, and did once. DR@20 measures 0.99999, so the demo's verdicts hold."""

DESCRIPTION = """\
Run the main job on the embedded mnist5k dataset. Part 1 is `misentry bench --preset
mnist5k-demo`: train the LeNet-5 target, build every BIVBench variant, generate fingerprints with
every method and run all seven experiments (detection, leakage, covertness, sensitivity,
ablation, cost, frontier), then print the detection table and write the report. Part 2 serves
the target and one subtly tampered copy (last-layer fine-tuning at learning rate 1e-4) on
127.0.0.1 with the Open Inference Protocol and verifies both over HTTP with the strict MiSentry
fingerprints. Exits 0 when the benchmark finished, the target is found intact and the tampered
copy tampered. Finished jobs under --out are reused."""


def add(verbs: Verbs) -> None:
    """Register ``misentry demo``."""
    demo = add_verb(verbs, "demo", "run the main job on mnist5k", run, description=DESCRIPTION)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder")
    demo.add_argument(
        "--ns",
        type=int,
        default=DEMO_NS,
        help=f"fingerprints per HTTP check (default {DEMO_NS}: 5 miss the demo's subtle "
        "tampered copy about one run in fifteen)",
    )
    demo.add_argument(
        "--executor",
        choices=("local", "process", "ray"),
        default="local",
        help="where the benchmark's jobs run (default local)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, then serve and verify the target and a tampered instance."""
    out: Path = args.out
    bench = out / "bench"
    console.print(Rule(f"1/2 the benchmark: misentry bench --preset {PRESET} --out {bench}"))
    benchmark(bench, args.executor)
    made = json.loads((bench / "run.json").read_text())
    target = Path(made["target"])
    bundle = Path(made["bundles"][METHOD])
    tampered = next(
        Path(i["path"]) for i in made["instances"] if i["variant"] == TAMPERING and i["index"] == 0
    )
    console.print(Rule("2/2 serve the target and a tampered copy on 127.0.0.1, verify over HTTP"))
    return serve_and_verify(console, bundle, target, tampered, args.ns)


def benchmark(out: Path, executor: Kind) -> None:
    """Run the :data:`PRESET` benchmark under ``out`` with
    :func:`misentry.bench.runner.run_bench` and print what ``misentry bench`` prints."""
    from misentry.bench.jobs.executors import make_executor
    from misentry.bench.presets import get_preset
    from misentry.bench.runner import run_bench
    from misentry.cli.bench import print_detection

    preset = get_preset(PRESET)
    started = time.perf_counter()
    with (
        make_executor(executor) as jobs,
        stage_bars(err_console, width=24) as on_progress,
    ):
        results = run_bench(preset, out, progress=on_progress, executor=jobs)
    seconds = time.perf_counter() - started
    print_detection(results, preset)
    console.print(f"report: {results / 'report.md'} and {results / 'report.html'}")
    console.print(f"wall time {seconds:.0f} s ({executor} executor)")


def serve_and_verify(console: Console, bundle: Path, target: Path, tampered: Path, ns: int) -> int:
    """Serve ``target`` and ``tampered`` on loopback in turn (as ``misentry serve`` does) and
    verify each over HTTP with ``ns`` fingerprints of ``bundle`` (as ``misentry verify``
    does); 0 when the target is intact and the tampered copy tampered, else 1."""
    from misentry.models import load_record
    from misentry.serve.oip import create_app_from_record, serve_in_thread

    codes: dict[str, int] = {}
    for name, folder in (("target", target), ("tampered", tampered)):
        app = create_app_from_record(load_record(folder), name=name)
        with serve_in_thread(app) as base:
            url = f"{base}/v2/models/{name}"
            console.print(f"\n[bold]{name}[/]: {folder} served at {url}")
            codes[name] = check(bundle, _endpoint(url), ns=[ns], endpoint_id=name)
    verdicts = {code: verdict for verdict, code in EXIT_CODES.items()}
    table = Table(title="the demo's verdicts over HTTP")
    for column in ("model", "expected", "verdict"):
        table.add_column(column)
    table.add_row("target", "intact", verdicts.get(codes["target"], "error"))
    table.add_row(f"{TAMPERING} instance", "tampered", verdicts.get(codes["tampered"], "error"))
    console.print(table)
    return 0 if codes == {"target": 0, "tampered": 1} else 1


def _endpoint(url: str) -> MakeOracle:
    """The HTTP oracle of ``url`` for a bundle, with the oracle's default options."""
    return lambda bundle: http_oracle(url, num_classes=dataset_classes(bundle))
