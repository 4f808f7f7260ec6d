"""Deterministic stratified splits of a dataset into disjoint pools.

Every experiment in misentry draws from five pools, cut per class so each holds every class in the
dataset's proportions:

``owner_train``
    The owner trains the target here, and builds its fingerprint model zoo from it.
``attacker``
    Data that a tamperer (or a benign updater) uses. The owner never sees it.
``val``
    Validation: tuning of hyperparameters and early stopping.
``test``
    Clean accuracy and label-flip measurements of targets and tampered models.
``source``
    Natural images that fingerprints start from.

The cut depends only on the labels, the fractions and the data seed, so the same seed gives the
same pools on every machine. Pools keep the dataset's class names (:attr:`ImageSet.classes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from math import ceil

import numpy as np
import torch

from misentry.data.images import ImageSet

POOL_NAMES: tuple[str, ...] = ("owner_train", "attacker", "val", "test", "source")
"""The pool names, in the order they are cut from each class."""


@dataclass(frozen=True)
class PoolFractions:
    """Share of each class that goes to each pool; the shares add up to 1 (or less).

    The defaults give mnist5k 250 / 100 / 25 / 100 / 25 images per class.
    """

    owner_train: float = 0.50
    attacker: float = 0.20
    val: float = 0.05
    test: float = 0.20
    source: float = 0.05

    def __post_init__(self) -> None:
        values = self.as_dict().values()
        if any(v < 0 for v in values) or sum(values) > 1.0 + 1e-9:
            raise ValueError(f"PoolFractions must be >= 0 and add up to at most 1; got {self}")

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in POOL_NAMES}


@dataclass(frozen=True)
class Pools(Mapping[str, ImageSet]):
    """The five disjoint pools of one dataset, plus the indices each came from."""

    seed: int
    indices: Mapping[str, torch.Tensor]
    sets: Mapping[str, ImageSet]

    def __getitem__(self, name: str) -> ImageSet:
        if name not in self.sets:
            raise KeyError(f"unknown pool {name!r}; pools are {', '.join(POOL_NAMES)}")
        return self.sets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(POOL_NAMES)

    def __len__(self) -> int:
        return len(POOL_NAMES)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.sets[name]) for name in POOL_NAMES}


def per_class_counts(class_size: int, fractions: PoolFractions) -> dict[str, int]:
    """How many images of a class with ``class_size`` images each pool gets.

    Rounded by largest remainder so the counts add up to ``round(class_size * sum(fractions))``.
    """
    shares = fractions.as_dict()
    exact = {name: class_size * share for name, share in shares.items()}
    counts = {name: int(np.floor(v + 1e-9)) for name, v in exact.items()}
    target = min(class_size, round(class_size * sum(shares.values())))
    by_remainder = sorted(POOL_NAMES, key=lambda n: (-(exact[n] - counts[n]), POOL_NAMES.index(n)))
    for name in by_remainder[: max(0, target - sum(counts.values()))]:
        counts[name] += 1
    return counts


def min_class_size(fractions: PoolFractions | None = None) -> int:
    """The fewest images a class needs so that every pool with a positive share gets at least one
    of them (at that size and every larger one).

    With the default fractions this is 15 (the 5 % pools need the largest remainders to round
    up); at 20 and above every 5 % share is at least one image without rounding.
    """
    fractions = fractions or PoolFractions()
    shares = {name: share for name, share in fractions.as_dict().items() if share > 0}
    if not shares:
        return 1

    def fills_every_pool(size: int) -> bool:
        counts = per_class_counts(size, fractions)
        return all(counts[name] >= 1 for name in shares)

    size = ceil(1.0 / min(shares.values()) - 1e-9)  # from here on, floor(size * share) >= 1
    while size > 1 and fills_every_pool(size - 1):
        size -= 1
    return size


def check_class_sizes(images: ImageSet, fractions: PoolFractions | None = None) -> None:
    """Raise a ValueError naming every class too small to give each of the five pools an image.

    A class is named by :attr:`ImageSet.classes` where the set has names, else by its label.
    """
    need = min_class_size(fractions)
    labels, counts = np.unique(images.labels.cpu().numpy(), return_counts=True)
    short = [
        (int(label), int(count))
        for label, count in zip(labels, counts, strict=True)
        if count < need
    ]
    if not short:
        return
    names = images.classes
    listed = ", ".join(
        f"{names[label]!r} has {count}" if names else f"label {label} has {count}"
        for label, count in short
    )
    raise ValueError(
        f"too few images to cut the five pools: class {listed}; every class needs at least "
        f"{need} images (the pool shares are {fractions or PoolFractions()}); add images or "
        "remove the class"
    )


def split_indices(
    labels: torch.Tensor, seed: int, fractions: PoolFractions | None = None
) -> dict[str, torch.Tensor]:
    """Cut ``labels`` into disjoint, stratified pools of indices (each sorted ascending)."""
    fractions = fractions or PoolFractions()
    y = labels.cpu().numpy()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED])))
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in POOL_NAMES}
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        members = members[rng.permutation(members.size)]
        start = 0
        for name, count in per_class_counts(members.size, fractions).items():
            chunks[name].append(members[start : start + count])
            start += count
    return {
        name: torch.from_numpy(np.sort(np.concatenate(parts)).astype(np.int64))
        for name, parts in chunks.items()
    }


def split_pools(images: ImageSet, seed: int, fractions: PoolFractions | None = None) -> Pools:
    """Split ``images`` into the five pools with the data seed ``seed``."""
    indices = split_indices(images.labels, seed, fractions)
    return Pools(
        seed=seed,
        indices=indices,
        sets={name: images.subset(idx) for name, idx in indices.items()},
    )
