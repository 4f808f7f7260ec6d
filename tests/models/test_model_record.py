"""Model records: a trained module saved as a record and rebuilt from it, exactly."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from misentry.models import (
    ARCHITECTURES,
    InputSpec,
    RecordError,
    TrainConfig,
    build_model,
    load_model,
    load_record,
    model_from_record,
    model_record,
    save_record,
)
from models.recordkit import (
    DIGITS,
    KINDS,
    assert_same_record,
    assert_tensors_equal,
    digits_model_record,
    perturbed,
    plain_record,
)


@pytest.mark.parametrize("kind", KINDS)
def test_model_record_round_trips_exactly(tmp_path: Path, kind: str) -> None:
    model = perturbed(build_model("lenet5", DIGITS, seed=2))
    record = digits_model_record(kind, model)
    assert_tensors_equal(record.tensors, model.state_dict())
    loaded = load_record(save_record(record, tmp_path / "rec"))
    assert_same_record(loaded, record)
    assert InputSpec.from_json(loaded.input or {}) == DIGITS
    assert TrainConfig.from_json(loaded.params["train"]) == TrainConfig(
        epochs=3, trainable=("fc3",)
    )


def test_model_record_input_field_round_trips_as_python_values(tmp_path: Path) -> None:
    record = digits_model_record(KINDS[0])
    loaded = load_record(save_record(record, tmp_path / "rec"))
    assert loaded.input == record.input


def test_record_copies_the_model_weights() -> None:
    model = build_model("lenet5", DIGITS)
    record = digits_model_record("target", model)
    before = {k: v.clone() for k, v in record.tensors.items()}
    with torch.no_grad():
        model.fc3.weight.add_(1.0)
    assert_tensors_equal(record.tensors, before)


EXTRA_MODULES = {"vision": "torchvision"}


def spec_for(arch: str) -> InputSpec:
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    if arch == "densenet121":  # downsamples by 32
        return InputSpec(3, 32, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return DIGITS


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_load_model_predicts_exactly_like_the_original(tmp_path: Path, arch: str) -> None:
    spec = spec_for(arch)
    model = perturbed(build_model(arch, spec, seed=3))
    record = model_record(
        model,
        kind="target",
        dataset="digits",
        architecture=arch,
        spec=spec,
        data_seed=0,
        model_seed=3,
        params={},
    )
    loaded, loaded_record = load_model(save_record(record, tmp_path / arch))
    assert loaded is not model
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded_record.record_id == record.record_id
    assert_tensors_equal(loaded.state_dict(), model.state_dict())
    x = torch.rand(16, *spec.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_model_from_a_record_without_a_model_is_refused() -> None:
    with pytest.raises(RecordError, match="holds no model"):
        model_from_record(plain_record("target"))


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_that_do_not_fit_are_refused(change: str) -> None:
    record = digits_model_record("target")
    tensors = dict(record.tensors)
    if change == "missing":
        del tensors["fc3.bias"]
    else:
        tensors["fc4.weight"] = torch.zeros(1)
    with pytest.raises(RecordError, match=rf"{change} \[.*'fc[34]\.(bias|weight)'") as e:
        model_from_record(replace(record, tensors=tensors))
    assert "lenet5" in str(e.value)


def test_weights_of_the_wrong_shape_are_refused() -> None:
    record = digits_model_record("target")
    tensors = {**record.tensors, "fc3.bias": torch.zeros(7)}
    with pytest.raises(RecordError, match=r"fc3\.bias"):
        model_from_record(replace(record, tensors=tensors))


def test_perturbed_helper_moves_every_tensor() -> None:
    model = build_model("resnet20", DIGITS, seed=3)
    before = copy.deepcopy(model.state_dict())
    after = perturbed(model).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)
