"""`misentry demo`: the main job on the embedded default dataset, start to finish.

Part 1 runs the ``mnist5k-demo`` benchmark preset (``misentry bench``): the LeNet-5 target,
every BIVBench variant, every fingerprint method and all seven experiments, with the instance
counts that fit a laptop CPU, and writes the report. Part 2 is what a nightly check does: it
serves the target and one subtly tampered instance (last-layer fine-tuning at learning rate
1e-4) on loopback with the Open Inference Protocol and verifies both over HTTP with the run's
strict MiSentry fingerprints. Both parts are the CLI's own commands, so the demo shows what a
user types; finished jobs are reused when the demo runs again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from misentry.cli.verbs import MakeVerb

PRESET = "mnist5k-demo"
"""The benchmark the demo runs."""

TAMPERING = "ft_last_lr1e-4"
"""The tampered instance the demo serves: a subtle one, which natural images do not catch."""

METHOD = "misentry"
"""The fingerprints the demo verifies with: strict MiSentry."""

DESCRIPTION = """\
Run the main job on the embedded mnist5k dataset. Part 1 is `misentry bench --preset
mnist5k-demo`: train the LeNet-5 target, build every BIVBench variant, generate fingerprints with
every method and run all seven experiments (detection, leakage, covertness, sensitivity,
ablation, cost, frontier), then print the detection table and write the report. Part 2 serves
the target and one subtly tampered copy (last-layer fine-tuning at learning rate 1e-4) on
127.0.0.1 with the Open Inference Protocol and verifies both over HTTP with the strict MiSentry
fingerprints. Exits 0 when the benchmark finished, the target is found intact and the tampered
copy tampered. Finished jobs under --out are reused."""


def add_demo(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], make_verb: MakeVerb
) -> argparse.ArgumentParser:
    demo = make_verb(verbs, "demo", "run the main job on mnist5k", _demo, description=DESCRIPTION)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder")
    demo.add_argument("--ns", type=int, default=5, help="fingerprints per check (5)")
    demo.add_argument(
        "--executor",
        choices=("local", "process", "ray"),
        default="local",
        help="where the benchmark's jobs run (default local)",
    )
    return demo


def _demo(args: argparse.Namespace) -> int:
    from misentry.cli import main

    console = Console()
    out: Path = args.out
    bench = out / "bench"
    console.print(Rule(f"1/2 the benchmark: misentry bench --preset {PRESET} --out {bench}"))
    argv = ["bench", "--preset", PRESET, "--out", str(bench), "--executor", args.executor]
    if main(argv) != 0:
        return 1
    run = json.loads((bench / "run.json").read_text())
    target = Path(run["target"])
    bundle = Path(run["bundles"][METHOD])
    tampered = next(
        Path(i["path"]) for i in run["instances"] if i["variant"] == TAMPERING and i["index"] == 0
    )
    console.print(Rule("2/2 serve the target and a tampered copy on 127.0.0.1, verify over HTTP"))
    return _serve_and_verify(console, bundle, target, tampered, args.ns)


def _serve_and_verify(console: Console, bundle: Path, target: Path, tampered: Path, ns: int) -> int:
    from misentry.cli import main
    from misentry.models import load_record
    from misentry.serve.oip import create_app_from_record, serve_in_thread

    codes: dict[str, int] = {}
    for name, folder in (("target", target), ("tampered", tampered)):
        app = create_app_from_record(load_record(folder), name=name)
        with serve_in_thread(app) as base:
            url = f"{base}/v2/models/{name}"
            console.print(f"\n[bold]{name}[/]: {folder} served at {url}")
            argv = ["verify", "--fingerprints", str(bundle), "--endpoint", url, "--name", name]
            codes[name] = main([*argv, "--ns", str(ns)])
    verdicts = {0: "intact", 1: "tampered", 2: "inconclusive"}
    table = Table(title="the demo's verdicts over HTTP")
    for column in ("model", "expected", "verdict"):
        table.add_column(column)
    table.add_row("target", "intact", verdicts.get(codes["target"], "error"))
    table.add_row(f"{TAMPERING} instance", "tampered", verdicts.get(codes["tampered"], "error"))
    console.print(table)
    return 0 if codes == {"target": 0, "tampered": 1} else 1
