"""``misentry verify``: query a model with fingerprints and print the verdict.

Exit status: 0 intact, 1 tampered, 2 inconclusive. Every error after the arguments are parsed
(an unreadable or changed bundle, a missing key, a model or endpoint that cannot be set up, a
ledger that cannot be written) is inconclusive too, with the reason: a check that did not run
must never read as "intact" to a script, nor as "tampered".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from misentry.cli.verbs import MakeVerb

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.models.oracle import LabelOracle
    from misentry.verify.ledger import Ledger
    from misentry.verify.verifier import VerificationResult

EXIT_INTACT, EXIT_TAMPERED, EXIT_INCONCLUSIVE = 0, 1, 2
EXIT_CODES = {"intact": EXIT_INTACT, "tampered": EXIT_TAMPERED, "inconclusive": EXIT_INCONCLUSIVE}
COLOURS = {"intact": "bold green", "tampered": "bold red", "inconclusive": "bold yellow"}
MISMATCH_ROWS = 50

VERIFY_DESCRIPTION = """\
Verify that a deployed model is still the one the fingerprints were made for: send N_S
fingerprints of a bundle, compare the top-1 labels with the target's, and print the verdict.

The model is one of: a record folder (--model), an ONNX file (--onnx), or an Open Inference
Protocol (KServe V2) endpoint (--endpoint http(s)://HOST:PORT/v2/models/NAME).

All N_S given are answered by one query set: the draw is as long as the largest N_S, and each
smaller N_S uses a prefix of it. The verdict printed first is that of the largest N_S.

Fingerprints leak once sent: the ledger (<bundle>/ledger.json, or --ledger FILE) records which
fingerprints each endpoint (--name, default the URL or the file) has been shown, and every draw
takes unshown ones first; it says so when none are left and shown ones must be reused.

exit status:
  0  intact: every label matched
  1  tampered: at least one label changed
  2  inconclusive: the query failed (budget, deadline, timeout, server error, malformed or
     out-of-range answer) or the verification could not start (bundle, key, model, ledger);
     never read as intact"""

VERIFY_EPILOG = """\
examples:
  misentry verify --fingerprints runs/fp --model runs/bench/backdoor/0000
  misentry verify --fingerprints runs/fp --onnx model.onnx --ns 1,5,20 --seed 7
  misentry verify --fingerprints runs/fp --endpoint http://localhost:8080/v2/models/lenet \\
      --header 'Authorization: Bearer TOKEN' --budget 100 --deadline 60 --json
  misentry verify --fingerprints runs/fp --endpoint https://api.example.com/v2/models/m \\
      --datatype UINT8 --layout NHWC --output scores --output-name logits --name prod-eu
  misentry verify --fingerprints runs/fp --model runs/target --all --no-ledger"""

HTTP_ONLY = ("input_name", "datatype", "layout", "output", "output_name", "headers", "timeout")

console = Console()
err_console = Console(stderr=True)


class SetupError(Exception):
    """The verification could not start; ``reason`` names what failed."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def add_verify(
    verbs: argparse._SubParsersAction[argparse.ArgumentParser], make_verb: MakeVerb
) -> argparse.ArgumentParser:
    """Add the ``verify`` verb to ``verbs``; returns its parser."""
    sub = make_verb(
        verbs,
        "verify",
        "check a deployed model with a fingerprint bundle (exit 0 intact, 1 tampered, "
        "2 inconclusive)",
        verify_command,
        description=VERIFY_DESCRIPTION,
    )
    sub.epilog = VERIFY_EPILOG
    sub.add_argument("--fingerprints", type=Path, required=True, metavar="DIR", help="bundle")
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, metavar="DIR", help="a model record folder")
    source.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file (extra: onnx)")
    source.add_argument(
        "--endpoint", metavar="URL", help="an Open Inference Protocol model URL (.../v2/models/M)"
    )
    sub.add_argument(
        "--ns",
        action="extend",
        type=_ns_list,
        metavar="N[,N...]",
        help="N_S, fingerprints per check; repeat or separate with commas (default 5)",
    )
    sub.add_argument("--seed", type=int, help="seed of the draw (default: a random one, printed)")
    sub.add_argument(
        "--all", action="store_true", help="send every fingerprint (checked at N and any --ns)"
    )
    sub.add_argument("--budget", type=int, metavar="N", help="most images to send (default: any)")
    sub.add_argument(
        "--deadline", type=float, metavar="S", help="seconds after which no request starts"
    )
    sub.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per request")
    sub.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="labels must be in [0, K) (default: the record's, else the bundle's dataset's)",
    )
    sub.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="key of a signed bundle (default: MISENTRY_BUNDLE_KEY)",
    )
    http = sub.add_argument_group("endpoint options (with --endpoint only)")
    http.add_argument(
        "--header",
        dest="headers",
        action="append",
        metavar="'K: V'",
        help="an extra request header, e.g. 'Authorization: Bearer TOKEN' (repeatable)",
    )
    http.add_argument("--timeout", type=float, metavar="S", help="seconds per request (10)")
    http.add_argument("--input-name", help="the model's input tensor name (input)")
    http.add_argument(
        "--datatype", choices=("FP32", "UINT8"), help="FP32: pixels/255 (default); UINT8: 0-255"
    )
    http.add_argument("--layout", choices=("NCHW", "NHWC"), help="tensor layout (NCHW)")
    http.add_argument(
        "--output",
        choices=("labels", "scores"),
        help="labels: one integer per image (default); scores: (N, classes), argmax taken",
    )
    http.add_argument("--output-name", help="the output to read (default: the first)")
    ledger = sub.add_argument_group("ledger")
    ledger.add_argument(
        "--name", metavar="ENDPOINT_ID", help="the ledger's name for this model (default: its URL)"
    )
    ledger.add_argument(
        "--ledger", type=Path, metavar="FILE", help="ledger file (default <bundle>/ledger.json)"
    )
    ledger.add_argument(
        "--no-ledger", action="store_true", help="neither read nor record earlier showings"
    )
    sub.add_argument("--json", action="store_true", help="print the result as JSON")
    return sub


def _ns_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"N_S must be positive integers, not {text!r}")
    return values


def verify_command(args: argparse.Namespace) -> int:
    """Run ``misentry verify``; returns the exit status and never raises (but on an interrupt)."""
    try:
        result, bundle = _run(args)
    except SetupError as err:
        return _fail(args, err.reason, str(err))
    except Exception as err:
        return _fail(args, _reason_of(err), str(err) or type(err).__name__)
    try:
        _render(result, args, _bundle_info(args.fingerprints, bundle))
    except Exception as err:
        return _fail(args, "output", f"could not print the result: {err}")
    return EXIT_CODES[result.verdict.value]


def _run(args: argparse.Namespace) -> tuple[VerificationResult, FingerprintSet]:
    from misentry.fingerprint.bundle import BundleError, load_bundle, load_key
    from misentry.verify.verifier import verify

    if args.no_ledger and args.ledger is not None:
        raise SetupError("usage", "--ledger and --no-ledger contradict each other; give one")
    try:
        bundle = load_bundle(args.fingerprints, load_key(args.key_file))
    except (BundleError, OSError) as err:
        raise SetupError("bundle", f"--fingerprints: {err}") from None
    oracle, endpoint_id = _oracle(args, bundle)
    ledger = None if args.no_ledger else _ledger(args, bundle)
    result = verify(
        bundle,
        oracle,
        args.ns,
        seed=args.seed,
        select="all" if args.all else "fresh",
        ledger=ledger,
        endpoint_id=args.name or endpoint_id,
    )
    return result, bundle


def _bundle_info(path: Path, bundle: FingerprintSet) -> dict[str, Any]:
    return {
        "fingerprints": str(path),
        "method": bundle.manifest.get("method"),
        "count": len(bundle),
        "signed": bundle.manifest.get("signature") is not None,
    }


def _ledger(args: argparse.Namespace, bundle: FingerprintSet) -> Ledger:
    from misentry.verify.ledger import Ledger

    return Ledger.open(args.ledger or Ledger.default_path(args.fingerprints), bundle)


def _oracle(args: argparse.Namespace, bundle: FingerprintSet) -> tuple[LabelOracle, str]:
    """The oracle the arguments name, and its default endpoint id."""
    if args.endpoint is None:
        given = [f"--{name.replace('_', '-')}" for name in HTTP_ONLY if getattr(args, name)]
        if given:
            raise SetupError("usage", f"{', '.join(given)} apply to --endpoint only")
    limits: dict[str, Any] = {
        "batch_size": args.batch_size,
        "budget": args.budget,
        "deadline": args.deadline,
    }
    try:
        if args.model is not None:
            return _module_oracle(args.model, args.num_classes, limits)
        num_classes = args.num_classes or _dataset_classes(bundle)
        if args.onnx is not None:
            from misentry.verify.onnx import OnnxOracle

            path = Path(args.onnx)
            return OnnxOracle(path, num_classes=num_classes, **limits), f"onnx:{path.resolve()}"
        from misentry.verify.http import HttpOracle

        oracle = HttpOracle(
            args.endpoint,
            input_name=args.input_name or "input",
            datatype=args.datatype or "FP32",
            layout=args.layout or "NCHW",
            output_name=args.output_name,
            output=args.output or "labels",
            headers=_headers(args.headers or []),
            timeout=10.0 if args.timeout is None else args.timeout,
            num_classes=num_classes,
            **limits,
        )
        return oracle, str(args.endpoint)
    except SetupError:
        raise
    except ImportError as err:
        raise SetupError(
            "oracle",
            f"{err}; install the extra it needs (pip install 'misentry[onnx]' for --onnx)",
        ) from None
    except Exception as err:
        raise SetupError("oracle", f"cannot set up the model to verify: {err}") from None


def _module_oracle(
    path: Path, num_classes: int | None, limits: dict[str, Any]
) -> tuple[LabelOracle, str]:
    from misentry.models import RecordError, load_model
    from misentry.models.oracle import ModuleOracle

    try:
        model, record = load_model(path)
    except (RecordError, OSError) as err:
        raise SetupError("model", f"--model: {err}") from None
    classes = num_classes or (record.input or {}).get("num_classes")
    return ModuleOracle(model, num_classes=classes, **limits), f"model:{path.resolve()}"


def _dataset_classes(bundle: FingerprintSet) -> int | None:
    from misentry.data import DATASETS

    info = DATASETS.get(str(bundle.manifest.get("dataset")))
    return None if info is None else info.num_classes


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        key, colon, value = item.partition(":")
        if not colon or not key.strip():
            raise SetupError("usage", f"--header {item!r}: expected 'Name: value'")
        headers[key.strip()] = value.strip()
    return headers


def _reason_of(err: Exception) -> str:
    from misentry.verify.ledger import LedgerError

    return (
        "ledger"
        if isinstance(err, LedgerError)
        else "usage"
        if isinstance(err, ValueError)
        else "error"
    )


def _fail(args: argparse.Namespace, reason: str, message: str) -> int:
    if getattr(args, "json", False):
        print(
            json.dumps(
                {"verdict": "inconclusive", "reason": reason, "message": message, "exit": 2},
                indent=2,
            )
        )
    else:
        err_console.print(
            f"[{COLOURS['inconclusive']}]INCONCLUSIVE[/] ({reason}): {message}",
            highlight=False,
            soft_wrap=True,
        )
    return EXIT_INCONCLUSIVE


def _render(result: VerificationResult, args: argparse.Namespace, info: dict[str, Any]) -> None:
    if args.json:
        exit_code = EXIT_CODES[result.verdict.value]
        print(json.dumps({**result.to_json(), "bundle": info, "exit": exit_code}, indent=2))
        return
    verdict = result.verdict.value
    largest = result.checks[-1]
    if verdict == "inconclusive":
        detail = f"{result.reason}: {result.message}"
    elif verdict == "tampered":
        detail = f"{len(largest.mismatches)} of {largest.ns} fingerprints changed label"
    else:
        detail = f"all {largest.ns} fingerprints gave their expected labels"
    console.print(f"[{COLOURS[verdict]}]{verdict.upper()}[/] {detail}", highlight=False)
    if len(result.checks) > 1:
        _print_checks(result)
    if result.mismatches:
        _print_mismatches(result)
    _print_summary(result, info)
    for note in result.warnings:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)


def _print_checks(result: VerificationResult) -> None:
    table = Table(title="checks per N_S")
    for col in ("N_S", "verdict", "mismatches"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for check in result.checks:
        value = check.verdict.value
        table.add_row(str(check.ns), f"[{COLOURS[value]}]{value}[/]", str(len(check.mismatches)))
    console.print(table)


def _print_mismatches(result: VerificationResult) -> None:
    table = Table(title="fingerprints whose label changed")
    for col in ("fingerprint", "expected", "returned"):
        table.add_column(col, justify="right")
    for m in result.mismatches[:MISMATCH_ROWS]:
        table.add_row(str(m.index), str(m.expected), str(m.returned))
    console.print(table)
    hidden = len(result.mismatches) - MISMATCH_ROWS
    if hidden > 0:
        console.print(f"… and {hidden} more (--json lists them all)")


def _print_summary(result: VerificationResult, info: dict[str, Any]) -> None:
    table = Table(show_header=False)
    table.add_column("field")
    table.add_column("value")
    signed = "signed" if info["signed"] else "unsigned"
    table.add_row(
        "fingerprints", f"{info['fingerprints']} ({info['method']}, {info['count']}, {signed})"
    )
    table.add_row("model", result.oracle)
    table.add_row("endpoint id", result.endpoint_id)
    table.add_row("queries", f"{result.queries} images in {result.seconds:.2f} s")
    table.add_row("draw", f"{result.select}, seed {result.seed}")
    if result.ledger_path is None:
        table.add_row("ledger", "none")
    else:
        table.add_row("ledger", result.ledger_path)
        table.add_row(
            "fresh left",
            f"{result.fresh_left} never shown to this endpoint ({result.reused} reused)",
        )
    console.print(table)
