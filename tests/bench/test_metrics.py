"""The exact expected detection rate and its mean over instances."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from misentry.bench.metrics import detection_rate, disagreements, expected_detection


def brute_force(d: int, n: int, ns: int) -> float:
    """Share of all ns-subsets of n items (the first d "disagree") holding a disagreeing one."""
    subsets = list(itertools.combinations(range(n), ns))
    return sum(any(i < d for i in s) for s in subsets) / len(subsets)


@given(
    st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n)))
)
def test_expected_detection_equals_counting_every_subset(case: tuple[int, int, int]) -> None:
    n, d, ns = case
    assert expected_detection(d, n, ns) == pytest.approx(brute_force(d, n, ns))


def test_edges_of_the_formula() -> None:
    assert expected_detection(0, 100, 5) == 0.0
    assert expected_detection(100, 100, 5) == 1.0
    assert expected_detection(50, 100, 1) == pytest.approx(0.5)
    assert expected_detection(1, 100, 100) == 1.0
    with pytest.raises(ValueError, match="ns"):
        expected_detection(3, 10, 0)
    with pytest.raises(ValueError, match="d"):
        expected_detection(11, 10, 1)


def test_detection_rate_averages_instances_with_an_interval() -> None:
    rate = detection_rate([0, 50, 100], n=100, ns=1)
    assert rate.mean == pytest.approx(0.5)
    assert rate.low < 0.5 < rate.high
    assert rate.low >= 0.0
    assert rate.high <= 1.0
    half = 1.96 * math.sqrt(0.25 / 3)
    assert rate.high == pytest.approx(min(1.0, 0.5 + half))
    single = detection_rate([10], n=100, ns=5)
    assert single.low == single.mean == single.high
    assert detection_rate([0, 0], n=100, ns=5).mean == 0.0


def test_disagreements_count_changed_labels() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3, 4))
        model[1].bias.zero_()
    x = torch.eye(4)[:3].view(3, 1, 2, 2)
    assert disagreements(model, x, torch.tensor([0, 1, 2])) == 0
    assert disagreements(model, x, torch.tensor([0, 2, 2])) == 1
