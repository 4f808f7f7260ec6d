"""The user's own images: a folder of class folders and a CSV manifest, on tiny files written
here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misentry.data import DatasetLayoutError, get_dataset
from misentry.data.readers.imagefolder import clear_memo, read_csv_manifest, read_image_folder
from misentry.data.splits import POOL_NAMES, min_class_size

RNG = np.random.default_rng(0)
CLASSES = ("Dog", "bird", "cat")  # created out of order; plain string sort puts "Dog" first
SIZES = ((40, 30), (20, 50))  # (width, height)


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    clear_memo()
    yield
    clear_memo()


def _save(path: Path, width: int, height: int, pixels: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if pixels is None:
        pixels = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _tree(root: Path, per_class: int) -> None:
    """``per_class`` images in each class, PNG and JPEG, of two sizes, plus files to ignore."""
    for name in reversed(CLASSES):
        for i in range(per_class):
            width, height = SIZES[i % 2]
            suffix = (".png", ".JPG", ".jpeg", ".PNG")[i % 4]
            _save(root / name / f"{i:03d}{suffix}", width, height)
        (root / name / "notes.txt").write_text("not an image")
        _save(root / name / ".hidden.png", 8, 8)
    _save(root / ".cache" / "x.png", 8, 8)  # a hidden folder is no class


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _tree(tmp_path, min_class_size())
    return tmp_path


def test_classes_are_the_sorted_folder_names_and_labels_follow(tree: Path) -> None:
    need = min_class_size()
    data = read_image_folder(tree, (3, 16, 12))
    assert data.classes == tuple(sorted(CLASSES))
    assert data.images.shape == (3 * need, 3, 16, 12)
    assert data.images.dtype == torch.uint8
    assert data.labels.tolist() == [k for k in range(3) for _ in range(need)]


def test_a_file_in_a_nested_folder_belongs_to_its_class(tree: Path) -> None:
    _save(tree / "cat" / "more" / "z.bmp", 20, 20)
    data = read_image_folder(tree, (3, 8, 8))
    assert data.class_counts(3).tolist() == [min_class_size()] * 2 + [min_class_size() + 1]


def test_reading_twice_gives_the_same_images_and_is_memoised(tree: Path) -> None:
    first = read_image_folder(tree, (3, 16, 16))
    assert read_image_folder(tree, (3, 16, 16)) is first
    clear_memo()
    again = read_image_folder(tree, (3, 16, 16))
    assert again is not first
    assert torch.equal(again.images, first.images)
    assert torch.equal(again.labels, first.labels)


def test_a_changed_file_is_decoded_afresh(tree: Path) -> None:
    first = read_image_folder(tree, (3, 16, 16))
    path = tree / "cat" / "000.png"
    _save(path, 40, 30, np.full((30, 40, 3), 7, dtype=np.uint8))
    os.utime(path, ns=(1, 1))  # another mtime, even on a coarse clock
    changed = read_image_folder(tree, (3, 16, 16))
    assert changed is not first
    index = int(np.flatnonzero(changed.labels.numpy() == 2)[0])
    assert bool((changed.images[index] == 7).all())
    assert not bool((first.images[index] == 7).all())


def _pattern(width: int, height: int, square: int) -> np.ndarray:
    """Blue, with a red ``square`` x ``square`` block in the centre."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    top, left = (height - square) // 2, (width - square) // 2
    pixels[top : top + square, left : left + square] = (255, 0, 0)
    return pixels


@pytest.mark.parametrize(
    ("size", "shape", "resized", "left", "top"),
    [
        ((40, 30), (16, 16), (21, 16), 2, 0),  # height binds: 40 * 16 / 30 = 21.3 -> 21
        ((20, 50), (8, 16), (16, 40), 0, 16),  # width binds: 50 * 16 / 20 = 40
        ((40, 30), (30, 40), (40, 30), 0, 0),  # the same size: no resampling
        ((30, 30), (10, 20), (20, 20), 0, 5),  # a square into a tall target
    ],
)
def test_resize_then_centre_crop_follows_torchvision(
    tmp_path: Path,
    size: tuple[int, int],
    shape: tuple[int, int],
    resized: tuple[int, int],
    left: int,
    top: int,
) -> None:
    width, height = size
    pixels = RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "x.png", width, height, pixels)
    data = read_image_folder(tmp_path, (3, *shape))
    reference = np.asarray(Image.fromarray(pixels).resize(resized, Image.Resampling.BILINEAR))
    expected = reference[top : top + shape[0], left : left + shape[1]].transpose(2, 0, 1)
    np.testing.assert_array_equal(data.images[0].numpy(), expected)


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_a_centred_square_stays_centred(tmp_path: Path, width: int, height: int) -> None:
    _save(tmp_path / "a" / "x.png", width, height, _pattern(width, height, 10))
    image = read_image_folder(tmp_path, (3, 24, 24)).images[0]
    red = (image[0] > 200) & (image[2] < 50)
    rows, cols = torch.nonzero(red, as_tuple=True)
    assert rows.numel() > 0
    assert abs(int(rows.min()) + int(rows.max()) - 23) <= 1
    assert abs(int(cols.min()) + int(cols.max()) - 23) <= 1
    for y, x in ((0, 0), (0, 23), (23, 0), (23, 23)):
        assert image[:, y, x].tolist() == [0, 0, 255]


def test_one_channel_reads_grey_by_luma(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "x.png", 40, 30, pixels)
    data = read_image_folder(tmp_path, (1, 30, 40))
    assert data.images.shape == (1, 1, 30, 40)
    expected = np.asarray(Image.fromarray(pixels).convert("L"))
    np.testing.assert_array_equal(data.images[0, 0].numpy(), expected)
    info = get_dataset("imagefolder:1x28x28")
    assert info.load(tmp_path).images.shape == (1, 1, 28, 28)


def test_the_pools_of_a_folder_carry_the_class_names(tree: Path) -> None:
    pools = get_dataset("imagefolder:3x8x8").pools(0, tree)
    for name in POOL_NAMES:
        assert pools[name].classes == tuple(sorted(CLASSES))
        assert pools[name].class_counts(3).min() >= 1
    assert get_dataset("imagefolder:3x8x8").class_count(tree) == 3


def test_a_corrupt_file_is_named(tree: Path) -> None:
    bad = tree / "bird" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 this is no jpeg")
    with pytest.raises(ValueError, match="cannot decode") as err:
        read_image_folder(tree, (3, 8, 8))
    assert str(bad) in str(err.value)


def test_an_empty_class_is_named(tree: Path) -> None:
    (tree / "empty-class").mkdir()
    (tree / "empty-class" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetLayoutError, match="'empty-class'"):
        read_image_folder(tree, (3, 8, 8))


def test_a_folder_without_class_folders_says_so(tmp_path: Path) -> None:
    _save(tmp_path / "loose.png", 8, 8)
    with pytest.raises(DatasetLayoutError, match="no class folder") as err:
        read_image_folder(tmp_path, (3, 8, 8))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(DatasetLayoutError, match="no folder"):
        read_image_folder(tmp_path / "missing", (3, 8, 8))


def test_too_few_images_in_a_class_names_it_its_count_and_the_minimum(tmp_path: Path) -> None:
    need = min_class_size()
    _tree(tmp_path, need)
    next((tmp_path / "cat").glob("000.*")).unlink()
    with pytest.raises(ValueError, match="too few images") as err:
        get_dataset("imagefolder:3x8x8").pools(0, tmp_path)
    message = str(err.value)
    assert "'cat' has " + str(need - 1) in message
    assert f"at least {need}" in message
    assert "'bird'" not in message


def _manifest(root: Path, rows: list[str], header: bool) -> Path:
    csv_path = root / "lists" / "train.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text(("path,label\n" if header else "") + "\n".join(rows) + "\n")
    return csv_path


@pytest.mark.parametrize("header", [True, False])
def test_a_manifest_reads_relative_paths_and_sorts_integer_labels_numerically(
    tmp_path: Path, header: bool
) -> None:
    labels = ["10", "2", "1", "2"]
    rows = []
    for i, label in enumerate(labels):
        _save(tmp_path / "lists" / "img" / f"{i}.png", *SIZES[i % 2])
        rows.append(f"img/{i}.png,{label}")
    data = read_csv_manifest(_manifest(tmp_path, rows, header), (3, 8, 8))
    assert data.classes == ("1", "2", "10")
    assert data.labels.tolist() == [2, 1, 0, 1]
    assert data.images.shape == (4, 3, 8, 8)


def test_a_manifest_with_names_and_an_absolute_path(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 20, 20)
    _save(tmp_path / "lists" / "b.jpg", 20, 20)
    csv_path = _manifest(tmp_path, [f"{tmp_path / 'a.png'},zebra", "b.jpg,ant"], header=True)
    data = get_dataset("csv:1x8x8").load(csv_path)
    assert data.classes == ("ant", "zebra")
    assert data.labels.tolist() == [1, 0]
    assert data.images.shape == (2, 1, 8, 8)


def test_a_manifest_row_with_a_missing_file_names_it_and_its_line(tmp_path: Path) -> None:
    _save(tmp_path / "lists" / "a.png", 8, 8)
    csv_path = _manifest(tmp_path, ["a.png,x", "gone.png,y"], header=True)
    with pytest.raises(DatasetLayoutError) as err:
        read_csv_manifest(csv_path, (3, 8, 8))
    assert "line 3" in str(err.value)
    assert "gone.png" in str(err.value)


def test_a_malformed_manifest_row_and_a_missing_manifest_say_so(tmp_path: Path) -> None:
    _save(tmp_path / "lists" / "a.png", 8, 8)
    csv_path = _manifest(tmp_path, ["a.png,x", "a.png"], header=False)
    with pytest.raises(ValueError, match="line 2"):
        read_csv_manifest(csv_path, (3, 8, 8))
    with pytest.raises(DatasetLayoutError, match="no file"):
        read_csv_manifest(tmp_path / "none.csv", (3, 8, 8))
    with pytest.raises(DatasetLayoutError, match="imagefolder:CxHxW"):
        read_csv_manifest(tmp_path, (3, 8, 8))
