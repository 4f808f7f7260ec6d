"""Reader for MNIST in its original IDX format.

The four files from Yann LeCun's site (each either plain or gzipped with a ``.gz`` suffix), directly
in the root folder or in ``MNIST/raw/`` under it (the layout torchvision downloads to)::

    root/                              root/
      train-images-idx3-ubyte[.gz]       MNIST/raw/
      train-labels-idx1-ubyte[.gz]         train-images-idx3-ubyte[.gz]
      t10k-images-idx3-ubyte[.gz]          ...
      t10k-labels-idx1-ubyte[.gz]

An IDX file is a big-endian header -- the magic number ``0x00000803`` (unsigned bytes, 3 dims) for
images or ``0x00000801`` (unsigned bytes, 1 dim) for labels, then one ``uint32`` per dimension --
followed by the raw bytes. The result is train then t10k, ``uint8`` of shape (N, 1, 28, 28).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from misentry.data.images import DatasetLayoutError, ImageSet

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# (images, labels) per split, in the order they are concatenated.
_SPLITS = (
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
_FILES = tuple(name for pair in _SPLITS for name in pair)

_LAYOUT = (
    "Expected the four IDX files (plain or .gz), in the folder or in its MNIST/raw/:\n"
    "  train-images-idx3-ubyte[.gz]\n"
    "  train-labels-idx1-ubyte[.gz]\n"
    "  t10k-images-idx3-ubyte[.gz]\n"
    "  t10k-labels-idx1-ubyte[.gz]"
)


def read_mnist_idx(root: Path | str) -> ImageSet:
    """Read the MNIST train and t10k IDX files under ``root``: train first, then t10k.

    Raises :class:`DatasetLayoutError` if a file is missing and :class:`ValueError` if one is
    truncated, has the wrong magic number or disagrees with its partner on the image count.
    """
    folder = _data_folder(Path(root).expanduser())
    images: list[NDArray[np.uint8]] = []
    labels: list[NDArray[np.uint8]] = []
    for images_name, labels_name in _SPLITS:
        images_path = _locate(folder, images_name)
        labels_path = _locate(folder, labels_name)
        x = _read_idx(images_path, IMAGES_MAGIC)
        y = _read_idx(labels_path, LABELS_MAGIC)
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"mnist: {images_path} holds {x.shape[0]} images but {labels_path} holds "
                f"{y.shape[0]} labels"
            )
        images.append(x[:, None, :, :])
        labels.append(y)
    if images[0].shape[1:] != images[1].shape[1:]:
        raise ValueError(
            f"mnist: train images are {images[0].shape[2:]} but t10k images are "
            f"{images[1].shape[2:]} under {folder}"
        )
    return ImageSet.from_numpy(np.concatenate(images), np.concatenate(labels))


def _data_folder(root: Path) -> Path:
    """``root`` itself, or ``root/MNIST/raw`` when only that one holds IDX files."""
    raw = root / "MNIST" / "raw"
    if not _holds_any(root) and _holds_any(raw):
        return raw
    return root


def _holds_any(folder: Path) -> bool:
    return any((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in _FILES)


def _locate(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetLayoutError(f"mnist: no '{name}' (or '{name}.gz') under {folder}. {_LAYOUT}")


def _read_idx(path: Path, magic: int) -> NDArray[np.uint8]:
    """The unsigned-byte array stored in one IDX file, shaped by its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"mnist: {path} is not a readable gzip file ({error})") from error
    ndim = magic & 0xFF
    header_bytes = 4 * (1 + ndim)
    if len(raw) < 4:
        raise ValueError(f"mnist: {path} is truncated: {len(raw)} bytes, no IDX header")
    found = int(np.frombuffer(raw, dtype=">u4", count=1)[0])
    if found != magic:
        raise ValueError(
            f"mnist: {path} has magic number 0x{found:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}, unsigned bytes, {ndim} dims)"
        )
    if len(raw) < header_bytes:
        raise ValueError(f"mnist: {path} is truncated inside its IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header_bytes != expected:
        state = "truncated" if len(raw) - header_bytes < expected else "longer than its header says"
        raise ValueError(
            f"mnist: {path} is {state}: header {dims} needs {expected} data bytes, "
            f"found {len(raw) - header_bytes}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(dims)
