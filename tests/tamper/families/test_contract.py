"""The :class:`~misentry.tamper.base.Tampering` contract, family by family, for the benign
families whose modules share no other piece: compression (pruning, quantization), fine-tuning and
retraining, unlearning and online learning. Each builds from the target without touching it, meets
its objective, is deterministic for one seed and differs between instances.

(The trigger families are held to it in ``test_backdoor.py``, the poisoning families in
``tests/tamper/test_poison.py`` and the replacement families in
``tests/tamper/test_replacement.py``, next to the pieces they share.)
"""

from __future__ import annotations

import json

import pytest

from misentry.tamper.base import Variant
from misentry.tamper.families import (
    fine_tuning,
    online_learning,
    pruning,
    quantization,
    retraining,
    unlearning,
)
from misentry.tamper.families.online_learning import OnlineLearning
from misentry.tamper.families.unlearning import Unlearning

from ..conftest import BY_SLUG, Instances, MakeContext, same, same_weights, snapshot

COMPRESSION: tuple[Variant, ...] = pruning.VARIANTS + quantization.VARIANTS
TUNING: tuple[Variant, ...] = fine_tuning.VARIANTS + retraining.VARIANTS
LEARNING: tuple[Variant, ...] = unlearning.VARIANTS + online_learning.VARIANTS


def slugs(variants: tuple[Variant, ...]) -> list[str]:
    return [v.slug for v in variants]


# --- compression ------------------------------------------------------------------------------


def test_compression_variant_slugs() -> None:
    assert slugs(COMPRESSION) == ["pruning", "quantization"]
    assert [v.family for v in COMPRESSION] == ["pruning", "quantization"]
    assert all(not v.malicious for v in COMPRESSION)
    for v in COMPRESSION:
        json.dumps(v.tampering.params_json())


@pytest.mark.parametrize("slug", slugs(COMPRESSION))
def test_compression_builds_from_target_without_touching_it(
    make_ctx: MakeContext, slug: str
) -> None:
    ctx = make_ctx(variant=slug)
    before = snapshot(ctx.target)
    tampered = BY_SLUG[slug].tampering.build(ctx)
    assert same(snapshot(ctx.target), before)
    assert not same(snapshot(tampered.model), before)
    assert not tampered.model.training
    assert tampered.met
    assert tampered.extensions == 0
    objective = tampered.objective
    assert {"accuracy_drop", "check_accuracy", "target_check_accuracy"} <= objective.keys()
    assert objective["accuracy_drop"] == pytest.approx(
        objective["target_check_accuracy"] - objective["check_accuracy"]
    )
    json.dumps(tampered.choices)


@pytest.mark.parametrize("slug", slugs(COMPRESSION))
def test_compression_deterministic_per_seed_and_distinct_per_index(
    make_ctx: MakeContext, built: Instances, slug: str
) -> None:
    first = built(slug, 0).tampered
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    assert same(snapshot(first.model), snapshot(again.model))
    assert first.choices == again.choices
    assert first.objective == again.objective
    # Quantization draws from a 10-cell grid, so two instances may share a cell: look for the
    # first index with other choices; its weights must differ too.
    for index in range(1, 12):
        other = built(slug, index).tampered
        if other.choices != first.choices:
            break
    assert other.choices != first.choices
    assert not same(snapshot(first.model), snapshot(other.model))


# --- fine-tuning and retraining ---------------------------------------------------------------


def test_tuning_variant_slugs() -> None:
    assert slugs(TUNING) == [
        "ft_last_lr1e-3",
        "ft_last_lr1e-4",
        "ft_last_lr1e-5",
        "ft_all_lr1e-3",
        "ft_all_lr1e-4",
        "ft_all_lr1e-5",
        "retrain_last",
        "retrain_all",
    ]
    assert all(not v.malicious for v in TUNING)
    assert {v.family for v in TUNING} == {"fine_tuning", "retraining"}
    for v in TUNING:
        json.dumps(v.tampering.params_json())


@pytest.mark.parametrize("slug", slugs(TUNING))
def test_tuning_builds_from_target_without_touching_it(make_ctx: MakeContext, slug: str) -> None:
    ctx = make_ctx(variant=slug)
    before = snapshot(ctx.target)
    tampered = BY_SLUG[slug].tampering.build(ctx)
    assert same(snapshot(ctx.target), before)
    assert not same(snapshot(tampered.model), before)
    assert not tampered.model.training
    assert tampered.met
    assert tampered.epochs >= 1
    assert tampered.steps >= 1
    assert tampered.extensions == 0
    assert {"check_accuracy", "target_check_accuracy"} <= tampered.objective.keys()
    assert all(isinstance(v, float) for v in tampered.objective.values())
    json.dumps(tampered.choices)


@pytest.mark.parametrize("slug", slugs(TUNING))
def test_tuning_deterministic_per_seed_and_distinct_per_index(
    make_ctx: MakeContext, built: Instances, slug: str
) -> None:
    first = built(slug, 0).tampered
    again = BY_SLUG[slug].tampering.build(make_ctx(variant=slug, index=0))
    other = built(slug, 1).tampered
    assert same(snapshot(first.model), snapshot(again.model))
    assert first.objective == again.objective
    assert first.steps == again.steps
    assert not same(snapshot(first.model), snapshot(other.model))


# --- unlearning and online learning -----------------------------------------------------------


def test_variants_are_the_two_benign_learning_families() -> None:
    assert slugs(LEARNING) == ["unlearning", "online_learning"]
    assert isinstance(BY_SLUG["unlearning"].tampering, Unlearning)
    assert isinstance(BY_SLUG["online_learning"].tampering, OnlineLearning)
    for v in LEARNING:
        assert isinstance(v, Variant)
        assert not v.malicious
        assert v.description
        assert v.tampering.max_extensions > 0
        v.tampering.params_json()


@pytest.mark.parametrize("slug", slugs(LEARNING))
def test_learning_common_properties(slug: str, make_ctx: MakeContext, built: Instances) -> None:
    ctx = make_ctx(variant=slug, index=0)
    before = snapshot(ctx.target)
    first = BY_SLUG[slug].tampering.build(ctx)
    # the target is untouched
    assert same(snapshot(ctx.target), before)
    # the objective is met and the instance differs from the target
    assert first.met, first.objective
    assert not same_weights(first.model, ctx.target)
    assert not first.model.training
    # deterministic for one seed
    again = built(slug, 0).tampered
    assert same_weights(first.model, again.model)
    assert first.choices == again.choices
    assert first.steps == again.steps
    # another instance makes its own choices
    other = built(slug, 1).tampered
    assert other.choices != first.choices or not same_weights(other.model, first.model)
    assert all(isinstance(v, float) for v in first.objective.values())


@pytest.mark.parametrize("slug", slugs(LEARNING))
def test_instances_learn_or_forget_different_samples(built: Instances, slug: str) -> None:
    picks = [built(slug, i).tampered.choices["sample_index"] for i in range(5)]
    assert len(set(picks)) == 5
