"""A label oracle over the Open Inference Protocol (KServe V2) REST API, standard library only.

:class:`HttpOracle` posts each batch to ``POST {model}/infer`` as plain JSON (no binary-tensor
extension: MLServer refuses it with 422) and reads one label per image from the answer, either
an output of labels (shape ``[N]`` or ``[N, 1]``, as MLServer's numpy codec returns a 1-D array)
or an output of scores (``[N, classes]``, top-1 by argmax). It keeps one persistent connection,
retries connection errors and 5xx answers with exponential backoff inside the oracle's deadline,
and turns every failure into an :class:`~misentry.models.oracle.OracleError`:

========================================  ================  =========
failure                                   reason            retried
========================================  ================  =========
connection refused, reset, closed early   ``transport``     yes
no answer within ``timeout`` seconds      ``timeout``       no
5xx status (after the retries)            ``server``        yes
4xx status, redirect, other non-2xx       ``server``        no
not JSON, no ``outputs``/``data``, wrong  ``malformed``     no
output name or shape, non-numeric labels
fewer or more labels than images          ``short``         no
a label outside ``[0, num_classes)``      ``out_of_range``  no
========================================  ================  =========

A timeout is not retried: a model that did not answer in time will rarely answer faster, and
repeating it would multiply the wait. The oracle is not thread-safe (one connection).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import torch

from misentry.models.oracle import LabelOracle, OracleError

log = logging.getLogger(__name__)

Datatype = Literal["FP32", "UINT8"]
Layout = Literal["NCHW", "NHWC"]
OutputKind = Literal["labels", "scores"]

_MODEL_PATH = re.compile(
    r"^(?P<prefix>(?:/[^/]+)*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
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


@dataclass(frozen=True)
class ModelAddress:
    """A model's address as the Open Inference Protocol names it, taken apart.

    ``prefix`` is any path in front of ``/v2`` (a gateway's route), usually empty.
    """

    scheme: str
    host: str
    port: int
    prefix: str
    model: str
    version: str | None

    @property
    def model_path(self) -> str:
        """``{prefix}/v2/models/{model}[/versions/{version}]``."""
        path = f"{self.prefix}/v2/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    @property
    def ready_path(self) -> str:
        return f"{self.prefix}/v2/health/ready"


def parse_model_url(url: str) -> ModelAddress:
    """Split ``http(s)://HOST[:PORT][/PREFIX]/v2/models/NAME[/versions/V]``; ValueError if not."""
    expected = "http(s)://HOST:PORT/v2/models/NAME or .../v2/models/NAME/versions/VERSION"
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS:
        raise ValueError(f"HttpOracle: {url!r} is not an http(s) URL; expected {expected}")
    if not parts.hostname:
        raise ValueError(f"HttpOracle: {url!r} names no host; expected {expected}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"HttpOracle: {url!r} carries credentials; pass them as headers "
            '(e.g. headers={"Authorization": "Bearer …"}) instead'
        )
    if parts.query or parts.fragment:
        raise ValueError(f"HttpOracle: {url!r} has a query or fragment; expected {expected}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"HttpOracle: {url!r} has an invalid port; expected {expected}") from None
    match = _MODEL_PATH.match(parts.path)
    if match is None:
        hint = ""
        if parts.path.rstrip("/").endswith(("/infer", "/ready")):
            hint = " (give the model's address, without /infer or /ready)"
        raise ValueError(f"HttpOracle: {url!r} is not a model address{hint}; expected {expected}")
    return ModelAddress(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[parts.scheme],
        prefix=match["prefix"],
        model=match["name"],
        version=match["version"],
    )


@dataclass(frozen=True)
class _Reply:
    method: str
    path: str
    status: int
    reason: str
    body: bytes


class _RetryableError(OracleError):
    """A transport failure worth another try (refused, reset, closed before the answer)."""


class HttpOracle(LabelOracle):
    """Top-1 labels from a model served over the Open Inference Protocol (KServe V2) REST API.

    Arguments:
        url: the model's address, ``http(s)://HOST:PORT/v2/models/NAME`` or
            ``.../v2/models/NAME/versions/V`` (a path in front of ``/v2`` is kept as a prefix).
        input_name: the model's input tensor name (default ``"input"``).
        datatype: ``"FP32"`` sends pixels / 255 as floats in [0, 1] (exactly the float32 values
            an in-process model sees); ``"UINT8"`` sends the raw 0-255 pixels.
        layout: ``"NCHW"`` (default) or ``"NHWC"`` (channels last).
        output_name: the output to read; None reads the first output.
        output: ``"labels"``: the output holds one integer label per image (``[N]`` or
            ``[N, 1]``, any integer datatype, or floats with whole values); ``"scores"``: the
            output is ``[N, classes]`` and the label is its argmax.
        headers: extra request headers, e.g. ``{"Authorization": "Bearer …"}``.
        timeout: seconds to connect and to wait on each read of one request (default 10).
        retries: further tries after a connection error or a 5xx answer (default 2); 4xx
            answers and timeouts are never retried.
        backoff: seconds before the first retry, doubled for each further one (default 0.2);
            a retry whose wait would pass the deadline is not made.
        ssl_context: for ``https``, e.g. one that trusts a private CA (default: the system's).
        num_classes, batch_size, budget, deadline: as in :class:`LabelOracle`.

    >>> oracle = HttpOracle("http://127.0.0.1:8080/v2/models/tiny", num_classes=10)
    >>> oracle.health()["name"]  # doctest: +SKIP
    'tiny'
    >>> oracle.labels(images)  # doctest: +SKIP
    tensor([7, 2, 1, ...])
    """

    def __init__(
        self,
        url: str,
        *,
        input_name: str = "input",
        datatype: Datatype = "FP32",
        layout: Layout = "NCHW",
        output_name: str | None = None,
        output: OutputKind = "labels",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        ssl_context: ssl.SSLContext | None = None,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, batch_size=batch_size, budget=budget, deadline=deadline
        )
        self.address = parse_model_url(url)
        self.url = url.rstrip("/")
        _check_choice("datatype", datatype, ("FP32", "UINT8"))
        _check_choice("layout", layout, ("NCHW", "NHWC"))
        _check_choice("output", output, ("labels", "scores"))
        if not timeout > 0:
            raise ValueError(f"HttpOracle: timeout must be positive seconds, not {timeout}")
        if retries < 0:
            raise ValueError(f"HttpOracle: retries must be >= 0, not {retries}")
        if backoff < 0:
            raise ValueError(f"HttpOracle: backoff must be >= 0 seconds, not {backoff}")
        self.input_name = input_name
        self.datatype: Datatype = datatype
        self.layout: Layout = layout
        self.output_name = output_name
        self.output: OutputKind = output
        self.headers = _checked_headers(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.ssl_context = ssl_context
        self._conn: http.client.HTTPConnection | None = None

    # --- public helpers -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Check ``GET v2/health/ready`` and return the model's metadata (``GET v2/models/NAME``:
        name, versions, platform, inputs, outputs). Raises :class:`OracleError` if the server is
        not ready, the model is unknown or the answer is not a JSON object. Queries are not
        counted."""
        self._health_get(self.address.ready_path, "the server is not ready")
        reply = self._health_get(self.address.model_path, "no model metadata")
        metadata = self._json(reply)
        if not isinstance(metadata, dict):
            raise OracleError("malformed", f"{self.url}: the model metadata is not a JSON object")
        return metadata

    def _health_get(self, path: str, failed: str) -> _Reply:
        try:
            reply = self._exchange("GET", path, None)
        except OracleError as err:
            raise OracleError(err.reason, f"{failed}: {err}") from None
        if not 200 <= reply.status < 300:
            raise OracleError("server", f"{failed}: {self._status_text(reply)}")
        return reply

    def describe(self) -> str:
        return self.url

    def close(self) -> None:
        """Close the connection (a later query opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HttpOracle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- one batch ------------------------------------------------------------------------

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        reply = self._exchange("POST", self.address.model_path + "/infer", self._body(images))
        if not 200 <= reply.status < 300:
            raise OracleError("server", self._status_text(reply))
        tensor = self._pick_output(self._json(reply))
        values = _numbers(tensor.get("data"), self._output_label(tensor))
        if self.output == "scores":
            return self._argmax(tensor, values)
        self._check_label_shape(tensor, values)
        return _label_tensor(values, self._output_label(tensor))

    def _body(self, images: torch.Tensor) -> bytes:
        """The request as plain JSON: one input, its data flat and row-major."""
        pixels = images.permute(0, 2, 3, 1) if self.layout == "NHWC" else images
        flat = pixels.contiguous().reshape(-1).numpy()
        table = _FP32_TEXT if self.datatype == "FP32" else _UINT8_TEXT
        head = json.dumps(
            {"name": self.input_name, "shape": list(pixels.shape), "datatype": self.datatype}
        )
        data = ",".join(table[flat])
        return f'{{"inputs":[{head[:-1]},"data":[{data}]}}]}}'.encode()

    def _pick_output(self, document: Any) -> dict[str, Any]:
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, list) or not outputs:
            raise OracleError("malformed", f"{self.url}: the answer has no 'outputs' list")
        if self.output_name is None:
            chosen = outputs[0]
        else:
            wanted = self.output_name
            named = [o for o in outputs if isinstance(o, dict) and o.get("name") == wanted]
            if not named:
                names = [o.get("name") for o in outputs if isinstance(o, dict)]
                raise OracleError(
                    "malformed",
                    f"{self.url}: no output named {self.output_name!r} in the answer "
                    f"(it has {names}); set output_name to one of them",
                )
            chosen = named[0]
        if not isinstance(chosen, dict) or "data" not in chosen:
            raise OracleError("malformed", f"{self.url}: {self._output_label(chosen)} has no data")
        if chosen.get("datatype") in _NOT_NUMBERS:
            raise OracleError(
                "malformed",
                f"{self.url}: {self._output_label(chosen)} has datatype {chosen['datatype']}, "
                "not numbers",
            )
        return chosen

    def _check_label_shape(self, tensor: dict[str, Any], values: list[int | float]) -> None:
        shape = _shape(tensor, self._output_label(tensor))
        if shape is None:
            return
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise OracleError(
                "malformed",
                f"{self.url}: {self._output_label(tensor)} has shape {shape}; labels need "
                "[N] or [N, 1] (for an output of class scores use output='scores')",
            )
        _check_size(shape, values, self._output_label(tensor))

    def _argmax(self, tensor: dict[str, Any], values: list[int | float]) -> torch.Tensor:
        label = self._output_label(tensor)
        shape = _shape(tensor, label)
        if shape is None or len(shape) != 2 or shape[1] < 1:
            raise OracleError(
                "malformed",
                f"{self.url}: {label} has shape {shape}; scores need [N, classes]",
            )
        _check_size(shape, values, label)
        scores = torch.tensor(values, dtype=torch.float64).reshape(shape)
        return scores.argmax(dim=1)

    def _output_label(self, tensor: Any) -> str:
        name = tensor.get("name") if isinstance(tensor, dict) else None
        return f"output {name!r}" if name is not None else "the output"

    # --- HTTP -----------------------------------------------------------------------------

    def _exchange(self, method: str, path: str, body: bytes | None) -> _Reply:
        """One request; connection errors and 5xx answers are retried with backoff, inside the
        deadline. Returns any answer below 500 (and a 5xx one never)."""
        attempt = 0
        while True:
            try:
                reply = self._send(method, path, body)
            except _RetryableError as err:
                failure = OracleError(err.reason, str(err))
            else:
                if reply.status < 500:
                    return reply
                failure = OracleError("server", self._status_text(reply))
            if attempt >= self.retries:
                tries = f" (after {attempt + 1} tries)" if attempt else ""
                raise OracleError(failure.reason, f"{failure}{tries}")
            delay = self.backoff * 2**attempt
            left = self._seconds_left()
            if left is not None and delay >= left:
                raise OracleError(
                    failure.reason,
                    f"{failure} (not retried: the deadline of {self.deadline:g} s is "
                    f"{max(left, 0.0):.2f} s away)",
                )
            attempt += 1
            log.warning("%s; retry %d of %d in %.2f s", failure, attempt, self.retries, delay)
            time.sleep(delay)

    def _send(self, method: str, path: str, body: bytes | None, reused: bool = False) -> _Reply:
        """One request on the persistent connection, reopened once at once if a kept-alive
        connection turns out to have been closed by the server meanwhile."""
        was_open = self._conn is not None
        conn = self._connection()
        headers = {"Accept": "application/json", **self.headers}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except TimeoutError:
            self.close()
            raise OracleError(
                "timeout", f"{self.url}: no answer within {self.timeout:g} s ({method} {path})"
            ) from None
        except ssl.SSLCertVerificationError as err:
            self.close()
            raise OracleError("transport", f"{self.url}: TLS certificate rejected: {err}") from None
        except (OSError, http.client.HTTPException) as err:
            self.close()
            if was_open and not reused and _closed_by_peer(err):
                return self._send(method, path, body, reused=True)
            raise _RetryableError("transport", f"{self.url}: {_error_text(err)}") from None
        if response.will_close:
            self.close()
        return _Reply(method, path, response.status, response.reason, data)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            a = self.address
            if a.scheme == "https":
                context = self.ssl_context or ssl.create_default_context()
                self._conn = http.client.HTTPSConnection(
                    a.host, a.port, timeout=self.timeout, context=context
                )
            else:
                self._conn = http.client.HTTPConnection(a.host, a.port, timeout=self.timeout)
        return self._conn

    def _json(self, reply: _Reply) -> Any:
        try:
            return json.loads(reply.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise OracleError(
                "malformed", f"{self.url}: the answer is not JSON ({err}): {_excerpt(reply.body)}"
            ) from None

    def _status_text(self, reply: _Reply) -> str:
        detail = _excerpt(reply.body)
        try:
            document = json.loads(reply.body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            document = None
        if isinstance(document, dict) and "error" in document:
            detail = str(document["error"])
        a = self.address
        where = f"{reply.method} {a.scheme}://{a.host}:{a.port}{reply.path}"
        text = f"{where}: HTTP {reply.status} {reply.reason}".rstrip()
        if 300 <= reply.status < 400:
            text += " (redirects are not followed; give the final address)"
        return f"{text}: {detail}" if detail else text


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"HttpOracle: {name} must be one of {', '.join(choices)}, not {value!r}")


def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"HttpOracle: header {key!r} must map a str to a str")
        if any(c in key + value for c in "\r\n\0"):
            raise ValueError(f"HttpOracle: header {key!r} holds a line break or NUL")
    return dict(headers)


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


def _closed_by_peer(err: BaseException) -> bool:
    """The server closed the connection before answering (e.g. its keep-alive timeout)."""
    # http.client.RemoteDisconnected is a ConnectionResetError
    return isinstance(err, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def _error_text(err: BaseException) -> str:
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the server running, on this host and port?)"
    if isinstance(err, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"
