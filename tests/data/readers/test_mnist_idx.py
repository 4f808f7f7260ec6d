"""The MNIST IDX reader, on tiny files written in the real on-disk format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from misentry.data.images import DatasetLayoutError
from misentry.data.readers import read_mnist_idx

RNG = np.random.default_rng(0)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(
    folder: Path, n_train: int = 5, n_test: int = 3, gz: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Write the four IDX files (those named in ``gz`` gzipped); return all images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for split, n in (("train", n_train), ("t10k", n_test)):
        x, y = _pixels(n, 28, 28), RNG.integers(0, 10, size=n, dtype=np.uint8)
        for name, payload in (
            (f"{split}-images-idx3-ubyte", _idx_bytes(0x803, x)),
            (f"{split}-labels-idx1-ubyte", _idx_bytes(0x801, y)),
        ):
            if name in gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def test_mnist_round_trips_train_then_t10k(tmp_path: Path) -> None:
    x, y = _write_mnist(tmp_path, n_train=5, n_test=3)
    data = read_mnist_idx(tmp_path)
    assert data.images.shape == (8, 1, 28, 28)
    assert data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    np.testing.assert_array_equal(data.images[:, 0].numpy(), x)
    np.testing.assert_array_equal(data.labels.numpy(), y)


def test_mnist_reads_gzipped_files_in_torchvision_layout(tmp_path: Path) -> None:
    gz = ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    x, y = _write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    assert (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    data = read_mnist_idx(str(tmp_path))
    np.testing.assert_array_equal(data.images[:, 0].numpy(), x)
    np.testing.assert_array_equal(data.labels.numpy(), y)


def test_mnist_missing_file_names_it_and_the_layout(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        read_mnist_idx(tmp_path)
    message = str(info.value)
    assert "'t10k-labels-idx1-ubyte'" in message
    assert str(tmp_path) in message
    assert "train-images-idx3-ubyte[.gz]" in message
    assert "MNIST/raw" in message


def test_mnist_empty_folder_raises_layout_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="train-images-idx3-ubyte"):
        read_mnist_idx(tmp_path)


def test_mnist_truncated_file_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte is truncated"):
        read_mnist_idx(tmp_path)


def test_mnist_truncated_gzip_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=("t10k-images-idx3-ubyte",))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz"):
        read_mnist_idx(tmp_path)


def test_mnist_wrong_magic_is_named(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    # A labels file where the images file should be.
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte has magic number 0x00000801"):
        read_mnist_idx(tmp_path)


def test_mnist_count_mismatch_is_an_error(tmp_path: Path) -> None:
    _write_mnist(tmp_path, n_train=5)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        _idx_bytes(0x801, np.zeros(4, dtype=np.uint8))
    )
    with pytest.raises(ValueError, match=r"5 images but .* 4 labels"):
        read_mnist_idx(tmp_path)
