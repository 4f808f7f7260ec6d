"""The GTSRB reader, on tiny class folders written in the real on-disk layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misentry.data.images import DatasetLayoutError
from misentry.data.readers import read_gtsrb

RNG = np.random.default_rng(0)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


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
