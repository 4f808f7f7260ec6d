"""``misentry verify``: query a model with fingerprints and print the verdict.

Exit status: 0 intact, 1 tampered, 2 inconclusive. Every error after the arguments are parsed
(an unreadable or changed bundle, a missing key, a model or endpoint that cannot be set up, a
ledger that cannot be written) is inconclusive too, with the reason: a check that did not run
must never read as "intact" to a script, nor as "tampered".
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.cli.common import CliError, Verbs, add_verb
from misentry.cli.verdict import EXIT_CODES, show_failure, show_result

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.models.oracle import LabelOracle
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

Fingerprints leak once sent: the ledger (<bundle>/ledger.json, or --ledger FILE) records which
fingerprints each endpoint (--name, default the URL or the file) has been shown, and every draw
takes unshown ones first; it says so when none are left and shown ones must be reused.

exit status:
  0  intact: every label matched
  1  tampered: at least one label changed
  2  inconclusive: the query failed (budget, deadline, timeout, server error, malformed or
     out-of-range answer) or the verification could not start (bundle, key, model, ledger);
     never read as intact"""

EPILOG = """\
examples:
  misentry verify --fingerprints runs/fp --model runs/bench/backdoor/0000
  misentry verify --fingerprints runs/fp --onnx model.onnx --ns 1,5,20 --seed 7
  misentry verify --fingerprints runs/fp --endpoint http://localhost:8080/v2/models/lenet \\
      --header 'Authorization: Bearer TOKEN' --budget 100 --deadline 60 --json
  misentry verify --fingerprints runs/fp --endpoint https://api.example.com/v2/models/m \\
      --datatype UINT8 --layout NHWC --output scores --output-name logits --name prod-eu
  misentry verify --fingerprints runs/fp --model runs/target --all --no-ledger"""


HTTP_OPTIONS = ("input_name", "datatype", "layout", "output", "output_name", "headers", "timeout")
"""The options for --endpoint only: the arguments of :class:`~misentry.verify.http.HttpOracle`
of the same names."""

LIMITS = ("batch_size", "budget", "deadline")
"""The options every oracle takes: the arguments of :class:`~misentry.models.oracle.LabelOracle`
of the same names."""

MakeOracle = Callable[["FingerprintSet"], tuple["LabelOracle", str]]
"""Sets up the oracle for a bundle; returns it and its default endpoint id."""


class _OracleDefaultsFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills ``{name}`` in a help text with the default of the argument ``name`` of
    :class:`~misentry.verify.http.HttpOracle`, when the help is shown (so parsing the arguments
    does not import the oracle)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        return text.format_map(_oracle_defaults()) if text and "{" in text else text


def _oracle_defaults() -> dict[str, Any]:
    """The defaults of :class:`~misentry.verify.http.HttpOracle`'s arguments."""
    import inspect

    from misentry.verify.http import HttpOracle

    parameters = inspect.signature(HttpOracle).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def add(verbs: Verbs) -> None:
    """Register ``misentry verify``."""
    sub = add_verb(
        verbs,
        "verify",
        "check a deployed model with a fingerprint bundle (exit 0 intact, 1 tampered, "
        "2 inconclusive)",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    sub.formatter_class = _OracleDefaultsFormatter
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
    sub.add_argument(
        "--batch-size", type=int, metavar="N", help="images per request ({batch_size})"
    )
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
    _add_endpoint_options(sub.add_argument_group("endpoint options (with --endpoint only)"))
    _add_ledger_options(sub.add_argument_group("ledger"))
    sub.add_argument("--json", action="store_true", help="print the result as JSON")


def _add_endpoint_options(http: argparse._ArgumentGroup) -> None:
    http.add_argument(
        "--header",
        dest="headers",
        action="append",
        metavar="'K: V'",
        help="an extra request header, e.g. 'Authorization: Bearer TOKEN' (repeatable)",
    )
    http.add_argument(
        "--timeout", type=float, metavar="S", help="seconds per request ({timeout:g})"
    )
    http.add_argument("--input-name", help="the model's input tensor name ({input_name})")
    http.add_argument(
        "--datatype",
        choices=("FP32", "UINT8"),
        help="FP32: pixels/255 (or the bundle's input contract's values); UINT8: 0-255 "
        "(default {datatype})",
    )
    http.add_argument(
        "--layout",
        choices=("NCHW", "NHWC"),
        help="tensor layout ({layout}), unless the bundle's input contract says otherwise",
    )
    http.add_argument(
        "--output",
        choices=("labels", "scores"),
        help="labels: one integer per image; scores: (N, classes), argmax taken (default {output})",
    )
    http.add_argument("--output-name", help="the output to read (default: the first)")


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
        lambda bundle: _oracle(args, bundle),
        ns=args.ns,
        seed=args.seed,
        select="all" if args.all else "fresh",
        endpoint_id=args.name,
        key_file=args.key_file,
        ledger=args.ledger,
        use_ledger=not args.no_ledger,
        as_json=args.json,
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
) -> int:
    """Verify the model of ``make_oracle`` with the bundle ``fingerprints`` by
    :func:`misentry.verify.verifier.verify`, print the result (or why there is none) and return
    its exit status; never raises (but on an interrupt). ``ledger`` is the ledger file (None:
    ``<bundle>/ledger.json``; ``use_ledger=False``: none)."""
    from misentry.fingerprint.bundle import BundleError, load_bundle, load_key
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
        oracle, default_id = _set_up(make_oracle, bundle)
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
        )
    except Exception as err:
        return show_failure(_reason_of(err), str(err) or type(err).__name__, as_json=as_json)
    try:
        show_result(result, _bundle_info(fingerprints, bundle), as_json=as_json)
    except Exception as err:
        return show_failure("output", f"could not print the result: {err}", as_json=as_json)
    return EXIT_CODES[result.verdict.value]


def _set_up(make_oracle: MakeOracle, bundle: FingerprintSet) -> tuple[LabelOracle, str]:
    try:
        return make_oracle(bundle)
    except CliError:
        raise
    except ImportError as err:
        raise CliError(
            f"{err}; install the extra it needs (pip install 'misentry[onnx]' for --onnx)",
            reason="oracle",
        ) from None
    except Exception as err:
        raise CliError(f"cannot set up the model to verify: {err}", reason="oracle") from None


def _oracle(args: argparse.Namespace, bundle: FingerprintSet) -> tuple[LabelOracle, str]:
    """The oracle the arguments name, and its default endpoint id; of the oracle's options,
    only those given are passed (the others keep the oracle's defaults)."""
    if args.endpoint is None:
        given = [f"--{name.replace('_', '-')}" for name in HTTP_OPTIONS if getattr(args, name)]
        if given:
            raise CliError(f"{', '.join(given)} apply to --endpoint only", reason="usage")
    limits = _given(args, LIMITS)
    if args.model is not None:
        return _module_oracle(args.model, args.num_classes, limits)
    num_classes = args.num_classes or dataset_classes(bundle)
    contract = bundle.contract
    if args.onnx is not None:
        from misentry.verify.onnx import OnnxOracle

        path = Path(args.onnx)
        oracle = OnnxOracle(path, contract=contract, num_classes=num_classes, **limits)
        return oracle, f"onnx:{path.resolve()}"
    options = _given(args, HTTP_OPTIONS)
    if "headers" in options:
        options["headers"] = _headers(options["headers"])
    if not contract.is_identity:
        _check_wire_options(options, contract.channels_last)
        options["contract"] = contract
    return http_oracle(args.endpoint, num_classes=num_classes, **options, **limits)


def _check_wire_options(options: dict[str, Any], channels_last: bool) -> None:
    """Refuse --datatype and --layout that contradict the bundle's input contract, which fixes
    what the model takes (FP32, in the contract's layout)."""
    layout = "NHWC" if channels_last else "NCHW"
    if options.get("datatype", "FP32") != "FP32":
        raise CliError(
            "--datatype UINT8: the bundle's model takes FP32 values encoded by its input "
            "contract (misentry sends them); drop --datatype",
            reason="usage",
        )
    if options.get("layout", layout) != layout:
        raise CliError(
            f"--layout {options['layout']}: the bundle's input contract says the model takes "
            f"{layout}; drop --layout",
            reason="usage",
        )


def http_oracle(url: str, **options: Any) -> tuple[LabelOracle, str]:
    """An :class:`~misentry.verify.http.HttpOracle` of the model at ``url`` with ``options``,
    and its default endpoint id (the URL)."""
    from misentry.verify.http import HttpOracle

    return HttpOracle(url, **options), str(url)


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _module_oracle(
    path: Path, num_classes: int | None, limits: dict[str, Any]
) -> tuple[LabelOracle, str]:
    from misentry.models import RecordError, load_model
    from misentry.models.oracle import ModuleOracle

    try:
        model, record = load_model(path)
    except (RecordError, OSError) as err:
        raise CliError(f"--model: {err}", reason="model") from None
    classes = num_classes or (record.input or {}).get("num_classes")
    return ModuleOracle(model, num_classes=classes, **limits), f"model:{path.resolve()}"


def dataset_classes(bundle: FingerprintSet) -> int | None:
    """The number of classes the bundle records, else its registered dataset's (None: neither)."""
    from misentry.data import DATASETS

    recorded = bundle.manifest.get("num_classes")
    if type(recorded) is int and recorded >= 2:
        return recorded
    info = DATASETS.get(str(bundle.manifest.get("dataset")))
    return None if info is None else info.num_classes


def _headers(items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        key, colon, value = item.partition(":")
        if not colon or not key.strip():
            raise CliError(f"--header {item!r}: expected 'Name: value'", reason="usage")
        headers[key.strip()] = value.strip()
    return headers


def _reason_of(err: Exception) -> str:
    from misentry.verify.ledger import LedgerError

    if isinstance(err, CliError) and err.reason is not None:
        return err.reason
    if isinstance(err, LedgerError):
        return "ledger"
    return "usage" if isinstance(err, ValueError | CliError) else "error"


def _bundle_info(path: Path, bundle: FingerprintSet) -> dict[str, Any]:
    return {
        "fingerprints": str(path),
        "method": bundle.manifest.get("method"),
        "count": len(bundle),
        "signed": bundle.manifest.get("signature") is not None,
    }
