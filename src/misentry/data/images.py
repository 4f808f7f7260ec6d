"""The in-memory image container every dataset, pool and reader returns.

Images are kept as 8-bit pixels, ``uint8`` of shape (N, C, H, W): everything outside a model lives
in pixel space (normalization is the model's first layer), so storing 8 bits loses nothing and
keeps large sets four times smaller than float32. :attr:`ImageSet.x` gives the float view in
[0, 1] that models take.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing files or has the wrong layout.

    The message names the folder, what was missing and the layout that was expected, so a user
    can fix the folder without reading the source.
    """


@dataclass(frozen=True)
class ImageSet:
    """Images as ``uint8`` (N, C, H, W) with ``int64`` labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet.images must be uint8 of shape (N, C, H, W); got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"ImageSet.labels must be int64 of shape ({self.images.shape[0]},); got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray) -> ImageSet:
        """Build from a uint8 (N, C, H, W) array and integer labels."""
        return cls(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.asarray(labels).astype(np.int64)),
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W)."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def x(self) -> torch.Tensor:
        """Float32 images in [0, 1]."""
        return to_unit(self.images)

    @property
    def y(self) -> torch.Tensor:
        return self.labels

    def subset(self, indices: torch.Tensor | np.ndarray) -> ImageSet:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ImageSet(self.images[idx], self.labels[idx])

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to the nearest uint8 pixels (the 8-bit lattice)."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
