"""The Open Inference Protocol (KServe V2) for one image classifier, without a web framework.

What a request must hold, what the answer and the metadata look like, and the inference itself,
shared by the FastAPI server (:mod:`misentry.serve.oip`) and the MLServer runtime
(:mod:`misentry.serve.mlserver_runtime`) so both check requests the same way and answer alike.

A request carries exactly one input tensor:

- ``datatype`` ``"FP32"`` (pixels in [0, 1], as :func:`misentry.data.to_unit` gives them) or
  ``"UINT8"`` (whole numbers 0-255);
- ``shape`` ``[N, C, H, W]`` (NCHW) with the model's C, H, W; ``[N, H, W, C]`` (NHWC) is accepted
  too when it differs from the NCHW shape (NCHW wins when both read the same);
- ``data`` row-major, flat or nested, exactly ``N * C * H * W`` numbers; ``1 <= N <= max_batch``.

A model imported with an input contract (:class:`~misentry.models.InputContract`) is served as
the user's own server would serve it: the input is what the model takes, FP32 values encoded by
the contract (within the encoding's range of pixels in [0, 1]), in the contract's layout only,
and goes to the user's module as it is (:func:`misentry.verify.wire.wire_model`).

The input's name is not checked (the metadata calls it ``"input"``). The answer holds ``label``
(INT64, ``[N]``, the top-1 class) and, on a server started with ``scores=True``, ``scores``
(FP32, ``[N, classes]``, softmax probabilities); a request's ``outputs`` list picks among them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn

from misentry.data import to_unit
from misentry.models import InputContract, Record, logits, predict
from misentry.verify.wire import contract_bounds, describe_contract

LOOPBACK = "127.0.0.1"
"""Where servers listen unless told otherwise: this machine only (there is no authentication)."""
INPUT_NAME = "input"
LABEL_OUTPUT = "label"
SCORES_OUTPUT = "scores"
DATATYPES = ("FP32", "UINT8")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_BYTES_PER_VALUE = 32  # generous: "0.0039215689," is 13 bytes, a float64 repr at most 24
_BODY_SLACK = 64 * 1024


class ProtocolError(ValueError):
    """A request the server refuses: the message goes back as ``{"error": ...}`` with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_name(value: str, what: str = "name") -> str:
    """``value`` if it is a valid model name or version (one URL path segment), else ValueError."""
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r} is not a valid model {what}; use letters, digits, '_', '.' and '-' "
            "(at most 128, starting with a letter or digit)"
        )
    return value


@dataclass(frozen=True)
class ModelSignature:
    """What one served model is called and what it takes and gives.

    Attributes:
        name: the model's name in the URL (letters, digits, ``_ . -``; at most 128).
        version: its version, or None (then no ``/versions/{v}`` path exists).
        input_shape: (C, H, W) of one image.
        num_classes: number of classes.
        scores: also offer the ``scores`` output (softmax probabilities); labels only if False.
        max_batch: most images in one request (default 1024); more is refused with 413.
        contract: what the served module takes (identity: pixels in [0, 1]).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    version: str | None = None
    scores: bool = False
    max_batch: int = 1024
    contract: InputContract = field(default_factory=InputContract)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.version is not None:
            check_name(self.version, "version")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(
                f"ModelSignature: input_shape must be (C, H, W) of positive sizes, "
                f"not {self.input_shape}"
            )
        if self.num_classes < 2:
            raise ValueError(f"ModelSignature: num_classes must be >= 2, not {self.num_classes}")
        if self.max_batch < 1:
            raise ValueError(f"ModelSignature: max_batch must be >= 1, not {self.max_batch}")

    @property
    def outputs(self) -> tuple[str, ...]:
        return (LABEL_OUTPUT, SCORES_OUTPUT) if self.scores else (LABEL_OUTPUT,)

    @property
    def max_body_bytes(self) -> int:
        """Largest request body worth parsing: ``max_batch`` images of long JSON numbers."""
        return self.max_batch * math.prod(self.input_shape) * _BYTES_PER_VALUE + _BODY_SLACK

    def metadata(self) -> dict[str, Any]:
        """The model metadata answer (``GET v2/models/{name}``)."""
        outputs: list[dict[str, Any]] = [{"name": LABEL_OUTPUT, "datatype": "INT64", "shape": [-1]}]
        if self.scores:
            outputs.append(
                {"name": SCORES_OUTPUT, "datatype": "FP32", "shape": [-1, self.num_classes]}
            )
        return {
            "name": self.name,
            "versions": [] if self.version is None else [self.version],
            "platform": "pytorch",
            "inputs": [self._input_metadata()],
            "outputs": outputs,
        }

    def _input_metadata(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        if self.contract.is_identity:
            parameters: dict[str, Any] = {
                "datatypes": list(DATATYPES),
                "range": "FP32 in [0, 1]; UINT8 in 0..255",
                "layouts": ["NCHW", "NHWC"],
            }
            shape = [-1, c, h, w]
        else:
            parameters = {
                "datatypes": ["FP32"],
                "contract": self.contract.to_json(),
                "layouts": ["NHWC" if self.contract.channels_last else "NCHW"],
            }
            shape = [-1, h, w, c] if self.contract.channels_last else [-1, c, h, w]
        return {"name": INPUT_NAME, "datatype": "FP32", "shape": shape, "parameters": parameters}


def record_input(record: Record) -> tuple[tuple[int, int, int], int]:
    """The (C, H, W) image shape and the number of classes of a record's model."""
    spec = record.input or {}
    num_classes = int(spec["num_classes"])
    return (int(spec["channels"]), int(spec["height"]), int(spec["width"])), num_classes


@dataclass(frozen=True)
class InferRequest:
    """A checked request: float images in [0, 1], NCHW, and the outputs asked for."""

    images: torch.Tensor
    outputs: tuple[str, ...]
    request_id: str | None = None


def parse_body(body: bytes) -> Any:
    """The JSON document of a request body; ProtocolError if it is not JSON."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        raise ProtocolError(
            f"the request body is not JSON ({reason}); send an Open Inference Protocol "
            'request such as {"inputs": [{"name": "input", "shape": [N, C, H, W], '
            '"datatype": "FP32", "data": [...]}]}'
        ) from None


def parse_request(document: Any, signature: ModelSignature) -> InferRequest:
    """Check an inference request (parsed JSON) against ``signature``; ProtocolError if it fails."""
    if not isinstance(document, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise ProtocolError("the request has no 'inputs' list")
    if len(inputs) != 1:
        raise ProtocolError(
            f"the request has {len(inputs)} inputs; this model takes exactly one "
            f"(named {INPUT_NAME!r})"
        )
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("'id' must be a string")
    return InferRequest(
        images=decode_input(inputs[0], signature),
        outputs=_requested_outputs(document.get("outputs"), signature),
        request_id=request_id,
    )


def decode_input(tensor: Any, signature: ModelSignature) -> torch.Tensor:
    """One input tensor of a request as float32 images in [0, 1], shape ``[N, C, H, W]``; for a
    signature with an input contract, as the float32 values the model takes, in its layout."""
    if not isinstance(tensor, dict):
        raise ProtocolError("the input must be a JSON object with name, shape, datatype, data")
    if not isinstance(tensor.get("name"), str):
        raise ProtocolError("the input has no 'name' string")
    if not signature.contract.is_identity:
        return _decode_encoded(tensor, signature)
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"input datatype {datatype!r} is not supported; send FP32 (pixels in [0, 1]) "
            "or UINT8 (pixels 0..255)"
        )
    shape, channels_last = _checked_shape(tensor.get("shape"), signature)
    values = _checked_values(tensor.get("data"), datatype, math.prod(shape))
    array = values.reshape(shape)
    if channels_last:
        array = array.transpose(0, 3, 1, 2)
    if datatype == "UINT8":
        return to_unit(torch.from_numpy(np.ascontiguousarray(array, dtype=np.uint8)))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _decode_encoded(tensor: dict[str, Any], signature: ModelSignature) -> torch.Tensor:
    """The input of a model with an input contract: FP32 in the contract's layout, each value
    finite and within what the contract makes of pixels in [0, 1]."""
    contract = signature.contract
    if tensor.get("datatype") != "FP32":
        raise ProtocolError(
            f"input datatype {tensor.get('datatype')!r} is not supported; this model takes FP32 "
            f"values encoded by its input contract ({describe_contract(contract)})"
        )
    shape, _ = _checked_shape(tensor.get("shape"), signature)
    c, h, w = signature.input_shape
    want = [h, w, c] if contract.channels_last else [c, h, w]
    if shape[1:] != want:
        layout = "NHWC" if contract.channels_last else "NCHW"
        raise ProtocolError(
            f"input shape {shape} does not fit the model; send [N, {', '.join(map(str, want))}] "
            f"({layout}, as its input contract says)"
        )
    values = _checked_numbers(tensor.get("data"), math.prod(shape), "")
    lo, hi = contract_bounds(contract, c)
    slack = 1e-4 * max(1.0, abs(lo), abs(hi))
    if values.min() < lo - slack or values.max() > hi + slack:
        raise ProtocolError(
            f"FP32 input data must lie in [{lo:g}, {hi:g}] (pixels in [0, 1] encoded by the "
            f"input contract {describe_contract(contract)}); got {values.min():g}..{values.max():g}"
        )
    return torch.from_numpy(np.ascontiguousarray(values.reshape(shape), dtype=np.float32))


def _checked_shape(shape: Any, signature: ModelSignature) -> tuple[list[int], bool]:
    """The shape as ints and whether it is NHWC."""
    c, h, w = signature.input_shape
    expected = f"[N, {c}, {h}, {w}] (NCHW) or [N, {h}, {w}, {c}] (NHWC)"
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise ProtocolError(f"input shape {shape!r} is not a list of 4 integers; send {expected}")
    n = shape[0]
    if n < 1:
        raise ProtocolError(f"input shape {shape}: the batch must hold at least one image")
    if n > signature.max_batch:
        raise ProtocolError(
            f"input shape {shape}: {n} images exceed this server's max_batch of "
            f"{signature.max_batch}; split the request",
            status=413,
        )
    if tuple(shape[1:]) == (c, h, w):
        return shape, False
    if tuple(shape[1:]) == (h, w, c):
        return shape, True
    raise ProtocolError(f"input shape {shape} does not fit the model; send {expected}")


def _checked_values(data: Any, datatype: str, count: int) -> np.ndarray[Any, Any]:
    """``data`` as a flat numeric array of ``count`` values in the datatype's range."""
    if datatype != "UINT8":
        values = _checked_numbers(data, count, " in [0, 1]")
        if values.min() < 0.0 or values.max() > 1.0:
            raise ProtocolError(
                f"FP32 input data must lie in [0, 1] (pixels / 255); got "
                f"{values.min():g}..{values.max():g}"
            )
        return values
    flat = _counted(data, count)
    if not set(map(type, flat)) <= {int}:
        raise ProtocolError("UINT8 input data must be whole numbers 0..255")
    ints = _as_array(flat, np.int64)
    if ints is None or ints.min() < 0 or ints.max() > 255:
        raise ProtocolError("UINT8 input data must lie in 0..255")
    return ints


def _counted(data: Any, count: int) -> list[Any]:
    """``data`` flattened, checked to hold ``count`` values."""
    if not isinstance(data, list):
        raise ProtocolError("the input has no 'data' list")
    flat = _flatten(data)
    if len(flat) != count:
        raise ProtocolError(
            f"input data holds {len(flat)} values; the shape needs {count} (N * C * H * W)"
        )
    return flat


def _checked_numbers(data: Any, count: int, where: str) -> np.ndarray[Any, Any]:
    """FP32 ``data`` as a flat float64 array of ``count`` finite numbers (``where``: the range
    the messages name)."""
    flat = _counted(data, count)
    if not set(map(type, flat)) <= {int, float}:
        raise ProtocolError(f"FP32 input data must be numbers{where}")
    values = _as_array(flat, np.float64)
    if values is None or not np.isfinite(values).all():
        raise ProtocolError(f"FP32 input data holds NaN or infinity; send finite numbers{where}")
    return values


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists (at most 4 deep, as the shape) flattened row-major; other items are kept.
    Only the count of values is checked against the shape, not how they are nested."""
    flat = data
    for _ in range(4):
        if not flat or not all(isinstance(item, list) for item in flat):
            break
        flat = list(chain.from_iterable(flat))
    return flat


def _as_array(flat: list[Any], dtype: type[np.generic]) -> np.ndarray[Any, Any] | None:
    """``flat`` as a numpy array, or None if a whole number is too large for ``dtype`` (JSON
    allows any number of digits)."""
    try:
        return np.array(flat, dtype=dtype)
    except OverflowError:
        return None


def _requested_outputs(outputs: Any, signature: ModelSignature) -> tuple[str, ...]:
    if outputs is None:
        return signature.outputs
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise ProtocolError("'outputs' must be a list of objects with a 'name'")
    names = tuple(dict.fromkeys(o["name"] for o in outputs))
    unknown = [name for name in names if name not in signature.outputs]
    if unknown:
        hint = "" if signature.scores else " (only a server started with scores gives them)"
        raise ProtocolError(
            f"unknown output {unknown[0]!r}; this model gives {list(signature.outputs)}{hint}"
        )
    return names or signature.outputs


def classify(model: nn.Module, request: InferRequest) -> dict[str, torch.Tensor]:
    """The outputs a checked request asks for, by name, in its order: ``label`` (int64 ``[N]``)
    and ``scores`` (float32 softmax ``[N, classes]``). Eval mode, no gradients."""
    tensors: dict[str, torch.Tensor] = {}
    if SCORES_OUTPUT in request.outputs:
        scores = torch.softmax(logits(model, request.images), dim=1).to(torch.float32)
        tensors[SCORES_OUTPUT] = scores
        tensors[LABEL_OUTPUT] = scores.argmax(dim=1)
    else:
        tensors[LABEL_OUTPUT] = predict(model, request.images)
    return {name: tensors[name] for name in request.outputs}


def infer(model: nn.Module, request: InferRequest, signature: ModelSignature) -> dict[str, Any]:
    """Run ``model`` on a checked request; the answer document."""
    outputs = []
    for name, tensor in classify(model, request).items():
        datatype = "INT64" if name == LABEL_OUTPUT else "FP32"
        values = tensor.to(torch.int64 if datatype == "INT64" else torch.float32)
        outputs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(values.shape),
                "data": values.reshape(-1).tolist(),
            }
        )
    answer: dict[str, Any] = {"model_name": signature.name}
    if signature.version is not None:
        answer["model_version"] = signature.version
    if request.request_id is not None:
        answer["id"] = request.request_id
    answer["outputs"] = outputs
    return answer
