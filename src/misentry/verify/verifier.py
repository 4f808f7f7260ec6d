"""The verifier: query a model with fingerprints and decide whether it is still the target.

:func:`verify` draws fingerprints from a bundle, sends them to a :class:`LabelOracle` in one
call and compares the labels that come back with the ones the untampered target gave.

One query set answers every N_S: the draw is as long as the largest N_S, and each smaller N_S
is checked on a prefix of the same draw (as foolbox sweeps thresholds in one call). The
mismatches of a smaller N_S are therefore a subset of a larger one's, and the overall verdict
is the verdict of the largest N_S.

Fail closed. The verdict is

- ``INCONCLUSIVE`` (with a ``reason`` and a message) when anything went wrong with the query:
  an :class:`OracleError` (budget, deadline, transport, server, timeout, short or malformed
  answer, label outside the class range), any other exception raised by the oracle, or an
  answer the verifier's own checks refuse (wrong length or shape, not integers, a label outside
  ``[0, num_classes)``). Every N_S is then inconclusive too: a failed query proves nothing;
- ``TAMPERED`` only when the whole answer came back well-formed and at least one label differs;
- ``INTACT`` only when the whole answer came back well-formed and every label matched.

Mistakes of the caller (an empty bundle, N_S outside ``[1, N]``, a bundle whose labels do not
fit the model's classes, an unwritable ledger) raise :class:`VerifyError` or
:class:`~misentry.verify.ledger.LedgerError` before anything is sent.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import torch

from misentry.fingerprint.bundle import FingerprintSet
from misentry.models.oracle import LabelOracle, OracleError
from misentry.verify.ledger import Ledger, LedgerError

log = logging.getLogger(__name__)

Select = Literal["fresh", "random", "all"]
SELECTIONS: tuple[str, ...] = ("fresh", "random", "all")
DEFAULT_NS = 5


class VerifyError(ValueError):
    """The verification was asked for something impossible; nothing was sent."""


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
    """The outcome of :func:`verify`.

    Attributes:
        verdict: the overall verdict, the one of the largest N_S (see the module docstring).
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


@dataclass(frozen=True)
class _Answer:
    labels: torch.Tensor | None
    returned: bool
    reason: str | None = None
    message: str | None = None


def verify(
    bundle: FingerprintSet,
    oracle: LabelOracle,
    ns: int | Iterable[int] | None = None,
    *,
    seed: int | None = None,
    select: Select = "fresh",
    ledger: Ledger | None = None,
    endpoint_id: str | None = None,
    num_classes: int | None = None,
) -> VerificationResult:
    """Verify the model behind ``oracle`` with fingerprints of ``bundle``; never raises for a
    failed query (that is an INCONCLUSIVE verdict).

    Arguments:
        bundle: the fingerprints and the labels the untampered target gives them.
        oracle: the model under test.
        ns: N_S, one or several (default 5; with ``select="all"``, N). Each must be in [1, N].
        seed: seed of the draw; None draws one from the OS (unpredictable to the model's
            operator) and stores it in the result.
        select: ``fresh``: fingerprints never shown to this endpoint first (by the ledger;
            without one, the same as ``random``), reused ones only when no fresh remain, least
            shown first; ``random``: a seeded draw ignoring the ledger; ``all``: every
            fingerprint, in seeded order, checked at N and at any N_S given.
        ledger: where showings are read and recorded (after the query); None keeps no record.
        endpoint_id: the ledger's name for the endpoint (default: ``oracle.describe()``).
        num_classes: labels must be in [0, num_classes) (default: ``oracle.num_classes``).

    >>> result = verify(load_bundle("runs/fp"), ModuleOracle(model, num_classes=10), ns=(1, 5))
    >>> result.verdict, [c.verdict for c in result.checks]
    """
    if select not in SELECTIONS:
        raise VerifyError(f"select must be one of {', '.join(SELECTIONS)}, not {select!r}")
    sizes = _sizes(ns, len(bundle), select)
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
        raise VerifyError(f"seed must be an integer in [0, 2**63), not {seed!r}")
    num_classes = num_classes if num_classes is not None else oracle.num_classes
    _check_labels(bundle, num_classes)
    endpoint = endpoint_id or _describe(oracle)
    if ledger is not None:
        if not ledger.matches(bundle):
            raise LedgerError(
                f"ledger {ledger.path} was opened for another bundle "
                f"({ledger.bundle_sha256[:16]}…); open it with this bundle"
            )
        ledger.check_writable()
    seed = secrets.randbits(63) if seed is None else seed
    order = _draw(len(bundle), sizes[-1], seed, select, ledger, endpoint)
    shown_before = ledger.shown(endpoint) if ledger is not None else {}
    reused = sum(1 for i in order if i in shown_before)
    fresh_before = set() if ledger is None else set(ledger.fresh(endpoint))

    before = oracle.queries
    started = time.perf_counter()
    try:
        answer = _ask(oracle, bundle.images[order], num_classes)
    except BaseException:  # an interrupt: what went out is leaked all the same
        sent = _sent(oracle, before, len(order), returned=False)
        if ledger is not None and sent:
            try:
                ledger.record(endpoint, order[:sent])
            except LedgerError as err:
                log.error("%s", err)
        raise
    seconds = time.perf_counter() - started
    sent = _sent(oracle, before, len(order), answer.returned)
    fresh_left = None if ledger is None else len(fresh_before - set(order[:sent]))
    ledger_error = None
    if ledger is not None and sent:
        try:
            ledger.record(endpoint, order[:sent])
        except LedgerError as err:
            ledger_error = str(err)
            log.error("%s", err)
    if answer.labels is None:
        checks = tuple(CheckResult(n, Verdict.INCONCLUSIVE, tuple(order[:n])) for n in sizes)
    else:
        checks = _checks(bundle.labels, order, answer.labels, sizes)
    warnings = _warnings(select, ledger, reused, len(order), ledger_error)
    digest = bundle.manifest.get("tensors_sha256")
    return VerificationResult(
        verdict=checks[-1].verdict,
        checks=checks,
        indices=tuple(order),
        queries=max(oracle.queries - before, sent),
        seconds=seconds,
        seed=seed,
        select=select,
        endpoint_id=endpoint,
        oracle=_describe(oracle),
        reason=answer.reason,
        message=answer.message,
        reused=reused,
        fresh_left=fresh_left,
        ledger_path=None if ledger is None else str(ledger.path),
        ledger_error=ledger_error,
        warnings=warnings,
        bundle_sha256=digest if isinstance(digest, str) else None,
    )


def _sizes(ns: int | Iterable[int] | None, n: int, select: str) -> list[int]:
    if n == 0:
        raise VerifyError("the bundle holds no fingerprints; generate some first")
    asked = [] if ns is None else list(ns) if isinstance(ns, Iterable) else [ns]
    for value in asked:
        if type(value) is not int or not 1 <= value <= n:
            raise VerifyError(
                f"N_S must be an integer in [1, {n}] (the bundle holds {n} fingerprints), "
                f"not {value!r}"
            )
    if select == "all":
        return sorted({*asked, n})
    return sorted(set(asked)) or [min(DEFAULT_NS, n)]


def _check_labels(bundle: FingerprintSet, num_classes: int | None) -> None:
    low, high = int(bundle.labels.min()), int(bundle.labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        raise VerifyError(
            f"the bundle's expected labels span [{low}, {high}], outside the model's "
            f"{num_classes} classes: is this the bundle of this model?"
        )


def _draw(
    n: int, size: int, seed: int, select: str, ledger: Ledger | None, endpoint: str
) -> list[int]:
    permutation: list[int] = torch.randperm(
        n, generator=torch.Generator().manual_seed(seed)
    ).tolist()
    if select == "fresh" and ledger is not None:
        permutation = ledger.order(endpoint, permutation)
    return permutation if select == "all" else permutation[:size]


def _ask(oracle: LabelOracle, images: torch.Tensor, num_classes: int | None) -> _Answer:
    """The oracle's labels, checked; any failure becomes a reason, never an exception."""
    try:
        raw = oracle.labels(images)
    except OracleError as err:
        return _Answer(None, False, err.reason or "error", str(err) or type(err).__name__)
    except Exception as err:
        return _Answer(None, False, "error", f"the oracle raised {type(err).__name__}: {err}")
    try:
        return _Answer(_checked(raw, int(images.shape[0]), num_classes), True)
    except OracleError as err:
        return _Answer(None, True, err.reason, str(err))


def _checked(raw: object, n: int, num_classes: int | None) -> torch.Tensor:
    """``raw`` as int64 labels (n,), or :class:`OracleError`: the verifier does not trust the
    oracle's own checks."""
    if not isinstance(raw, torch.Tensor):
        raise OracleError("malformed", f"the answer is a {type(raw).__name__}, not a tensor")
    if raw.dtype == torch.bool or raw.is_floating_point() or raw.is_complex():
        raise OracleError("malformed", f"labels must be integers, got {raw.dtype}")
    if raw.dim() != 1:
        raise OracleError("malformed", f"labels must be one per image, got {tuple(raw.shape)}")
    if raw.numel() != n:
        raise OracleError("short", f"{raw.numel()} labels came back for {n} images")
    labels = raw.to(torch.int64)
    if n:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            bad = low if low < 0 else high
            raise OracleError("out_of_range", f"label {bad} is outside [0, {num_classes})")
    return labels


def _sent(oracle: LabelOracle, before: int, n: int, returned: bool) -> int:
    """How many of the draw's images reached the oracle: all when it answered, else what it
    counted (it counts a batch before sending it, so a batch that failed is counted)."""
    return n if returned else min(n, max(0, oracle.queries - before))


def _checks(
    expected: torch.Tensor, order: Sequence[int], labels: torch.Tensor, sizes: Sequence[int]
) -> tuple[CheckResult, ...]:
    wanted = expected[list(order)].tolist()
    got = labels.tolist()
    mismatches = [
        (pos, Mismatch(order[pos], e, g))
        for pos, (e, g) in enumerate(zip(wanted, got, strict=True))
        if e != g
    ]
    results = []
    for n in sizes:
        found = tuple(m for pos, m in mismatches if pos < n)
        verdict = Verdict.TAMPERED if found else Verdict.INTACT
        results.append(CheckResult(n, verdict, tuple(order[:n]), found))
    return tuple(results)


def _warnings(
    select: str, ledger: Ledger | None, reused: int, drawn: int, ledger_error: str | None
) -> tuple[str, ...]:
    notes = []
    if ledger is None and select == "fresh":
        notes.append("no ledger: fingerprints were drawn at random, earlier showings unknown")
    if reused and select == "fresh":
        notes.append(
            f"no fresh fingerprints were left for this endpoint: {reused} of {drawn} had been "
            "shown to it before (they may have leaked; generate more fingerprints)"
        )
    elif reused:
        notes.append(f"{reused} of {drawn} fingerprints had been shown to this endpoint before")
    if ledger_error is not None:
        notes.append(f"the ledger was not updated: {ledger_error}")
    return tuple(notes)


def _describe(oracle: LabelOracle) -> str:
    try:
        return oracle.describe()
    except Exception:  # a description is never worth failing a verification for
        return type(oracle).__name__
