"""How ``misentry verify`` prints a verdict (or why there is none), and its exit status."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.table import Table

from misentry.cli.common import console, err_console

if TYPE_CHECKING:
    from misentry.verify.verifier import VerificationResult

EXIT_INTACT, EXIT_TAMPERED, EXIT_INCONCLUSIVE = 0, 1, 2
EXIT_CODES = {"intact": EXIT_INTACT, "tampered": EXIT_TAMPERED, "inconclusive": EXIT_INCONCLUSIVE}
"""The exit status of each verdict."""

COLOURS = {"intact": "bold green", "tampered": "bold red", "inconclusive": "bold yellow"}
MISMATCH_ROWS = 50
"""Most mismatches listed in the table (--json lists them all)."""


def show_failure(reason: str, message: str, *, as_json: bool = False) -> int:
    """Print why a verification is inconclusive; returns its exit status (2)."""
    if as_json:
        failure = {"verdict": "inconclusive", "reason": reason, "message": message}
        print(json.dumps({**failure, "exit": EXIT_INCONCLUSIVE}, indent=2))
    else:
        err_console.print(
            f"[{COLOURS['inconclusive']}]INCONCLUSIVE[/] ({reason}): {message}",
            highlight=False,
            soft_wrap=True,
        )
    return EXIT_INCONCLUSIVE


def show_result(result: VerificationResult, info: dict[str, Any], *, as_json: bool = False) -> None:
    """Print a verification's verdict, its checks, mismatches and summary (or all as JSON)."""
    if as_json:
        exit_code = EXIT_CODES[result.verdict.value]
        print(json.dumps({**result.to_json(), "bundle": info, "exit": exit_code}, indent=2))
        return
    verdict = result.verdict.value
    console.print(
        f"[{COLOURS[verdict]}]{verdict.upper()}[/] {verdict_detail(result)}",
        highlight=False,
        soft_wrap=True,
    )
    if len(result.checks) > 1:
        _print_checks(result)
    if result.mismatches:
        _print_mismatches(result)
    _print_summary(result, info)
    for note in result.warnings:
        err_console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)


def verdict_detail(result: VerificationResult) -> str:
    """What the verdict line says after the verdict: why, and with what false-alarm
    probability under which tolerance."""
    from misentry.verify.false_alarm import format_probability

    largest = result.checks[-1]
    if result.verdict.value == "inconclusive":
        return f"{result.reason}: {result.message}"
    if result.verdict.value == "intact":
        return (
            f"all {largest.ns} fingerprints gave their expected labels "
            f"(tolerance {result.tolerance})"
        )
    return (
        f"{len(largest.mismatches)} of {largest.ns} fingerprints changed label; false-alarm "
        f"probability {format_probability(largest.false_alarm or 0.0)} under tolerance "
        f"{result.tolerance} (limit {result.max_false_alarm:g})"
    )


def _print_checks(result: VerificationResult) -> None:
    from misentry.verify.false_alarm import format_probability

    table = Table(title="checks per N_S")
    for col in ("N_S", "verdict", "mismatches", "false alarm"):
        table.add_column(col, justify="right" if col != "verdict" else "left")
    for check in result.checks:
        value = check.verdict.value
        p = "-" if check.false_alarm is None else format_probability(check.false_alarm)
        table.add_row(str(check.ns), f"[{COLOURS[value]}]{value}[/]", str(len(check.mismatches)), p)
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
    table.add_row("tolerance", f"{result.tolerance}, false-alarm limit {result.max_false_alarm:g}")
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
