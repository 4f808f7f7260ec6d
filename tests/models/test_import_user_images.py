"""Importing a model on the user's own images: an image folder of PNG and JPEG files, cut into
the pools at the model's input size, with the class names kept in the record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from misentry.data import get_dataset
from misentry.models import (
    ImportRequest,
    InputContract,
    TargetConfig,
    TrainConfig,
    import_target,
    load_model,
    predict,
    save_record,
    train_target,
)

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of 16 images each, one colour channel brighter per class, in two sizes and
    two formats."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(16):
            size = (20, 14) if i % 2 else (12, 18)
            pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., label] += 160
            suffix = "png" if i % 3 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i:02d}.{suffix}")
    return root


class ChannelMeans(nn.Module):
    """A user's model: the per-channel means of a 0-255, channels-last input, times a weight."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3) / 255.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(1, 2)))


def test_a_model_imports_on_an_image_folder_with_its_class_names(
    photos: Path, tmp_path: Path
) -> None:
    program = tmp_path / "means.ts"
    torch.jit.save(torch.jit.script(ChannelMeans()), str(program))
    record = import_target(
        ImportRequest(
            format="torchscript",
            source=program,
            contract=InputContract(input_range="0-255", channels_last=True),
            dataset="imagefolder",
            root=photos,
            size=(10, 10),
        )
    )
    assert record.dataset == "imagefolder:3x10x10"
    assert record.params["classes"] == list(CLASSES)
    assert record.metrics["test_accuracy"] == 1.0  # the brighter channel is the class
    save_record(record, tmp_path / "target")
    model, _ = load_model(tmp_path / "target")
    test = get_dataset(record.dataset).pools(0, photos)["test"]
    assert torch.equal(predict(model, test.x), test.y)


def test_a_registry_architecture_trains_on_an_image_folder(photos: Path) -> None:
    config = TargetConfig(
        dataset="imagefolder:3x10x10", arch="mlp", train=TrainConfig(epochs=2, batch_size=8)
    )
    record = train_target(config, photos)
    assert record.input is not None
    assert record.input["num_classes"] == len(CLASSES)
    assert record.metrics["test_accuracy"] > 0.9  # one channel is brighter per class: easy
