"""A verdict with its error rate: how likely an untampered model is to give the mismatches seen.

A bundle declares a deployment tolerance (:mod:`misentry.fingerprint.tolerance`): how
differently the owner may serve the same weights (``exact`` < ``fp32`` < ``tf32`` < ``fp16`` <
``bf16``), and, per fingerprint, the ``flip_rate`` at which an untampered model served within
it changes that fingerprint's label. Label changes of different fingerprints are taken as
independent, so the number ``X`` of changes among the fingerprints a check sends is
Poisson-binomial, and a check that saw ``k`` mismatches has the **false-alarm probability**
``P(X >= k)``: the chance that the owner's own model, served within the tolerance, gives at
least as many.

A check with mismatches is TAMPERED only when that probability is below the limit (default
:data:`DEFAULT_MAX_FALSE_ALARM`), else INCONCLUSIVE with the reason :data:`FALSE_ALARM`: the
mismatches are real, but not evidence enough. Bundles made before tolerances existed carry no
rates: they are ``exact`` bundles whose rates are 0 (a deterministic model on the same stack
never changes a label), so a single mismatch is TAMPERED, as it always was.

>>> false_alarm_probability(torch.tensor([1e-30, 1e-30, 0.5]), 2)  # about 1e-30
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from misentry.fingerprint.bundle import BundleError, FingerprintSet
from misentry.models.stacks import LEVELS
from misentry.verify.result import CheckResult, Mismatch, Verdict

__all__ = [
    "DEFAULT_MAX_FALSE_ALARM",
    "FALSE_ALARM",
    "bundle_tolerance",
    "explain",
    "false_alarm_probability",
    "flip_rates",
    "format_probability",
    "judge",
]

DEFAULT_MAX_FALSE_ALARM = 1e-6
"""The default limit: a check with mismatches is TAMPERED only when an untampered model served
within the bundle's tolerance gives as many with a probability below this."""

FALSE_ALARM = "false_alarm"
"""The reason of a check that saw mismatches an untampered model gives too often."""

LEGACY_TOLERANCE = "exact"
"""The tolerance of a bundle that declares none (made before tolerances existed)."""


def bundle_tolerance(bundle: FingerprintSet) -> str:
    """The deployment tolerance ``bundle`` declares (``exact`` when it declares none), or
    :class:`BundleError` when its declaration is malformed."""
    entry = bundle.manifest.get("tolerance")
    if entry is None:
        return LEGACY_TOLERANCE
    name = entry.get("tolerance") if isinstance(entry, dict) else None
    if name not in LEVELS:
        raise BundleError(
            f"the bundle's tolerance entry names no tolerance of {', '.join(LEVELS)} "
            f"(tolerance.tolerance is {name!r}); the manifest is malformed: generate the "
            "bundle again with misentry fingerprint"
        )
    return str(name)


def flip_rates(bundle: FingerprintSet) -> torch.Tensor:
    """Each fingerprint's ``flip_rate`` (float64 (N,)): the probability that an untampered model
    served within the bundle's tolerance changes its label.

    A bundle with no tolerance entry is ``exact``: its missing rates are 0. A bundle with one
    must carry a number in [0, 1] for every fingerprint; anything else is a
    :class:`BundleError` (raised before anything is sent).
    """
    tolerance = bundle_tolerance(bundle)
    declared = "tolerance" in bundle.manifest
    samples = bundle.manifest.get("samples")
    if samples is None and not declared:
        return torch.zeros(len(bundle), dtype=torch.float64)
    if not isinstance(samples, list) or len(samples) != len(bundle):
        count = len(samples) if isinstance(samples, list) else type(samples).__name__
        raise BundleError(
            f"the bundle declares tolerance {tolerance} but its manifest's samples ({count}) "
            f"do not give one entry per fingerprint ({len(bundle)}); the manifest is malformed: "
            "generate the bundle again with misentry fingerprint"
        )
    rates = [_rate(j, sample, declared, tolerance) for j, sample in enumerate(samples)]
    return torch.tensor(rates, dtype=torch.float64)


def _rate(j: int, sample: Any, declared: bool, tolerance: str) -> float:
    value = sample.get("flip_rate") if isinstance(sample, dict) else None
    if value is None and not declared:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise BundleError(
        f"fingerprint {j} of the bundle (tolerance {tolerance}) has flip_rate {value!r}, not a "
        "number in [0, 1]; the manifest is malformed: generate the bundle again with "
        "misentry fingerprint"
    )


def false_alarm_probability(rates: torch.Tensor | Sequence[float], mismatches: int) -> float:
    """``P(X >= mismatches)`` for ``X`` the number of label changes among independent
    fingerprints that change with probabilities ``rates`` (Poisson-binomial; 1.0 for 0).

    Exact dynamic programming in float64 over the fingerprints, with ``X >= k`` an absorbing
    state: every term is a sum of non-negative products, so the upper tail keeps its relative
    accuracy down to the smallest float64 (rates of 1e-30 give about 1e-30, not 0 or the
    1e-16 noise of ``1 - P(X < k)``); a tail below about 1e-308 is 0.
    """
    p = torch.as_tensor(rates, dtype=torch.float64)
    if p.dim() != 1:
        raise ValueError(f"rates must be one per fingerprint (1-D), got shape {tuple(p.shape)}")
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("rates must be probabilities in [0, 1] (none NaN)")
    if type(mismatches) is not int or mismatches < 0:
        raise ValueError(f"mismatches must be a non-negative integer, not {mismatches!r}")
    k = mismatches
    if k == 0:
        return 1.0
    if k > p.numel():
        return 0.0
    # state[j] = P(j changes so far) for j < k; state[k] = P(k or more so far)
    state = torch.zeros(k + 1, dtype=torch.float64)
    state[0] = 1.0
    for rate in p.tolist():
        moved = state[:-1] * rate
        state[:-1] *= 1.0 - rate
        state[1:] += moved
    return min(1.0, float(state[k]))  # rounding may carry a sum of probabilities past 1


def judge(
    ns: int,
    indices: tuple[int, ...],
    mismatches: tuple[Mismatch, ...],
    rates: torch.Tensor,
    max_false_alarm: float,
) -> CheckResult:
    """The check of the first ``ns`` fingerprints (``indices``) that came back with
    ``mismatches``: INTACT without one; with some, TAMPERED when an untampered model gives as
    many with a probability below ``max_false_alarm`` (``rates``: the bundle's, by index),
    else INCONCLUSIVE with the reason :data:`FALSE_ALARM`."""
    if not mismatches:
        return CheckResult(ns, Verdict.INTACT, indices)
    false_alarm = false_alarm_probability(rates[list(indices)], len(mismatches))
    if false_alarm < max_false_alarm:
        return CheckResult(ns, Verdict.TAMPERED, indices, mismatches, false_alarm)
    return CheckResult(ns, Verdict.INCONCLUSIVE, indices, mismatches, false_alarm, FALSE_ALARM)


def explain(check: CheckResult, tolerance: str, max_false_alarm: float) -> str:
    """Why a check with mismatches is INCONCLUSIVE by :data:`FALSE_ALARM`, for a human."""
    k = len(check.mismatches)
    probability = format_probability(check.false_alarm or 0.0)
    return (
        f"{k} of {check.ns} fingerprints changed label, but an untampered model served within "
        f"tolerance {tolerance} gives {k} or more with probability {probability} (>= the "
        f"limit {max_false_alarm:g}): not enough evidence; check more fingerprints (--ns) or "
        "serve within the tolerance"
    )


def format_probability(p: float) -> str:
    """``p`` for a reader: two significant digits, in exponent form below 0.001."""
    if p == 0 or not math.isfinite(p):
        return f"{p:g}"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"
