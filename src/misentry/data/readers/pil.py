"""Decoding one image file with Pillow, shared by the readers of image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def open_rgb(path: Path, dataset: str) -> Image.Image:
    """The image at ``path`` as RGB; a file Pillow cannot decode is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError as error:
        raise ValueError(f"{dataset}: cannot decode {path} ({error})") from error


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` (width, height), bilinear (antialiased when shrinking)."""
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def to_chw(image: Image.Image) -> NDArray[np.uint8]:
    """An RGB image as a uint8 (3, H, W) array."""
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
