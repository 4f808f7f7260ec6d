"""What an architecture must adapt to: input channels and size, class count, normalization."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """Input shape (C, H, W), number of classes and the per-channel normalization constants."""

    channels: int
    height: int
    width: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"InputSpec: mean and std need {self.channels} values (one per channel); "
                f"got mean={self.mean}, std={self.std}"
            )
        if min(self.std) <= 0:
            raise ValueError(f"InputSpec: std must be positive; got {self.std}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            channels=int(data["channels"]),
            height=int(data["height"]),
            width=int(data["width"]),
            num_classes=int(data["num_classes"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
        )


class Normalize(nn.Module):
    """The first layer of every model: ``(x - mean) / std`` per channel, for x in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def flat_features(features: nn.Module, spec: InputSpec) -> int:
    """Number of features ``features`` gives for one input of ``spec``'s shape."""
    with torch.no_grad():
        was_training = features.training
        features.eval()
        out = features(torch.zeros(1, *spec.shape))
        features.train(was_training)
    return int(out.flatten(1).shape[1])
