"""The input contract of a model misentry did not build: what it expects, and the adapter that
lets misentry keep images as 8-bit pixels in [0, 1] everywhere outside the model.

A registry architecture normalizes in its first layer, so it takes pixels in [0, 1] as they are.
An imported model expects whatever its owner trained it on: values in 0-1 or 0-255, normalized
by some mean and std, channels first or last. :class:`InputContract` states that, and
:class:`ContractAdapter` applies it in front of the model, differentiably, so that every stage
(tampering, fingerprint search, verification) treats the imported model like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

INPUT_RANGES: dict[str, float] = {"0-1": 1.0, "0-255": 255.0}
"""The input ranges a model may expect, and the factor from pixels in [0, 1] to that range."""


@dataclass(frozen=True)
class InputContract:
    """What a model expects as input.

    Attributes:
        input_range: ``"0-1"`` or ``"0-255"``: the range of the values before normalization.
        mean: per-channel mean to subtract, in the units of ``input_range`` (None: none).
        std: per-channel std to divide by, in the units of ``input_range`` (None: none).
        channels_last: the model takes (N, H, W, C) rather than (N, C, H, W).
    """

    input_range: str = "0-1"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.input_range not in INPUT_RANGES:
            raise ValueError(
                f"input range {self.input_range!r}: choose one of {', '.join(INPUT_RANGES)}"
            )
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive; got {self.std}")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel each")

    @property
    def scale(self) -> float:
        return INPUT_RANGES[self.input_range]

    @property
    def is_identity(self) -> bool:
        """True when the model takes pixels in [0, 1], channels first, as they are."""
        return (
            self.input_range == "0-1"
            and self.mean is None
            and self.std is None
            and (not self.channels_last)
        )

    def check_channels(self, channels: int) -> None:
        """Refuse a mean or std whose length is not 1 or ``channels``."""
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, channels):
                raise ValueError(
                    f"--{name} has {len(values)} values; the input has {channels} channel(s): "
                    f"give 1 or {channels}"
                )

    def unit_normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std in units of pixels in [0, 1] (identity when the contract has none), one
        value per channel: what a registry architecture standing in for this model uses."""
        mean = self.mean or (0.0,)
        std = self.std or (self.scale,)
        mean = mean * channels if len(mean) == 1 else mean
        std = std * channels if len(std) == 1 else std
        return tuple(m / self.scale for m in mean), tuple(s / self.scale for s in std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (N, C, H, W), to what the model takes (differentiable)."""
        out = x * self.scale if self.scale != 1.0 else x
        if self.mean is not None:
            out = out - _per_channel(self.mean, out)
        if self.std is not None:
            out = out / _per_channel(self.std, out)
        return out.permute(0, 2, 3, 1) if self.channels_last else out

    def to_json(self) -> dict[str, Any]:
        return {
            "input_range": self.input_range,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "channels_last": self.channels_last,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputContract:
        return cls(
            input_range=str(data.get("input_range", "0-1")),
            mean=None if data.get("mean") is None else tuple(float(v) for v in data["mean"]),
            std=None if data.get("std") is None else tuple(float(v) for v in data["std"]),
            channels_last=bool(data.get("channels_last", False)),
        )


def _per_channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


class ContractAdapter(nn.Module):
    """``contract.encode`` in front of ``model``: takes pixels in [0, 1], (N, C, H, W).

    ``fixed_batch``: the model only runs on batches of exactly this size (a ``torch.export``
    program exported without a dynamic batch dimension); the adapter then runs it chunk by chunk,
    padding the last chunk, which is exact for a model in eval mode.

    ``fixed_mode``: the model has no train mode of its own (a ``torch.export`` program is traced
    in eval mode: its BatchNorm uses running statistics and its dropout is off); ``train()``
    then sets the adapter's flag only, so a fine-tune trains its parameters as traced.
    """

    def __init__(
        self,
        model: nn.Module,
        contract: InputContract,
        *,
        fixed_batch: int | None = None,
        fixed_mode: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.contract = contract
        self.fixed_batch = fixed_batch
        self.fixed_mode = fixed_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.contract.encode(x)
        if self.fixed_batch is None or z.shape[0] == self.fixed_batch:
            return self.model(z)  # type: ignore[no-any-return]
        return self._chunked(z, self.fixed_batch)

    def _chunked(self, z: torch.Tensor, size: int) -> torch.Tensor:
        if z.shape[0] == 0:  # still ask the model, for the output's shape
            return self.model(z.new_zeros(size, *z.shape[1:]))[:0]  # type: ignore[no-any-return]
        outs = []
        for start in range(0, z.shape[0], size):
            chunk = z[start : start + size]
            n = chunk.shape[0]
            if n < size:
                pad = chunk[:1].expand(size - n, *chunk.shape[1:])
                chunk = torch.cat([chunk, pad])
            outs.append(self.model(chunk)[:n])
        return torch.cat(outs)

    def train(self, mode: bool = True) -> ContractAdapter:
        self.training = mode
        if not self.fixed_mode:
            self.model.train(mode)
        return self
