"""What a verification concluded: the verdict, one check per N_S, and how it was reached.

:func:`misentry.verify.verifier.verify` returns a :class:`VerificationResult`; each result has a
``to_json`` summary for reports and ``misentry verify --json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """What a verification concluded about the model."""

    INTACT = "intact"
    TAMPERED = "tampered"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class Mismatch:
    """A fingerprint whose label changed: its bundle index, the target's label, the answer."""

    index: int
    expected: int
    returned: int

    def to_json(self) -> dict[str, int]:
        return {"index": self.index, "expected": self.expected, "returned": self.returned}


@dataclass(frozen=True)
class CheckResult:
    """The verdict with the first ``ns`` fingerprints of the draw.

    Attributes:
        ns: N_S, the number of fingerprints this check uses.
        verdict: INTACT, TAMPERED, or INCONCLUSIVE when the query failed or when an untampered
            model gives the mismatches seen too often (see :mod:`misentry.verify.false_alarm`).
        indices: the bundle indices used, in query order (the draw's first ``ns``).
        mismatches: the fingerprints among them whose label changed (empty when none did or
            the query failed).
        false_alarm: with k >= 1 mismatches, the probability that an untampered model served
            within the bundle's tolerance changes k or more of these labels; None otherwise.
        reason: why the check is INCONCLUSIVE (``false_alarm``, or the failed query's
            reason); None otherwise.
    """

    ns: int
    verdict: Verdict
    indices: tuple[int, ...]
    mismatches: tuple[Mismatch, ...] = ()
    false_alarm: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ns": self.ns,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "false_alarm": self.false_alarm,
            "indices": list(self.indices),
            "mismatches": [m.to_json() for m in self.mismatches],
        }


@dataclass(frozen=True)
class VerificationResult:
    """The outcome of :func:`~misentry.verify.verifier.verify`.

    Attributes:
        verdict: the overall verdict, the one of the largest N_S (see
            :mod:`misentry.verify.verifier`).
        checks: one :class:`CheckResult` per N_S, ascending.
        indices: every fingerprint sent, in query order.
        reason: why the verdict is INCONCLUSIVE (an :class:`OracleError` reason such as
            ``budget``, ``deadline``, ``short``, ``out_of_range``, ``transport``, or ``error``
            for any other exception; ``false_alarm`` when the answer came back but an untampered
            model gives its mismatches too often); None otherwise.
        message: what happened, for a human; None unless INCONCLUSIVE.
        tolerance: the deployment tolerance the bundle declares (``exact`` for a bundle that
            declares none).
        max_false_alarm: the limit: mismatches are TAMPERED only when their false-alarm
            probability is below it.
        queries: images the oracle sent to the model in this verification.
        seconds: wall time of the query.
        seed: the seed of the draw (drawn from the OS when none was given, and stored).
        select: ``fresh``, ``random`` or ``all``.
        endpoint_id: the name the ledger keeps the showings under.
        oracle: the oracle's description.
        reused: fingerprints in the draw that had been shown to this endpoint before.
        fresh_left: fingerprints never shown to this endpoint after this verification
            (None without a ledger).
        ledger_path: the ledger file, or None.
        ledger_error: why recording the showings failed after the query, or None. The verdict
            stands (the answers are real), but the next draw cannot know what this one sent.
        warnings: notes for the reader (fingerprints reused, no ledger, ledger not updated).
        bundle_sha256: the bundle's tensor hash, when its manifest has one.
        false_alarm: the false-alarm probability of the largest N_S's check (None when it saw
            no mismatch or the query failed).
    """

    verdict: Verdict
    checks: tuple[CheckResult, ...]
    indices: tuple[int, ...]
    queries: int
    seconds: float
    seed: int
    select: str
    endpoint_id: str
    oracle: str
    reason: str | None = None
    message: str | None = None
    reused: int = 0
    fresh_left: int | None = None
    ledger_path: str | None = None
    ledger_error: str | None = None
    warnings: tuple[str, ...] = ()
    bundle_sha256: str | None = None
    tolerance: str = field(kw_only=True)
    max_false_alarm: float = field(kw_only=True)
    mismatches: tuple[Mismatch, ...] = field(init=False)
    false_alarm: float | None = field(init=False)

    def __post_init__(self) -> None:
        largest = self.checks[-1] if self.checks else None
        object.__setattr__(self, "mismatches", largest.mismatches if largest else ())
        object.__setattr__(self, "false_alarm", largest.false_alarm if largest else None)

    def check(self, ns: int) -> CheckResult:
        """The check of N_S ``ns``."""
        for check in self.checks:
            if check.ns == ns:
                return check
        raise KeyError(f"no check with N_S={ns}; checked {[c.ns for c in self.checks]}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (every field; mismatches of the largest N_S at the top)."""
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "message": self.message,
            "tolerance": self.tolerance,
            "false_alarm": self.false_alarm,
            "max_false_alarm": self.max_false_alarm,
            "ns": [c.ns for c in self.checks],
            "checks": [c.to_json() for c in self.checks],
            "mismatches": [m.to_json() for m in self.mismatches],
            "indices": list(self.indices),
            "queries": self.queries,
            "seconds": self.seconds,
            "seed": self.seed,
            "select": self.select,
            "endpoint_id": self.endpoint_id,
            "oracle": self.oracle,
            "reused": self.reused,
            "fresh_left": self.fresh_left,
            "ledger": self.ledger_path,
            "ledger_error": self.ledger_error,
            "warnings": list(self.warnings),
            "bundle_sha256": self.bundle_sha256,
        }
