"""Training a target: its record, and an id that depends on the recipe only."""

from __future__ import annotations

from pathlib import Path

from misentry.data import Pools
from misentry.models import (
    InputSpec,
    Record,
    TargetConfig,
    TrainConfig,
    default_path,
    evaluate,
    input_spec,
    load_model,
    save_record,
    target_record_stub,
)
from misentry.models.target import TARGET_RECIPES
from models.recordkit import as_json


def test_train_target_on_digits(tmp_path: Path, digits_record: Record, digits_pools: Pools) -> None:
    # TrainConfig(epochs=3) alone (batch 64: 45 steps) leaves LeNet-5 near chance on digits;
    # batch 16 gives 171 steps and about 90 % test accuracy in well under a second. The shared
    # ``digits_record`` is train_target of exactly this config.
    config = TargetConfig(dataset="digits", train=TrainConfig(epochs=3, batch_size=16))
    stub = target_record_stub(config)
    assert stub.tensors == {}
    record = digits_record
    assert record.record_id == stub.record_id
    assert record.kind == "target"
    assert record.architecture == "lenet5"
    assert record.params == stub.params
    assert 0.5 < record.metrics["test_accuracy"] <= 1.0
    sizes = digits_pools.sizes()
    assert record.metrics["pool_sizes"] == sizes
    assert record.metrics["steps"] == 3 * -(-sizes["owner_train"] // 16)

    path = save_record(record, default_path(tmp_path, stub))
    model, loaded = load_model(path)
    assert loaded.metrics == record.metrics
    test = evaluate(model, digits_pools["test"])
    assert test.accuracy == record.metrics["test_accuracy"]


def test_target_id_depends_on_the_recipe_not_on_how_it_is_given() -> None:
    implicit = TargetConfig(dataset="digits")
    explicit = TargetConfig(dataset="digits", arch="lenet5", train=TARGET_RECIPES["digits"])
    assert target_record_stub(implicit).record_id == target_record_stub(explicit).record_id
    others = [
        TargetConfig(dataset="digits", model_seed=1),
        TargetConfig(dataset="digits", data_seed=1),
        TargetConfig(dataset="digits", arch="mlp"),
        TargetConfig(dataset="digits", train=TrainConfig(epochs=3)),
        TargetConfig(dataset="mnist5k"),
    ]
    ids = {target_record_stub(c).record_id for c in [implicit, *others]}
    assert len(ids) == len(others) + 1
    stub_input = as_json(target_record_stub(implicit).input)
    assert InputSpec.from_json(stub_input) == input_spec("digits")
