"""``misentry import``: a target record from a model the user already has."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.cli.common import CliError, Verbs, add_verb, console, err_console

if TYPE_CHECKING:
    from misentry.models import Record

DESCRIPTION = """\
Import a trained classifier you already have as a misentry target record (meta.json + \
weights.safetensors in --out), so that every other verb (tamper, fingerprint, verify, serve, \
bench) works on it.

Give the model in exactly one form:
  --module FILE.py:FACTORY --weights W   your nn.Module, built by FACTORY(**--arg values), with
                                         weights from safetensors (or a plain state_dict file,
                                         read only with torch.load(weights_only=True))
  --module package.module:FACTORY ...    the same, from an importable module
  --torchscript FILE                     a TorchScript archive (torch.jit.save)
  --exported FILE.pt2                    a PyTorch 2 program (torch.export.save)
  --onnx FILE                            refused, with the reason: ONNX is for verification only
                                         (misentry verify --onnx FILE)

The model's input contract says what it expects, so misentry keeps images as 8-bit pixels \
everywhere outside the model and converts them in front of it: the range of its input values \
(--input-range), the normalization it expects (--mean, --std, in the units of that range), the \
layout (--channels-last) and the image size (--size, required for your own images).

The data: a registered dataset (misentry data list), or your own images: --dataset imagefolder \
--root DIR (one sub-folder of images per class; sorted folder names are the labels) or \
--dataset csv --root FILE.csv (rows path,label). Images are resized and centre-cropped to --size \
and cut into the five pools. The record states where the model came from (format, file, \
sha256), its contract and its accuracy on the test pool.

A model that fails on one input of the declared shape, does not give [N, classes] logits, or \
has another number of classes than the data is refused with a message that says which."""

EPILOG = """\
examples:
  misentry import --torchscript model.pt --dataset imagefolder --root photos/ --size 32 32 \\
      --mean 0.49 0.48 0.45 --std 0.25 0.24 0.26 --out runs/my-target
  misentry import --module nets.py:make_net --arg width=64 --weights net.safetensors \\
      --dataset mnist5k --out runs/my-target"""


def add(verbs: Verbs) -> None:
    """Register ``misentry import``."""
    cmd = add_verb(
        verbs,
        "import",
        "import your own trained model (PyTorch, TorchScript, torch.export) as a target record",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    form = cmd.add_mutually_exclusive_group(required=True)
    form.add_argument("--module", metavar="FILE.py:FACTORY", help="your nn.Module's factory")
    form.add_argument("--torchscript", type=Path, metavar="FILE", help="a TorchScript archive")
    form.add_argument("--exported", type=Path, metavar="FILE.pt2", help="a torch.export program")
    form.add_argument("--onnx", type=Path, metavar="FILE", help="ONNX: verification only (refused)")
    cmd.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument of the factory (repeatable; VALUE is read as JSON, else a string)",
    )
    cmd.add_argument("--weights", type=Path, metavar="W", help="the --module model's weights")
    add_contract_options(cmd)
    cmd.add_argument(
        "--dataset",
        required=True,
        help="a registered dataset, imagefolder (--root DIR) or csv (--root FILE.csv)",
    )
    cmd.add_argument("--root", type=Path, help="the dataset's folder (the CSV file for csv)")
    cmd.add_argument("--data-seed", type=int, default=0, help="seed of the pool split (default 0)")
    cmd.add_argument("--out", type=Path, required=True, help="the record folder to write")
    cmd.add_argument("--force", action="store_true", help="overwrite --out if it holds a record")
    cmd.add_argument("--json", action="store_true", help="print the record's meta as JSON")


def add_contract_options(cmd: argparse.ArgumentParser) -> None:
    """The input-contract options (``import`` and the Python API share their meaning)."""
    contract = cmd.add_argument_group("input contract (what the model expects)")
    contract.add_argument(
        "--input-range",
        choices=("0-1", "0-255"),
        default="0-1",
        help="range of the model's input values before normalization (default 0-1)",
    )
    contract.add_argument(
        "--mean", type=float, nargs="+", help="per-channel mean it subtracts (units of the range)"
    )
    contract.add_argument(
        "--std", type=float, nargs="+", help="per-channel std it divides by (units of the range)"
    )
    contract.add_argument(
        "--channels-last", action="store_true", help="it takes (N, H, W, C), not (N, C, H, W)"
    )
    contract.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="its input height and width (required for imagefolder and csv)",
    )


def parse_args_kv(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to keyword arguments; VALUE as JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise CliError(f"--arg {pair!r}: expected KEY=VALUE with KEY a Python identifier")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    """Import the model, measure it on the test pool and save its target record at --out."""
    from misentry.models import ImportRequest, InputContract, import_target, save_record

    fmt, source = next(
        (name, value)
        for name, value in (
            ("module", args.module),
            ("torchscript", args.torchscript),
            ("exported", args.exported),
            ("onnx", args.onnx),
        )
        if value is not None
    )
    request = ImportRequest(
        format=fmt,
        contract=InputContract(
            input_range=args.input_range,
            mean=tuple(args.mean) if args.mean else None,
            std=tuple(args.std) if args.std else None,
            channels_last=args.channels_last,
        ),
        dataset=args.dataset,
        source=None if fmt == "module" else Path(source),
        factory=args.module,
        args=parse_args_kv(args.arg),
        weights=args.weights,
        root=args.root,
        size=tuple(args.size) if args.size else None,
        data_seed=args.data_seed,
    )
    with err_console.status(f"importing the {fmt} model and measuring it on the test pool"):
        record = import_target(request)
    save_record(record, args.out, overwrite=args.force)
    _print_imported(record, args.out, args.json)
    return 0


def _print_imported(record: Record, out: Path, as_json: bool) -> None:
    from misentry.models.record import read_meta

    if as_json:
        print(json.dumps({"path": str(out), **read_meta(out)}, indent=2))
        return
    source = record.params["import"]
    console.print(
        f"imported [bold]{source['source']}[/] ({record.architecture}, sha256 "
        f"{source['source_sha256'][:16]}…) on [bold]{record.dataset}[/] (data seed "
        f"{record.data_seed})"
    )
    console.print(
        f"test accuracy [bold green]{record.metrics['test_accuracy']:.2%}[/] "
        f"(val {record.metrics['val_accuracy']:.2%})"
    )
    console.print(f"record {record.record_id[:16]} at {out}")
