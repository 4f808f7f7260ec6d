"""What the OIP server tests share: the served test model, request bodies, and the check that an
error answer shows nothing internal."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import torch
from torch import nn

from loopback_http import call
from misentry.data import to_pixels

NAME = "digits-linear"
SHAPE = (1, 8, 8)
MAX_BATCH = 16


def linear_model() -> nn.Module:
    """A seeded linear classifier of 8x8 digits: no training, yet varied labels."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


def request_body(x: torch.Tensor, datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    values = to_pixels(x) if datatype == "UINT8" else x
    tensor = {"name": "input", "shape": list(values.shape), "datatype": datatype}
    tensor["data"] = values.reshape(-1).tolist()
    return {"inputs": [tensor], **extra}


def infer(base: str, document: Any, name: str = NAME) -> tuple[int, Any, str]:
    return call(f"{base}/v2/models/{name}/infer", json.dumps(document).encode())


def labels_of(document: dict[str, Any]) -> list[int]:
    (output,) = [o for o in document["outputs"] if o["name"] == "label"]
    assert output["datatype"] == "INT64"
    assert output["shape"] == [len(output["data"])]
    return list(output["data"])


def one_image(**overrides: Any) -> dict[str, Any]:
    """A valid one-image FP32 request with fields of its input replaced."""
    tensor: dict[str, Any] = {"name": "input", "shape": [1, *SHAPE], "datatype": "FP32"}
    tensor["data"] = [0.5] * math.prod(SHAPE)
    tensor.update(overrides)
    return {"inputs": [tensor]}


def as_json(document: Any) -> bytes:
    return json.dumps(document).encode()


def assert_no_internals(text: str) -> None:
    assert "Traceback" not in text
    assert not re.search(r'File "[^"]+", line \d+', text)
    assert "misentry/" not in text
    assert "site-packages" not in text
