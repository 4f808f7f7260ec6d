"""Reader for the official GTSRB training set (German Traffic Sign Recognition Benchmark).

The folder from ``GTSRB_Final_Training_Images.zip``; the root may be the folder holding
``GTSRB/``, ``GTSRB/`` itself, ``Final_Training/`` or ``Images/``::

    GTSRB/
      Final_Training/
        Images/
          00000/
            00000_00000.ppm ...
            GT-00000.csv
          ...
          00042/

Each class folder's ``GT-<class>.csv`` is semicolon-separated with the header
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`` and is the source of truth for which
files belong to the set and their labels (the ``ClassId`` ints). Every image is converted to RGB
and the whole image (not the ROI) is resized to ``size`` x ``size`` with bilinear, antialiased
resampling. Class folders that are absent are simply absent from the result; labels keep their
official ids, so the caller should still treat the label space as the 43 GTSRB classes.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from misentry.data.images import DatasetLayoutError, ImageSet
from misentry.data.readers.pil import open_rgb, resized, to_chw

NUM_CLASSES = 43

_LAYOUT = (
    "Expected the official training set:\n"
    "  GTSRB/\n"
    "    Final_Training/\n"
    "      Images/\n"
    "        00000/ … 00042/\n"
    "          00000_00000.ppm …\n"
    "          GT-00000.csv"
)


def read_gtsrb(root: Path | str, size: int = 32) -> ImageSet:
    """Read the GTSRB training images listed by each class folder's CSV, resized to ``size``.

    Class folders are read in sorted order, files in CSV order. Raises :class:`DatasetLayoutError`
    if no class folder is found, a class folder lacks its CSV or the CSV names a missing image,
    and :class:`ValueError` for a malformed CSV or an undecodable image.
    """
    if size < 1:
        raise ValueError(f"gtsrb: size must be positive, got {size}")
    images_dir = _images_folder(Path(root).expanduser())
    class_dirs = sorted(p for p in images_dir.iterdir() if p.is_dir() and _is_class_name(p.name))
    if not class_dirs:
        raise DatasetLayoutError(
            f"gtsrb: no class folder '00000' … '00042' under {images_dir}. {_LAYOUT}"
        )
    entries = [entry for class_dir in class_dirs for entry in _read_csv(class_dir)]
    images = np.empty((len(entries), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(entries):
        images[i] = _load(path, size)
    return ImageSet.from_numpy(images, np.array([label for _, label in entries], dtype=np.int64))


def _images_folder(root: Path) -> Path:
    """The ``Images/`` folder for any of the accepted roots (``root`` itself if none matches)."""
    for candidate in (
        root / "GTSRB" / "Final_Training" / "Images",
        root / "Final_Training" / "Images",
        root / "Images",
    ):
        if candidate.is_dir():
            return candidate
    if not root.is_dir():
        raise DatasetLayoutError(f"gtsrb: no folder {root}. {_LAYOUT}")
    return root


def _is_class_name(name: str) -> bool:
    return len(name) == 5 and name.isdigit()


def _read_csv(class_dir: Path) -> list[tuple[Path, int]]:
    """(image path, ClassId) for every row of the class folder's ``GT-<class>.csv``."""
    csv_path = class_dir / f"GT-{class_dir.name}.csv"
    if not csv_path.is_file():
        raise DatasetLayoutError(f"gtsrb: no '{csv_path.name}' under {class_dir}. {_LAYOUT}")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle, delimiter=";"))
    entries: list[tuple[Path, int]] = []
    for line, row in enumerate(rows, start=2):
        filename, class_id = row.get("Filename"), row.get("ClassId")
        if not filename or not class_id or not class_id.strip().isdigit():
            raise ValueError(
                f"gtsrb: {csv_path} line {line} lacks a Filename or an integer ClassId "
                "(expected a semicolon-separated header "
                "'Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId')"
            )
        path = class_dir / filename.strip()
        if not path.is_file():
            raise DatasetLayoutError(
                f"gtsrb: no '{path.name}' under {class_dir} (listed in {csv_path.name}). {_LAYOUT}"
            )
        entries.append((path, int(class_id)))
    return entries


def _load(path: Path, size: int) -> NDArray[np.uint8]:
    """One image as RGB, resized to (3, size, size)."""
    return to_chw(resized(open_rgb(path, "gtsrb"), (size, size)))
