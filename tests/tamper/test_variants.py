"""Every registered variant, built through the builder on digits: objective met, observable
(except the identity control), and its record round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from misentry.models import load_model, model_from_record, predict, save_record
from misentry.tamper.builder import BuildConfig, Workspace, build_instance
from misentry.tamper.registry import ORDER, VARIANTS, get_variant, select


def test_the_registry_holds_every_table_variant_in_order() -> None:
    assert list(VARIANTS) == list(ORDER)
    assert len(VARIANTS) == 25
    for slug, variant in VARIANTS.items():
        assert variant.slug == slug
        assert variant.description
        assert variant.family
        variant.tampering.params_json()  # JSON-ready parameters


def test_an_unknown_slug_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="ft_all_lr1e-4"):
        get_variant("ft_everything")


def test_select_keeps_table_order() -> None:
    assert [v.slug for v in select("identity, unlearning")] == ["unlearning", "identity"]
    assert len(select("all")) == len(VARIANTS)


@pytest.mark.slow
@pytest.mark.parametrize("slug", ORDER)
def test_every_variant_meets_its_objective_and_is_observable(
    slug: str, workspace: Workspace, tmp_path: Path
) -> None:
    variant = get_variant(slug)
    record = build_instance(workspace, variant, 0, BuildConfig())
    m = record.metrics
    assert m["objective_met"] or variant.tampering.best_effort, (slug, m["objective"])
    if variant.tampering.expect_observable:
        assert m["observable"], slug
        assert m["attempt"] == 0 or m["unobservable_attempts"]
    else:
        assert not m["observable"]
    # the target itself was not touched
    x = workspace.pools["test"].x
    reference = model_from_record(workspace.record)
    assert torch.equal(predict(workspace.target, x), predict(reference, x))
    # the record round-trips to a model with the same labels
    save_record(record, tmp_path / slug)
    model, loaded = load_model(tmp_path / slug)
    assert loaded.record_id == record.record_id
    assert torch.equal(predict(model, x), predict(model_from_record(record), x))
