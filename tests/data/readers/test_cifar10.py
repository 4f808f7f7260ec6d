"""The CIFAR-10 binary reader, on tiny files written in the real on-disk format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from misentry.data.images import DatasetLayoutError
from misentry.data.readers import CIFAR10_CLASSES, read_cifar10
from misentry.data.readers.cifar10 import cifar10_class_names

RNG = np.random.default_rng(0)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


CIFAR_FILES = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]


def _write_cifar(folder: Path, per_file: int = 2) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for name in CIFAR_FILES:
        x = _pixels(per_file, 3, 32, 32)
        y = RNG.integers(0, 10, size=per_file, dtype=np.uint8)
        records = np.concatenate([y[:, None], x.reshape(per_file, -1)], axis=1)
        (folder / name).write_bytes(records.tobytes())
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def test_cifar10_round_trips_data_batches_then_test(tmp_path: Path) -> None:
    x, y = _write_cifar(tmp_path, per_file=2)
    data = read_cifar10(tmp_path)
    assert data.images.shape == (12, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    np.testing.assert_array_equal(data.images.numpy(), x)
    np.testing.assert_array_equal(data.labels.numpy(), y)


def test_cifar10_record_layout_is_label_then_rgb_planes_row_major(tmp_path: Path) -> None:
    _write_cifar(tmp_path, per_file=1)
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 0 * 32 + 1] = 11  # red, row 0, column 1
    record[1 + 1 * 1024 + 2 * 32 + 5] = 22  # green, row 2, column 5
    record[1 + 2 * 1024 + 31 * 32 + 0] = 33  # blue, row 31, column 0
    (tmp_path / "test_batch.bin").write_bytes(record.tobytes())
    last = read_cifar10(tmp_path)
    image = last.images[-1]
    assert int(last.labels[-1]) == 7
    assert (int(image[0, 0, 1]), int(image[1, 2, 5]), int(image[2, 31, 0])) == (11, 22, 33)
    assert int(image.sum()) == 11 + 22 + 33


def test_cifar10_accepts_the_folder_above_cifar_10_batches_bin(tmp_path: Path) -> None:
    x, _ = _write_cifar(tmp_path / "cifar-10-batches-bin")
    np.testing.assert_array_equal(read_cifar10(tmp_path).images.numpy(), x)


def test_cifar10_missing_file_names_it_and_the_layout(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetLayoutError) as info:
        read_cifar10(tmp_path)
    message = str(info.value)
    assert "'data_batch_3.bin'" in message
    assert str(tmp_path) in message
    assert "cifar-10-batches-bin/" in message
    assert "test_batch.bin" in message


def test_cifar10_truncated_file_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"data_batch_2\.bin is 6145 bytes"):
        read_cifar10(tmp_path)


def test_cifar10_label_out_of_range_is_an_error(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_1.bin"
    raw = bytearray(path.read_bytes())
    raw[3073] = 10  # label byte of the second record
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"data_batch_1\.bin record 1 has label 10"):
        read_cifar10(tmp_path)


def test_cifar10_class_names(tmp_path: Path) -> None:
    assert CIFAR10_CLASSES[0] == "airplane"
    assert CIFAR10_CLASSES[-1] == "truck"
    assert len(CIFAR10_CLASSES) == 10
    assert cifar10_class_names(tmp_path) == list(CIFAR10_CLASSES)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_CLASSES) + "\n\n\n")
    assert cifar10_class_names(tmp_path) == list(CIFAR10_CLASSES)
