"""Datasets, their on-disk readers and the deterministic pools every experiment draws from.

Your own images load by a name that carries their shape: ``get_dataset("imagefolder:3x32x32")``
for a folder of class folders, ``get_dataset("csv:3x32x32")`` for a CSV manifest of
``path,label`` rows; then ``.load(root)`` or ``.pools(seed, root)``.
"""

from misentry.data.images import DatasetLayoutError, ImageSet, to_pixels, to_unit
from misentry.data.readers import read_csv_manifest, read_image_folder
from misentry.data.registry import DATASETS, USER_DATASET_PATTERNS, DatasetInfo, get_dataset
from misentry.data.splits import (
    POOL_NAMES,
    PoolFractions,
    Pools,
    check_class_sizes,
    min_class_size,
    split_indices,
    split_pools,
)

__all__ = [
    "DATASETS",
    "POOL_NAMES",
    "USER_DATASET_PATTERNS",
    "DatasetInfo",
    "DatasetLayoutError",
    "ImageSet",
    "PoolFractions",
    "Pools",
    "check_class_sizes",
    "get_dataset",
    "min_class_size",
    "read_csv_manifest",
    "read_image_folder",
    "split_indices",
    "split_pools",
    "to_pixels",
    "to_unit",
]
