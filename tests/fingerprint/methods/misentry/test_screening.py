"""MiSentry's screening: the selection spreads the kept candidates over classes and sources."""

from __future__ import annotations

import torch

from misentry.fingerprint.methods.misentry.screening import spread


def test_selection_gives_every_class_its_floor_before_the_best_take_the_rest() -> None:
    # 12 candidates, best first: the first eight are class 0, then one each of classes 1-3,
    # then a second candidate from source 0
    labels = torch.tensor([0] * 8 + [1, 2, 3, 0])
    index = torch.tensor([*range(11), 0])
    order = list(range(12))
    chosen = spread([(order, "floor"), (order, "source"), (order, "any")], labels, index, 6, 4, 1)
    assert sorted(labels[chosen].tolist()) == [0, 0, 0, 1, 2, 3]
    assert chosen[:4] == [0, 8, 9, 10]  # one per class first, best first
    assert len(set(index[chosen].tolist())) == 6


def test_selection_stops_at_n_and_takes_a_source_twice_only_when_allowed() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    index = torch.tensor([0, 0, 1, 1])
    order = [0, 1, 2, 3]
    assert spread([(order, "source")], labels, index, 4, 4, 1) == [0, 2]
    assert spread([(order, "source"), (order, "any")], labels, index, 3, 4, 1) == [0, 2, 1]
