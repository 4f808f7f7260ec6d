"""The deterministic stratified pools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from misentry.data import (
    POOL_NAMES,
    ImageSet,
    PoolFractions,
    get_dataset,
    split_indices,
    split_pools,
)
from misentry.data.splits import check_class_sizes, min_class_size, per_class_counts


@pytest.fixture(scope="module")
def mnist_pools(mnist5k: ImageSet):  # type: ignore[no-untyped-def]
    return split_pools(mnist5k, seed=0)


def test_mnist5k_pool_sizes_are_the_documented_ones(mnist_pools) -> None:  # type: ignore[no-untyped-def]
    assert mnist_pools.sizes() == {
        "owner_train": 2500,
        "attacker": 1000,
        "val": 250,
        "test": 1000,
        "source": 250,
    }


def test_digits_pool_sizes_are_the_documented_ones(digits: ImageSet) -> None:
    sizes = split_pools(digits, seed=0).sizes()
    assert sizes == {"owner_train": 899, "attacker": 361, "val": 90, "test": 358, "source": 89}


def test_pools_are_disjoint_and_cover_the_dataset(mnist_pools) -> None:  # type: ignore[no-untyped-def]
    seen = torch.cat([mnist_pools.indices[name] for name in POOL_NAMES])
    assert seen.numel() == torch.unique(seen).numel() == 5000


def test_pools_are_stratified(mnist_pools) -> None:  # type: ignore[no-untyped-def]
    for name in POOL_NAMES:
        counts = mnist_pools[name].class_counts(10)
        assert counts.min() == counts.max() == len(mnist_pools[name]) // 10, name


def test_pool_images_are_the_images_at_their_indices(mnist5k: ImageSet, mnist_pools) -> None:  # type: ignore[no-untyped-def]
    for name in POOL_NAMES:
        idx = mnist_pools.indices[name]
        assert torch.equal(mnist_pools[name].images, mnist5k.images[idx])
        assert torch.equal(mnist_pools[name].labels, mnist5k.labels[idx])


def test_pools_are_identical_across_runs_and_differ_across_seeds(mnist5k: ImageSet) -> None:
    first = split_indices(mnist5k.labels, seed=0)
    again = split_indices(mnist5k.labels.clone(), seed=0)
    other = split_indices(mnist5k.labels, seed=1)
    for name in POOL_NAMES:
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["test"], other["test"])


def test_pools_through_the_registry_match_a_direct_split(mnist5k: ImageSet, mnist_pools) -> None:  # type: ignore[no-untyped-def]
    pools = get_dataset("mnist5k").pools(seed=0)
    for name in POOL_NAMES:
        assert torch.equal(pools.indices[name], mnist_pools.indices[name])


def test_unknown_pool_name_is_a_clear_error(mnist_pools) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyError, match="owner_train"):
        mnist_pools["train"]


def test_fractions_over_one_are_refused() -> None:
    with pytest.raises(ValueError, match="add up"):
        PoolFractions(owner_train=0.9, attacker=0.2)


@settings(max_examples=60, deadline=None)
@given(
    class_sizes=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8),
    shares=st.lists(st.integers(min_value=0, max_value=10), min_size=5, max_size=5),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_any_split_is_disjoint_stratified_and_deterministic(
    class_sizes: list[int], shares: list[int], seed: int
) -> None:
    assume(sum(shares) > 0)
    total = sum(shares)
    fractions = PoolFractions(*(s / total for s in shares))
    labels = torch.from_numpy(np.repeat(np.arange(len(class_sizes)), class_sizes))
    pools = split_indices(labels, seed, fractions)
    union = torch.cat(list(pools.values()))
    assert union.numel() == torch.unique(union).numel() == labels.numel()
    for cls, size in enumerate(class_sizes):
        expected = per_class_counts(size, fractions)
        for name in POOL_NAMES:
            got = int((labels[pools[name]] == cls).sum())
            assert got == expected[name]
            assert abs(got - size * fractions.as_dict()[name]) < 1.0 + 1e-9
    again = split_indices(labels, seed, fractions)
    assert all(torch.equal(pools[n], again[n]) for n in POOL_NAMES)


@pytest.mark.parametrize(
    "fractions",
    [PoolFractions(), PoolFractions(0.6, 0.1, 0.1, 0.1, 0.1), PoolFractions(0.5, 0.5, 0, 0, 0)],
)
def test_min_class_size_is_the_least_that_fills_every_pool(fractions: PoolFractions) -> None:
    need = min_class_size(fractions)
    wanted = [name for name, share in fractions.as_dict().items() if share > 0]
    for size in range(need, need + 50):
        counts = per_class_counts(size, fractions)
        assert all(counts[name] >= 1 for name in wanted), size
    below = per_class_counts(need - 1, fractions)
    assert need == 1 or any(below[name] == 0 for name in wanted)


def test_check_class_sizes_names_the_short_classes(digits: ImageSet) -> None:
    check_class_sizes(digits)  # every digits class is large enough
    need = min_class_size()
    keep = torch.cat([torch.arange(need - 1), torch.arange(need, 3 * need)])
    small = ImageSet(
        digits.images[: 3 * need][keep],
        torch.tensor([0] * (need - 1) + [1] * need + [2] * need),
        ("zero", "one", "two"),
    )
    with pytest.raises(ValueError, match=f"'zero' has {need - 1}.*at least {need}"):
        check_class_sizes(small)
    unnamed = ImageSet(small.images, small.labels)
    with pytest.raises(ValueError, match=f"label 0 has {need - 1}"):
        check_class_sizes(unnamed)


def test_pools_keep_the_class_names(digits: ImageSet) -> None:
    names = tuple(f"digit {k}" for k in range(10))
    named = ImageSet(digits.images, digits.labels, names)
    pools = split_pools(named, seed=0)
    plain = split_pools(digits, seed=0)
    for name in POOL_NAMES:
        assert pools[name].classes == names
        assert plain[name].classes is None
        assert torch.equal(pools[name].images, plain[name].images)
