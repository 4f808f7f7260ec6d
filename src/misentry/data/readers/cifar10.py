"""Reader for CIFAR-10 in its official *binary* version (never the pickled Python version).

The folder ``cifar-10-batches-bin/`` from ``cifar-10-binary.tar.gz``, given either as the root or
as a subfolder of it::

    cifar-10-batches-bin/
      data_batch_1.bin ... data_batch_5.bin
      test_batch.bin
      batches.meta.txt        (optional: the class names, one per line)

Each file is a sequence of 3073-byte records: one label byte (0-9), then the 32x32 image as 1024
red, 1024 green and 1024 blue bytes, each plane row-major -- exactly the (3, 32, 32) layout. The
result is the five data batches then the test batch, ``uint8`` of shape (N, 3, 32, 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from misentry.data.images import DatasetLayoutError, ImageSet

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

FOLDER = "cifar-10-batches-bin"
FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
RECORD_BYTES = 1 + 3 * 32 * 32

_LAYOUT = (
    "Expected the official binary version:\n"
    f"  {FOLDER}/\n"
    "    data_batch_1.bin … data_batch_5.bin\n"
    "    test_batch.bin"
)


def read_cifar10(root: Path | str) -> ImageSet:
    """Read the five CIFAR-10 training batches then the test batch from the binary files.

    Raises :class:`DatasetLayoutError` if a batch file is missing and :class:`ValueError` if one
    is not a whole number of records or holds a label outside 0-9.
    """
    folder = _data_folder(Path(root).expanduser())
    paths = [folder / name for name in FILES]
    for path in paths:
        if not path.is_file():
            raise DatasetLayoutError(f"cifar10: no '{path.name}' under {folder}. {_LAYOUT}")
    records = np.concatenate([_read_records(path) for path in paths])
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return ImageSet.from_numpy(images, records[:, 0])


def cifar10_class_names(root: Path | str) -> list[str]:
    """The names in ``batches.meta.txt`` if the folder has one, else :data:`CIFAR10_CLASSES`."""
    meta = _data_folder(Path(root).expanduser()) / "batches.meta.txt"
    if not meta.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in meta.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if len(names) != len(CIFAR10_CLASSES):
        raise ValueError(f"cifar10: {meta} lists {len(names)} class names, expected 10")
    return names


def _data_folder(root: Path) -> Path:
    """``root`` itself when it holds the batches, else ``root/cifar-10-batches-bin`` if present."""
    nested = root / FOLDER
    if not (root / FILES[0]).is_file() and nested.is_dir():
        return nested
    return root


def _read_records(path: Path) -> NDArray[np.uint8]:
    """The (n, 3073) records of one batch file, validated."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % RECORD_BYTES:
        raise ValueError(
            f"cifar10: {path} is {data.size} bytes, not a whole number of {RECORD_BYTES}-byte "
            "records (1 label byte + 3072 pixel bytes); the file is truncated or not the binary "
            "version"
        )
    records = data.reshape(-1, RECORD_BYTES)
    bad = np.flatnonzero(records[:, 0] >= len(CIFAR10_CLASSES))
    if bad.size:
        raise ValueError(
            f"cifar10: {path} record {int(bad[0])} has label {int(records[bad[0], 0])}; "
            "labels must be 0-9 (is this CIFAR-100?)"
        )
    return records
