"""The dataset readers, on tiny files written in the real on-disk formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misentry.data.images import DatasetLayoutError
from misentry.data.readers import (
    CIFAR10_CLASSES,
    read_cifar10,
    read_gtsrb,
    read_imagenet,
    read_mnist_idx,
)
from misentry.data.readers.cifar10 import cifar10_class_names

RNG = np.random.default_rng(0)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


# --- MNIST IDX --------------------------------------------------------------------------------


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


# --- CIFAR-10 binary --------------------------------------------------------------------------

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


# --- GTSRB ------------------------------------------------------------------------------------

GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def _write_gtsrb_class(
    images_dir: Path, class_id: int, images: list[np.ndarray], csv: bool = True
) -> None:
    """One class folder: PPMs written by PIL from (H, W, 3) arrays, plus its GT csv."""
    folder = images_dir / f"{class_id:05d}"
    folder.mkdir(parents=True)
    rows = [GTSRB_HEADER]
    for i, pixels in enumerate(images):
        name = f"00000_{i:05d}.ppm"
        Image.fromarray(pixels).save(folder / name, format="PPM")
        h, w = pixels.shape[:2]
        rows.append(f"{name};{w};{h};1;1;{w - 2};{h - 2};{class_id}")
    if csv:
        (folder / f"GT-{class_id:05d}.csv").write_text("\r\n".join(rows) + "\r\n")


def _gtsrb_tree(root: Path) -> tuple[Path, np.ndarray, list[int]]:
    """Classes 0 and 2 (1 absent); returns the Images folder, the 32x32 images and labels."""
    images_dir = root / "GTSRB" / "Final_Training" / "Images"
    class0 = [_pixels(32, 32, 3) for _ in range(2)]
    class2 = [_pixels(32, 32, 3) for _ in range(3)]
    _write_gtsrb_class(images_dir, 0, class0)
    _write_gtsrb_class(images_dir, 2, class2)
    expected = np.stack([p.transpose(2, 0, 1) for p in class0 + class2])
    return images_dir, expected, [0, 0, 2, 2, 2]


@pytest.mark.parametrize(
    "relative", ["", "GTSRB", "GTSRB/Final_Training", "GTSRB/Final_Training/Images"]
)
def test_gtsrb_round_trips_from_every_accepted_root(tmp_path: Path, relative: str) -> None:
    _, expected, labels = _gtsrb_tree(tmp_path)
    data = read_gtsrb(tmp_path / relative)
    assert data.images.shape == (5, 3, 32, 32)
    assert data.images.dtype == torch.uint8
    np.testing.assert_array_equal(data.images.numpy(), expected)
    assert data.labels.tolist() == labels


def test_gtsrb_csv_is_the_source_of_truth(tmp_path: Path) -> None:
    images_dir, expected, _ = _gtsrb_tree(tmp_path)
    folder = images_dir / "00002"
    # A stray image the CSV does not list is ignored; the CSV's ClassId is the label.
    Image.fromarray(_pixels(32, 32, 3)).save(folder / "99999_99999.ppm")
    csv = folder / "GT-00002.csv"
    csv.write_text(csv.read_text().replace(";2\n", ";7\n"))
    data = read_gtsrb(tmp_path)
    assert len(data) == 5
    assert data.labels.tolist() == [0, 0, 7, 7, 7]
    np.testing.assert_array_equal(data.images.numpy(), expected)


def test_gtsrb_resizes_other_sizes_to_size(tmp_path: Path) -> None:
    images_dir, _, _ = _gtsrb_tree(tmp_path)
    flat = np.full((45, 37, 3), (10, 120, 230), dtype=np.uint8)
    _write_gtsrb_class(images_dir, 42, [flat, _pixels(20, 61, 3)])
    data = read_gtsrb(tmp_path)
    assert data.images.shape == (7, 3, 32, 32)
    assert data.labels.tolist()[-2:] == [42, 42]
    # Bilinear resampling keeps a flat image flat.
    assert data.images[5, :, :, :].amin(dim=(1, 2)).tolist() == [10, 120, 230]
    assert data.images[5, :, :, :].amax(dim=(1, 2)).tolist() == [10, 120, 230]
    small = read_gtsrb(tmp_path, size=16)
    assert small.images.shape == (7, 3, 16, 16)


def test_gtsrb_missing_csv_names_it_and_the_layout(tmp_path: Path) -> None:
    images_dir, _, _ = _gtsrb_tree(tmp_path)
    _write_gtsrb_class(images_dir, 5, [_pixels(32, 32, 3)], csv=False)
    with pytest.raises(DatasetLayoutError) as info:
        read_gtsrb(tmp_path)
    message = str(info.value)
    assert "'GT-00005.csv'" in message
    assert str(images_dir / "00005") in message
    assert "Final_Training/" in message


def test_gtsrb_missing_listed_image_is_named(tmp_path: Path) -> None:
    images_dir, _, _ = _gtsrb_tree(tmp_path)
    (images_dir / "00002" / "00000_00001.ppm").unlink()
    with pytest.raises(DatasetLayoutError, match=r"'00000_00001\.ppm' under .*00002"):
        read_gtsrb(tmp_path)


def test_gtsrb_without_class_folders_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "GTSRB" / "Final_Training" / "Images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as info:
        read_gtsrb(tmp_path)
    message = str(info.value)
    assert "'00000'" in message
    assert str(tmp_path / "GTSRB" / "Final_Training" / "Images") in message
    assert "GT-00000.csv" in message


# --- ImageNet class folders -------------------------------------------------------------------


def _save(path: Path, width: int, height: int, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _pixels(height, width) if gray else _pixels(height, width, 3)
    Image.fromarray(pixels).save(path)


def _imagenet_tree(root: Path) -> None:
    """train/ with classes created out of sorted order, mixed extensions and sizes."""
    train = root / "train"
    _save(train / "n0003" / "b.JPEG", 300, 260)
    _save(train / "n0003" / "a.png", 250, 400)
    _save(train / "n0001" / "z.jpg", 250, 400)
    _save(train / "n0001" / "y.PNG", 120, 90, gray=True)
    (train / "n0001" / "notes.txt").write_text("not an image")
    _save(train / "n0002" / "x.jpeg", 300, 260)
    _save(root / "val" / "n0001" / "v.JPEG", 64, 64)


def test_imagenet_classes_sorted_and_files_in_name_order(tmp_path: Path) -> None:
    _imagenet_tree(tmp_path)
    data, wnids = read_imagenet(tmp_path, size=28)
    assert wnids == ["n0001", "n0002", "n0003"]
    assert data.images.shape == (5, 3, 28, 28)
    assert data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0, 0, 1, 2, 2]


def test_imagenet_default_size_is_224(tmp_path: Path) -> None:
    _save(tmp_path / "n0001" / "a.JPEG", 300, 260)
    data, wnids = read_imagenet(tmp_path)
    assert data.images.shape == (1, 3, 224, 224)
    assert wnids == ["n0001"]


def test_imagenet_max_per_class_keeps_the_first_files(tmp_path: Path) -> None:
    _imagenet_tree(tmp_path)
    full, _ = read_imagenet(tmp_path, size=28)
    data, wnids = read_imagenet(tmp_path, max_per_class=1, size=28)
    assert wnids == ["n0001", "n0002", "n0003"]
    assert data.labels.tolist() == [0, 1, 2]
    # First of n0001 is y.PNG, of n0003 is a.png: positions 0 and 3 of the full read.
    assert torch.equal(data.images, full.images[[0, 2, 3]])


def test_imagenet_split_and_split_folder_roots(tmp_path: Path) -> None:
    _imagenet_tree(tmp_path)
    val, wnids = read_imagenet(tmp_path, split="val", size=28)
    assert wnids == ["n0001"]
    assert val.labels.tolist() == [0]
    direct, direct_wnids = read_imagenet(tmp_path / "train", size=28)
    nested, nested_wnids = read_imagenet(tmp_path, size=28)
    assert direct_wnids == nested_wnids
    assert torch.equal(direct.images, nested.images)
    assert torch.equal(direct.labels, nested.labels)


@pytest.mark.parametrize(
    ("width", "height", "resized", "left", "top"),
    [
        # size 28 -> shorter side round(28 * 256 / 224) = 32, longer side truncated.
        (300, 260, (36, 32), 4, 2),
        (250, 400, (32, 51), 2, 12),  # top = round(11.5) = 12
    ],
)
def test_imagenet_resize_then_center_crop_is_exact(
    tmp_path: Path, width: int, height: int, resized: tuple[int, int], left: int, top: int
) -> None:
    pixels = _pixels(height, width, 3)
    _png(tmp_path, pixels)
    data, _ = read_imagenet(tmp_path, size=28)
    reference = np.asarray(Image.fromarray(pixels).resize(resized, Image.Resampling.BILINEAR))
    expected = reference[top : top + 28, left : left + 28].transpose(2, 0, 1)
    np.testing.assert_array_equal(data.images[0].numpy(), expected)


def _png(root: Path, pixels: np.ndarray) -> Path:
    path = root / "n0001" / "a.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def test_imagenet_center_crop_keeps_the_centre(tmp_path: Path) -> None:
    # A blue 300x260 PNG whose central 120x100 block is red: after resize to 295x256 and the
    # 224 crop, the crop's centre is pure red and its corners pure blue.
    pixels = np.zeros((260, 300, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    pixels[80:180, 90:210] = (255, 0, 0)
    _png(tmp_path, pixels)
    image = read_imagenet(tmp_path)[0].images[0]
    assert image[:, 112, 112].tolist() == [255, 0, 0]
    for y, x in ((0, 0), (0, 223), (223, 0), (223, 223)):
        assert image[:, y, x].tolist() == [0, 0, 255]
    red = (image[0] == 255) & (image[2] == 0)
    rows, cols = torch.nonzero(red, as_tuple=True)
    # Symmetric about the centre, to within a pixel of resampling.
    assert abs(int(rows.min()) + int(rows.max()) - 223) <= 1
    assert abs(int(cols.min()) + int(cols.max()) - 223) <= 1


def test_imagenet_missing_split_names_it_and_the_layout(tmp_path: Path) -> None:
    _imagenet_tree(tmp_path)
    with pytest.raises(DatasetLayoutError) as info:
        read_imagenet(tmp_path, split="test")
    message = str(info.value)
    assert "'test/'" in message
    assert str(tmp_path) in message
    assert "n01440764/" in message


def test_imagenet_without_images_is_a_layout_error(tmp_path: Path) -> None:
    (tmp_path / "train" / "n0001").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"no \.JPEG/\.jpg/\.png file"):
        read_imagenet(tmp_path)
    with pytest.raises(DatasetLayoutError, match="no class folder"):
        read_imagenet(tmp_path / "train" / "n0001")
