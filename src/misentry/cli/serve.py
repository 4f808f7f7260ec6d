"""``misentry serve``: serve a model record over the Open Inference Protocol (KServe V2)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from rich.markup import escape

from misentry.cli.common import CliError, Verbs, add_verb, console, err_console, port

DESCRIPTION = """\
Serve the model of a record folder (a target or a tampered copy) over the Open Inference
Protocol (KServe V2) REST API, labels only unless --scores, until Ctrl-C:

  GET  /v2/health/live, /v2/health/ready, /v2       server health and metadata
  GET  /v2/models/NAME, /v2/models/NAME/ready       model metadata and readiness
  POST /v2/models/NAME/infer                        top-1 labels of a batch

An inference request holds one input: datatype FP32 (pixels in [0, 1]) or UINT8 (0..255),
shape [N, C, H, W] (or [N, H, W, C]) of the record's input size, data row-major.

A model imported with an input contract (misentry import) is served as your own server would
serve it: the input is what the model takes, FP32 values encoded by the contract (its range,
mean and std), in the contract's layout only, so one bundle verifies both servers alike.

There is no authentication: the server listens on 127.0.0.1 (this machine only) unless --host
says otherwise."""

EPILOG = """\
examples:
  misentry serve --model runs/target
  misentry serve --model runs/bench/backdoor/0000 --port 8081 --name suspect
  misentry verify --fingerprints runs/fp --endpoint http://127.0.0.1:8080/v2/models/NAME"""


def add(verbs: Verbs) -> None:
    """Register ``misentry serve``."""
    serve = add_verb(
        verbs,
        "serve",
        "serve a model record over the Open Inference Protocol (KServe V2)",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    serve.add_argument(
        "--model", type=Path, required=True, metavar="DIR", help="record folder of the model"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port, default=8080, help="TCP port (default 8080)")
    serve.add_argument(
        "--name",
        type=_model_name,
        help="model name in the URL (default: <dataset>-<first 16 digits of the record id>)",
    )
    serve.add_argument(
        "--scores",
        action="store_true",
        help="also answer class probabilities (output 'scores'); labels only by default",
    )
    serve.add_argument(
        "--max-batch",
        type=int,
        default=1024,
        metavar="N",
        help="most images per request (default 1024)",
    )


def run(args: argparse.Namespace) -> int:
    """Load ``--model``, build the app, print its URL and serve it with
    :func:`misentry.serve.oip.run_server` until interrupted."""
    from misentry.models import load_record

    if args.max_batch < 1:
        raise CliError("--max-batch must be at least 1")
    try:
        from misentry.serve.oip import create_app_from_record, default_model_name, run_server
    except ImportError as err:
        raise CliError(
            f"misentry serve needs fastapi and uvicorn ({err}); "
            "install them with: pip install 'misentry[serve]'"
        ) from None
    record = load_record(args.model)  # RecordError (a ValueError) names what is wrong
    name = args.name or default_model_name(record)
    app = create_app_from_record(record, name=name, scores=args.scores, max_batch=args.max_batch)
    url = f"http://{_url_host(args.host)}:{args.port}/v2/models/{name}"
    console.print(
        f"serving the {record.kind} [bold]{record.architecture}[/] on [bold]{record.dataset}[/] "
        f"(record {record.record_id[:16]}), {'labels and scores' if args.scores else 'labels'}",
        highlight=False,
    )
    contract = record.params.get("import", {}).get("contract")
    if contract is not None:
        console.print(
            f"input: FP32 values by the model's input contract {escape(str(contract))}",
            highlight=False,
        )
    shown = escape(url)
    console.print(f"model URL [bold]{shown}[/]", highlight=False, soft_wrap=True)
    console.print(f"infer with POST {shown}/infer; Ctrl-C stops", highlight=False, soft_wrap=True)
    if not _is_loopback(args.host):
        err_console.print(
            f"[yellow]warning: listening on {escape(args.host)}, not on loopback: anyone who "
            "can reach this machine can query the model, and there is no authentication[/]",
            highlight=False,
        )
    run_server(app, args.host, args.port)
    return 0


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    bare = host.strip("[]")
    return f"[{bare}]" if ":" in bare else host


def _model_name(text: str) -> str:
    from misentry.serve.protocol import check_name

    try:
        return check_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
