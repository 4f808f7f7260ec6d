"""``misentry verify``: query a model with fingerprints and print the verdict.

Exit status: 0 intact, 1 tampered, 2 inconclusive (also when the labels that changed are too
likely for an untampered model served within the bundle's tolerance: ``false_alarm``). Every
error after the arguments are parsed (an unreadable, changed or malformed bundle, a missing key,
a model or endpoint that cannot be set up, a ledger that cannot be written) is inconclusive too,
with the reason: a check that did not run must never read as "intact" to a script, nor as
"tampered". The model's options and its oracle are :mod:`misentry.cli.verify_oracle`'s.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.cli.common import CliError, Verbs, add_verb
from misentry.cli.verdict import EXIT_CODES, show_failure, show_result
from misentry.cli.verify_oracle import (
    MakeOracle,
    OracleDefaultsFormatter,
    add_endpoint_options,
    add_model_options,
    oracle_of,
    set_up,
)

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.verify.verifier import Select

DESCRIPTION = """\
Verify that a deployed model is still the one the fingerprints were made for: send N_S
fingerprints of a bundle, compare the top-1 labels with the target's, and print the verdict.

The model is one of: a record folder (--model), an ONNX file (--onnx), or an Open Inference
Protocol (KServe V2) endpoint (--endpoint http(s)://HOST:PORT/v2/models/NAME).

A bundle of an imported model records its input contract; --onnx and --endpoint then send what
that model takes (FP32 values: pixels scaled to its range, normalized by its mean and std, in its
layout), as the user's own ONNX file and server expect; --model takes the record as it is.

All N_S given are answered by one query set: the draw is as long as the largest N_S, and each
smaller N_S uses a prefix of it. The verdict printed first is that of the largest N_S.

A changed label is evidence only if the owner's own model would not change it: the bundle
declares a deployment tolerance (how differently the owner may serve the weights: exact, fp32,
tf32, fp16, bf16) and each fingerprint's flip rate under it. With every verdict comes the
false-alarm probability: the chance that an untampered model served within the tolerance
changes as many of the labels sent. Mismatches are TAMPERED only when it is below
--max-false-alarm, else INCONCLUSIVE (false_alarm). Bundles without a tolerance are exact
(rate 0: one changed label is tampering).

Fingerprints leak once sent: the ledger (<bundle>/ledger.json, or --ledger FILE) records which
fingerprints each endpoint (--name, default the URL or the file) has been shown, and every draw
takes unshown ones first; it says so when none are left and shown ones must be reused.

exit status:
  0  intact: every label matched
  1  tampered: labels changed, with a false-alarm probability below --max-false-alarm
  2  inconclusive: the query failed (budget, deadline, timeout, server error, malformed or
     out-of-range answer), labels changed but an untampered model gives as many too often
     (false_alarm), or the verification could not start (bundle, key, model, ledger); never
     read as intact"""

EPILOG = """\
examples:
  misentry verify --fingerprints runs/fp --model runs/bench/backdoor/0000
  misentry verify --fingerprints runs/fp --onnx model.onnx --ns 1,5,20 --seed 7
  misentry verify --fingerprints runs/fp --endpoint http://localhost:8080/v2/models/lenet \\
      --header 'Authorization: Bearer TOKEN' --budget 100 --deadline 60 --json
  misentry verify --fingerprints runs/fp --endpoint https://api.example.com/v2/models/m \\
      --datatype UINT8 --layout NHWC --output scores --output-name logits --name prod-eu
  misentry verify --fingerprints runs/fp --model runs/target --all --no-ledger
  misentry verify --fingerprints runs/fp --onnx model.onnx --ns 20 --max-false-alarm 1e-9"""


def add(verbs: Verbs) -> None:
    """Register ``misentry verify``."""
    from misentry.verify.false_alarm import DEFAULT_MAX_FALSE_ALARM

    sub = add_verb(
        verbs,
        "verify",
        "check a deployed model with a fingerprint bundle (exit 0 intact, 1 tampered, "
        "2 inconclusive)",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    sub.formatter_class = OracleDefaultsFormatter
    sub.add_argument("--fingerprints", type=Path, required=True, metavar="DIR", help="bundle")
    add_model_options(sub)
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
    sub.add_argument(
        "--max-false-alarm",
        type=float,
        default=DEFAULT_MAX_FALSE_ALARM,
        metavar="P",
        help="changed labels are TAMPERED only when an untampered model served within the "
        "bundle's tolerance changes as many with a probability below P, else INCONCLUSIVE "
        f"(false_alarm); in (0, 1] (default {DEFAULT_MAX_FALSE_ALARM:g})",
    )
    sub.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="key of a signed bundle (default: MISENTRY_BUNDLE_KEY)",
    )
    add_endpoint_options(sub.add_argument_group("endpoint options (with --endpoint only)"))
    _add_ledger_options(sub.add_argument_group("ledger"))
    sub.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_ledger_options(ledger: argparse._ArgumentGroup) -> None:
    ledger.add_argument(
        "--name", metavar="ENDPOINT_ID", help="the ledger's name for this model (default: its URL)"
    )
    ledger.add_argument(
        "--ledger", type=Path, metavar="FILE", help="ledger file (default <bundle>/ledger.json)"
    )
    ledger.add_argument(
        "--no-ledger", action="store_true", help="neither read nor record earlier showings"
    )


def _ns_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"N_S must be positive integers, not {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    """Run ``misentry verify``; returns the exit status and never raises (but on an interrupt)."""
    return check(
        args.fingerprints,
        lambda bundle: oracle_of(args, bundle),
        ns=args.ns,
        seed=args.seed,
        select="all" if args.all else "fresh",
        endpoint_id=args.name,
        key_file=args.key_file,
        ledger=args.ledger,
        use_ledger=not args.no_ledger,
        as_json=args.json,
        max_false_alarm=args.max_false_alarm,
    )


def check(
    fingerprints: Path,
    make_oracle: MakeOracle,
    *,
    ns: Sequence[int] | None = None,
    seed: int | None = None,
    select: Select = "fresh",
    endpoint_id: str | None = None,
    key_file: Path | None = None,
    ledger: Path | None = None,
    use_ledger: bool = True,
    as_json: bool = False,
    max_false_alarm: float | None = None,
) -> int:
    """Verify the model of ``make_oracle`` with the bundle ``fingerprints`` by
    :func:`misentry.verify.verifier.verify`, print the result (or why there is none) and return
    its exit status; never raises (but on an interrupt). ``ledger`` is the ledger file (None:
    ``<bundle>/ledger.json``; ``use_ledger=False``: none); ``max_false_alarm`` the limit of
    :func:`~misentry.verify.verifier.verify` (None: its default)."""
    from misentry.fingerprint.bundle import BundleError, load_bundle, load_key
    from misentry.verify.false_alarm import DEFAULT_MAX_FALSE_ALARM
    from misentry.verify.ledger import Ledger
    from misentry.verify.verifier import verify

    try:
        if not use_ledger and ledger is not None:
            raise CliError(
                "--ledger and --no-ledger contradict each other; give one", reason="usage"
            )
        try:
            bundle = load_bundle(fingerprints, load_key(key_file))
        except (BundleError, OSError) as err:
            raise CliError(f"--fingerprints: {err}", reason="bundle") from None
        oracle, default_id = set_up(make_oracle, bundle)
        shown = (
            Ledger.open(ledger or Ledger.default_path(fingerprints), bundle) if use_ledger else None
        )
        result = verify(
            bundle,
            oracle,
            ns,
            seed=seed,
            select=select,
            ledger=shown,
            endpoint_id=endpoint_id or default_id,
            max_false_alarm=DEFAULT_MAX_FALSE_ALARM if max_false_alarm is None else max_false_alarm,
        )
    except Exception as err:
        return show_failure(_reason_of(err), str(err) or type(err).__name__, as_json=as_json)
    try:
        show_result(result, _bundle_info(fingerprints, bundle), as_json=as_json)
    except Exception as err:
        return show_failure("output", f"could not print the result: {err}", as_json=as_json)
    return EXIT_CODES[result.verdict.value]


def _reason_of(err: Exception) -> str:
    from misentry.fingerprint.bundle import BundleError
    from misentry.verify.ledger import LedgerError

    if isinstance(err, CliError) and err.reason is not None:
        return err.reason
    if isinstance(err, LedgerError):
        return "ledger"
    if isinstance(err, BundleError):  # raised by verify: a malformed tolerance or flip rates
        return "bundle"
    return "usage" if isinstance(err, ValueError | CliError) else "error"


def _bundle_info(path: Path, bundle: FingerprintSet) -> dict[str, Any]:
    return {
        "fingerprints": str(path),
        "method": bundle.manifest.get("method"),
        "count": len(bundle),
        "signed": bundle.manifest.get("signature") is not None,
    }
