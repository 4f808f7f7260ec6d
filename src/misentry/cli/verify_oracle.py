"""The model ``misentry verify`` checks: the options that name it (``--model``, ``--onnx``,
``--endpoint`` and theirs) and the label oracle they set up.

Of the oracle's options, only those given are passed: the others keep the oracle's defaults,
which the help shows (filled in when the help is printed, so that parsing the arguments does not
import the HTTP oracle).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.cli.common import CliError

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.models.oracle import LabelOracle

HTTP_OPTIONS = ("input_name", "datatype", "layout", "output", "output_name", "headers", "timeout")
"""The options for --endpoint only: the arguments of :class:`~misentry.verify.http.HttpOracle`
of the same names."""

LIMITS = ("batch_size", "budget", "deadline")
"""The options every oracle takes: the arguments of :class:`~misentry.models.oracle.LabelOracle`
of the same names."""

MakeOracle = Callable[["FingerprintSet"], tuple["LabelOracle", str]]
"""Sets up the oracle for a bundle; returns it and its default endpoint id."""


class OracleDefaultsFormatter(argparse.RawDescriptionHelpFormatter):
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


def add_model_options(sub: argparse.ArgumentParser) -> None:
    """The model to verify (one of --model, --onnx, --endpoint) and the limits of its oracle."""
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, metavar="DIR", help="a model record folder")
    source.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file (extra: onnx)")
    source.add_argument(
        "--endpoint",
        metavar="URL",
        help="an Open Inference Protocol model URL (.../v2/models/M), or the server's base URL "
        "(http://HOST:PORT) when it serves one model (found in its repository index)",
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


def add_endpoint_options(http: argparse._ArgumentGroup) -> None:
    """The options of --endpoint only (:data:`HTTP_OPTIONS`)."""
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


def set_up(make_oracle: MakeOracle, bundle: FingerprintSet) -> tuple[LabelOracle, str]:
    """``make_oracle(bundle)``; what goes wrong is a :class:`CliError` with the reason
    ``oracle`` (one the maker raised keeps its own)."""
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


def oracle_of(args: argparse.Namespace, bundle: FingerprintSet) -> tuple[LabelOracle, str]:
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
    options = endpoint_options(args, bundle)
    url = resolved_endpoint(args.endpoint, options)
    if not contract.is_identity:
        options["contract"] = contract
    return http_oracle(url, num_classes=num_classes, **options, **limits)


def resolved_endpoint(url: str, options: dict[str, Any]) -> str:
    """``url``, or for a server's base URL (``http://HOST:PORT``) the address of its only ready
    model, found in its repository index; a :class:`CliError` (reason ``oracle``) naming the
    models when there are several or none."""
    from misentry.verify.discovery import DiscoveryError, resolve_endpoint

    try:
        return resolve_endpoint(
            url, headers=options.get("headers"), timeout=options.get("timeout", 10.0)
        )
    except DiscoveryError as err:
        raise CliError(f"--endpoint: {err}", reason="oracle") from None


def endpoint_options(args: argparse.Namespace, bundle: FingerprintSet) -> dict[str, Any]:
    """The endpoint options given (:func:`add_endpoint_options`) as arguments of
    :class:`~misentry.verify.http.HttpOracle`, headers parsed, checked against the bundle's
    input contract."""
    options = _given(args, HTTP_OPTIONS)
    if "headers" in options:
        options["headers"] = _headers(options["headers"])
    if not bundle.contract.is_identity:
        _check_wire_options(options, bundle.contract.channels_last)
    return options


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
