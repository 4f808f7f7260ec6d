"""``misentry stability``: before shipping, run a bundle through the benign re-deployment matrix
and print which stacks change which labels (the work is
:func:`misentry.verify.stability.check_stability`).

Exit status: 0 stable, 1 a stack within the bundle's tolerance changed a label, 2 a real stack
within it could not be checked or the check could not start. No error gets through: a check
that did not run must never read as "stable" to a script.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from misentry.cli.common import CliError, Verbs, add_verb, console, err_console, stage_bars
from misentry.cli.verify_oracle import (
    OracleDefaultsFormatter,
    add_endpoint_options,
    endpoint_options,
    resolved_endpoint,
)

if TYPE_CHECKING:
    from misentry.verify.stability import StabilityReport, StackResult

EXIT_STABLE, EXIT_CHANGED, EXIT_UNCHECKED = 0, 1, 2

DESCRIPTION = """\
Check, before shipping, that the fingerprints of a bundle keep their labels however the target
is served within the bundle's declared tolerance (`misentry fingerprint --tolerance`; a bundle
made before tolerances existed is exact). The bundle runs through every stack of the benign
re-deployment matrix, all levels, so you also see what looser serving would do; each level adds
its stacks to the stricter ones':

  exact  the same float32 stack: batch sizes 1 to 256 and all at once, 1 and 2 threads,
         float64, channels-last (a label that changes here changes for no reason at all)
  fp32   any float32 execution: oneDNN off, TorchScript trace and trace+freeze, the pixels
         converted as k * (1/255) instead of k / 255 and through JSON with 6 decimals, and
         random summation orders of every convolution and matrix product
  tf32   TF32 in convolutions and matrix products (inputs rounded to a 10-bit mantissa), in
         convolutions only, and stochastically rounded draws
  fp16   the model run in float16 end to end, under CPU autocast, and stochastically rounded
  bf16   the same in bfloat16

These stacks are emulated on this machine's CPU. --onnx adds the real ONNX Runtime on an ONNX
file of the target (`misentry export`): graph optimizations off and all on, 1 and 2 intra-op
threads (level fp32). --endpoint adds the model as you serve it (Open Inference Protocol), which
is always within the tolerance: the tolerance is what you declared for the way you serve it.

The target must be the record the bundle was made for (its weights' SHA-256 is checked). An
emulated stack that cannot run the model (one that does not trace) is listed with its reason and
does not fail the check.

exit status:
  0  stable: no stack within the tolerance changed a label
  1  a stack within the tolerance changed a label: regenerate the bundle with the tolerance
     you serve at, or serve within the one it declares
  2  a real stack within the tolerance (ONNX Runtime, the endpoint) could not be checked, or
     the check could not start (bundle, key, target); never read as stable"""

EPILOG = """\
examples:
  misentry stability --fingerprints runs/fp --target runs/target
  misentry export --model runs/target --onnx runs/target.onnx
  misentry stability --fingerprints runs/fp --target runs/target --onnx runs/target.onnx \\
      --endpoint http://127.0.0.1:8080/v2/models/target --json"""

NOTE_INDICES = 5
"""Most fingerprint indices a row's note lists (--json lists up to 20)."""


def add(verbs: Verbs) -> None:
    """Register ``misentry stability``."""
    sub = add_verb(
        verbs,
        "stability",
        "check that a bundle's labels survive benign re-deployment within its tolerance "
        "(exit 0 stable, 1 a label changed, 2 not checked)",
        run,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    sub.add_argument("--fingerprints", type=Path, required=True, metavar="DIR", help="bundle")
    sub.add_argument(
        "--key-file",
        type=Path,
        metavar="F",
        help="key of a signed bundle (default: MISENTRY_BUNDLE_KEY)",
    )
    sub.add_argument(
        "--target",
        type=Path,
        required=True,
        metavar="DIR",
        help="the target record folder the bundle was made for",
    )
    sub.add_argument("--onnx", type=Path, metavar="FILE", help="an ONNX file of the target")
    sub.add_argument(
        "--endpoint", metavar="URL", help="the served model's URL (.../v2/models/NAME)"
    )
    sub.add_argument("--json", action="store_true", help="print the report as JSON")
    sub.formatter_class = OracleDefaultsFormatter
    add_endpoint_options(sub.add_argument_group("endpoint options (with --endpoint only)"))


def run(args: argparse.Namespace) -> int:
    """Run ``misentry stability``; returns the exit status and never raises (but on an
    interrupt)."""
    try:
        report = _check(args)
    except (CliError, ValueError, KeyError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        return _show_failure(message or type(err).__name__, as_json=args.json)
    code = exit_status(report)
    if args.json:
        info = {"fingerprints": str(args.fingerprints), "target": str(args.target)}
        print(json.dumps({**info, **report.to_json(), "exit": code}, indent=2))
    else:
        console.print(_table(report, args.fingerprints))
        console.print(summary(report), highlight=False, soft_wrap=True)
    return code


def exit_status(report: StabilityReport) -> int:
    """1 when a stack within the tolerance changed a label (a finding), else 2 when a real stack
    within it could not be checked, else 0."""
    if report.failed:
        return EXIT_CHANGED
    return EXIT_UNCHECKED if report.errors else EXIT_STABLE


def _check(args: argparse.Namespace) -> StabilityReport:
    from misentry.fingerprint.bundle import BundleError, load_bundle, load_key
    from misentry.models import RecordError, load_model
    from misentry.verify.stability import check_stability

    if args.onnx is not None and not args.onnx.is_file():
        raise CliError(f"--onnx: no file at {args.onnx}; write one with misentry export")
    try:
        bundle = load_bundle(args.fingerprints, load_key(args.key_file))
    except (BundleError, OSError) as err:
        raise CliError(f"--fingerprints: {err}") from None
    try:
        model, _record = load_model(args.target)
    except (RecordError, OSError) as err:
        raise CliError(f"--target: {err}") from None
    options = endpoint_options(args, bundle)
    if options and args.endpoint is None:
        raise CliError("the endpoint options apply to --endpoint only")
    endpoint = None if args.endpoint is None else resolved_endpoint(args.endpoint, options)
    with stage_bars(err_console, width=11, transient=args.json) as on_progress:
        return check_stability(
            bundle,
            model,
            onnx=args.onnx,
            endpoint=endpoint,
            http_options=options,
            progress=on_progress,
        )


def _show_failure(message: str, *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"ok": False, "error": message, "exit": EXIT_UNCHECKED}, indent=2))
    else:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return EXIT_UNCHECKED


def _table(report: StabilityReport, bundle: Path) -> Table:
    from misentry.models.stacks import LEVELS

    table = Table(title=f"{bundle}: label changes by stack (tolerance {report.tolerance})")
    table.add_column("stack", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("within tolerance", max_width=9)
    table.add_column("label changes", justify="right", max_width=7)
    table.add_column("note")
    for level in LEVELS:
        rows = [row for row in report.rows if row.level == level]
        for row in rows:
            table.add_row(
                row.stack,
                row.level,
                "yes" if row.within else "no",
                _changes(row),
                _note(row),
            )
        if rows and level != LEVELS[-1]:
            table.add_section()
    return table


def _changes(row: StackResult) -> str:
    if row.error is not None:
        return "-"
    colour = "green" if not row.changed else "bold red" if row.within else "yellow"
    return f"[{colour}]{row.changed} / {row.total}[/]"


def _note(row: StackResult) -> str:
    if row.error is not None:
        return f"{'unavailable' if row.kind == 'emulated' else 'not checked'}: {row.error}"
    if not row.changed:
        return ""
    shown = ", ".join(map(str, row.changed_indices[:NOTE_INDICES]))
    more = ", …" if row.changed > NOTE_INDICES else ""
    return f"fingerprints {shown}{more}"


def summary(report: StabilityReport) -> str:
    """The report in one line: stable, or which stacks changed labels or went unchecked."""
    tolerance = report.tolerance
    if report.failed:
        within = [row for row in report.rows if row.within and row.error is None]
        named = ", ".join(f"{r.stack} {r.changed}/{r.total}" for r in report.failed[:4])
        more = ", …" if len(report.failed) > 4 else ""
        return (
            f"[bold red]NOT stable[/] within tolerance {tolerance}: {len(report.failed)} of "
            f"{len(within)} stacks changed labels ({named}{more})"
        )
    if report.errors:
        named = "; ".join(f"{r.stack} ({r.error})" for r in report.errors)
        count = len(report.errors)
        return (
            f"[bold yellow]NOT CHECKED[/] within tolerance {tolerance}: {count} "
            f"stack{'s' if count > 1 else ''} could not be checked: {named}"
        )
    return f"[bold green]stable[/] within tolerance {tolerance}: {_stable_detail(report)}"


def _stable_detail(report: StabilityReport) -> str:
    text = f"0 label changes on {len(report.checked)} stacks"
    unavailable = [r.stack for r in report.unavailable if r.within]
    if unavailable:
        text += f" ({len(unavailable)} unavailable for this model: {', '.join(unavailable)})"
    looser = [row for row in report.rows if not row.within and row.error is None]
    changing = [row for row in looser if row.changed]
    if looser:
        text += f"; beyond it, {len(changing)} of {len(looser)} stacks change labels"
    return text
