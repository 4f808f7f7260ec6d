"""Importing a model misentry did not build: every format gives the original's labels, and a
model that does not fit the data is refused with the reason."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from misentry.data import Pools
from misentry.models import (
    ONNX_IMPORT_UNSUPPORTED,
    ImportRequest,
    InputContract,
    TrainConfig,
    fit,
    import_target,
    last_linear,
    load_model,
    model_from_record,
    model_record,
    predict,
    save_record,
)
from misentry.models.record import RecordError
from misentry.models.spec import InputSpec
from user_model.saved import CONTRACT, SavedModel


def request(saved: SavedModel, fmt: str, **changes: object) -> ImportRequest:
    base: dict[str, object] = {"format": fmt, "contract": CONTRACT, "dataset": "digits"}
    if fmt == "module":
        base.update(factory=saved.factory, weights=saved.safetensors)
    else:
        base["source"] = getattr(saved, fmt)
    base.update(changes)
    return ImportRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["module", "torchscript", "exported"])
def test_every_format_gives_the_originals_labels_after_a_round_trip(
    user_model: SavedModel, digits_pools: Pools, tmp_path: Path, fmt: str
) -> None:
    record = import_target(request(user_model, fmt))
    save_record(record, tmp_path / "target")
    model, loaded = load_model(tmp_path / "target")
    assert loaded.architecture == f"imported:{fmt}"
    assert loaded.params["import"]["contract"] == CONTRACT.to_json()
    labels = predict(model, digits_pools["test"].x)
    assert torch.equal(labels, user_model.test_labels)
    accuracy = float((labels == digits_pools["test"].y).float().mean())
    assert loaded.metrics["test_accuracy"] == pytest.approx(accuracy)


def test_a_plain_state_dict_imports_like_safetensors(
    user_model: SavedModel, digits_pools: Pools
) -> None:
    a = import_target(request(user_model, "module"))
    b = import_target(request(user_model, "module", weights=user_model.state_dict))
    assert a.metrics["test_accuracy"] == b.metrics["test_accuracy"]
    assert a.params["import"]["weights_sha256"] != b.params["import"]["weights_sha256"]


@pytest.mark.parametrize("fmt", ["module", "torchscript", "exported"])
def test_a_fine_tuned_copy_trains_and_round_trips(
    user_model: SavedModel, digits_pools: Pools, tmp_path: Path, fmt: str
) -> None:
    record = import_target(request(user_model, fmt))
    save_record(record, tmp_path / "target")
    target, _ = load_model(tmp_path / "target")
    tampered = copy.deepcopy(target)
    head, _ = last_linear(tampered)
    assert head == "model.classifier.out"
    config = TrainConfig(epochs=2, optimizer="adam", lr=1e-2, trainable=(head,))
    fit(tampered, digits_pools["attacker"], config)
    after = predict(tampered, digits_pools["test"].x)
    assert not torch.equal(after, user_model.test_labels)  # the head moved
    assert torch.equal(predict(target, digits_pools["test"].x), user_model.test_labels)
    copy_record = model_record(
        tampered,
        kind="tampered",
        dataset=record.dataset,
        architecture=record.architecture,
        spec=InputSpec.from_json(record.input or {}),
        data_seed=0,
        model_seed=0,
        params={},
        parent=record.record_id,
    )
    save_record(copy_record, tmp_path / "tampered")
    reloaded, _ = load_model(tmp_path / "tampered")
    assert torch.equal(predict(reloaded, digits_pools["test"].x), after)


def test_onnx_is_refused_with_the_way_round(user_model: SavedModel) -> None:
    with pytest.raises(ValueError, match="torchvision") as err:
        import_target(request(user_model, "onnx", source=user_model.torchscript))
    assert str(err.value) == ONNX_IMPORT_UNSUPPORTED


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"contract": InputContract("0-255", (77.0,), (96.0,), channels_last=True)},
            "fails on one input of the declared shape",
        ),
        ({"args": {"width": 16}}, "weights do not fit"),
        ({"dataset": "imagefolder"}, "needs the model's input size"),
        ({"dataset": "digits", "size": (28, 28)}, "has images of 8x8"),
    ],
)
def test_a_model_that_does_not_fit_is_refused_saying_why(
    user_model: SavedModel, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        import_target(request(user_model, "module", **changes))


def test_a_model_with_another_class_count_is_refused(
    user_model: SavedModel, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    from user_model.usernet import make_net

    save_file(make_net(classes=3).state_dict(), str(tmp_path / "three.safetensors"))
    three = request(
        user_model, "module", args={"classes": 3}, weights=tmp_path / "three.safetensors"
    )
    with pytest.raises(ValueError, match="3 outputs but the data has 10 classes"):
        import_target(three)


def test_a_changed_factory_source_is_refused_on_load(
    user_model: SavedModel, tmp_path: Path
) -> None:
    source = tmp_path / "usernet.py"
    source.write_text(Path(user_model.factory.rpartition(":")[0]).read_text())
    record = import_target(request(user_model, "module", factory=f"{source}:make_net"))
    save_record(record, tmp_path / "target")
    source.write_text(source.read_text() + "\n# edited\n")
    with pytest.raises(RecordError, match="changed since the model was imported"):
        load_model(tmp_path / "target")


def test_the_contract_maps_pixels_to_what_the_model_takes() -> None:
    x = torch.rand(2, 3, 4, 5)
    contract = InputContract("0-255", (120.0, 110.0, 100.0), (60.0, 50.0, 40.0), True)
    out = contract.encode(x)
    assert out.shape == (2, 4, 5, 3)
    expected = (x[:, 1] * 255 - 110.0) / 50.0
    assert torch.allclose(out[..., 1], expected)
    mean, std = contract.unit_normalization(3)
    assert mean[0] == pytest.approx(120 / 255)
    assert std[2] == pytest.approx(40 / 255)
    assert InputContract.from_json(contract.to_json()) == contract
    assert InputContract().is_identity
    assert not contract.is_identity


def test_a_torchscript_fine_tune_with_frozen_batchnorm_keeps_its_statistics(
    user_model: SavedModel, digits_pools: Pools
) -> None:
    record = import_target(request(user_model, "torchscript"))
    model = model_from_record(record)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    head, _ = last_linear(model)
    config = TrainConfig(epochs=1, optimizer="adam", lr=1e-2, trainable=(head,), freeze_bn=True)
    fit(model, digits_pools["attacker"], config)
    after = model.state_dict()
    assert before
    assert all(torch.equal(after[k], v) for k, v in before.items())
