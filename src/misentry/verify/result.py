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
        verdict: INTACT, TAMPERED, or INCONCLUSIVE when the query failed.
        indices: the bundle indices used, in query order (the draw's first ``ns``).
        mismatches: the fingerprints among them whose label changed (empty unless TAMPERED).
    """

    ns: int
    verdict: Verdict
    indices: tuple[int, ...]
    mismatches: tuple[Mismatch, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "ns": self.ns,
            "verdict": self.verdict.value,
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
            for any other exception); None otherwise.
        message: what happened, for a human; None unless INCONCLUSIVE.
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
    mismatches: tuple[Mismatch, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mismatches", self.checks[-1].mismatches if self.checks else ())

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
