"""Distillation on the digits target: students alternate between the target's and other
architectures, and learn hard labels."""

from __future__ import annotations

from misentry.tamper.families.distillation import Distillation
from misentry.tamper.replacement import candidate_architectures

from ..conftest import BY_SLUG, Instances, MakeContext


def test_distillation_students_alternate_between_own_and_other_architectures(
    make_ctx: MakeContext, built: Instances
) -> None:
    tampering = BY_SLUG["distillation"].tampering
    assert isinstance(tampering, Distillation)
    archs = [
        tampering.student_architecture(make_ctx(variant="distillation", index=i)) for i in range(10)
    ]
    ctx = make_ctx(variant="distillation")
    assert ctx.architecture in archs
    others = set(archs) - {ctx.architecture}
    assert others
    assert others <= set(candidate_architectures(ctx, tampering.params.max_cost_ratio))
    t = built("distillation", 0).tampered
    assert t.architecture == archs[0] == t.choices["student"]
    assert t.choices["labels"] == "hard"
    assert 0.0 <= t.objective["agreement"] <= 1.0
