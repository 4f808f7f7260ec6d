"""``misentry export``: a model record to an ONNX file, checked against ONNX Runtime, or to a
model folder that MLServer's own ``mlserver start`` serves."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.cli.common import CliError, Verbs, add_verb, console, err_console

if TYPE_CHECKING:
    from misentry.models import InputContract, InputSpec, Record

DESCRIPTION = """\
Export the model of a record folder to an ONNX file for serving (input "input": float32 images
in [0, 1], N x C x H x W, batch size free; output "logits"), then run the file with ONNX Runtime
on the first images of the dataset's test pool and check that its labels agree with the model's
on every one of them. Needs the onnx extra: pip install 'misentry[onnx]'.

A model imported with an input contract is exported as the user's own module: its input is
what the contract says (values in its range, normalized by its mean and std, in its layout),
so the file matches what the user serves, and `misentry verify --onnx` sends that input.

With --mlserver FOLDER instead of --onnx, write a folder that Seldon MLServer serves with its own
command, `mlserver start FOLDER` (needs the interop extra: pip install 'misentry[interop]'):
settings.json (every listener on 127.0.0.1: HTTP --port, gRPC --port + 1, metrics --port + 2)
and model-settings.json (misentry's MLServer runtime, the record folder's absolute path, the
model name --name). The model answers the Open Inference Protocol as `misentry serve` does, at
http://127.0.0.1:PORT/v2/models/NAME, so `misentry verify --endpoint` checks it.
"""

EPILOG = """\
examples:
  misentry export --model runs/target --onnx runs/target.onnx
  misentry export --model runs/target --mlserver runs/mlserver --name target --port 8080
  mlserver start runs/mlserver       # then: misentry verify --fingerprints runs/fp \
                                     #   --endpoint http://127.0.0.1:8080/v2/models/target
"""


def add(verbs: Verbs) -> None:
    """Register ``misentry export``."""
    export = add_verb(
        verbs,
        "export",
        "export a model record to ONNX and check it with ONNX Runtime",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    export.add_argument("--model", type=Path, required=True, metavar="DIR", help="record folder")
    out = export.add_mutually_exclusive_group(required=True)
    out.add_argument("--onnx", type=Path, metavar="FILE", help="ONNX file to write")
    out.add_argument(
        "--mlserver", type=Path, metavar="FOLDER", help="MLServer model folder to write"
    )
    export.add_argument(
        "--name", help="--mlserver: the model's name (default DATASET-<record id prefix>)"
    )
    export.add_argument(
        "--port", type=int, default=8080, help="--mlserver: the HTTP port (default 8080)"
    )
    export.add_argument(
        "--check",
        type=int,
        default=256,
        metavar="N",
        help="test images whose labels must agree (default 256; 0 skips the check)",
    )
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument("--root", type=Path, help="dataset folder, for datasets read from disk")
    export.add_argument(
        "--force", action="store_true", help="replace an existing --onnx file or --mlserver folder"
    )
    export.add_argument("--json", action="store_true", help="print a JSON summary")


def run(args: argparse.Namespace) -> int:
    """Export --model to --onnx and check the file's labels against the model's."""
    from misentry.data import get_dataset
    from misentry.models import InputSpec, RecordError, load_model
    from misentry.models.record import sha256_file
    from misentry.verify.onnx import DEFAULT_OPSET, check_export, export_onnx
    from misentry.verify.wire import model_contract

    if args.mlserver is not None:
        return _export_mlserver(args)
    out: Path = args.onnx
    _check_arguments(args)
    try:
        model, record = load_model(args.model)
    except RecordError as err:
        raise CliError(f"--model: {err}") from None
    assert record.input is not None  # load_model checked the record holds a model
    spec = InputSpec.from_json(record.input)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    with err_console.status(f"exporting {record.architecture} to {out}…"):
        try:
            export_onnx(model, spec.shape, out, opset=opset)
        except ValueError as err:
            raise CliError(f"--model: {err}") from None
    summary: dict[str, Any] = {
        "model": str(args.model),
        "record_id": record.record_id,
        "architecture": record.architecture,
        "dataset": record.dataset,
        "onnx": str(out),
        "bytes": out.stat().st_size,
        "sha256": sha256_file(out),
        "opset": opset,
        "input": _input_summary(model_contract(model), spec),
        "output": ["logits", "float32", ["N", spec.num_classes]],
        "checked": None,
        "agreement": None,
    }
    if args.check:
        with err_console.status(f"checking with ONNX Runtime on the {record.dataset} test pool…"):
            test = get_dataset(record.dataset).pools(record.data_seed, args.root)["test"]
            check = check_export(model, out, test.images[: args.check])
        summary["checked"] = check.n
        summary["agreement"] = check.agreement
        if check.agree < check.n:
            out.unlink()
            raise CliError(
                f"ONNX Runtime's labels agree with the model on only {check.agree} of "
                f"{check.n} test images ({check.agreement:.2%}), so the export is not faithful "
                f"and {out} was removed; try another --opset or a newer onnxruntime"
            )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, record, spec, checked=bool(args.check))
    return 0


def _export_mlserver(args: argparse.Namespace) -> int:
    """Write the MLServer model folder --mlserver for the record --model."""
    from misentry.models import RecordError, load_model

    folder: Path = args.mlserver
    if not 1 <= args.port <= 65533:
        raise CliError("--port must leave room for gRPC and metrics: 1 to 65533")
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--mlserver: {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and not args.force:
        raise CliError(f"--mlserver: {folder} is not empty; use --force to write into it")
    try:
        _model, record = load_model(args.model)  # every hash checked before it is served
    except (RecordError, OSError) as err:
        raise CliError(f"--model: {err}") from None
    try:
        from misentry.serve.mlserver_runtime import write_mlserver_config
        from misentry.serve.oip import default_model_name
    except ImportError as err:
        raise CliError(f"{err}; --mlserver needs: pip install 'misentry[interop]'") from None
    name = args.name or default_model_name(record)
    try:
        write_mlserver_config(folder, args.model, name, args.port, args.port + 1, args.port + 2)
    except ValueError as err:
        raise CliError(f"--name: {err}") from None
    url = f"http://127.0.0.1:{args.port}/v2/models/{name}"
    summary = {"model": str(args.model), "record_id": record.record_id, "mlserver": str(folder),
               "name": name, "url": url}  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(f"wrote [bold]{folder}[/] for MLServer: model {name!r}", highlight=False)
        console.print(f"  serve it with: mlserver start {folder}", highlight=False)
        console.print(f"  it answers at {url}", highlight=False)
    return 0


def _input_summary(contract: InputContract, spec: InputSpec) -> list[Any]:
    """The file's input: name, type, shape and what the values are (pixels in [0, 1], or the
    input contract's encoding of them)."""
    if contract.is_identity:
        return ["input", "float32", ["N", *spec.shape], "[0, 1]"]
    c, h, w = spec.shape
    shape = ["N", h, w, c] if contract.channels_last else ["N", c, h, w]
    return ["input", "float32", shape, {"contract": contract.to_json()}]


def _check_arguments(args: argparse.Namespace) -> None:
    out: Path = args.onnx
    if args.check < 0:
        raise CliError("--check must be 0 or more")
    if out.is_dir():
        raise CliError(f"--onnx: {out} is a folder; give a file name such as model.onnx")
    if out.exists() and not args.force:
        raise CliError(f"--onnx: {out} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise CliError(f"--onnx: the folder {out.parent} does not exist")


def _input_text(entry: list[Any]) -> str:
    shape = "×".join(map(str, entry[2]))
    if entry[3] == "[0, 1]":
        return f"{shape} in [0, 1]"
    contract = entry[3]["contract"]
    return f"{shape} by the input contract {contract}"


def _print_summary(
    summary: dict[str, Any], record: Record, spec: InputSpec, *, checked: bool
) -> None:
    out, opset = summary["onnx"], summary["opset"]
    console.print(
        f"wrote [bold]{out}[/] ({summary['bytes']:,} bytes, opset {opset}, "
        f"sha256 {summary['sha256'][:16]}…)",
        highlight=False,
    )
    console.print(
        f"  {record.architecture} on {record.dataset}, record {record.record_id[:16]}; "
        f"input 'input' float32 {_input_text(summary['input'])}, output 'logits'",
        highlight=False,
    )
    if checked:
        console.print(
            f"  ONNX Runtime agrees with the model on [bold green]{summary['checked']}/"
            f"{summary['checked']}[/] test images (100%)",
            highlight=False,
        )
    else:
        console.print("  [yellow]not checked[/] against ONNX Runtime (--check 0)")
