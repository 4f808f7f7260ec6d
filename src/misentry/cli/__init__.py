"""The ``misentry`` command line: argument parsing and printing only.

Every verb is a module of this package with ``add(verbs)`` and ``run(args)``: it parses, calls
the library, and renders what it returns with rich; the library itself never prints.
:func:`main` turns the errors a verb lets through into exit statuses, in one place
(:data:`ERROR_EXITS`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from misentry.cli import (
    bench,
    data,
    demo,
    export,
    fingerprint,
    importing,
    models,
    record,
    report,
    serve,
    stability,
    tamper,
    train,
    verify,
)
from misentry.cli.common import CliError, err_console

__all__ = ["ERROR_EXITS", "CliError", "build_parser", "exit_status", "main"]

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
  misentry stability --fingerprints runs/fp --target runs/target --onnx runs/target.onnx
  misentry serve --model runs/target --name target        Open Inference Protocol on :8080
  misentry verify --fingerprints runs/fp --endpoint http://127.0.0.1:8080/v2/models/target
"""

VERBS = (
    data,
    models,
    train,
    importing,
    record,
    tamper,
    fingerprint,
    export,
    verify,
    stability,
    serve,
    demo,
    report,
    bench,
)
"""The verb modules, in the order of the help's verb list."""

EXIT_ERROR = 1
"""A verb failed: the message says what to fix."""

EXIT_INTERRUPTED = 130
"""Ctrl-C: finished records are kept (every record is written atomically)."""

ERROR_EXITS: tuple[tuple[type[Exception], int], ...] = (
    (CliError, EXIT_ERROR),  # a verb refused its arguments
    (KeyError, EXIT_ERROR),  # an unknown name: dataset, method, variant, preset, profile
    (ValueError, EXIT_ERROR),  # a bad value; RecordError, BundleError, ... are ValueErrors
    (FileNotFoundError, EXIT_ERROR),  # a missing file or dataset folder
    (ImportError, EXIT_ERROR),  # an extra that is not installed
)
"""The exit status of each error a verb lets through: the message is printed as ``error: ...``
without a traceback. Any other exception is a bug and shows its traceback. ``misentry verify``
lets no error through: its exit status is its verdict (0 intact, 1 tampered, 2 inconclusive,
and a check that could not start is inconclusive)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    set_threads(args.threads)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; finished records are kept, nothing half-written")
        return EXIT_INTERRUPTED
    except Exception as err:
        code = exit_status(err)
        if code is None:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        return code
    return status


def exit_status(err: Exception) -> int | None:
    """The exit status of ``err`` by :data:`ERROR_EXITS`; None for an error that is a bug."""
    return next((code for kind, code in ERROR_EXITS if isinstance(err, kind)), None)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``misentry`` and all its verbs."""
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
    for verb in VERBS:
        verb.add(verbs)
    return parser


def set_threads(threads: int | None) -> None:
    """Let torch use ``threads`` CPU threads (None: every core)."""
    import torch

    torch.set_num_threads(max(1, threads or os.cpu_count() or 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
