"""The image container: 8-bit pixels and their float view in [0, 1]."""

from __future__ import annotations

import pytest
import torch

from misentry.data import ImageSet, to_pixels, to_unit


def test_pixels_round_trip_through_the_unit_range(digits: ImageSet) -> None:
    assert torch.equal(to_pixels(to_unit(digits.images)), digits.images)
    assert torch.equal(to_pixels(torch.tensor([-0.5, 0.6 / 255, 2.0])), torch.tensor([0, 1, 255]))


def test_class_names_index_the_labels_and_survive_a_subset(digits: ImageSet) -> None:
    names = tuple(str(k) for k in range(10))
    named = ImageSet(digits.images, digits.labels, names)
    part = named.subset(torch.arange(5))
    assert part.classes == names
    assert ImageSet.from_numpy(digits.images.numpy(), digits.labels.numpy(), names).classes == names
    with pytest.raises(ValueError, match="class names"):
        ImageSet(digits.images, digits.labels, names[:9])
