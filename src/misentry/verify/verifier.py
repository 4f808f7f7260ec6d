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
- ``TAMPERED`` only when the whole answer came back well-formed, at least one label differs,
  and an untampered model served within the bundle's tolerance gives that many changes with a
  probability below ``max_false_alarm`` (:mod:`misentry.verify.false_alarm`); with more
  probable changes the verdict is ``INCONCLUSIVE`` with the reason ``false_alarm``;
- ``INTACT`` only when the whole answer came back well-formed and every label matched.

Mistakes of the caller (an empty bundle, N_S outside ``[1, N]``, a bundle whose labels do not
fit the model's classes, a limit outside ``(0, 1]``, an unwritable ledger) raise
:class:`VerifyError` or :class:`~misentry.verify.ledger.LedgerError`, and a bundle with
malformed flip rates :class:`~misentry.fingerprint.bundle.BundleError`, before anything is sent.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from misentry.fingerprint.bundle import FingerprintSet
from misentry.models.oracle import LabelOracle, OracleError
from misentry.verify.false_alarm import (
    DEFAULT_MAX_FALSE_ALARM,
    FALSE_ALARM,
    bundle_tolerance,
    explain,
    flip_rates,
    judge,
)
from misentry.verify.ledger import Ledger, LedgerError
from misentry.verify.result import CheckResult, Mismatch, Verdict, VerificationResult

__all__ = [
    "DEFAULT_NS",
    "SELECTIONS",
    "CheckResult",
    "Mismatch",
    "Select",
    "Verdict",
    "VerificationResult",
    "VerifyError",
    "verify",
]

log = logging.getLogger(__name__)

Select = Literal["fresh", "random", "all"]
SELECTIONS: tuple[str, ...] = ("fresh", "random", "all")
DEFAULT_NS = 5


class VerifyError(ValueError):
    """The verification was asked for something impossible; nothing was sent."""


@dataclass(frozen=True)
class _Answer:
    labels: torch.Tensor | None
    returned: bool
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class _Draw:
    """The fingerprints one verification sends, and what the ledger knew of them before."""

    seed: int
    select: str
    endpoint: str
    order: list[int]
    reused: int
    fresh_before: set[int] | None  # None without a ledger


@dataclass(frozen=True)
class _Query:
    """How the query went: the checked answer, its wall time, the images that reached the
    oracle (``sent``) and the images it counted (``queries``)."""

    answer: _Answer
    seconds: float
    sent: int
    queries: int


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
    max_false_alarm: float = DEFAULT_MAX_FALSE_ALARM,
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
        max_false_alarm: a check with mismatches is TAMPERED only when an untampered model
            served within the bundle's tolerance gives as many with a probability below this,
            else INCONCLUSIVE (reason ``false_alarm``); in (0, 1].

    >>> result = verify(load_bundle("runs/fp"), ModuleOracle(model, num_classes=10), ns=(1, 5))
    >>> result.verdict, [c.verdict for c in result.checks]
    """
    if select not in SELECTIONS:
        raise VerifyError(f"select must be one of {', '.join(SELECTIONS)}, not {select!r}")
    sizes = _sizes(ns, len(bundle), select)
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**63):
        raise VerifyError(f"seed must be an integer in [0, 2**63), not {seed!r}")
    limit = max_false_alarm
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not 0 < limit <= 1:
        raise VerifyError(f"max_false_alarm must be a probability in (0, 1], not {limit!r}")
    limit, rates = float(limit), flip_rates(bundle)
    num_classes = num_classes if num_classes is not None else oracle.num_classes
    _check_labels(bundle, num_classes)
    endpoint = endpoint_id or _describe(oracle)
    if ledger is not None:
        _check_ledger(ledger, bundle)
    draw = _draw_for(len(bundle), sizes[-1], seed, select, ledger, endpoint)
    query = _query(oracle, bundle, draw, num_classes, ledger)
    ledger_error = None
    if ledger is not None and query.sent:
        ledger_error = _record(ledger, draw.endpoint, draw.order[: query.sent])
    if query.answer.labels is None:
        order = draw.order
        reason = query.answer.reason
        checks = tuple(
            CheckResult(n, Verdict.INCONCLUSIVE, tuple(order[:n]), reason=reason) for n in sizes
        )
    else:
        found = _mismatches(bundle.labels, draw.order, query.answer.labels)
        checks = tuple(judge(n, tuple(draw.order[:n]), found(n), rates, limit) for n in sizes)
    return _result(bundle, oracle, draw, query, checks, ledger, ledger_error, limit)


def _check_ledger(ledger: Ledger, bundle: FingerprintSet) -> None:
    if not ledger.matches(bundle):
        raise LedgerError(
            f"ledger {ledger.path} was opened for another bundle "
            f"({ledger.bundle_sha256[:16]}…); open it with this bundle"
        )
    ledger.check_writable()


def _draw_for(
    n: int, size: int, seed: int | None, select: str, ledger: Ledger | None, endpoint: str
) -> _Draw:
    """The draw (``seed`` from the OS when None) and the ledger's knowledge of it."""
    seed = secrets.randbits(63) if seed is None else seed
    order = _draw(n, size, seed, select, ledger, endpoint)
    shown_before = ledger.shown(endpoint) if ledger is not None else {}
    reused = sum(1 for i in order if i in shown_before)
    fresh_before = None if ledger is None else set(ledger.fresh(endpoint))
    return _Draw(seed, select, endpoint, order, reused, fresh_before)


def _query(
    oracle: LabelOracle,
    bundle: FingerprintSet,
    draw: _Draw,
    num_classes: int | None,
    ledger: Ledger | None,
) -> _Query:
    """Send the draw's images; on an interrupt, record what went out before re-raising."""
    order = draw.order
    before = oracle.queries
    started = time.perf_counter()
    try:
        answer = _ask(oracle, bundle.images[order], num_classes)
    except BaseException:  # an interrupt: what went out is leaked all the same
        sent = _sent(oracle, before, len(order), returned=False)
        if ledger is not None and sent:
            try:
                ledger.record(draw.endpoint, order[:sent])
            except LedgerError as err:
                log.error("%s", err)
        raise
    seconds = time.perf_counter() - started
    sent = _sent(oracle, before, len(order), answer.returned)
    return _Query(answer, seconds, sent, max(oracle.queries - before, sent))


def _record(ledger: Ledger, endpoint: str, shown: list[int]) -> str | None:
    """Record the showings; what went wrong doing so, or None."""
    try:
        ledger.record(endpoint, shown)
    except LedgerError as err:
        log.error("%s", err)
        return str(err)
    return None


def _result(
    bundle: FingerprintSet,
    oracle: LabelOracle,
    draw: _Draw,
    query: _Query,
    checks: tuple[CheckResult, ...],
    ledger: Ledger | None,
    ledger_error: str | None,
    max_false_alarm: float,
) -> VerificationResult:
    order = draw.order
    fresh_left = None
    if draw.fresh_before is not None:
        fresh_left = len(draw.fresh_before - set(order[: query.sent]))
    digest = bundle.manifest.get("tensors_sha256")
    tolerance = bundle_tolerance(bundle)
    reason, message = query.answer.reason, query.answer.message
    if reason is None and checks[-1].reason == FALSE_ALARM:
        reason, message = FALSE_ALARM, explain(checks[-1], tolerance, max_false_alarm)
    return VerificationResult(
        verdict=checks[-1].verdict,
        checks=checks,
        indices=tuple(order),
        queries=query.queries,
        seconds=query.seconds,
        seed=draw.seed,
        select=draw.select,
        endpoint_id=draw.endpoint,
        oracle=_describe(oracle),
        reason=reason,
        message=message,
        reused=draw.reused,
        fresh_left=fresh_left,
        ledger_path=None if ledger is None else str(ledger.path),
        ledger_error=ledger_error,
        warnings=_warnings(draw.select, ledger, draw.reused, len(order), ledger_error),
        bundle_sha256=digest if isinstance(digest, str) else None,
        tolerance=tolerance,
        max_false_alarm=max_false_alarm,
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


def _mismatches(
    expected: torch.Tensor, order: Sequence[int], labels: torch.Tensor
) -> Callable[[int], tuple[Mismatch, ...]]:
    """The mismatches among the first n fingerprints of the draw, as a function of n."""
    wanted = expected[list(order)].tolist()
    got = labels.tolist()
    mismatches = [
        (pos, Mismatch(order[pos], e, g))
        for pos, (e, g) in enumerate(zip(wanted, got, strict=True))
        if e != g
    ]
    return lambda n: tuple(m for pos, m in mismatches if pos < n)


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
