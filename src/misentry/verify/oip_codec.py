"""The Open Inference Protocol (KServe V2) bodies of :class:`~misentry.verify.http.HttpOracle`.

:func:`encode_request` writes a batch of uint8 images as one plain-JSON inference request (no
binary-tensor extension: MLServer refuses it with 422), as pixels or, for a model with an input
contract, as the values the model takes (:mod:`misentry.verify.wire`); :func:`pick_output`
finds the output to read in the answer, and :func:`decode_labels` reads one label per image
from it, either from an output of labels (shape ``[N]`` or ``[N, 1]``, as MLServer's numpy
codec returns a 1-D array) or from an output of scores (``[N, classes]``, top-1 by argmax). What
an answer lacks raises an :class:`~misentry.models.oracle.OracleError` (``malformed`` or
``out_of_range``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import numpy as np
import torch

from misentry.models import InputContract
from misentry.models.oracle import OracleError
from misentry.verify.wire import encode_images

Datatype = Literal["FP32", "UINT8"]
Layout = Literal["NCHW", "NHWC"]
OutputKind = Literal["labels", "scores"]

_UINT8_TEXT = np.array([str(p) for p in range(256)], dtype=object)
# The shortest decimal text of each float32 pixel p / 255: it parses back to the very float32
# that ``misentry.data.to_unit`` computes, so a server sees the same input as an in-process model.
_FP32_TEXT = np.array(
    [
        np.format_float_positional(v, unique=True, trim="-")
        for v in (np.arange(256, dtype=np.float32) / np.float32(255.0))
    ],
    dtype=object,
)
_NOT_NUMBERS = ("BYTES", "BOOL")
_LARGEST_LABEL = 2**53


def encode_request(
    images: torch.Tensor,
    input_name: str,
    datatype: Datatype,
    layout: Layout,
    contract: InputContract | None = None,
) -> bytes:
    """The request as plain JSON: one input, its data flat and row-major. With a ``contract``
    that is not the identity, the input is what the model takes (:func:`encode_images`: FP32,
    in the contract's layout, which ``layout`` must name)."""
    if contract is not None and not contract.is_identity:
        values = encode_images(images, contract)
        return _request(input_name, list(values.shape), "FP32", _float32_text(values))
    pixels = images.permute(0, 2, 3, 1) if layout == "NHWC" else images
    flat = pixels.contiguous().reshape(-1).numpy()
    table = _FP32_TEXT if datatype == "FP32" else _UINT8_TEXT
    return _request(input_name, list(pixels.shape), datatype, table[flat])


def _request(input_name: str, shape: list[int], datatype: str, texts: Any) -> bytes:
    head = json.dumps({"name": input_name, "shape": shape, "datatype": datatype})
    data = ",".join(texts)
    return f'{{"inputs":[{head[:-1]},"data":[{data}]}}]}}'.encode()


def _float32_text(values: torch.Tensor) -> Any:
    """The shortest decimal text of each float32 value, which parses back to that very float32
    (a contract-encoded batch holds at most 256 distinct values per channel, each written
    once)."""
    flat = values.reshape(-1).numpy()
    distinct, index = np.unique(flat, return_inverse=True)
    table = np.array(
        [np.format_float_positional(v, unique=True, trim="-") for v in distinct], dtype=object
    )
    return table[index.reshape(-1)]


def pick_output(document: Any, output_name: str | None, where: str) -> dict[str, Any]:
    """The output named ``output_name`` of an answer (None: its first output), checked to hold
    numbers; ``where`` (the model's address) starts every error message."""
    outputs = document.get("outputs") if isinstance(document, dict) else None
    if not isinstance(outputs, list) or not outputs:
        raise OracleError("malformed", f"{where}: the answer has no 'outputs' list")
    if output_name is None:
        chosen = outputs[0]
    else:
        named = [o for o in outputs if isinstance(o, dict) and o.get("name") == output_name]
        if not named:
            names = [o.get("name") for o in outputs if isinstance(o, dict)]
            raise OracleError(
                "malformed",
                f"{where}: no output named {output_name!r} in the answer "
                f"(it has {names}); set output_name to one of them",
            )
        chosen = named[0]
    if not isinstance(chosen, dict) or "data" not in chosen:
        raise OracleError("malformed", f"{where}: {output_label(chosen)} has no data")
    if chosen.get("datatype") in _NOT_NUMBERS:
        raise OracleError(
            "malformed",
            f"{where}: {output_label(chosen)} has datatype {chosen['datatype']}, not numbers",
        )
    return chosen


def decode_labels(tensor: dict[str, Any], output: OutputKind, where: str) -> torch.Tensor:
    """One label per image from the output ``tensor``: its values (``output="labels"``) or the
    argmax of each row (``output="scores"``). The caller's checks (whole numbers, one per image,
    inside the class range) still apply."""
    label = output_label(tensor)
    values = _numbers(tensor.get("data"), label)
    if output == "scores":
        return _argmax(tensor, values, where)
    _check_label_shape(tensor, values, where)
    return _label_tensor(values, label)


def output_label(tensor: Any) -> str:
    """How error messages name an output: ``output 'label'``, or ``the output``."""
    name = tensor.get("name") if isinstance(tensor, dict) else None
    return f"output {name!r}" if name is not None else "the output"


def _check_label_shape(tensor: dict[str, Any], values: list[int | float], where: str) -> None:
    shape = _shape(tensor, output_label(tensor))
    if shape is None:
        return
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise OracleError(
            "malformed",
            f"{where}: {output_label(tensor)} has shape {shape}; labels need "
            "[N] or [N, 1] (for an output of class scores use output='scores')",
        )
    _check_size(shape, values, output_label(tensor))


def _argmax(tensor: dict[str, Any], values: list[int | float], where: str) -> torch.Tensor:
    label = output_label(tensor)
    shape = _shape(tensor, label)
    if shape is None or len(shape) != 2 or shape[1] < 1:
        raise OracleError(
            "malformed",
            f"{where}: {label} has shape {shape}; scores need [N, classes]",
        )
    _check_size(shape, values, label)
    scores = torch.tensor(values, dtype=torch.float64).reshape(shape)
    return scores.argmax(dim=1)


def _numbers(data: Any, label: str) -> list[int | float]:
    """The output's data, flattened row-major, each a finite int or float."""
    flat: list[Any] = []
    _flatten(data, flat)
    for value in flat:
        if type(value) not in (int, float):  # bool is an int subclass, and not a label
            raise OracleError("malformed", f"{label} holds {value!r}, not a number")
        if not math.isfinite(value):
            raise OracleError("malformed", f"{label} holds {value!r}")
    return flat


def _flatten(data: Any, into: list[Any]) -> None:
    if isinstance(data, list):
        for item in data:
            _flatten(item, into)
    else:
        into.append(data)


def _shape(tensor: dict[str, Any], label: str) -> list[int] | None:
    shape = tensor.get("shape")
    if shape is None:
        return None
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        raise OracleError("malformed", f"{label} has an invalid shape {shape!r}")
    return shape


def _check_size(shape: list[int], values: list[int | float], label: str) -> None:
    if math.prod(shape) != len(values):
        raise OracleError(
            "malformed", f"{label} has shape {shape} but {len(values)} values in its data"
        )


def _label_tensor(values: list[int | float], label: str) -> torch.Tensor:
    """Labels as int64, or float64 when any is a float (the base checks they are whole)."""
    big = next((v for v in values if abs(v) >= _LARGEST_LABEL), None)
    if big is not None:
        raise OracleError("out_of_range", f"{label} holds {big!r}, not a class index")
    whole = all(type(v) is int for v in values)
    return torch.tensor(values, dtype=torch.int64 if whole else torch.float64)
