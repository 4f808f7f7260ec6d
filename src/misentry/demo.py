"""`misentry demo`: the main job on the embedded default dataset, start to finish.

It trains the LeNet-5 target on mnist5k, builds one subtly tampered copy (last-layer fine-tuning
at learning rate 1e-4, a BIVBench instance), generates 100 strict MiSentry fingerprints, then
serves the target and the tampered copy on loopback with the Open Inference Protocol and
verifies both over HTTP, as a nightly check would. Every step is one of the CLI's own commands,
so the demo shows what a user types; finished steps are reused when the demo runs again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from misentry.cli_verbs import MakeVerb

TAMPERING = "ft_last_lr1e-4"
"""The tampered instance the demo serves: a subtle one, which natural images do not catch."""


DESCRIPTION = """\
Run the main job on the embedded mnist5k dataset: train the LeNet-5 target, build one subtly
tampered copy (BIVBench's last-layer fine-tuning at learning rate 1e-4), generate 100 strict
MiSentry fingerprints, serve the target and the tampered copy on 127.0.0.1 with the Open
Inference Protocol, and verify both over HTTP. Exits 0 when the target is found intact and the
tampered copy tampered. Finished steps under --out are reused."""


def add_demo(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], make_verb: MakeVerb
) -> argparse.ArgumentParser:
    demo = make_verb(verbs, "demo", "run the main job on mnist5k", _demo, description=DESCRIPTION)
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="work folder")
    demo.add_argument("--n", type=int, default=100, help="fingerprints (100)")
    demo.add_argument("--ns", type=int, default=5, help="fingerprints per check (5)")
    return demo


def _demo(args: argparse.Namespace) -> int:
    from misentry.cli import main

    console = Console()
    out: Path = args.out
    target = out / "target-mnist5k-lenet5"
    bench = out / "bench"
    bundle = out / "fingerprints"
    console.print(Rule(f"1/4 train the target ({target})"))
    train = ["train", "--dataset", "mnist5k", "--arch", "lenet5", "--seed", "0"]
    if main([*train, "--out", str(target)]) != 0:
        return 1
    console.print(Rule(f"2/4 build one tampered copy ({TAMPERING})"))
    tamper = ["tamper", "build", "--target", str(target), "--variant", TAMPERING]
    if main([*tamper, "--instances", "1", "--out", str(bench)]) != 0:
        return 1
    console.print(Rule(f"3/4 generate {args.n} strict MiSentry fingerprints ({bundle})"))
    if (bundle / "manifest.json").exists():
        console.print(f"reusing the fingerprints in {bundle}")
    else:
        argv = ["fingerprint", "--method", "misentry", "--target", str(target)]
        if main([*argv, "--n", str(args.n), "--out", str(bundle)]) != 0:
            return 1
    console.print(Rule("4/4 serve both on 127.0.0.1 and verify them over HTTP"))
    return _serve_and_verify(console, bundle, target, bench / TAMPERING / "0000", args.ns)


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
