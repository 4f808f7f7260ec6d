"""Evaluation and prediction: exact numbers, eval mode, any batch size, empty input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from misentry.data import ImageSet
from misentry.models import evaluate, logits, predict
from models.trainkit import digits_model


def test_predict_and_logits_use_eval_mode(small: ImageSet) -> None:
    model = digits_model("gtsrb_cnn")  # dropout and BatchNorm: train mode would be random
    model.train()
    a, b = logits(model, small.x, batch_size=50), logits(model, small.x)
    assert torch.equal(a, b)
    assert torch.equal(predict(model, small.x, batch_size=7), a.argmax(1))
    assert not a.requires_grad


def test_evaluate_matches_a_hand_computed_model() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[2.0, 0, 0], [0, 1, 0], [0, 0, 1]]))
    rows = [[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.1, 0.7], [0.3, 0.9, 0.2], [0.1, 0.2, 0.6]]
    labels = [0, 1, 1, 0, 2]
    x = torch.tensor(rows).view(5, 1, 1, 3)
    y = torch.tensor(labels)
    # logits: the first feature doubled; argmax per row is 0, 1, 2, 1, 2 → 3 of 5 right.
    z = [[2 * r[0], r[1], r[2]] for r in rows]
    hand_loss = (
        sum(math.log(sum(math.exp(v) for v in zi)) - zi[t] for zi, t in zip(z, labels, strict=True))
        / 5
    )
    result = evaluate(model, (x, y), batch_size=2)
    assert result.accuracy == pytest.approx(0.6)
    assert result.loss == pytest.approx(hand_loss, rel=1e-6)
    assert result.n == 5
    assert predict(model, x, batch_size=2).tolist() == [0, 1, 2, 1, 2]
    torch.testing.assert_close(logits(model, x, batch_size=3), torch.tensor(z))


def test_evaluate_accepts_an_image_set(small: ImageSet) -> None:
    model = digits_model()
    a = evaluate(model, small)
    b = evaluate(model, (small.x, small.y), batch_size=10)
    assert a.accuracy == pytest.approx(float((predict(model, small.x) == small.y).float().mean()))
    assert a.accuracy == pytest.approx(b.accuracy)
    assert a.loss == pytest.approx(b.loss, rel=1e-5)
    assert a.n == 128


def test_predict_on_no_images_gives_no_labels(small: ImageSet) -> None:
    model = digits_model("lenet5")
    assert logits(model, small.x[:0]).shape == (0, 10)
    assert predict(model, small.x[:0]).shape == (0,)
