"""Reader for ImageNet (ILSVRC-2012) in the usual class-folder layout.

One folder per class, named by its WordNet id, under one folder per split; the root may be the
folder holding the splits or a split folder itself::

    root/
      train/
        n01440764/
          n01440764_10026.JPEG ...
        n01443537/ ...
      val/
        n01440764/ ...

The class index of an image is the position of its folder name in the sorted list of class folders
(the torchvision ``ImageFolder`` convention). Files ending in ``.jpeg``, ``.jpg`` or ``.png`` (any
case) are read in name order. Each image goes through the standard evaluation preprocessing:
convert to RGB, resize the shorter side to ``round(size * 256 / 224)`` (256 for 224) with bilinear
antialiased resampling, then center crop ``size`` x ``size`` (the same arithmetic as torchvision's
``Resize`` + ``CenterCrop``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from misentry.data.images import DatasetLayoutError, ImageSet
from misentry.data.readers.pil import open_rgb, resized, to_chw

EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
_SPLIT_NAMES = ("train", "val", "test")

_LAYOUT = (
    "Expected one folder per class (WordNet id) under each split:\n"
    "  train/\n"
    "    n01440764/\n"
    "      n01440764_10026.JPEG …\n"
    "    n01443537/ …\n"
    "  val/\n"
    "    n01440764/ …"
)


def read_imagenet(
    root: Path | str,
    split: str = "train",
    max_per_class: int | None = None,
    size: int = 224,
) -> tuple[ImageSet, list[str]]:
    """Read one split as (images, sorted class-folder names), preprocessed to ``size`` x ``size``.

    ``root`` is the folder holding ``<split>/`` or the split folder itself (then ``split`` is not
    looked at; a root holding ``train/``, ``val/`` or ``test/`` but not ``<split>/`` is an error
    rather than a split folder). ``max_per_class``
    keeps the first k files (in name order) of every class. A class folder with no image keeps its
    index and contributes no image.

    The whole result lives in memory as ``uint8``: 3 * 224 * 224 = 150,528 bytes per image at the
    default size, i.e. about 7.5 GB for the 50,000 validation images and about 193 GB for the
    1.28 million training images -- large sets want ``max_per_class``.

    Raises :class:`DatasetLayoutError` if the split folder has no class folder or no image, and
    :class:`ValueError` for an undecodable image.
    """
    if size < 1:
        raise ValueError(f"imagenet: size must be positive, got {size}")
    if max_per_class is not None and max_per_class < 0:
        raise ValueError(f"imagenet: max_per_class must be >= 0, got {max_per_class}")
    split_dir = _split_folder(Path(root).expanduser(), split)
    class_dirs = sorted(
        (p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        raise DatasetLayoutError(f"imagenet: no class folder under {split_dir}. {_LAYOUT}")
    files: list[tuple[Path, int]] = []
    for index, class_dir in enumerate(class_dirs):
        names = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS
        )
        files.extend((path, index) for path in names[:max_per_class])
    if not files:
        raise DatasetLayoutError(
            f"imagenet: no .JPEG/.jpg/.png file in the class folders under {split_dir}. {_LAYOUT}"
        )
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        images[i] = _load(path, size)
    labels = np.array([index for _, index in files], dtype=np.int64)
    return ImageSet.from_numpy(images, labels), [p.name for p in class_dirs]


def _split_folder(root: Path, split: str) -> Path:
    """``root/<split>``, or ``root`` itself when it is a split folder (holds class folders)."""
    if (root / split).is_dir():
        return root / split
    holds_splits = any((root / name).is_dir() for name in _SPLIT_NAMES)
    if not root.is_dir() or holds_splits:
        raise DatasetLayoutError(f"imagenet: no '{split}/' folder under {root}. {_LAYOUT}")
    return root


def _load(path: Path, size: int) -> NDArray[np.uint8]:
    """One image as RGB: shorter side to round(size * 256 / 224), then center crop, (3, s, s)."""
    rgb = open_rgb(path, "imagenet")
    short = round(size * 256 / 224)
    width, height = rgb.size
    # torchvision's Resize(int): the shorter side becomes `short`, the longer one is truncated.
    if width <= height:
        new_size = (short, int(short * height / width))
    else:
        new_size = (int(short * width / height), short)
    rgb = resized(rgb, new_size)
    # torchvision's CenterCrop: offsets rounded half to even, like Python's round.
    left = round((new_size[0] - size) / 2)
    top = round((new_size[1] - size) / 2)
    rgb = rgb.crop((left, top, left + size, top + size))
    return to_chw(rgb)
