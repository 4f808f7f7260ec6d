"""The ImageNet class-folder reader, on tiny image files in the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misentry.data.images import DatasetLayoutError
from misentry.data.readers import read_imagenet

RNG = np.random.default_rng(0)


def _pixels(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


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
