"""Decoding one image file with Pillow, shared by the readers of image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for a file it cannot decode (corrupt, truncated, not an image, too big)."""


def open_image(path: Path, dataset: str, mode: str = "RGB") -> Image.Image:
    """The image at ``path`` converted to ``mode`` (``"RGB"`` or ``"L"``, grey by ITU-R 601-2
    luma); a file Pillow cannot decode is a ValueError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except DECODE_ERRORS as error:
        raise ValueError(
            f"{dataset}: cannot decode {path} ({error}); the file is corrupt or not an image: "
            "replace or remove it"
        ) from error


def open_rgb(path: Path, dataset: str) -> Image.Image:
    """The image at ``path`` as RGB; a file Pillow cannot decode is a ValueError naming it."""
    return open_image(path, dataset, "RGB")


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at ``size`` (width, height), bilinear (antialiased when shrinking)."""
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def resize_center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """``image`` scaled by ``max(height / h, width / w)`` and centre-cropped to ``height`` x
    ``width``: torchvision's ``Resize`` then ``CenterCrop``.

    The side that binds gets its target length exactly and the other is truncated like
    torchvision's ``Resize(int)`` (``int(target * long / short)``, never below its target);
    the crop offsets are ``round((resized - target) / 2)``, rounded half to even like
    torchvision's ``CenterCrop``. Resampling is bilinear, antialiased when shrinking.
    """
    w, h = image.size
    if height * w >= width * h:  # height / h >= width / w: the height binds
        new_size = (max(width, int(height * w / h)), height)
    else:
        new_size = (width, max(height, int(width * h / w)))
    image = resized(image, new_size)
    left = round((new_size[0] - width) / 2)
    top = round((new_size[1] - height) / 2)
    if new_size == (width, height):
        return image
    return image.crop((left, top, left + width, top + height))


def to_chw(image: Image.Image) -> NDArray[np.uint8]:
    """An RGB or L image as a uint8 (C, H, W) array (C = 3 or 1)."""
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
