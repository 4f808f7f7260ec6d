"""The label-oracle protocol: the base class batches, counts, budgets and checks every answer, so
an adapter only answers one batch; ModuleOracle answers as the model predicts."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

from misentry.data import Pools, to_unit
from misentry.models.oracle import LabelOracle, ModuleOracle, OracleError
from misentry.models.train import predict

Answer = Callable[[torch.Tensor], Any]


class Scripted(LabelOracle):
    """Answers every batch with ``answer(batch)`` and keeps the batch sizes it was sent."""

    def __init__(self, answer: Answer, **options: Any) -> None:
        super().__init__(**options)
        self.answer = answer
        self.batches: list[int] = []

    def _query(self, images: torch.Tensor) -> Sequence[int] | torch.Tensor:
        self.batches.append(int(images.shape[0]))
        result: Sequence[int] | torch.Tensor = self.answer(images)
        return result


def zeros(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros(images.shape[0], dtype=torch.int64)


def pixels(n: int) -> torch.Tensor:
    return torch.zeros((n, 1, 2, 2), dtype=torch.uint8)


def test_module_oracle_answers_as_the_model_predicts(
    target: nn.Module, digits_pools: Pools
) -> None:
    images = digits_pools["source"].images[:20]
    oracle = ModuleOracle(target, num_classes=10, batch_size=8)
    assert torch.equal(oracle.labels(images), predict(target, to_unit(images)))
    assert (oracle.queries, oracle.requests) == (20, 3)


def test_work_is_batched_and_counted() -> None:
    oracle = Scripted(zeros, batch_size=4)
    assert oracle.labels(pixels(10)).tolist() == [0] * 10
    assert oracle.batches == [4, 4, 2]
    assert (oracle.queries, oracle.requests) == (10, 3)


def test_the_budget_refuses_a_query_before_anything_is_sent() -> None:
    oracle = Scripted(zeros, budget=5)
    oracle.labels(pixels(3))
    with pytest.raises(OracleError, match="2 of 5 left") as info:
        oracle.labels(pixels(3))
    assert info.value.reason == "budget"
    assert (oracle.batches, oracle.remaining) == ([3], 2)


def test_no_request_starts_after_the_deadline() -> None:
    def slow(images: torch.Tensor) -> torch.Tensor:
        time.sleep(0.06)
        return zeros(images)

    oracle = Scripted(slow, batch_size=1, deadline=0.05)
    with pytest.raises(OracleError, match="deadline") as info:
        oracle.labels(pixels(3))
    assert info.value.reason == "deadline"
    assert oracle.batches == [1]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (lambda x: [0] * (x.shape[0] - 1), "short"),
        (lambda x: [0.5] * x.shape[0], "malformed"),
        (lambda x: ["a"] * x.shape[0], "malformed"),
        (lambda x: [10] * x.shape[0], "out_of_range"),
        (lambda x: [-1] * x.shape[0], "out_of_range"),
    ],
)
def test_every_answer_is_checked(answer: Answer, reason: str) -> None:
    with pytest.raises(OracleError) as info:
        Scripted(answer, num_classes=10).labels(pixels(4))
    assert info.value.reason == reason


def test_whole_floats_are_labels_and_bad_images_or_options_are_value_errors() -> None:
    labels = Scripted(lambda x: [3.0] * x.shape[0], num_classes=10).labels(pixels(2))
    assert (labels.dtype, labels.tolist()) == (torch.int64, [3, 3])
    with pytest.raises(ValueError, match="uint8 images"):
        Scripted(zeros).labels(pixels(2).float())
    options: dict[str, Any]
    for options in ({"batch_size": 0}, {"budget": -1}, {"deadline": 0}):
        with pytest.raises(ValueError, match="LabelOracle"):
            Scripted(zeros, **options)
