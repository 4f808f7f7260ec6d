"""Fixtures of the serve tests: the test model, a server of it for the whole module, and digits
images to send."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from misentry.data import ImageSet
from serve.oipkit import MAX_BATCH, NAME, SHAPE, linear_model


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return linear_model()


@pytest.fixture(scope="module")
def base(model: nn.Module) -> Iterator[str]:
    """The base URL of a server of ``model`` (version 1, at most MAX_BATCH images a request)."""
    pytest.importorskip("fastapi", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
    pytest.importorskip("uvicorn", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
    from misentry.serve import create_app, serve_in_thread

    app = create_app(
        model, name=NAME, version="1", num_classes=10, input_shape=SHAPE, max_batch=MAX_BATCH
    )
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture(scope="module")
def images(digits: ImageSet) -> torch.Tensor:
    return digits.x[:MAX_BATCH]
