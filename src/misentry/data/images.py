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
    """Images as ``uint8`` (N, C, H, W) with ``int64`` labels (N,).

    ``classes`` names the classes by label (``classes[k]`` is the name of label ``k``) where the
    source names them, as the user datasets read from a folder or a CSV manifest do; None where
    the labels are the only names. Subsets and pools keep it.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] | None = None

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
        if self.classes is not None and self.labels.numel():
            low, high = int(self.labels.min()), int(self.labels.max())
            if low < 0 or high >= len(self.classes):
                raise ValueError(
                    f"ImageSet: labels span {low}..{high} but {len(self.classes)} class names "
                    "are given; each label must index a name"
                )

    @classmethod
    def from_numpy(
        cls, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...] | None = None
    ) -> ImageSet:
        """Build from a uint8 (N, C, H, W) array, integer labels and optional class names."""
        return cls(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.asarray(labels).astype(np.int64)),
            classes,
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
        """The images at ``indices`` (in that order), with the same class names."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to the nearest uint8 pixels (the 8-bit lattice)."""
    return x.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
