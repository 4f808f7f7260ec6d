"""Reader for the user's own images: a folder of class folders, or a CSV manifest.

A class-folder tree (the torchvision ``ImageFolder`` layout)::

    root/
      cat/
        0001.png  a.jpg  more/b.JPEG ...
      dog/
        ...

The class names are the sub-folder names in plain string order, and label ``k`` is the ``k``-th
name. Files ending in ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp`` (any case) anywhere under a class
folder are its images, read in the order of their paths; hidden files and folders (a leading
``.``) and other files are ignored.

A CSV manifest (see :func:`read_csv_manifest`) lists ``path,label`` rows instead.

Every image is converted to RGB (3 channels) or grey (1 channel), scaled so that it covers the
target (scale ``max(H / h, W / w)``, keeping its aspect) and centre-cropped to ``H`` x ``W``:
torchvision's ``Resize`` + ``CenterCrop``, bilinear and antialiased (:func:`resize_center_crop`).

Decoding a large folder takes a while, and every stage that loads the pools reads it again, so
the decoded set is kept in memory for the life of the process, keyed by the resolved root, the
shape and the listing (every file's path, size and modification time): change, add or remove a
file and the next read decodes afresh. Nothing is cached on disk.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from misentry.data.images import DatasetLayoutError, ImageSet
from misentry.data.readers.pil import open_image, resize_center_crop, to_chw

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
"""Suffixes (compared in lower case) of the files read as images."""

MEMO_SIZE = 4
"""How many decoded sets :func:`read_image_folder` and :func:`read_csv_manifest` keep."""

FOLDER_LAYOUT = (
    "Expected one folder per class, the class name as its name:\n"
    "  ROOT/\n"
    "    cat/  *.png *.jpg *.jpeg *.bmp\n"
    "    dog/  ...\n"
    "Labels follow the sorted folder names."
)

CSV_LAYOUT = (
    "Expected a CSV file of rows path,label (an optional first row 'path,label'), e.g.\n"
    "  path,label\n"
    "  images/0001.png,cat\n"
    "  /data/more/0002.jpg,dog\n"
    "Relative paths start at the CSV's folder."
)

Listing = list[tuple[Path, int]]
"""Image files with their labels."""

_memo: OrderedDict[str, ImageSet] = OrderedDict()


def read_image_folder(root: Path | str, shape: tuple[int, int, int]) -> ImageSet:
    """Read a class-folder tree as uint8 images of ``shape`` (C, H, W), C = 1 or 3, with the
    sorted folder names as :attr:`ImageSet.classes`.

    Raises :class:`DatasetLayoutError` if ``root`` is not a folder, holds no class folder or a
    class folder holds no image, and :class:`ValueError` naming a file that cannot be decoded.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        hint = " (a file: for a CSV manifest use csv:CxHxW)" if root.is_file() else ""
        raise DatasetLayoutError(f"imagefolder: no folder {root}{hint}. {FOLDER_LAYOUT}")
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not _hidden(p.name)), key=lambda p: p.name
    )
    if not class_dirs:
        raise DatasetLayoutError(f"imagefolder: no class folder under {root}. {FOLDER_LAYOUT}")
    listing: Listing = []
    for label, class_dir in enumerate(class_dirs):
        files = image_files(class_dir)
        if not files:
            raise DatasetLayoutError(
                f"imagefolder: class folder {class_dir.name!r} under {root} holds no "
                f".png/.jpg/.jpeg/.bmp file; add images or remove the folder"
            )
        listing.extend((path, label) for path in files)
    classes = tuple(p.name for p in class_dirs)
    return decode_listing(listing, classes, shape, key=("imagefolder", str(root)))


def read_csv_manifest(path: Path | str, shape: tuple[int, int, int]) -> ImageSet:
    """Read the images a CSV manifest lists, as uint8 images of ``shape`` (C, H, W).

    The manifest has rows ``path,label``, optionally below a header row ``path,label``; paths are
    relative to the CSV's folder (absolute ones are allowed); labels are names. The classes are
    the distinct labels sorted, numerically when every label is an integer, and label ``k`` of
    the result is the ``k``-th of them. Images keep the manifest's row order.

    Raises :class:`DatasetLayoutError` if the CSV or a file it lists is missing (naming the file
    and its line) and :class:`ValueError` for a malformed row or a file that cannot be decoded.
    """
    csv_path = Path(path).expanduser().resolve()
    rows = read_manifest(csv_path)
    classes = sorted_classes([label for _, _, label in rows])
    index = {name: k for k, name in enumerate(classes)}
    listing: Listing = []
    for line, file, label in rows:
        if not file.is_file():
            raise DatasetLayoutError(
                f"csv: {csv_path} line {line} lists {file}, which does not exist (paths are "
                f"relative to {csv_path.parent})"
            )
        listing.append((file, index[label]))
    stat = csv_path.stat()
    key = ("csv", str(csv_path), str(stat.st_size), str(stat.st_mtime_ns))
    return decode_listing(listing, classes, shape, key=key)


def read_manifest(csv_path: Path) -> list[tuple[int, Path, str]]:
    """(line number, resolved path, label) of every row of a ``path,label`` CSV file."""
    if not csv_path.is_file():
        hint = " (a folder: for class folders use imagefolder:CxHxW)" if csv_path.is_dir() else ""
        raise DatasetLayoutError(f"csv: no file {csv_path}{hint}. {CSV_LAYOUT}")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        lines = list(enumerate(csv.reader(handle), start=1))
    rows: list[tuple[int, Path, str]] = []
    for line, row in lines:
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if line == 1 and [cell.lower() for cell in cells] == ["path", "label"]:
            continue
        if len(cells) != 2 or not cells[0] or not cells[1]:
            raise ValueError(
                f"csv: {csv_path} line {line} is {row!r}, not a path and a label. {CSV_LAYOUT}"
            )
        rows.append((line, (csv_path.parent / Path(cells[0]).expanduser()).resolve(), cells[1]))
    if not rows:
        raise ValueError(f"csv: {csv_path} lists no image. {CSV_LAYOUT}")
    return rows


def image_files(folder: Path) -> list[Path]:
    """The image files anywhere under ``folder``, in path order, skipping hidden entries."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(_hidden(part) for part in p.relative_to(folder).parts)
        and p.is_file()
    )


def sorted_classes(labels: Sequence[str]) -> tuple[str, ...]:
    """The distinct labels, sorted numerically when all are integers, else as strings."""
    distinct = set(labels)
    if all(_is_int(label) for label in distinct):
        return tuple(sorted(distinct, key=lambda label: (int(label), label)))
    return tuple(sorted(distinct))


def decode_listing(
    listing: Listing, classes: tuple[str, ...], shape: tuple[int, int, int], key: tuple[str, ...]
) -> ImageSet:
    """Decode every listed file to ``shape``, or return the memoised set of the same listing."""
    channels, height, width = shape
    if channels not in (1, 3) or height < 1 or width < 1:
        raise ValueError(f"{key[0]}: shape must be (1 or 3, H >= 1, W >= 1); got {shape}")
    memo_key = _listing_signature(listing, classes, shape, key)
    if memo_key in _memo:
        _memo.move_to_end(memo_key)
        return _memo[memo_key]
    mode = "RGB" if channels == 3 else "L"
    images = np.empty((len(listing), *shape), dtype=np.uint8)
    for i, (path, _) in enumerate(listing):
        images[i] = to_chw(resize_center_crop(open_image(path, key[0], mode), height, width))
    labels = np.array([label for _, label in listing], dtype=np.int64)
    result = ImageSet.from_numpy(images, labels, classes)
    _memo[memo_key] = result
    while len(_memo) > MEMO_SIZE:
        _memo.popitem(last=False)
    return result


def clear_memo() -> None:
    """Forget every decoded set (the next read decodes the files again)."""
    _memo.clear()


def _listing_signature(
    listing: Listing, classes: tuple[str, ...], shape: tuple[int, int, int], key: tuple[str, ...]
) -> str:
    """A digest of the source, the shape, the classes and every file's path, label, size and
    modification time."""
    digest = hashlib.sha256(repr((key, shape, classes)).encode())
    for path, label in listing:
        stat = path.stat()
        digest.update(f"\n{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_int(text: str) -> bool:
    return re.fullmatch(r"[+-]?[0-9]+", text) is not None
