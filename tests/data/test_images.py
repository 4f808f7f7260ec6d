"""The image container: 8-bit pixels and their float view in [0, 1]."""

from __future__ import annotations

import torch

from misentry.data import ImageSet, to_pixels, to_unit


def test_pixels_round_trip_through_the_unit_range(digits: ImageSet) -> None:
    assert torch.equal(to_pixels(to_unit(digits.images)), digits.images)
    assert torch.equal(to_pixels(torch.tensor([-0.5, 0.6 / 255, 2.0])), torch.tensor([0, 1, 255]))
