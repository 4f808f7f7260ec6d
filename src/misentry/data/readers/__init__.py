"""Readers of the standard on-disk dataset formats, each returning an :class:`ImageSet`.

Every reader raises :class:`~misentry.data.images.DatasetLayoutError` naming the folder it searched,
the first missing file and the expected layout, so a wrong folder is fixed without the source.
``imagefolder`` reads the user's own images (class folders or a CSV manifest).
"""

from misentry.data.readers.cifar10 import CIFAR10_CLASSES, read_cifar10
from misentry.data.readers.gtsrb import read_gtsrb
from misentry.data.readers.imagefolder import read_csv_manifest, read_image_folder
from misentry.data.readers.imagenet import read_imagenet
from misentry.data.readers.mnist_idx import read_mnist_idx

__all__ = [
    "CIFAR10_CLASSES",
    "read_cifar10",
    "read_csv_manifest",
    "read_gtsrb",
    "read_image_folder",
    "read_imagenet",
    "read_mnist_idx",
]
