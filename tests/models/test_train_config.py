"""The training configuration: augmentation, JSON round trip and the values it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from misentry.models import TrainConfig
from misentry.models.train import augment


def translate(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` moved down by dy and right by dx pixels, zeros where nothing moved in."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[..., max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
        ..., max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def test_translate_helper() -> None:
    img = torch.arange(1.0, 10.0).view(1, 3, 3)
    assert torch.equal(translate(img, 1, -1)[0], torch.tensor([[0, 0, 0], [2, 3, 0], [5, 6, 0.0]]))


@pytest.mark.parametrize("k", [1, 2])
def test_augment_shift_translates_with_zero_fill(k: int) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, 8, 8, generator=gen) * 0.9 + 0.1  # no zeros: fill is visible
    out = augment(x, TrainConfig(augment_shift=k), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    offsets = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)]
    used = []
    for i in range(x.shape[0]):
        matches = [o for o in offsets if torch.equal(out[i], translate(x[i], *o))]
        assert len(matches) == 1, f"image {i} is not a translation by at most {k} pixels"
        used.append(matches[0])
    assert set(used) == set(offsets), "every offset up to k occurs"
    again = augment(x, TrainConfig(augment_shift=k), torch.Generator().manual_seed(1))
    assert torch.equal(out, again), "the same generator state gives the same shifts"


def test_augment_flip_flips_about_half() -> None:
    x = torch.rand(1000, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = augment(x, TrainConfig(augment_flip=True), torch.Generator().manual_seed(3))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()), "each image is either flipped horizontally or kept"
    assert 400 < int(flipped.sum()) < 600


def test_no_augmentation_is_the_identity() -> None:
    x = torch.rand(5, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert torch.equal(augment(x, TrainConfig(), gen), x)
    assert torch.equal(gen.get_state(), state), "no augmentation draws no random numbers"


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(),
        TrainConfig(
            epochs=3,
            batch_size=7,
            optimizer="adam",
            lr=1e-3,
            momentum=0.5,
            weight_decay=0.0,
            schedule="constant",
            seed=11,
            max_steps=40,
            check_every=5,
            trainable=("fc3", "features.0"),
            freeze_bn=True,
            augment_shift=2,
            augment_flip=True,
        ),
    ],
    ids=["defaults", "everything-set"],
)
def test_config_json_round_trip(config: TrainConfig) -> None:
    data = config.to_json()
    text = json.dumps(data)
    assert TrainConfig.from_json(json.loads(text)) == config
    assert set(data) == set(TrainConfig.__dataclass_fields__)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": -0.1},
        {"check_every": -1},
        {"optimizer": "rmsprop"},
        {"schedule": "step"},
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_invalid_config_raises(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"max_steps": -1}, {"augment_shift": -1}], ids=str)
def test_negative_step_limit_or_shift_raises(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="TrainConfig"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]
