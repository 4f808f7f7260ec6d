"""The embedded datasets, mnist5k, mnist5k-color and digits, as the packages ship them."""

from __future__ import annotations

import torch

from misentry.data import ImageSet
from misentry.data.builtin import (
    BACKGROUND_NOISE,
    COLOR_SEED,
    CONTRAST,
    colorize_digits,
)


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


def test_mnist5k_color_is_mnist5k_in_colour_with_the_same_labels(
    mnist5k: ImageSet, mnist5k_color: ImageSet
) -> None:
    assert mnist5k_color.images.shape == (5000, 3, 32, 32)
    assert mnist5k_color.images.dtype == torch.uint8
    assert torch.equal(mnist5k_color.labels, mnist5k.labels)
    # the stroke (nearly full ink) is one colour in every channel, the padding is background:
    # the stroke is lighter by at least the least contrast, less the noise, in every channel
    gray = torch.nn.functional.pad(mnist5k.images, (2, 2, 2, 2))[:, 0]
    colour = mnist5k_color.images.to(torch.int64)
    for i in range(0, 5000, 97):
        stroke = colour[i][:, gray[i] >= 250]
        background = colour[i][:, gray[i] == 0]
        stroke_colour = stroke.median(dim=1).values
        assert int((stroke - stroke_colour[:, None]).abs().max()) <= 6
        spread = background.max(dim=1).values - background.min(dim=1).values
        assert int(spread.max()) <= 2 * BACKGROUND_NOISE
        gap = stroke_colour - background.double().mean(dim=1)
        assert float(gap.min()) >= CONTRAST[0] - BACKGROUND_NOISE


def test_mnist5k_color_is_deterministic_in_its_seed(
    mnist5k: ImageSet, mnist5k_color: ImageSet
) -> None:
    assert torch.equal(colorize_digits(mnist5k.images, COLOR_SEED), mnist5k_color.images)
    other = colorize_digits(mnist5k.images[:10], COLOR_SEED + 1)
    assert not torch.equal(other, mnist5k_color.images[:10])


def test_mnist5k_color_colours_say_nothing_of_the_class(
    mnist5k: ImageSet, mnist5k_color: ImageSet
) -> None:
    pixels = mnist5k_color.images.to(torch.float64)
    background = pixels[:, :, :2, :2].mean(dim=(2, 3))
    inkiest = torch.nn.functional.pad(mnist5k.images, (2, 2, 2, 2)).flatten(1).argmax(dim=1)
    stroke = pixels.flatten(2)[torch.arange(5000), :, inkiest]
    colours = torch.cat([background, stroke], dim=1)  # (5000, 6)
    between_images = colours.std(dim=0)
    class_means = torch.stack([colours[mnist5k_color.labels == k].mean(dim=0) for k in range(10)])
    spread_of_classes = (class_means - colours.mean(dim=0)).abs().max(dim=0).values
    # 500 images a class: independent colours put the class means within a few sigma/sqrt(500)
    assert bool((spread_of_classes < 0.15 * between_images).all())
    assert bool((between_images > 20).all())  # colours vary a lot between images
