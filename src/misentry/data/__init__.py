"""Datasets, their on-disk readers and the deterministic pools every experiment draws from."""

from misentry.data.images import DatasetLayoutError, ImageSet, to_pixels, to_unit
from misentry.data.registry import DATASETS, DatasetInfo, get_dataset
from misentry.data.splits import POOL_NAMES, PoolFractions, Pools, split_indices, split_pools

__all__ = [
    "DATASETS",
    "POOL_NAMES",
    "DatasetInfo",
    "DatasetLayoutError",
    "ImageSet",
    "PoolFractions",
    "Pools",
    "get_dataset",
    "split_indices",
    "split_pools",
    "to_pixels",
    "to_unit",
]
