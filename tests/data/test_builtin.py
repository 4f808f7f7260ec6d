"""The two embedded datasets, mnist5k and digits, as the packages ship them."""

from __future__ import annotations

import torch

from misentry.data import ImageSet


def test_mnist5k_is_the_embedded_5000_images_sorted_by_class(mnist5k: ImageSet) -> None:
    assert len(mnist5k) == 5000
    assert mnist5k.class_counts(10).tolist() == [500] * 10
    # rows come sorted by class, which is why every use goes through stratified pools
    assert torch.equal(mnist5k.labels, torch.arange(10).repeat_interleave(500))


def test_digits_maps_0_to_16_onto_the_8_bit_lattice(digits: ImageSet) -> None:
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float().unsqueeze(1) / 16.0
    assert len(digits) == 1797
    assert float((digits.x - raw).abs().max()) <= 0.5 / 255 + 1e-7
