"""The control variant: an exact copy of the target, which must never raise an alarm."""

from __future__ import annotations

from dataclasses import dataclass

from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant


@dataclass(frozen=True)
class IdentityParams:
    """No parameters: the copy is exact."""


class Identity(Tampering):
    """An exact copy of the target (family ``identity``).

    The one variant that is never observable. A fingerprint method that flags it raises a false
    alarm, so the benchmark prints its detection rate in a row of its own; it must be 0.
    """

    family = "identity"
    malicious = False
    expect_observable = False

    def build(self, ctx: TamperContext) -> Tampered:
        return Tampered(model=ctx.copy_target(), objective={}, met=True)


VARIANTS: tuple[Variant, ...] = (
    Variant(
        "identity",
        "an exact copy of the target (control for false alarms)",
        Identity(IdentityParams()),
    ),
)
