"""RecordingOracle / RecordedOracle: record a live oracle's labels, save as JSON, replay them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from misentry.data import ImageSet
from misentry.models import build_model, input_spec
from misentry.models.oracle import LabelOracle, ModuleOracle, OracleError
from misentry.verify.recorded import RecordedOracle, RecordingOracle, image_key


class ShiftingOracle(LabelOracle):
    """Labels that change on every call (a nondeterministic model)."""

    def __init__(self) -> None:
        super().__init__(num_classes=10, batch_size=4)
        self.calls = 0

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((images.shape[0],), self.calls % 10, dtype=torch.int64)


@pytest.fixture(scope="module")
def digit_oracle() -> ModuleOracle:
    model = build_model("lenet5", input_spec("digits"), seed=3)
    return ModuleOracle(model, num_classes=10, batch_size=16)


@pytest.fixture
def digit_images(digits: ImageSet) -> torch.Tensor:
    return digits.images[:40]


def test_a_recording_replays_the_same_labels_from_a_file(
    tmp_path: Path, digit_oracle: ModuleOracle, digit_images: torch.Tensor
) -> None:
    recording = RecordingOracle(digit_oracle)
    live = recording.labels(digit_images)
    path = recording.save(tmp_path / "answers.json")
    replayed = RecordedOracle.load(path, batch_size=7)
    assert torch.equal(replayed.labels(digit_images), live)
    assert torch.equal(replayed.labels(digit_images.flip(0)), live.flip(0))
    assert torch.equal(recording.replay().labels(digit_images), live)
    assert replayed.num_classes == 10
    assert "module LeNet" in replayed.describe()
    assert recording.describe() == f"recording of {digit_oracle.describe()}"


def test_the_file_is_plain_json_keyed_by_the_images_sha256(
    tmp_path: Path, digit_oracle: ModuleOracle, digit_images: torch.Tensor
) -> None:
    recording = RecordingOracle(digit_oracle)
    labels = recording.labels(digit_images[:5])
    document = json.loads(recording.save(tmp_path / "answers.json").read_text())
    assert document["format"] == "misentry-oracle-recording"
    assert document["version"] == 1
    assert document["oracle"] == digit_oracle.describe()
    expected = {
        hashlib.sha256(image.numpy().tobytes()).hexdigest(): int(label)
        for image, label in zip(digit_images[:5], labels, strict=True)
    }
    assert document["entries"] == expected


def test_an_image_not_recorded_is_an_unrecorded_error(
    tmp_path: Path, digit_oracle: ModuleOracle, digit_images: torch.Tensor
) -> None:
    recording = RecordingOracle(digit_oracle)
    recording.labels(digit_images[:10])
    replayed = RecordedOracle.load(recording.save(tmp_path / "answers.json"))
    changed = digit_images[:10].clone()
    changed[3, 0, 0, 0] ^= 1  # one bit of one pixel
    with pytest.raises(OracleError, match="image 3 of the batch") as info:
        replayed.labels(changed)
    assert info.value.reason == "unrecorded"
    assert image_key(changed[3])[:16] in str(info.value)


def test_a_failed_query_is_passed_on_and_not_recorded(
    digit_oracle: ModuleOracle, digit_images: torch.Tensor
) -> None:
    inner = ModuleOracle(digit_oracle.model, num_classes=10, budget=5)
    recording = RecordingOracle(inner)
    with pytest.raises(OracleError) as info:
        recording.labels(digit_images[:6])
    assert info.value.reason == "budget"
    assert recording.entries == {}


def test_conflicting_answers_keep_the_first_and_are_counted(
    tmp_path: Path, digit_images: torch.Tensor
) -> None:
    recording = RecordingOracle(ShiftingOracle())
    first = recording.labels(digit_images[:4])
    recording.labels(digit_images[:4])
    assert recording.conflicts == 4
    path = recording.save(tmp_path / "answers.json")
    assert json.loads(path.read_text())["conflicts"] == 4
    assert torch.equal(RecordedOracle.load(path).labels(digit_images[:4]), first)


def test_the_key_is_of_the_image_content_not_its_memory_layout(digit_images: torch.Tensor) -> None:
    image = digit_images[0]
    strided = digit_images.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)[0]
    assert not strided.is_contiguous()
    assert image_key(strided) == image_key(image)
    assert image_key(digit_images[1]) != image_key(image)


def test_a_recorded_label_outside_the_classes_is_out_of_range(
    tmp_path: Path, digit_oracle: ModuleOracle, digit_images: torch.Tensor
) -> None:
    recording = RecordingOracle(digit_oracle)
    labels = recording.labels(digit_images)
    path = recording.save(tmp_path / "answers.json")
    top = int(labels.max())
    narrow = RecordedOracle.load(path, num_classes=top)
    with pytest.raises(OracleError) as info:
        narrow.labels(digit_images)
    assert info.value.reason == "out_of_range"


def _good_document() -> dict[str, Any]:
    return {
        "format": "misentry-oracle-recording",
        "version": 1,
        "oracle": "x",
        "num_classes": 10,
        "conflicts": 0,
        "entries": {"ab" * 32: 3},
    }


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"format": "something-else"}, "not an oracle recording"),
        ({"version": 2}, "version 2"),
        ({"num_classes": 0}, "num_classes"),
        ({"entries": [1, 2]}, "must map image sha256"),
        ({"entries": {"AB" * 32: 3}}, "bad entry"),
        ({"entries": {"ab" * 31: 3}}, "bad entry"),
        ({"entries": {"ab" * 32: True}}, "bad entry"),
        ({"entries": {"ab" * 32: 2.0}}, "bad entry"),
    ],
)
def test_a_file_that_is_not_a_recording_is_a_value_error(
    tmp_path: Path, change: dict[str, Any], text: str
) -> None:
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(_good_document()))
    assert RecordedOracle.load(path).entries == {"ab" * 32: 3}
    path.write_text(json.dumps({**_good_document(), **change}))
    with pytest.raises(ValueError, match=text) as info:
        RecordedOracle.load(path)
    assert str(path) in str(info.value)


def test_a_file_that_is_not_json_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "answers.json"
    path.write_bytes(b"\x80\x04\x95 not json")  # e.g. a pickle
    with pytest.raises(ValueError, match="not a JSON oracle recording"):
        RecordedOracle.load(path)
